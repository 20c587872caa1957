"""Grad-CAM: the formula on arrays, the batched maps against a one-image GradientTape reference,
layers inside nested keras.applications backbones, the per-row cache in the run, and
``python -m core explain`` on a plain CNN, a nested backbone in .keras and a tf.keras 2.x .h5.

Axes: n images, J = 2 explained classes ([:, 0] predicted, [:, 1] true), feature maps
(h, w, c) at the chosen layer, maps upsampled to the model's input (H, W).
"""

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import core.analysis.gradcam as gradcam
from core.analysis.gradcam import (
    GradCamUnavailable,
    build_explainer,
    cam_from_gradients,
    explain_rows,
    find_cam_layer,
    normalize_maps,
    overlay,
    select_rows,
    upsample_maps,
)
from core.cli import main
from core.model.load import ModelError
from core.report.tables import errors_table
from core.run import derived
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run
from core.run.write import write_run

REPO = Path(__file__).resolve().parents[3]
H5_TRANSFER = Path(__file__).resolve().parents[2] / "fixtures" / "tf_keras2_transfer.h5"


def test_doctests_of_the_pure_functions():
    result = doctest.testmod(gradcam)
    assert result.attempted >= 5 and result.failed == 0


# --------------------------------------------------------------------------- the formula on arrays

def _loop_gradcam(A, g):
    """Grad-CAM written out with loops for one image: A, g (h, w, c) -> ReLU(sum_c w_c A_c)."""
    h, w, c = A.shape
    weights = [sum(g[i, j, k] for i in range(h) for j in range(w)) / (h * w) for k in range(c)]
    return np.array([[max(0.0, sum(weights[k] * A[i, j, k] for k in range(c))) for j in range(w)]
                     for i in range(h)])


def _loop_gradcam_pp(A, g):
    """Grad-CAM++ (Chattopadhay et al., eq. 19 with an exponential score) written out for one image."""
    h, w, c = A.shape
    weights = []
    for k in range(c):
        total_a = A[:, :, k].sum()
        wk = 0.0
        for i in range(h):
            for j in range(w):
                num = g[i, j, k] ** 2
                den = 2 * g[i, j, k] ** 2 + total_a * g[i, j, k] ** 3
                wk += (num / den if den != 0 else 0.0) * max(g[i, j, k], 0.0)
        weights.append(wk)
    return np.array([[max(0.0, sum(weights[k] * A[i, j, k] for k in range(c))) for j in range(w)]
                     for i in range(h)])


@pytest.mark.parametrize("method, reference", [("gradcam", _loop_gradcam), ("gradcam++", _loop_gradcam_pp)])
def test_formula_matches_a_written_out_loop_on_random_cases(method, reference):
    rng = np.random.default_rng(0)
    A = np.maximum(rng.normal(0, 1, (3, 4, 5, 6)), 0)      # (n, h, w, c), post-ReLU like a conv map
    g = rng.normal(0, 1, (3, 2, 4, 5, 6))                  # (n, J, h, w, c)
    maps, empty = cam_from_gradients(A, g, method=method)
    assert maps.shape == (3, 2, 4, 5) and empty.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert np.allclose(maps[i, j], reference(A[i], g[i, j]), atol=1e-5)
            assert empty[i, j] == (not reference(A[i], g[i, j]).max() > 0)
    # one class at a time gives the same as J at once
    single, _ = cam_from_gradients(A, g[:, 1], method=method)
    assert np.allclose(single, maps[:, 1])


def test_formula_input_errors_name_the_value():
    with pytest.raises(ValueError, match=r"Unknown method 'gradcam\+\+\+'.*gradcam"):
        cam_from_gradients(np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 2, 1)), method="gradcam+++")
    with pytest.raises(ValueError, match=r"gradients of shape \(1, 3, 2, 1\) do not match"):
        cam_from_gradients(np.zeros((1, 2, 2, 1)), np.zeros((1, 3, 2, 1)))


