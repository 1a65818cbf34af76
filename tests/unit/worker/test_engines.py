"""Engines in process: every backend on the example digits model, handlers, and refusals.

The example repository is built once per session by scripts/build_examples.py (a no-op
when it is up to date). Nothing here starts a server.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import shutil
import textwrap
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.errors import EngineError
from services.common.model_config import ModelConfig, ModelConfigError, load_version_config, parse_model_config
from services.worker.engines import Engine, EngineLoadError, EngineSpec, create_engine
from services.worker.engines._support import WARMUP_BYTES, WARMUP_VARIABLE_DIM, warmup_inputs
from services.worker.engines.onnx import OnnxEngine
from services.worker.engines.python_handler import HandlerEngine
from services.worker.engines.torch_export import TorchExportEngine
from services.worker.engines.torchscript import TorchScriptEngine
from tests.support.models import build_examples

# The engine silences this itself, but pytest re-enables DeprecationWarnings per test.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

DIGITS_VERSIONS = {"1": TorchScriptEngine, "2": OnnxEngine, "3": TorchExportEngine}


@pytest.fixture(scope="session")
def examples() -> Path:
    return build_examples()


@pytest.fixture(scope="session")
def sample(examples: Path) -> dict[str, np.ndarray]:
    with np.load(examples / "digits" / "sample.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def spec_for(model_dir: Path, version: str, config: ModelConfig | None = None) -> EngineSpec:
    config = config or load_version_config(model_dir, version)
    return EngineSpec(model_dir.name, version, model_dir / version, config)


def loaded(spec: EngineSpec) -> Engine:
    engine = create_engine(spec)
    engine.load()
    engine.warmup()
    return engine


@pytest.fixture(scope="module")
def digits(examples: Path) -> Iterator[dict[str, Engine]]:
    engines = {version: loaded(spec_for(examples / "digits", version)) for version in DIGITS_VERSIONS}
    yield engines
    for engine in engines.values():
        engine.close()


def copy_model(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def with_config(config: ModelConfig, **changes: object) -> ModelConfig:
    return ModelConfig.model_validate({**config.model_dump(), **changes})


# -- digits on every backend ----------------------------------------------------------------


@pytest.mark.parametrize("version", sorted(DIGITS_VERSIONS))
@pytest.mark.parametrize("rows", [1, 7])
def test_digits_batch_shapes(digits: dict[str, Engine], sample, version: str, rows: int) -> None:
    engine = digits[version]
    assert isinstance(engine, DIGITS_VERSIONS[version])
    outputs = engine.infer({"input__0": sample["images"][:rows]})
    assert list(outputs) == ["output__0"]
    probabilities = outputs["output__0"]
    assert probabilities.shape == (rows, 10)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_backends_agree_with_each_other_and_the_build(digits: dict[str, Engine], sample) -> None:
    images = sample["images"]
    results = {version: engine.infer({"input__0": images})["output__0"] for version, engine in digits.items()}
    for version in ("2", "3"):
        np.testing.assert_allclose(results[version], results["1"], atol=1e-5, err_msg=f"version {version}")
    np.testing.assert_allclose(results["1"], sample["probabilities"], atol=1e-5)
    assert (results["1"].argmax(axis=1) == sample["labels"]).mean() > 0.8


@pytest.mark.parametrize("version", sorted(DIGITS_VERSIONS))
def test_inputs_are_cast_and_read_only_buffers_accepted(digits: dict[str, Engine], sample, version: str) -> None:
    # Requests decode into read-only views of the message; FP64 here must be cast to FP32.
    images = sample["images"][:3]
    read_only = np.frombuffer(images.astype(np.float64).tobytes(), dtype=np.float64).reshape(3, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs = digits[version].infer({"input__0": read_only})
    np.testing.assert_allclose(outputs["output__0"], sample["probabilities"][:3], atol=1e-5)


def test_missing_input_fails_the_batch_not_the_engine(digits: dict[str, Engine], sample) -> None:
    for engine in digits.values():
        with pytest.raises(EngineError):
            engine.infer({"wrong": sample["images"][:1]})
        assert engine.infer({"input__0": sample["images"][:1]})["output__0"].shape == (1, 10)


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version,artifact", [("1", "model.pt"), ("2", "model.onnx"), ("3", "model.pt2")])
def test_corrupted_artifact_is_a_load_error(examples: Path, tmp_path: Path, version: str, artifact: str) -> None:
    model_dir = copy_model(examples / "digits", tmp_path / "digits")
    (model_dir / version / artifact).write_bytes(b"\x00not a model at all" * 10)
    with pytest.raises(EngineLoadError, match=artifact):
        create_engine(spec_for(model_dir, version)).load()


def test_missing_artifact_is_a_load_error(examples: Path, tmp_path: Path) -> None:
    model_dir = copy_model(examples / "digits", tmp_path / "digits")
    (model_dir / "2" / "model.onnx").unlink()
    with pytest.raises(EngineLoadError, match="not found"):
        create_engine(spec_for(model_dir, "2")).load()


UNPICKLED: list[str] = []


def _record_unpickled(tag: str) -> tuple[str]:
    UNPICKLED.append(tag)
    return (tag,)


class _Exploit:
    def __reduce__(self):
        return (_record_unpickled, ("code ran",))


def test_torch_export_archive_needing_full_pickle_is_refused(examples: Path, tmp_path: Path) -> None:
    # torch.export.load itself falls back to pickle for some members; that must not happen.
    model_dir = copy_model(examples / "digits", tmp_path / "digits")
    archive = model_dir / "3" / "model.pt2"
    payload = io.BytesIO()
    torch.save(_Exploit(), payload)
    original = archive.read_bytes()
    replaced = 0
    with zipfile.ZipFile(io.BytesIO(original)) as zin, zipfile.ZipFile(archive, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if "/sample_inputs/" in info.filename:
                data, replaced = payload.getvalue(), replaced + 1
            zout.writestr(info, data)
    assert replaced == 1
    with pytest.raises(EngineLoadError):
        create_engine(spec_for(model_dir, "3")).load()
    assert UNPICKLED == []
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_onnx_config_that_does_not_match_the_graph_is_refused(examples: Path) -> None:
    model_dir = examples / "digits"
    config = load_version_config(model_dir, "2")
    renamed = with_config(config, inputs=[{"name": "pixels", "datatype": "FP32", "shape": [64]}])
    with pytest.raises(EngineLoadError, match="'pixels' is not a graph input"):
        create_engine(spec_for(model_dir, "2", renamed)).load()
    reshaped = with_config(config, inputs=[{"name": "input__0", "datatype": "FP32", "shape": [32]}])
    with pytest.raises(EngineLoadError, match="input__0"):
        create_engine(spec_for(model_dir, "2", reshaped)).load()


def test_engine_tensors_without_a_handler_are_refused(examples: Path) -> None:
    model_dir = examples / "digits"
    config = with_config(
        load_version_config(model_dir, "1"),
        engine_inputs=[{"name": "input__0", "datatype": "FP32", "shape": [64]}],
    )
    with pytest.raises(EngineLoadError, match="need a handler"):
        create_engine(spec_for(model_dir, "1", config))


def test_tensorrt_without_tensorrt_is_a_load_error(examples: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    config = with_config(load_version_config(examples / "digits", "2"), backend="tensorrt", artifact="model.onnx")
    engine = create_engine(spec_for(examples / "digits", "2", config))
    with pytest.raises(EngineLoadError, match="TensorRT is not installed"):
        engine.load()


def test_cuda_request_falls_back_to_cpu_with_a_warning(examples: Path, sample, caplog) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = with_config(load_version_config(examples / "digits", "1"), device="cuda:0")
    engine = create_engine(spec_for(examples / "digits", "1", config))
    with caplog.at_level(logging.WARNING):
        engine.load()
    assert "CUDA is not available" in caplog.text
    assert engine.infer({"input__0": sample["images"][:2]})["output__0"].shape == (2, 10)
    engine.close()


# -- handlers and the python backend ----------------------------------------------------------------

PYTHON_MODEL = """
from pathlib import Path

