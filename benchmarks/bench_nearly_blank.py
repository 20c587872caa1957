"""Nearly blank pictures: how many false near pairs ``duplicates`` finds among them, and whether copies beside
them are still found.

A seeded set of ``--n`` nearly blank 48x64 colour pictures (one light tone, film grain; a dot touching the
border, a line along one edge, or a faint gradient; half re-saved as JPEG q90), ``--n`` ordinary scenes
(circles and rectangles on a random background), 40 planted copies of scenes (flipped, shifted 2 px, JPEG
q70) and 20 of blank ones (JPEG q70). Every pair of distinct blank pictures is a false pair: each shows
another thing, at the edges the comparison leaves out. ``--without-telling`` turns the compared-area check
(``duplicates.telling``) off, as version 4 was.

Usage: python benchmarks/bench_nearly_blank.py [--seed 0] [--n 400] [--without-telling]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from core.diagnose import duplicates as dup  # noqa: E402
from core.diagnose.properties import canvas_thumbnail, pixel_digest  # noqa: E402

H, W = 48, 64


def nearly_blank(rng: np.random.Generator) -> np.ndarray:
    img = np.ones((H, W, 3)) * rng.uniform(180, 250, 3)
    kind, side = rng.integers(3), rng.integers(4)
    colour = tuple(float(v) for v in rng.uniform(0, 150, 3))
    if kind == 0:
        along, inset = int(rng.integers(0, W if side < 2 else H)), int(rng.integers(0, 3))
        y, x = [(inset, along), (H - 1 - inset, along), (along, inset), (along, W - 1 - inset)][side]
        cv2.circle(img, (x, y), int(rng.integers(2, 5)), colour, -1)
    elif kind == 1:
        t = int(rng.integers(1, 3))
        img[[np.s_[:t], np.s_[-t:], np.s_[:, :t], np.s_[:, -t:]][side]] = colour
    else:
        img += np.linspace(-3, 3, W)[None, :, None] * rng.uniform(0.5, 1.5)
    img = np.clip(np.rint(img + rng.normal(0, rng.uniform(0.5, 3), img.shape)), 0, 255).astype(np.uint8)
    return jpeg(img, 90) if rng.random() < 0.5 else img


def scene(rng: np.random.Generator) -> np.ndarray:
    img = np.ones((H, W, 3)) * rng.uniform(0, 255, 3)
    for _ in range(rng.integers(2, 6)):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        if rng.random() < 0.5:
            cv2.circle(img, (int(rng.integers(8, W - 8)), int(rng.integers(8, H - 8))), int(rng.integers(3, 14)),
                       colour, -1)
        else:
            x, y = int(rng.integers(4, W - 12)), int(rng.integers(4, H - 12))
            cv2.rectangle(img, (x, y), (x + int(rng.integers(4, 20)), y + int(rng.integers(4, 20))), colour, -1)
    return np.clip(np.rint(img + rng.normal(0, 2, img.shape)), 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_COLOR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--without-telling", action="store_true")
    args = parser.parse_args()
    rng, n = np.random.default_rng(args.seed), args.n
    images = [nearly_blank(rng) for _ in range(n)] + [scene(rng) for _ in range(n)]
    planted = []
    for i in range(n, n + 40):
        edit = [lambda x: x[:, ::-1], lambda x: np.roll(x, 2, axis=1), lambda x: jpeg(x, 70)][i % 3]
        planted.append((i, len(images)))
        images.append(np.ascontiguousarray(edit(images[i])))
    for i in range(20):
        planted.append((i, len(images)))
        images.append(jpeg(images[i], 70))
    scanned = [canvas_thumbnail(im[:, :, ::-1], size=32) for im in images]  # the scan reads RGB
    thumbs, sizes = np.stack([t for t, _ in scanned]), np.array([hw for _, hw in scanned], np.int16)
    digest = np.array([pixel_digest(im) for im in images], np.uint64)
    if args.without_telling:
        dup.telling = lambda checked: np.ones(len(checked), bool)
    t0 = time.perf_counter()
    pairs = dup.find_duplicates(thumbs, sizes, digest, np.ones(len(images), bool))
    seconds = time.perf_counter() - t0
    near = pairs[pairs["kind"] == "near"]
    found = {(int(a), int(b)) for a, b in zip(near["a"], near["b"])}
    blank = set(range(n)) | set(range(2 * n + 40, len(images)))
    false = [pair for pair in found if pair not in set(planted)]
    among_blank = sum(1 for a, b in false if a in blank and b in blank)
    print(f"seed {args.seed}, {len(images)} pictures ({n} nearly blank), compared-area check "
          f"{'off' if args.without_telling else 'on'}: {len(near)} near pairs; false pairs among nearly blank "
          f"pictures {among_blank}, others {len(false) - among_blank}; planted copies of scenes found "
          f"{sum(p in found for p in planted[:40])}/40, of blank pictures {sum(p in found for p in planted[40:])}/20; "
          f"{pairs.attrs.get('n_flat', 0)} pairs refused as too blank to tell; {seconds:.1f} s")


if __name__ == "__main__":
    main()
