"""core.data.preprocess: feed() against keras.applications' preprocess_input and torchvision's numbers;
the options in the run's config (old runs keep their keys)."""

from __future__ import annotations

import numpy as np
import pytest

from core.data.preprocess import (
    CHANNEL_ORDERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESS_CHOICES,
    PreprocessError,
    Preprocessing,
    feed,
)
from core.run.config import AnalysisConfig

PIXELS = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)  # (N, H, W, RGB)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_keras_modes_equal_keras_preprocess_input(mode):
    from keras.applications.imagenet_utils import preprocess_input

    expected = preprocess_input(PIXELS.astype("float32"), mode=mode, data_format="channels_last")
    np.testing.assert_allclose(feed(PIXELS, mode), expected, rtol=1e-6, atol=1e-5)
    # the same call on cv2's BGR images is what --channel-order bgr means
    expected_bgr = preprocess_input(PIXELS[..., ::-1].astype("float32"), mode=mode, data_format="channels_last")
    np.testing.assert_allclose(feed(PIXELS, Preprocessing(mode, "bgr")), expected_bgr, rtol=1e-6, atol=1e-5)


def test_value_modes_and_channel_order():
    x = PIXELS.astype(np.float64)
    np.testing.assert_allclose(feed(PIXELS, "raw"), x)
    np.testing.assert_allclose(feed(PIXELS, "unit"), x / 255, rtol=1e-6)
    np.testing.assert_allclose(feed(PIXELS, "symmetric"), x / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(feed(PIXELS, "imagenet"), (x / 255 - IMAGENET_MEAN) / IMAGENET_STD, atol=1e-5)
    np.testing.assert_allclose(feed(PIXELS, "unit+bgr"), x[..., ::-1] / 255, rtol=1e-6)
    gray = PIXELS[..., :1]
    np.testing.assert_allclose(feed(gray, Preprocessing("unit", "bgr")), gray / 255.0, rtol=1e-6)  # no order
    assert feed(PIXELS, "unit").dtype == np.float32


def test_bad_preprocessing_is_one_line():
    with pytest.raises(PreprocessError, match=r"--preprocess must be one of \[.*'caffe'.*\]. Received: 'vgg'"):
        Preprocessing("vgg")
    with pytest.raises(PreprocessError, match=r"--channel-order must be one of \['rgb', 'bgr'\]. Received: 'rbg'"):
        Preprocessing("unit", "rbg")
    with pytest.raises(PreprocessError, match="caffe normalises 3 colour channels; the images have 1"):
        feed(PIXELS[..., :1], "caffe")
    with pytest.raises(PreprocessError, match="must be resolved"):
        feed(PIXELS, "auto")
    assert set(PREPROCESS_CHOICES) >= {"auto", "raw", "unit", "symmetric", "imagenet", "caffe", "tf", "torch"}
    assert CHANNEL_ORDERS == ("rgb", "bgr")


def test_config_records_the_preprocessing_and_old_keys_stay():
    old = {"model_sha256": "ab" * 32, "data_fingerprint": "f" * 16, "layer": None, "scale": "auto",
           "image_size": None, "projection": None, "schema_version": 2}   # a manifest written before this change
    config = AnalysisConfig.from_dict(old)
    assert config.channel_order == "rgb" and config.to_dict() == old  # same dict, so the same cache key
    bgr = config.replace(channel_order="bgr")
    caffe = config.replace(scale="caffe")
    assert len({config.key(), bgr.key(), caffe.key()}) == 3
    assert AnalysisConfig.from_dict(bgr.to_dict()) == bgr
    assert bgr.preprocessing == Preprocessing("auto", "bgr")
    assert bgr.differences(config) == ["channel_order bgr vs None"]


def test_dataset_repr_shows_plain_split_names():
    from core.data.datasets import ImageDataset

    ds = ImageDataset(name="d", kind="folder", classes=["a"], paths=["x.png"], labels=np.zeros(1, np.int64),
                      splits=np.array(["all"]))
    assert "splits={'all': 1}" in repr(ds)
