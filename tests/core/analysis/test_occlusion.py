"""Occlusion attention for any model, and a PyTorch ResNet18 exported to ONNX really analysed.

* the pure functions on a model written as a Python function whose evidence is known;
* ``torch_resnet18.onnx`` (torchvision's ResNet18 at a quarter width, exported by
  ``torch.onnx.export``; ``data/make_torch_resnet18_onnx.py``): ``analyze`` with the
  ``imagenet`` scale agrees with PyTorch's own per-image predictions recorded beside it;
* ``explain --method occlusion`` on that ONNX run: maps stored as a derived kind, new rows
  extend the stored maps (earlier rows are neither recomputed nor changed), the cost line,
  and one-line refusals. No TensorFlow is needed for any of it.
"""

from __future__ import annotations

import doctest
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import core.analysis.occlusion as occlusion
from core.analysis.occlusion import OcclusionConfig, maps_from_drops, occlusion_maps
from core.run import derived

DATA = Path(__file__).resolve().parents[2] / "fixtures"
REPO = Path(__file__).resolve().parents[3]
ONNX = DATA / "torch_resnet18.onnx"
EXPECTED = DATA / "torch_resnet18_expected.npz"


def test_doctests():
    result = doctest.testmod(occlusion)
    assert result.attempted >= 4 and result.failed == 0


def _corner_model(x: np.ndarray) -> np.ndarray:
    """Class 1's logit is the top-left 8x8 corner's brightness: only that corner is evidence for it."""
    corner = x[:, :8, :8].astype(np.float64).mean(axis=(1, 2, 3)) / 32.0
    z = np.stack([np.zeros(len(x)), corner, -corner], axis=1)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_maps_find_the_evidence_of_a_known_model():
    rng = np.random.default_rng(0)
    pixels = np.zeros((3, 32, 32, 3), np.uint8)
    pixels[:, :8, :8] = 255                      # bright corner, dark elsewhere
    pixels += rng.integers(0, 10, pixels.shape, dtype=np.uint8)
    calls = []
    maps, empty, base = occlusion_maps(lambda b: calls.append(len(b)) or _corner_model(b), pixels,
                                       np.array([[1, 2]] * 3), grid=8, patch=2)
    assert maps.shape == (3, 2, 8, 8) and empty.shape == (3, 2)
    np.testing.assert_allclose(base, _corner_model(pixels))
    assert calls == [64, 64, 64]   # the 3 images and their 3 x 49 occluded copies, padded to 3 passes
    cls1 = maps[:, 0]
    assert not empty[:, 0].any()
    assert (cls1[:, :2, :2] > 0).all()               # the corner's cells
    assert (cls1[:, 4:, :] == 0).all() and (cls1[:, :, 4:] == 0).all()   # nothing far from it
    assert np.unravel_index(cls1[0].argmax(), (8, 8)) == (0, 0)
    assert empty[:, 1].all() and (maps[:, 1] == 0).all()  # hiding the corner only helps class 2


def test_maps_from_drops_averages_the_covering_patches():
    drops = np.arange(9, dtype=float)             # grid 4, patch 2: 3x3 patch positions
    got = maps_from_drops(drops, grid=4, patch=2)
    # cell (1, 1) is covered by patches (0,0), (0,1), (1,0), (1,1)
    assert got[1, 1] == pytest.approx(np.mean([0, 1, 3, 4]))
    assert got[0, 0] == 0 and got[3, 3] == 8


def test_config_is_validated():
    assert OcclusionConfig().passes_per_image is None            # chosen per run (core.analysis.occlusion.choose_grid)
    assert OcclusionConfig(grid=7, patch=2).passes_per_image == 37
    with pytest.raises(ValueError, match="grid must be an integer from 2 to 32. Received: grid=1"):
        OcclusionConfig(grid=1, patch=1)
    with pytest.raises(ValueError, match="patch must be an integer from 1 to grid - 1 = 6. Received: patch=7"):
        OcclusionConfig(grid=7, patch=7)
    with pytest.raises(ValueError, match="given together or not at all. Received: grid=7, patch=None"):
        OcclusionConfig(grid=7)
    with pytest.raises(ValueError, match="seconds_per_image must be a positive number. Received: 0"):
        OcclusionConfig(seconds_per_image=0)


def test_the_grid_is_the_finest_that_fits_the_budget():
    assert occlusion.choose_grid(0.001, 0.75) == (7, 2)             # 37 passes of 1 ms
    assert occlusion.choose_grid(0.75 / 26, 0.75) == (6, 2)         # exactly 26 passes fit
    assert occlusion.choose_grid(0.035, 0.75) == (5, 2)             # ResNet18 at 224 on 2 cores: 17 x 35 ms
    assert occlusion.choose_grid(10.0, 0.75) == occlusion.GRIDS[-1]  # nothing fits: the coarsest
    costs = [occlusion.passes(g, p) for g, p in occlusion.GRIDS]
    assert costs == sorted(costs, reverse=True)


# --------------------------------------------------------------------------- the PyTorch ResNet18

