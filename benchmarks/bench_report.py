"""Time and size of ``python -m core report RUN --html`` (a fresh process each time, as a user runs it).

    python benchmarks/bench_report.py --store /tmp/report_store --run fashion-mnist-demo [--repeat 3]

Prints, per image budget, the median wall-clock and CPU seconds of the whole
command (Python start and imports included), the file's size, with the machine
load and the CPU line beside them (timings on a shared machine are noisy).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_info import cpu_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one(store: str, run: str, out: Path, max_images: int | None) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "core", "report", run, "--store", store, "--html", str(out)]
    if max_images is not None:
        cmd += ["--max-images", str(max_images)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--budgets", default="default,0,400", help="comma-separated --max-images values")
    args = parser.parse_args()
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        for budget in args.budgets.split(","):
            n = None if budget == "default" else int(budget)
            out = Path(tmp) / f"report_{budget}.html"
            runs = [one(args.store, args.run, out, n) for _ in range(args.repeat)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(f"--max-images {budget:>7}: {wall:5.2f} s wall, {cpu:5.2f} s CPU (median of {args.repeat}), "
                  f"{out.stat().st_size / 1e6:.2f} MB; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