def test_upsample_normalize_and_overlay():
    maps = np.array([[[0.0, 1.0], [2.0, 4.0]]], np.float32)
    up = upsample_maps(maps, (6, 4))
    assert up.shape == (1, 6, 4) and up.min() >= 0 and np.isclose(up.max(), 4.0)
    norm = normalize_maps(up)
    assert np.isclose(norm.max(), 1.0) and norm.min() >= 0
    gray = np.full((10, 8), 100, np.uint8)
    cam = np.zeros((5, 4), np.float32)
    cam[0, 0] = 1.0
    out = overlay(gray, cam)
    assert out.shape == (10, 8, 3) and out.dtype == np.uint8
    assert (out[-1, -1] == 100).all()       # no evidence: the pixel is unchanged
    assert not (out[0, 0] == 100).all()     # full evidence: coloured
    with pytest.raises(ValueError, match="uint8. Received dtype float32"):
        overlay(gray.astype(np.float32), cam)
    with pytest.raises(ValueError, match="finite"):
        overlay(gray, np.full((2, 2), np.nan))


# --------------------------------------------------------------------------- models

def _plain_cnn(n_classes=3, *, size=20, seed=0):
    """Rescaling -> Conv 8 -> Conv 8 -> GlobalAveragePooling -> Dense(K, softmax)."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_1")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(n_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inp, out, name="plain_cnn")


def _reference_heatmap(model, image, layer, class_index):
    """One image, one class, a GradientTape over the logits (keras.io's make_gradcam_heatmap with
    the last activation removed), before normalisation: (h, w)."""
    import keras
    import tensorflow as tf

    head = model.get_layer("classifier")
    grad_model = keras.Model(model.inputs[0], [model.get_layer(layer).output, head.input])
    kernel, bias = head.get_weights()
    with tf.GradientTape() as tape:
        A, features = grad_model(image[None])
        logit = (features @ kernel + bias)[:, class_index]
    grads = tape.gradient(logit, A)
    pooled = tf.reduce_mean(grads, axis=(0, 1, 2))
    return tf.maximum(A[0] @ pooled[:, None], 0)[..., 0].numpy()


def test_batched_maps_agree_with_a_one_image_reference():
    model = _plain_cnn()
    explainer = build_explainer(model, scale="raw")
    assert explainer.layer == "conv_2" and explainer.feature_size == (16, 16)
    assert explainer.score.startswith("logits")       # the Dense recomputed without its softmax
    x = np.random.default_rng(1).uniform(0, 255, (6, 20, 20, 3)).astype(np.float32)
    classes = np.array([[0, 1], [1, 2], [2, 0], [0, 0], [1, 1], [2, 1]])
    maps, empty, scores = explainer.maps(x, classes)
    assert maps.shape == (6, 2, 16, 16)
    assert np.allclose(explainer.activate(scores), model.predict_on_batch(x), atol=1e-5)
    compared = 0
    for i in range(6):
        for j in range(2):
            ref = _reference_heatmap(model, x[i], "conv_2", classes[i, j])
            assert empty[i, j] == (ref.max() <= 0)
            if ref.max() > 0:
                assert np.corrcoef(ref.ravel(), maps[i, j].ravel())[0, 1] >= 0.99
                assert np.allclose(ref, maps[i, j], rtol=1e-4, atol=1e-6 * ref.max())
                compared += 1
    assert compared >= 6


def _conv_features(inp):
    import keras

    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


def test_activation_softmax_head_and_one_sigmoid_unit():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    logits = keras.layers.Dense(3, name="logits")(_conv_features(inp))
    softmax_model = keras.Model(inp, keras.layers.Activation("softmax", name="probs")(logits))
    explainer = build_explainer(softmax_model)
    assert explainer.score == "logits: the input of 'probs'"
    x = np.random.default_rng(2).uniform(0, 1, (3, 12, 12, 3)).astype(np.float32)
    _, _, scores = explainer.maps(x, np.zeros((3, 2), int))
    assert np.allclose(scores, keras.Model(inp, logits).predict_on_batch(x), atol=1e-5)

    # one sigmoid unit: class 1 scores z, class 0 scores -z
    inp = keras.Input((12, 12, 3))
    binary = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="out")(_conv_features(inp)))
    explainer = build_explainer(binary)
    A, grads, scores = explainer.gradients(x, np.array([[1, 0]] * 3))
    z = keras.Model(inp, binary.get_layer("pool").output).predict_on_batch(x) @ binary.get_layer("out").get_weights()[0]
    z += binary.get_layer("out").get_weights()[1]
    assert np.allclose(scores, np.concatenate([-z, z], axis=1), atol=1e-5)
    assert np.allclose(grads[:, 0], -grads[:, 1]) and np.abs(grads).max() > 0


def _nested(backbone, size, n_classes=4):
    import keras

    keras.utils.set_random_seed(0)
    constructor = {"vgg16": keras.applications.VGG16, "mobilenetv2": keras.applications.MobileNetV2}[backbone]
    base = constructor(include_top=False, weights=None, input_shape=(size, size, 3), name=backbone)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="preprocess")(inp)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(16, activation="relu", name="dense_1")(x)
    out = keras.layers.Dense(n_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inp, out, name=f"transfer_{backbone}")


@pytest.mark.parametrize("backbone, size, layer, feature_size", [
    ("vgg16", 64, "vgg16/block5_conv3", (4, 4)),
    ("mobilenetv2", 96, "mobilenetv2/out_relu", (3, 3)),
])
@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_nested_keras_applications_backbones(backbone, size, layer, feature_size):
    model = _nested(backbone, size)
    assert find_cam_layer(model) == layer                 # found inside the backbone
    explainer = build_explainer(model, scale="raw")
    assert explainer.layer == layer and explainer.feature_size == feature_size
    x = np.random.default_rng(3).uniform(0, 255, (4, size, size, 3)).astype(np.float32)
    probs = model.predict_on_batch(x)
    predicted = probs.argmax(axis=1)
    classes = np.stack([predicted, (predicted + 1) % 4], axis=1)
    maps, empty, scores = explainer.maps(x, classes)
    assert np.allclose(explainer.activate(scores), probs, atol=1e-4)
    full = normalize_maps(upsample_maps(maps, (size, size)))
    assert full.shape == (4, 2, size, size) and np.isfinite(full).all()
    shown = full[~empty]
    assert len(shown) >= 2                                 # some positive evidence with random weights
    assert np.allclose(shown.max(axis=(1, 2)), 1.0) and (shown.std(axis=(1, 2)) > 1e-3).all()
    assert (full[empty] == 0).all()


def test_named_layers_and_refusals():
    import keras

    model = _plain_cnn()
    assert build_explainer(model, layer="conv_1").feature_size == (18, 18)
    with pytest.raises(ModelError, match=r"No layer named 'conv_9'.*Layers: \["):
        build_explainer(model, layer="conv_9")
    with pytest.raises(ModelError, match=r"--cam-layer 'gap' outputs shape \(None, 8\)"):
        build_explainer(model, layer="gap")
    with pytest.raises(ModelError, match="'conv_1' is a Conv2D, not a nested model"):
        build_explainer(model, layer="conv_1/x")
    mlp = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(GradCamUnavailable, match="No convolutional layer"):
        build_explainer(mlp)
    # a nested model whose output is merged with a side branch: its inner layers are reached too
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 3, padding="same", name="conv")(inner_in), name="inner")
    inp = keras.Input((8, 8, 3))
    merged = keras.layers.Add(name="add")([inner(inp), keras.layers.Conv2D(4, 1, name="side")(inp)])
    x = keras.layers.GlobalAveragePooling2D()(merged)
    branching = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))
    assert find_cam_layer(branching) == "add"             # a top-level map is found and works
    assert build_explainer(branching).layer == "add"
    assert build_explainer(branching, layer="inner/conv").feature_size == (8, 8)


def test_maps_without_positive_evidence_are_flagged_empty():
    """Positive feature maps and a head whose weights are all negative: every class's map is <= 0."""
    import keras

    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(3, 3, activation="relu", kernel_initializer="ones", bias_initializer="ones",
                            name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(2, activation="softmax", kernel_initializer=keras.initializers.Constant(-1.0))(x)
    explainer = build_explainer(keras.Model(inp, out))
    maps, empty, _ = explainer.maps(np.ones((2, 8, 8, 1), np.float32), np.array([[0, 1], [1, 0]]))
    assert empty.all() and (maps == 0).all()
    panel = gradcam.explanation_image(np.full((8, 8), 200, np.uint8), np.zeros((2, 8, 8)), np.array([True, True]))
    assert panel.shape == (128, 2 * 128 + 4, 3)
    assert len(np.unique(panel[:, :128].reshape(-1, 3), axis=0)) == 1   # grey image, no heat


# --------------------------------------------------------------------------- rows of a run

def test_select_rows_errors_cells_and_bad_input(tmp_path):
    run = make_synthetic_run(RunStore(tmp_path), "syn", n=300, n_classes=4, with_images=False, history=False)
    errors = errors_table(run)
    rows = select_rows(run, limit=10)
    assert rows.tolist() == errors["id"].head(10).tolist()    # id is the row number
    t, p = errors.iloc[0][["true_label", "predicted_label"]]
    cell = select_rows(run, true_class=t, predicted_class=p, limit=None)
    preds = run.predictions.iloc[cell]
    assert (preds["true_label"] == t).all() and (preds["predicted_label"] == p).all()
    assert preds["confidence"].is_monotonic_decreasing and set(preds["split"]) == {run.eval_split}
    diagonal = select_rows(run, true_class=t, predicted_class=t, split="all", limit=None)
    assert run.predictions["correct"].iloc[diagonal].all() and len(diagonal) > 0
    with pytest.raises(ValueError, match=r"Unknown class 'zebra' for --true. The run's classes: \['aaa'"):
        select_rows(run, true_class="zebra")
    with pytest.raises(ValueError, match="--limit must be at least 1. Received: 0"):
        select_rows(run, limit=0)
    with pytest.raises(ValueError, match=r"Unknown split 'dev'"):
        select_rows(run, split="dev")


@pytest.fixture(scope="module")
def tiny_cnn_run(tmp_path_factory):
    """The plain CNN analysed on 3 classes x 5 images (20x20 PNG files)."""
    from core.data.datasets import load_dataset
    from core.run.analyze import analyze
    from tests.conftest import CLASS_COLOURS, write_image

    base = tmp_path_factory.mktemp("gradcam")
    root = base / "images"
    for c, (name, rgb) in enumerate(CLASS_COLOURS.items()):
        for i in range(5):
            write_image(root / name / f"{name}_{i}.png", rgb, seed=c * 10 + i)
    model_path = base / "plain_cnn.keras"
    _plain_cnn(seed=1).save(model_path)
    store = RunStore(base / "store")
    run = analyze(model_path, load_dataset(root), store=store, run_id="cnn", progress=False, projection=False)
    return store, run.id, root


def test_explain_rows_computes_only_missing_rows_and_reads_back(tiny_cnn_run, monkeypatch):
    store, run_id, _ = tiny_cnn_run
    run = store.load(run_id)
    loads = []
    real = gradcam.explainer_for_run
    monkeypatch.setattr(gradcam, "_EXPLAINERS", {})  # nothing loaded earlier in this process
    monkeypatch.setattr(gradcam, "explainer_for_run", lambda *a, **k: loads.append(1) or real(*a, **k))
    calls = []
    real_maps = gradcam.CamExplainer.maps
    monkeypatch.setattr(gradcam.CamExplainer, "maps",
                        lambda self, x, c, **k: calls.append(len(x)) or real_maps(self, x, c, **k))
    first = explain_rows(run, [3, 0])
    assert first.rows.tolist() == [3, 0] and first.maps.shape == (2, 2, 20, 20)
    assert first.layer == "conv_2" and not first.skipped
    assert first.classes.tolist() == run.predictions[["predicted", "true"]].to_numpy()[[3, 0]].tolist()
    assert np.isclose(np.nanmax(first.maps[~first.empty], axis=(1, 2)), 1.0).all()
    assert derived.status(run, "attention_maps") == "current"

    again = explain_rows(store.load(run_id), [0, 5, 3], which="true")   # only row 5 is new
    assert calls == [2, 1] and len(loads) == 1              # the model is loaded once and kept
    assert again.maps.shape == (3, 1, 20, 20)
    assert np.array_equal(again.maps[[2, 0], 0], first.maps[:, 1])           # cached rows unchanged
    summary = derived.get(store.load(run_id), "attention_maps", compute=False).summary
    assert summary["rows"] == 3 and summary["prediction_mismatches"] == 0
    assert summary["feature_size"] == [16, 16] and summary["input_size"] == [20, 20]

    explain_rows(store.load(run_id), [5, 0])
    assert calls == [2, 1] and len(loads) == 1              # all stored: no computation

    # the stored maps are what the explainer computes on the run's pixels
    explainer = real(run)
    pixels = np.stack([cv2.cvtColor(cv2.imread(str(run.image_file(r))), cv2.COLOR_BGR2RGB) for r in (3, 0)])
    maps, empty, _ = real_maps(explainer, pixels.astype(np.float32), first.classes)
    assert np.allclose(normalize_maps(upsample_maps(maps, (20, 20))), first.maps, atol=1e-5)
    assert np.array_equal(empty, first.empty)

    # another method is another config: recomputed, not mixed with the Grad-CAM maps
    pp = explain_rows(store.load(run_id), [0], method="gradcam++")
    assert calls[-1] == 1 and pp.method == "gradcam++"
    with pytest.raises(ValueError, match=r"Row 99 is not in run 'cnn', which has rows 0..14"):
        explain_rows(run, [0, 99])
    with pytest.raises(ValueError, match=r"which must name some of \['predicted', 'true'\]"):
        explain_rows(run, [0], which=("predicted", "worst"))


def test_a_missing_image_is_a_recorded_skip(tmp_path, tiny_cnn_run):
    store, run_id, root = tiny_cnn_run
    copy = store.copy_run(run_id, "cnn-missing")
    gone = copy.image_file(4)
    saved, stat = gone.read_bytes(), gone.stat()
    gone.unlink()
    try:
        att = explain_rows(copy, [4, 1])
    finally:
        gone.write_bytes(saved)
        os.utime(gone, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as it was: the data unchanged for later tests
    assert list(att.skipped) == [4] and "is missing or cannot be decoded" in att.skipped[4]
    assert np.isnan(att.maps[0]).all() and np.isfinite(att.maps[1]).all()


def test_reading_cached_maps_imports_no_tensorflow(tiny_cnn_run):
    store, run_id, _ = tiny_cnn_run
    explain_rows(store.load(run_id), [1, 2])
    script = ("import sys; from core.run.store import RunStore; from core.analysis.gradcam import attention_maps; "
              f"m = attention_maps(RunStore({str(store.root)!r}).load({run_id!r}), [2, 1]); "
              "print(m.shape, sorted(x for x in ('tensorflow', 'keras', 'umap') if x in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(2, 2, 20, 20) []"


# --------------------------------------------------------------------------- the command line

def _explain(capsys, *args):
    code = main(["explain", *map(str, args)])
    return code, capsys.readouterr().err


def test_cli_explain_plain_cnn(tiny_cnn_run, tmp_path, capsys):
    store, run_id, _ = tiny_cnn_run
    run = store.load(run_id)
    out = tmp_path / "out"
    code, err = _explain(capsys, run_id, "--store", store.root, "--out", out, "--limit", 5)
    assert code == 0, err
    cams = np.load(out / "cams.npy", allow_pickle=False)
    index = pd.read_csv(out / "index.csv")
    expected_rows = select_rows(run, limit=5)
    assert len(expected_rows) == 5 and cams.shape == (5, 2, 20, 20) and cams.dtype == np.float32
    assert np.nanmin(cams) >= 0 and np.nanmax(cams) <= 1
    assert list(index.columns[:4]) == ["path", "true_label", "predicted_label", "confidence"]
    assert index["row"].tolist() == expected_rows.tolist()
    assert index["path"].tolist() == run.predictions["path"].iloc[expected_rows].tolist()
    for name in index["overlay"]:
        png = cv2.imread(str(out / name))
        assert png.shape == (128, 2 * 128 + 4, 3)
    assert f"Wrote the maps of 5 images (10 maps: predicted, true) at layer 'conv_2' (gradcam) to {out}" in err

    # a confusion cell, written over the earlier output (its PNGs are replaced, not left behind)
    t, p = index.loc[0, ["true_label", "predicted_label"]]
    code, err = _explain(capsys, run_id, "--store", store.root, "--out", out, "--true", t, "--predicted", p,
                         "--limit", 2)
    assert code == 0, err
    index = pd.read_csv(out / "index.csv")
    assert (index["true_label"] == t).all() and (index["predicted_label"] == p).all()
    assert sorted(f.name for f in out.glob("*.png")) == sorted(index["overlay"])
    assert np.load(out / "cams.npy").shape == (len(index), 2, 20, 20)


def test_cli_explain_errors_are_one_line(tiny_cnn_run, tmp_path, capsys):
    store, run_id, _ = tiny_cnn_run
    for args, message in [
        (["--true", "zebra"], "error: Unknown class 'zebra' for --true. The run's classes: ['cat', 'dog', 'fox']"),
        (["--limit", "0"], "error: --limit must be at least 1. Received: 0"),
        (["--cam-layer", "nope"], "error: No layer named 'nope' (--cam-layer 'nope'). Layers: ["),
    ]:
        code, err = _explain(capsys, run_id, "--store", store.root, "--out", tmp_path / "o", *args)
        assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    synthetic = make_synthetic_run(RunStore(tmp_path / "s"), "syn", n=50, n_classes=3, history=False)
    code, err = _explain(capsys, "syn", "--store", tmp_path / "s", "--out", tmp_path / "o")
    assert code == 2 and err == "error: Grad-CAM is unavailable for run 'syn': it is synthetic and has no model\n"
    del synthetic
    for name in ("a/1.png", "b/1.png"):  # the run's files exist: no "data changed" warning
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    saved = write_run(RunStore(tmp_path / "sm"), "sm", classes=["a", "b"], y_true=np.array([0, 1]),
                      probs=np.array([[0.2, 0.8], [0.9, 0.1]], np.float32), paths=["a/1.png", "b/1.png"],
                      model={"path": str(tmp_path / "saved_model"), "format": "savedmodel", "input_size": [8, 8]},
                      data={"name": "x", "root": str(tmp_path)})
    code, err = _explain(capsys, saved.id, "--store", tmp_path / "sm", "--out", tmp_path / "o")
    assert code == 2 and err.startswith("error: Grad-CAM is unavailable for run 'sm': its model is a SavedModel")
    assert err.count("\n") == 1


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_cli_explain_nested_backbone_from_keras_and_tf_keras2_h5(tmp_path, image_tree, capsys):
    from core.data.datasets import load_dataset
    from core.run.analyze import analyze

    keras_path = tmp_path / "transfer.keras"
    _nested("mobilenetv2", 64, n_classes=3).save(keras_path)
    store = RunStore(tmp_path / "store")
    for model_path, name, layer, size in [(keras_path, "keras-nested", "mobilenetv2/out_relu", 64),
                                          (H5_TRANSFER, "h5-nested", "vgg16/block5_conv1", 32)]:
        run = analyze(model_path, load_dataset(image_tree), store=store, run_id=name, progress=False,
                      projection=False)
        out = tmp_path / name
        code, err = _explain(capsys, name, "--store", store.root, "--out", out, "--split", "all",
                             "--limit", 4)
        assert code == 0, err
        assert f"at layer {layer!r}" in err
        cams = np.load(out / "cams.npy", allow_pickle=False)
        index = pd.read_csv(out / "index.csv")
        assert cams.shape == (len(index), 2, size, size) and 1 <= len(index) <= 4
        shown = cams[~index[["empty_predicted", "empty_true"]].to_numpy()]
        assert len(shown) and np.allclose(shown.max(axis=(1, 2)), 1.0)
        summary = derived.get(store.load(name), "attention_maps", compute=False).summary
        assert summary["layer"] == layer and summary["prediction_mismatches"] == 0
        assert json.loads(json.dumps(summary)) == summary
        del run
