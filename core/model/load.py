"""Loading models safely and building the one-pass probabilities+features model.

The public entry points for any model file; what each format does is
declared by its module in ``core.model.formats`` (Keras ``.keras``/``.h5``,
SavedModel folders, ONNX files run with onnxruntime), all giving the same
``InferenceModel``. What the model is fed is ``core.data.preprocess.feed``.
Keras, TensorFlow and onnxruntime are imported inside the functions:
importing this module is cheap, so that reading runs never pays for them.
"""

from __future__ import annotations

from pathlib import Path

from core.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, PREPROCESS_CHOICES, Preprocessing, feed
from core.model import formats
from core.model.formats.base import InferenceModel, ModelError, UnsafeModelError
from core.model.formats.files import hash_files
from core.model.formats.keras import PYTHON_CODE_RISK
from core.model.formats.savedmodel import SAVEDMODEL_RISK, SavedModelClassifier

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "InferenceModel", "ModelError", "PYTHON_CODE_RISK", "SAVEDMODEL_RISK",
           "SCALES", "SavedModelClassifier", "UnsafeModelError", "build_inference_model", "file_sha256",
           "load_model", "model_format", "prepare_input"]

# The choices of --preprocess (and of the older --scale); listed once, in core.data.preprocess.
SCALES = PREPROCESS_CHOICES


def model_format(path: str | Path) -> str:
    """The registered format name of the model at ``path`` ('keras', 'h5', 'savedmodel', 'onnx', ...);
    raises ModelError for anything else."""
    return formats.detect(path).name


def file_sha256(path: str | Path) -> str:
    """Content hash of a model: its file, every file of a SavedModel folder, or an ONNX file with its
    external weights (the hash of the format that claims the path); of any other file (a predictions
    file), its bytes."""
    p = Path(path)
    fmt = next((f for f in formats.all_formats().values() if f.claims(p)), None)
    return fmt.hash(p) if fmt is not None else hash_files(p)


def load_model(path: str | Path, *, unsafe: bool = False):
    """Load the model at ``path`` the way its format does (Keras safe mode unless ``unsafe``).

    A model that can run arbitrary code is refused with an UnsafeModelError
    unless ``unsafe=True``: one that needs Python code (a Lambda layer), and
    every SavedModel. An ONNX file is data run by onnxruntime's standard
    operators, so it needs no opt-in and imports no TensorFlow.
    """
    return formats.detect(path).load(Path(path), unsafe=unsafe)


def build_inference_model(model, *, layer: str | None = None, scale: str | None = None,
                          preprocessing: Preprocessing | str | None = None) -> InferenceModel:
    """Wrap a loaded ``model`` so that one call returns class outputs and features, by its format.

    ``preprocessing`` (or its older name ``scale``, a mode) says what the model
    was trained on; 'auto' lets the format choose (raw 0..255 for a model that
    rescales its own input, else unit 0..1). Raises ModelError (one line).
    """
    if preprocessing is None:
        preprocessing = scale or "auto"
    if isinstance(preprocessing, str) and preprocessing.partition("+")[0] not in PREPROCESS_CHOICES:
        raise ModelError(f"--preprocess must be one of {list(PREPROCESS_CHOICES)}. Received: {preprocessing!r}")
    fmt = formats.of_model(model)
    preprocessing = Preprocessing.parse(preprocessing)
    if preprocessing.mode not in fmt.preprocessing:
        raise ModelError(f"--preprocess {preprocessing.mode} is not available for a {fmt.description}. "
                         f"Available: {list(fmt.preprocessing)}")
    return fmt.inference(model, layer=layer, preprocessing=preprocessing)


def prepare_input(batch_uint8, scale: str):
    """uint8 (n, h, w, c) to float32 as the model expects: ``core.data.preprocess.feed`` under its older name."""
    return feed(batch_uint8, scale)
