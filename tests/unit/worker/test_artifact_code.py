"""Artifacts that would run code on the worker are refused before torch reads them.

Each crafted archive below writes a marker file when torch loads (or first runs) it
unchecked; the tests build them from the example digits model, load them through the
engines and assert the load is refused with a message naming the problem and that the
marker never appears. Nothing here starts a server.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from services.common.model_config import load_version_config
from services.worker.engines import EngineLoadError, EngineSpec, create_engine
from services.worker.engines.torch_archives import UnsafeArtifact, check_export_archive, operator_forbidden
from tests.support.crafted_artifacts import Files, WritesMarker, add_opaque_object, rewrite_archive
from tests.support.models import build_examples

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

@pytest.fixture(scope="module")
def digits() -> Path:
    return build_examples() / "digits"


def _export_copy(digits: Path, tmp_path: Path, edit: Callable[[Files], None]) -> EngineSpec:
    """A copy of digits whose version 3 archive went through ``edit``."""
    model_dir = tmp_path / "digits"
    shutil.copytree(digits, model_dir)
    rewrite_archive(model_dir / "3" / "model.pt2", edit)
    return EngineSpec("digits", "3", model_dir / "3", load_version_config(model_dir, "3"))


def _edit_program(files: Files, change: Callable[[dict], None]) -> None:
    program = json.loads(files["models/model.json"])
    change(program)
    files["models/model.json"] = json.dumps(program).encode()


def _refused(spec: EngineSpec, marker: Path, match: str) -> None:
    engine = create_engine(spec)
    with pytest.raises(UnsafeArtifact, match=match):
        engine.load()
        engine.warmup()
    assert not marker.exists(), "the artifact's code ran"


# -- torch.export --------------------------------------------------------------------------


def test_opaque_object_pickle_never_runs(digits: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    spec = _export_copy(digits, tmp_path, lambda files: add_opaque_object(files, marker))
    _refused(spec, marker, "opaque_obj_0.*plain pickle")


def test_pickled_weight_never_runs(digits: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    def edit(files: Files) -> None:
        config = json.loads(files["data/weights/model_weights_config.json"])
        entry = config["config"]["hidden.weight"]
        entry["use_pickle"] = True
        files["data/weights/" + entry["path_name"]] = pickle.dumps(WritesMarker(marker))
        files["data/weights/model_weights_config.json"] = json.dumps(config).encode()

    _refused(_export_copy(digits, tmp_path, edit), marker, "hidden.weight.*pickled")


def test_symbolic_expression_is_not_evaluated(digits: Path, tmp_path: Path) -> None:
    # sympy.sympify evaluates the string it is given.
    marker = tmp_path / "marker"
    evil = f"__import__('os').system('touch {marker}') or Symbol('s79', positive=True, integer=True)"

    def change(program: dict) -> None:
        sizes = program["graph_module"]["graph"]["tensor_values"]["input__0"]["sizes"]
        sizes[0] = {"as_expr": {"expr_str": evil, "hint": {"as_int": 2}}}

    _refused(_export_copy(digits, tmp_path, lambda f: _edit_program(f, change)), marker, "symbolic expression")


def test_guard_code_is_not_executed(digits: Path, tmp_path: Path) -> None:
    # ExportedProgram.module() exec's guards_code.
    marker = tmp_path / "marker"

    def change(program: dict) -> None:
        program["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]

    _refused(_export_copy(digits, tmp_path, lambda f: _edit_program(f, change)), marker, "guard")


def test_parameter_names_are_not_pasted_into_generated_code(digits: Path, tmp_path: Path) -> None:
    # ExportedProgram.module() writes getattr(self, "<name>") into source it exec's.
    marker = tmp_path / "marker"
    evil = f'zz", getattr(__import__("os"),"system")("touch {marker}")) if 1 else ("'
    if "." in evil:  # torch splits names on dots
        pytest.skip(f"the temporary path {marker} has a dot")
    fqn = "hidden." + evil

    def edit(files: Files) -> None:
        config = json.loads(files["data/weights/model_weights_config.json"])
        config["config"][fqn] = config["config"].pop("hidden.weight")
        files["data/weights/model_weights_config.json"] = json.dumps(config).encode()

        def change(program: dict) -> None:
            for spec in program["graph_module"]["signature"]["input_specs"]:
                if spec.get("parameter", {}).get("parameter_name") == "hidden.weight":
                    spec["parameter"]["parameter_name"] = fqn

        _edit_program(files, change)

    _refused(_export_copy(digits, tmp_path, edit), marker, "not a plain dotted name|is not plain")


def test_a_carriage_return_in_a_stack_trace_is_refused(digits: Path, tmp_path: Path) -> None:
    # The stack trace becomes a comment in generated code; "\r" would end it.
    def change(program: dict) -> None:
        node = program["graph_module"]["graph"]["nodes"][0]
        node["metadata"]["stack_trace"] = 'File "x.py", line 1, in f\r__import__("os")\n    y'

    with pytest.raises(UnsafeArtifact, match="carriage return"):
        create_engine(_export_copy(digits, tmp_path, lambda f: _edit_program(f, change))).load()


@pytest.mark.parametrize(
    "target,why",
    [("torch.os.system", "not a registered operator"), ("torch.ops.aten.save.default", "aten::save")],
)
def test_node_target_must_be_a_harmless_operator(digits: Path, tmp_path: Path, target: str, why: str) -> None:
    marker = tmp_path / "marker"
    node = {
        "target": target,
        "inputs": [{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}],
        "outputs": [],
        "metadata": {},
        "name": "boom",
    }

    def change(program: dict) -> None:
        program["graph_module"]["graph"]["nodes"].insert(0, node)

    _refused(_export_copy(digits, tmp_path, lambda f: _edit_program(f, change)), marker, why)


@pytest.mark.parametrize(
    "member,why",
    [
        ("data/aotinductor/model/model.so", "AOTInductor"),
        ("data/constants/custom_obj_0", "custom"),
        ("data/weights/model.pt", "unexpected member"),  # legacy weights: full torch.load
        ("models/other.json", "unexpected member"),
    ],
)
def test_members_torch_would_execute_or_unpickle_are_refused(
    digits: Path, tmp_path: Path, member: str, why: str
) -> None:
    def edit(files: Files) -> None:
        files[member] = b"\x7fELF or a pickle"

    with pytest.raises(UnsafeArtifact, match=why):
        create_engine(_export_copy(digits, tmp_path, edit)).load()


def test_archive_with_two_roots_or_escaping_names_is_refused(digits: Path) -> None:
    data = (digits / "3" / "model.pt2").read_bytes()
    check_export_archive(data, "digits")  # the real one passes
    for extra in ("other/archive_version", "model/../x", "model/data//weights"):
        buffer = _with_member(data, extra)
        with pytest.raises(UnsafeArtifact):
            check_export_archive(buffer, "crafted")


def _with_member(data: bytes, name: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zout.writestr(name, b"0")
    return out.getvalue()


def test_not_a_zip_is_a_plain_load_error(tmp_path: Path) -> None:
    with pytest.raises(EngineLoadError, match="not a zip"):
        check_export_archive(b"\x00" * 64, "junk")


# -- TorchScript ---------------------------------------------------------------------------


class _SavesInForward(torch.nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, input__0: torch.Tensor) -> torch.Tensor:
        torch.save(input__0, self.path)  # writes any file the model names
        return input__0[:, :10]


class _SavesOnLoad(torch.nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, input__0: torch.Tensor) -> torch.Tensor:
        return input__0[:, :10]

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        torch.save(torch.zeros(1), self.path)  # runs inside torch.jit.load


@pytest.mark.parametrize("module_class", [_SavesInForward, _SavesOnLoad])
def test_torchscript_that_writes_files_is_refused(digits: Path, tmp_path: Path, module_class: type) -> None:
    model_dir = tmp_path / "digits"
    shutil.copytree(digits, model_dir)
    marker = tmp_path / "marker"
    torch.jit.script(module_class(str(marker))).save(str(model_dir / "1" / "model.pt"))
    marker.unlink(missing_ok=True)  # saving may run __getstate__ only, but be sure
    spec = EngineSpec("digits", "1", model_dir / "1", load_version_config(model_dir, "1"))
    _refused(spec, marker, "save")


def test_forbidden_operator_names() -> None:
    assert operator_forbidden("aten::save")
    assert operator_forbidden("aten::from_file.out")
    assert operator_forbidden("debugprims::load_tensor")
    assert not operator_forbidden("aten::add.Tensor")
    assert not operator_forbidden("aten::saved_thing")


# -- ONNX for TensorRT -----------------------------------------------------------------------


def test_external_data_of_an_onnx_model_is_found_for_the_tensorrt_build(digits: Path) -> None:
    # TensorRT's parser resolves external data itself; the build refuses such models.
    from onnx import TensorProto, helper

    from services.worker.engines.tensorrt import external_data_locations

    assert external_data_locations((digits / "2" / "model.onnx").read_bytes()) == []
    weight = TensorProto(name="W", data_type=TensorProto.UINT8, dims=[16], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "/etc/shadow"), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["W"], ["Y"])], "g", [],
        [helper.make_tensor_value_info("Y", TensorProto.UINT8, [16])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert external_data_locations(model.SerializeToString()) == ["/etc/shadow"]
    with pytest.raises(EngineLoadError, match="not an ONNX model"):
        external_data_locations(b"\xff\xfe not protobuf")
