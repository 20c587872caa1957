"""Attention maps: Grad-CAM (and Grad-CAM++) for the images of a run, cached in the run.

Conventions: n images, K classes, J explained classes per image (J = 2 by default:
``[:, 0]`` the predicted class, ``[:, 1]`` the true class), a feature map A of shape
(h, w, c) at the chosen layer and the model's input of (H, W).

Grad-CAM (Selvaraju et al., 2017): for class k with pre-softmax score y_k,
``w_c = mean_ij dy_k/dA_ijc`` and ``map = ReLU(sum_c w_c A_c)``, upsampled to (H, W).
Grad-CAM++ (Chattopadhay et al., 2018) replaces the mean by
``w_c = sum_ij alpha_ijc ReLU(dy_k/dA_ijc)`` with ``alpha = g^2 / (2 g^2 + sum_ij(A) g^3)``
(the closed form for an exponential score; the exp(y_k) factors cancel).

* The score is the logit, never the log of a probability: a last Dense layer with a
  softmax (or sigmoid) is recomputed as ``z = x W + b`` from its input; a last
  ``Activation('softmax')`` gives its input.
* One forward pass per batch and one GradientTape for both classes (``CamExplainer``).
* The layer is found automatically (``find_cam_layer``: the last convolution whose map has
  spatial extent, followed to the last normalisation/activation/merge layer of the same
  size, looking inside nested backbones), or named: ``NAME`` or ``OUTER/INNER``. A layer
  inside a nested keras.applications backbone is reached as core.model.load does for
  ``--layer``: the chain of top-level layers is rebuilt around a copy of the backbone that
  also outputs that layer, and checked against the original model on random input.
* A map with no positive evidence (all zero after the ReLU) is flagged ``empty`` rather
  than shown as a blank overlay.

Cached in the run as the derived analysis ``attention_maps`` (core.run.derived; config:
method and layer; the rows are an input): ``explain_rows(run, rows)`` asks
``derived.get(..., rows=rows)``, which computes only the rows not stored yet and adds them
to the stored maps, so a gallery page of 24 costs 24 images and earlier pages are kept. A
plain ``derived.get(run, "attention_maps")`` keeps what is stored, or explains the 24 most
confident errors of the evaluation split. ``explain_rows(method="occlusion")`` does the same
with the model-agnostic occlusion maps of ``core.analysis.occlusion`` (kind ``occlusion_maps``).
Stored: the raw maps at feature resolution (``coarse``, (m, 2, h, w) float32), upsampled
and scaled to [0, 1] when read.

TensorFlow and Keras are imported only when something must be computed.
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError, first_line
from core.model.load import ModelError
from core.progress import Progress, slug
from core.run import derived
from core.run.store import Run

KIND = "attention_maps"
OCCLUSION_KIND = "occlusion_maps"  # registered by core.analysis.occlusion (which imports this module, not the reverse)
KIND_VERSION = 1
METHODS = ("gradcam", "gradcam++")         # the attention_maps kind's (Keras models)
ALL_METHODS = METHODS + ("occlusion",)     # occlusion: any model (core.analysis.occlusion)
WHICH = ("predicted", "true")
DEFAULT_LIMIT = 24
BATCH = 32   # images per forward pass
CHUNK = 8    # images per stored step when explain_rows has a time budget
# A map whose positive part is below this fraction of its largest magnitude is rounding noise.
EMPTY_TOLERANCE = 1e-6


class GradCamUnavailable(ModelError):
    """Grad-CAM cannot be computed for this model (the message says why, in one line)."""


# --------------------------------------------------------------------------- pure numbers

def cam_from_gradients(feature_maps: np.ndarray, gradients: np.ndarray, *,
                       method: str = "gradcam") -> tuple[np.ndarray, np.ndarray]:
    """Class-activation maps from a layer's feature maps and the score's gradients.

    Parameters
    ----------
    feature_maps : float array (n, h, w, c), the layer's output A.
    gradients : float array (n, h, w, c) or (n, J, h, w, c), dy/dA for one or J classes.
    method : 'gradcam' (channel weights = spatial mean of the gradient) or 'gradcam++'.

    Returns
    -------
    maps : float32 (n, h, w) or (n, J, h, w), ``ReLU(sum_c w_c A_c)``, not rescaled.
    empty : bool (n,) or (n, J), True where nothing is left after the ReLU (no positive
        evidence; the map is then all zeros).

    >>> A = np.zeros((1, 2, 2, 2)); A[0, 0, 0, 0] = 1.0; A[0, 1, 1, 1] = 2.0
    >>> g = np.zeros((1, 2, 2, 2)); g[..., 0] = 4.0; g[..., 1] = -1.0
    >>> maps, empty = cam_from_gradients(A, g)  # weights: channel 0 -> 4, channel 1 -> -1
    >>> maps[0].tolist(), bool(empty[0])
    ([[4.0, 0.0], [0.0, 0.0]], False)
    >>> cam_from_gradients(A, -np.abs(g))[1].tolist()   # every channel speaks against the class
    [True]
    """
    if method not in METHODS:
        raise UserError(f"Unknown method {method!r}. The available methods are {list(METHODS)}")
    A = np.asarray(feature_maps, dtype=np.float32)
    g = np.asarray(gradients, dtype=np.float32)
    if A.ndim != 4:
        raise UserError(f"feature_maps must be (n, h, w, c). Received shape {A.shape}")
    per_class = g.ndim == 5
    if g.shape != A.shape[:1] + g.shape[1:2] * per_class + A.shape[1:]:
        raise UserError(f"gradients of shape {g.shape} do not match feature_maps of shape {A.shape}")
    if per_class:
        A = A[:, None]
    if method == "gradcam":
        weights = g.mean(axis=(-3, -2))                                     # (..., c)
    else:
        g2 = g * g
        denom = 2.0 * g2 + A.sum(axis=(-3, -2), keepdims=True) * g2 * g
        alphas = np.divide(g2, denom, out=np.zeros_like(g2), where=denom != 0)
        weights = (alphas * np.maximum(g, 0.0)).sum(axis=(-3, -2))
    linear = np.einsum("...hwc,...c->...hw", A, weights)
    maps = np.maximum(linear, 0.0)
    peak = maps.max(axis=(-2, -1))
    scale = np.abs(linear).max(axis=(-2, -1))
    empty = ~(peak > EMPTY_TOLERANCE * scale)
    maps[empty] = 0.0
    return maps.astype(np.float32), empty


def upsample_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Maps (..., h, w) resized bilinearly to (..., H, W) with ``size`` = (H, W); float32.

    >>> upsample_maps(np.ones((2, 3, 2, 2)), (4, 5)).shape
    (2, 3, 4, 5)
    """
    import cv2

    maps = np.asarray(maps, dtype=np.float32)
    h, w = int(size[0]), int(size[1])
    flat = maps.reshape(-1, *maps.shape[-2:])
    out = np.empty((len(flat), h, w), np.float32)
    for i, m in enumerate(flat):
        out[i] = m if m.shape == (h, w) else cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.maximum(out, 0.0).reshape(*maps.shape[:-2], h, w)


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Each map (..., H, W) divided by its maximum, into [0, 1]; all-zero maps stay zero.

    >>> normalize_maps(np.array([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])).tolist()
    [[[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]
    """
    maps = np.asarray(maps, dtype=np.float32)
    peak = maps.max(axis=(-2, -1), keepdims=True)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def overlay(image_uint8: np.ndarray, cam: np.ndarray, *, alpha: float = 0.6) -> np.ndarray:
    """The map drawn over the image in the 'jet' colours: uint8 RGB of the image's size.

    ``image_uint8`` is (H, W), (H, W, 1) or (H, W, 3) uint8 of any size; ``cam`` is
    (h, w) in [0, 1] (resized bilinearly to the image). Each pixel is blended with its
    colour in proportion to ``alpha * cam``: where the map is 0 the image shows unchanged,
    so check the map's ``empty`` flag rather than showing an overlay without heat.

    >>> px = overlay(np.zeros((4, 4), np.uint8), np.eye(2))
    >>> px.shape, px.dtype.name, bool(px[0, 0].any()), px[0, 3].tolist()
    ((4, 4, 3), 'uint8', True, [0, 0, 0])
    """
    import cv2

    image = _as_rgb(image_uint8)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or not np.isfinite(cam).all():
        raise UserError(f"cam must be a finite (h, w) map. Received shape {cam.shape}"
                         + ("" if cam.ndim != 2 else " with NaN or infinite values"))
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha must be within [0, 1]. Received: alpha={alpha}")
    h, w = image.shape[:2]
    cam = np.clip(cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR) if cam.shape != (h, w) else cam, 0, 1)
    heat = cv2.cvtColor(cv2.applyColorMap(np.round(cam * 255).astype(np.uint8), cv2.COLORMAP_JET),
                        cv2.COLOR_BGR2RGB).astype(np.float32)
    weight = (alpha * cam)[..., None]
    return np.round(image * (1.0 - weight) + heat * weight).astype(np.uint8)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise UserError(f"image must be uint8. Received dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise UserError(f"image must be (H, W), (H, W, 1) or (H, W, 3). Received shape {image.shape}")


# --------------------------------------------------------------------------- the model side

_CONV = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose")
# Layers that keep a convolution's map (same height and width) and may follow it.
_FOLLOWERS = _CONV + ("BatchNormalization", "LayerNormalization", "GroupNormalization", "Activation",
                      "ReLU", "LeakyReLU", "PReLU", "ELU", "Add", "Multiply", "Subtract", "Average",
                      "Maximum", "Minimum", "Concatenate")


@dataclass
class CamExplainer:
    """A model prepared for batched Grad-CAM: input -> (feature map at ``layer``, class scores).

    Build it with ``build_explainer(model)`` or ``explainer_for_run(run)``; reuse it for
    many batches (the TensorFlow function is traced once per batch shape).
    """

    cam_model: object              # callable: input -> (feature map, score input); see _TappedForward
    layer: str                     # 'conv_2' or 'vgg16/block5_conv3'
    score: str                     # how the class scores are obtained, in words
    input_size: tuple[int, int] | None
    channels: int
    feature_size: tuple[int, int] | None
    scale: object = "unit"         # a core.data.preprocess.Preprocessing (or its spec) for feed()
    activation: str | None = None  # 'softmax' or 'sigmoid' when the scores are logits, else None
    _linear: object = None         # the Dense layer recomputed without its activation, or None
    _binary: bool = False          # one sigmoid unit: scores (-z, z) for classes (0, 1)
    _functions: dict = field(default_factory=dict, repr=False)

    def gradients(self, x: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One forward pass and one tape for a batch.

        Parameters
        ----------
        x : float32 (n, H, W, C), already preprocessed for the model (core.data.preprocess.feed).
        classes : int (n, J), the classes to explain for each image.

        Returns
        -------
        feature_maps (n, h, w, c), gradients (n, J, h, w, c) of each class's score, and
        scores (n, K), all float32.
        """
        import tensorflow as tf

        x = np.asarray(x, dtype=np.float32)
        classes = np.asarray(classes, dtype=np.int32)
        if classes.ndim != 2 or len(classes) != len(x):
            raise UserError(f"classes must be (n, J) for n={len(x)} images. Received shape {classes.shape}")
        n_targets = classes.shape[1]
        if n_targets not in self._functions:  # traced once per number of classes, any batch size
            signature = [tf.TensorSpec((None, *x.shape[1:]), tf.float32),
                         tf.TensorSpec((None, n_targets), tf.int32)]
            # autograph off: _step's loop is over a fixed number of classes, and an error raised while
            # tracing reaches the caller as raised, not rewrapped as "in user code:"
            self._functions[n_targets] = tf.function(self._step, input_signature=signature, autograph=False)
        try:
            A, grads, scores = self._functions[n_targets](tf.constant(x), tf.constant(classes))
        except tf.errors.OpError as exc:  # TensorFlow failed while running: say where, in one line
            raise GradCamUnavailable(f"Grad-CAM at layer {self.layer!r} failed in TensorFlow on a batch of shape "
                                     f"{list(x.shape)}: {first_line(exc)}") from None
        return A.numpy(), grads.numpy(), scores.numpy()

    def _step(self, x, classes):
        import tensorflow as tf

        with tf.GradientTape(persistent=True) as tape:
            A, pre = self.cam_model(x, training=False)
            scores = self._scores(pre)
            picked = tf.gather(scores, classes, batch_dims=1)            # (n, J)
            # images are independent, so d(sum over the batch)/dA_i = dy_i/dA_i
            totals = [tf.reduce_sum(picked[:, j]) for j in range(classes.shape[1])]
        grads = [tape.gradient(t, A) for t in totals]
        if any(g is None for g in grads):
            raise GradCamUnavailable(f"Grad-CAM: the class scores do not depend on layer {self.layer!r} (no gradient "
                                     "reaches it); name a layer before the classifier with --cam-layer")
        grads = tf.stack(grads, axis=1)
        del tape
        return tf.cast(A, tf.float32), tf.cast(grads, tf.float32), scores

    def _logits(self, pre):
        """The head's pre-activation output (n, K), or (n, 1) for one sigmoid unit."""
        import tensorflow as tf

        z = tf.cast(pre, tf.float32)
        if self._linear is not None:
            z = tf.matmul(z, tf.cast(self._linear.kernel, tf.float32))
            if self._linear.bias is not None:
                z = z + tf.cast(self._linear.bias, tf.float32)
        return z

    def _scores(self, pre):
        """One score per class (n, K): the logits; (-z, z) for one sigmoid unit."""
        import tensorflow as tf

        z = self._logits(pre)
        return tf.concat([-z, z], axis=1) if self._binary else z

    def maps(self, x: np.ndarray, classes: np.ndarray, *, method: str = "gradcam"
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coarse maps (n, J, h, w), empty flags (n, J) and scores (n, K) for a batch."""
        A, grads, scores = self.gradients(x, classes)
        maps, empty = cam_from_gradients(A, grads, method=method)
        return maps, empty, scores

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """What the model outputs for these pre-activation values (see ``_logits``)."""
        z = np.asarray(logits, dtype=np.float64)
        if self.activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-z))
        if self.activation == "softmax":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return z


def _layer_output(layer):
    """The output tensor of a layer called once, or None (shared layers have several)."""
    try:
        return layer.output
    except (AttributeError, ValueError):
        return None


def _spatial(shape) -> tuple[int | None, int | None] | None:
    shape = tuple(shape) if shape is not None else ()
    return (shape[1], shape[2]) if len(shape) == 4 else None


def _has_extent(hw) -> bool:
    return hw is not None and (hw[0] is None or hw[1] is None or hw[0] * hw[1] > 1)


def _top_layers(model) -> list:
    import keras

    return [lyr for lyr in model.layers if not isinstance(lyr, keras.layers.InputLayer)]


def _candidates(model) -> list[tuple[str, object, tuple | None]]:
    """(path, layer, (h, w) or None) in order, one level into nested models."""
    import keras

    out = []
    for lyr in _top_layers(model):
        if isinstance(lyr, keras.Model):
            for inner in _top_layers(lyr):
                out.append((f"{lyr.name}/{inner.name}", inner, _spatial(_layer_shape(inner))))
        else:
            out.append((lyr.name, lyr, _spatial(_layer_shape(lyr))))
    return out


def find_cam_layer(model) -> str:
    """The layer Grad-CAM uses by default: ``NAME`` or ``OUTER/INNER`` (inside a nested backbone).

    The last convolution whose feature map has spatial extent (more than 1x1), then the
    last layer after it that keeps that map's height and width and only normalises,
    activates or merges it (so MobileNetV2 gives 'out_relu', ResNet50 'conv5_block3_out',
    VGG16 'block5_conv3': its pooling halves the map).
    """
    found = _candidates(model)
    convs = [i for i, (_, lyr, hw) in enumerate(found) if type(lyr).__name__ in _CONV and _has_extent(hw)]
    if not convs:
        maps = [p for p, _, hw in found if _has_extent(hw)]
        raise GradCamUnavailable(
            "No convolutional layer with a spatial feature map was found, so Grad-CAM has nothing "
            f"to weight; name one with --cam-layer (layers with feature maps: {maps[-8:] or 'none'})")
    first = convs[-1]
    path, _, hw = found[first]
    for p, lyr, other in found[first + 1:]:
        if type(lyr).__name__ in _FOLLOWERS and other == hw:
            path = p
    return path


def _score_input(model):
    """(layer whose input gives the scores or None for the model's outputs, Dense to recompute
    or None, activation removed, words)."""
    import keras

    out = model.outputs[0]
    head = model.layers[-1] if isinstance(model, keras.Sequential) else out._keras_history.operation
    act = getattr(getattr(head, "activation", None), "__name__", None)
    if isinstance(head, keras.layers.Softmax):
        act = "softmax"
    head_in = _layer_input_shape(head)
    if act in ("softmax", "sigmoid") and isinstance(head, keras.layers.Dense) and len(head_in or ()) == 2:
        return head, head, act, f"logits: Dense {head.name!r} recomputed without its {act}"
    if act in ("softmax", "sigmoid") and isinstance(head, (keras.layers.Activation, keras.layers.Softmax)):
        return head, None, act, f"logits: the input of {head.name!r}"
    if act in (None, "linear"):
        return None, None, None, "the model's outputs (logits)"
    return None, None, None, (f"the model's outputs after its {act} activation (no linear layer before "
                              "it was found, so these are not logits)")


def _layer_input_shape(layer) -> tuple | None:
    try:
        return tuple(layer.input.shape)
    except (AttributeError, ValueError):
        nodes = getattr(layer, "_inbound_nodes", None) or []
        inputs = nodes[0].input_tensors if nodes else []
        return tuple(inputs[0].shape) if len(inputs) == 1 else None


def build_explainer(model, *, layer: str | None = None, scale: str = "unit") -> CamExplainer:
    """Prepare a Keras image classifier for batched Grad-CAM.

    ``model`` is a keras.Model whose first output gives the classes (Sequential or
    Functional; nested backbones included). ``layer`` is a top-level layer ``NAME`` or
    ``OUTER/INNER`` inside a nested model (default: ``find_cam_layer``). The scores are
    checked against the model's own outputs on two random images before use.
    """
    import keras

    if isinstance(model, (str, Path)) or not isinstance(model, keras.Model):
        raise GradCamUnavailable(f"Grad-CAM needs a Keras model with layers; received {type(model).__name__}")
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise GradCamUnavailable("Grad-CAM needs an image model with one input of shape (batch, height, "
                                 f"width, channels). Received inputs {[tuple(t.shape) for t in model.inputs]}")
    path = layer or find_cam_layer(model)
    head, linear, activation, words = _score_input(model)
    outer_name, _, inner_name = path.partition("/")
    try:
        outer = model.get_layer(outer_name)
    except ValueError:
        names = [lyr.name for lyr in _top_layers(model)]
        raise ModelError(f"No layer named {outer_name!r} (--cam-layer {path!r}). Layers: {names} "
                         "(a layer inside a nested model: OUTER/INNER, e.g. vgg16/block5_conv3)") from None
    chain = [outer]
    if inner_name:
        if not isinstance(outer, keras.Model):
            raise ModelError(f"--cam-layer {path!r}: {outer.name!r} is a {type(outer).__name__}, not a nested model")
        try:
            chain.append(outer.get_layer(inner_name))
        except ValueError:
            names = [lyr.name for lyr in outer.layers]
            raise ModelError(f"No layer named {inner_name!r} inside {outer.name!r} (--cam-layer {path!r}). "
                             f"Its last layers: {names[-8:]}") from None
    feature_shape = _layer_shape(chain[-1])
    if _spatial(feature_shape) is None:
        raise ModelError(f"--cam-layer {path!r} outputs shape {feature_shape}; Grad-CAM needs a feature "
                         "map (batch, height, width, channels)")
    in_shape = tuple(model.inputs[0].shape)
    explainer = CamExplainer(
        cam_model=_TappedForward(model, chain, head, path), layer=path, score=words,
        input_size=(in_shape[1], in_shape[2]) if in_shape[1] and in_shape[2] else None,
        channels=int(in_shape[3]), feature_size=_spatial(feature_shape), scale=scale,
        activation=activation, _linear=linear,
        _binary=activation == "sigmoid" and int(model.outputs[0].shape[-1]) == 1)
    _check_against_model(explainer, model, path)
    return explainer


def _layer_shape(layer) -> tuple | None:
    """A layer's output shape (batch first), from its first call when it was called several times
    (a Sequential model loaded from a file holds one call per graph it was built in)."""
    t = _layer_output(layer)
    if t is None:
        nodes = getattr(layer, "_inbound_nodes", None) or []
        outputs = nodes[0].outputs if nodes else []
        t = outputs[0] if len(outputs) == 1 else None
    return tuple(t.shape) if t is not None else None


class _TappedForward:
    """``forward(x) -> (feature map at the chain's last layer, the scores' input)`` computed by
    running the model's own graph (Keras' ``_run_through_graph``; a Sequential's layers in order)
    with the chosen layer's output and the head's input picked up on the way, and entering a
    nested model on the chain the same way.

    Why not ``keras.Model(model.inputs, [layer.output, head.input])``: ``layer.output`` is the
    output of the layer's *first* call, and a model loaded from a file (a Sequential above all)
    holds several calls per layer, so the tensor tapped is not the one connected to the scores
    and ``tape.gradient`` returns None. Running the graph taps the very tensors that give the
    scores, whatever the model's structure (branches, residual adds, nested backbones).
    """

    def __init__(self, model, chain: list, head, path: str):
        self.model, self.chain, self.head, self.path = model, chain, head, path
        self.outputs = [_FeatureSpec(_layer_shape(chain[-1]))]

    def __call__(self, x, training: bool = False):
        found: dict[str, list] = {"feature": [], "head": []}
        out = self._run(self.model, x, list(self.chain), found, top=True)
        if len(found["feature"]) != 1:
            used = f"used {len(found['feature'])} times" if found["feature"] else "never used"
            raise GradCamUnavailable(f"Grad-CAM at {self.path!r}: the layer is {used} on the way from the input "
                                     "to the scores; name another layer with --cam-layer")
        if self.head is None:
            pre = out[0] if isinstance(out, (list, tuple)) else out
        elif len(found["head"]) == 1:
            pre = found["head"][0]
        else:
            raise GradCamUnavailable(f"Grad-CAM: the output layer {self.head.name!r} is not reached once on the "
                                     "way from the input to the scores")
        return found["feature"][0], pre

    def _run(self, model, x, chain: list, found: dict, *, top: bool):
        import keras
        from keras.src.models.functional import operation_fn

        target = chain[0]

        def wrap(op):
            call = operation_fn(op, training=False)
            if op is target and len(chain) > 1:
                return lambda *a, **k: self._run(op, a[0], chain[1:], found, top=False)
            if op is target:
                def tapped(*a, **k):
                    out = call(*a, **k)
                    found["feature"].append(out[0] if isinstance(out, (list, tuple)) else out)
                    return out
                return tapped
            if top and op is self.head:
                def head(*a, **k):
                    found["head"].append(a[0])
                    return call(*a, **k)
                return head
            return call

        if isinstance(model, keras.Sequential):
            for lyr in model.layers:
                x = wrap(lyr)(x)
            return x
        if not hasattr(model, "_run_through_graph"):
            raise GradCamUnavailable(f"Grad-CAM: {model.name!r} is a subclassed model without a layer graph, so "
                                     "no layer inside it can be reached; save it as a functional model")
        if isinstance(getattr(model, "_inputs_struct", None), list) and not isinstance(x, (list, tuple)):
            x = [x]  # a model built with a one-element input list: the same structure, so Keras does not warn
        return model._run_through_graph(model._standardize_inputs(x), operation_fn=wrap)


@dataclass(frozen=True)
class _FeatureSpec:
    shape: tuple | None


def _check_against_model(explainer: CamExplainer, model, path: str) -> None:
    """The explainer's probabilities equal the model's on random input, else refuse.

    Catches a rebuilt chain that computes something else, and a last layer whose logits
    were recovered wrongly. Mixed-precision models are compared at bfloat16's tolerance.
    """
    shape = tuple(d or 32 for d in model.inputs[0].shape[1:])
    probe = np.random.default_rng(0).uniform(0, 255, (2, *shape)).astype("float32")
    with warnings.catch_warnings():  # a model built with a one-element input list warns on a plain batch
        warnings.simplefilter("ignore", UserWarning)
        expected = model(probe, training=False)
    expected = np.asarray(expected[0] if isinstance(expected, (list, tuple)) else expected, np.float64)
    _, pre = explainer.cam_model(probe, training=False)
    got = explainer.activate(np.asarray(explainer._logits(pre)))
    low_precision = any(getattr(lyr, "compute_dtype", "float32") not in ("float32", "float64")
                        for lyr in model.layers)
    tol = 2e-2 if low_precision else 1e-4
    if got.shape != expected.shape or not np.allclose(got, expected, atol=tol):
        raise GradCamUnavailable(
            f"Grad-CAM at {path!r}: the rebuilt model does not reproduce the model's outputs (largest "
            f"difference {np.max(np.abs(got - expected)) if got.shape == expected.shape else 'shape'}); "
            "a layer on the way to the scores behaves differently when called again (a custom layer?)")


def check_explainable(run: Run) -> None:
    """Raise GradCamUnavailable (one line) for a run whose model has no layers: a SavedModel, or
    none at all (synthetic runs). Reads the manifest only."""
    info = run.model_info
    from core.model import formats

    check_has_model(run, what="Grad-CAM maps")
    fmt = formats.find(info.format)
    if fmt is None:
        raise GradCamUnavailable(f"Grad-CAM is unavailable for run {run.id!r}: its model format "
                                 f"{info.format!r} is not one this tool loads")
    if "gradcam" not in fmt.attention:
        raise GradCamUnavailable(
            f"Grad-CAM is unavailable for run {run.id!r}: its model is a {fmt.description}, which has no Keras "
            "layers to take gradients at; use --method occlusion (any model), or save the model as .keras "
            "and re-analyse")


def check_has_model(run: Run, *, what: str) -> None:
    """Raise GradCamUnavailable (one line) for a run without a model to run: synthetic, or no model
    file recorded. Reads the manifest only."""
    info = run.model_info
    if info.format == "synthetic" or not info.path:
        subject = "Grad-CAM is" if what == "Grad-CAM maps" else f"{what} are"
        raise GradCamUnavailable(f"{subject} unavailable for run {run.id!r}: "
                                 + ("it is synthetic and has no model" if info.format == "synthetic"
                                    else "it records no model file"))


def explainer_for_run(run: Run, *, layer: str | None = None, unsafe: bool = False) -> CamExplainer:
    """The run's model prepared for Grad-CAM, loaded as ``core.run.analyze.load_run_model`` does
    (Keras safe mode unless this process's operator allows more: ``unsafe`` from the command
    line, or ``core.model.trust``'s list of trusted hashes; never the run's manifest). Slow (TensorFlow):
    callers that explain several pages should keep it (the dashboard in its resource cache).
    """
    check_explainable(run)
    from core.run.analyze import load_run_model

    run_model = load_run_model(run, unsafe=unsafe)
    inference = run_model.inference
    if not inference.has_features:
        raise GradCamUnavailable(f"Grad-CAM is unavailable for run {run.id!r}: its model has no layers to "
                                 "take gradients at")
    explainer = build_explainer(inference.model, layer=layer, scale=inference.preprocessing)
    explainer.input_size = tuple(run_model.size) or explainer.input_size
    explainer.channels = int(run_model.channels)
    return explainer


# --------------------------------------------------------------------------- rows of a run

@dataclass(frozen=True)
class Attention:
    """Attention maps of some rows of a run, in the order asked for.

    ``maps`` float32 (n, J, H, W) in [0, 1] at the model's input resolution (NaN for
    skipped rows); ``empty`` bool (n, J), no positive evidence (map all zero); ``classes``
    int (n, J), the class explained; ``peak`` float32 (n, J), each map's maximum before
    scaling to [0, 1] (the strength of the evidence, comparable between the two classes of
    one image); ``skipped`` row -> reason, for images that could not be read.
    """

    rows: np.ndarray
    which: tuple[str, ...]
    maps: np.ndarray
    empty: np.ndarray
    classes: np.ndarray
    peak: np.ndarray
    skipped: dict[int, str]
    layer: str
    method: str
    score: str
    cost: dict = field(default_factory=dict)  # occlusion: passes_per_image, seconds_per_image, grid, grid_choice


def _check_rows(run: Run, rows) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(rows))
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise UserError(f"rows must be a list of row numbers. Received: {rows!r}"[:300])
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= run.n_images)]
    if len(bad):
        raise UserError(f"Row {int(bad[0])} is not in run {run.id!r}, which has rows 0..{run.n_images - 1}")
    return arr


def _check_options(*, which, method: str, layer: str | None) -> tuple[str, ...]:
    which = (which,) if isinstance(which, str) else tuple(which)
    unknown = [w for w in which if w not in WHICH]
    if unknown or not which:
        raise UserError(f"which must name some of {list(WHICH)}. Received: which={which!r}")
    if method not in ALL_METHODS:
        raise UserError(f"Unknown method {method!r}. The available methods are {list(ALL_METHODS)}")
    if layer is not None and (not isinstance(layer, str) or not layer.strip("/") or layer.count("/") > 1):
        raise UserError(f"--cam-layer must be NAME or OUTER/INNER. Received: {layer!r}")
    if layer is not None and method == "occlusion":
        raise UserError("--cam-layer applies to Grad-CAM; occlusion has no layer (it hides patches of the image)")
    return which


def kind_and_config(method: str, layer: str | None = None) -> tuple[str, dict]:
    """The derived kind that stores ``method``'s maps and its config."""
    if method == "occlusion":
        return OCCLUSION_KIND, {}
    return KIND, {"method": method, "layer": layer}


def explain_rows(run: Run, rows: Sequence[int] | np.ndarray, *, which: Sequence[str] | str = WHICH,
                 method: str = "gradcam", layer: str | None = None, explainer: CamExplainer | None = None,
                 budget_s: float | None = None, progress: bool | Progress = False) -> Attention:
    """Attention maps of ``rows`` of ``run``, computed for the rows not cached yet, then cached.

    ``method``: 'gradcam', 'gradcam++' (Keras models) or 'occlusion' (any model; core.analysis.occlusion).
    Rows already stored for this method (and ``layer``) are read back without TensorFlow;
    the missing ones are computed and *added* to the stored result (derived row inputs).
    ``explainer`` (from ``explainer_for_run(run, layer=layer)``) saves loading the model
    again. ``budget_s``: stop starting new batches once this many seconds have passed; the
    rows left are reported in ``skipped`` ("over the time budget") and computed next time.
    Raises GradCamUnavailable (one line) when the model cannot be explained this way,
    ValueError for a row that is not in the run.
    """
    which = _check_options(which=which, method=method, layer=layer)
    rows = _check_rows(run, rows)
    name, config = kind_and_config(method, layer)
    if method == "occlusion":
        check_has_model(run, what="Occlusion maps")
    else:
        check_explainable(run)
        if explainer is not None and layer is not None and explainer.layer != layer:
            raise UserError(f"The explainer was built for layer {explainer.layer!r}, not {layer!r}")
        if explainer is not None:
            remember_explainer(run, explainer, layer=layer)
    if budget_s is not None and budget_s <= 0:
        raise UserError(f"budget_s must be positive. Received: {budget_s}")
    stored = derived.get(run, name, config, compute=False)
    missing = np.unique(rows) if stored is None else np.setdiff1d(rows, stored.array("rows"))
    skipped: dict[int, str] = {}
    if len(missing):
        # in chunks when a budget is set, so that what was done is stored when time runs out
        step = len(missing) if budget_s is None else CHUNK
        t0 = time.perf_counter()
        for start in range(0, len(missing), step):
            if budget_s is not None and start and time.perf_counter() - t0 > budget_s:
                for r in missing[start:]:
                    skipped[int(r)] = (f"not computed: over the time budget of {budget_s:g} s for {method} "
                                       "maps; ask again to continue")
                break
            stored = derived.get(run, name, config, rows=missing[start:start + step], progress=progress)
            skipped.update(stored.skipped)
    if stored is None:  # every requested row was skipped before anything was stored
        return _nothing_read(run, rows, which=which, method=method, skipped=skipped)
    return _read(run, stored, rows, which=which, method=method, skipped=skipped)


def _nothing_read(run: Run, rows: np.ndarray, *, which: tuple[str, ...], method: str,
                  skipped: dict[int, str]) -> Attention:
    size = _run_input(run, None)[0]
    cols = [WHICH.index(w) for w in which]
    classes = np.stack([run.predictions["predicted"].to_numpy()[rows],
                        run.predictions["true"].to_numpy()[rows]], axis=1)[:, cols].astype(np.int64)
    n, j = len(rows), len(cols)
    return Attention(rows=rows, which=which, maps=np.full((n, j, *size), np.nan, np.float32),
                     empty=np.zeros((n, j), bool), classes=classes, peak=np.zeros((n, j), np.float32),
                     skipped={int(r): skipped.get(int(r), "not computed") for r in rows},
                     layer="?", method=method, score="?")


def attention_maps(run: Run, rows: Sequence[int] | np.ndarray, *, which: Sequence[str] | str = WHICH,
                   **options) -> np.ndarray:
    """float32 (n, len(which), H, W) maps in [0, 1] of ``rows`` (``[:, 0]`` the predicted class
    and ``[:, 1]`` the true class by default); NaN for an image that could not be read.
    ``options`` as for ``explain_rows``, whose ``Attention`` also has the ``empty`` flags."""
    return explain_rows(run, rows, which=which, **options).maps


def _read(run: Run, stored, rows: np.ndarray, *, which: tuple[str, ...], method: str,
          skipped: dict[int, str]) -> Attention:
    summary = stored.summary
    size = tuple(summary["input_size"])
    cols = [WHICH.index(w) for w in which]
    position = pd.Index(np.asarray(stored.array("rows"))).get_indexer(rows)  # -1: not stored
    have = position >= 0
    idx = position[have]
    n, j = len(rows), len(cols)
    maps = np.full((n, j, *size), np.nan, np.float32)
    empty = np.zeros((n, j), bool)
    peak = np.zeros((n, j), np.float32)
    classes = np.stack([run.predictions["predicted"].to_numpy()[rows],
                        run.predictions["true"].to_numpy()[rows]], axis=1)[:, cols].astype(np.int64)
    if have.any():
        coarse = np.asarray(stored.array("coarse")[idx])[:, cols]
        maps[have] = normalize_maps(upsample_maps(coarse, size))
        empty[have] = np.asarray(stored.array("empty")[idx])[:, cols]
        peak[have] = coarse.max(axis=(-2, -1))
    missing = {int(r): skipped.get(int(r), "not computed") for r in rows[~have]}
    return Attention(rows=rows, which=which, maps=maps, empty=empty, classes=classes, peak=peak,
                     skipped=missing, layer=str(summary["layer"]), method=method, score=str(summary["score"]),
                     cost={k: summary[k] for k in ("passes_per_image", "seconds_per_image", "last_seconds_per_image",
                                  "grid", "patch", "grid_choice")
                           if k in summary})


def _load_pixels(run: Run, rows: np.ndarray, *, size: tuple[int, int], channels: int
                 ) -> tuple[list[int], np.ndarray, dict[int, str]]:
    """uint8 (n_ok, H, W, C) of the rows that could be read, as the run fed them to the model."""
    from core.data.images import fit_to_input

    ok, pixels, skipped = [], [], {}
    for row in rows:
        row = int(row)
        try:
            img = run.image(row)
        except PermissionError as exc:
            skipped[row] = str(exc)
            continue
        if img is None:
            skipped[row] = f"image {str(run.predictions['path'].iat[row])!r} is missing or cannot be decoded"
            continue
        ok.append(row)
        pixels.append(fit_to_input(img, size=size, channels=channels, resize=run.model_info.resize))
    return ok, (np.stack(pixels) if pixels else np.zeros((0, *size, channels), np.uint8)), skipped


@dataclass(frozen=True)
class GradCamConfig:
    """Options of the ``attention_maps`` kind: the method and the layer (None: ``find_cam_layer``)."""

    method: str = "gradcam"
    layer: str | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"Unknown method {self.method!r}. The available methods are {list(METHODS)}")
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer.strip("/")
                                       or self.layer.count("/") > 1):
            raise UserError(f"--cam-layer must be NAME or OUTER/INNER. Received: {self.layer!r}")


