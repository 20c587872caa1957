"""Benchmark of Grad-CAM (core.analysis.gradcam), measured side by side in one run.

1. Batched Grad-CAM (``CamExplainer.maps``: one forward pass and one GradientTape per
   batch, the predicted and the true class at once) against the one-image-at-a-time loop
   of keras.io's Grad-CAM example (``make_gradcam_heatmap``, copied below; it builds its
   gradient model on every call), and against the same loop with the gradient model built
   once (the fairer baseline), on the same images and the same model, two classes per
   image. Target: loop / batched >= 3 on 2 cores (against the fairer baseline).
2. Time to the first page of 24 overlays on a Fashion-MNIST run: rows not explained yet
   -> maps computed, stored in the run (core.run.derived), read back, drawn over the images.
   Warm = the explainer already loaded (as the dashboard keeps it); cold = loading it too.
   Target: warm under 2 s.

The model is the demo's ``demo-cnn``: ``core/demo_model/model.keras`` or
``models/fashion-mnist-demo/model.keras`` when trained, else built here with random weights
(the cost of Grad-CAM does not depend on the weights). Every measurement alternates the
sides, repeated (--repeats), medians reported. Usage:
python benchmarks/bench_gradcam.py [--images 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
from cpu_info import cpu_line  # noqa: E402  (this script's folder is on sys.path)

DEMO_MODELS = (ROOT / "core" / "demo_model" / "model.keras", ROOT / "models" / "fashion-mnist-demo" / "model.keras")


def make_gradcam_heatmap(img_array, model, last_conv_layer_name, pred_index=None):
    """keras.io/examples/vision/grad_cam (fchollet), as published: one image per call."""
    import keras
    import tensorflow as tf

    grad_model = keras.models.Model(model.inputs, [model.get_layer(last_conv_layer_name).output, model.output])
    with tf.GradientTape() as tape:
        last_conv_layer_output, preds = grad_model(img_array)
        if pred_index is None:
            pred_index = tf.argmax(preds[0])
        class_channel = preds[:, pred_index]
    grads = tape.gradient(class_channel, last_conv_layer_output)
    pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
    last_conv_layer_output = last_conv_layer_output[0]
    heatmap = last_conv_layer_output @ pooled_grads[..., tf.newaxis]
    heatmap = tf.squeeze(heatmap)
    heatmap = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
    return heatmap.numpy()


def heatmap_prebuilt(img_array, grad_model, pred_index):
    """The same loop body with the gradient model built once, outside the loop."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        last_conv_layer_output, preds = grad_model(img_array)
        class_channel = preds[:, pred_index]
    grads = tape.gradient(class_channel, last_conv_layer_output)
    pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
    heatmap = tf.squeeze(last_conv_layer_output[0] @ pooled_grads[..., tf.newaxis])
    heatmap = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
    return heatmap.numpy()


def demo_model_path(folder: Path) -> tuple[Path, str]:
    """A saved demo-cnn: the trained one if there is one, else built here (random weights)."""
    for path in DEMO_MODELS:
        if path.is_file():
            return path, f"trained demo model {path.relative_to(ROOT)}"
    import keras

    from core.demo import demo_recipe
    from core.model.recipes import build_model

    keras.utils.set_random_seed(0)
    path = folder / "demo_cnn.keras"
    build_model(demo_recipe(), n_classes=10, image_size=(28, 28), channels=1).save(path)
    return path, "demo-cnn built here with random weights (no trained demo model found)"


