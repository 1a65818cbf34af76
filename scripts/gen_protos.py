#!/usr/bin/env python3
"""Regenerate the Python code for every .proto under protos/ into services/gen/.

The proto tree is mounted at the virtual path ``services/gen`` so the generated
modules import each other as ``services.gen...`` with no rewriting afterwards.
Run with ``--check`` to fail (exit 1) when the committed code is stale.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "services" / "gen"
VIRTUAL = "services/gen"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    protos = sorted(p.relative_to(PROTOS) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{VIRTUAL}={PROTOS}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[f"{VIRTUAL}/{p}" for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = out_dir / VIRTUAL
    for directory in [generated, *[d for d in generated.rglob("*") if d.is_dir()]]:
        (directory / "__init__.py").touch()
    return sorted(p.relative_to(generated) for p in generated.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        fresh = Path(tmp) / VIRTUAL
        if args.check:
            stale = [
                str(f)
                for f in files
                if not (TARGET / f).exists() or not filecmp.cmp(fresh / f, TARGET / f, shallow=False)
            ]
            committed = {
                p.relative_to(TARGET) for p in TARGET.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            }
            stale += [str(p) for p in committed - set(files)]
            if stale:
                print("stale generated code (run scripts/gen_protos.py):", ", ".join(sorted(stale)))
                return 1
            print("generated code is up to date")
            return 0
        for f in files:
            dest = TARGET / f
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes((fresh / f).read_bytes())
        print(f"wrote {len(files)} files under {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
