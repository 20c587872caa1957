"""Content hashes of model files (a file, or every file of a folder), shared by the formats."""

from __future__ import annotations

import hashlib
from pathlib import Path


def hash_files(path: str | Path, *, extra: list[Path] | tuple[Path, ...] = ()) -> str:
    """SHA-256 of a model file's bytes, or of every file of a folder with its relative name.

    ``extra`` files (an ONNX file's external weights) are hashed after the file,
    each preceded by its name, so that renaming or changing one changes the hash.
    """
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p, *extra]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        elif f != p:
            h.update(b"\0" + f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
