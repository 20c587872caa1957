"""How long a corrections file far longer than the data set takes to be refused
(``core.review.corrections.apply_corrections_file``), this checkout against another git revision, side by side.

    python benchmarks/bench_big_corrections.py --rows 1000000

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
    from core.datasets import load_dataset

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--old-rev", default="8ff5b05", help="git revision of the old core/review.py")
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
        old.write_text(subprocess.run(["git", "show", f"{args.old_rev}:core/review.py"], cwd=ROOT, check=True,
                                      capture_output=True, text=True).stdout)
        dataset = load_dataset(tmp / "data")
        print(f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {cpu_line()}")
        for name, path in (("new", ROOT / "core" / "review.py"), ("old", old)):
            module = _module(path, f"review_{name}")
            t0 = time.perf_counter()
            try:
                module.apply_corrections_file(dataset, file)
                outcome = "accepted"
            except ValueError as exc:
                outcome = str(exc).splitlines()[0][:140]
            print(f"{name}: {args.rows:,} rows refused in {time.perf_counter() - t0:.2f} s: {outcome}")


if __name__ == "__main__":
    main()
