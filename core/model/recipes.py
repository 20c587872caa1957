"""Training recipes: a frozen description of what to train, and the Keras model it builds.

A ``Recipe`` holds every option of ``python -m core train`` and serialises to
JSON (saved beside the model and in the run's manifest). ``build_model`` turns
it into a ``keras.Model`` for K classes.

Model conventions (the analysis relies on them):

* input: RAW pixels 0..255, float32, shape (H, W, C); preprocessing
  (``Rescaling(1/255)`` or the backbone's ``preprocess_input``) and
  augmentation are layers inside the model;
* output: the last layer is ``Dense(K, softmax)`` named ``classifier``; its
  input (the penultimate Dense block, 128 units by default) is the embedding
  the analysis projects.

Keras is imported inside the functions that build models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError

RECIPES = ("small-cnn", "mlp", "transfer", "demo-cnn")
BACKBONES = ("vgg16", "resnet50", "resnet101", "mobilenetv2", "efficientnetb0")
# Smallest input side each keras.applications backbone accepts without its top.
BACKBONE_MIN_SIZE = {"vgg16": 32, "resnet50": 32, "resnet101": 32, "mobilenetv2": 32, "efficientnetb0": 32}
AUGMENTATIONS = ("flip", "rotation", "shift", "zoom", "contrast")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
LR_SCHEDULES = ("constant", "cosine", "onecycle")
WEIGHTS = ("imagenet", "none")

# ImageNet weights without the classifier top, as keras.applications names them.
_GCS = "https://storage.googleapis.com/"
WEIGHTS_FILES = {
    "vgg16": ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
              _GCS + "tensorflow/keras-applications/vgg16/", "6d6bbae143d832006294945121d1f1fc"),
    "resnet50": ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 _GCS + "tensorflow/keras-applications/resnet/", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
                  _GCS + "tensorflow/keras-applications/resnet/", "88cf7a10940856eca736dc7b7e228a21"),
    "mobilenetv2": ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
                    _GCS + "tensorflow/keras-applications/mobilenet_v2/", None),
    "efficientnetb0": ("efficientnetb0_notop.h5", _GCS + "keras-applications/",
                       "50bc09e76180e00e4465e1a485ddc09d"),
}
_MOBILENET_ROWS = (96, 128, 160, 192, 224)


class RecipeError(UserError):
    """A recipe option that cannot be used (the message names the option and value)."""


@dataclass(frozen=True)
class Recipe:
    """Every option of a training run. Sizes are (height, width); None = decided from the data."""

    recipe: str = "small-cnn"
    backbone: str | None = None
    weights: str = "imagenet"
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    conv_filters: tuple[int, ...] = (32, 64)
    dense_units: tuple[int, ...] = (256, 128)
    dropout: float = 0.5
    batch_norm: bool = False
    fine_tune: int = 0
    fine_tune_epochs: int = 5
    batch_size: int = 128
    epochs: int = 10
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    lr_schedule: str = "constant"
    label_smoothing: float = 0.0
    val_split: float = 0.2
    seed: int = 0
    augment: tuple[str, ...] = ()
    class_weights: str | None = None
    oversample_to: int | None = None
    early_stopping: bool = True
    patience: int = 5
    checkpoint: bool = True
    reduce_lr: bool = True
    time_budget_s: float | None = None
    extra: dict = field(default_factory=dict)

    def validate(self) -> "Recipe":
        """Return self, or raise RecipeError naming the first bad option."""
        _one_of("recipe", self.recipe, RECIPES)
        if self.recipe == "transfer":
            if self.backbone is None:
                raise RecipeError(f"The transfer recipe needs --backbone, one of {list(BACKBONES)}")
            _one_of("backbone", self.backbone, BACKBONES)
            _one_of("weights", self.weights, WEIGHTS)
        elif self.backbone is not None:
            raise RecipeError(f"--backbone is only for the transfer recipe. Received: recipe={self.recipe!r}, "
                              f"backbone={self.backbone!r}")
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for a in self.augment:
            _one_of("augment", a, AUGMENTATIONS)
        if not 0.0 < self.val_split < 1.0:
            raise RecipeError(f"--val-split must be between 0 and 1 (exclusive). Received: {self.val_split}")
        if not 0.0 <= self.dropout < 1.0:
            raise RecipeError(f"--dropout must be in [0, 1). Received: {self.dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise RecipeError(f"--label-smoothing must be in [0, 1). Received: {self.label_smoothing}")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise RecipeError(f"--{name.replace('_', '-')} must be at least 1. Received: {getattr(self, name)}")
        if self.fine_tune < 0 or self.fine_tune_epochs < 0:
            raise RecipeError(f"--fine-tune and --fine-tune-epochs must be >= 0. "
                              f"Received: {self.fine_tune}, {self.fine_tune_epochs}")
        if self.fine_tune and self.recipe != "transfer":
            raise RecipeError(f"--fine-tune is only for the transfer recipe. Received: recipe={self.recipe!r}")
        if self.fine_tune and self.recipe == "transfer" and self.weights == "none":
            raise RecipeError("--fine-tune unfreezes a pretrained backbone's top: with --weights none the whole "
                              f"backbone trains from scratch already. Received: --fine-tune {self.fine_tune}")
        if not self.learning_rate > 0:
            raise RecipeError(f"--learning-rate must be positive. Received: {self.learning_rate}")
        if self.channels not in (None, 1, 3):
            raise RecipeError(f"--channels must be 1 or 3. Received: {self.channels}")
        if any(u < 1 for u in self.conv_filters) or any(u < 1 for u in self.dense_units):
            raise RecipeError(f"Layer widths must be positive. Received: conv_filters={list(self.conv_filters)}, "
                              f"dense_units={list(self.dense_units)}")
        if self.recipe in ("small-cnn", "demo-cnn") and not self.conv_filters:
            raise RecipeError("--conv-filters needs at least one width for a CNN (e.g. 32,64)")
        if self.class_weights not in (None, "balanced"):
            raise RecipeError(f"--class-weights must be 'balanced'. Received: {self.class_weights!r}")
        if self.oversample_to is not None and self.oversample_to < 1:
            raise RecipeError(f"--oversample-to must be a positive number of images. Received: {self.oversample_to}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise RecipeError(f"--time-budget must be positive seconds. Received: {self.time_budget_s}")
        if self.image_size is not None:
            h, w = self.image_size
            if h < 1 or w < 1:
                raise RecipeError(f"--image-size must be positive. Received: {h}x{w}")
            if self.recipe == "transfer" and min(h, w) < BACKBONE_MIN_SIZE[self.backbone]:
                raise RecipeError(f"{self.backbone} needs images of at least {BACKBONE_MIN_SIZE[self.backbone]}x"
                                  f"{BACKBONE_MIN_SIZE[self.backbone]} pixels. Received: --image-size {h}x{w}")
            need = min_cnn_side(len(self.conv_filters))
            if self.recipe in ("small-cnn", "demo-cnn") and min(h, w) < need:
                raise RecipeError(f"--image-size {h}x{w} is too small for {len(self.conv_filters)} conv blocks "
                                  f"(3x3 conv + 2x2 pool each): use at least {need} pixels a side")
        return self

    def to_dict(self) -> dict:
        """JSON-ready dict of every option (tuples as lists)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"Unknown recipe options: {unknown}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs).validate()

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)


