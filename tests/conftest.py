"""Shared fixtures: tiny image trees written as real files, and tiny Keras models.

Images encode their class as a colour (class 0 red-ish, class 1 green-ish, ...)
so that a model can tell them apart after a few steps of training.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class LazyModule:
    """A module imported on first attribute use, so that collecting tests imports no TensorFlow
    (``import keras`` costs 5-40 s; collection must stay under 10 s). Keras' own
    ``keras/src/utils/module_utils.py`` ``LazyModule`` does the same."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        import importlib

        if attr.startswith("_"):
            # pytest probes every module attribute while collecting (``_mock_name``,
            # ``__wrapped__``): answering those must not import the module.
            raise AttributeError(attr)

        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"LazyModule({self._name!r})"

CLASS_COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}


def write_image(path, rgb, *, size=(20, 20), seed=0):
    """Write an RGB image with noise around ``rgb`` (OpenCV wants BGR on disk)."""
    rng = np.random.default_rng(seed)
    img = np.clip(np.array(rgb, np.float32) + rng.normal(0, 15, (*size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)), path
    return img


@pytest.fixture
def image_tree(tmp_path):
    """root/<class>/<i>.png for 3 classes x 5 images, plus one corrupt .jpg in dog/."""
    root = tmp_path / "images"
    for c, (name, rgb) in enumerate(CLASS_COLOURS.items()):
        for i in range(5):
            write_image(root / name / f"{name}_{i}.png", rgb, seed=c * 10 + i)
    (root / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg")
    return root


def make_classifier(n_classes=3, *, input_shape=(20, 20, 3), logits=False, name=None):
    import keras

    inp = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(6, activation="relu", name="penultimate")(x)
    out = keras.layers.Dense(n_classes, activation=None if logits else "softmax", name="classifier")(x)
    return keras.Model(inp, out, name=name or "tiny")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A saved 3-class .keras model on 20x20 RGB input (untrained, deterministic weights)."""
    import keras

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    make_classifier().save(path)
    return path


if os.environ.get("CLASSIFIER_TEST_CPU_LOG"):
    # Development aid: the CPU seconds each test costs (this process and the subprocesses it waited
    # for), appended to $CLASSIFIER_TEST_CPU_LOG as "seconds<TAB>test id". Unlike --durations this
    # does not grow with the machine's load, so it says which tests the fast lane can afford.
    import resource
    import time

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        def cpu() -> float:
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            return time.process_time() + children.ru_utime + children.ru_stime

        start = cpu()
        try:
            return (yield)
        finally:
            with open(os.environ["CLASSIFIER_TEST_CPU_LOG"], "a") as log:
                log.write(f"{cpu() - start:.2f}\t{item.nodeid}\n")
