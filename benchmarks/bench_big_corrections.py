"""How long a corrections file far longer than the data set takes to be refused
(``core.review.corrections.apply_corrections_file``), and the peak memory of the process that refuses it,
this checkout against another git revision, side by side (each in its own child process).

    python benchmarks/bench_big_corrections.py --rows 1000000 [--old-rev 8ff5b05 --old-path core/review.py]

The data set is 15 small PNGs in three class folders; the file lists ``--rows`` paths it does not
have (each excluded). Prints the machine load and the CPU line.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    from benchmarks.cpu_info import cpu_line

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--old-rev", default="8ff5b05", help="git revision of the old module")
    parser.add_argument("--old-path", default="core/review.py", help="the module's path at that revision")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for c in ("cat", "dog", "fox"):
            (tmp / "data" / c).mkdir(parents=True)
            for i in range(5):
                cv2.imwrite(str(tmp / "data" / c / f"{i}.png"), np.full((8, 8, 3), 40 * i, np.uint8))
        file = tmp / "corrections.csv"
        with open(file, "w") as fh:
            fh.write("path,given_label,new_label,verdict,note,reviewer,time\n")
            fh.writelines(f"cat/img{i:07d}.png,cat,,exclude,,ann,\n" for i in range(args.rows))
        old = tmp / "old_review.py"
        old.write_text(subprocess.run(["git", "show", f"{args.old_rev}:{args.old_path}"], cwd=ROOT, check=True,
                                      capture_output=True, text=True).stdout)
        print(f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {cpu_line()}; "
              f"file {file.stat().st_size / 1e6:.0f} MB")
        for name, path in (("new", ROOT / "core" / "review" / "corrections.py"), ("old", old)):
            out = subprocess.run([sys.executable, __file__, "--child", str(path), str(tmp / "data"), str(file)],
                                 cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
            print(f"{name}: {args.rows:,} rows {out}")


def child(module_path: str, data: str, file: str) -> None:
    import resource

    from core.data.datasets import load_dataset

    dataset = load_dataset(data)
    module = _module(Path(module_path), "review_under_test")
    t0 = time.perf_counter()
    try:
        module.apply_corrections_file(dataset, Path(file))
        outcome = "accepted"
    except ValueError as exc:
        outcome = str(exc).splitlines()[0][:140]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"refused in {time.perf_counter() - t0:.2f} s, peak RSS {peak:.0f} MB: {outcome}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    else:
        main()
