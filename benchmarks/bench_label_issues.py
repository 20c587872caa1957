"""Benchmark of label-issue detection on Fashion-MNIST with planted label errors.

A small CNN (Conv 32 -> MaxPool -> Conv 64 -> MaxPool -> Dense 128 -> Dropout
-> softmax) is trained on the 60,000 training images for a few epochs; its
probabilities and penultimate features for the 10,000 test images are
out-of-sample. Then, for each seed, 5% of the test labels are flipped to
another class chosen at random, a run is written with the noisy labels, and
the derived kind ``label_issues`` (what ``python -m core label-issues``
uses) ranks the test images. Printed per seed and on average, side by side
with cleanlab's self-confidence ranking alone and other variants on the same
probabilities:

* precision at k (k = number flipped): share of flipped images among the top k;
* recall at 2k: share of flipped images found among the top 2k;
* suggested = truth: for the flipped images in the top k, how often the
  suggested label is the original one.

Targets: precision at k >= cleanlab's self-confidence and >= 0.85; suggested
= truth >= 0.90. The time of the kind and of cleanlab alone are measured
alternately (the machine may be shared) and printed as a ratio.

Usage: python benchmarks/bench_label_issues.py [--epochs 5] [--seeds 0,1,2] [--cache FILE.npz]
(``--cache`` keeps the trained model's outputs, so a second run skips training).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
from cpu_info import cpu_line  # noqa: E402  (this script's folder is on sys.path)

from core.diagnose import labels as label_module  # noqa: E402
from core.run import derived  # noqa: E402
from core.run.store import RunStore  # noqa: E402


def train_and_predict(epochs: int, seed: int) -> dict:
    """Train on the train split; probabilities and embeddings for every image (train and test)."""
    import keras

    from core.data.datasets import load_fashion_mnist

    data = load_fashion_mnist()
    x = data.pixels[..., None].astype(np.float32)
    train = data.splits == "train"
    keras.utils.set_random_seed(seed)
    inp = keras.Input((28, 28, 1))
    h = keras.layers.Rescaling(1 / 255)(inp)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    features = keras.layers.Dense(128, activation="relu", name="embedding")(h)
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Dropout(0.3)(features))
    model = keras.Model(inp, out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(x[train], data.labels[train], epochs=epochs, batch_size=128, verbose=2)
    print(f"trained {epochs} epochs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    both = keras.Model(inp, [out, features])
    probs, embeddings = both.predict(x, batch_size=512, verbose=0)
    return {"labels": data.labels, "splits": data.splits, "probs": probs.astype(np.float32),
            "embeddings": embeddings.astype(np.float32), "classes": np.array(data.classes)}


def flip(labels: np.ndarray, rows: np.ndarray, *, fraction: float, n_classes: int, seed: int) -> np.ndarray:
    """Rows (a subset of ``rows``) whose label is replaced by another class, uniformly at random."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(rows, int(round(fraction * len(rows))), replace=False))
    noisy = labels.copy()
    noisy[chosen] = (labels[chosen] + rng.integers(1, n_classes, len(chosen))) % n_classes
    return chosen, noisy