def min_cnn_side(n_blocks: int) -> int:
    """Smallest image side that survives ``n_blocks`` of 3x3 'valid' conv + 2x2 max-pool.

    >>> min_cnn_side(2)  # 10 -> conv 8 -> pool 4 -> conv 2 -> pool 1
    10
    """
    side = 1
    for _ in range(n_blocks):
        side = 2 * side + 2
    return side


def _one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise RecipeError(f"`{name}` must be one of {list(choices)}. Received: {name}={value!r}")


def parse_size(text: str) -> tuple[int, int]:
    """An image size from the command line, as (height, width).

    >>> parse_size("64"), parse_size("96x128")
    ((64, 64), (96, 128))
    """
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise RecipeError(f"--image-size must be H or HxW (e.g. 64 or 96x128). Received: {text!r}") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1:
        raise RecipeError(f"--image-size must be H or HxW with positive numbers. Received: {text!r}")
    return nums[0], nums[1]


def parse_int_list(text: str, *, option: str) -> tuple[int, ...]:
    """Comma-separated layer widths.

    >>> parse_int_list("32, 64", option="--conv-filters"), parse_int_list("", option="--dense-units")
    ((32, 64), ())
    """
    try:
        return tuple(int(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        raise RecipeError(f"{option} must be comma-separated integers (e.g. 32,64). Received: {text!r}") from None


# --------------------------------------------------------------------------- weights

def keras_home() -> Path:
    """The Keras cache root, read at call time ($KERAS_HOME, else ~/.keras)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def weights_file_name(backbone: str, image_size: tuple[int, int]) -> str:
    name = WEIGHTS_FILES[backbone][0]
    if "{rows}" in name:  # MobileNetV2 has weights per input size; others fall back to 224
        rows = image_size[0] if image_size[0] == image_size[1] and image_size[0] in _MOBILENET_ROWS else 224
        name = name.format(rows=rows)
    return name


def resolve_imagenet_weights(backbone: str, image_size: tuple[int, int]) -> str:
    """Path of the backbone's ImageNet weights: from the Keras cache, else downloaded there.

    Offline and uncached, raises RecipeError (one line) saying which file to
    put where.
    """
    import keras

    fname = weights_file_name(backbone, image_size)
    cache = keras_home() / "models"
    cached = cache / fname
    if cached.is_file():
        return str(cached)
    _, base, file_hash = WEIGHTS_FILES[backbone]
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras announces the download on stdout
            path = keras.utils.get_file(fname, base + fname, cache_dir=str(keras_home()), cache_subdir="models",
                                        file_hash=file_hash)
    except Exception as exc:  # boundary: URLError, OSError, ValueError (hash), ... all mean "not available"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = re.sub(r"\s*on https?://\S+", "", text)[:120]  # the URL is named once, below
        raise RecipeError(
            f"ImageNet weights for {backbone} are not cached and could not be downloaded ({reason}): "
            f"put {fname} in {cache}/ (from {base + fname}) or use --weights none"
        ) from None
    return str(path)


# --------------------------------------------------------------------------- models

def augmentation_layers(augment: tuple[str, ...], *, seed: int = 0) -> list:
    """Keras preprocessing layers (active only in training) for the named augmentations."""
    from keras import layers

    table = {
        "flip": lambda: layers.RandomFlip("horizontal", seed=seed, name="aug_flip"),
        "rotation": lambda: layers.RandomRotation(0.05, fill_mode="nearest", seed=seed, name="aug_rotation"),
        "shift": lambda: layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed, name="aug_shift"),
        "zoom": lambda: layers.RandomZoom(0.1, fill_mode="nearest", seed=seed, name="aug_zoom"),
        "contrast": lambda: layers.RandomContrast(0.2, value_range=(0, 255), seed=seed, name="aug_contrast"),
    }
    return [table[a]() for a in augment]


def _head(x, units: tuple[int, ...], dropouts: list[float], *, batch_norm: bool):
    """Dense blocks: Dense -> [BatchNormalization] -> ReLU -> Dropout."""
    from keras import layers

    for i, (u, d) in enumerate(zip(units, dropouts), start=1):
        x = layers.Dense(u, use_bias=not batch_norm, name=f"dense_{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"dense_{i}_bn")(x)
        x = layers.Activation("relu", name=f"dense_{i}_relu")(x)
        if d > 0:
            x = layers.Dropout(d, name=f"dense_{i}_dropout")(x)
    return x


def build_model(recipe: Recipe, *, n_classes: int, image_size: tuple[int, int], channels: int):
    """The Keras model of ``recipe`` for (H, W, C) raw-pixel input and ``n_classes`` outputs.

    Returns an uncompiled ``keras.Model`` whose last layer ``classifier`` is Dense(K, softmax).
    """
    import keras
    from keras import layers

    recipe.validate()
    if n_classes < 2:
        raise RecipeError(f"Training needs at least 2 classes. Received: {n_classes}")
    h, w = image_size
    inputs = keras.Input((h, w, channels), name="pixels")
    x = inputs
    for aug in augmentation_layers(recipe.augment, seed=recipe.seed):
        x = aug(x)

    if recipe.recipe == "transfer":
        from core.model.layers import BackbonePreprocess

        if min(h, w) < BACKBONE_MIN_SIZE[recipe.backbone]:
            raise RecipeError(f"{recipe.backbone} needs images of at least {BACKBONE_MIN_SIZE[recipe.backbone]}x"
                              f"{BACKBONE_MIN_SIZE[recipe.backbone]} pixels. Received: --image-size {h}x{w}")
        x = BackbonePreprocess(recipe.backbone, name="preprocess")(x)
        backbone = make_backbone(recipe.backbone, (h, w), weights=recipe.weights)
        if recipe.weights == "none":
            # from scratch: every layer learns, BatchNormalization included (a frozen random backbone gave
            # MobileNetV2 features of 1e-13 and a head stuck at chance)
            backbone.trainable = True
            x = backbone(x)
        else:
            backbone.trainable = False
            # training=False keeps the backbone's BatchNormalization in inference mode, also when fine-tuning.
            x = backbone(x, training=False)
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        units = recipe.dense_units or (256, 128)
        dropouts = [0.5, 0.3] + [0.3] * max(0, len(units) - 2)
        x = _head(x, units, dropouts, batch_norm=recipe.batch_norm)
    else:
        x = layers.Rescaling(1.0 / 255, name="rescale")(x)
        if recipe.recipe == "mlp":
            x = layers.Flatten(name="flatten")(x)
        elif recipe.recipe == "small-cnn":
            for i, f in enumerate(recipe.conv_filters, start=1):
                x = layers.Conv2D(f, 3, activation="relu", name=f"conv_{i}")(x)
                if recipe.batch_norm:
                    x = layers.BatchNormalization(name=f"conv_{i}_bn")(x)
                x = layers.MaxPooling2D(name=f"pool_{i}")(x)
            x = layers.Flatten(name="flatten")(x)
        else:  # demo-cnn
            x = _demo_body(x, recipe.conv_filters)
        x = _head(x, recipe.dense_units, [recipe.dropout] * len(recipe.dense_units),
                  batch_norm=recipe.batch_norm)
    outputs = layers.Dense(n_classes, activation="softmax", name="classifier")(x)
    name = recipe.recipe if recipe.recipe != "transfer" else f"transfer_{recipe.backbone}"
    return keras.Model(inputs, outputs, name=name.replace("-", "_"))


def _demo_body(x, filters: tuple[int, ...]):
    """Compact CNN for the demo: per width, 3x3 Conv-ReLU, 2x2 MaxPool, BatchNormalization; Dropout 0.2.

    BatchNormalization after the pooling normalises a map 4x smaller than
    before it: most of the gain for a quarter of the cost on a CPU.
    """
    from keras import layers

    for i, f in enumerate(filters, start=1):
        x = layers.Conv2D(f, 3, activation="relu", name=f"conv_{i}")(x)
        x = layers.MaxPooling2D(name=f"pool_{i}")(x)
        x = layers.BatchNormalization(name=f"pool_{i}_bn")(x)
    x = layers.Flatten(name="flatten")(x)
    return layers.Dropout(0.2, name="flatten_dropout")(x)


def make_backbone(backbone: str, image_size: tuple[int, int], *, weights: str = "imagenet"):
    """A keras.applications backbone without its top, for (H, W, 3) input."""
    import keras

    _one_of("backbone", backbone, BACKBONES)
    weights_arg = resolve_imagenet_weights(backbone, image_size) if weights == "imagenet" else None
    constructors = {
        "vgg16": keras.applications.VGG16, "resnet50": keras.applications.ResNet50,
        "resnet101": keras.applications.ResNet101, "mobilenetv2": keras.applications.MobileNetV2,
        "efficientnetb0": keras.applications.EfficientNetB0,
    }
    try:  # a stable name: fine-tuning finds the backbone by it
        return constructors[backbone](include_top=False, weights=weights_arg, input_shape=(*image_size, 3),
                                      name=backbone)
    except OSError as exc:  # h5py's, for a file it cannot open (a truncated download)
        if weights_arg is None:
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecipeError(f"The {backbone} ImageNet weights file {weights_arg!r} cannot be read ({reason}): delete "
                          "it to have it downloaded again, or put a good copy there") from None


def unfreeze_top(model, n_layers: int, *, backbone_name: str) -> int:
    """Make the top ``n_layers`` of the backbone trainable, BatchNormalization layers excepted.

    Returns how many layers were unfrozen.
    """
    import keras

    backbone = model.get_layer(backbone_name)
    backbone.trainable = True
    layers = backbone.layers
    cut = max(0, len(layers) - n_layers)
    unfrozen = 0
    for i, layer in enumerate(layers):
        trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable
        unfrozen += int(trainable and bool(layer.weights))
    return unfrozen
