"""Issue 22 item 4: model outputs that are NaN or inf never make a run of NaN.

Models are ONNX files (written with onnx.helper, loaded back from disk): "nan.onnx" is the tiny
classifier of test_onnx with a NaN bias on its last layer (every output NaN); "dim.onnx" multiplies
the probabilities by sqrt(mean red - 100), NaN for the dog and fox images (red 40) and finite for
the cats (red 200). Before, the first made a run silently (exit 0, every probability NaN, every
image predicted one class).
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

from core.cli import main  # noqa: E402
from core.data.datasets import load_dataset  # noqa: E402
from core.model.load import ModelError  # noqa: E402
from core.run.analyze import analyze  # noqa: E402
from core.run.finite import drop_non_finite  # noqa: E402
from core.run.store import RunStore  # noqa: E402
from tests.core.model.test_onnx import make_onnx_classifier  # noqa: E402


def _nan_model(path):
    make_onnx_classifier(path)
    model = onnx.load(str(path))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "c2":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.full(3, np.nan, np.float32), "c2"))
    onnx.save(model, str(path))


def _dim_model(path):
    make_onnx_classifier(path)
    model = onnx.load(str(path))
    g = model.graph
    out = g.output[0].name
    g.node[-1].output[0] = "probs_raw"
    g.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "red"),
                          numpy_helper.from_array(np.array(100, np.float32), "hundred")])
    g.node.extend([
        helper.make_node("Gather", ["image", "red"], ["red_plane"], axis=1),
        helper.make_node("ReduceMean", ["red_plane"], ["red_mean"], axes=[2, 3], keepdims=0),
        helper.make_node("Sub", ["red_mean", "hundred"], ["shifted"]),
        helper.make_node("Sqrt", ["shifted"], ["gate"]),
        helper.make_node("Mul", ["probs_raw", "gate"], ["gated"]),
        helper.make_node("Div", ["gated", "gate"], [out]),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_a_model_whose_outputs_are_all_nan_stops_in_one_line(tmp_path, capsys, image_tree):
    _nan_model(tmp_path / "nan.onnx")
    code = main(["analyze", "--model", str(tmp_path / "nan.onnx"), "--data", str(image_tree),
                 "--store", str(tmp_path / "store"), "--no-projection", "--scale", "raw"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not any("Warning" in line for line in err), err  # no numpy RuntimeWarning before the line
    assert "not finite (NaN or inf) for all 15 images" in errors[0] and "(first: cat/cat_0.png)" in errors[0]
    assert not RunStore(tmp_path / "store").list_runs()


def test_images_with_non_finite_outputs_are_recorded_as_skipped(tmp_path, image_tree):
    _dim_model(tmp_path / "dim.onnx")
    run = analyze(tmp_path / "dim.onnx", load_dataset(image_tree), store=RunStore(tmp_path / "store"),
                  progress=False, projection=False, scale="raw")
    assert run.n_images == 5 and set(run.predictions["true_label"]) == {"cat"}
    assert np.isfinite(np.asarray(run.probs)).all()
    skipped = run.skipped.set_index("path")["reason"]
    nan_rows = [p for p in skipped.index if p != "dog/broken.jpg"]
    assert sorted(nan_rows) == sorted([f"dog/dog_{i}.png" for i in range(5)] + [f"fox/fox_{i}.png" for i in range(5)])
    assert set(skipped[nan_rows]) == {"the model's outputs are not finite (NaN or inf)"}


def test_drop_non_finite_on_features_and_on_nothing_left():
    rows, outputs = np.array([2, 5, 7]), np.array([[0.5, 0.5], [0.1, 0.9], [0.3, 0.7]])
    features = np.array([[1.0], [np.inf], [2.0]])
    kept, out, feats, failed = drop_non_finite(rows, outputs, features, [{"path": "x", "reason": "r"}],
                                               [f"f{i}" for i in range(8)])
    assert kept.tolist() == [2, 7] and out.tolist() == [[0.5, 0.5], [0.3, 0.7]] and feats.tolist() == [[1.0], [2.0]]
    assert failed == [{"path": "x", "reason": "r"},
                      {"path": "f5", "reason": "the model's features (embedding) are not finite (NaN or inf)"}]
    same = drop_non_finite(rows, outputs, None, [], [f"f{i}" for i in range(8)])
    assert same[0] is not None and same[0].tolist() == [2, 5, 7] and same[3] == []
    with pytest.raises(ModelError, match=r"not finite \(NaN or inf\) for all 3 images \(first: f2\)"):
        drop_non_finite(rows, np.full((3, 2), np.nan), None, [], [f"f{i}" for i in range(8)])
