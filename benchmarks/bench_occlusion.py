"""Benchmark of occlusion attention maps (core.analysis.occlusion): a gallery page of 24 images.

1. Fashion-MNIST 28x28, the demo's CNN (``core/demo_model/model.keras``), a Keras run.
   Target: <= 2 s per page.
2. 224x224 RGB, torchvision's ResNet18 exported to ONNX (``--onnx``; made by
   ``tests/fixtures/make_torch_resnet18_onnx.py --width 1 --size 224 --epochs 0 --out
   FILE --expected none`` in a venv with torch; the cost does not depend on the weights),
   run by onnxruntime. Target: <= 20 s per page on 2 cores.

Each page is new rows of a fresh run, computed as the dashboard does (``explain_rows`` with
the default, adaptive ``OcclusionConfig``: the grid is chosen on the first page from a timed
pass and kept for the run). The model is loaded and warmed up before timing (the dashboard
keeps it). Printed beside each page: the grid chosen, the machine's load average, and the
page's time in units of a *reference*: one plain forward batch of ``PASSES`` images of the same
run, timed just before the page (``ref``, ms per image). ``page / (24 x passes x ref)`` is the
overhead of occlusion over the bare passes (1.0 = none), and ``24 x passes x ref_quiet``,
with the fastest reference of the run, is what the page costs on the machine at its quietest in
this run: on a shared machine the seconds move with the load, the ratio much less. The
process's CPU time over the page, divided by the cores, is the other estimate of the page on an
idle machine (onnxruntime keeps both cores busy; its spinning threads inflate it under load). ``--fixed 7
5`` adds one page with each fixed grid (7: 7x7 cells, 37 passes per image; 5: 5x5 cells, 17
passes) for comparison with the grid the adaptive pages chose at this load. Usage:
python benchmarks/bench_occlusion.py [--onnx /tmp/resnet18_224.onnx] [--repeats 3] [--fixed 7 5]
    [--only fashion|resnet]
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

from core.analysis.occlusion import GRIDS  # noqa: E402  (numpy only; the models are imported when used)

PAGE = 24
CORES = len(os.sched_getaffinity(0))


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def reference(run, model, rows: np.ndarray, *, warm: bool) -> float:
    """Seconds per image of one plain forward batch of PASSES images of ``rows`` (``warm``: after a
    warm-up at that batch size, so that a Keras model's tracing is not timed)."""
    from core.analysis import occlusion
    from core.analysis.gradcam import _load_pixels, _run_input

    size, channels = _run_input(run, None)
    _, pixels, _ = _load_pixels(run, rows, size=size, channels=channels)
    batch = np.resize(pixels, (occlusion.PASSES, *pixels.shape[1:]))
    if warm:
        model.predict_batch(batch)  # tracing, memory arenas: not timed
    t0 = time.perf_counter()
    model.predict_batch(batch)
    return (time.perf_counter() - t0) / occlusion.PASSES


def time_pages(run, rows: np.ndarray, repeats: int, *, fixed: list[int]) -> list[float]:
    from core.analysis import occlusion
    from core.analysis.gradcam import explain_rows
    from core.run import derived

    model = occlusion.run_model(run)  # loaded once, as the dashboard keeps it
    refs, times = [], []
    for k in range(repeats + len(fixed)):
        page = rows[k * PAGE:(k + 1) * PAGE]
        refs.append(reference(run, model, page, warm=k == 0))
        t0, c0 = time.perf_counter(), time.process_time()
        if k < repeats:  # the dashboard's way: the adaptive grid, chosen on the first page
            att = explain_rows(run, page, method="occlusion")
            skipped, cost = att.skipped, att.cost
            what = f"page {k + 1}"
        else:
            grid = fixed[k - repeats]
            patch = dict(occlusion.GRIDS)[grid]
            stored = derived.get(run, occlusion.KIND, {"grid": grid, "patch": patch}, rows=page)
            skipped, cost = stored.skipped, stored.summary
            what = f"fixed {grid}x{grid} page"
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert not skipped, skipped
        if k < repeats:
            times.append(seconds)
        n_pass = cost["passes_per_image"]
        bare = PAGE * n_pass * refs[-1]
        print(f"  {what}: {seconds:.2f} s, {load()}; grid {cost['grid']}x{cost['grid']} ({n_pass} passes per "
              f"image{', ' + cost['grid_choice'] if k == 0 else ''}); ref {refs[-1] * 1e3:.1f} ms per image; "
              f"{seconds / bare:.2f}x the bare passes; at the quietest ref of the run "
              f"({min(refs) * 1e3:.1f} ms): {PAGE * n_pass * min(refs) * seconds / bare:.2f} s; CPU time of the "
              f"process {cpu:.1f} s = {cpu / CORES:.1f} s on {CORES} cores of its own", flush=True)
    return times


def bench_fashion(folder: Path, repeats: int, fixed: list[int]) -> None:
    from core.data.datasets import load_fashion_mnist
    from core.run.analyze import analyze
    from core.run.store import RunStore

    data = load_fashion_mnist()
    rows = np.flatnonzero(np.asarray(data.splits) == "test")[: PAGE * (repeats + len(fixed))]
    model = ROOT / "core" / "demo_model" / "model.keras"
    run = analyze(model, data.subset(rows), store=RunStore(folder / "store"), run_id="fmnist-occlusion",
                  progress=False, projection=False)
    print(f"1. Fashion-MNIST 28x28, {model.relative_to(ROOT)} (Keras), pages of {PAGE}:")
    times = time_pages(run, np.arange(run.n_images), repeats, fixed=fixed)
    if times:
        med = statistics.median(times)
        print(f"  median {med:.2f} s per page; target <= 2 s: {'meets' if med <= 2 else 'MISSES'}"
              f" (wall time at this load)")


def bench_resnet(onnx: Path, folder: Path, repeats: int, fixed: list[int]) -> None:
    import importlib.util

    import cv2

    from core.data.datasets import load_dataset
    from core.run.analyze import analyze
    from core.run.store import RunStore

    spec = importlib.util.spec_from_file_location("gen", ROOT / "tests/fixtures/make_torch_resnet18_onnx.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    images, labels = gen.make_images(n=PAGE * (repeats + len(fixed)), size=224)
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
    times = time_pages(run, np.arange(run.n_images), repeats, fixed=fixed)
    if times:
        med = statistics.median(times)
        print(f"  median {med:.2f} s per page; target <= 20 s on 2 cores: {'meets' if med <= 20 else 'MISSES'}"
              f" (wall time at this load)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", type=Path, default=None, help="a 224x224 ResNet18 ONNX file (see above)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fixed", type=int, nargs="*", default=[], choices=[g for g, _ in GRIDS],
                        help="also one page with each of these fixed grids (cells per side)")
    parser.add_argument("--only", choices=["fashion", "resnet"], default=None, help="run one of the two")
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    print(f"{load()} (a shared machine: the seconds move with the load)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-occlusion-") as tmp:
        if args.only != "resnet":
            bench_fashion(Path(tmp), args.repeats, args.fixed)
        if args.only == "fashion":
            pass
        elif args.onnx is None:
            print("2. skipped: pass --onnx FILE (a 224x224 ResNet18 ONNX; see the docstring)")
        else:
            bench_resnet(args.onnx, Path(tmp), args.repeats, args.fixed)


if __name__ == "__main__":
    main()
