"""The built-in demo: train a compact CNN on Fashion-MNIST within a time budget, analyse all 70,000 images.

``run_demo`` trains the ``demo-cnn`` recipe (Conv 48 -> MaxPool -> BN ->
Conv 96 -> MaxPool -> BN -> Dropout 0.2 -> Dense 256 -> Dropout 0.4 -> Dense 128
-> Dropout 0.4 -> softmax) with a
one-cycle learning rate planned over the wall-clock budget, on 90% of the
60,000 training images (10% stratified validation), then analyses every
image (train rows split=train/val, the 10,000 test rows split=test) into the
run ``fashion-mnist-demo``. The manifest's ``training`` entry records
``seconds``, ``epochs`` and ``test_accuracy``.

Without Fashion-MNIST on disk it uses scikit-learn's 8x8 digits (upscaled to
16x16) and says so; that run is named ``digits-demo``.

``python -m core demo`` (options in core.cli) calls ``run_demo``.
"""

from __future__ import annotations

from pathlib import Path

from core.progress import Progress, say_function
from core.recipes import Recipe

DEMO_RUN = "fashion-mnist-demo"
DIGITS_RUN = "digits-demo"
DEFAULT_TIME_BUDGET_S = 330.0
TRAINING_SHARE = 0.75  # of the progress bar; the analysis (inference + UMAP) takes the rest


def demo_recipe(*, time_budget_s: float | None = DEFAULT_TIME_BUDGET_S, epochs: int | None = None,
                image_size: tuple[int, int] | None = None) -> Recipe:
    """The demo's recipe: a time budget plans the epochs unless ``epochs`` is given."""
    return Recipe(
        recipe="demo-cnn", conv_filters=(48, 96), dense_units=(256, 128), dropout=0.4,
        batch_size=128, epochs=epochs or 60, learning_rate=2e-3, lr_schedule="onecycle", val_split=0.1,
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


def run_demo(*, store, progress: Progress | None = None, time_budget_s: float = DEFAULT_TIME_BUDGET_S,
             epochs: int | None = None, out_dir: str | Path | None = None, projection: bool = True):
    """Train and analyse the demo; returns the stored Run.

    ``progress(message, fraction)`` gets the whole way (training then
    analysis) as one 0..1 fraction; None prints Keras' and the analysis'
    progress bars to stderr. ``epochs`` fixes the epoch count (the time
    budget still applies).
    """
    from core.analyze import analyze
    from core.datasets import DatasetError, load_digits, load_fashion_mnist
    from core.training import MODELS_DIR, train

    say = say_function(progress or True)  # without a callback, messages go to stderr
    try:
        dataset = load_fashion_mnist()
        run_id, size = DEMO_RUN, None
    except DatasetError as exc:
        say(f"{exc}; using scikit-learn's digits (1,797 8x8 images) instead", 0.0)
        dataset = load_digits()
        run_id, size = DIGITS_RUN, (16, 16)
    recipe = demo_recipe(time_budget_s=time_budget_s, epochs=epochs, image_size=size)
    fast_bf16 = cpu_has_fast_bfloat16()
    say(f"Training {recipe.recipe} on {dataset.name} ({len(dataset):,} images) for at most "
        f"{time_budget_s:.0f} s{' in bfloat16' if fast_bf16 else ''}", 0.0)

    def training_progress(message: str, fraction: float) -> None:
        progress(message, TRAINING_SHARE * fraction)

    result = train(dataset, recipe, out_dir=Path(out_dir) if out_dir else MODELS_DIR / run_id,
                   progress=training_progress if progress else None, mixed_precision=fast_bf16)
    say(f"Trained {result.epochs} epochs in {result.seconds:.1f} s (stopped by {result.stopped_by}): "
        f"test accuracy {result.test_accuracy:.4f}", TRAINING_SHARE)

    def analysis_progress(message: str, fraction: float) -> None:
        progress(message, TRAINING_SHARE + (1 - TRAINING_SHARE) * fraction)

    record = {**result.training_record(), "mixed_precision": fast_bf16}
    return analyze(result.model, result.dataset, store=store, run_id=run_id, force=True, training=record,
                   model_path=str(result.model_path), projection=projection,
                   progress=analysis_progress if progress else True)