# Explainers loaded for a run (its model is loaded once per process): (run uid, layer) -> explainer.
_EXPLAINERS: dict[tuple[str, str | None], CamExplainer] = {}
_EXPLAINERS_LOCK = threading.Lock()
_EXPLAINERS_KEPT = 2


def remember_explainer(run: Run, explainer: CamExplainer, *, layer: str | None = None) -> None:
    """Keep ``explainer`` for ``run`` (and ``layer``) so that computing its maps does not load the
    model again; the two most recent are kept."""
    with _EXPLAINERS_LOCK:
        _EXPLAINERS.pop((run.uid, layer), None)
        _EXPLAINERS[(run.uid, layer)] = explainer
        while len(_EXPLAINERS) > _EXPLAINERS_KEPT:
            _EXPLAINERS.pop(next(iter(_EXPLAINERS)))


def cached_explainer(run: Run, *, layer: str | None = None) -> CamExplainer:
    """``explainer_for_run(run, layer=layer)``, loaded once and kept (see ``remember_explainer``)."""
    with _EXPLAINERS_LOCK:
        found = _EXPLAINERS.get((run.uid, layer))
    if found is None:
        found = explainer_for_run(run, layer=layer)
        remember_explainer(run, found, layer=layer)
    return found


def previous_arrays(previous) -> dict[str, np.ndarray] | None:
    """The stored rows/coarse/empty arrays a row-input attention kind extends, or None."""
    return {k: np.asarray(previous.array(k)) for k in ("rows", "coarse", "empty")} if previous else None


