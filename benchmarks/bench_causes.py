"""Benchmark of error causes (``core.diagnose.causes``) against planted label errors.

Two sets, each a clean ``train`` and ``val`` split beside a ``test`` split
whose labels get seeded class-conditional flips on confusable pairs: 10% of
each class's test images (``--rate``) are relabelled as its *partner*, the
class whose training images' mean embedding is nearest to its own (decided on
the train split, never on the test split). A model trained on the train split
predicts every image; the run holds the pixels, and the ``image_scan`` kind
(which ``diagnose`` computes before ``causes``) is computed first. Each flip
seed of ``--seeds`` is a differently planted flip set.

* ``fashion``: Fashion-MNIST, the demo run's 54,000 train, 6,000 val and
  10,000 test rows, analysed by the shipped demo model (core/demo_model/,
  trained on the train rows, val held out), whose run is read from
  ``--demo-store`` (built with ``python -m core demo --store DIR --no-projection``).
* ``digits``: scikit-learn's 8x8 digits (1,797 images) in thirds: train, val,
  test; a scikit-learn MLP (one hidden layer of 64 ReLU units, its
  activations are the embeddings) trained on the train third. Another domain,
  another model.

``--dev`` evaluates half of the Fashion-MNIST ``val`` split (the other half is
the val split the label-error classifier learns on) and drops ``test``: the
set the method was designed on. The figures that count are those without
``--dev``; nothing is tuned on them.

Printed among the misclassified test images (the model's top class differs from
the noisy label): precision and recall of ``label`` against the planted flips,
the share of unflipped errors (the model's own) called ``label``, the cause mix
of both, the same for cleanlab's ``find_label_issues`` and for the
``label_issues`` kind's ``is_issue``, the label-error classifier (its training
set, the wrong-label share it expects against the true one, its weights, and
its calls at prior 1/2 for comparison), and average precision among errors of
``label_score`` against cleanlab's self-confidence (1 - p(given)). Also the
time of the ``causes`` kind on the full 70,000-row demo run (wall and CPU).

Usage: python benchmarks/bench_causes.py [--demo-store /tmp/causes_store] [--seeds 0,1] [--rate 0.1] [--dev]
       [--sets fashion,digits,demo]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
from cpu_info import cpu_line  # noqa: E402  (this script's folder is on sys.path)

from core.diagnose import labels as label_module  # noqa: E402
from core.diagnose.causes import CAUSES  # noqa: E402
from core.run import derived  # noqa: E402
from core.run.store import RunStore  # noqa: E402
from core.run.write import write_run  # noqa: E402


def fashion_arrays(demo_store: str, *, dev: bool, seed: int) -> dict:
    run = RunStore(demo_store).load("fashion-mnist-demo")
    preds = run.predictions
    splits = preds["split"].astype(str).to_numpy().copy()
    keep = np.ones(len(splits), bool)
    if dev:  # evaluate half of val (the other half calibrates), drop the test rows
        keep = splits != "test"
        val = np.flatnonzero(splits == "val")
        splits[np.random.default_rng(seed + 1000).choice(val, len(val) // 2, replace=False)] = "test"
    return {"labels": preds["true"].to_numpy().astype(np.int64)[keep], "splits": splits[keep],
            "probs": np.asarray(run.probs)[keep], "embeddings": np.asarray(run.embeddings)[keep],
            "images": np.load(run.path / "images.npy", mmap_mode="r", allow_pickle=False)[keep],
            "classes": run.classes}


def digits_arrays(seed: int) -> dict:
    """A third of the digits each for ``train`` (the MLP learns on it alone), ``val`` (out-of-sample,
    for the label-error classifier) and ``test``, stratified."""
    from sklearn.neural_network import MLPClassifier

    from core.data.datasets import load_digits

    data = load_digits(test_size=1 / 3, seed=seed)
    splits = data.splits.astype("<U5").copy()
    rng = np.random.default_rng(seed)
    for c in range(len(data.classes)):  # half of each class's non-test images to val
        members = np.flatnonzero((splits == "train") & (data.labels == c))
        splits[rng.choice(members, len(members) // 2, replace=False)] = "val"
    x = data.pixels.reshape(len(data.pixels), -1).astype(np.float64) / 255.0
    train = splits == "train"
    model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=seed).fit(x[train], data.labels[train])
    hidden = np.maximum(x @ model.coefs_[0] + model.intercepts_[0], 0.0)
    return {"labels": data.labels, "splits": splits, "probs": model.predict_proba(x).astype(np.float32),
            "embeddings": hidden.astype(np.float32), "images": data.pixels, "classes": data.classes}


GLYPH_FONTS = ("SIMPLEX", "DUPLEX", "COMPLEX", "TRIPLEX", "COMPLEX_SMALL", "SCRIPT_SIMPLEX", "SCRIPT_COMPLEX", "PLAIN")
GLYPH_LETTERS = "ABCDEFGHIJ"


def render_glyph(letter: str, rng: np.random.Generator) -> np.ndarray:
    """One 28 x 28 grey image of ``letter``: a random Hershey font (a third italic), size, stroke, brightness,
    rotation, shear and shift; half get an occluding stroke; then blur and noise. The label is the letter
    drawn, so it is right by construction (Fashion-MNIST's own labels are not: see the audit)."""
    import cv2

    font = getattr(cv2, "FONT_HERSHEY_" + GLYPH_FONTS[rng.integers(len(GLYPH_FONTS))])
    font |= cv2.FONT_ITALIC if rng.random() < 0.3 else 0
    canvas = np.zeros((64, 64), np.uint8)
    scale, thick = rng.uniform(1.2, 2.0), int(rng.integers(1, 5))
    (w, h), _ = cv2.getTextSize(letter, font, scale, thick)
    origin = (int(32 - w / 2 + rng.normal(0, 3)), int(32 + h / 2 + rng.normal(0, 3)))
    cv2.putText(canvas, letter, origin, font, scale, int(rng.integers(150, 256)), thick, cv2.LINE_AA)
    warp = cv2.getRotationMatrix2D((32, 32), rng.normal(0, 10), rng.uniform(0.8, 1.1))
    warp[0, 1] += rng.normal(0, 0.15)
    canvas = cv2.warpAffine(canvas, warp, (64, 64))
    if rng.random() < 0.5:
        ends = rng.integers(0, 64, 4)
        cv2.line(canvas, (int(ends[0]), int(ends[1])), (int(ends[2]), int(ends[3])), int(rng.integers(0, 256)),
                 int(rng.integers(2, 6)))
    image = cv2.resize(canvas, (28, 28), interpolation=cv2.INTER_AREA).astype(np.float32)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2)) + rng.normal(0, rng.uniform(0, 25), (28, 28))
    return np.clip(image, 0, 255).astype(np.uint8)


