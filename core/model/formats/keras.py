"""Keras models: ``.keras`` archives and legacy ``.h5`` files, loaded in Keras safe mode.

A model that needs Python code to load (a Lambda layer) is refused with an
UnsafeModelError unless the caller opts in. A legacy tf.keras 2.x ``.h5``
whose config Keras 3 cannot rebuild (nested backbones) is repaired on a
temporary copy (``_repaired_legacy_config``). The inference wrapper gives class
outputs and features (the input of the last Dense layer, or ``layer``) in one
call. Grad-CAM needs layers, so Keras models support it, and every
model-agnostic attention method. Keras is imported inside the functions.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from core.data.preprocess import Preprocessing, check_channels
from core.model.formats.base import InferenceModel, ModelError, ModelFormat, UnsafeModelError, first_line
from core.model.formats.files import hash_files

PYTHON_CODE_RISK = "it needs arbitrary Python code to load (e.g. a Lambda layer)"


def _claims_keras(path: Path) -> bool:
    return path.suffix.lower() == ".keras"


def _claims_h5(path: Path) -> bool:
    return path.suffix.lower() in (".h5", ".hdf5")


def _check_keras(path: Path) -> None:
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise ModelError(f"Not a Keras model file: {str(path)!r} (a .keras file is a zip archive; this is not)")


def _check_h5(path: Path) -> None:
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89HDF\r\n\x1a\n":
            raise ModelError(f"Not a Keras model file: {str(path)!r} (not an HDF5 file)")


def _register_custom_layers() -> None:
    try:
        import core.model.layers  # noqa: F401  (registers our serializable preprocessing layers)
    except ImportError:
        pass


def load_keras(path: Path, *, unsafe: bool = False):
    """A ``.keras`` or ``.h5`` model in Keras safe mode (``unsafe`` lifts it), compiled=False."""
    import keras

    _register_custom_layers()
    try:
        config = _repaired_legacy_config(path) if _claims_h5(path) else None
        if config is not None:
            return _load_h5_with_config(path, config, unsafe=unsafe)
        return keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"Not a Keras model file: {str(path)!r} ({first_line(exc)})") from None
    except (ValueError, TypeError) as exc:
        msg = first_line(exc)
        if "safe_mode" in msg or "Lambda" in msg or "unsafe" in msg.lower():
            raise UnsafeModelError(path, PYTHON_CODE_RISK) from None
        raise ModelError(f"Cannot load model {str(path)!r}: {msg}") from None


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



def _walk_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk_layers(layer)


def own_preprocessing_layer(model) -> str | None:
    """The name of the layer by which ``model`` rescales its own input (Rescaling, Normalization,
    our serializable preprocessing layers), or None: such a model is fed raw 0..255 pixels."""
    import keras

    for layer in _walk_layers(model):
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            return layer.name
        if type(layer).__module__.startswith("core."):
            return layer.name
    return None


def _activation_name(layer) -> str | None:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", None) if act is not None else None


def _owns(model) -> bool:
    keras = sys.modules.get("keras")  # a Keras model in memory means Keras is imported; never import it here
    return keras is not None and isinstance(model, keras.Model)


def keras_inference_model(model, *, layer: str | None = None,
                          preprocessing: Preprocessing = Preprocessing()) -> InferenceModel:
    """Wrap a Keras ``model`` so that one call returns class outputs and penultimate features.

    Features default to the input of the last Dense layer (the classifier);
    ``layer`` names another layer, whose output is used (averaged over space
    when it is a feature map), or ``OUTER/INNER`` a layer inside a nested
    backbone. ``preprocessing`` 'auto' resolves to 'raw' for a model that
    rescales its own input, else 'unit'.
    """
    import keras

    if not model.inputs:
        raise ModelError("The model has no defined input; build it with an Input layer first")
    in_shape = tuple(model.inputs[0].shape)
    if len(in_shape) != 4:
        raise ModelError(f"Expected an image model with input (batch, height, width, channels). "
                         f"Received input shape {in_shape}")
    size = (in_shape[1], in_shape[2]) if in_shape[1] and in_shape[2] else None
    own_layer = own_preprocessing_layer(model)
    resolved = preprocessing.resolved("raw" if own_layer else "unit")
    check_channels(resolved, int(in_shape[3]))
    out = model.outputs[0]
    top_layers = list(model.layers)
    notes = []
    if len(model.outputs) > 1:  # the first output is the classes; the layers behind it say what it is
        heads = [getattr(getattr(o, "_keras_history", None), "operation", None) for o in model.outputs]
        first = heads[0]
        top_layers = [lyr for lyr in top_layers if lyr is not first] + ([first] if first is not None else [])
        shown = ", ".join(f"{getattr(h, 'name', '?')!r} ({int(o.shape[-1])} wide)"
                          for h, o in zip(heads, model.outputs))
        notes.append(f"The model has {len(model.outputs)} outputs ({shown}): the first is read as the classes.")
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
        layer=layer_name, output_activation=activation, preprocessing=resolved, has_features=True,
        rescales_input=own_layer is not None, rescaling_layer=own_layer, notes=notes,
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
    except Exception:  # boundary: a branching graph breaks the chain in layer-specific ways (-> ModelError)
        raise not_a_chain from None
    rebuilt = keras.Model(inputs, x, name=f"{model.name}_rebuilt")
    probe = np.random.default_rng(0).uniform(0, 255, (2, *model.inputs[0].shape[1:])).astype("float32")
    expected = np.asarray(model(probe, training=False))
    got = np.asarray(rebuilt(probe, training=False))
    if expected.shape != got.shape or not np.allclose(expected, got, atol=1e-4):
        raise not_a_chain
    return rebuilt, x, features



FORMATS = (
    ModelFormat(name="keras", description=".keras file", suffixes=(".keras",), claims=_claims_keras, check=_check_keras,
                hash=hash_files, load=load_keras, owns=_owns, inference=keras_inference_model,
                embeddings=True, attention=("gradcam", "occlusion"), ray=True),
    # Legacy HDF5 files: the same model objects, so 'owns' is left to the .keras format.
    ModelFormat(name="h5", description="legacy .h5 file", suffixes=(".h5", ".hdf5"), claims=_claims_h5, check=_check_h5,
                hash=hash_files, load=load_keras, owns=lambda model: False, inference=keras_inference_model,
                embeddings=True, attention=("gradcam", "occlusion"), ray=True),
)