def empty_result(previous, feature_size) -> dict[str, np.ndarray]:
    """Zero rows, shaped like the stored result (or like ``feature_size``) so that it extends it."""
    if previous is not None:
        h, w = np.asarray(previous.array("coarse")).shape[-2:]
    else:
        h, w = feature_size or (1, 1)
    return {"rows": np.zeros(0, np.int64), "coarse": np.zeros((0, 2, h, w), np.float32),
            "empty": np.zeros((0, 2), bool)}


@dataclass
class CollectedMaps:
    """What ``collect_maps`` gathered for an attention kind: the rows done, their coarse maps and
    empty flags (per chunk), the rows skipped with their reasons, and how many images the model
    now predicts otherwise than the run did."""

    size: tuple[int, int]
    rows: list = field(default_factory=list)
    coarse: list = field(default_factory=list)
    empty: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    mismatched: int = 0

    def arrays(self, previous, feature_size) -> dict[str, np.ndarray]:
        """The derived arrays of the new rows (``empty_result`` when none could be read)."""
        if not self.rows:
            return empty_result(previous, feature_size)
        return {"rows": np.concatenate(self.rows), "coarse": np.concatenate(self.coarse),
                "empty": np.concatenate(self.empty)}

    def summary(self, previous, arrays: dict[str, np.ndarray]) -> dict:
        """``previous``'s summary with the counts of ``arrays`` added."""
        summary = dict(previous.summary) if previous is not None else {}
        summary.update({
            "input_size": list(self.size), "rows": int(summary.get("rows", 0)) + len(arrays["rows"]),
            "empty_maps": int(summary.get("empty_maps", 0)) + int(arrays["empty"].sum()),
            # the model's argmax on these pixels should be the run's prediction; more than a tie now
            # and then means the model file or the preprocessing changed since the run
            "prediction_mismatches": int(summary.get("prediction_mismatches", 0)) + self.mismatched,
        })
        return summary


