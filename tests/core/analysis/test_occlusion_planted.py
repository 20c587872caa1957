"""Occlusion maps are faithful: they peak where a planted discriminative patch is.

A red-square detector written to an ONNX file (1x1 convolution "red minus the mean of green
and blue", ReLU, global average pool, a Gemm to the classes plain/red), saved with
``onnx.save`` and loaded back by ``core.run.analyze`` the way a user's model is. 224x224 images
(seeded): a grey noisy background, and for class "red" a red square at a seeded place. The map
of the true class "red" must peak on a cell that overlaps the square and be zero on the cells far
from it, for the fixed 7 x 7 grid, for the adaptive choice (default budget) and for the adaptive
choice forced to its coarsest grid by a tiny budget (the grid a slow model gets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.analysis.occlusion import GRIDS, KIND, OcclusionConfig, cell_edges
from core.run import derived

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SIZE = 224
SQUARE = 56
N_PER_CLASS = 6


def _write_detector(path: Path) -> None:
    weights = {"W": np.array([1.0, -0.5, -0.5], np.float32).reshape(1, 3, 1, 1),
               "b": np.array([-0.3], np.float32),
               "G": np.array([[-120.0], [120.0]], np.float32), "c": np.array([1.0, -1.0], np.float32)}
    nodes = [helper.make_node("Conv", ["image", "W", "b"], ["redness"], name="redness"),
             helper.make_node("Relu", ["redness"], ["red_relu"], name="red_relu"),
             helper.make_node("GlobalAveragePool", ["red_relu"], ["pooled"], name="gap"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "G", "c"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "red_square", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _images(seed: int = 7) -> tuple[list[np.ndarray], list[str], list[tuple[int, int] | None]]:
    rng = np.random.default_rng(seed)
    images, labels, corners = [], [], []
    for i in range(2 * N_PER_CLASS):
        grey = rng.uniform(90, 170)
        img = np.clip(grey + rng.normal(0, 10, (SIZE, SIZE, 1)) + rng.normal(0, 4, (SIZE, SIZE, 3)), 0, 255)
        corner = None
        if i % 2:
            corner = tuple(int(v) for v in rng.integers(0, SIZE - SQUARE, 2))
            y, x = corner
            img[y:y + SQUARE, x:x + SQUARE] = rng.uniform([200, 10, 10], [250, 50, 50])
        images.append(img.astype(np.uint8))
        labels.append("red" if corner else "plain")
        corners.append(corner)
    return images, labels, corners


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    import cv2

    from core.data.datasets import load_dataset
    from core.run.analyze import analyze
    from core.run.store import RunStore

    root = tmp_path_factory.mktemp("planted")
    model = root / "red_square.onnx"
    _write_detector(model)
    images, labels, corners = _images()
    for i, (img, label) in enumerate(zip(images, labels)):
        (root / "data" / label).mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / "data" / label / f"img_{i:02d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    run = analyze(model, load_dataset(root / "data"), store=RunStore(root / "store"), progress=False,
                  projection=False, scale="unit")
    index = run.predictions["path"].astype(str).str.extract(r"img_(\d+)\.png")[0].astype(int).to_numpy()
    return run, {int(row): corners[i] for row, i in enumerate(index)}


def _check_peaks(coarse: np.ndarray, rows: np.ndarray, corner_of: dict, grid: int) -> None:
    edges = cell_edges(SIZE, grid)
    for maps, row in zip(coarse, rows):
        y, x = corner_of[int(row)]
        red = maps[1]                                  # the true class, "red"
        a, b = np.unravel_index(red.argmax(), red.shape)
        assert red[a, b] > 0
        # the peak cell overlaps the square
        assert edges[a] < y + SQUARE and edges[a + 1] > y and edges[b] < x + SQUARE and edges[b + 1] > x, \
            (row, (a, b), (y, x), grid)
        # cells at least a patch's width away from every cell the square touches carry no evidence
        touched_rows = np.flatnonzero((edges[:-1] < y + SQUARE) & (edges[1:] > y))
        touched_cols = np.flatnonzero((edges[:-1] < x + SQUARE) & (edges[1:] > x))
        far = np.ones_like(red, bool)
        reach = 2 * (grid // 4)  # a patch of GRIDS covers at most half the side
        far[max(touched_rows[0] - reach, 0):touched_rows[-1] + reach + 1,
            max(touched_cols[0] - reach, 0):touched_cols[-1] + reach + 1] = False
        assert np.all(red[far] <= 0.02 * red.max()), (row, grid)


def test_the_detector_is_right_on_its_images(planted):
    run, corner_of = planted
    true = run.predictions["true"].to_numpy()
    assert run.manifest["model"]["format"] == "onnx"
    assert (run.predictions["predicted"].to_numpy() == true).all()
    assert [run.classes[t] == "red" for t in true] == [corner_of[r] is not None for r in range(run.n_images)]


@pytest.mark.parametrize("config", [{"grid": 7, "patch": 2}, {}, {"seconds_per_image": 1e-6}],
                         ids=["fixed-7x7", "adaptive", "adaptive-coarsest"])
def test_maps_peak_on_the_planted_square(planted, config):
    run, corner_of = planted
    red_rows = np.array([r for r in range(run.n_images) if corner_of[r] is not None])
    # each setting's maps are its own derived result (the config is the cache key); computed from the file
    stored = derived.get(run, KIND, config, rows=red_rows)
    summary = stored.summary
    grid = summary["grid"]
    if config == {"seconds_per_image": 1e-6}:
        assert (grid, summary["patch"]) == GRIDS[-1] and "exceed" in summary["grid_choice"]
    elif config == {}:
        assert (grid, summary["patch"]) == GRIDS[0] and "fit" in summary["grid_choice"]  # a cheap model
        assert 0 < summary["seconds_per_pass"] * summary["passes_per_image"] <= OcclusionConfig().seconds_per_image
    else:
        assert summary["grid_choice"] == "fixed by the config"
    position = {int(r): k for k, r in enumerate(stored.array("rows"))}
    coarse = np.asarray(stored.array("coarse"))[[position[int(r)] for r in red_rows]]
    assert coarse.shape == (len(red_rows), 2, grid, grid)
    _check_peaks(coarse, red_rows, corner_of, grid)


def test_a_run_keeps_its_grid_when_rows_are_added(planted, monkeypatch):
    import core.analysis.occlusion as occlusion

    run, corner_of = planted
    config = {"seconds_per_image": 0.5}
    real = occlusion.timed_pass
    monkeypatch.setattr(occlusion, "timed_pass", lambda predict, pixels: (real(predict, pixels)[0], 1.0))
    first = derived.get(run, KIND, config, rows=[0, 1])       # a pass "took" 1 s: the coarsest grid
    assert (first.summary["grid"], first.summary["patch"]) == GRIDS[-1]
    assert "a pass took 1000.0 ms" in first.summary["grid_choice"]
    monkeypatch.setattr(occlusion, "timed_pass", real)
    later = derived.get(run, KIND, config, rows=[2, 3, 4])    # fast now, but the stored maps share one grid
    assert later.summary["grid"] == GRIDS[-1][0] and later.summary["grid_choice"] == first.summary["grid_choice"]
    assert np.asarray(later.array("coarse")).shape == (5, 2, GRIDS[-1][0], GRIDS[-1][0])
