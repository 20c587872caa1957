"""Benchmark of ``python -m core diagnose`` on a 70,000-image run: every kind in DIAGNOSES timed.

Builds a synthetic run like the Fashion-MNIST demo's (``make_synthetic_run``:
70,000 rows, 10 classes, 32-d embeddings, 16x16 images in the run, a quarter
of it the test split), or takes an existing run (``--run ID [--store PATH]``,
e.g. the demo run after ``python -m core demo``). Then, ``--repeats`` times,
alternately:

* compute: ``python -m core diagnose RUN --force`` in a fresh process (start-up
  and imports included), with each kind's own time read from the manifest;
* read back: ``python -m core diagnose RUN`` in a fresh process, every result
  already stored (what a second call, or the dashboard, pays).

Prints the median time of each kind, of the whole compute command (target:
under 30 s on 2 cores) and of the read-back, and their ratio. The machine may
be shared with other work: the two sides alternate so that load hits both.

Usage: python benchmarks/bench_diagnose.py [--n 70000] [--repeats 3] [--run ID --store PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu_info import cpu_line  # noqa: E402  (this script's folder is on sys.path)

from core.diagnose import DIAGNOSES  # noqa: E402
from core.run.store import RunStore  # noqa: E402
from core.run.synthetic import make_synthetic_run  # noqa: E402

TARGET_S = 30.0


def diagnose(store: Path, run_id: str, *, force: bool) -> tuple[float, int, str]:
    cmd = [sys.executable, "-m", "core", "diagnose", run_id, "--store", str(store)] + (["--force"] if force else [])
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return time.perf_counter() - t0, done.returncode, done.stdout + done.stderr[-1500:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=70000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", default=None, help="an existing run instead of a synthetic one")
    parser.add_argument("--store", default=None, help="its store (default: $ARTIFACTS_DIR or ./artifacts)")
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    print(f"kinds in DIAGNOSES: {', '.join(DIAGNOSES)}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            store, run_id = RunStore(args.store), args.run
        else:
            store, run_id = RunStore(tmp), "synthetic-70k"
            t0 = time.perf_counter()
            make_synthetic_run(store, run_id, n=args.n, n_classes=10, history=False)
            print(f"synthetic run of {args.n:,} images written in {time.perf_counter() - t0:.1f} s")
        run = store.load(run_id)
        print(f"run {run_id!r}: {run.n_images:,} images, {len(run.classes)} classes, evaluated split "
              f"{run.eval_split!r} ({int(run.eval_mask().sum()):,}), embeddings "
              f"{None if run.embeddings is None else run.embeddings.shape}")
        compute, read, per_kind = [], [], {}
        for i in range(args.repeats):
            seconds, rc, output = diagnose(store.root, run_id, force=True)
            compute.append(seconds)
            if i == 0:
                print(output.strip().splitlines()[0] if rc == 0 else output)
            for info in store.load(run_id).derived_infos():
                if info.name in DIAGNOSES and info.seconds is not None:
                    per_kind.setdefault(info.name, []).append(info.seconds)
            seconds, rc, _ = diagnose(store.root, run_id, force=False)
            read.append(seconds)
        print(f"\nmedians of {args.repeats} (compute and read-back alternating; the machine may be shared):")
        for name in DIAGNOSES:
            times = per_kind.get(name)
            print(f"  {name:<20} {statistics.median(times):7.2f} s" if times else f"  {name:<20}  skipped")
        total = statistics.median(compute)
        kinds_total = sum(statistics.median(v) for v in per_kind.values())
        print(f"  {'(kinds together)':<20} {kinds_total:7.2f} s")
        print(f"diagnose --force, whole command in a fresh process: {total:.2f} s "
              f"(target < {TARGET_S:.0f} s: {'met' if total < TARGET_S else 'NOT met'}; "
              f"runs {', '.join(f'{x:.1f}' for x in compute)})")
        print(f"diagnose, results stored (read back): {statistics.median(read):.2f} s; "
              f"compute / read-back = {total / statistics.median(read):.1f}x")


if __name__ == "__main__":
    main()
