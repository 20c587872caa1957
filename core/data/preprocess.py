"""What a model is fed: the pixel preprocessing its user trained it with, in one place.

Conventions. Decoded images are uint8 (N, H, W, C), RGB (C = 3) or grayscale
(C = 1). A ``Preprocessing`` is a *mode* (how values are scaled) and a
*channel order* (the order the user's pipeline held the channels in before
that). ``feed(pixels, preprocessing)`` turns decoded pixels into the model's
float32 input, and it is the only function that does: analysis, the Ray
engine, single-image predictions ("Try an image") and attention maps all call
it, so they all see the input the model learnt from.

Modes, as the user wrote them:

===========  ================================================================
``raw``       0..255, unchanged (a model with its own Rescaling layer)
``unit``      x / 255 (``ImageDataGenerator(rescale=1/255)``, ``cv2`` + /255)
``symmetric`` x / 127.5 - 1 (-1..1)
``tf``        keras.applications' 'tf' mode: the same values as ``symmetric``
``imagenet``  torchvision's ``Normalize``: (x / 255 - mean) / std per RGB channel
``torch``     keras.applications' 'torch' mode: the same values as ``imagenet``
``caffe``     keras.applications' 'caffe' mode: RGB -> BGR, minus the ImageNet
              BGR means, no scaling (VGG16, ResNet50/101/152 ``preprocess_input``)
===========  ================================================================

``auto`` is not a mode but a request: the model's format resolves it (raw for
a model that rescales its own input, else unit). Channel order ``bgr`` means
the model was trained on images in BGR order (``cv2.imread`` without a
conversion): the decoded RGB pixels are reversed first, and a mode is then
applied to them exactly as the user's code applied it (so ``caffe`` with
``bgr`` is ``preprocess_input`` called on cv2 images). Grayscale images have
one channel and no order.

Importing this module is cheap (NumPy only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import UserError

# How a picture is resized to the model's input, named by the training pipelines that do it (``--resize``):
# a model sees what it was trained on only when resized the same way (a shrink by INTER_LINEAR aliases
# where INTER_AREA averages).
RESIZE_METHODS = {
    "area": "cv2.INTER_AREA when shrinking, INTER_LINEAR when enlarging (no aliasing)",
    "linear": "bilinear: cv2.resize's default (INTER_LINEAR), and tf.image.resize / Keras' "
              "image_dataset_from_directory (to under one grey level: they keep floats)",
    "nearest": "nearest pixel as PIL takes it (cv2.INTER_NEAREST_EXACT): keras.utils.load_img(target_size=...)'s "
               "default",
}

# torchvision's normalisation (x / 255 - mean) / std per RGB channel ('imagenet' and Keras' 'torch').
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# keras.applications' 'caffe' mode subtracts these from BGR channels (0..255).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

MODES = {
    "raw": "raw 0..255",
    "unit": "unit 0..1",
    "symmetric": "symmetric -1..1",
    "tf": "keras 'tf' mode -1..1",
    "imagenet": "torchvision ImageNet normalisation",
    "torch": "keras 'torch' mode (ImageNet normalisation)",
    "caffe": "keras 'caffe' mode (BGR, ImageNet means subtracted)",
}
# The choices of --preprocess (and of the older --scale), listed once.
PREPROCESS_CHOICES = ("auto", *MODES)
CHANNEL_ORDERS = ("rgb", "bgr")
# Modes that give the same numbers (the user's name is kept in the config; checks compare one of each).
SAME_AS = {"tf": "symmetric", "torch": "imagenet"}
_THREE_CHANNEL_MODES = ("imagenet", "torch", "caffe")


class PreprocessError(UserError):
    """An unknown mode or channel order, or a mode the images cannot take (the message names it)."""


@dataclass(frozen=True)
class Preprocessing:
    """A mode from ``MODES`` (or 'auto' before the model resolves it) and a channel order.

    >>> Preprocessing("caffe").spec, Preprocessing("unit", "bgr").spec
    ('caffe', 'unit+bgr')
    >>> Preprocessing.parse("unit+bgr") == Preprocessing("unit", "bgr")
    True
    """

    mode: str = "auto"
    channel_order: str = "rgb"

    def __post_init__(self):
        if self.mode not in PREPROCESS_CHOICES:
            raise PreprocessError(f"--preprocess must be one of {list(PREPROCESS_CHOICES)}. "
                                  f"Received: {self.mode!r}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise PreprocessError(f"--channel-order must be one of {list(CHANNEL_ORDERS)}. "
                                  f"Received: {self.channel_order!r}")

    @property
    def spec(self) -> str:
        """'mode' or 'mode+bgr': a compact name for messages and tables."""
        return self.mode if self.channel_order == "rgb" else f"{self.mode}+{self.channel_order}"

    @classmethod
    def parse(cls, spec: "str | Preprocessing") -> "Preprocessing":
        """A Preprocessing from its ``spec`` ('unit', 'caffe+bgr'), or itself."""
        if isinstance(spec, Preprocessing):
            return spec
        mode, _, order = str(spec).partition("+")
        return cls(mode, order or "rgb")

    def resolved(self, auto_mode: str) -> "Preprocessing":
        """This preprocessing with 'auto' replaced by ``auto_mode`` (the format's guess)."""
        return Preprocessing(auto_mode, self.channel_order) if self.mode == "auto" else self

    def options(self) -> str:
        """The command-line options that ask for this preprocessing.

        >>> Preprocessing("caffe", "bgr").options()
        '--preprocess caffe --channel-order bgr'
        """
        text = f"--preprocess {self.mode}"
        return text + (f" --channel-order {self.channel_order}" if self.channel_order != "rgb" else "")

    def describe(self) -> str:
        """Words for messages: "unit 0..1", "unit 0..1, BGR channels"."""
        words = MODES.get(self.mode, self.mode)
        return words + (", BGR channels" if self.channel_order == "bgr" else "")

    def canonical(self) -> "Preprocessing":
        """The same numbers under one name per family ('tf' -> 'symmetric', 'torch' -> 'imagenet')."""
        return Preprocessing(SAME_AS.get(self.mode, self.mode), self.channel_order)


def check_channels(preprocessing: Preprocessing, channels: int, *, what: str = "the model takes") -> None:
    """Raise PreprocessError when ``preprocessing`` needs 3 channels and the model takes another number."""
    if preprocessing.mode in _THREE_CHANNEL_MODES and channels != 3:
        raise PreprocessError(f"--preprocess {preprocessing.mode} normalises 3 colour channels; {what} "
                              f"{channels}")


def feed(pixels: np.ndarray, preprocessing: "Preprocessing | str") -> np.ndarray:
    """The model's input for decoded pixels: uint8 (N, H, W, C) -> float32 (N, H, W, C).

    ``preprocessing`` is a Preprocessing or its spec ('unit', 'caffe', 'unit+bgr');
    it must be resolved (not 'auto').

    >>> x = np.array([[[[255, 0, 0]]]], np.uint8)        # one red pixel, RGB
    >>> feed(x, "unit").ravel().tolist(), feed(x, "unit+bgr").ravel().tolist()
    ([1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    >>> [round(float(v), 3) for v in feed(x, "caffe").ravel()]   # BGR minus the BGR means
    [-103.939, -116.779, 131.32]
    """
    p = Preprocessing.parse(preprocessing)
    if p.mode == "auto":
        raise PreprocessError("Preprocessing 'auto' must be resolved by the model's format before feeding it")
    x = np.asarray(pixels)
    if x.ndim != 4:
        raise PreprocessError(f"Expected a batch of images (N, H, W, C). Received shape {x.shape}")
    check_channels(p, x.shape[-1], what="the images have")
    x = x.astype(np.float32)
    if p.channel_order == "bgr" and x.shape[-1] == 3:
        x = x[..., ::-1]
    mode = SAME_AS.get(p.mode, p.mode)
    if mode == "unit":
        x *= 1.0 / 255.0
    elif mode == "symmetric":
        x = x * (1.0 / 127.5) - 1.0
    elif mode == "imagenet":
        x *= 1.0 / 255.0
        x -= np.asarray(IMAGENET_MEAN, np.float32)
        x /= np.asarray(IMAGENET_STD, np.float32)
    elif mode == "caffe":
        x = x[..., ::-1] - np.asarray(CAFFE_BGR_MEAN, np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)
