"""Training with a recipe: ``python -m core train --data PATH --recipe NAME``.

Data splits: rows marked 'train' (or 'all') are the training pool; 'val' rows
are the validation set, else a stratified, seeded ``val_split`` of the pool;
'test' rows are held out (never seen in training) and are what the analysis
scores. The run written afterwards marks every row with the split it played.

A training writes into ``out_dir``: ``model.keras`` (best weights),
``checkpoint.keras`` (best validation accuracy so far, kept on Ctrl-C),
``history.json`` (per-epoch loss, accuracy, val_loss, val_accuracy,
learning_rate) and ``recipe.json`` (every option, the data, classes, timing).

Keras/TensorFlow are imported inside the functions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from core.datasets import ImageDataset, iter_batches, load_dataset
from core.recipes import (AUGMENTATIONS, BACKBONES, LR_SCHEDULES, OPTIMIZERS, RECIPES, Recipe,
                          RecipeError, build_model, parse_int_list, parse_size, unfreeze_top)

Progress = Callable[[str, float], None]
REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
IN_MEMORY_LIMIT_BYTES = 3 << 30  # above this, batches are decoded from disk each epoch


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

    def training_record(self) -> dict:
        """The manifest's ``training`` entry."""
        return {"recipe": self.recipe.to_dict(), "history": self.history, "seconds": round(self.seconds, 2),
                "epochs": self.epochs, "test_accuracy": self.test_accuracy,
                "model_path": str(self.model_path), "image_size": list(self.image_size),
                "channels": self.channels, "stopped_by": self.stopped_by,
                "splits": _split_counts(self.dataset.splits)}


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
        first = dataset.pixels[0] if dataset.pixels is not None else dataset.read(0)
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


def load_arrays(dataset: ImageDataset, rows: np.ndarray, *, size: tuple[int, int], channels: int,
                progress: Progress | None = None, what: str = "images") -> tuple[np.ndarray, np.ndarray, list]:
    """Decode rows into uint8 (n, H, W, C). Returns (images, rows that decoded, failed [{path, reason}])."""
    rows = np.asarray(rows, dtype=np.int64)
    if dataset.pixels is not None:
        px = dataset.pixels[rows]
        if px.ndim == 3 and channels == 1 and tuple(px.shape[1:3]) == tuple(size):
            return px[..., None], rows, []
    sub = dataset.subset(rows)
    images, ok, failed = [], [], []
    done = 0
    for batch in iter_batches(sub, size=size, channels=channels, batch_size=256):
        images.append(batch.images)
        ok.append(rows[batch.index])
        failed += batch.failed
        done += len(batch.index) + len(batch.failed)
        if progress:
            progress(f"Decoding {what}: {done:,}/{len(rows):,}", done / max(len(rows), 1))
    if not images:
        return np.zeros((0, *size, channels), np.uint8), np.zeros(0, np.int64), failed
    return np.concatenate(images), np.concatenate(ok), failed