def collect_maps(run: Run, rows, *, previous, compute, step, what: str, progress: Progress) -> CollectedMaps:
    """The row loop of an attention kind (Grad-CAM's, occlusion's): ``rows`` (None: the 24 most
    confident errors of the evaluation split not stored yet) in chunks of ``step()`` images
    (asked before each chunk), each chunk's pixels loaded as the run fed them, then
    ``compute(pixels uint8 (n, H, W, C), classes int (n, 2))`` -> (coarse maps, empty flags,
    scores (n, K)) for the predicted and the true class. Unreadable images are skipped with
    their reason; ``compute`` is called only for chunks with an image to explain."""
    if rows is None:
        rows = select_rows(run, limit=DEFAULT_LIMIT)
        if previous is not None:
            rows = np.setdiff1d(rows, previous.array("rows"))
    rows = np.asarray(rows, np.int64)
    size, channels = _run_input(run, None)
    preds = run.predictions
    targets = np.stack([preds["predicted"].to_numpy(), preds["true"].to_numpy()], axis=1)
    got = CollectedMaps(size=size)
    position = 0
    while position < len(rows):
        chunk = rows[position:position + max(1, int(step()))]
        position += len(chunk)
        ok, pixels, bad = _load_pixels(run, chunk, size=size, channels=channels)
        got.skipped.update(bad)
        if ok:
            maps, flags, scores = compute(pixels, targets[ok])
            got.mismatched += int((np.asarray(scores).argmax(axis=1) != targets[ok, 0]).sum())
            got.rows.append(np.asarray(ok, np.int64))
            got.coarse.append(maps)
            got.empty.append(flags)
        progress(f"{what}: {position:,}/{len(rows):,} images", position / max(len(rows), 1))
    return got


