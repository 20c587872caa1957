"""The built-in demo: analyse all 70,000 Fashion-MNIST images with the shipped model, or retrain it.

First run: ``run_demo`` loads the model shipped in ``core/demo_model/``
(``model.keras``, float32, no optimizer state; loaded in Keras safe mode like
any user model) and analyses every image into the run ``fashion-mnist-demo``
(the train rows split train/val as in its training, the 10,000 test rows
split=test). No training happens; the run's ``training`` entry is the shipped
model's record (recipe, history, epochs, seconds, test accuracy).

``retrain=True`` (``python -m core demo --retrain``) trains the ``demo-cnn``
recipe (Conv 48 -> MaxPool -> BN -> Conv 96 -> MaxPool -> BN -> Dropout 0.2
-> Dense 256 -> Dropout 0.4 -> Dense 128 -> Dropout 0.4 -> softmax) for a
fixed ``DEMO_EPOCHS`` epochs with a one-cycle learning rate, on 90% of the
60,000 training images (10% stratified validation), then analyses it. A fixed
epoch count makes the result independent of machine load; ``time_budget_s``
plans the epochs over a wall-clock budget instead. ``export_to`` writes the
trained model as shipped (``export_demo_model``): that is how
``core/demo_model/`` was made (its README.md names the command).

The shipped model is used only when the Fashion-MNIST on disk is the one it
was trained on (same fingerprint); otherwise the demo retrains and says so.
Without Fashion-MNIST on disk it trains on scikit-learn's 8x8 digits
(upscaled to 16x16) and says so; that run is named ``digits-demo``.

The UMAP map is computed after the run is written (``core.analysis.projection``):
in this process, or in a background process with ``background_projection``
so that the dashboard can open at once.

``python -m core demo`` (options in core.cli) calls ``run_demo``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from core.errors import UserError
from core.model.recipes import Recipe
from core.progress import Progress, say_function

DEMO_RUN = "fashion-mnist-demo"
DIGITS_RUN = "digits-demo"
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"
DEMO_EPOCHS = 15  # the shipped model's fixed epoch count
BUDGET_MAX_EPOCHS = 60  # upper bound when a time budget plans the epochs
TRAINING_SHARE = 0.75  # of the progress bar when retraining; the analysis takes the rest
SHIPPED_FILES = ("model.keras", "recipe.json", "history.json", "classes.txt")


def demo_recipe(*, time_budget_s: float | None = None, epochs: int | None = None,
                image_size: tuple[int, int] | None = None) -> Recipe:
    """The demo's recipe: ``epochs`` (default ``DEMO_EPOCHS``) fixed, or planned over ``time_budget_s``."""
    if epochs is None:
        epochs = BUDGET_MAX_EPOCHS if time_budget_s else DEMO_EPOCHS
    return Recipe(
        recipe="demo-cnn", conv_filters=(48, 96), dense_units=(256, 128), dropout=0.4,
        batch_size=128, epochs=epochs, learning_rate=2e-3, lr_schedule="onecycle", val_split=0.1,
        # The one-cycle schedule decides when to stop; early stopping would cut it at the high-LR phase.
        early_stopping=False, reduce_lr=False, checkpoint=True, seed=0,
        time_budget_s=time_budget_s, image_size=image_size,
    ).validate()