import numpy as np

LOADED_FROM = None


def load(model_dir: Path) -> None:
    global LOADED_FROM
    LOADED_FROM = model_dir
    (model_dir / "loaded.txt").write_text("{tag}")


def preprocess(inputs):
    return {{"X": inputs["IN"] + 1}}


def infer(inputs):
    return {{"Y": inputs["X"] * 2}}


def postprocess(outputs):
    return {{"OUT": outputs["Y"].astype(np.float64), "IGNORED": np.zeros(1)}}
"""


def write_model(root: Path, config: str, files: dict[str, str], versions: tuple[str, ...] = ("1",)) -> Path:
    model_dir = root / "m"
    for version in versions:
        (model_dir / version).mkdir(parents=True, exist_ok=True)
    (model_dir / "config.yaml").write_text(textwrap.dedent(config))
    for name, text in files.items():
        path = model_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return model_dir


PYTHON_CONFIG = """
backend: python
max_batch_size: 8
inputs: [{name: IN, datatype: FP32, shape: [3]}]
outputs: [{name: OUT, datatype: FP32, shape: [3]}]
handler: code/model.py
"""


@pytest.mark.parametrize("rows", [1, 7])
def test_python_backend_runs_preprocess_infer_postprocess(tmp_path: Path, rows: int) -> None:
    model_dir = write_model(tmp_path, PYTHON_CONFIG, {"code/model.py": PYTHON_MODEL.format(tag="a")})
    engine = loaded(spec_for(model_dir, "1"))
    assert isinstance(engine, HandlerEngine)
    assert (model_dir / "loaded.txt").read_text() == "a"
    batch = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    outputs = engine.infer({"IN": batch})
    assert list(outputs) == ["OUT"]
    assert outputs["OUT"].dtype == np.float32
    np.testing.assert_array_equal(outputs["OUT"], (batch + 1) * 2)
    engine.close()


def test_each_instance_gets_its_own_handler_module(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, PYTHON_CONFIG, {"code/model.py": PYTHON_MODEL.format(tag="b")})
    first, second = loaded(spec_for(model_dir, "1")), loaded(spec_for(model_dir, "1"))
    assert first._module is not second._module
    assert first._module.__name__ != second._module.__name__
    assert first._module.LOADED_FROM == model_dir.resolve()
    first.close()
    second.close()


def test_python_backend_defaults_to_the_versions_model_py(tmp_path: Path) -> None:
    config = PYTHON_CONFIG.replace("handler: code/model.py", "")
    model_dir = write_model(tmp_path, config, {"1/model.py": PYTHON_MODEL.format(tag="c")})
    engine = loaded(spec_for(model_dir, "1"))
    assert engine.infer({"IN": np.zeros((2, 3), np.float32)})["OUT"].tolist() == [[2, 2, 2], [2, 2, 2]]


def test_python_backend_without_infer_is_refused(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, PYTHON_CONFIG, {"code/model.py": "def preprocess(inputs):\n    return inputs\n"})
    with pytest.raises(EngineLoadError, match="must define infer"):
        create_engine(spec_for(model_dir, "1")).load()


def test_handler_that_fails_to_import_is_a_load_error(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, PYTHON_CONFIG, {"code/model.py": "raise ValueError('broken on purpose')\n"})
    with pytest.raises(EngineLoadError, match="broken on purpose"):
        create_engine(spec_for(model_dir, "1")).load()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_handler_outside_the_model_directory_is_refused(tmp_path: Path, how: str) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("def infer(inputs):\n    return inputs\n")
    handler = {"dotdot": "../outside.py", "absolute": str(outside), "symlink": "link.py"}[how]
    model_dir = write_model(tmp_path, PYTHON_CONFIG.replace("code/model.py", handler), {})
    (model_dir / "link.py").symlink_to(outside)
    with pytest.raises(EngineLoadError, match="outside the model directory"):
        create_engine(spec_for(model_dir, "1")).load()


def test_handler_missing_an_output_fails_the_batch(tmp_path: Path) -> None:
    model = "def infer(inputs):\n    return {'NOT_OUT': inputs['IN']}\n"
    model_dir = write_model(tmp_path, PYTHON_CONFIG, {"code/model.py": model})
    engine = create_engine(spec_for(model_dir, "1"))
    engine.load()
    with pytest.raises(EngineError, match="no output 'OUT'"):
        engine.infer({"IN": np.zeros((1, 3), np.float32)})
    with pytest.raises(EngineLoadError, match="warm-up"):
        engine.warmup()


DIGITS_HANDLER = """
import numpy as np