def _generator():
    spec = importlib.util.spec_from_file_location("make_torch_resnet18_onnx", DATA / "make_torch_resnet18_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports numpy only; torch is imported inside main()
    return module


@pytest.fixture(scope="module")
def resnet_tree(tmp_path_factory):
    """The generator's seeded images as PNG files in one folder per label (c0..c5)."""
    import cv2

    gen = _generator()
    images, labels = gen.make_images()
    root = tmp_path_factory.mktemp("resnet_data")
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / f"c{label}"
        folder.mkdir(exist_ok=True)
        assert cv2.imwrite(str(folder / f"img_{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return root


@pytest.fixture(scope="module")
def resnet_run(resnet_tree, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from core.data.datasets import load_dataset
    from core.run.analyze import analyze
    from core.run.store import RunStore

    store = RunStore(tmp_path_factory.mktemp("store"))
    return analyze(ONNX, load_dataset(resnet_tree), store=store, progress=False, projection=False,
                   scale="imagenet", batch_size=64)


def test_torch_resnet18_onnx_agrees_with_pytorch(resnet_run):
    expected = np.load(EXPECTED, allow_pickle=False)
    assert ONNX.stat().st_size < 12e6
    run = resnet_run
    assert run.manifest["model"]["format"] == "onnx" and run.manifest["model"]["outputs_were"] == "logits"
    # the run's rows -> the generator's image index, from the file names
    index = run.predictions["path"].astype(str).str.extract(r"img_(\d+)\.png")[0].astype(int).to_numpy()
    assert sorted(index) == list(range(len(expected["predicted"])))
    torch_pred = expected["predicted"][index]
    agreement = float((run.predictions["predicted"].to_numpy() == torch_pred).mean())
    assert agreement >= 0.995, agreement
    logits = expected["logits"][index].astype(np.float64)
    torch_probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    torch_probs /= torch_probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(run.probs, torch_probs, atol=1e-4)
    assert len(np.unique(torch_pred)) >= 4          # a model whose predictions vary, not one class
    assert (run.predictions["true"].to_numpy() == expected["labels"][index]).all()


def test_occlusion_on_the_onnx_run_extends_the_stored_maps(resnet_run):
    from core.analysis.gradcam import explain_rows

    run = resnet_run
    first = explain_rows(run, [0, 5, 9], method="occlusion")
    assert first.maps.shape == (3, 2, 64, 64) and not first.skipped
    assert np.isfinite(first.maps).all() and (~first.empty[:, 0]).sum() >= 2
    live = first.maps[~first.empty]
    assert np.allclose(live.max(axis=(1, 2)), 1.0) and (live.std(axis=(1, 2)) > 0.01).all()
    stored = derived.get(run, occlusion.KIND, compute=False)
    assert stored.array("rows").tolist() == [0, 5, 9] and stored.summary["passes_per_image"] == 37
    before = np.array(stored.array("coarse"))
    second = explain_rows(run, [5, 11, 0, 12], method="occlusion")
    stored = derived.get(run, occlusion.KIND, compute=False)
    assert stored.array("rows").tolist() == [0, 5, 9, 11, 12]          # extended, not rewritten
    np.testing.assert_array_equal(stored.array("coarse")[:3], before)  # earlier rows unchanged
    np.testing.assert_array_equal(second.maps[[2, 0]], first.maps[[0, 1]])
    assert stored.summary["rows"] == 5 and stored.summary["seconds_per_image"] > 0
    # the same maps as computing those rows afresh
    fresh = occlusion_maps(occlusion.run_model(run).predict_batch, _pixels(run, [11, 12]),
                           np.stack([run.predictions["predicted"].to_numpy()[[11, 12]],
                                     run.predictions["true"].to_numpy()[[11, 12]]], axis=1))[0]
    np.testing.assert_allclose(stored.array("coarse")[3:], fresh, atol=1e-6)


def _pixels(run, rows):
    from core.data.images import fit_to_input

    return np.stack([fit_to_input(run.image(r), size=(64, 64), channels=3) for r in rows])


def test_budget_leaves_rows_for_later(resnet_run):
    from core.analysis.gradcam import explain_rows

    got = explain_rows(resnet_run, list(range(40, 60)), method="occlusion", budget_s=1e-9)
    done = [r for r in got.rows if int(r) not in got.skipped]
    assert 0 < len(done) < 20                          # the first chunk, then the budget stops it
    assert all("over the time budget" in got.skipped[int(r)] for r in got.rows if int(r) in got.skipped)
    assert np.isnan(got.maps[[int(r) in got.skipped for r in got.rows]]).all()
    again = explain_rows(resnet_run, list(range(40, 60)), method="occlusion")
    assert not again.skipped


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_cli_explain_occlusion_on_onnx_prints_the_cost(resnet_run, tmp_path):
    store = Path(resnet_run.location).parent
    out = tmp_path / "maps"
    proc = subprocess.run([sys.executable, "-m", "core", "explain", resnet_run.id, "--store", str(store),
                           "--method", "occlusion", "--limit", "6", "--split", "all", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Occlusion cost: 37 forward passes per image (7x7 cells, chosen: a pass took" in proc.stderr
    index = pd.read_csv(out / "index.csv")
    assert len(index) == 6 and (out / index["overlay"].iat[0]).exists()
    assert np.load(out / "cams.npy", allow_pickle=False).shape == (6, 2, 64, 64)
    assert "tensorflow" not in proc.stderr.lower()
    bad = subprocess.run([sys.executable, "-m", "core", "explain", resnet_run.id, "--store", str(store),
                          "--method", "gradcam", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "--method occlusion" in lines[0]
