"""Verdicts written per second into the review database with 1 and with 8 concurrent writer processes.

    .venv/bin/python benchmarks/bench_review.py [--seconds 3] [--rounds 3] [--writers 8] [--dir PATH]

Each writer is a separate Python process using ``core.review.verdicts.ReviewDB.mark`` (what ``python -m core
review mark`` and the dashboard call): one ``BEGIN IMMEDIATE`` transaction per verdict, committed
with ``synchronous=FULL`` before the id is returned. Writers start, open the database, then wait
for a common start signal, so imports and start-up are not timed; each writes for ``--seconds`` and
reports its count and per-verdict latencies (from the call to the committed id: waits for the
write lock included, so with 8 writers the mean is far above the median). Rounds alternate 1 writer and N writers on a fresh
database each, so both sides see the same machine load; the ratio is taken per pair of rounds.
On a shared machine the absolute numbers move with the load: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpu_info import cpu_line  # this script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]

WRITER = """
import json, sys, time
from core.review.verdicts import ReviewDB
db, name, seconds = ReviewDB(sys.argv[1]), sys.argv[2], float(sys.argv[3])
db.revision()
db.history("warm-up")  # opens this process's connection
print("ready", flush=True)
sys.stdin.readline()
latencies, t0 = [], time.perf_counter()
while time.perf_counter() - t0 < seconds:
    t = time.perf_counter()
    db.mark(dataset="bench", path=f"{name}/{len(latencies)}", verdict="label-wrong", label="cat",
            note="bench", reviewer=name)
    latencies.append(time.perf_counter() - t)
print(json.dumps({"count": len(latencies), "elapsed": time.perf_counter() - t0, "latencies": latencies}))
"""


def one_round(folder: Path, writers: int, seconds: float) -> dict:
    """Run ``writers`` processes against a fresh database; returns verdicts/s and latencies."""
    from core.review.verdicts import ReviewDB

    db_file = folder / f"verdicts-{writers}-{time.time_ns()}.sqlite"
    ReviewDB(db_file).history("create")  # schema made before the writers start
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db_file), f"w{j}", str(seconds)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for j in range(writers)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.communicate()[0]) for p in procs]
    total = sum(r["count"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    latencies = sorted(x for r in results for x in r["latencies"])
    db = ReviewDB(db_file)
    stored = len(db.history("bench"))
    if stored != total:
        raise SystemExit(f"lost verdicts: {total} acknowledged, {stored} stored")
    return {"writers": writers, "verdicts": total, "per_s": total / elapsed,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p95_ms": 1000 * latencies[int(len(latencies) * 0.95)], "max_ms": 1000 * latencies[-1],
            "mean_ms": 1000 * statistics.fmean(latencies),
            "integrity": db.integrity_check()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="writing time per round")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of rounds (1 writer, then N)")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--dir", default=None, help="folder for the databases (default: a temporary folder)")
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    sys.path.insert(0, str(REPO))
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-review-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"databases in {folder}; {args.seconds:g} s per round; synchronous=FULL, WAL")
    print(f"{'round':>5} {'writers':>7} {'verdicts':>8} {'per s':>8} {'mean ms':>7} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'max ms':>7}  integrity")
    pairs = []
    for i in range(args.rounds):
        pair = []
        for writers in (1, args.writers):
            r = one_round(folder, writers, args.seconds)
            pair.append(r)
            print(f"{i + 1:>5} {writers:>7} {r['verdicts']:>8,} {r['per_s']:>8.0f} {r['mean_ms']:>7.1f} "
                  f"{r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} {r['max_ms']:>7.0f}  {r['integrity']}")
        pairs.append(pair)
    one = statistics.median(p[0]["per_s"] for p in pairs)
    many = statistics.median(p[1]["per_s"] for p in pairs)
    ratios = [p[1]["per_s"] / p[0]["per_s"] for p in pairs]
    print(f"median verdicts/s: 1 writer {one:.0f}, {args.writers} writers {many:.0f} (all together); "
          f"ratio {args.writers}/1 per pair: {', '.join(f'{x:.2f}' for x in ratios)} "
          f"(median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
