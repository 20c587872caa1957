"""Training with a recipe: ``python -m core train --data PATH --recipe NAME`` (options in core.cli).

``train`` runs four steps in order, each a function of its own:

1. data: ``prepare_data`` assigns the splits and decodes the images, into
   arrays when they fit in memory, else into Keras ``PyDataset`` batches
   decoded from disk each epoch (above ``IN_MEMORY_LIMIT_BYTES``);
2. build: ``build_and_compile`` makes the recipe's model;
3. fit: ``fit_phases`` trains it (then fine-tunes a transfer backbone), and
   ``score_test_split`` scores the held-out test rows;
4. save: ``save_training`` writes the model, ``classes.txt``, ``history.json``
   and ``recipe.json``.

Data splits: rows marked 'train' (or 'all') are the training pool; 'val' rows
are the validation set, else a stratified, seeded ``val_split`` of the pool;
'test' rows are held out (never seen in training) and are what the analysis
scores. The run written afterwards marks every row with the split it played.

Both data paths treat files the same way: every row is decoded once before
training, a file that cannot be decoded is left out and recorded with its
reason, and ``oversample_to`` adds augmented copies (random flip, small
rotation, shift and zoom) of the same decoded images.

A training writes into ``out_dir``: ``model.keras`` (best weights),
``checkpoint.keras`` (best validation accuracy so far, kept on Ctrl-C),
``classes.txt`` (the class order, one name a line), ``history.json``
(per-epoch loss, accuracy, val_loss, val_accuracy, learning_rate) and
``recipe.json`` (every option, the data, classes, timing, skipped files).

Keras/TensorFlow are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from core.datasets import DatasetError, ImageDataset, iter_batches
from core.progress import Progress, say_function, slug
from core.recipes import Recipe, RecipeError, build_model, unfreeze_top

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
IN_MEMORY_LIMIT_BYTES = 3 << 30  # decoded size above which batches are decoded from disk each epoch
SPLITS = ("train", "val", "test")


class TrainingInterrupted(Exception):
    """Ctrl-C during training; ``checkpoint`` is the best model saved so far (or None)."""

    def __init__(self, checkpoint: Path | None):
        super().__init__(str(checkpoint))
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    model: object
    model_path: Path
    recipe: Recipe
    history: dict
    seconds: float
    epochs: int
    test_accuracy: float | None
    dataset: ImageDataset          # all rows, splits as used: train / val / test
    image_size: tuple[int, int]
    channels: int
    stopped_by: str
    corrections: dict | None = None  # the review corrections applied (core.review.corrections.apply_corrections)

    def training_record(self) -> dict:
        """The manifest's ``training`` entry."""
        return {"recipe": self.recipe.to_dict(), "history": self.history, "seconds": round(self.seconds, 2),
                "epochs": self.epochs, "test_accuracy": self.test_accuracy,
                "model_path": str(self.model_path), "image_size": list(self.image_size),
                "channels": self.channels, "stopped_by": self.stopped_by,
                "splits": _split_counts(self.dataset.splits),
                **({"corrections": self.corrections} if self.corrections else {})}


def _split_counts(splits: np.ndarray) -> dict:
    return {str(s): int(c) for s, c in zip(*np.unique(splits, return_counts=True))}


# --------------------------------------------------------------------------- data

