"""Grad-CAM on the architectures people train, as they arrive: each model is built, saved
to a file by Keras (.keras, and legacy .h5 where users still write it), loaded back with
``core.model.load.load_model`` and explained. The batched maps are compared with a one-image
GradientTape reference that does not share our graph runner: it calls the loaded model as
Keras does (``model(x)``), watches the chosen layer's output from inside that layer's call
and takes the gradient of the logit (the head's softmax switched off for the reference).

The heavy keras.applications backbones (weights=None, tiny inputs) are marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.analysis.gradcam import GradCamUnavailable, build_explainer, find_cam_layer
from core.model.load import load_model

N_CLASSES = 4


# --------------------------------------------------------------------------- the zoo

def _textbook_sequential(size=28, channels=1):
    """The issue's model: Conv -> MaxPool -> Conv -> MaxPool -> Conv -> GAP -> Dense softmax."""
    import keras

    L = keras.layers
    return keras.Sequential([keras.Input((size, size, channels)), L.Conv2D(8, 3, activation="relu"),
                             L.MaxPooling2D(), L.Conv2D(16, 3, activation="relu"), L.MaxPooling2D(),
                             L.Conv2D(16, 3, activation="relu", name="conv_c"), L.GlobalAveragePooling2D(),
                             L.Dense(N_CLASSES, activation="softmax")])


def _flatten_sequential(size=28, channels=1):
    """Conv -> MaxPool -> Conv -> Flatten -> Dense relu -> Dropout -> Dense softmax (the Keras MNIST example)."""
    import keras

    L = keras.layers
    return keras.Sequential([keras.Input((size, size, channels)), L.Conv2D(8, 3, activation="relu"),
                             L.MaxPooling2D(), L.Conv2D(8, 3, activation="relu", name="conv_b"), L.Flatten(),
                             L.Dense(16, activation="relu"), L.Dropout(0.5),
                             L.Dense(N_CLASSES, activation="softmax")])


def _residual_bn_logits(size=24, channels=3):
    """Functional: Conv-BN-ReLU, two residual blocks (Add), GAP, Dense logits (no activation)."""
    import keras

    L = keras.layers
    inp = keras.Input((size, size, channels))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inp)))
    for i in range(2):
        y = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(x)))
        y = L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(y))
        x = L.ReLU(name=f"block{i}_out")(L.Add()([x, y]))
    out = L.Dense(N_CLASSES, name="logits")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out, name="resnetish")


def _separable_depthwise(size=24, channels=3):
    """Functional with DepthwiseConv2D, SeparableConv2D and BN, Activation('softmax') as its own layer."""
    import keras

    L = keras.layers
    inp = keras.Input((size, size, channels))
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same")(x))
    x = L.Activation("relu")(x)
    x = L.SeparableConv2D(16, 3, padding="same", activation="relu")(x)
    x = L.BatchNormalization(name="sep_bn")(x)
    z = L.Dense(N_CLASSES)(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, L.Activation("softmax", name="probs")(z), name="mobile_like")


def _augmentation_inside(size=32, channels=3):
    """The Keras image-classification tutorial: a data_augmentation Sequential (flip, rotation,
    zoom) and a Rescaling layer inside the model, fed 0..255 pixels."""
    import keras

    L = keras.layers
    augment = keras.Sequential([L.RandomFlip("horizontal"), L.RandomRotation(0.1), L.RandomZoom(0.1)],
                               name="data_augmentation")
    return keras.Sequential([keras.Input((size, size, channels)), augment, L.Rescaling(1.0 / 255),
                             L.Conv2D(8, 3, padding="same", activation="relu"), L.MaxPooling2D(),
                             L.Conv2D(16, 3, padding="same", activation="relu", name="conv_b"),
                             L.MaxPooling2D(), L.Flatten(), L.Dense(16, activation="relu"),
                             L.Dense(N_CLASSES, activation="softmax")])


def _backbone(name: str, size: int, *, sequential: bool = False):
    """A keras.applications backbone (weights=None) nested in a transfer-learning model: its
    preprocessing layer inside the model, GAP, Dropout, Dense softmax (or Sequential([base, ...]))."""
    import keras

    constructor = {"vgg16": keras.applications.VGG16, "resnet50": keras.applications.ResNet50,
                   "mobilenetv2": keras.applications.MobileNetV2,
                   "efficientnetb0": keras.applications.EfficientNetB0,
                   "densenet121": keras.applications.DenseNet121, "xception": keras.applications.Xception}[name]
    base = constructor(include_top=False, weights=None, input_shape=(size, size, 3), name=name)
    L = keras.layers
    if sequential:
        return keras.Sequential([keras.Input((size, size, 3)), base, L.GlobalAveragePooling2D(),
                                 L.Dense(N_CLASSES, activation="softmax")])
    inp = keras.Input((size, size, 3))
    x = L.Rescaling(1 / 127.5, offset=-1)(inp) if name != "efficientnetb0" else inp  # EfficientNet rescales itself
    x = base(x, training=False)
    x = L.Dropout(0.2)(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, L.Dense(N_CLASSES, activation="softmax")(x))


FAST = [
    ("textbook_sequential", _textbook_sequential, ("keras", "h5"), "conv_c", 1),
    ("flatten_sequential", _flatten_sequential, ("keras", "h5"), "conv_b", 1),
    ("residual_bn_logits", _residual_bn_logits, ("keras",), "block1_out", 3),
    ("separable_depthwise", _separable_depthwise, ("keras", "h5"), "sep_bn", 3),
    ("augmentation_inside", _augmentation_inside, ("keras",), "conv_b", 3),
]

