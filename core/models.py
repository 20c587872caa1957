"""Loading models safely and building the one-pass probabilities+features model.

Keras models (``.keras``, ``.h5``, SavedModel folders) and ONNX files
(``core.onnx_model``, run with onnxruntime) give the same ``InferenceModel``.
Keras, TensorFlow and onnxruntime are imported inside the functions: importing
this module is cheap, so that reading runs never pays for them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5", ".onnx")
SCALES = ("auto", "raw", "unit", "symmetric", "imagenet")
# torchvision's normalisation (x / 255 - mean) / std per RGB channel, the 'imagenet' scale.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


SAVEDMODEL_RISK = ("a SavedModel's graph can run arbitrary operations (file writes, ...) when called; "
                   "it is not covered by Keras safe mode")
PYTHON_CODE_RISK = "it needs arbitrary Python code to load (e.g. a Lambda layer)"


def model_format(path: str | Path) -> str:
    """'keras', 'h5', 'savedmodel' or 'onnx'; raises ModelError for anything else."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"Model path does not exist: {str(p)!r}")
    if p.is_dir():
        if (p / "saved_model.pb").is_file():
            return "savedmodel"
        raise ModelError(f"Not a Keras model: folder {str(p)!r} has no saved_model.pb")
    suffix = p.suffix.lower()
    if suffix == ".keras":
        if not zipfile.is_zipfile(p):
            raise ModelError(f"Not a Keras model file: {str(p)!r} (a .keras file is a zip archive; this is not)")
        return "keras"
    if suffix in (".h5", ".hdf5"):
        with open(p, "rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                raise ModelError(f"Not a Keras model file: {str(p)!r} (not an HDF5 file)")
        return "h5"
    if suffix == ".onnx":
        if p.stat().st_size == 0:
            raise ModelError(f"Not an ONNX model file: {str(p)!r} (it is empty)")
        return "onnx"
    raise ModelError(f"Not a Keras model file: {str(p)!r} (expected .keras, .h5 or a SavedModel folder; "
                     ".onnx for an ONNX model)")


def file_sha256(path: str | Path) -> str:
    """Content hash of a model file, or of every file of a SavedModel folder.

    An ONNX file that keeps its weights in external data files is hashed with
    them (each named); any other file's hash is the SHA-256 of its bytes.
    """
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    if p.is_file() and p.suffix.lower() == ".onnx":
        from core.onnx_model import external_data_files

        files += external_data_files(p)
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        elif f != p:
            h.update(b"\0" + f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _register_custom_layers() -> None:
    try:
        import core.layers  # noqa: F401  (registers our serializable preprocessing layers)
    except ImportError:
        pass


def load_model(path: str | Path, *, unsafe: bool = False):
    """Load a ``.keras``, legacy ``.h5`` or SavedModel in Keras safe mode, or an ONNX file.

    A model that can run arbitrary code is refused with an UnsafeModelError
    unless ``unsafe=True``: one that needs Python code (a Lambda layer), and
    every SavedModel, whose graph runs whatever operations it holds (file
    writes included) outside Keras safe mode. A SavedModel is called through
    its serving signature and yields class outputs only: Keras 3 cannot rebuild
    its inner layers (this is what ``keras.layers.TFSMLayer`` does too), so
    there are no embeddings. An ONNX file is data run by onnxruntime's standard
    operators (no custom-operator library is loaded), so it needs no opt-in; it
    returns a ``core.onnx_model.OnnxModel`` without importing TensorFlow.
    """
    fmt = model_format(path)
    p = Path(path)
    if fmt == "onnx":
        from core.onnx_model import load_onnx

        return load_onnx(p)
    if fmt == "savedmodel":
        if not unsafe:
            raise UnsafeModelError(p, SAVEDMODEL_RISK)
        return SavedModelClassifier(p)
    import keras

    _register_custom_layers()
    try:
        config = _repaired_legacy_config(p) if fmt == "h5" else None
        if config is not None:
            return _load_h5_with_config(p, config, unsafe=unsafe)
        return keras.saving.load_model(p, compile=False, safe_mode=not unsafe)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"Not a Keras model file: {str(p)!r} ({_first_line(exc)})") from None
    except (ValueError, TypeError) as exc:
        msg = _first_line(exc)
        if "safe_mode" in msg or "Lambda" in msg or "unsafe" in msg.lower():
            raise UnsafeModelError(p, PYTHON_CODE_RISK) from None
        raise ModelError(f"Cannot load model {str(p)!r}: {msg}") from None


# Layer classes whose config is a whole model (nested backbones).
_MODEL_CLASSES = ("Functional", "Model", "Sequential")


def _repaired_legacy_config(path: Path) -> dict | None:
    """The ``model_config`` of a legacy .h5 file rewritten so that Keras 3 can rebuild it, or
    None when it needs no change (or has no config; Keras then says what is wrong).

    tf.keras 2.x counted the node that creates a nested model (a keras.applications backbone
    built with ``input_shape``) as that model's node 0, so the outer model refers to its call as
    ``['vgg16', 1, 0, {}]``; Keras 3 creates no such node and cannot resolve index 1. And
    tf.keras 2.x wrote single inputs and outputs as one-element lists, which a Keras 3 model
    returns as a list (a nested backbone then hands ``[tensor]`` to the next layer). Only these
    index and nesting fields change: layer configs, and so what safe mode checks, are untouched.
    """
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
    if raw is None:
        return None
    config = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    return config if _repair_model_configs(config) else None


def _is_tensor_ref(ref) -> bool:
    """A legacy reference to a layer's output: [layer_name, node_index, tensor_index(, kwargs)]."""
    return isinstance(ref, list) and len(ref) in (3, 4) and isinstance(ref[0], str) and isinstance(ref[1], int)


def _repair_model_configs(obj) -> bool:
    """Repair every Functional config inside ``obj`` in place (see _repaired_legacy_config);
    True if anything changed."""
    changed = False
    if isinstance(obj, dict):
        inner = obj.get("config")
        if obj.get("class_name") in ("Functional", "Model") and isinstance(inner, dict) and "layers" in inner:
            changed |= _repair_functional_config(inner)
        for value in obj.values():
            changed |= _repair_model_configs(value)
    elif isinstance(obj, list):
        for value in obj:
            changed |= _repair_model_configs(value)
    return changed


def _repair_functional_config(config: dict) -> bool:
    changed = False
    layers = [lyr for lyr in config.get("layers") or [] if isinstance(lyr, dict)]
    nested = {lyr.get("name"): lyr for lyr in layers if lyr.get("class_name") in _MODEL_CLASSES}
    refs: dict[str, list[list]] = {name: [] for name in nested}
    for lyr in layers:
        for node in lyr.get("inbound_nodes") or []:
            for ref in node if isinstance(node, list) else []:
                if _is_tensor_ref(ref) and ref[0] in refs:
                    refs[ref[0]].append(ref)
    for name, found in refs.items():
        # A nested model called n times has nodes 0..n-1 in Keras 3; tf.keras 2.x wrote 1..n.
        n_calls = len(nested[name].get("inbound_nodes") or [])
        if found and min(r[1] for r in found) >= 1 and max(r[1] for r in found) >= n_calls:
            for ref in found:
                ref[1] -= 1
            changed = True
    for key in ("input_layers", "output_layers"):
        value = config.get(key)
        if isinstance(value, list) and len(value) == 1 and _is_tensor_ref(value[0]):
            config[key] = value[0]
            changed = True
    return changed


def _load_h5_with_config(path: Path, config: dict, *, unsafe: bool):
    """Load the legacy .h5 ``path`` with its model config replaced by ``config``: Keras 3's own
    H5 loader on a temporary copy (the user's file is never written), so weights are matched
    the way Keras matches them and safe mode applies as for any .h5."""
    import h5py
    import keras

    with tempfile.TemporaryDirectory(prefix="legacy-h5-") as folder:
        copy = Path(folder) / path.name
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as f:
            f.attrs["model_config"] = json.dumps(config)
        return keras.saving.load_model(copy, compile=False, safe_mode=not unsafe)


class SavedModelClassifier:
    """A SavedModel's serving signature as a batch -> class-outputs callable."""

    def __init__(self, path: Path):
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # TF raises many types for a broken SavedModel
            raise ModelError(f"Cannot load SavedModel {str(path)!r}: {_first_line(exc)}") from None
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


@dataclass(kw_only=True)
class InferenceModel:
    """A callable giving (probabilities-or-logits, features) for a batch, plus what it knows."""

    model: object                  # keras.Model with outputs [classifier, features] or TFSMLayer
    input_size: tuple[int, int] | None
    channels: int | None
    n_outputs: int
    layer: str | None              # name of the layer whose output are the features
    output_activation: str | None  # 'softmax', 'sigmoid', 'linear', ... or None if unknown
    scale: str                     # 'raw' (0..255), 'unit' (0..1), 'symmetric' (-1..1) or 'imagenet'
    has_features: bool


def _walk_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk_layers(layer)


def _guess_scale(model) -> str:
    """'raw' when the model rescales its own input (Rescaling/Normalization/our preprocess layers)."""
    import keras

    for layer in _walk_layers(model):
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            return "raw"
        if type(layer).__module__.startswith("core."):
            return "raw"
    return "unit"


def _activation_name(layer) -> str | None:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", None) if act is not None else None


def build_inference_model(model, *, layer: str | None = None, scale: str = "auto") -> InferenceModel:
    """Wrap ``model`` so that one call returns class outputs and penultimate features.

    Features default to the input of the last Dense layer (the classifier);
    ``layer`` names another layer, whose output is used (averaged over space
    when it is a feature map). An ONNX model (``load_model`` of a ``.onnx``)
    is wrapped by ``core.onnx_model.onnx_inference_model`` (input of the last
    Gemm/MatMul; ``layer`` names a node output), without importing Keras.
    """
    if scale not in SCALES:
        raise ModelError(f"scale must be one of {list(SCALES)}. Received: scale={scale!r}")
    from core.onnx_model import OnnxModel, onnx_inference_model

    if isinstance(model, OnnxModel):
        return onnx_inference_model(model, layer=layer, scale=scale)
    import keras

    if isinstance(model, SavedModelClassifier):
        if layer is not None:
            raise ModelError(f"--layer {layer!r} is not available for a SavedModel: Keras 3 loads it "
                             "as one opaque function. Save the model as .keras to get embeddings")
        shape = model.input_shape
        size = (shape[1], shape[2]) if len(shape) == 4 and shape[1] and shape[2] else None
        return InferenceModel(
            model=model, input_size=size, channels=shape[3] if len(shape) == 4 else None,
            n_outputs=model.n_outputs, layer=None, output_activation=None,
            scale=("raw" if model.rescales_input else "unit") if scale == "auto" else scale,
            has_features=False,
        )

    if not model.inputs:
        raise ModelError("The model has no defined input; build it with an Input layer first")
    in_shape = tuple(model.inputs[0].shape)
    if len(in_shape) != 4:
        raise ModelError(f"Expected an image model with input (batch, height, width, channels). "
                         f"Received input shape {in_shape}")
    size = (in_shape[1], in_shape[2]) if in_shape[1] and in_shape[2] else None
    out = model.outputs[0]
    top_layers = list(model.layers)
    dense = [lyr for lyr in top_layers if isinstance(lyr, keras.layers.Dense)]
    activation = _activation_name(top_layers[-1]) if top_layers else None
    if activation is None and dense:
        activation = _activation_name(dense[-1])
    if top_layers and isinstance(top_layers[-1], keras.layers.Activation):
        activation = _activation_name(top_layers[-1])

    if layer is None:
        if not dense:
            raise ModelError("No Dense layer found to take features from: pass --layer NAME "
                             f"(layers: {[lyr.name for lyr in top_layers][-8:]})")
        feature_layer = dense[-1]
        features = feature_layer.input
        layer_name = f"{feature_layer.name}:input"
    elif "/" in layer:
        model, out, features = _tap_nested_layer(model, layer)
        layer_name = layer
    else:
        try:
            feature_layer = model.get_layer(layer)
        except ValueError:
            raise ModelError(f"No layer named {layer!r}. Layers: {[lyr.name for lyr in top_layers]} "
                             "(a layer inside a nested model: OUTER/INNER, e.g. vgg16/block5_pool)") from None
        features = feature_layer.output
        layer_name = layer
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name="features_pool")(features)
    elif len(features.shape) != 2:
        features = keras.layers.Flatten(name="features_flat")(features)
    wrapped = keras.Model(model.inputs, [out, features], name="probs_and_features")
    return InferenceModel(
        model=wrapped, input_size=size, channels=in_shape[3], n_outputs=int(out.shape[-1]),
        layer=layer_name, output_activation=activation,
        scale=_guess_scale(model) if scale == "auto" else scale, has_features=True,
    )


