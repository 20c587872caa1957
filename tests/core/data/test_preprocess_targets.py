"""Issue 20's targets on models trained the users' ways, saved to files and analysed from them
(tests/core/data/preprocess_zoo.py): with the documented option the tool agrees with the user's own
evaluation; with the default one the input check names that option, or stays silent where the
default is right; a wrong class order is named. benchmarks/bench_preprocess.py prints all cases."""

from __future__ import annotations

import numpy as np
import pytest

from core.cli import main
from core.run.store import RunStore

pytestmark = pytest.mark.slow


def _analyse(capsys, case, store, *extra):
    code = main(["analyze", "--store", str(store), "--model", str(case.model_path), "--data", str(case.data),
                 "--no-projection", "--force", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    run = RunStore(store).load(captured.out.strip())
    return run, captured.err


def _agreement(run, case) -> float:
    preds = run.predictions.sort_values("path")["predicted"].to_numpy()
    return float((preds == case.user_predictions).mean())


def test_cv2_bgr_model(tmp_path, capsys):
    from tests.core.data.preprocess_zoo import build_cv2_bgr

    case = build_cv2_bgr(tmp_path / "m", n_train=600, n_test=200)
    user_accuracy = float((case.user_predictions == case.labels).mean())
    assert user_accuracy > 0.7  # the model learnt something: the check has something to find

    run, err = _analyse(capsys, case, tmp_path / "s")
    assert "Class order sorted alphabetically (no --classes and no classes.txt beside the model or in the data " \
           "folder): blue, cyan, red, yellow" in err
    assert "splits={'all': 200}" in err
    assert run.metrics["accuracy"] < 0.3                        # red and blue swapped, yellow and cyan too
    assert run.model_info.input_check["suggested"] == "unit+bgr", run.model_info.input_check["accuracies"]
    mismatch = [line for line in err.splitlines() if line.startswith("Preprocessing mismatch")]
    assert len(mismatch) == 1 and mismatch[0].endswith("Re-run with --preprocess unit --channel-order bgr.")

    run, err = _analyse(capsys, case, tmp_path / "s", "--preprocess", "unit", "--channel-order", "bgr")
    assert abs(run.metrics["accuracy"] - user_accuracy) <= 0.001 and _agreement(run, case) >= 0.995
    assert run.config.channel_order == "bgr" and run.model_info.channel_order == "bgr"
    assert run.model_info.input_warnings == [] and "mismatch" not in err

    # a wrong class order is named, with the order that fits
    run, err = _analyse(capsys, case, tmp_path / "s", "--channel-order", "bgr", "--classes", "red,cyan,blue,yellow")
    assert "Class order given by --classes: red, cyan, blue, yellow" in err
    assert run.model_info.input_check["class_order"] == ["blue", "cyan", "red", "yellow"]
    assert "pass --classes blue,cyan,red,yellow" in err


def test_onnx_torchvision_and_vgg_unit(tmp_path, capsys):
    from tests.core.data.preprocess_zoo import build_onnx_torchvision, build_vgg_unit

    onnx_case = build_onnx_torchvision(tmp_path / "o", n_train=600, n_test=200)
    run, err = _analyse(capsys, onnx_case, tmp_path / "s")
    assert run.model_info.input_check["suggested"] == "imagenet" and "Re-run with --preprocess imagenet" in err
    run, err = _analyse(capsys, onnx_case, tmp_path / "s", "--preprocess", "torch")  # Keras' name, same numbers
    user_accuracy = float((onnx_case.user_predictions == onnx_case.labels).mean())
    assert abs(run.metrics["accuracy"] - user_accuracy) <= 0.001 and _agreement(run, onnx_case) >= 0.995
    assert run.model_info.input_warnings == [] and run.config.scale == "torch"

    vgg = build_vgg_unit(tmp_path / "v", n_train=600, n_test=200)
    run, err = _analyse(capsys, vgg, tmp_path / "s")                      # the default is right: silent
    assert run.model_info.input_check["suggested"] is None and "mismatch" not in err
    assert run.model_info.input_check["sample"] == 200
    assert np.isclose(run.metrics["accuracy"], float((vgg.user_predictions == vgg.labels).mean()), atol=0.001)