def oversample(images: np.ndarray, labels: np.ndarray, *, up_to: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Add augmented copies (flip, small rotation/shift/zoom) of classes with fewer than ``up_to`` images."""
    from keras import layers

    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    extra_rows = [rng.choice(np.flatnonzero(labels == c), up_to - n) for c, n in enumerate(counts) if 0 < n < up_to]
    if not extra_rows:
        return images, labels
    extra = np.concatenate(extra_rows)
    augment = [layers.RandomFlip("horizontal", seed=seed), layers.RandomRotation(0.05, fill_mode="nearest", seed=seed),
               layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed),
               layers.RandomZoom(0.1, fill_mode="nearest", seed=seed)]
    new = []
    for start in range(0, len(extra), 512):
        x = images[extra[start:start + 512]].astype(np.float32)
        for layer in augment:
            x = layer(x, training=True)
        new.append(np.clip(np.rint(np.asarray(x)), 0, 255).astype(np.uint8))
    return np.concatenate([images, *new]), np.concatenate([labels, labels[extra]])


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """sklearn's 'balanced' weights for the classes present; 1.0 for absent ones."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    out = {c: 1.0 for c in range(n_classes)}
    out.update({int(c): float(w) for c, w in zip(present, weights)})
    return out


def _streaming_batches(dataset, rows, labels, *, size, channels, batch_size, shuffle, seed, weights=None):
    """A keras PyDataset decoding images from disk batch by batch (for data too big for memory)."""
    import keras

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
            y = labels[pick][keep]
            if weights is None:
                return x.astype(np.float32), y
            return x.astype(np.float32), y, np.array([weights[int(c)] for c in y], np.float32)

        def on_epoch_end(self):
            if shuffle:
                self.rng.shuffle(self.order)

    return StreamingBatches()


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


# --------------------------------------------------------------------------- training

def train(
    dataset: ImageDataset, recipe: Recipe, *, out_dir: str | Path, progress: Progress | None = None,
    verbose: int | None = None, mixed_precision: bool = False,
) -> TrainResult:
    """Train ``recipe`` on ``dataset`` and save the model, history and recipe in ``out_dir``.

    ``progress(message, fraction)`` is called during decoding and training
    (for the dashboard); ``verbose`` is Keras' (default: a progress bar on a
    terminal, a line per epoch otherwise). ``mixed_precision`` trains in
    bfloat16 (fast on CPUs with AMX/AVX512-BF16; the classifier stays float32).
    Raises TrainingInterrupted on Ctrl-C, after keeping the best checkpoint.
    """
    import keras

    recipe = recipe.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda msg, frac: None)
    if verbose is None:
        verbose = 0 if progress else (1 if sys.stderr.isatty() else 2)

    split_ds = assign_splits(dataset, val_split=recipe.val_split, seed=recipe.seed)
    size, channels = default_geometry(dataset, recipe)
    recipe = recipe.replace(image_size=tuple(size), channels=channels).validate()
    k = len(dataset.classes)
    rows = {s: np.flatnonzero(split_ds.splits == s) for s in ("train", "val", "test")}
    n_bytes = len(dataset) * size[0] * size[1] * channels
    in_memory = dataset.pixels is not None or n_bytes <= IN_MEMORY_LIMIT_BYTES
    failed: list[dict] = []

    weights = None
    if in_memory:
        arrays = {}
        for s in ("train", "val", "test"):
            if len(rows[s]):
                # decoding comes before the training bar starts: its counts go in the message
                x, ok, bad = load_arrays(dataset, rows[s], size=size, channels=channels,
                                         progress=(lambda m, f: progress(m, 0.0)) if progress else None,
                                         what=f"{s} images")
                arrays[s] = (x, dataset.labels[ok])
                failed += bad
        if "train" not in arrays or not len(arrays["train"][0]):
            raise RecipeError(f"No training images of {dataset.name!r} could be decoded")
        x_train, y_train = arrays["train"]
        if recipe.oversample_to:
            x_train, y_train = oversample(x_train, y_train, up_to=recipe.oversample_to, seed=recipe.seed)
        if recipe.class_weights == "balanced":
            weights = balanced_class_weights(y_train, k)
        fit_data = dict(x=x_train, y=y_train, batch_size=recipe.batch_size, shuffle=True,
                        validation_data=arrays.get("val"), class_weight=weights)
        steps = math.ceil(len(x_train) / recipe.batch_size)
        test_data = arrays.get("test")
    else:
        train_rows, y_train = rows["train"], dataset.labels
        if recipe.oversample_to:
            counts = np.bincount(dataset.labels[train_rows], minlength=k)
            rng = np.random.default_rng(recipe.seed)
            extra = [rng.choice(train_rows[dataset.labels[train_rows] == c], recipe.oversample_to - n)
                     for c, n in enumerate(counts) if 0 < n < recipe.oversample_to]
            train_rows = np.concatenate([train_rows, *extra])
        if recipe.class_weights == "balanced":
            weights = balanced_class_weights(dataset.labels[train_rows], k)
        stream = dict(size=size, channels=channels, batch_size=recipe.batch_size, seed=recipe.seed)
        fit_data = dict(x=_streaming_batches(dataset, train_rows, dataset.labels[train_rows], shuffle=True,
                                             weights=weights, **stream),
                        validation_data=_streaming_batches(dataset, rows["val"], dataset.labels[rows["val"]],
                                                           shuffle=False, **stream) if len(rows["val"]) else None)
        steps = math.ceil(len(train_rows) / recipe.batch_size)
        test_data = (_streaming_batches(dataset, rows["test"], dataset.labels[rows["test"]], shuffle=False, **stream)
                     if len(rows["test"]) else None)

    previous_policy = keras.mixed_precision.global_policy().name
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        say("Building the model", 0.0)
        model = build_model(recipe, n_classes=k, image_size=size, channels=channels)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
            if recipe.label_smoothing else keras.losses.SparseCategoricalCrossentropy())
    if recipe.label_smoothing:
        fit_data = _one_hot_fit_data(fit_data, k)
    model.compile(optimizer=_optimizer(recipe.optimizer, recipe.learning_rate), loss=loss, metrics=["accuracy"])

    checkpoint = out_dir / "checkpoint.keras"
    has_val = fit_data.get("validation_data") is not None
    t0 = time.perf_counter()
    history: dict[str, list[float]] = {}
    stopped_by = "epochs"
    try:
        planner = _fit_phase(model, fit_data, recipe=recipe, epochs=recipe.epochs, initial_epoch=0,
                             lr=recipe.learning_rate, steps=steps, checkpoint=checkpoint, has_val=has_val,
                             budget_s=recipe.time_budget_s, history=history, progress=progress, verbose=verbose)
        stopped_by = planner.stopped_by
        if recipe.recipe == "transfer" and recipe.fine_tune and recipe.fine_tune_epochs:
            left = None if recipe.time_budget_s is None else recipe.time_budget_s - (time.perf_counter() - t0)
            if left is None or left > 0:
                n = unfreeze_top(model, recipe.fine_tune, backbone_name=recipe.backbone)
                say(f"Fine-tuning the top {recipe.fine_tune} backbone layers ({n} with weights) "
                    f"at learning rate {recipe.learning_rate / 10:g}", 0.0)
                model.compile(optimizer=_optimizer(recipe.optimizer, recipe.learning_rate / 10), loss=loss,
                              metrics=["accuracy"])
                done = len(next(iter(history.values()), []))
                planner = _fit_phase(model, fit_data, recipe=recipe, epochs=done + recipe.fine_tune_epochs,
                                     initial_epoch=done, lr=recipe.learning_rate / 10, steps=steps,
                                     checkpoint=checkpoint, has_val=has_val, budget_s=left, history=history,
                                     progress=progress, verbose=verbose)
                stopped_by = planner.stopped_by
    except KeyboardInterrupt:
        raise TrainingInterrupted(checkpoint if checkpoint.exists() else None) from None
    seconds = time.perf_counter() - t0

    test_accuracy = None
    if test_data is not None:
        say("Scoring the held-out test images", 1.0)
        if isinstance(test_data, tuple):
            probs = model.predict(test_data[0].astype(np.float32), batch_size=256, verbose=0)
            test_accuracy = float((probs.argmax(1) == test_data[1]).mean())
        else:
            test_accuracy = float(model.evaluate(test_data, verbose=0, return_dict=True)["accuracy"])

    model_path = out_dir / "model.keras"
    model.save(model_path)
    epochs = len(next(iter(history.values()), []))
    result = TrainResult(model=model, model_path=model_path, recipe=recipe, history=history, seconds=seconds,
                         epochs=epochs, test_accuracy=test_accuracy, dataset=split_ds, image_size=tuple(size),
                         channels=channels, stopped_by=stopped_by)
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    record = {**result.training_record(), "classes": list(dataset.classes), "data": dataset.describe(),
              "skipped_in_training": failed[:100], "n_skipped_in_training": len(failed),
              "mixed_precision": mixed_precision}
    record.pop("history")
    (out_dir / "recipe.json").write_text(json.dumps(record, indent=1))
    return result