def preprocess(inputs):
    # Clients send pixels in 0..1; the network wants load_digits' 0..16.
    return {"input__0": inputs["PIXELS"] * 16.0}


def postprocess(outputs, inputs):
    assert inputs["input__0"].max() <= 16.0
    return {"LABEL": outputs["output__0"].argmax(axis=1)[:, None]}
"""


def test_handler_around_a_torch_engine_uses_engine_tensors(examples: Path, tmp_path: Path, sample) -> None:
    model_dir = copy_model(examples / "digits", tmp_path / "digits")
    (model_dir / "labels.py").write_text(textwrap.dedent(DIGITS_HANDLER))
    base = load_version_config(model_dir, "1")
    config = with_config(
        base,
        handler="labels.py",
        inputs=[{"name": "PIXELS", "datatype": "FP32", "shape": [64]}],
        outputs=[{"name": "LABEL", "datatype": "INT32", "shape": [1]}],
        engine_inputs=[t.model_dump() for t in base.inputs],
        engine_outputs=[t.model_dump() for t in base.outputs],
        monitoring=None,  # the example's block watches output__0, which this config renames
    )
    engine = loaded(spec_for(model_dir, "1", config))
    for rows in (1, 7):
        label = engine.infer({"PIXELS": sample["images"][:rows] / 16.0})["LABEL"]
        assert label.shape == (rows, 1) and label.dtype == np.int32
        np.testing.assert_array_equal(label[:, 0], sample["probabilities"][:rows].argmax(axis=1))
    engine.close()


# -- warm-up batches ------------------------------------------------------------------------------


def test_warmup_batch_shapes() -> None:
    config = parse_model_config(
        textwrap.dedent("""
        backend: onnx
        max_batch_size: 64
        inputs:
          - {name: TEXT, datatype: BYTES, shape: [1]}
          - {name: IDS, datatype: INT64, shape: [-1]}
        outputs: [{name: OUT, datatype: FP32, shape: [2]}]
        """),
        "test",
    )
    batch = warmup_inputs(config.inputs, config.max_batch_size)
    assert batch["TEXT"].shape == (2, 1) and batch["TEXT"][0, 0] == WARMUP_BYTES
    assert batch["IDS"].shape == (2, WARMUP_VARIABLE_DIM) and batch["IDS"].dtype == np.int64
    unbatched = warmup_inputs(config.inputs, 0)
    assert unbatched["IDS"].shape == (WARMUP_VARIABLE_DIM,)
    assert warmup_inputs(config.inputs, 1)["TEXT"].shape == (1, 1)


# -- GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("version", sorted(DIGITS_VERSIONS))
def test_digits_on_cuda_match_cpu(examples: Path, sample, version: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if version == "2":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            pytest.skip("onnxruntime has no CUDA provider here")
    config = with_config(load_version_config(examples / "digits", version), device="cuda")
    engine = loaded(spec_for(examples / "digits", version, config))
    for rows in (1, 7, 16):
        outputs = engine.infer({"input__0": sample["images"][:rows]})["output__0"]
        np.testing.assert_allclose(outputs, sample["probabilities"][:rows], atol=1e-4)
    engine.close()


def test_run_on_event_loop_is_an_optional_strict_bool() -> None:
    text = textwrap.dedent("""
        backend: onnx
        max_batch_size: 8
        inputs: [{name: X, datatype: FP32, shape: [2]}]
        outputs: [{name: Y, datatype: FP32, shape: [2]}]
        """)
    assert parse_model_config(text, "test").run_on_event_loop is False
    assert parse_model_config(text + "run_on_event_loop: true\n", "test").run_on_event_loop is True
    with pytest.raises(ModelConfigError, match="run_on_event_loop"):
        parse_model_config(text + "run_on_event_loop: sometimes\n", "test")
