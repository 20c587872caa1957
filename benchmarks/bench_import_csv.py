"""Peak memory and time of reading a predictions CSV (``core.run.importer.read_predictions``), side by side
for this checkout's reader and the reader of another git revision (default: the one before the
streaming reader), each in a fresh process.

    python benchmarks/bench_import_csv.py --rows 50000 --classes 1000 --old-rows 10000

``--old-rows`` sizes the old reader's file separately (it kept every cell as a Python string: 5.8 GB
at 50,000 x 1,000); both are reported per million cells. Prints the machine load and the CPU line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MEASURE = textwrap.dedent("""
    import importlib.util, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    spec = importlib.util.spec_from_file_location("importer_under_test", sys.argv[2])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    classes = [f"c{k}" for k in range(int(sys.argv[4]))]
    import gc; gc.collect()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    preds = module.read_predictions(sys.argv[3], classes=classes)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{preds.probs.shape[0]} {seconds:.2f} {base / 1024:.0f} {peak / 1024:.0f}")
""")


def write_csv(path: Path, rows: int, classes: int, seed: int = 0) -> None:
    """``rows`` rows of seeded random probabilities: 1,000 distinct rows repeated under new paths
    (formatting 50 million numbers in Python would take longer than the reading measured)."""
    rng = np.random.default_rng(seed)
    p = rng.random((1000, classes))
    p /= p.sum(axis=1, keepdims=True)
    bodies = ["," + ",".join(f"{v:.7f}" for v in row) + "\n" for row in p]
    with open(path, "w") as fh:
        fh.write("path," + ",".join(f"c{k}" for k in range(classes)) + "\n")
        for i in range(rows):
            fh.write(f"img/{i:07d}.png{bodies[i % 1000]}")


def measure(importer: Path, csv: Path, classes: int) -> tuple[int, float, float, float]:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), str(importer), str(csv), str(classes)],
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    rows, seconds, base, peak = done.stdout.split()
    return int(rows), float(seconds), float(base), float(peak)


def main() -> None:
    from benchmarks.cpu_info import cpu_line

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--old-rows", type=int, default=None, help="rows of the old reader's file (default --rows)")
    parser.add_argument("--old-rev", default="8ff5b05", help="git revision of the old reader")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = tmp / "old_importer.py"
        old.write_text(subprocess.run(["git", "show", f"{args.old_rev}:core/run/importer.py"], cwd=ROOT, check=True,
                                      capture_output=True, text=True).stdout)
        sizes = {"new": args.rows, "old": args.old_rows or args.rows}
        files = {}
        for n in sorted(set(sizes.values())):
            files[n] = tmp / f"p{n}.csv"
            write_csv(files[n], n, args.classes)
        print(f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {cpu_line()}")
        for name, module in (("new", ROOT / "core" / "run" / "importer.py"), ("old", old)):
            n = sizes[name]
            rows, seconds, base, peak = measure(module, files[n], args.classes)
            cells = rows * args.classes / 1e6
            print(f"{name}: {rows:,} x {args.classes:,} ({files[n].stat().st_size / 1e6:.0f} MB): {seconds:.1f} s, "
                  f"peak RSS {peak:.0f} MB (after imports {base:.0f} MB; {(peak - base) / cells:.0f} MB per "
                  f"million cells)")


if __name__ == "__main__":
    main()
