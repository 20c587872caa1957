"""Benchmark: is the tool right on models whose users prepared their inputs outside the model?

For each model of ``tests/core/data/preprocess_zoo.py`` (trained here in seconds on
seeded synthetic colour images the user's way, saved to a file), the test
folder is analysed by ``core.run.analyze.analyze`` from the model *file*, twice:

* with the option the README's table documents for that recipe: the run's
  accuracy against the user's own evaluation (the model loaded back from its
  file, fed the test images read and prepared the user's way), and the
  per-image agreement of the two predictions (targets: |delta| <= 0.1 point,
  agreement >= 99.5 %); and whether the input check (wrongly) fires;
* with the default options (--preprocess auto, --channel-order rgb): the
  accuracy, and the input check's suggestion: it must name the documented
  option (or one giving the same numbers) where the default is wrong, and stay
  silent where it is right.

The input check's own cost (seconds, sample size) is printed per model.
Usage: python benchmarks/bench_preprocess.py [--n-train 800] [--n-test 300] [--only cv2_bgr,...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from cpu_info import cpu_line  # noqa: E402


def _analyse(case, store, *, option: dict | None):
    from core.data.datasets import load_dataset
    from core.run.analyze import analyze

    dataset = load_dataset(case.data)
    option = option or {}
    run = analyze(case.model_path, dataset, store=store, progress=False, projection=False, force=True,
                  scale=option.get("scale", "auto"), channel_order=option.get("channel_order", "rgb"),
                  class_source="sorted alphabetically")
    preds = run.predictions.sort_values("path")
    return run, preds["predicted"].to_numpy(), preds["path"].to_numpy()


def _same_numbers(suggested: str | None, option: dict) -> bool:
    from core.data.preprocess import Preprocessing

    if suggested is None:
        return False
    want = Preprocessing(option.get("scale", "auto"), option.get("channel_order", "rgb")).canonical()
    return Preprocessing.parse(suggested).canonical() == want


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--only", default=None, help="comma-separated zoo names")
    args = parser.parse_args(argv)
    from core.quiet import quiet_start

    quiet_start()
    from core.run.store import RunStore
    from tests.core.data.preprocess_zoo import BUILDERS

    names = [n.strip() for n in args.only.split(",")] if args.only else list(BUILDERS)
    print(cpu_line())
    print(f"load average {os.getloadavg()[0]:.2f}; {args.n_train} training and {args.n_test} test images "
          "per model, 32x32 colour")
    header = (f"{'model (user recipe)':<50} {'option':<30} {'user acc':>8} {'tool acc':>8} {'delta pt':>8} "
              f"{'agree %':>7} {'fires':>5} | {'default acc':>11} {'default check says':<34} {'ok':>3} "
              f"{'check s':>7}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        store = RunStore(Path(tmp) / "store")
        for name in names:
            t0 = time.perf_counter()
            case = BUILDERS[name](Path(tmp) / name, n_train=args.n_train, n_test=args.n_test)
            train_s = time.perf_counter() - t0
            run, tool_pred, paths = _analyse(case, store, option=case.option)
            files = sorted(str(p.relative_to(case.data)) for p in case.data.rglob("*.png"))
            assert list(paths) == files, "run rows and the user's files differ"
            user_acc = float((case.user_predictions == case.labels).mean())
            tool_acc = float(run.metrics["accuracy"])
            agree = float((tool_pred == case.user_predictions).mean())
            documented_check = run.model_info.input_check or {}
            fires = bool(documented_check.get("suggested") or documented_check.get("class_order"))
            default_run, _, _ = _analyse(case, store, option=None)
            check = default_run.model_info.input_check or {}
            suggested = check.get("suggested")
            if case.default_is_right:
                ok = suggested is None and not check.get("class_order")
                says = "(silent)" if ok else f"WRONGLY fires: {suggested}"
            else:
                ok = _same_numbers(suggested, case.option)
                says = f"suggests {suggested}" if suggested else "(silent: MISSED)"
            option = " ".join(f"{k}={v}" for k, v in case.option.items())
            rows.append((case.name, option, user_acc, tool_acc, agree, fires, default_run.metrics["accuracy"], says,
                         ok, default_run.timings.get("input_check_s", float("nan")), check.get("sample", 0),
                         train_s))
    print(header)
    for (name, option, user_acc, tool_acc, agree, fires, default_acc, says, ok, check_s, sample, _) in rows:
        print(f"{name[:50]:<50} {option:<30} {user_acc:>8.4f} {tool_acc:>8.4f} {100 * (tool_acc - user_acc):>8.2f} "
              f"{100 * agree:>7.2f} {'YES' if fires else 'no':>5} | {default_acc:>11.4f} {says[:34]:<34} "
              f"{'yes' if ok else 'NO':>3} {check_s:>7.2f}")
    sample = max((r[10] for r in rows), default=0)
    print(f"input check: {sample} sampled images per run, at most 9 extra predictions each; 'check s' is its time")
    met = all(abs(r[3] - r[2]) <= 0.001 and r[4] >= 0.995 and not r[5] and r[8] for r in rows)
    print("targets (|delta| <= 0.1 pt, agreement >= 99.5 %, silent with the documented option, right with the "
          f"default): {'all met' if met else 'NOT all met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