def _one_hot_fit_data(fit_data: dict, k: int) -> dict:
    """Label smoothing needs one-hot targets (in-memory data only)."""
    if "y" not in fit_data:
        raise RecipeError("--label-smoothing needs data that fits in memory")
    eye = np.eye(k, dtype=np.float32)
    out = dict(fit_data, y=eye[fit_data["y"]])
    if out.get("validation_data") is not None:
        xv, yv = out["validation_data"]
        out["validation_data"] = (xv, eye[yv])
    return out


def _fit_phase(model, fit_data, *, recipe: Recipe, epochs: int, initial_epoch: int, lr: float, steps: int,
               checkpoint: Path, has_val: bool, budget_s: float | None, history: dict,
               progress: Progress | None, verbose: int):
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
        h = model.fit(**fit_data, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                      verbose=verbose)
    if early_stopping is not None and early_stopping.stopped_epoch > 0:
        planner.stopped_by = "early stopping"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        if key in h.history:
            history.setdefault(key, []).extend(float(v) for v in h.history[key])
    return planner


# --------------------------------------------------------------------------- command line

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m core train``."""
    d = Recipe()
    parser.add_argument("--data", required=True, help="data folder, CSV manifest, 'fashion-mnist' or 'digits'")
    parser.add_argument("--recipe", required=True, help=f"one of {', '.join(RECIPES)}")
    parser.add_argument("--name", default=None, help="run name (default: <recipe>-<data>-<time>)")
    parser.add_argument("--out", default=None, help="folder for the model (default: models/<run name>/)")
    parser.add_argument("--no-analyze", action="store_true", help="train only; do not write an analysis run")
    parser.add_argument("--no-projection", action="store_true", help="analysis without the UMAP map")
    g = parser.add_argument_group("model")
    g.add_argument("--backbone", default=None, help=f"transfer backbone: {', '.join(BACKBONES)}")
    g.add_argument("--weights", default=d.weights, help="imagenet (from the Keras cache or downloaded) or none")
    g.add_argument("--image-size", default=None, help="H or HxW (default: the data's size for pixel data, "
                   "64 for small-cnn/mlp, 128 for transfer)")
    g.add_argument("--channels", type=int, default=None, help="1 (gray) or 3 (RGB); default from the data")
    g.add_argument("--conv-filters", default=",".join(map(str, d.conv_filters)), help="e.g. 32,64")
    g.add_argument("--dense-units", default=",".join(map(str, d.dense_units)), help="e.g. 256,128 (last = embedding)")
    g.add_argument("--dropout", type=float, default=d.dropout)
    g.add_argument("--batch-norm", action="store_true", help="BatchNormalization after each Dense (and conv)")
    g.add_argument("--fine-tune", type=int, default=0, metavar="N",
                   help="then unfreeze the top N backbone layers (BatchNorm stays frozen), lr/10")
    g.add_argument("--fine-tune-epochs", type=int, default=d.fine_tune_epochs)
    o = parser.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, default=d.batch_size)
    o.add_argument("--epochs", type=int, default=d.epochs)
    o.add_argument("--learning-rate", type=float, default=d.learning_rate)
    o.add_argument("--optimizer", default=d.optimizer, help=f"one of {', '.join(OPTIMIZERS)}")
    o.add_argument("--lr-schedule", default=d.lr_schedule, help=f"one of {', '.join(LR_SCHEDULES)}")
    o.add_argument("--label-smoothing", type=float, default=0.0)
    o.add_argument("--val-split", type=float, default=d.val_split,
                   help="stratified validation fraction when the data has no 'val' split")
    o.add_argument("--seed", type=int, default=d.seed)
    o.add_argument("--augment", default="", help=f"comma-separated: {','.join(AUGMENTATIONS)}")
    o.add_argument("--class-weights", default=None, help="'balanced' (sklearn compute_class_weight)")
    o.add_argument("--oversample-to", type=int, default=None, metavar="N",
                   help="augmented copies of classes with fewer than N training images, up to N")
    o.add_argument("--no-early-stopping", action="store_true")
    o.add_argument("--patience", type=int, default=d.patience)
    o.add_argument("--no-checkpoint", action="store_true")
    o.add_argument("--no-reduce-lr", action="store_true")
    o.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop training when the next epoch would not fit in this many seconds")
    o.add_argument("--mixed-precision", action="store_true", help="bfloat16 compute (fast on recent Intel CPUs)")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The Recipe the command-line options describe (validated)."""
    return Recipe(
        recipe=args.recipe, backbone=args.backbone, weights=args.weights,
        image_size=parse_size(args.image_size) if args.image_size else None, channels=args.channels,
        conv_filters=parse_int_list(args.conv_filters, option="--conv-filters"),
        dense_units=parse_int_list(args.dense_units, option="--dense-units"), dropout=args.dropout,
        batch_norm=args.batch_norm, fine_tune=args.fine_tune, fine_tune_epochs=args.fine_tune_epochs,
        batch_size=args.batch_size, epochs=args.epochs, learning_rate=args.learning_rate,
        optimizer=args.optimizer, lr_schedule=args.lr_schedule, label_smoothing=args.label_smoothing,
        val_split=args.val_split, seed=args.seed,
        augment=tuple(a.strip() for a in args.augment.split(",") if a.strip()),
        class_weights=args.class_weights, oversample_to=args.oversample_to,
        early_stopping=not args.no_early_stopping, patience=args.patience, checkpoint=not args.no_checkpoint,
        reduce_lr=not args.no_reduce_lr, time_budget_s=args.time_budget,
    ).validate()


