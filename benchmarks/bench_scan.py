"""Benchmark of the image scan (``image_scan``, ``core.diagnose.properties``) with and without the ``subject``
property, side by side in one process: what measuring the share of each picture that differs from its border's
colour costs on top of decoding, thumbnails, digests and the other properties.

Runs ``scan_images`` on a run (the Fashion-MNIST demo run by default: 70,000 images of 28x28 stored with
the run, read by threads; ``--folder`` makes a folder run of ``--n`` generated 224x224 JPEG photos instead,
read by worker processes), alternately with ``subject_share`` and ``subject_shares`` (which a scan of images
stored with the run measures by chunk) as they are and replaced by constants, ``--repeats`` times each, and
prints the median of each and their ratio.

Usage: python benchmarks/bench_scan.py [--demo-store /tmp/causes_store] [--repeats 3] [--folder --n 4000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
from cpu_info import cpu_line  # noqa: E402  (this script's folder is on sys.path)

from core.diagnose import properties  # noqa: E402
from core.run.store import RunStore  # noqa: E402


def folder_run(tmp: str, n: int):
    import cv2

    from core.run.write import write_run

    rng = np.random.default_rng(0)
    root = Path(tmp) / "photos"
    paths = []
    for i in range(n):
        img = np.ones((224, 224, 3)) * rng.uniform(0, 255, 3)
        cv2.circle(img, tuple(int(v) for v in rng.integers(40, 184, 2)), int(rng.integers(10, 60)),
                   tuple(float(v) for v in rng.uniform(0, 255, 3)), -1)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        rel = f"c{i % 4}/{i:05d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), img)
        paths.append(rel)
    probs = np.full((n, 4), 0.25)
    return write_run(RunStore(Path(tmp) / "store"), "photos", classes=["a", "b", "c", "d"],
                     y_true=np.arange(n) % 4, probs=probs, paths=paths, splits=np.array(["test"] * n),
                     data={"name": "photos", "root": str(root), "images_in_run": False})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-store", default="/tmp/causes_store")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", action="store_true", help="a folder of generated 224x224 JPEG photos")
    parser.add_argument("--n", type=int, default=4000)
    args = parser.parse_args()
    print(cpu_line(), f"load {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = folder_run(tmp, args.n) if args.folder else RunStore(args.demo_store).load("fashion-mnist-demo")
        measured = properties.subject_share, properties.subject_shares
        constant = (lambda img: 0.0), (lambda images: np.zeros(len(images)))
        times, medians = {"with subject": [], "without": []}, []
        for _ in range(args.repeats):
            for side in times:
                properties.subject_share, properties.subject_shares = measured if side == "with subject" else constant
                t0 = time.perf_counter()
                scan = properties.scan_images(run)
                times[side].append(time.perf_counter() - t0)
                if side == "with subject":
                    medians.append(float(scan.properties["subject"].median()))
        properties.subject_share, properties.subject_shares = measured
    with_s, without = statistics.median(times["with subject"]), statistics.median(times["without"])
    print(f"image scan of {run.n_images:,} images ({'generated 224x224 JPEG folder' if args.folder else run.id}), "
          f"median of {args.repeats}: with subject {with_s:.2f} s, without {without:.2f} s, "
          f"ratio {with_s / without:.2f}; median subject {medians[-1]:.3f}")


if __name__ == "__main__":
    main()
