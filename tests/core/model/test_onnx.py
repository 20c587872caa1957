"""ONNX classifiers: tiny graphs built with onnx.helper (no PyTorch), checked against numpy.

The graph is Conv 3x3 (4 maps) -> Relu -> GlobalAveragePool -> Flatten -> Gemm (6) -> Relu
-> Gemm (K, the classifier) [-> Softmax], NCHW with a dynamic batch dimension like a
``torch.onnx.export`` with ``dynamic_axes``; the NHWC variant starts with a Transpose, as a
Keras model exported with tf2onnx does. ``reference`` computes the same network in numpy:
its 'penultimate' (N, 6) is the input of the last Gemm, the default embedding.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.cli import main
from core.data.datasets import load_dataset
from core.data.images import fit_to_input
from core.model.load import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelError,
    build_inference_model,
    file_sha256,
    load_model,
    prepare_input,
)
from core.run import metrics
from core.run.analyze import analyze, load_run_model
from core.run.store import RunStore

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
SIZE = (20, 20)


def make_onnx_classifier(path: Path, *, layout: str = "NCHW", n_classes: int = 3, batch: str | int = "batch",
                         softmax: bool = True, size: tuple[int, int] = SIZE, seed: int = 0,
                         input_shape: list | None = None) -> dict:
    """Write the tiny classifier to ``path``; returns its weights (for ``reference``)."""
    rng = np.random.default_rng(seed)
    w = {"W": rng.normal(0, 0.5, (4, 3, 3, 3)), "b": rng.normal(0, 0.1, 4),
         "G1": rng.normal(0, 0.8, (6, 4)), "c1": rng.normal(0, 0.1, 6),
         "G2": rng.normal(0, 0.8, (n_classes, 6)), "c2": rng.normal(0, 0.1, n_classes)}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    nodes, first = [], "image"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["image"], ["image_nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        first = "image_nchw"
    nodes += [
        helper.make_node("Conv", [first, "W", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["conv_relu"], name="conv_relu_node"),
        helper.make_node("GlobalAveragePool", ["conv_relu"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "G1", "c1"], ["hidden"], name="fc1", transB=1),
        helper.make_node("Relu", ["hidden"], ["penultimate"], name="relu2"),
        helper.make_node("Gemm", ["penultimate", "G2", "c2"], ["logits"], name="fc2", transB=1),
    ]
    output = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
        output = "probs"
    h, wd = size
    shape = input_shape or ([batch, 3, h, wd] if layout == "NCHW" else [batch, h, wd, 3])
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, n_classes])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return w


def reference(x_nhwc: np.ndarray, w: dict, *, softmax: bool = True) -> dict:
    """The tiny classifier in numpy on float (N, H, W, 3) input: outputs, penultimate, conv_relu (NCHW)."""
    x = x_nhwc.astype(np.float64).transpose(0, 3, 1, 2)
    n, _, h, wd = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((n, 4, h, wd)) + w["b"][None, :, None, None]
    for dy in range(3):
        for dx in range(3):
            conv += np.einsum("nchw,oc->nohw", padded[:, :, dy:dy + h, dx:dx + wd], w["W"][:, :, dy, dx])
    conv_relu = np.maximum(conv, 0)
    penultimate = np.maximum(conv_relu.mean(axis=(2, 3)) @ w["G1"].T + w["c1"], 0)
    logits = penultimate @ w["G2"].T + w["c2"]
    return {"outputs": metrics.softmax(logits) if softmax else logits, "logits": logits,
            "penultimate": penultimate, "conv_relu": conv_relu}


@pytest.fixture(scope="module")
def nchw_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return path, make_onnx_classifier(path)


def random_batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, *SIZE, 3)).astype(np.float32)


# --------------------------------------------------------------------------- the inference object

@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_predictions_and_embeddings_equal_numpy(tmp_path, layout):
    w = make_onnx_classifier(tmp_path / "m.onnx", layout=layout)
    inference = build_inference_model(load_model(tmp_path / "m.onnx"))
    assert inference.model.info.layout == layout
    assert (inference.input_size, inference.channels, inference.n_outputs) == (SIZE, 3, 3)
    assert inference.layer == "fc2:input" and inference.output_activation == "softmax"
    assert inference.scale == "unit" and inference.has_features
    for n in (1, 7):  # the batch dimension is dynamic
        x = random_batch(n, seed=n)
        out, features = inference.model.predict_on_batch(x)
        ref = reference(x, w)
        assert out.shape == (n, 3) and features.shape == (n, 6)
        np.testing.assert_allclose(out, ref["outputs"], atol=1e-5)
        np.testing.assert_allclose(features, ref["penultimate"], atol=1e-4)


def test_layer_names_any_node_output_or_node(nchw_model):
    path, w = nchw_model
    x = random_batch(5)
    ref = reference(x, w)
    by_output = build_inference_model(load_model(path), layer="conv_relu")  # a (N, 4, H, W) map: averaged
    assert by_output.layer == "conv_relu"
    out, features = by_output.model.predict_on_batch(x)
    np.testing.assert_allclose(features, ref["conv_relu"].mean(axis=(2, 3)), atol=1e-4)
    np.testing.assert_allclose(out, ref["outputs"], atol=1e-5)          # class outputs unchanged
    by_node = build_inference_model(load_model(path), layer="fc1")       # a node's name: its first output
    assert by_node.layer == "hidden"
    np.testing.assert_allclose(by_node.model.predict_on_batch(x)[1],
                               conv_mean_hidden(ref, w), atol=1e-4)
    same_as_output = build_inference_model(load_model(path), layer="probs")
    out, features = same_as_output.model.predict_on_batch(x)
    np.testing.assert_allclose(features, out)


def conv_mean_hidden(ref: dict, w: dict) -> np.ndarray:
    return ref["conv_relu"].mean(axis=(2, 3)) @ w["G1"].T + w["c1"]


def test_feature_map_after_a_transpose_to_nhwc_is_averaged_over_its_spatial_axes(tmp_path):
    from core.model.onnx_model import feature_map_layout, pool_features

    make_onnx_classifier(tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    model.graph.node.append(helper.make_node("Transpose", ["conv_relu"], ["conv_nhwc"], perm=[0, 2, 3, 1]))
    model.graph.node.append(helper.make_node("Relu", ["conv_nhwc"], ["conv_nhwc_relu"]))
    assert feature_map_layout(model.graph, "conv_relu", input_layout="NHWC") == "NCHW"   # Conv is NCHW
    assert feature_map_layout(model.graph, "conv_nhwc_relu", input_layout="NCHW") == "NHWC"
    maps = np.random.default_rng(0).normal(size=(2, 5, 6, 4))                              # N, H, W, C
    np.testing.assert_allclose(pool_features(maps, layout="NHWC"), maps.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(pool_features(maps.transpose(0, 3, 1, 2), layout="NCHW"), maps.mean(axis=(1, 2)),
                               rtol=1e-6)


@pytest.mark.parametrize("batch", [1, 4])
def test_fixed_batch_dimension_is_fed_in_chunks(tmp_path, batch):
    w = make_onnx_classifier(tmp_path / "fixed.onnx", batch=batch)
    inference = build_inference_model(load_model(tmp_path / "fixed.onnx"))
    assert inference.model.info.batch == batch
    x = random_batch(5)  # 5 images: with batch 4, one full chunk and one padded
    out, features = inference.model.predict_on_batch(x)
    ref = reference(x, w)
    np.testing.assert_allclose(out, ref["outputs"], atol=1e-5)
    np.testing.assert_allclose(features, ref["penultimate"], atol=1e-4)


def test_imagenet_scale_is_torchvision_normalisation():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    expected = (pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(prepare_input(pixels, "imagenet"), expected, atol=1e-6)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="3 colour channels; the images have 1"):
        prepare_input(pixels[..., :1], "imagenet")


# --------------------------------------------------------------------------- errors

def test_bad_models_give_one_line_errors(tmp_path, nchw_model):
    path, _ = nchw_model
    make_onnx_classifier(tmp_path / "flat.onnx", input_shape=["batch", 1200])
    with pytest.raises(ModelError, match=r"Expected an image model .* input 'image' of shape \[\?, 1200\]"):
        load_model(tmp_path / "flat.onnx")
    make_onnx_classifier(tmp_path / "odd.onnx", input_shape=["batch", 5, 20, 20])
    with pytest.raises(ModelError, match=r"Cannot tell the layout of input 'image' of shape \[\?, 5, 20, 20\]"):
        load_model(tmp_path / "odd.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07 certainly not protobuf \xff\xff")
    with pytest.raises(ModelError, match="Not an ONNX model file: '.*garbage.onnx'"):
        load_model(tmp_path / "garbage.onnx")
    with pytest.raises(ModelError, match=r"No node output named 'nope' in the ONNX graph\. Last node outputs: "):
        build_inference_model(load_model(path), layer="nope")
    with pytest.raises(ModelError, match="--preprocess must be one of"):
        build_inference_model(load_model(path), scale="bogus")
    inference = build_inference_model(load_model(path))
    with pytest.raises(ModelError, match=r"onnxruntime failed on 'tiny.onnx' with input of shape \[2, 3, 9, 9\]"):
        inference.model.predict_on_batch(np.zeros((2, 9, 9, 3), np.float32))  # the graph wants 20x20


def test_cli_errors_are_one_line(tmp_path, capsys, image_tree, nchw_model):
    path, _ = nchw_model
    make_onnx_classifier(tmp_path / "flat.onnx", input_shape=["batch", 1200])
    make_onnx_classifier(tmp_path / "five.onnx", n_classes=5)
    cases = [
        (["--model", str(tmp_path / "flat.onnx")], "error: Expected an image model with input"),
        (["--model", str(path), "--layer", "nope"], "error: No node output named 'nope'"),
        (["--model", str(tmp_path / "five.onnx")], "error: The model outputs 5 classes but the data set has 3"),
    ]
    for extra, expected in cases:
        code = main(["analyze", *extra, "--data", str(image_tree), "--store", str(tmp_path / "s"),
                     "--no-projection"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith(expected), (extra, err)
        assert sum(line.startswith("error:") for line in err) == 1


# --------------------------------------------------------------------------- runs

def decoded_batch(run, rows) -> np.ndarray:
    """The images of ``rows`` as analyze fed them: decoded, fitted to 20x20 RGB, uint8."""
    return np.stack([fit_to_input(run.image(int(r)), size=SIZE, channels=3) for r in rows])


def test_analyze_writes_an_onnx_run(tmp_path, image_tree, nchw_model):
    path, w = nchw_model
    store = RunStore(tmp_path / "store")
    run = analyze(path, load_dataset(image_tree), store=store, progress=False, projection=False, batch_size=4)
    assert run.n_images == 15 and run.skipped["path"].tolist() == ["dog/broken.jpg"]
    m = run.manifest["model"]
    assert m["format"] == "onnx" and m["sha256"] == file_sha256(path) == run.config.model_sha256
    assert m["scale"] == "unit" and m["input_size"] == [20, 20] and m["channels"] == 3
    assert m["outputs_were"] == "probabilities" and run.layer == "fc2:input"
    ref = reference(prepare_input(decoded_batch(run, range(15)), "unit"), w)
    np.testing.assert_allclose(run.probs, ref["outputs"], atol=1e-5)
    np.testing.assert_allclose(run.embeddings, ref["penultimate"], atol=1e-4)
    again = analyze(path, load_dataset(image_tree), store=store, progress=False, projection=False)
    assert again.uid == run.uid  # same file, same data: the stored run
    # Try an image: the run's model classifies one image as the run did
    one = run.image(3)
    np.testing.assert_allclose(load_run_model(run).predict(one), run.probs[3], atol=1e-5)


def test_logits_are_softmaxed_and_imagenet_scale_is_fed(tmp_path, image_tree):
    w = make_onnx_classifier(tmp_path / "logits.onnx", softmax=False, seed=3)
    run = analyze(tmp_path / "logits.onnx", load_dataset(image_tree), store=RunStore(tmp_path / "s"),
                  progress=False, projection=False, scale="imagenet")
    assert run.manifest["model"]["outputs_were"] == "logits" and run.manifest["model"]["scale"] == "imagenet"
    ref = reference(prepare_input(decoded_batch(run, range(run.n_images)), "imagenet"), w, softmax=False)
    np.testing.assert_allclose(run.probs, metrics.softmax(ref["logits"]), atol=1e-5)
    np.testing.assert_allclose(load_run_model(run).predict(run.image(0)), run.probs[0], atol=1e-5)


def test_layer_option_reaches_the_run_and_its_model(tmp_path, image_tree, nchw_model):
    path, w = nchw_model
    run = analyze(path, load_dataset(image_tree), store=RunStore(tmp_path / "s"), progress=False,
                  projection=False, layer="conv_relu")
    assert run.layer == "conv_relu" and run.embeddings.shape == (15, 4)
    ref = reference(prepare_input(decoded_batch(run, range(15)), "unit"), w)
    np.testing.assert_allclose(run.embeddings, ref["conv_relu"].mean(axis=(2, 3)), atol=1e-4)
    assert load_run_model(run).inference.layer == "conv_relu"


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_onnx_analysis_never_imports_tensorflow(tmp_path, image_tree, nchw_model):
    path, _ = nchw_model
    code = ("import sys; from core.cli import main; "
            f"rc = main(['analyze', '--model', {str(path)!r}, '--data', {str(image_tree)!r}, "
            f"'--store', {str(tmp_path / 's')!r}, '--no-projection']); "
            "print('rc', rc, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "rc 0 False False", done.stderr[-2000:]



def test_external_data_weights_are_loaded_and_hashed(tmp_path):
    """Weights kept beside the graph (external data): predicted with, and part of the model's hash."""
    hashes, graphs = [], []
    for seed in (0, 1):
        made = tmp_path / f"made{seed}.onnx"
        w = make_onnx_classifier(made, seed=seed)
        folder = tmp_path / f"export{seed}"
        folder.mkdir()
        onnx.save_model(onnx.load(str(made)), str(folder / "model.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
        inference = build_inference_model(load_model(folder / "model.onnx"))
        x = random_batch(3)
        np.testing.assert_allclose(inference.model.predict_on_batch(x)[0], reference(x, w)["outputs"], atol=1e-5)
        hashes.append(file_sha256(folder / "model.onnx"))
        graphs.append((folder / "model.onnx").read_bytes())
    assert graphs[0] == graphs[1]   # the same graph file: only weights.bin tells the two models apart
    assert hashes[0] != hashes[1]


def test_auto_scale_is_raw_for_a_keras_export_with_its_own_rescaling(tmp_path):
    make_onnx_classifier(tmp_path / "m.onnx", layout="NHWC")
    model = onnx.load(str(tmp_path / "m.onnx"))
    model.graph.node[0].name = "sequential/rescaling/mul"  # tf2onnx keeps Keras layer names
    onnx.save(model, str(tmp_path / "keras_export.onnx"))
    assert build_inference_model(load_model(tmp_path / "keras_export.onnx")).scale == "raw"
    assert build_inference_model(load_model(tmp_path / "m.onnx")).scale == "unit"
    assert build_inference_model(load_model(tmp_path / "m.onnx"), scale="imagenet").scale == "imagenet"


def test_a_custom_operator_is_named_before_the_missing_head(tmp_path):
    """A graph whose head is a custom operator onnxruntime lacks: 'No Gemm or MatMul node found' sent the
    user after --layer; onnxruntime's own refusal is what they need to read."""
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"], name="gap"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("MagicHead", ["flat"], ["probs"], name="head", domain="com.example")]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                               ["batch", 3, 20, 20])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "custom.onnx"))
    with pytest.raises(ModelError, match=r"onnxruntime cannot run '.*custom.onnx': .*MagicHead") as info:
        build_inference_model(load_model(tmp_path / "custom.onnx"))
    assert "\n" not in str(info.value)