def assign_splits(dataset: ImageDataset, *, val_split: float, seed: int) -> ImageDataset:
    """A copy whose splits say what each row is used for: 'train', 'val' or 'test'.

    'val' rows are kept; without any, a stratified ``val_split`` of the
    'train'/'all' rows becomes 'val' (plain random when a class has < 2 rows).
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_split < 1.0:
        raise RecipeError(f"--val-split must be between 0 and 1 (exclusive). Received: {val_split}")
    splits = np.where(np.isin(dataset.splits, ["train", "all"]), "train", dataset.splits).astype("<U5")
    pool = np.flatnonzero(splits == "train")
    if len(pool) < 2:
        raise RecipeError(f"Data set {dataset.name!r} has {len(pool)} training images; training needs more")
    if not (splits == "val").any():
        labels = dataset.labels[pool]
        counts = np.bincount(labels, minlength=len(dataset.classes))
        n_val = max(1, int(round(val_split * len(pool))))
        n_present = int((counts > 0).sum())
        # sklearn stratifies only with >= 2 rows a class and >= one row a class on each side.
        can_stratify = counts[counts > 0].min() >= 2 and min(n_val, len(pool) - n_val) >= n_present
        stratify = labels if can_stratify else None
        _, val_rows = train_test_split(pool, test_size=n_val, stratify=stratify, random_state=seed)
        splits[val_rows] = "val"
    return replace(dataset, splits=splits)


def default_geometry(dataset: ImageDataset, recipe: Recipe) -> tuple[tuple[int, int], int]:
    """(image_size, channels) from the recipe, else from the data (pixel arrays keep their size)."""
    size, channels = recipe.image_size, recipe.channels
    first = None
    if size is None or channels is None:
        first = dataset.pixels[0] if dataset.pixels is not None else _first_readable(dataset)
    if size is None:
        if dataset.pixels is not None:
            size = tuple(int(s) for s in dataset.pixels.shape[1:3])
            if recipe.recipe == "transfer":
                size = (max(32, size[0]), max(32, size[1]))
        else:
            size = (128, 128) if recipe.recipe == "transfer" else (64, 64)
    if channels is None:
        channels = 3 if recipe.recipe == "transfer" or (first.ndim == 3 and first.shape[2] >= 3) else 1
    return size, channels


def _first_readable(dataset: ImageDataset, *, tries: int = 50) -> np.ndarray:
    """The first image that decodes (a corrupt or refused first file is skipped later, not fatal here)."""
    reasons = []
    for i in range(min(tries, len(dataset))):
        try:
            return dataset.read(i)
        except (ValueError, OSError) as exc:
            reasons.append(str(exc))
    raise DatasetError(f"None of the first {len(reasons)} images decodes (first reason: {reasons[0]})")


def with_geometry(dataset: ImageDataset, recipe: Recipe) -> Recipe:
    """The recipe with ``image_size`` and ``channels`` decided (``default_geometry``), validated."""
    size, channels = default_geometry(dataset, recipe)
    return recipe.replace(image_size=tuple(size), channels=channels).validate()


def _decoded_batches(dataset: ImageDataset, rows: np.ndarray, *, size: tuple[int, int], channels: int,
                     progress: Progress | None, what: str) -> Iterator[tuple[np.ndarray, np.ndarray, list]]:
    """Decode ``rows`` a batch at a time: yields (uint8 images, their rows, failed [{path, reason}])."""
    sub = dataset.subset(rows)
    done = 0
    for batch in iter_batches(sub, size=size, channels=channels, batch_size=256):
        done += len(batch.index) + len(batch.failed)
        yield batch.images, rows[batch.index], batch.failed
        if progress:
            progress(f"Decoding {what}: {done:,}/{len(rows):,}", done / max(len(rows), 1))


def load_arrays(dataset: ImageDataset, rows: np.ndarray, *, size: tuple[int, int], channels: int,
                progress: Progress | None = None, what: str = "images") -> tuple[np.ndarray, np.ndarray, list]:
    """Decode rows into uint8 (n, H, W, C). Returns (images, rows that decoded, failed [{path, reason}])."""
    rows = np.asarray(rows, dtype=np.int64)
    if dataset.pixels is not None:
        px = dataset.pixels[rows]
        if px.ndim == 3 and channels == 1 and tuple(px.shape[1:3]) == tuple(size):
            return px[..., None], rows, []
    images, ok, failed = [], [], []
    for batch_images, batch_rows, batch_failed in _decoded_batches(dataset, rows, size=size, channels=channels,
                                                                   progress=progress, what=what):
        images.append(batch_images)
        ok.append(batch_rows)
        failed += batch_failed
    if not images:
        return np.zeros((0, *size, channels), np.uint8), np.zeros(0, np.int64), failed
    return np.concatenate(images), np.concatenate(ok), failed


def decodable_rows(dataset: ImageDataset, rows: np.ndarray, *, size: tuple[int, int], channels: int,
                   progress: Progress | None = None, what: str = "images") -> tuple[np.ndarray, list]:
    """``load_arrays`` without keeping the pixels: (rows that decoded, failed [{path, reason}]).

    The streaming path decodes every file once before training, so that it
    knows the same skipped files and class counts as the in-memory path.
    """
    rows = np.asarray(rows, dtype=np.int64)
    ok, failed = [], []
    for _, batch_rows, batch_failed in _decoded_batches(dataset, rows, size=size, channels=channels,
                                                        progress=progress, what=what):
        ok.append(batch_rows)
        failed += batch_failed
    return (np.concatenate(ok) if ok else np.zeros(0, np.int64)), failed


def oversample_rows(labels: np.ndarray, *, up_to: int, seed: int = 0) -> np.ndarray:
    """Positions in ``labels`` to copy so that each class with fewer than ``up_to`` rows gets ``up_to``.

    Drawn with replacement from the class's rows, seeded; classes absent or
    already at ``up_to`` get none. Returns an int array of positions.

    >>> extra = oversample_rows(np.array([0, 0, 0, 1, 1]), up_to=4, seed=0)
    >>> np.bincount(np.array([0, 0, 0, 1, 1])[extra]).tolist()
    [1, 2]
    """
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    extra = [rng.choice(np.flatnonzero(labels == c), up_to - n) for c, n in enumerate(counts) if 0 < n < up_to]
    return np.concatenate(extra) if extra else np.zeros(0, np.int64)


def oversampling_augmenter(*, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A function that gives uint8 images (n, H, W, C) a random flip, small rotation, shift and zoom.

    Each call draws new random transforms (Keras layers in training mode,
    seeded once here).
    """
    from keras import layers

    augment = [layers.RandomFlip("horizontal", seed=seed), layers.RandomRotation(0.05, fill_mode="nearest", seed=seed),
               layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed),
               layers.RandomZoom(0.1, fill_mode="nearest", seed=seed)]

    def apply(images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32)
        for layer in augment:
            x = layer(x, training=True)
        return np.clip(np.rint(np.asarray(x)), 0, 255).astype(np.uint8)

    return apply