# Sizes where each backbone's last stage still has a 2x2 map or more (at 32x32 it is 1x1 for the
# 32-stride backbones, and find_cam_layer then rightly takes the stage before).
BACKBONES = [
    ("vgg16", 32, False, "vgg16/block5_conv3"),
    ("vgg16", 32, True, "vgg16/block5_conv3"),
    ("resnet50", 64, False, "resnet50/conv5_block3_out"),
    ("mobilenetv2", 64, False, "mobilenetv2/out_relu"),
    ("efficientnetb0", 64, False, "efficientnetb0/top_activation"),
    ("densenet121", 64, False, "densenet121/relu"),
    ("xception", 71, False, "xception/block14_sepconv2_act"),
]


# --------------------------------------------------------------------------- the reference

def _reference_cams(model, x: np.ndarray, path: str, classes: np.ndarray) -> np.ndarray:
    """(n, J, h, w) Grad-CAM maps one image and one class at a time: ``model(x)`` run by Keras,
    the layer's output watched from inside its own call, the gradient of the pre-softmax score."""
    import keras
    import tensorflow as tf

    outer, _, inner = path.partition("/")
    layer = model.get_layer(outer)
    if inner:
        layer = layer.get_layer(inner)
    head = model.layers[-1]
    act = getattr(head, "activation", None)
    state: dict = {}
    original = layer.call

    def watched(*args, **kwargs):
        out = original(*args, **kwargs)
        state["tape"].watch(out)
        state["A"] = out
        return out

    layer.call = watched
    if isinstance(head, keras.layers.Activation):
        head_call = head.call
        head.call = lambda inputs, *a, **k: inputs
    elif act is not None:
        head.activation = keras.activations.linear
    try:
        out = np.zeros((len(x), classes.shape[1]), object)
        for i in range(len(x)):
            for j in range(classes.shape[1]):
                with tf.GradientTape() as tape:
                    state["tape"] = tape
                    logits = model(x[i:i + 1], training=False)
                    score = logits[0, int(classes[i, j])]
                g = tape.gradient(score, state["A"])[0].numpy()
                A = state["A"][0].numpy()
                out[i, j] = np.maximum(np.einsum("hwc,c->hw", A, g.mean(axis=(0, 1))), 0)
    finally:
        del layer.call
        if isinstance(head, keras.layers.Activation):
            head.call = head_call
        elif act is not None:
            head.activation = act
    return np.array(out.tolist(), np.float32)


def _saved_and_loaded(model, tmp_path, ext: str):
    path = tmp_path / f"{model.name}.{ext}"
    model.save(path)
    return load_model(path)


def _check(model, x, tmp_path, ext, expected_layer):
    import keras

    keras.utils.set_random_seed(0)
    loaded = _saved_and_loaded(model, tmp_path, ext)
    assert find_cam_layer(loaded) == expected_layer
    explainer = build_explainer(loaded, scale="raw")
    probs = np.asarray(loaded(x, training=False))
    predicted = probs.argmax(axis=1)
    classes = np.stack([predicted, (predicted + 1) % N_CLASSES], axis=1)
    maps, empty, scores = explainer.maps(x, classes)
    np.testing.assert_allclose(explainer.activate(scores), probs, atol=1e-4)
    reference = _reference_cams(loaded, x, expected_layer, classes)
    assert maps.shape == reference.shape
    shown = 0
    for i in range(len(x)):
        for j in range(classes.shape[1]):
            ref, got = reference[i, j], maps[i, j]
            assert bool(empty[i, j]) == (ref.max() <= 1e-6 * max(np.abs(ref).max(), 1e-30)) or ref.max() < 1e-7
            if ref.max() > 0 and ref.std() > 0:
                assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] >= 0.99, (i, j)
                shown += 1
    # not degenerate: most maps show something, and it is not a constant
    live = maps[~empty]
    assert shown >= len(x) and len(live) >= len(x)
    assert (live.std(axis=(1, 2)) > 0).mean() >= 0.9
    return explainer


@pytest.mark.parametrize("name, build, formats, layer, channels", FAST, ids=[f[0] for f in FAST])
def test_zoo_saved_loaded_and_explained(name, build, formats, layer, channels, tmp_path):
    import keras

    keras.utils.set_random_seed(1)
    model = build()
    size = model.inputs[0].shape[1]
    high = 255.0 if name == "augmentation_inside" else 1.0
    x = np.random.default_rng(2).uniform(0, high, (4, size, size, channels)).astype(np.float32)
    for ext in formats:
        _check(model, x, tmp_path, ext, layer)


@pytest.mark.slow
@pytest.mark.parametrize("name, size, sequential, layer", BACKBONES,
                         ids=[f"{b[0]}{'-sequential' if b[2] else ''}" for b in BACKBONES])
def test_zoo_nested_keras_applications(name, size, sequential, layer, tmp_path):
    import keras

    keras.utils.set_random_seed(1)
    model = _backbone(name, size, sequential=sequential)
    x = np.random.default_rng(3).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
    _check(model, x, tmp_path, "keras", layer)


def test_a_layer_that_cannot_be_reached_is_named_in_one_line(tmp_path):
    """A layer applied twice (a shared convolution): the message names it, never 'in user code'."""
    import keras

    L = keras.layers
    shared = L.Conv2D(3, 3, padding="same", name="shared_conv")
    inp = keras.Input((12, 12, 3))
    x = shared(shared(inp))
    model = keras.Model(inp, L.Dense(N_CLASSES, activation="softmax")(L.GlobalAveragePooling2D()(x)))
    loaded = _saved_and_loaded(model, tmp_path, "keras")
    with pytest.raises(GradCamUnavailable) as info:
        build_explainer(loaded, layer="shared_conv")
    message = str(info.value)
    assert "'shared_conv'" in message and "used 2 times" in message and "\n" not in message
    assert "in user code" not in message
    from core.errors import UserError

    assert isinstance(info.value, UserError)
