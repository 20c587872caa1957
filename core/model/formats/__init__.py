"""The model-format registry: every kind of model file, declared once by its own module.

Each module of this package other than ``base`` and ``files`` defines
``FORMATS``, a tuple of ``core.model.formats.base.ModelFormat`` records (how to
recognise, hash, load and wrap the model; its embeddings, attention methods,
preprocessing modes and Ray support). They are collected here by listing the
package, so a new format is one module (plus its tests) and no other file
matches format names: callers ask ``detect(path)``, ``of_model(model)`` or
``get(name)`` and read the record. Importing this package imports no
TensorFlow, onnx or onnxruntime.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from core.model.formats.base import InferenceModel, ModelError, ModelFormat, UnsafeModelError

__all__ = ["InferenceModel", "ModelError", "ModelFormat", "UnsafeModelError", "all_formats", "detect", "get",
           "of_model", "model_suffixes"]

_NOT_FORMATS = {"base", "files"}
_REGISTRY: dict[str, ModelFormat] = {}


def all_formats() -> dict[str, ModelFormat]:
    """Every registered format by name, in the order of their modules."""
    if not _REGISTRY:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if info.name in _NOT_FORMATS or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for fmt in getattr(module, "FORMATS", ()):
                if fmt.name in _REGISTRY:
                    raise RuntimeError(f"Model format {fmt.name!r} is declared twice ({module.__name__})")
                _REGISTRY[fmt.name] = fmt
    return dict(_REGISTRY)


def get(name: str) -> ModelFormat:
    """The format recorded as ``name`` in a manifest; ModelError lists the known ones."""
    formats = all_formats()
    if name not in formats:
        raise ModelError(f"Unknown model format {name!r}. Known formats: {sorted(formats)}")
    return formats[name]


def find(name: str | None) -> ModelFormat | None:
    """``get`` for a manifest's format that may be absent or not a model ('synthetic', 'predictions')."""
    return all_formats().get(name) if name else None


def detect(path: str | Path) -> ModelFormat:
    """The format of the model at ``path``, checked; ModelError names the path and what was expected."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"Model path does not exist: {str(p)!r}")
    formats = all_formats().values()
    for fmt in formats:
        if fmt.claims(p):
            fmt.check(p)
            return fmt
    if p.is_dir():
        raise ModelError(f"Not a model: folder {str(p)!r} is not a SavedModel (it has no saved_model.pb)")
    expected = ", ".join(f.description for f in formats)
    raise ModelError(f"Not a model file: {str(p)!r} (expected: {expected})")


def of_model(model) -> ModelFormat:
    """The format of a loaded (or in-memory) model object; ModelError for an object none owns."""
    for fmt in all_formats().values():
        if fmt.owns(model):
            return fmt
    raise ModelError(f"Not a model this tool can run: {type(model).__name__} (known formats: "
                     f"{sorted(all_formats())})")


def model_suffixes() -> tuple[str, ...]:
    """File suffixes that the formats claim (for pickers and listings)."""
    return tuple(s for f in all_formats().values() for s in f.suffixes)