def oversample(images: np.ndarray, labels: np.ndarray, *, up_to: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Add augmented copies (``oversampling_augmenter``) of classes with fewer than ``up_to`` images."""
    extra = oversample_rows(labels, up_to=up_to, seed=seed)
    if not len(extra):
        return images, labels
    augment = oversampling_augmenter(seed=seed)
    new = [augment(images[extra[start:start + 512]]) for start in range(0, len(extra), 512)]
    return np.concatenate([images, *new]), np.concatenate([labels, labels[extra]])


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """sklearn's 'balanced' weights for the classes present; 1.0 for absent ones."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    out = {c: 1.0 for c in range(n_classes)}
    out.update({int(c): float(w) for c, w in zip(present, weights)})
    return out


def _streaming_batches(dataset: ImageDataset, rows: np.ndarray, labels: np.ndarray, *,
                       size: tuple[int, int], channels: int, batch_size: int, shuffle: bool, seed: int,
                       augmented: np.ndarray | None = None, weights: dict[int, float] | None = None,
                       one_hot: int | None = None):
    """A Keras PyDataset decoding ``rows`` from disk batch by batch (for data too big for memory).

    ``labels``: one per row; ``augmented``: a boolean per row, True for
    oversampled copies, which get ``oversampling_augmenter``'s transforms;
    ``weights``: class weights given as sample weights; ``one_hot``: K, for
    targets as one-hot rows (label smoothing). A file that fails now (changed
    since the check) is left out of its batch.
    """
    import keras

    augment = oversampling_augmenter(seed=seed) if augmented is not None and augmented.any() else None
    eye = np.eye(one_hot, dtype=np.float32) if one_hot else None

    class StreamingBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.order = np.arange(len(rows))
            self.rng = np.random.default_rng(seed)
            if shuffle:
                self.rng.shuffle(self.order)

        def __len__(self):
            return math.ceil(len(rows) / batch_size)

        def __getitem__(self, i):
            pick = self.order[i * batch_size:(i + 1) * batch_size]
            x, ok, _ = load_arrays(dataset, rows[pick], size=size, channels=channels)
            keep = np.isin(rows[pick], ok)
            if augment is not None:
                copies = augmented[pick][keep]
                if copies.any():
                    x[copies] = augment(x[copies])
            x = x.astype(np.float32)
            y = labels[pick][keep]
            target = eye[y] if eye is not None else y
            if weights is None:
                return x, target
            return x, target, np.array([weights[int(c)] for c in y], np.float32)

        def on_epoch_end(self):
            if shuffle:
                self.rng.shuffle(self.order)

    return StreamingBatches()


@dataclass
class TrainingData:
    """What the fit step consumes, from ``prepare_data``.

    ``fit_args`` are ``keras.Model.fit``'s data arguments (arrays, or
    PyDatasets when streaming); ``train_labels`` the label of every training
    example an epoch sees (oversampled copies included); ``test`` the held-out
    rows, as (images, labels) arrays or, when streaming, a PyDataset of
    (images, labels) batches, or None; ``failed`` the files that could not be
    decoded.
    """

    dataset: ImageDataset              # all rows, splits as used: train / val / test
    fit_args: dict
    steps: int                         # batches an epoch
    train_labels: np.ndarray
    test: object | None
    failed: list[dict] = field(default_factory=list)
    streaming: bool = False

    @property
    def has_val(self) -> bool:
        return self.fit_args.get("validation_data") is not None


def prepare_data(dataset: ImageDataset, recipe: Recipe, *, progress: Progress | None = None,
                 in_memory_limit_bytes: int | None = None) -> TrainingData:
    """Splits, then the decoded training, validation and test data of ``recipe`` (from ``with_geometry``).

    Data above ``in_memory_limit_bytes`` of decoded pixels (default
    ``IN_MEMORY_LIMIT_BYTES``) is streamed from disk; pixel arrays are
    always in memory.
    """
    if recipe.image_size is None or recipe.channels is None:
        raise ValueError("prepare_data needs a recipe with image_size and channels: pass with_geometry(dataset, "
                         f"recipe). Received: image_size={recipe.image_size}, channels={recipe.channels}")
    limit = IN_MEMORY_LIMIT_BYTES if in_memory_limit_bytes is None else in_memory_limit_bytes
    size, channels, k = recipe.image_size, recipe.channels, len(dataset.classes)
    split_ds = assign_splits(dataset, val_split=recipe.val_split, seed=recipe.seed)
    rows = {s: np.flatnonzero(split_ds.splits == s) for s in SPLITS}
    n_bytes = len(dataset) * size[0] * size[1] * channels
    # decoding comes before the training bar starts: its counts go in the message
    decoding = (lambda m, f: progress(m, 0.0)) if progress else None
    if dataset.pixels is not None or n_bytes <= limit:
        return _in_memory_data(dataset, split_ds, rows, recipe, k=k, progress=decoding)
    return _streaming_data(dataset, split_ds, rows, recipe, k=k, progress=decoding)


def _in_memory_data(dataset, split_ds, rows, recipe: Recipe, *, k: int, progress) -> TrainingData:
    size, channels = recipe.image_size, recipe.channels
    arrays, failed = {}, []
    for s in SPLITS:
        if len(rows[s]):
            x, ok, bad = load_arrays(dataset, rows[s], size=size, channels=channels, progress=progress,
                                     what=f"{s} images")
            arrays[s] = (x, dataset.labels[ok])
            failed += bad
    if "train" not in arrays or not len(arrays["train"][0]):
        raise RecipeError(f"No training images of {dataset.name!r} could be decoded")
    x_train, y_train = arrays["train"]
    if recipe.oversample_to:
        x_train, y_train = oversample(x_train, y_train, up_to=recipe.oversample_to, seed=recipe.seed)
    weights = balanced_class_weights(y_train, k) if recipe.class_weights == "balanced" else None
    val = arrays.get("val")
    if recipe.label_smoothing:  # the smoothed loss needs one-hot targets
        eye = np.eye(k, dtype=np.float32)
        y_train_target = eye[y_train]
        val = None if val is None else (val[0], eye[val[1]])
    else:
        y_train_target = y_train
    fit_args = dict(x=x_train, y=y_train_target, validation_data=val)
    fit_args.update(batch_size=recipe.batch_size, shuffle=True, class_weight=weights)
    return TrainingData(dataset=split_ds, fit_args=fit_args, steps=math.ceil(len(x_train) / recipe.batch_size),
                        train_labels=y_train, test=arrays.get("test"), failed=failed, streaming=False)


def _streaming_data(dataset, split_ds, rows, recipe: Recipe, *, k: int, progress) -> TrainingData:
    # Every file is decoded once here, as the in-memory path does, so that the same files are skipped
    # and recorded, and oversampling draws the same copies of the same decodable rows.
    size, channels = recipe.image_size, recipe.channels
    ok, failed = {}, []
    for s in SPLITS:
        if len(rows[s]):
            ok[s], bad = decodable_rows(dataset, rows[s], size=size, channels=channels, progress=progress,
                                        what=f"{s} images")
            failed += bad
    if "train" not in ok or not len(ok["train"]):
        raise RecipeError(f"No training images of {dataset.name!r} could be decoded")
    train_rows = ok["train"]
    augmented = np.zeros(len(train_rows), bool)
    if recipe.oversample_to:
        extra = oversample_rows(dataset.labels[train_rows], up_to=recipe.oversample_to, seed=recipe.seed)
        train_rows = np.concatenate([train_rows, train_rows[extra]])
        augmented = np.concatenate([augmented, np.ones(len(extra), bool)])
    y_train = dataset.labels[train_rows]
    weights = balanced_class_weights(y_train, k) if recipe.class_weights == "balanced" else None
    stream = dict(size=size, channels=channels, batch_size=recipe.batch_size, seed=recipe.seed,
                  one_hot=k if recipe.label_smoothing else None)
    fit_args = dict(x=_streaming_batches(dataset, train_rows, y_train, shuffle=True, augmented=augmented,
                                         weights=weights, **stream))
    if len(ok.get("val", ())):
        fit_args["validation_data"] = _streaming_batches(dataset, ok["val"], dataset.labels[ok["val"]],
                                                         shuffle=False, **stream)
    test = None
    if len(ok.get("test", ())):
        # integer labels: score_test_split compares them with the predicted classes
        test = _streaming_batches(dataset, ok["test"], dataset.labels[ok["test"]], shuffle=False,
                                  **(stream | {"one_hot": None}))
    return TrainingData(dataset=split_ds, fit_args=fit_args, steps=math.ceil(len(train_rows) / recipe.batch_size),
                        train_labels=y_train, test=test, failed=failed, streaming=True)


# --------------------------------------------------------------------------- callbacks

def _callbacks_module():
    import keras

    class LearningRateLog(keras.callbacks.Callback):
        """Puts the learning rate of the epoch's last step into the logs (and so into the history).

        It must come before ReduceLROnPlateau in the callback list, which lowers it for the next epoch.
        """

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))

    class ScheduleAndBudget(keras.callbacks.Callback):
        """Learning-rate schedule over the planned steps, and a wall-clock budget.

        With a budget, the number of epochs is re-planned as training goes
        (epochs that still fit in the budget), so the schedule ends when
        the time does. Without one, the plan is ``epochs``.
        """

        def __init__(self, *, schedule: str, base_lr: float, epochs: int, steps: int,
                     budget_s: float | None, initial_epoch: int = 0):
            super().__init__()
            self.schedule, self.base_lr, self.max_epochs, self.steps = schedule, base_lr, epochs, steps
            self.budget_s, self.initial_epoch = budget_s, initial_epoch
            self.planned = epochs
            self.stopped_by = "epochs"

        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()
            self.step = 0
            self.epoch_times = []

        def _lr(self) -> float:
            f = min(1.0, self.step / max(1, (self.planned - self.initial_epoch) * self.steps))
            if self.schedule == "cosine":
                return self.base_lr * 0.5 * (1 + math.cos(math.pi * f))
            warm = 0.15  # onecycle: linear warm-up from base/10, then cosine to zero
            if f < warm:
                return self.base_lr * (0.1 + 0.9 * f / warm)
            return self.base_lr * 0.5 * (1 + math.cos(math.pi * (f - warm) / (1 - warm)))

        def on_train_batch_begin(self, batch, logs=None):
            if self.schedule != "constant":
                self.model.optimizer.learning_rate = self._lr()
            self.step += 1
            if self.budget_s and len(self.epoch_times) == 0 and batch == min(50, self.steps - 1):
                self._replan(self.initial_epoch, (time.perf_counter() - self.t0) / (batch + 1) * self.steps)

        def on_epoch_begin(self, epoch, logs=None):
            self.t_epoch = time.perf_counter()

        def _replan(self, epochs_done: int, epoch_s: float) -> None:
            left = self.budget_s - (time.perf_counter() - self.t0)
            self.planned = min(self.max_epochs, epochs_done + max(0, int(left // max(epoch_s, 1e-6))))
            self.planned = max(self.planned, self.initial_epoch + 1)

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_times.append(time.perf_counter() - self.t_epoch)
            if self.budget_s:
                self._replan(epoch + 1, float(np.median(self.epoch_times[-3:])))
                if epoch + 1 >= self.planned and epoch + 1 < self.max_epochs:
                    self.stopped_by = "time budget"
                    self.model.stop_training = True

    class ProgressReport(keras.callbacks.Callback):
        """Calls progress(message, fraction) each epoch and every few batches."""

        def __init__(self, progress: Progress, *, planner, steps: int):
            super().__init__()
            self.progress, self.planner, self.steps = progress, planner, steps

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def _where(self, epochs_done: float) -> tuple[str, float]:
            """'epoch k/N' and the fraction done; under a time budget the plan is re-made as
            epochs are timed, so say 'of about N' and measure the fraction in seconds."""
            planned = max(self.planner.planned, 1)
            if self.planner.budget_s:
                elapsed = time.perf_counter() - self.planner.t0
                return f"of about {planned}", min(1.0, elapsed / self.planner.budget_s)
            return f"of {planned}", min(1.0, epochs_done / planned)

        def on_train_batch_end(self, batch, logs=None):
            if batch % 20 == 0:
                plan, fraction = self._where(self.epoch + (batch + 1) / self.steps)
                self.progress(f"Training epoch {self.epoch + 1} {plan}: batch {batch + 1}/{self.steps}", fraction)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            plan, fraction = self._where(epoch + 1)
            self.progress(f"Epoch {epoch + 1} {plan}: accuracy {logs.get('accuracy', float('nan')):.4f}, "
                          f"val_accuracy {logs.get('val_accuracy', float('nan')):.4f}", fraction)

    return LearningRateLog, ScheduleAndBudget, ProgressReport


def _optimizer(name: str, lr: float):
    import keras

    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)


# --------------------------------------------------------------------------- build

def _compile(model, recipe: Recipe, *, learning_rate: float) -> None:
    import keras

    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
            if recipe.label_smoothing else keras.losses.SparseCategoricalCrossentropy())
    model.compile(optimizer=_optimizer(recipe.optimizer, learning_rate), loss=loss, metrics=["accuracy"])


def build_and_compile(recipe: Recipe, *, n_classes: int, mixed_precision: bool = False):
    """The recipe's model (``build_model``), compiled with its optimizer and loss.

    ``mixed_precision`` builds it under Keras' 'mixed_bfloat16' policy (the
    classifier stays float32); the global policy is restored afterwards.
    """
    import keras

    previous_policy = keras.mixed_precision.global_policy().name
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(recipe, n_classes=n_classes, image_size=recipe.image_size, channels=recipe.channels)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    _compile(model, recipe, learning_rate=recipe.learning_rate)
    return model


# --------------------------------------------------------------------------- fit

@dataclass
class FitOutcome:
    history: dict[str, list[float]]    # per epoch: loss, accuracy, val_loss, val_accuracy, learning_rate
    stopped_by: str                    # 'epochs', 'early stopping' or 'time budget'
    seconds: float

    @property
    def epochs(self) -> int:
        return len(next(iter(self.history.values()), []))


def fit_phases(model, data: TrainingData, recipe: Recipe, *, checkpoint: Path, progress: Progress | None = None,
               verbose: int = 0) -> FitOutcome:
    """Train ``model`` on ``data``; for a transfer recipe with ``fine_tune``, then fine-tune the backbone's top.

    The fine-tuning phase continues the epoch count and the history at a tenth
    of the learning rate, within what is left of the time budget. Raises
    TrainingInterrupted on Ctrl-C, naming the best checkpoint saved so far.
    """
    say = say_function(progress or False)
    t0 = time.perf_counter()
    history: dict[str, list[float]] = {}
    phase = dict(recipe=recipe, steps=data.steps, checkpoint=checkpoint, has_val=data.has_val, history=history,
                 progress=progress, verbose=verbose)
    try:
        planner = _fit_phase(model, data.fit_args, epochs=recipe.epochs, initial_epoch=0, lr=recipe.learning_rate,
                             budget_s=recipe.time_budget_s, **phase)
        stopped_by = planner.stopped_by
        if recipe.recipe == "transfer" and recipe.fine_tune and recipe.fine_tune_epochs:
            left = None if recipe.time_budget_s is None else recipe.time_budget_s - (time.perf_counter() - t0)
            if left is None or left > 0:
                n = unfreeze_top(model, recipe.fine_tune, backbone_name=recipe.backbone)
                lr = recipe.learning_rate / 10
                say(f"Fine-tuning the top {recipe.fine_tune} backbone layers ({n} with weights) "
                    f"at learning rate {lr:g}", 0.0)
                _compile(model, recipe, learning_rate=lr)
                done = len(next(iter(history.values()), []))
                planner = _fit_phase(model, data.fit_args, epochs=done + recipe.fine_tune_epochs,
                                     initial_epoch=done, lr=lr, budget_s=left, **phase)
                stopped_by = planner.stopped_by
    except KeyboardInterrupt:
        raise TrainingInterrupted(checkpoint if checkpoint.exists() else None) from None
    return FitOutcome(history=history, stopped_by=stopped_by, seconds=time.perf_counter() - t0)


def _fit_phase(model, fit_args: dict, *, recipe: Recipe, epochs: int, initial_epoch: int, lr: float, steps: int,
               checkpoint: Path, has_val: bool, budget_s: float | None, history: dict,
               progress: Progress | None, verbose: int):
    """One ``model.fit`` with the recipe's callbacks; appends to ``history``; returns the epoch planner."""
    import keras

    LearningRateLog, ScheduleAndBudget, ProgressReport = _callbacks_module()
    planner = ScheduleAndBudget(schedule=recipe.lr_schedule, base_lr=lr, epochs=epochs, steps=steps,
                                budget_s=budget_s, initial_epoch=initial_epoch)
    callbacks = [planner, LearningRateLog()]
    monitor = "val_accuracy" if has_val else "accuracy"
    early_stopping = None
    if recipe.early_stopping:
        early_stopping = keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=recipe.patience,
                                                       restore_best_weights=True)
        callbacks.append(early_stopping)
    if recipe.checkpoint:
        callbacks.append(keras.callbacks.ModelCheckpoint(checkpoint, monitor=monitor, mode="max",
                                                         save_best_only=True))
    if recipe.reduce_lr and recipe.lr_schedule == "constant":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss" if has_val else "loss",
                                                           factor=0.5, patience=2, min_lr=lr / 100))
    if progress:
        callbacks.append(ProgressReport(progress, planner=planner, steps=steps))
    # Keras prints its progress to stdout; keep stdout for results (the run id).
    with contextlib.redirect_stdout(sys.stderr):
        h = model.fit(**fit_args, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                      verbose=verbose)
    if early_stopping is not None and early_stopping.stopped_epoch > 0:
        planner.stopped_by = "early stopping"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        if key in h.history:
            history.setdefault(key, []).extend(float(v) for v in h.history[key])
    return planner