@derived.register(KIND, version=KIND_VERSION, config=GradCamConfig, row_inputs=True,
                  libraries=("tensorflow", "keras"),
                  description="Grad-CAM maps of the predicted and the true class, per requested row")
def _compute_attention(run: Run, config: GradCamConfig, progress: Progress, *, rows, previous
                       ) -> derived.DerivedResult:
    """Maps of ``rows`` (the rows not stored yet; None: the 24 most confident errors of the
    evaluation split), returned for derived.get to add to ``previous``."""
    from core.data.preprocess import feed

    explainer = None

    def compute(pixels, classes):
        nonlocal explainer
        if explainer is None:  # loaded only once some image needs it
            explainer = cached_explainer(run, layer=config.layer)
        return explainer.maps(feed(pixels, explainer.scale), classes, method=config.method)

    got = collect_maps(run, rows, previous=previous, compute=compute, step=lambda: BATCH, what="Grad-CAM",
                       progress=progress)
    arrays = got.arrays(previous, explainer.feature_size if explainer else None)
    summary = got.summary(previous, arrays)
    if explainer is not None:
        summary.update({"layer": explainer.layer, "score": explainer.score,
                        "feature_size": list(explainer.feature_size or ())})
    summary.setdefault("layer", config.layer or "?")
    summary.setdefault("score", "?")
    return derived.DerivedResult(arrays=arrays, summary=summary, skipped=got.skipped)


