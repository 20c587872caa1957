"""What decoding a JPEG whole costs against libjpeg's reduced-scale decode, and how far their pixels differ.

Since the model is fed the whole decoded image, resized with INTER_AREA (as ``cv2.imread`` + ``cv2.resize``
pipelines do), rather than a 1/2, 1/4 or 1/8-scale DCT decode (which no training pipeline does), this
prints, side by side in one run, for generated photographs of several sizes resized to a model input:

* the seconds per image of both decodes (median of ``--repeats``, alternating) and their ratio;
* the pixels' difference between them at the model's input: mean and largest, in grey levels, and the
  share of images that differ by more than 8 levels anywhere.

The pictures are seeded noise smoothed at two scales plus sharp bars (edges at every frequency), saved as
JPEG at quality 90. Usage: python benchmarks/bench_decode.py [--images 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from cpu_info import cpu_line  # noqa: E402  (this script's folder is on sys.path)

from core.data.images import fit_to_input, read_image  # noqa: E402


def photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    coarse = cv2.resize(rng.integers(0, 255, (h // 64 + 2, w // 64 + 2, 3), dtype=np.uint8), (w, h),
                        interpolation=cv2.INTER_CUBIC).astype(np.float32)
    fine = cv2.GaussianBlur(rng.normal(0, 25, (h, w, 3)).astype(np.float32), (0, 0), 2)
    img = coarse + fine
    for _ in range(6):  # sharp bars: edges at every frequency
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(4, w // 4)), y + int(rng.integers(4, h // 4))),
                      tuple(float(v) for v in rng.integers(0, 255, 3)), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def timed(fn, files) -> float:
    t0 = time.perf_counter()
    for f in files:
        fn(f)
    return (time.perf_counter() - t0) / len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(cpu_line(), flush=True)
    rng = np.random.default_rng(0)
    cases = [((3000, 4000), (224, 224)), ((1200, 1600), (224, 224)), ((400, 600), (60, 60)), ((358, 358), (32, 32))]
    print(f"{'photo':>11} {'input':>8} | {'whole ms':>8} {'reduced ms':>10} {'ratio':>6} | "
          f"{'mean diff':>9} {'max diff':>8} {'>8 levels':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for (h, w), size in cases:
            files = []
            for i in range(args.images):
                file = Path(tmp) / f"{h}x{w}_{i}.jpg"
                cv2.imwrite(str(file), photo(rng, h, w), [cv2.IMWRITE_JPEG_QUALITY, 90])
                files.append(file)

            def whole(f):
                return fit_to_input(read_image(f), size=size, channels=3)

            def reduced(f):
                return fit_to_input(read_image(f, min_size=size), size=size, channels=3)

            a, b = [], []
            for _ in range(args.repeats):
                a.append(timed(whole, files))
                b.append(timed(reduced, files))
            diffs = [np.abs(whole(f).astype(int) - reduced(f).astype(int)) for f in files]
            ta, tb = statistics.median(a), statistics.median(b)
            print(f"{w:>5}x{h:<5} {size[1]:>3}x{size[0]:<4} | {ta * 1e3:8.1f} {tb * 1e3:10.1f} {ta / tb:5.1f}x | "
                  f"{np.mean([d.mean() for d in diffs]):9.2f} {max(int(d.max()) for d in diffs):8d} "
                  f"{np.mean([d.max() > 8 for d in diffs]):9.0%}", flush=True)


if __name__ == "__main__":
    main()
