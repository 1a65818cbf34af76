"""`shunter models register --config`: which config text a new version gets."""

from __future__ import annotations

import yaml

from services.cli.admin_cmds import version_config
from services.common.model_config import parse_model_config

MODEL = """\
backend: torchscript
max_batch_size: 8
inputs: [{name: x, datatype: FP32, shape: [4]}]
outputs: [{name: y, datatype: FP32, shape: [2]}]
"""


def test_a_new_version_registered_from_another_versions_config_gets_the_merge(tmp_path):
    (tmp_path / "3").mkdir()
    (tmp_path / "config.yaml").write_text(MODEL)
    (tmp_path / "3" / "config.yaml").write_text("backend: torch_export\n")
    text, source = version_config(tmp_path / "3" / "config.yaml", "4")
    config = parse_model_config(text, source)  # raised "Field required" before: 3's file alone
    assert config.backend == "torch_export" and config.max_batch_size == 8
    assert str(tmp_path / "config.yaml") in source and str(tmp_path / "3" / "config.yaml") in source


def test_model_level_config_is_overlaid_by_the_registered_versions_file(tmp_path):
    (tmp_path / "2").mkdir()
    (tmp_path / "config.yaml").write_text(MODEL)
    (tmp_path / "2" / "config.yaml").write_text("backend: onnx\n")
    assert yaml.safe_load(version_config(tmp_path / "config.yaml", "2")[0])["backend"] == "onnx"
    assert yaml.safe_load(version_config(tmp_path / "config.yaml", "1")[0])["backend"] == "torchscript"


def test_a_config_outside_a_repository_is_taken_as_it_is(tmp_path):
    (tmp_path / "mine.yaml").write_text(MODEL)
    assert version_config(tmp_path / "mine.yaml", "7") == (MODEL, str(tmp_path / "mine.yaml"))
