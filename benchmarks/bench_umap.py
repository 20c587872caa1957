"""Benchmark: the run's UMAP map (core.umap_map.project) against umap-learn's seeded defaults.

Both sides map the same embeddings (the demo run's 70,000 x 128 by default)
to 2-D, each in a fresh Python process timed from start to finish (imports,
numba compilation and the map), alternately in one run so that the load of a
shared machine falls on both:

* default: ``umap.UMAP(random_state=0).fit_transform(embeddings)``;
* ours: ``core.umap_map.project(embeddings)`` with the run's default
  ``ProjectionConfig``.

Numba's on-disk cache starts empty for every process (NUMBA_CACHE_DIR set to
a fresh folder), as on a fresh install; ``--cache warm`` fills one cache
folder per side first with an untimed process on 5,000 rows, as after
``setup.sh`` (which runs ``python -m core.projection --warm-up``). Neighbourhood preservation is
``sklearn.manifold.trustworthiness`` (k = 10) of each map against the
embeddings on the same seeded 5,000-point sample. Prints the CPU's AVX-512
and AMX flags, the seconds of every process, the ratio of the medians, both
trustworthiness figures, and whether ours gave the same map twice. About 5
minutes on 2 cores with the defaults:

    .venv/bin/python benchmarks/bench_umap.py [--run fashion-mnist-demo] [--store artifacts] [--repeats 2]
    .venv/bin/python benchmarks/bench_umap.py --embeddings emb.npy
    .venv/bin/python benchmarks/bench_umap.py --embeddings emb.npy --max-fit 100000 --repeats 1   # sampled path
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cpu_info import cpu_line  # noqa: E402

SIDES = ("default", "ours")
SAMPLE = 5_000
K = 10


def map_once(side: str, embeddings: Path, out: Path, max_fit: int | None = None) -> None:
    """In a child process: compute one map and save it (the parent times the whole process).

    With ``max_fit`` (fewer than the rows): umap-learn's defaults fitted on the
    same seeded sample that ``project`` fits, the other rows placed by its
    ``transform``; ours is ``project(x, max_fit=max_fit)``.
    """
    from core.quiet import quiet_start

    quiet_start()  # no TensorFlow chatter when the default side's `import umap` loads it
    x = np.load(embeddings, allow_pickle=False)
    if side == "default":
        import umap

        if max_fit is None or max_fit >= len(x):
            xy = umap.UMAP(random_state=0).fit_transform(x)
        else:
            fit = np.sort(np.random.default_rng(0).choice(len(x), max_fit, replace=False))  # project's sample
            rest = np.setdiff1d(np.arange(len(x)), fit)
            reducer = umap.UMAP(random_state=0)
            xy = np.empty((len(x), 2), np.float32)
            xy[fit] = reducer.fit_transform(x[fit])
            xy[rest] = reducer.transform(x[rest])
    else:
        from core.umap_map import project

        xy, _ = project(x) if max_fit is None else project(x, max_fit=max_fit)
    np.save(out, np.asarray(xy, dtype=np.float32), allow_pickle=False)


def run_side(side: str, embeddings: Path, out: Path, *, cache_dir: Path,
             max_fit: int | None = None) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, all threads) of one child process."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONWARNINGS": "ignore"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", side, str(embeddings), str(out), str(max_fit or "")],
                   check=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def trustworthiness_on_sample(x: np.ndarray, xy: np.ndarray, *, seed: int = 0) -> float:
    from sklearn.manifold import trustworthiness

    rows = np.random.default_rng(seed).choice(len(x), min(SAMPLE, len(x)), replace=False)
    return float(trustworthiness(x[rows], xy[rows], n_neighbors=K))


def load_embeddings(args) -> np.ndarray:
    if args.embeddings:
        return np.load(args.embeddings, allow_pickle=False)
    from core.store import RunStore

    run = RunStore(args.store).load(args.run)
    if run.embeddings is None:
        sys.exit(f"error: run {args.run!r} has no embeddings")
    return np.asarray(run.embeddings, dtype=np.float32)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        map_once(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]) if sys.argv[5:] and sys.argv[5] else None)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="fashion-mnist-demo")
    parser.add_argument("--store", default=None, help="run store (default: $ARTIFACTS_DIR or artifacts/)")
    parser.add_argument("--embeddings", default=None, help="an (N, D) .npy file instead of a run's embeddings")
    parser.add_argument("--repeats", type=int, default=2, help="processes per side (alternating)")
    parser.add_argument("--max-fit", type=int, default=None,
                        help="fit both sides on the same seeded sample of this many rows; umap-learn places the "
                             "rest with transform, ours with project(max_fit=...)")
    parser.add_argument("--cache", choices=["cold", "warm"], default="cold",
                        help="cold: numba's on-disk cache empty in every process (a fresh install); warm: "
                             "each side's cache filled first by one untimed process on 5,000 rows (as "
                             "setup.sh does for the map with 'python -m core.projection --warm-up')")
    args = parser.parse_args()
    x = load_embeddings(args)
    print(cpu_line())
    print(f"embeddings: {x.shape[0]:,} x {x.shape[1]}; {args.repeats} process(es) per side, alternating; "
          f"numba cache {'filled first' if args.cache == 'warm' else 'empty in every process'}"
          + (f"; both fitted on the same {args.max_fit:,} sampled rows" if args.max_fit else ""))
    seconds: dict[str, list[float]] = {s: [] for s in SIDES}
    cpu: dict[str, list[float]] = {s: [] for s in SIDES}
    maps: dict[str, list[np.ndarray]] = {s: [] for s in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        emb = tmp / "embeddings.npy"
        np.save(emb, x, allow_pickle=False)
        if args.cache == "warm":
            np.save(tmp / "warm-up.npy", x[:5_000], allow_pickle=False)
            for side in SIDES:
                run_side(side, tmp / "warm-up.npy", tmp / "warm-up-out.npy", cache_dir=tmp / f"cache-{side}")
        for i in range(args.repeats):
            for side in (SIDES if i % 2 == 0 else SIDES[::-1]):
                cache = tmp / (f"cache-{side}" if args.cache == "warm" else f"cache-{side}-{i}")
                out = tmp / f"{side}-{i}.npy"
                wall, used = run_side(side, emb, out, cache_dir=cache, max_fit=args.max_fit)
                seconds[side].append(wall)
                cpu[side].append(used)
                maps[side].append(np.load(out))
                print(f"  {side:<7} process {i + 1}: {wall:6.1f} s wall, {used:6.1f} s CPU "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    med = {s: float(np.median(v)) for s, v in seconds.items()}
    med_cpu = {s: float(np.median(v)) for s, v in cpu.items()}
    trust = {s: trustworthiness_on_sample(x, maps[s][0]) for s in SIDES}
    same = all(np.array_equal(maps["ours"][0], m) for m in maps["ours"][1:])
    figures = {"n": int(x.shape[0]), "d": int(x.shape[1]), "seconds": seconds, "median_s": med,
               "speedup": med["default"] / med["ours"], "cpu_seconds": cpu, "median_cpu_s": med_cpu,
               "cpu_ratio": med_cpu["default"] / med_cpu["ours"], "trustworthiness": trust,
               "trustworthiness_difference": trust["ours"] - trust["default"], "ours_repeatable": same,
               "numba_cache": args.cache}
    print(json.dumps(figures), file=sys.stderr)
    repeat = ("ours gave the same map twice: " + ("yes" if same else "NO")) if args.repeats > 1 else ""
    print(f"bench_umap: umap-learn defaults {med['default']:.1f} s, ours {med['ours']:.1f} s (medians of "
          f"{args.repeats}): {figures['speedup']:.2f}x faster | CPU time {med_cpu['default']:.1f} s vs "
          f"{med_cpu['ours']:.1f} s: {figures['cpu_ratio']:.2f}x | trustworthiness (k={K}, {SAMPLE:,}-point sample) "
          f"defaults {trust['default']:.4f}, ours {trust['ours']:.4f} ({trust['ours'] - trust['default']:+.4f}) | "
          f"{repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