def score_test_split(model, data: TrainingData) -> float | None:
    """Accuracy on the held-out test rows (None without any)."""
    if data.test is None:
        return None
    if data.streaming:
        stream, correct, total = data.test, 0, 0
        for i in range(len(stream)):
            x, y = stream[i]
            correct += int((np.asarray(model.predict_on_batch(x)).argmax(1) == y).sum())
            total += len(y)
        return correct / total if total else None
    x, y = data.test
    probs = model.predict(x.astype(np.float32), batch_size=256, verbose=0)
    return float((probs.argmax(1) == y).mean())


# --------------------------------------------------------------------------- save

def save_training(result: TrainResult, *, classes: list[str], data: dict, skipped: list[dict],
                  mixed_precision: bool) -> None:
    """Write ``result``'s model, then ``classes.txt``, ``history.json`` and ``recipe.json`` beside it.

    ``recipe.json`` is the manifest's training record (without the history)
    with the classes, the data set's description and the files skipped
    (the first 100, and their number).
    """
    out_dir = result.model_path.parent
    result.model.save(result.model_path)
    (out_dir / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    (out_dir / "history.json").write_text(json.dumps(result.history, indent=1))
    record = {**result.training_record(), "classes": list(classes), "data": data,
              "skipped_in_training": skipped[:100], "n_skipped_in_training": len(skipped),
              "mixed_precision": mixed_precision}
    record.pop("history")
    (out_dir / "recipe.json").write_text(json.dumps(record, indent=1))


# --------------------------------------------------------------------------- training

def train(
    dataset: ImageDataset, recipe: Recipe, *, out_dir: str | Path, progress: Progress | None = None,
    verbose: int | None = None, mixed_precision: bool = False, in_memory_limit_bytes: int | None = None,
    corrections: str | Path | None = None,
) -> TrainResult:
    """Train ``recipe`` on ``dataset`` and save the model, classes, history and recipe in ``out_dir``.

    ``progress(message, fraction)`` is called during decoding and training
    (for the dashboard); ``verbose`` is Keras' (default: a progress bar on a
    terminal, a line per epoch otherwise). ``mixed_precision`` trains in
    bfloat16 (fast on CPUs with AMX/AVX512-BF16; the classifier stays float32).
    ``in_memory_limit_bytes`` overrides ``IN_MEMORY_LIMIT_BYTES``, the decoded
    size above which images are streamed from disk. ``corrections``, a CSV
    from ``python -m core review export``, relabels and drops rows first
    (``core.review.corrections.apply_corrections``); the result records which, and how many.
    Raises TrainingInterrupted on Ctrl-C, after keeping the best checkpoint.
    """
    corrections_record = None
    if corrections is not None:  # before anything is decoded: a bad file fails at once
        from core.review.corrections import apply_corrections_file

        dataset, corrections_record = apply_corrections_file(dataset, corrections)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = say_function(progress or False)
    if verbose is None:
        verbose = 0 if progress else (1 if sys.stderr.isatty() else 2)

    recipe = with_geometry(dataset, recipe.validate())
    data = prepare_data(dataset, recipe, progress=progress, in_memory_limit_bytes=in_memory_limit_bytes)
    say("Building the model", 0.0)
    model = build_and_compile(recipe, n_classes=len(dataset.classes), mixed_precision=mixed_precision)
    fitted = fit_phases(model, data, recipe, checkpoint=out_dir / "checkpoint.keras", progress=progress,
                        verbose=verbose)
    if data.test is not None:
        say("Scoring the held-out test images", 1.0)
    test_accuracy = score_test_split(model, data)
    result = TrainResult(model=model, model_path=out_dir / "model.keras", recipe=recipe, history=fitted.history,
                         seconds=fitted.seconds, epochs=fitted.epochs, test_accuracy=test_accuracy,
                         dataset=data.dataset, image_size=tuple(recipe.image_size), channels=recipe.channels,
                         stopped_by=fitted.stopped_by, corrections=corrections_record)
    save_training(result, classes=list(dataset.classes), data=dataset.describe(), skipped=data.failed,
                  mixed_precision=mixed_precision)
    return result


def default_run_name(recipe: Recipe, dataset: ImageDataset) -> str:
    """``<recipe>-<data>-<YYYYmmdd-HHMMSS>``, made safe as a run id (``core.progress.slug``)."""
    what = recipe.recipe if recipe.recipe != "transfer" else f"transfer-{recipe.backbone}"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return slug(f"{what}-{dataset.name}-{stamp}")


def train_and_analyze(
    dataset: ImageDataset, recipe: Recipe, *, store, run_name: str | None = None, out_dir: str | Path | None = None,
    analyze_run: bool = True, projection: bool = True, progress: Progress | bool = True,
    verbose: int | None = None, mixed_precision: bool = False, corrections: str | Path | None = None,
):
    """Train, save, then (unless ``analyze_run`` is False) analyse every row. Returns (TrainResult, Run|None)."""
    from core.store import valid_run_id

    run_name = valid_run_id(run_name or default_run_name(recipe, dataset))
    out_dir = Path(out_dir) if out_dir else MODELS_DIR / run_name
    callback = progress if callable(progress) else None
    result = train(dataset, recipe, out_dir=out_dir, progress=callback, verbose=verbose,
                   mixed_precision=mixed_precision, corrections=corrections)
    if not analyze_run:
        return result, None
    from core.analyze import analyze

    run = analyze(result.model, result.dataset, store=store, run_id=run_name, force=True,
                  training=result.training_record(), model_path=str(result.model_path),
                  projection=projection, progress=progress)
    return result, run
