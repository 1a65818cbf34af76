"""Hostile model artifacts for security tests, built from the example models on the fly.

Each one writes a marker file if the code it carries ever runs, so a test can assert that
it never did.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

#: Archive members by name under the archive's root folder.
Files = dict[str, bytes]


class WritesMarker:
    """Unpickling this writes ``path``: what a hostile artifact would do, harmlessly."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({str(self.path)!r}, 'w').write('code ran')",))


def rewrite_archive(archive: Path, edit: Callable[[Files], None]) -> None:
    """Rewrite a torch zip archive in place after ``edit`` changed its members."""
    with zipfile.ZipFile(archive) as zin:
        root = zin.namelist()[0].split("/")[0] + "/"
        files = {info.filename[len(root) :]: zin.read(info) for info in zin.infolist()}
    edit(files)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zout:
        for name, data in files.items():
            zout.writestr(root + name, data)


def add_opaque_object(files: Files, marker: Path) -> None:
    """A torch.export constant that torch 2.13 reads with plain ``pickle.loads``."""
    files["data/constants/opaque_obj_0"] = pickle.dumps(WritesMarker(marker))
    config = {"evil": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}
    files["data/constants/model_constants_config.json"] = json.dumps({"config": config}).encode()