def _run_input(run: Run, explainer: CamExplainer | None) -> tuple[tuple[int, int], int]:
    """(H, W) and channels the run fed its model, from the manifest (or the explainer)."""
    info = run.model_info
    size = tuple(int(v) for v in info.input_size[:2]) if len(info.input_size) >= 2 else None
    if size is None and explainer is not None:
        size = explainer.input_size
    if size is None:
        raise GradCamUnavailable(f"Run {run.id!r} does not record its model's input size; re-analyse it")
    return size, int(info.channels or (explainer.channels if explainer is not None else 3))


def select_rows(run: Run, *, true_class: str | None = None, predicted_class: str | None = None,
                split: str | None = None, limit: int | None = DEFAULT_LIMIT) -> np.ndarray:
    """Rows to explain, most confident first (ties in row order).

    Without classes: the errors. With both: that confusion-matrix cell (the diagonal gives
    correct predictions). With one: the errors of that true (or predicted) class. ``split``
    defaults to the run's evaluation split; 'all' takes every row.
    """
    preds = run.predictions
    classes = run.classes
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1. Received: {limit}")
    for option, name in (("--true", true_class), ("--predicted", predicted_class)):
        if name is not None and name not in classes:
            shown = classes if len(classes) <= 30 else classes[:30] + ["..."]
            raise UserError(f"Unknown class {name!r} for {option}. The run's classes: {shown}")
    split = split or run.eval_split
    splits = preds["split"]
    if split == "all":
        mask = np.ones(len(preds), bool)
    else:
        known = sorted(str(s) for s in splits.unique())
        if split not in known:
            raise UserError(f"Unknown split {split!r}. The run has: {known + ['all']}")
        mask = (splits == split).to_numpy()
    if true_class is not None:
        mask = mask & (preds["true"].to_numpy() == classes.index(true_class))
    if predicted_class is not None:
        mask = mask & (preds["predicted"].to_numpy() == classes.index(predicted_class))
    if true_class is None or predicted_class is None:
        mask = mask & ~preds["correct"].to_numpy()
    rows = np.flatnonzero(mask)
    confidence = preds["confidence"].to_numpy()
    rows = rows[np.lexsort((rows, -confidence[rows]))]
    return rows[:limit] if limit is not None else rows


