"""Benchmark: the Ray Data engine against the local engine, on this machine, in one run.

Writes a folder of JPEG images (default 2,000, 60x60, 18 classes) and an
untrained small CNN (the Simpsons report's shape) to a work folder, then:

1. **End to end**, as ``python -m core analyze`` runs: ``analyze(..., force=True)``
   with ``engine='local'``, then ``engine='ray'`` (which starts a local Ray with
   all CPUs, starts one actor per CPU, each importing TensorFlow and loading the
   model, and shuts Ray down), alternated for ``--rounds`` rounds; medians and
   the overhead ratio ray / local.
2. **Ray already running** (``init_ray`` once): the inference step alone,
   ``run_inference`` against ``run_inference_ray`` with as many actors as CPUs,
   alternated; ratio ray / local. Actor start-up is still in every Ray pass
   (Ray Data starts a pool per pass).
3. **Throughput against the number of actors** (1, 2, ...up to the CPUs),
   alternated: images/s over the whole pass, and after the first block arrived
   (actors started and warm), from the progress callback's timestamps.

The probabilities of both engines are compared once (max |difference|).
Timings on a shared machine are noisy: both sides are measured alternately,
and the load average is printed before and after.

Usage: python benchmarks/bench_ray.py [--images 2000] [--rounds 2] [--batch-size 128] [--work DIR]
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
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from cpu_info import cpu_line  # noqa: E402  (this script's folder is on sys.path)

from core.data.datasets import load_dataset  # noqa: E402
from core.model.load import build_inference_model, file_sha256, load_model  # noqa: E402
from core.run.analyze import analyze, run_inference  # noqa: E402
from core.run.ray_engine import RayOptions, init_ray, run_inference_ray  # noqa: E402
from core.run.store import RunStore  # noqa: E402


def write_images(root: Path, *, n: int, n_classes: int, size: int = 60) -> None:
    """``root/class_XX/NNNNN.jpg``: noisy colour squares, one hue per class."""
    rng = np.random.default_rng(0)
    hues = np.linspace(0, 179, n_classes, endpoint=False).astype(np.uint8)
    for i in range(n):
        c = i % n_classes
        hsv = np.empty((size, size, 3), np.uint8)
        hsv[..., 0], hsv[..., 1] = hues[c], 200
        hsv[..., 2] = rng.integers(60, 255, (size, size), dtype=np.uint8)
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))


def small_cnn(path: Path, *, n_classes: int, size: int = 60) -> None:
    """bench_core's CNN (the Simpsons report's shape), untrained, saved to ``path``."""
    import keras
    from bench_core import small_cnn as build

    keras.utils.set_random_seed(0)
    build((size, size, 3), n_classes).save(path)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


class Stamps:
    """A progress callback that remembers when each block of results arrived."""

    def __init__(self):
        self.times: list[float] = []
        self.done: list[int] = []

    def __call__(self, message: str, fraction: float) -> None:
        if "/" in message:  # 'Predicting on Ray (2 actors): 128/2,000 images'
            self.times.append(time.perf_counter())
            self.done.append(int(message.rsplit(": ", 1)[1].split("/")[0].replace(",", "")))

    def warm_rate(self) -> float:
        """Images per second from the first block's arrival to the last one's."""
        if len(self.times) < 2:
            return float("nan")
        return (self.done[-1] - self.done[0]) / max(self.times[-1] - self.times[0], 1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=18)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--work", default=None, help="folder for the images, model and runs (default: a temp dir)")
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    cpus = os.cpu_count() or 1
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-ray-"))
    images, model_path = work / "images", work / "model.keras"
    if not images.exists():
        write_images(images, n=args.images, n_classes=args.classes)
    if not model_path.exists():
        small_cnn(model_path, n_classes=args.classes)
    dataset = load_dataset(images)
    n = len(dataset)
    print(f"{n:,} JPEG images 60x60, {len(dataset.classes)} classes in {images}; {cpus} CPUs; "
          f"batch {args.batch_size}; load average {load_average()}")
    inference = build_inference_model(load_model(model_path))  # TensorFlow imported before any timing

    print("\n1. End to end (analyze, force=True, no UMAP); Ray started and stopped by each Ray run")
    local_s, ray_s = [], []
    for r in range(args.rounds):
        t_local, run_local = timed(lambda: analyze(model_path, dataset, store=RunStore(work / "store-local"),
                                                   force=True, projection=False, progress=False,
                                                   batch_size=args.batch_size))
        t_ray, run_ray = timed(lambda: analyze(model_path, dataset, store=RunStore(work / "store-ray"), force=True,
                                               projection=False, progress=False, batch_size=args.batch_size,
                                               engine="ray", ray_cpus=cpus))
        local_s.append(t_local)
        ray_s.append(t_ray)
        print(f"   round {r + 1}: local {t_local:6.1f} s   ray {t_ray:6.1f} s   ratio {t_ray / t_local:5.2f}")
    print(f"   median: local {statistics.median(local_s):.1f} s, ray {statistics.median(ray_s):.1f} s, "
          f"ray/local {statistics.median(ray_s) / statistics.median(local_s):.2f}")
    diff = float(np.abs(run_ray.probs - run_local.probs).max())
    same_rows = run_ray.predictions["path"].tolist() == run_local.predictions["path"].tolist()
    print(f"   same rows in the same order: {same_rows}; max |probability difference|: {diff:.2e}")

    started = init_ray(num_cpus=cpus)
    try:
        print(f"\n2. Inference step only, Ray already running ({cpus} actors; actor start-up in every Ray pass)")
        local_s, ray_s = [], []
        sha = file_sha256(model_path)
        for r in range(args.rounds):
            t_local, _ = timed(lambda: run_inference(inference, dataset, batch_size=args.batch_size, progress=False))
            t_ray, _ = timed(lambda: run_inference_ray(model_path, dataset, batch_size=args.batch_size,
                                                       expected_sha256=sha, options=RayOptions(actors=cpus),
                                                       progress=False))
            local_s.append(t_local)
            ray_s.append(t_ray)
            print(f"   round {r + 1}: local {t_local:6.1f} s ({n / t_local:6.0f} images/s)   "
                  f"ray {t_ray:6.1f} s ({n / t_ray:6.0f} images/s)   ratio {t_ray / t_local:5.2f}")
        print(f"   median ray/local {statistics.median(ray_s) / statistics.median(local_s):.2f}")

        print("\n3. Throughput against the number of actors (Ray already running)")
        counts = sorted({1, 2, cpus} - {0})
        whole: dict[int, list[float]] = {a: [] for a in counts}
        warm: dict[int, list[float]] = {a: [] for a in counts}
        for r in range(args.rounds):
            for actors in counts:
                stamps = Stamps()
                t, _ = timed(lambda: run_inference_ray(model_path, dataset, batch_size=args.batch_size,
                                                       expected_sha256=sha, options=RayOptions(actors=actors),
                                                       progress=stamps))
                whole[actors].append(n / t)
                warm[actors].append(stamps.warm_rate())
                print(f"   round {r + 1}, {actors} actor(s): {t:6.1f} s, {n / t:6.0f} images/s whole pass, "
                      f"{stamps.warm_rate():6.0f} images/s after the first block")
        base = counts[0]
        for actors in counts:
            w, h = statistics.median(whole[actors]), statistics.median(warm[actors])
            print(f"   median, {actors} actor(s): {w:6.0f} images/s whole pass "
                  f"(x{w / statistics.median(whole[base]):.2f}),"
                  f" {h:6.0f} images/s warm (x{h / statistics.median(warm[base]):.2f})")
    finally:
        if started:
            import ray

            ray.shutdown()
    print(f"\nload average at the end {load_average()} (a shared machine: read ratios, not seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
