"""Digits eval and transfer sets for the optimiser's tests and docs: scikit-learn's 8x8
digits split exactly as scripts/build_examples.py split them to train the example model
(test_size 0.2, random_state 0, stratified), so the eval rows were never trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        images.astype(np.float32), labels, test_size=0.2, random_state=0, stratify=labels
    )
    return x_train, x_test, y_train.astype(np.int64), y_test.astype(np.int64)


def write(directory: Path, eval_rows: int | None = None, transfer_rows: int | None = None) -> tuple[Path, Path]:
    """``eval.npz`` (held-out rows) and ``transfer.npz`` (training rows), each with ``input__0`` and ``label``."""
    x_train, x_test, y_train, y_test = split()
    directory.mkdir(parents=True, exist_ok=True)
    eval_path, transfer_path = directory / "eval.npz", directory / "transfer.npz"
    np.savez(eval_path, input__0=x_test[:eval_rows], label=y_test[:eval_rows])
    np.savez(transfer_path, input__0=x_train[:transfer_rows], label=y_train[:transfer_rows])
    return eval_path, transfer_path


if __name__ == "__main__":
    import sys

    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "digits-sets")):
        print(path)