def precision_recall(ranked_rows: np.ndarray, flipped: np.ndarray) -> tuple[float, float]:
    k = len(flipped)
    hits = np.isin(ranked_rows, flipped)
    return hits[:k].mean(), hits[:2 * k].sum() / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2", help="flip seeds, comma-separated")
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--cache", default=None, help="npz of the trained model's outputs (written if absent)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (alternating)")
    args = parser.parse_args()
    print(cpu_line(), flush=True)

    if args.cache and Path(args.cache).is_file():
        with np.load(args.cache, allow_pickle=False) as f:
            out = {k: f[k] for k in f.files}
        print(f"model outputs from {args.cache}")
    else:
        out = train_and_predict(args.epochs, 0)
        if args.cache:
            np.savez(args.cache, **out)
    labels, splits, probs, embeddings = out["labels"], out["splits"], out["probs"], out["embeddings"]
    classes = [str(c) for c in out["classes"]]
    test = np.flatnonzero(splits == "test")
    print(f"test accuracy of the model (clean labels): {(probs[test].argmax(1) == labels[test]).mean():.4f}")

    from core.run.write import write_run

    variants = {  # name -> (config of the derived kind, or None for a plain cleanlab ranking)
        "label_issues (default config)": {},
        "cleanlab self_confidence alone": "self_confidence",
        "cleanlab normalized_margin alone": "normalized_margin",
        "cleanlab find_label_issues, ranked by self_confidence": "find",
        "label_issues + kNN of train images, knn_weight=0.2": {"knn_weight": 0.2},
        "label_issues + kNN of train images, knn_weight=0.5": {"knn_weight": 0.5},
    }
    rows = {name: [] for name in variants}
    suggested_ok = []
    timings = {"label_issues kind": [], "cleanlab self_confidence": []}
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        for seed in seeds:
            flipped, noisy = flip(labels, test, fraction=args.fraction, n_classes=len(classes), seed=seed)
            run = write_run(store, f"flip{seed}", classes=classes, y_true=noisy, probs=probs,
                            paths=[f"{s}/{i:05d}" for i, s in enumerate(splits)], splits=splits,
                            embeddings=embeddings, data={"name": "fashion-mnist", "root": None})
            k = len(flipped)
            for name, how in variants.items():
                if isinstance(how, dict):
                    table = derived.get(run, "label_issues", how, force=True).table("label_issues")
                    ranked = table["row"].to_numpy()
                    if not how:
                        top = table.iloc[:k]
                        found = top[np.isin(top["row"].to_numpy(), flipped)]
                        truth = np.asarray(classes, dtype=object)[labels[found["row"].to_numpy()]]
                        suggested_ok.append(float((found["suggested_label"].to_numpy() == truth).mean()))
                elif how == "find":
                    score = label_module.label_issue_scores(noisy[test], probs[test])
                    flag = label_module.flag_label_issues(noisy[test], probs[test])
                    ranked = test[np.lexsort((-score, ~flag))]  # flagged first, then by score
                else:
                    score = label_module.label_issue_scores(noisy[test], probs[test], method=how)
                    ranked = test[np.argsort(-score, kind="stable")]
                rows[name].append(precision_recall(ranked, flipped))
            for _ in range(args.repeats):  # alternate the two sides
                t0 = time.perf_counter()
                derived.get(run, "label_issues", force=True)
                timings["label_issues kind"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                label_module.label_issue_scores(noisy[test], probs[test])
                timings["cleanlab self_confidence"].append(time.perf_counter() - t0)

    print(f"\n{len(test):,} test images, {args.fraction:.0%} flipped (k = {int(round(args.fraction * len(test)))}), "
          f"seeds {seeds}")
    print(f"{'ranking':<56} {'precision@k':>12} {'recall@2k':>10}   per seed (p@k)")
    for name, vals in rows.items():
        p = [v[0] for v in vals]; r = [v[1] for v in vals]
        print(f"{name:<56} {statistics.mean(p):>12.4f} {statistics.mean(r):>10.4f}   "
              + " ".join(f"{x:.3f}" for x in p))
    print(f"suggested label = the original one, for flips found in the top k: "
          f"{statistics.mean(suggested_ok):.4f} (per seed {' '.join(f'{x:.3f}' for x in suggested_ok)})")
    kind_t = statistics.median(timings["label_issues kind"])
    base_t = statistics.median(timings["cleanlab self_confidence"])
    print(f"time (median of {len(timings['label_issues kind'])}, measured alternately on a possibly shared "
          f"machine): label_issues kind {kind_t:.3f} s (scores, confident learning, table, storage), "
          f"cleanlab scores alone {base_t:.3f} s, ratio {kind_t / base_t:.1f}x")


if __name__ == "__main__":
    main()