def _tap_nested_layer(model, layer: str):
    """Rebuild ``model`` so that ``OUTER/INNER``, a layer inside a nested model (a
    keras.applications backbone), is an output too: returns (model, output, features).

    Works for models whose top-level layers form one chain (Sequential, or the
    transfer recipes' Functional models); the rebuilt model is checked against
    the original on random input before it is used.
    """
    import keras
    import numpy as np

    outer_name, inner_name = layer.split("/", 1)
    try:
        nested = model.get_layer(outer_name)
    except ValueError:
        raise ModelError(f"No layer named {outer_name!r} in --layer {layer!r}. "
                         f"Layers: {[lyr.name for lyr in model.layers]}") from None
    if not isinstance(nested, keras.Model):
        raise ModelError(f"--layer {layer!r}: {outer_name!r} is a {type(nested).__name__}, not a nested model")
    try:
        inner = nested.get_layer(inner_name)
    except ValueError:
        names = [lyr.name for lyr in nested.layers]
        raise ModelError(f"No layer named {inner_name!r} inside {outer_name!r}. Its last layers: {names[-8:]}") from None
    tap = keras.Model(nested.inputs, [nested.outputs[0], inner.output], name=f"{outer_name}_tap")
    not_a_chain = ModelError(f"--layer {layer!r}: the model's top-level layers are not a single chain, "
                             "so a layer inside a nested model cannot be tapped; pass a top-level layer")
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name="image")
    x, features = inputs, None
    try:
        for lyr in model.layers:
            if isinstance(lyr, keras.layers.InputLayer):
                continue
            if lyr is nested:
                x, features = tap(x)
            else:
                x = lyr(x)
    except Exception:  # a branching graph breaks the chain in layer-specific ways
        raise not_a_chain from None
    rebuilt = keras.Model(inputs, x, name=f"{model.name}_rebuilt")
    probe = np.random.default_rng(0).uniform(0, 255, (2, *model.inputs[0].shape[1:])).astype("float32")
    expected = np.asarray(model(probe, training=False))
    got = np.asarray(rebuilt(probe, training=False))
    if expected.shape != got.shape or not np.allclose(expected, got, atol=1e-4):
        raise not_a_chain
    return rebuilt, x, features


def prepare_input(batch_uint8, scale: str):
    """uint8 (n, h, w, c) to float32 in the model's expected range.

    'raw' 0..255, 'unit' 0..1, 'symmetric' -1..1, 'imagenet' torchvision's
    ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD`` per RGB channel (c must be 3).
    """
    import numpy as np

    x = batch_uint8.astype(np.float32)
    if scale == "unit":
        x *= 1.0 / 255.0
    elif scale == "symmetric":
        x = x * (2.0 / 255.0) - 1.0
    elif scale == "imagenet":
        if x.shape[-1] != 3:
            raise ModelError(f"scale 'imagenet' normalises 3 RGB channels; the images have {x.shape[-1]}")
        x *= 1.0 / 255.0
        x -= np.asarray(IMAGENET_MEAN, np.float32)
        x /= np.asarray(IMAGENET_STD, np.float32)
    return x
