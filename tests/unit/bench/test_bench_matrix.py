"""scripts/bench/matrix.yaml loads, and a malformed matrix stops the runner naming the key (exit 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts" / "bench"))

import matrix
import run


def test_every_profile_of_the_committed_matrix_resolves():
    whole, quick = matrix.load(profile="quick")
    assert quick is not None
    # quick extends full: its own keys win, the rest comes from full.
    assert quick["runs"] == 1 and quick["worker"]["concurrencies"] == [1, 64]
    assert quick["worker"]["configs"] == whole["profiles"]["full"]["worker"]["configs"]
    assert quick["router"] == whole["profiles"]["full"]["router"]
    for name in whole["profiles"]:
        assert matrix.resolve(whole, name)["models"]


def _broken(tmp_path: Path, change) -> Path:
    data = yaml.safe_load(matrix.MATRIX.read_text())
    change(data)
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["profiles"]["quick"].update(runs="three"), "profiles.quick.runs: expected int"),
        (lambda m: m["profiles"]["full"]["worker"].update(concurency=[1]), "profiles.full.worker.concurency: unknown"),
        (
            lambda m: m["profiles"]["gpu"]["worker"]["points"].append(["digits", "sideways", 1, 1]),
            "profiles.gpu.worker.points[17]: config 'sideways'",
        ),
        (lambda m: m["bars"]["cpu"][0].pop("theirs"), "bars.cpu[0].theirs: missing"),
        (lambda m: m["bars"]["cpu"][1].update(kind="vibes"), "bars.cpu[1].kind: 'vibes' is not one of"),
        (lambda m: m["profiles"]["quick"].update(extends="nowhere"), "profiles.quick.extends: 'nowhere'"),
        (
            lambda m: m["profiles"]["full"]["worker"]["configs"].update({True: {"batching": True}}),
            "a name must be a string",
        ),
    ],
)
def test_a_malformed_matrix_names_the_key(tmp_path, change, message):
    path = _broken(tmp_path, change)
    with pytest.raises(matrix.MatrixError, match=message.replace("[", r"\[").replace("]", r"\]")):
        matrix.load(path)


def test_the_runner_exits_2_on_a_malformed_matrix(tmp_path, capsys):
    path = _broken(tmp_path, lambda m: m["profiles"]["full"].update(duration_s="long"))
    assert run.main(["--matrix", str(path), "--quick"]) == 2
    assert "profiles.full.duration_s: expected float" in capsys.readouterr().err