def alternate(sides: dict, repeats: int) -> dict[str, float]:
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_batched_vs_loop(model_path: Path, x_uint8: np.ndarray, classes: np.ndarray, repeats: int) -> None:
    import keras

    from core.analysis.gradcam import build_explainer, normalize_maps
    from core.model.load import load_model, prepare_input

    model = load_model(model_path)
    explainer = build_explainer(model, scale="raw")
    x = prepare_input(x_uint8, explainer.scale)
    # keras.io removes the last layer's softmax so that the gradient is the logit's
    logit_model = load_model(model_path)
    logit_model.layers[-1].activation = None
    layer = explainer.layer
    grad_model = keras.models.Model(logit_model.inputs, [logit_model.get_layer(layer).output, logit_model.output])
    n = len(x)

    def batched():
        out = []
        for i in range(0, n, 32):
            maps, _, _ = explainer.maps(x[i:i + 32], classes[i:i + 32])
            out.append(normalize_maps(maps))
        return np.concatenate(out)

    def keras_io():
        return np.array([[make_gradcam_heatmap(x[i:i + 1], logit_model, layer, pred_index=int(c)) for c in classes[i]]
                         for i in range(n)])

    def keras_io_prebuilt():
        return np.array([[heatmap_prebuilt(x[i:i + 1], grad_model, int(c)) for c in classes[i]] for i in range(n)])

    def batch_of_one():
        return np.concatenate([normalize_maps(explainer.maps(x[i:i + 1], classes[i:i + 1])[0]) for i in range(n)])

    ours, ref = batched(), keras_io_prebuilt()
    keras_io(); batch_of_one()  # warm every side (tracing, first calls)
    ok = np.isfinite(ref).all(axis=(2, 3)) & (ref.max(axis=(2, 3)) > 0)
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ours[ok], ref[ok])]
    print(f"Agreement with keras.io on {ok.sum()} non-empty maps: min correlation {min(corr):.6f}, "
          f"max |difference| {np.abs(ours[ok] - ref[ok]).max():.2e}")
    t = alternate({"batched": batched, "keras.io": keras_io, "keras.io, model built once": keras_io_prebuilt,
                   "our explainer, batch of 1": batch_of_one}, repeats)
    maps = 2 * n
    print(f"{n} images x 2 classes at layer {layer!r} ({explainer.feature_size[0]}x{explainer.feature_size[1]} maps), "
          f"median of {repeats}:")
    for name, s in t.items():
        ratio = "" if name == "batched" else f"   batched is {s / t['batched']:.1f}x faster"
        print(f"  {name:<28} {s:7.3f} s  {1000 * s / maps:7.2f} ms/map{ratio}")
    verdict = "meets" if t["keras.io, model built once"] / t["batched"] >= 3 else "MISSES"
    print(f"  target >= 3x against the loop with the model built once: {verdict}")


def bench_first_page(model_path: Path, folder: Path, repeats: int, pages: int = 24) -> None:
    from core.analysis.gradcam import explain_rows, explainer_for_run, explanation_image, select_rows
    from core.data.datasets import load_fashion_mnist
    from core.run.analyze import analyze
    from core.run.store import RunStore

    data = load_fashion_mnist()
    test_rows = np.flatnonzero(np.asarray(data.splits) == "test")[:2000]
    run = analyze(model_path, data.subset(test_rows), store=RunStore(folder / "store"), run_id="fmnist-gradcam",
                  progress=False, projection=False)
    rows = select_rows(run, split="all", limit=None)
    if len(rows) < pages * (2 * repeats + 1):
        rows = np.argsort(-run.predictions["confidence"].to_numpy(), kind="stable")
    pages_of_rows = iter(rows[k * pages:(k + 1) * pages] for k in range(len(rows) // pages))

    def page(explainer=None):
        att = explain_rows(run, next(pages_of_rows), explainer=explainer)
        return [explanation_image(run.image(int(r)), m, e) for r, m, e in zip(att.rows, att.maps, att.empty)]

    t0 = time.perf_counter()
    page()
    cold = time.perf_counter() - t0
    explainer = explainer_for_run(run)
    t = alternate({"warm": lambda: page(explainer), "cold (model loaded too)": page}, repeats)
    revisit = next(iter(pages_of_rows))
    explain_rows(run, revisit, explainer=explainer)
    t_cached = alternate({"cached": lambda: explain_rows(run, revisit)}, repeats)["cached"]
    print(f"First page of {pages} overlays, Fashion-MNIST run of {run.n_images:,} images, layer {explainer.layer!r}:")
    print(f"  first call in this process (model load + tracing): {cold:.3f} s")
    print(f"  cold, model loaded each time (median):             {t['cold (model loaded too)']:.3f} s")
    print(f"  warm, explainer kept (median):                     {t['warm']:.3f} s   "
          f"target < 2 s: {'meets' if t['warm'] < 2 else 'MISSES'}")
    print(f"  page already cached, read back (median):           {t_cached:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48, help="images in the batched-vs-loop comparison")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    # keras.io's example passes a plain batch to a model built with an input list: Keras warns each call
    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match", category=UserWarning)
    print(f"load average {os.getloadavg()[0]:.1f} "
          "(a shared machine: compare the ratios, not the seconds)")
    from core.data.datasets import load_fashion_mnist

    with tempfile.TemporaryDirectory(prefix="bench-gradcam-") as tmp:
        folder = Path(tmp)
        model_path, what = demo_model_path(folder)
        print(f"Model: {what}")
        data = load_fashion_mnist()
        rng = np.random.default_rng(0)
        picked = rng.choice(len(data), args.images, replace=False)
        x = data.pixels[picked]
        x = x[..., None] if x.ndim == 3 else x
        labels = np.asarray(data.labels)[picked]
        classes = np.stack([(labels + 1) % 10, labels], axis=1)  # two classes per image, as predicted and true
        bench_batched_vs_loop(model_path, x, classes, args.repeats)
        bench_first_page(model_path, folder, args.repeats)


if __name__ == "__main__":
    main()