def default_run_name(recipe: Recipe, dataset: ImageDataset) -> str:
    what = recipe.recipe if recipe.recipe != "transfer" else f"transfer-{recipe.backbone}"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{what}-{dataset.name}-{stamp}").strip("-.")


def train_and_analyze(
    dataset: ImageDataset, recipe: Recipe, *, store, run_name: str | None = None, out_dir: str | Path | None = None,
    analyze_run: bool = True, projection: bool = True, progress: Progress | bool = True,
    verbose: int | None = None, mixed_precision: bool = False,
):
    """Train, save, then (unless ``analyze_run`` is False) analyse every row. Returns (TrainResult, Run|None)."""
    from core.store import valid_run_id

    run_name = valid_run_id(run_name or default_run_name(recipe, dataset))
    out_dir = Path(out_dir) if out_dir else MODELS_DIR / run_name
    callback = progress if callable(progress) else None
    result = train(dataset, recipe, out_dir=out_dir, progress=callback, verbose=verbose,
                   mixed_precision=mixed_precision)
    if not analyze_run:
        return result, None
    from core.analyze import analyze

    run = analyze(result.model, result.dataset, store=store, run_id=run_name, force=True,
                  training=result.training_record(), model_path=str(result.model_path),
                  projection=projection, progress=progress)
    return result, run


def train_command(args: argparse.Namespace) -> int:
    """``python -m core train``: returns the exit status (130 on Ctrl-C)."""
    from core.store import RunStore

    recipe = recipe_from_args(args)
    dataset = load_dataset(args.data)
    print(f"Data: {dataset!r}", file=sys.stderr)
    try:
        result, run = train_and_analyze(
            dataset, recipe, store=RunStore(args.store), run_name=args.name, out_dir=args.out,
            analyze_run=not args.no_analyze, projection=not args.no_projection,
            mixed_precision=args.mixed_precision)
    except TrainingInterrupted as stop:
        where = f"best checkpoint kept at {stop.checkpoint}" if stop.checkpoint else "no checkpoint was saved yet"
        print(f"Interrupted: {where}", file=sys.stderr)
        return 130
    acc = "n/a" if result.test_accuracy is None else f"{result.test_accuracy:.4f}"
    print(f"Trained {result.epochs} epochs in {result.seconds:.1f} s (stopped by {result.stopped_by}); "
          f"test accuracy {acc}; model {result.model_path}", file=sys.stderr)
    if run is not None:
        print(run.id)
    return 0
