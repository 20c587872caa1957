"""Benchmark of occlusion attention maps (core.analysis.occlusion): a gallery page of 24 images.

1. Fashion-MNIST 28x28, the demo's CNN (``core/demo_model/model.keras``), a Keras run:
   a page of 24 rows not explained yet -> occlusion maps computed (37 forward passes per
   image), stored in the run, read back. Target: <= 2 s per page.
2. 224x224 RGB, torchvision's ResNet18 exported to ONNX (``--onnx``; made by
   ``tests/fixtures/make_torch_resnet18_onnx.py --width 1 --size 224 --epochs 0 --out
   FILE --expected none`` in a venv with torch; the cost does not depend on the weights),
   run by onnxruntime. Target: <= 20 s per page on 2 cores.

The model is loaded before timing (the dashboard keeps it); each page is new rows. The
load average and the CPU line are printed beside the figures: on a shared machine the
seconds move with the load. Usage:
python benchmarks/bench_occlusion.py [--onnx /tmp/resnet18_224.onnx] [--repeats 3]
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
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
from cpu_info import cpu_line  # noqa: E402  (this script's folder is on sys.path)

PAGE = 24


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def time_pages(run, rows: np.ndarray, repeats: int) -> list[float]:
    from core.analysis import occlusion
    from core.analysis.gradcam import _load_pixels, _run_input, explain_rows

    model = occlusion.run_model(run)  # loaded once, as the dashboard keeps it
    explain_rows(run, rows[:2], method="occlusion")  # warm-up (tracing), not timed
    # the floor: the same number of plain forward passes (batches of PASSES) on the page's images
    size, channels = _run_input(run, None)
    _, pixels, _ = _load_pixels(run, rows[2:2 + PAGE], size=size, channels=channels)
    passes = len(pixels) * occlusion.OcclusionConfig().passes_per_image
    batch = np.resize(pixels, (occlusion.PASSES, *pixels.shape[1:]))
    t0 = time.perf_counter()
    for _ in range(-(-passes // occlusion.PASSES)):
        model.predict_batch(batch)
    floor = time.perf_counter() - t0
    print(f"  {passes} plain forward passes (the floor for a page): {floor:.2f} s, {load()}", flush=True)
    times = []
    for k in range(repeats):
        page = rows[2 + k * PAGE:2 + (k + 1) * PAGE]
        t0 = time.perf_counter()
        att = explain_rows(run, page, method="occlusion")
        times.append(time.perf_counter() - t0)
        assert not att.skipped and np.isfinite(att.maps).all()
        print(f"  page {k + 1}: {times[-1]:.2f} s ({times[-1] / len(page):.3f} s per image; "
              f"{times[-1] / floor:.2f}x the floor), {load()}", flush=True)
    return times


def bench_fashion(folder: Path, repeats: int) -> None:
    from core.data.datasets import load_fashion_mnist
    from core.run.analyze import analyze
    from core.run.store import RunStore

    data = load_fashion_mnist()
    rows = np.flatnonzero(np.asarray(data.splits) == "test")[: PAGE * repeats + 2]
    model = ROOT / "core" / "demo_model" / "model.keras"
    run = analyze(model, data.subset(rows), store=RunStore(folder / "store"), run_id="fmnist-occlusion",
                  progress=False, projection=False)
    print(f"1. Fashion-MNIST 28x28, {model.relative_to(ROOT)} (Keras), pages of {PAGE}:")
    times = time_pages(run, np.arange(run.n_images), repeats)
    med = statistics.median(times)
    print(f"  median {med:.2f} s per page; target <= 2 s: {'meets' if med <= 2 else 'MISSES'}")


def bench_resnet(onnx: Path, folder: Path, repeats: int) -> None:
    import importlib.util

    import cv2

    from core.data.datasets import load_dataset
    from core.run.analyze import analyze
    from core.run.store import RunStore

    spec = importlib.util.spec_from_file_location("gen", ROOT / "tests/fixtures/make_torch_resnet18_onnx.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    images, labels = gen.make_images(n=PAGE * repeats + 2, size=224)
    data = folder / "images224"
    for i, (img, label) in enumerate(zip(images, labels)):
        (data / f"c{label}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / f"c{label}" / f"img_{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    for c in range(gen.N_CLASSES):  # every class folder exists, so the data set has the model's 6 classes
        (data / f"c{c}").mkdir(exist_ok=True)
    run = analyze(onnx, load_dataset(data), store=RunStore(folder / "store"), run_id="resnet18-occlusion",
                  progress=False, projection=False, scale="imagenet")
    print(f"2. 224x224 ResNet18 ONNX ({onnx.name}, {onnx.stat().st_size / 1e6:.1f} MB, onnxruntime), "
          f"pages of {PAGE}:")
    times = time_pages(run, np.arange(run.n_images), repeats)
    med = statistics.median(times)
    print(f"  median {med:.2f} s per page; target <= 20 s on 2 cores: {'meets' if med <= 20 else 'MISSES'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", type=Path, default=None, help="a 224x224 ResNet18 ONNX file (see above)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    print(f"{load()} (a shared machine: the seconds move with the load)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-occlusion-") as tmp:
        bench_fashion(Path(tmp), args.repeats)
        if args.onnx is None:
            print("2. skipped: pass --onnx FILE (a 224x224 ResNet18 ONNX; see the docstring)")
        else:
            bench_resnet(args.onnx, Path(tmp), args.repeats)


if __name__ == "__main__":
    main()
