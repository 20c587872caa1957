"""TensorFlow SavedModel folders, called through their serving signature.

Keras 3 cannot rebuild a SavedModel's inner layers (``keras.layers.TFSMLayer``
does the same as this module), so a SavedModel yields class outputs only: no
embeddings, no Grad-CAM; model-agnostic attention works. Its graph can run
arbitrary operations (file writes included) outside Keras safe mode, so it is
loaded only with the caller's opt-in. TensorFlow is imported inside.
"""

from __future__ import annotations

from pathlib import Path

from core.data.preprocess import Preprocessing, check_channels
from core.model.formats.base import InferenceModel, ModelError, ModelFormat, UnsafeModelError, first_line
from core.model.formats.files import hash_files

SAVEDMODEL_RISK = ("a SavedModel's graph can run arbitrary operations (file writes, ...) when called; "
                   "it is not covered by Keras safe mode")


def _claims(path: Path) -> bool:
    return path.is_dir()


def _check(path: Path) -> None:
    if not (path / "saved_model.pb").is_file():
        raise ModelError(f"Not a Keras model: folder {str(path)!r} has no saved_model.pb")


def load_savedmodel(path: Path, *, unsafe: bool = False) -> "SavedModelClassifier":
    if not unsafe:
        raise UnsafeModelError(path, SAVEDMODEL_RISK)
    return SavedModelClassifier(path)


class SavedModelClassifier:
    """A SavedModel's serving signature as a batch -> class-outputs callable."""

    def __init__(self, path: Path):
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # boundary: TF raises many types for a broken SavedModel
            raise ModelError(f"Cannot load SavedModel {str(path)!r}: {first_line(exc)}") from None
        sigs = dict(loaded.signatures)
        name = "serving_default" if "serving_default" in sigs else next(iter(sigs), None)
        if name is None:
            raise ModelError(f"SavedModel {str(path)!r} has no serving signature")
        self._loaded, self._fn = loaded, sigs[name]
        _, kwargs = self._fn.structured_input_signature
        if len(kwargs) != 1:
            raise ModelError(f"SavedModel {str(path)!r} takes {len(kwargs)} inputs; expected one image batch")
        (self._arg, spec), = kwargs.items()
        self.input_shape = tuple(spec.shape)
        outs = self._fn.structured_outputs
        self._out_key = next(iter(outs))
        self.n_outputs = int(outs[self._out_key].shape[-1])
        self.name = path.name
        # The graph keeps Keras layer names: a Rescaling/Normalization layer means raw 0..255 input.
        graph = self._fn.graph.as_graph_def()
        names = [n.name for n in graph.node] + [n.name for f in graph.library.function for n in f.node_def]
        self.rescales_input = any(("rescaling" in n.lower() or "normalization" in n.lower()) for n in names)

    def __call__(self, x):
        return self._fn(**{self._arg: x})[self._out_key].numpy()



def savedmodel_inference_model(model: SavedModelClassifier, *, layer: str | None = None,
                               preprocessing: Preprocessing = Preprocessing()) -> InferenceModel:
    """Class outputs only; 'auto' preprocessing is 'raw' when the graph shows a rescaling layer."""
    if layer is not None:
        raise ModelError(f"--layer {layer!r} is not available for a SavedModel: Keras 3 loads it "
                         "as one opaque function. Save the model as .keras to get embeddings")
    shape = model.input_shape
    size = (shape[1], shape[2]) if len(shape) == 4 and shape[1] and shape[2] else None
    channels = shape[3] if len(shape) == 4 else None
    resolved = preprocessing.resolved("raw" if model.rescales_input else "unit")
    if channels:
        check_channels(resolved, int(channels))
    return InferenceModel(
        model=model, input_size=size, channels=channels, n_outputs=model.n_outputs, layer=None,
        output_activation=None, preprocessing=resolved, has_features=False,
        rescales_input=model.rescales_input,
    )


FORMATS = (
    ModelFormat(name="savedmodel", description="SavedModel folder", suffixes=(), claims=_claims, check=_check,
                hash=hash_files, load=load_savedmodel, owns=lambda model: isinstance(model, SavedModelClassifier),
                inference=savedmodel_inference_model, embeddings=False, attention=("occlusion",), ray=True,
                risk=SAVEDMODEL_RISK),
)
