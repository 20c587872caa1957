"""The development set ``duplicates``' bounds were chosen on (not the benchmark's folders).

3,000 Fashion-MNIST *training* images (seed 1; the benchmark uses the *test* split, seed 0), 15 copies
of each of 11 kinds (JPEG q60, both flips, crop to 85-92% + resize, rotation 3-5°, scale 0.7x/1.5x,
shift up to 3 px, blur, noise sigma 8, gamma, brightness/contrast) and 40 look-alikes (the same
class's closest image in pixels from the rest of the training split), as arrays (no files: the
thumbnails are made as the image scan makes them). Prints the candidates' recall per kind and what
``accepted`` keeps: copies per kind, look-alikes, and other pairs (all pairs, train and copies alike).

    .venv/bin/python benchmarks/dev_duplicates.py [--seed 1] [--n 3000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cv2  # noqa: E402

from core.data.datasets import load_fashion_mnist  # noqa: E402
from core.diagnose import duplicates as dup  # noqa: E402
from core.diagnose.properties import canvas_thumbnail  # noqa: E402

KINDS = ("jpeg q60", "flip h", "flip v", "crop", "rotate", "scale", "shift", "blur", "noise", "gamma", "contrast")


def edit(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    if kind == "jpeg q60":
        return cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_UNCHANGED)
    if kind in ("flip h", "flip v"):
        return (img[:, ::-1] if kind == "flip h" else img[::-1]).copy()
    if kind == "crop":
        f = rng.uniform(0.85, 0.92)
        ch, cw = int(round(h * f)), int(round(w * f))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        return cv2.resize(img[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "rotate":
        m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(3, 5) * rng.choice([-1, 1]), 1.0)
        return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if kind == "scale":
        f = rng.choice([0.7, 1.5])
        return cv2.resize(img, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    if kind == "shift":
        dy, dx = rng.integers(-3, 4, 2)
        return cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REPLICATE)
    if kind == "blur":
        return cv2.GaussianBlur(img, (0, 0), 0.8)
    if kind == "noise":
        return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    if kind == "gamma":
        return (255 * (img / 255.0) ** rng.choice([0.8, 1.25])).astype(np.uint8)
    if kind == "contrast":
        return np.clip(img * rng.uniform(0.7, 0.85) + rng.uniform(10, 40), 0, 255).astype(np.uint8)
    raise ValueError(kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    ds = load_fashion_mnist()
    rng = np.random.default_rng(args.seed)
    train = np.flatnonzero(ds.splits == "train")
    base = rng.choice(train, args.n, replace=False)
    rest = np.setdiff1d(train, base)
    images, truth = [ds.pixels[i] for i in base], []
    for kind in KINDS:
        for src in rng.choice(args.n, 15, replace=False):
            truth.append((int(src), len(images), kind))
            images.append(edit(images[src], kind, rng))
    for src in rng.choice(args.n, 40, replace=False):
        same = rest[ds.labels[rest] == ds.labels[base[src]]]
        d = ((ds.pixels[same].reshape(len(same), -1).astype(np.float32)
              - images[src].reshape(-1).astype(np.float32)) ** 2).sum(axis=1)
        truth.append((int(src), len(images), "look-alike"))
        images.append(ds.pixels[same[d.argmin()]])
    scanned = [canvas_thumbnail(im, size=32) for im in images]
    thumbs, sizes = np.stack([t for t, _ in scanned]), np.array([hw for _, hw in scanned], np.int16)
    t0 = time.perf_counter()
    found = dup.candidate_pairs(thumbs, sizes, np.arange(len(images)))
    checked = dup.verify_pairs(thumbs, sizes, found["query"], found["match"], found["variant"], found["centroid"],
                               alternative=(found["alt_query"], found["alt_match"], found["alt_variant"]))
    ok = dup.accepted(checked)
    print(f"{len(images):,} images, {len(checked):,} candidate pairs verified in {time.perf_counter() - t0:.1f} s")
    key = {(min(a, b), max(a, b)): k for a, b, k in truth}
    label = np.array([key.get((a, b), "other") for a, b in zip(checked["a"], checked["b"])])
    rows = []
    for kind in KINDS + ("look-alike",):
        n = sum(k == kind for *_, k in truth)
        rows.append((kind, (label == kind).sum() / n, (ok & (label == kind)).sum() / n))
    print(pd.DataFrame(rows, columns=["kind", "candidate", "accepted"]).round(2).to_string(index=False))
    print(f"other pairs accepted: {int((ok & (label == 'other')).sum())} (copies of one source with each "
          "other, and Fashion-MNIST's own near-duplicates, count here)")


if __name__ == "__main__":
    main()