def glyphs_arrays(seed: int, *, n_train: int = 20000, n_val: int = 5000, n_test: int = 10000) -> dict:
    """Rendered letters A-J (``render_glyph``), labels right by construction: ``n_train`` for a scikit-learn
    MLP (one hidden layer of 128 ReLU units, its activations the embeddings; it overfits its training
    images as users' models do), ``n_val`` out-of-sample for the label-error classifier, ``n_test``."""
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(seed + 500)
    n = n_train + n_val + n_test
    labels = rng.integers(0, len(GLYPH_LETTERS), n)
    images = np.stack([render_glyph(GLYPH_LETTERS[c], rng) for c in labels])
    splits = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    x = images.reshape(n, -1).astype(np.float64) / 255.0
    train = splits == "train"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: the model is meant to be imperfect
        model = MLPClassifier(hidden_layer_sizes=(128,), max_iter=40, random_state=seed).fit(x[train], labels[train])
    hidden = np.maximum(x @ model.coefs_[0] + model.intercepts_[0], 0.0)
    return {"labels": labels, "splits": splits, "probs": model.predict_proba(x).astype(np.float32),
            "embeddings": hidden.astype(np.float32), "images": images, "classes": list(GLYPH_LETTERS)}


def partners(labels: np.ndarray, embeddings: np.ndarray, train: np.ndarray, n_classes: int) -> np.ndarray:
    """For each class, the class whose mean training embedding is nearest (cosine)."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    centres = np.stack([unit[train & (labels == c)].mean(axis=0) for c in range(n_classes)])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    similarity = centres @ centres.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


def plant(labels: np.ndarray, test: np.ndarray, partner: np.ndarray, *, rate: float, seed: int
          ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    noisy, flipped = labels.copy(), np.zeros(len(labels), bool)
    for c in range(len(partner)):
        members = test[labels[test] == c]
        chosen = rng.choice(members, int(round(rate * len(members))), replace=False)
        noisy[chosen], flipped[chosen] = partner[c], True
    return noisy, flipped


def mix(causes: np.ndarray) -> str:
    total = max(len(causes), 1)
    return ", ".join(f"{c} {np.sum(causes == c)} ({np.sum(causes == c) / total:.0%})" for c in CAUSES
                     if np.sum(causes == c))


def scores_line(name: str, called: np.ndarray, flipped: np.ndarray) -> str:
    hits = called & flipped
    precision = hits.sum() / max(called.sum(), 1)
    recall = hits.sum() / max(flipped.sum(), 1)
    own = called[~flipped].mean() if (~flipped).any() else float("nan")
    return (f"  {name:<44s} precision {precision:.3f}  recall {recall:.3f}  "
            f"own errors called label {own:.1%} ({called[~flipped].sum()} of {(~flipped).sum()})")


def without_val(arrays: dict) -> dict:
    """The set as a user with train/ and test/ folders only has it: no val rows."""
    keep = arrays["splits"] != "val"
    return {k: (v[keep] if k != "classes" else v) for k, v in arrays.items()}


def evaluate(name: str, arrays: dict, *, rate: float, seed: int, store: RunStore, no_val: bool = False,
             properties: bool = True) -> dict:
    from sklearn.metrics import average_precision_score

    if no_val:
        arrays, name = without_val(arrays), f"{name}-noval"

    labels, splits, probs = arrays["labels"], arrays["splits"], arrays["probs"]
    classes = list(arrays["classes"])
    train, test = splits == "train", np.flatnonzero(splits == "test")
    partner = partners(labels, arrays["embeddings"], train, len(classes))
    noisy, flipped = plant(labels, test, partner, rate=rate, seed=seed)
    run = write_run(store, f"{name}-flip{seed}", classes=classes, y_true=noisy, probs=probs,
                    paths=[f"{s}/{i:05d}" for i, s in enumerate(splits)], splits=splits,
                    embeddings=arrays["embeddings"], images=arrays["images"],
                    data={"name": name, "root": None, "images_in_run": True})
    t0 = time.perf_counter()
    derived.get(run, "image_scan")  # the thumbnails causes compare in pixels (diagnose computes it before causes)
    scan_seconds = time.perf_counter() - t0
    if properties:  # as diagnose does before causes: little information and odd sizes
        derived.get(run, "image_properties")
    t0 = time.perf_counter()
    stored = derived.get(run, "causes", force=True)
    seconds = time.perf_counter() - t0
    table = stored.table("causes")
    pred = probs.argmax(axis=1)
    errors = test[pred[test] != noisy[test]]
    assert len(table) == len(errors) and set(table["row"]) == set(errors.tolist()), "one cause per error"
    assert table["cause"].isin(CAUSES).all()
    table = table.set_index("row").loc[errors]
    cause = table["cause"].to_numpy()
    is_flip = flipped[errors]
    called = cause == "label"
    suggested_right = (table["suggested_label"].to_numpy()[called & is_flip]
                       == np.asarray(classes, object)[labels[errors][called & is_flip]]).mean()
    # cleanlab on the same run: find_label_issues over the test split, read among its errors
    flag = label_module.flag_label_issues(noisy[test], probs[test])
    flag_by_row = np.zeros(len(labels), bool)
    flag_by_row[test] = flag
    issues = derived.get(run, "label_issues", force=True).table("label_issues").set_index("row")
    self_confidence = 1.0 - probs[errors, noisy[errors]]
    ap_ours = average_precision_score(is_flip, table["label_score"].to_numpy())
    ap_cleanlab = average_precision_score(is_flip, self_confidence)
    print(f"\n{name}: {len(test):,} test images, {int(flipped.sum())} flipped "
          f"(pairs {', '.join(f'{classes[c]}->{classes[partner[c]]}' for c in range(len(classes)))}), "
          f"neighbours from {stored.summary['reference']} ({stored.summary['n_reference']:,})")
    print(f"  errors among test images: {len(errors)} ({int(is_flip.sum())} flipped, {int((~is_flip).sum())} the "
          f"model's own); image scan {scan_seconds:.1f} s, causes {seconds:.2f} s; exactly one cause per error: "
          f"{len(table) == len(errors) and table['cause'].ne('').all()}")
    print(scores_line("causes: label", called, is_flip))
    print(scores_line("cleanlab find_label_issues", flag_by_row[errors], is_flip))
    print(scores_line("label_issues kind is_issue (second signal)",
                      issues.loc[errors, "is_issue"].to_numpy(bool), is_flip))
    print(f"  suggested label = original label for flips called label: {suggested_right:.3f}")
    all_score = np.asarray(stored.array("label_score"))[test]
    ap_all_ours = average_precision_score(flipped[test], all_score)
    ap_all_cleanlab = average_precision_score(flipped[test], 1.0 - probs[test, noisy[test]])
    print(f"  average precision among all {len(test):,} test images: label_score {ap_all_ours:.4f}  vs cleanlab "
          f"self-confidence {ap_all_cleanlab:.4f}  (difference {ap_all_ours - ap_all_cleanlab:+.4f})")
    knows = pred[errors][is_flip] == labels[errors][is_flip]
    print(f"  flipped errors the model calls by their original class: {knows.mean():.1%}; recall of label among "
          f"them {called[is_flip][knows].mean():.3f}, among the others {called[is_flip][~knows].mean():.3f}")
    print(f"  cause mix of the model's own errors: {mix(cause[~is_flip])}")
    print(f"  cause mix of the flipped errors:     {mix(cause[is_flip])}")
    lc = stored.summary.get("label_classifier") or {}
    if not lc:
        print(f"  no label-error classifier: {stored.summary['not_assessed_line']}")
    if lc:
        balanced = table["label_score"].to_numpy() > 0  # the classifier's probability > 1/2, before the prior
        print(scores_line("(classifier at prior 1/2, for comparison)", balanced, is_flip))
        print(f"  label classifier: {lc['n_flips']:,} planted flips vs {lc['n_errors']:,} errors of {lc['source']}; "
              f"estimated wrong-label share among errors {lc['wrong_label_share']:.3f} "
              f"(true {is_flip.mean():.3f}); weights per unit: "
              + ", ".join(f"{k} {v:+.2f}" for k, v in lc["weights"].items()))
    print(f"  average precision among errors: label_score {ap_ours:.4f}  vs cleanlab self-confidence "
          f"{ap_cleanlab:.4f}  (difference {ap_ours - ap_cleanlab:+.4f})")
    return {"seconds": seconds, "called": called, "is_flip": is_flip, "label_score": table["label_score"].to_numpy(),
            "self_confidence": self_confidence, "cleanlab": flag_by_row[errors],
            "is_issue": issues.loc[errors, "is_issue"].to_numpy(bool), "knows": pred[errors] == labels[errors],
            "ap_all_gap": ap_all_ours - ap_all_cleanlab}


def pooled(name: str, results: list[dict]) -> None:
    """The seeds of one set together: counts added up, so that small sets (digits: ~25 own errors a seed)
    give a share with fewer than a few points of sampling error; AP is the mean over seeds."""
    from sklearn.metrics import average_precision_score

    if len(results) < 2:
        return
    called, is_flip = np.concatenate([r["called"] for r in results]), np.concatenate([r["is_flip"] for r in results])
    cleanlab = np.concatenate([r["cleanlab"] for r in results])
    gaps = [average_precision_score(r["is_flip"], r["label_score"]) - average_precision_score(r["is_flip"],
            r["self_confidence"]) for r in results]
    print(f"\n{name}, {len(results)} seeds pooled: {len(is_flip)} errors ({int(is_flip.sum())} flipped, "
          f"{int((~is_flip).sum())} the model's own)")
    print(scores_line("causes: label", called, is_flip))
    print(scores_line("cleanlab find_label_issues", cleanlab, is_flip))
    print(scores_line("label_issues kind is_issue (second signal)",
                      np.concatenate([r["is_issue"] for r in results]), is_flip))
    knows = np.concatenate([r["knows"] for r in results])[is_flip]
    print(f"  flipped errors the model calls by their original class: {knows.mean():.1%}; recall of label among "
          f"them {called[is_flip][knows].mean():.3f}")
    print(f"  average precision among errors, label_score minus cleanlab self-confidence: mean {np.mean(gaps):+.4f} "
          f"(min {np.min(gaps):+.4f}, max {np.max(gaps):+.4f})")
    gaps_all = [r["ap_all_gap"] for r in results]
    print(f"  average precision among all test images, the same difference: mean {np.mean(gaps_all):+.4f} "
          f"(min {np.min(gaps_all):+.4f}, max {np.max(gaps_all):+.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-store", default="/tmp/causes_store",
                        help="store holding the demo run 'fashion-mnist-demo'")
    parser.add_argument("--seeds", default="0,1", help="comma-separated flip seeds (each a held-out flip set)")
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--dev", action="store_true", help="evaluate Fashion-MNIST val instead of test")
    parser.add_argument("--no-val", action="store_true",
                        help="drop the val rows, as a folder of train/ and test/ only: the label-error classifier "
                             "learns on train, whose error rate is in-sample")
    parser.add_argument("--no-properties", action="store_true",
                        help="skip image_properties before causes (as the figures before causes version 6 were taken)")
    parser.add_argument("--sets", default="fashion,digits,demo",
                        help="comma-separated: fashion, digits, glyphs, demo (the time of causes on the demo run)")
    args = parser.parse_args()
    print(cpu_line(), f"load {os.getloadavg()[0]:.1f}", flush=True)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        if "fashion" in sets:
            name = "fashion-dev" if args.dev else "fashion"
            pooled(name, [evaluate(name, fashion_arrays(args.demo_store, dev=args.dev, seed=seed), rate=args.rate,
                                   seed=seed, store=store, no_val=args.no_val, properties=not args.no_properties)
                                   for seed in seeds])
        if "digits" in sets:
            pooled("digits", [evaluate("digits", digits_arrays(seed), rate=args.rate, seed=seed, store=store,
                                       no_val=args.no_val, properties=not args.no_properties)
                              for seed in seeds])
        if "glyphs" in sets:
            pooled("glyphs", [evaluate("glyphs", glyphs_arrays(seed), rate=args.rate, seed=seed, store=store,
                                       no_val=args.no_val, properties=not args.no_properties)
                              for seed in seeds])
    if "demo" in sets:
        demo = RunStore(args.demo_store).load("fashion-mnist-demo")
        t0, c0 = time.perf_counter(), time.process_time()
        derived.get(demo, "causes", force=True)
        print(f"\ncauses on the {demo.n_images:,}-row demo run: {time.perf_counter() - t0:.2f} s wall, "
              f"{time.process_time() - c0:.2f} s CPU (all threads; load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
