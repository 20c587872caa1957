"""Benchmark: the demo recipe against the Fashion-MNIST report's network, same wall-clock training time.

Trains (no analysis) on Fashion-MNIST, 10% stratified validation, scored on
the 10,000 test images:

1. the demo (``core.demo.demo_recipe``: compact CNN with BatchNormalization,
   one-cycle learning rate planned over the time budget, bfloat16 where the
   CPU has it);
2. the report's exact network (Conv 32 -> MaxPool -> Conv 64 -> MaxPool ->
   Dense 256 -> Dropout 0.5 -> Dense 128 -> Dropout 0.5 -> softmax, Adam
   1e-3, batch 128, float32) for as many seconds as the demo trained.

Prints one line with seconds, epochs and test accuracy of both. About 12
minutes on 2 cores:

    .venv/bin/python benchmarks/bench_demo.py [--time-budget 330]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cpu_info import cpu_line  # noqa: E402  (this script's folder is on sys.path)

from core.data.datasets import load_fashion_mnist  # noqa: E402
from core.demo import cpu_has_fast_bfloat16, demo_recipe  # noqa: E402
from core.model.recipes import Recipe  # noqa: E402
from core.training import train  # noqa: E402


def report_recipe(*, seconds: float) -> Recipe:
    return Recipe(recipe="small-cnn", conv_filters=(32, 64), dense_units=(256, 128), dropout=0.5,
                  batch_size=128, epochs=1000, learning_rate=1e-3, optimizer="adam", lr_schedule="constant",
                  val_split=0.1, early_stopping=False, reduce_lr=False, checkpoint=False,
                  time_budget_s=seconds).validate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-budget", type=float, default=330.0)
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    data = load_fashion_mnist()
    bf16 = cpu_has_fast_bfloat16()
    with tempfile.TemporaryDirectory() as tmp:
        demo = train(data, demo_recipe(time_budget_s=args.time_budget), out_dir=Path(tmp) / "demo",
                     mixed_precision=bf16, verbose=2)
        report = train(data, report_recipe(seconds=demo.seconds), out_dir=Path(tmp) / "report", verbose=2)
    figures = {
        "demo": {"seconds": round(demo.seconds, 1), "epochs": demo.epochs, "test_accuracy": demo.test_accuracy,
                 "bfloat16": bf16},
        "report_cnn": {"seconds": round(report.seconds, 1), "epochs": report.epochs,
                       "test_accuracy": report.test_accuracy, "bfloat16": False},
    }
    print(json.dumps(figures), file=sys.stderr)
    print(f"bench_demo: demo-cnn{' (bf16)' if bf16 else ''} {demo.seconds:.1f} s, {demo.epochs} epochs, "
          f"test accuracy {demo.test_accuracy:.4f} | report CNN (fp32, Adam, batch 128) {report.seconds:.1f} s, "
          f"{report.epochs} epochs, test accuracy {report.test_accuracy:.4f} | "
          f"difference {100 * (demo.test_accuracy - report.test_accuracy):+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
