"""What every model format shares: its errors, the wrapped model analysis runs, and the format record.

A format module (``core/model/formats/<name>.py``) describes one kind of model file
with a ``ModelFormat``: how to recognise its path, hash it, load it (Keras safe
mode unless the caller opts out), wrap it for inference (class outputs, and
embeddings where it has layers to take them from), which attention methods it
supports and which preprocessing modes it accepts. ``core.model.formats`` collects
them; nothing else matches format names. Importing this module imports no
TensorFlow, onnx or onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.data.preprocess import MODES, Preprocessing
from core.errors import UserError


class ModelError(UserError):
    """A model that cannot be used (the message names the file or layer at fault)."""


class UnsafeModelError(ModelError):
    """A model that can run arbitrary code, refused without the caller's opt-in.

    ``reason`` says why in words that name no command-line flag (for callers
    such as the dashboard, which have none to offer); the message adds the
    CLI's ``--unsafe-load``.
    """

    def __init__(self, path: Path, reason: str):
        super().__init__(f"Model {str(path)!r} refused: {reason}. Load it only if you trust it: "
                         "add --unsafe-load")
        self.reason = reason


@dataclass(kw_only=True)
class InferenceModel:
    """A callable giving (probabilities-or-logits, features) for a batch, plus what it knows.

    ``model`` is called as ``model.predict_on_batch(x)`` -> (outputs, features)
    when ``has_features``, else ``model(x)`` -> outputs; ``x`` is what
    ``core.data.preprocess.feed(pixels, preprocessing)`` returns.
    """

    model: object
    input_size: tuple[int, int] | None
    channels: int | None
    n_outputs: int
    layer: str | None              # name of the layer whose output are the features
    output_activation: str | None  # 'softmax', 'sigmoid', 'linear', ... or None if unknown
    preprocessing: Preprocessing   # resolved: never 'auto'
    has_features: bool
    rescales_input: bool = False   # the model holds its own preprocessing layer (Rescaling, Normalization)
    rescaling_layer: str | None = None  # its name, when known
    notes: list[str] = field(default_factory=list)  # what the user should know of how it was read

    @property
    def scale(self) -> str:
        """The preprocessing mode ('raw', 'unit', 'caffe', ...), as older callers named it."""
        return self.preprocessing.mode

    def outputs(self, x):
        """Class outputs (N, K) for a fed batch, whatever the model returns besides."""
        if self.has_features:
            return self.model.predict_on_batch(x)[0]
        return self.model(x)


@dataclass(frozen=True, kw_only=True)
class ModelFormat:
    """One model format, as ``core.model.formats`` registers it.

    name          : recorded in a run's manifest ('keras', 'h5', 'savedmodel', 'onnx').
    description   : words for error messages ('.keras file').
    suffixes      : file suffixes it is saved with (empty for a folder format).
    claims        : path -> bool, cheap (suffix or folder layout): the path is meant to be this format.
    check         : path -> None, raises ModelError when a claimed path is not a valid file of it.
    hash          : path -> SHA-256 hex of everything the model is read from.
    load          : (path, unsafe) -> loaded model object.
    owns          : object -> bool: a loaded (or in-memory) model of this format.
    inference     : (model, layer, preprocessing) -> InferenceModel.
    embeddings    : whether it gives features (and so the map, neighbours, duplicates).
    attention     : attention methods it supports ('gradcam' needs layers; model-agnostic ones run on any).
    preprocessing : modes it accepts.
    ray           : whether the Ray engine can load it from its files.
    risk          : why loading it runs code without an opt-in, or None (Keras safe mode / plain data).
    """

    name: str
    description: str
    suffixes: tuple[str, ...]
    claims: Callable[[Path], bool]
    check: Callable[[Path], None]
    hash: Callable[[Path], str]
    load: Callable[..., object]
    owns: Callable[[object], bool]
    inference: Callable[..., InferenceModel]
    embeddings: bool = True
    attention: tuple[str, ...] = ()
    preprocessing: tuple[str, ...] = field(default_factory=lambda: ("auto", *MODES))
    ray: bool = False
    risk: str | None = None


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of a library's error message, cut to ``limit`` characters."""
    for line in (str(exc).strip() or type(exc).__name__).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__