def cpu_has_fast_bfloat16() -> bool:
    """True on CPUs with native bfloat16 math (AMX or AVX512-BF16): mixed precision is then faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def shipped_record(folder: str | Path = SHIPPED_MODEL_DIR) -> dict | None:
    """The shipped model's training record (recipe.json with its history), or None when incomplete."""
    folder = Path(folder)
    if not all((folder / f).is_file() for f in SHIPPED_FILES):
        return None
    try:
        record = json.loads((folder / "recipe.json").read_text())
        history = json.loads((folder / "history.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(history, dict):
        return None
    return {**record, "history": history}


def run_demo(*, store, progress: Progress | None = None, retrain: bool = False,
             time_budget_s: float | None = None, epochs: int | None = None,
             out_dir: str | Path | None = None, export_to: str | Path | None = None,
             projection: bool = True, background_projection: bool = False,
             shipped_dir: str | Path = SHIPPED_MODEL_DIR):
    """Analyse the demo with the shipped model (or train it first); returns the stored Run.

    ``progress(message, fraction)`` gets the whole way as one 0..1 fraction;
    None prints progress bars to stderr. ``epochs``, ``time_budget_s`` and
    ``export_to`` imply ``retrain``. ``background_projection`` returns as soon
    as the run is usable, the UMAP map following in a background process.
    """
    from core.data.datasets import DatasetError, load_digits, load_fashion_mnist

    say = say_function(progress or True)  # without a callback, messages go to stderr
    try:
        dataset = load_fashion_mnist()
        run_id, size = DEMO_RUN, None
    except DatasetError as exc:
        say(f"{exc}; using scikit-learn's digits (1,797 8x8 images) instead", 0.0)
        dataset = load_digits()
        run_id, size = DIGITS_RUN, (16, 16)
    retrain = retrain or epochs is not None or time_budget_s is not None or export_to is not None
    if export_to is not None and run_id != DEMO_RUN:
        raise UserError(f"--export-to writes the Fashion-MNIST demo model; the data set here is "
                         f"{dataset.name!r}. Received: --export-to {export_to}")
    analysis = dict(store=store, projection=projection, background_projection=background_projection)
    if not retrain and run_id == DEMO_RUN:
        record = shipped_record(shipped_dir)
        if record is None:
            say(f"No shipped demo model in {shipped_dir}: training one", 0.0)
        elif record.get("data_fingerprint") != dataset.fingerprint():
            say(f"The Fashion-MNIST in {dataset.source} is not the copy the shipped model was trained on "
                "(another fingerprint): training one", 0.0)
        else:
            return _analyse_shipped(dataset, Path(shipped_dir), record, progress=progress, say=say, **analysis)
    return _train_and_analyse(dataset, run_id=run_id, size=size, epochs=epochs, time_budget_s=time_budget_s,
                              out_dir=out_dir, export_to=export_to, progress=progress, say=say, **analysis)


def _analyse_shipped(dataset, folder: Path, record: dict, *, store, progress, say, projection: bool,
                     background_projection: bool):
    """Analyse ``dataset`` with the shipped model (safe-mode load); reuse the run when already made."""
    from core.analysis.projection import ensure_projection
    from core.model.load import file_sha256
    from core.run.analyze import analysis_config, analyze
    from core.run.store import RunCorruptError, RunNotFoundError, RunSchemaError
    from core.training import assign_splits

    recipe = record.get("recipe") or {}
    dataset = assign_splits(dataset, val_split=float(recipe.get("val_split", 0.1)),
                            seed=int(recipe.get("seed", 0)))
    model_path = (folder / "model.keras").resolve()
    config = analysis_config(model_sha256=file_sha256(model_path), dataset=dataset, projection=projection)
    try:
        existing = store.load(DEMO_RUN)
    except (RunNotFoundError, RunCorruptError, RunSchemaError):
        existing = None
    if existing is not None and existing.cache_key == config.key():
        say(f"Reusing run {DEMO_RUN!r} (the shipped model on the same data)", 1.0)
        return ensure_projection(existing, background=background_projection, progress=progress or True)
    accuracy = record.get("test_accuracy")
    say(f"Analysing {dataset.name} ({len(dataset):,} images) with the shipped demo model "
        f"({record.get('epochs')} epochs, test accuracy {accuracy:.4f})" if accuracy is not None else
        f"Analysing {dataset.name} ({len(dataset):,} images) with the shipped demo model", 0.0)
    keep = ("recipe", "history", "seconds", "epochs", "test_accuracy", "image_size", "channels",
            "stopped_by", "splits", "mixed_precision", "trained_with", "command")
    training = {**{k: record[k] for k in keep if k in record}, "model_path": str(model_path), "shipped": True}
    return analyze(model_path, dataset, store=store, run_id=DEMO_RUN, force=True, training=training,
                   projection=projection, background_projection=background_projection,
                   progress=progress if progress else True)


def _train_and_analyse(dataset, *, run_id: str, size, epochs, time_budget_s, out_dir, export_to, store,
                       progress, say, projection: bool, background_projection: bool):
    from core.run.analyze import analyze
    from core.training import MODELS_DIR, train

    recipe = demo_recipe(time_budget_s=time_budget_s, epochs=epochs, image_size=size)
    fast_bf16 = cpu_has_fast_bfloat16()
    plan = (f"for at most {time_budget_s:.0f} s" if time_budget_s else f"for {recipe.epochs} epochs")
    say(f"Training {recipe.recipe} on {dataset.name} ({len(dataset):,} images) {plan}"
        f"{' in bfloat16' if fast_bf16 else ''}", 0.0)

    def training_progress(message: str, fraction: float) -> None:
        progress(message, TRAINING_SHARE * fraction)

    result = train(dataset, recipe, out_dir=Path(out_dir) if out_dir else MODELS_DIR / run_id,
                   progress=training_progress if progress else None, mixed_precision=fast_bf16)
    say(f"Trained {result.epochs} epochs in {result.seconds:.1f} s (stopped by {result.stopped_by}): "
        f"test accuracy {result.test_accuracy:.4f}", TRAINING_SHARE)

    def analysis_progress(message: str, fraction: float) -> None:
        progress(message, TRAINING_SHARE + (1 - TRAINING_SHARE) * fraction)

    analysis = dict(store=store, projection=projection, background_projection=background_projection,
                    progress=analysis_progress if progress else True)
    if export_to is not None:
        folder = export_demo_model(result, export_to, data_fingerprint=dataset.fingerprint(),
                                   mixed_precision=fast_bf16)
        say(f"Exported the model as shipped to {folder}", TRAINING_SHARE)
        return _analyse_shipped(dataset, folder, shipped_record(folder), say=say, **analysis)
    record = {**result.training_record(), "mixed_precision": fast_bf16}
    return analyze(result.model, result.dataset, run_id=run_id, force=True, training=record,
                   model_path=str(result.model_path), **analysis)


def export_demo_model(result, folder: str | Path, *, data_fingerprint: str, mixed_precision: bool) -> Path:
    """Write ``result``'s model the way it is shipped: ``folder/model.keras`` and its records.

    The model is rebuilt under the float32 policy and given the trained
    weights, uncompiled: no optimizer state (a third of the size) and no
    bfloat16 compute on CPUs without native bfloat16. Beside it:
    ``classes.txt``, ``history.json``, ``recipe.json`` (the training record,
    the data set's fingerprint, the float32 test accuracy) and ``README.md``.
    Returns the folder.
    """
    import keras
    import numpy as np

    from core.model.recipes import build_model

    folder = Path(folder)
    if result.dataset.pixels is None or tuple(result.dataset.pixels.shape[1:3]) != tuple(result.image_size):
        raise UserError(f"Only a model trained on in-memory images of its input size can be exported as "
                         f"the demo's. Received: data set {result.dataset.name!r}")
    folder.mkdir(parents=True, exist_ok=True)
    classes = list(result.dataset.classes)
    if keras.mixed_precision.global_policy().name != "float32":
        raise RuntimeError(f"Exporting needs Keras' float32 policy; it is "
                           f"{keras.mixed_precision.global_policy().name!r}")
    model = build_model(result.recipe, n_classes=len(classes), image_size=tuple(result.image_size),
                        channels=result.channels)
    model.set_weights([np.asarray(w, dtype=np.float32) for w in result.model.get_weights()])
    model.save(folder / "model.keras")
    test = result.dataset.splits == "test"
    accuracy = None
    if test.any():
        x = result.dataset.pixels[test].astype(np.float32)
        if x.ndim == 3:
            x = x[..., None]
        probs = model.predict(x, batch_size=512, verbose=0)
        accuracy = float((probs.argmax(1) == result.dataset.labels[test]).mean())
    record = {**result.training_record(), "test_accuracy": accuracy,
              "test_accuracy_as_trained": result.test_accuracy, "mixed_precision": mixed_precision,
              "classes": classes, "data_fingerprint": data_fingerprint,
              "trained_with": _machine_description(),
              "command": f"python -m core demo --retrain --epochs {result.recipe.epochs} --export-to core/demo_model"}
    history = record.pop("history")
    record.pop("model_path")
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    (folder / "history.json").write_text(json.dumps(history, indent=1))
    (folder / "recipe.json").write_text(json.dumps(record, indent=1))
    (folder / "README.md").write_text(_shipped_readme(record, size=(folder / "model.keras").stat().st_size))
    return folder


def _machine_description() -> dict:
    from core.run.write import library_versions

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "versions": library_versions()}


def _shipped_readme(record: dict, *, size: int) -> str:
    recipe = record["recipe"]
    acc = record["test_accuracy"]
    return (
        "# The demo's shipped model\n\n"
        "Written by `python -m core demo` itself, so that the demo's first run only analyses:\n\n"
        f"```bash\n{record['command']}\n```\n\n"
        f"* recipe `{recipe['recipe']}` (see `recipe.json`): {recipe['epochs']} epochs, fixed (no time budget), "
        f"one-cycle learning rate {recipe['learning_rate']}, batch {recipe['batch_size']}, seed {recipe['seed']}, "
        f"{int(round(100 * recipe['val_split']))}% stratified validation split of the 60,000 training images;\n"
        f"* trained in {record['seconds']:.0f} s{' (bfloat16 mixed precision)' if record['mixed_precision'] else ''} "
        f"on {record['trained_with']['cpu']} ({record['trained_with']['cores']} cores);\n"
        f"* test accuracy (the 10,000 Fashion-MNIST test images, float32): "
        f"{'n/a' if acc is None else f'{acc:.4f}'}; per-epoch figures in `history.json`;\n"
        f"* `model.keras`: {size / 1e6:.1f} MB, float32, uncompiled (no optimizer state), loaded in Keras "
        "safe mode like any model the analysis is given;\n"
        "* used only when the Fashion-MNIST on disk has the fingerprint in `recipe.json` "
        "(`data_fingerprint`); otherwise the demo retrains.\n"
    )
