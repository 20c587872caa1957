"""Legacy .h5 files written by tf.keras 2.x with a nested backbone load as real Keras 3 models.

The fixtures in tests/fixtures were written by tf_keras 2.21 (tf.keras 2.x) with
make_tf_keras2_h5.py there, together with what tf_keras itself computes on four
(32, 32, 3) images: probabilities (4, 3), the Dense 128 layer's output (4, 128)
and the backbone's block5_pool map (4, 1, 1, 8).
"""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from core.data.datasets import load_dataset
from core.model.load import ModelError, build_inference_model, file_sha256, load_model
from core.run.analyze import analyze
from core.run.store import RunStore
from tests.conftest import LazyModule

keras = LazyModule("keras")  # imported when a test first uses it, not at collection

DATA = Path(__file__).resolve().parents[2] / "fixtures"
TRANSFER = DATA / "tf_keras2_transfer.h5"


@pytest.fixture(scope="module")
def expected():
    with np.load(DATA / "tf_keras2_expected.npz") as f:
        return {name: f[name] for name in f.files}


def test_tf_keras2_nested_backbone_h5_loads_as_a_keras3_model(expected):
    sha_before = file_sha256(TRANSFER)
    model = load_model(TRANSFER)
    assert isinstance(model, keras.Model) and isinstance(model.get_layer("vgg16"), keras.Model)
    x = expected["x"].astype("float32")
    assert np.allclose(np.asarray(model(x)), expected["probs"], atol=1e-5)

    inference = build_inference_model(model)
    assert inference.has_features and inference.scale == "raw"  # the Rescaling layer is inside the model
    assert inference.layer == "dense_1:input" and inference.n_outputs == 3  # the softmax layer's input
    probs, embeddings = inference.model.predict_on_batch(x)
    assert embeddings.shape == (4, 128)
    assert np.allclose(embeddings, expected["embeddings"], atol=1e-5)
    assert np.allclose(probs, expected["probs"], atol=1e-5)
    assert file_sha256(TRANSFER) == sha_before  # the repair works on a copy


def test_tf_keras2_h5_layer_inside_the_backbone(tmp_path, expected, image_tree):
    x = expected["x"].astype("float32")
    inference = build_inference_model(load_model(TRANSFER), layer="vgg16/block5_pool")
    probs, features = inference.model.predict_on_batch(x)
    assert np.allclose(features, expected["block5_pool"].mean(axis=(1, 2)), atol=1e-5)
    assert np.allclose(probs, expected["probs"], atol=1e-5)
    # and through the pipeline, as `analyze --layer vgg16/block5_pool` runs it
    run = analyze(TRANSFER, load_dataset(image_tree), store=RunStore(tmp_path), progress=False,
                  projection=False, layer="vgg16/block5_pool")
    assert run.manifest["layer"] == "vgg16/block5_pool" and run.embeddings.shape == (15, 8)


def test_tf_keras2_backbone_inside_a_sequential_h5(expected):
    # tf.keras 2.x wrote the backbone's single output as a one-element list, which Keras 3 passed
    # on as a list to Flatten
    model = load_model(DATA / "tf_keras2_sequential.h5")
    x = expected["x"].astype("float32")
    assert np.allclose(np.asarray(model(x)), expected["sequential_probs"], atol=1e-5)


def test_repaired_h5_keeps_safe_mode(tmp_path, expected):
    """A Lambda layer (Python bytecode) in a file that needs the repair is still refused."""
    from keras.src.utils.python_utils import func_dump

    code, _, _ = func_dump(lambda t: t / 255.0)
    path = tmp_path / "lambda_transfer.h5"
    shutil.copyfile(TRANSFER, path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        layers = config["config"]["layers"]
        (i,) = [i for i, lyr in enumerate(layers) if lyr["class_name"] == "Rescaling"]
        # tf.keras 2.x's config for Lambda(lambda t: t / 255.0), under the Rescaling layer's name
        layers[i]["class_name"] = "Lambda"
        layers[i]["config"] = {"name": layers[i]["name"], "trainable": True, "dtype": "float32",
                               "function": [code, None, None], "function_type": "lambda",
                               "module": "__main__", "output_shape": None, "output_shape_type": "raw",
                               "output_shape_module": None, "arguments": {}}
        f.attrs["model_config"] = json.dumps(config)
    with pytest.raises(ModelError, match="needs arbitrary Python code.*--unsafe-load"):
        load_model(path)
    model = load_model(path, unsafe=True)
    assert np.allclose(np.asarray(model(expected["x"].astype("float32"))), expected["probs"], atol=1e-5)
