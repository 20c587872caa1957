"""ONNX files (PyTorch's export path), run by onnxruntime on the CPU; see ``core.model.onnx_model``.

An ONNX file is a graph of standard operators and weights, i.e. data: no
opt-in is needed to load it. It gives class outputs and features (the input of
the last Gemm/MatMul, or a named node output); Grad-CAM needs Keras layers, so
only model-agnostic attention applies. Importing this module imports neither
onnx nor onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

from core.model.formats.base import ModelError, ModelFormat
from core.model.formats.files import hash_files


def _claims(path: Path) -> bool:
    return path.suffix.lower() == ".onnx"


def _check(path: Path) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        raise ModelError(f"Not an ONNX model file: {str(path)!r} (it is empty)")


def _hash(path: Path) -> str:
    from core.model.onnx_model import external_data_files

    return hash_files(path, extra=external_data_files(path))


def _load(path: Path, *, unsafe: bool = False):
    from core.model.onnx_model import load_onnx

    return load_onnx(path)


def _owns(model) -> bool:
    from core.model.onnx_model import OnnxModel  # imports neither onnx nor onnxruntime

    return isinstance(model, OnnxModel)


def _inference(model, **options):
    from core.model.onnx_model import onnx_inference_model

    return onnx_inference_model(model, **options)


FORMATS = (
    ModelFormat(name="onnx", description=".onnx file", suffixes=(".onnx",), claims=_claims, check=_check,
                hash=_hash, load=_load, owns=_owns, inference=_inference, embeddings=True,
                attention=("occlusion",), ray=False),
)