# --------------------------------------------------------------------------- files for people

_PANEL_MIN_SIDE = 128


def explanation_image(image: np.ndarray, maps: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """One PNG's pixels: the image with each map over it, side by side (predicted, true).

    ``image`` uint8 (H, W[, C]); ``maps`` (J, h, w) in [0, 1]; ``empty`` (J,). Small images
    are enlarged (nearest neighbour) to at least 128 pixels on the long side. An empty map
    shows the image in grey, without heat. Returns uint8 RGB (H', J * W' + 4 (J - 1), 3).
    """
    from core.data.images import thumbnail

    rgb = _as_rgb(image)
    if max(rgb.shape[:2]) < _PANEL_MIN_SIDE:
        rgb = thumbnail(rgb, size=_PANEL_MIN_SIDE)
    grey = np.repeat(np.round(rgb.mean(axis=2, keepdims=True) * 0.5 + 64).astype(np.uint8), 3, axis=2)
    panels = [grey if flag else overlay(rgb, m) for m, flag in zip(maps, empty)]
    gap = np.full((rgb.shape[0], 4, 3), 255, np.uint8)
    out = [panels[0]]
    for p in panels[1:]:
        out += [gap, p]
    return np.concatenate(out, axis=1)


_OWN_PNG = re.compile(r"^\d{4}_[A-Za-z0-9_.-]*\.png$")


def write_explanations(run: Run, attention: Attention, out_dir: str | Path) -> pd.DataFrame:
    """Write ``cams.npy`` (n, J, H, W) float32, ``index.csv`` and one PNG per image to ``out_dir``.

    Rows that were skipped are left out of both and listed in ``skipped.csv`` (path, reason).
    PNGs an earlier explain listed in ``out_dir/index.csv`` are removed first. Returns the index.
    """
    from core.data.images import encode_png

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    _remove_earlier_pngs(out)
    preds = run.predictions
    ok = np.array([int(r) not in attention.skipped for r in attention.rows], bool)
    rows = attention.rows[ok]
    names = [f"{i:04d}_{slug(Path(str(preds['path'].iat[r])).stem, default='image')[:60]}.png"
             for i, r in enumerate(rows)]
    index = pd.DataFrame({
        "path": preds["path"].iloc[rows].astype(str).to_numpy(),
        "true_label": preds["true_label"].iloc[rows].astype(str).to_numpy(),
        "predicted_label": preds["predicted_label"].iloc[rows].astype(str).to_numpy(),
        "confidence": preds["confidence"].to_numpy()[rows],
        "row": rows,
        **{f"empty_{w}": attention.empty[ok, j] for j, w in enumerate(attention.which)},
        **{f"peak_{w}": attention.peak[ok, j] for j, w in enumerate(attention.which)},
        "overlay": names,
    })
    np.save(out / "cams.npy", np.ascontiguousarray(attention.maps[ok], np.float32), allow_pickle=False)
    for k, (row, name) in enumerate(zip(rows, names)):
        image = run.image(int(row))
        (out / name).write_bytes(encode_png(explanation_image(image, attention.maps[ok][k],
                                                              attention.empty[ok][k])))
    index.to_csv(out / "index.csv", index=False)
    skipped_file = out / "skipped.csv"
    if attention.skipped:
        pd.DataFrame({"path": [str(preds["path"].iat[r]) for r in attention.skipped],
                      "reason": list(attention.skipped.values())}).to_csv(skipped_file, index=False)
    else:
        skipped_file.unlink(missing_ok=True)
    return index


def _remove_earlier_pngs(out: Path) -> None:
    try:
        earlier = pd.read_csv(out / "index.csv", usecols=["overlay"])["overlay"].astype(str)
    except (OSError, ValueError, KeyError):
        return
    for name in earlier:
        if _OWN_PNG.match(name):  # only names this module writes, never a path
            (out / name).unlink(missing_ok=True)
