"""A SavedModel runs its own graph when called, outside Keras safe mode: loading one needs the opt-in.

The model built here is a tf.Module whose serving function writes a marker file
(tf.io.write_file) before returning softmax probabilities: the marker shows
whether the graph ran.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.data.datasets import load_dataset
from core.model.load import ModelError, load_model
from core.run.analyze import analyze, load_run_model
from core.run.store import RunStore

REPO = Path(__file__).resolve().parents[3]


def _write_marker_savedmodel(folder: Path, marker: Path) -> None:
    """A 3-class SavedModel on (None, 20, 20, 3) raw pixels whose serving function writes ``marker``."""
    import tensorflow as tf

    class MarkerClassifier(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(0)
            self.conv = tf.Variable(rng.normal(0, 0.2, (3, 3, 3, 4)).astype("float32"))
            self.dense = tf.Variable(rng.normal(0, 0.5, (4, 3)).astype("float32"))

        @tf.function(input_signature=[tf.TensorSpec([None, 20, 20, 3], tf.float32, name="image")])
        def serve(self, image):
            tf.io.write_file(str(marker), "the graph ran")
            features = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(image / 255.0, self.conv, 1, "VALID")), axis=[1, 2])
            return {"probs": tf.nn.softmax(features @ self.dense)}

    module = MarkerClassifier()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})


@pytest.fixture
def marker_savedmodel(tmp_path):
    folder, marker = tmp_path / "marker_model", tmp_path / "marker.txt"
    _write_marker_savedmodel(folder, marker)
    assert not marker.exists()  # saving traces the function but does not run it
    return folder, marker


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_savedmodel_refused_without_opt_in_and_its_graph_never_runs(tmp_path, image_tree, marker_savedmodel):
    folder, marker = marker_savedmodel
    store = tmp_path / "store"
    refused = _cli("analyze", "--model", str(folder), "--data", str(image_tree), "--no-projection",
                   "--store", str(store))
    assert refused.returncode == 2, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and refused.stderr.rstrip().endswith(errors[0]), refused.stderr
    assert "arbitrary operations" in errors[0] and "--unsafe-load" in errors[0]
    assert "Traceback" not in refused.stderr
    assert not marker.exists()
    assert not RunStore(store).list_runs()

    with pytest.raises(ModelError, match="not covered by Keras safe mode.*--unsafe-load"):
        load_model(folder)
    assert not marker.exists()

    allowed = _cli("analyze", "--model", str(folder), "--data", str(image_tree), "--no-projection",
                   "--store", str(store), "--unsafe-load", "--name", "opted-in")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip() == "opted-in" and marker.exists()
    run = RunStore(store).load("opted-in")
    assert run.manifest["model"]["format"] == "savedmodel" and run.n_images == 15


def test_run_model_loads_a_savedmodel_only_when_the_process_trusts_its_file(tmp_path, image_tree,
                                                                            marker_savedmodel, monkeypatch):
    """Issue 22 item 1: the opt-in comes from the process (a trusted-hashes file named by
    CLASSIFIER_TRUSTED_MODELS, outside the store, or the caller's flag), never from the manifest.
    Before, a manifest edited to ``unsafe_load: true`` made the dashboard load and run the model."""
    from core.model.load import file_sha256
    from core.model.trust import ENV_TRUSTED

    folder, marker = marker_savedmodel
    store = tmp_path / "store"
    run = analyze(folder, load_dataset(image_tree), store=RunStore(store), progress=False,
                  projection=False, unsafe=True)
    assert run.manifest["model"]["unsafe_load"] is True  # recorded, for information
    marker.unlink()
    monkeypatch.delenv(ENV_TRUSTED, raising=False)

    # whatever the manifest says, the process has not opted in: refused, in words that name no
    # command-line flag (the dashboard has none to pass) but the setting that would allow it
    for recorded in (True, False, None):
        if recorded is None:
            run.manifest["model"].pop("unsafe_load")
        else:
            run.manifest["model"]["unsafe_load"] = recorded
        with pytest.raises(ModelError) as refused:
            load_run_model(run)
        message = str(refused.value)
        assert "SavedModel" in message and ENV_TRUSTED in message and "--" not in message
        assert "\n" not in message
        assert not marker.exists()

    # the operator lists the folder's hash in a file outside the store: loaded
    trusted = tmp_path / "trusted.txt"
    trusted.write_text(f"# models I trust\n{file_sha256(folder)}  marker_model\n")
    monkeypatch.setenv(ENV_TRUSTED, str(trusted))
    probs = load_run_model(run).predict(run.image(3))
    assert marker.exists()
    assert probs.shape == (3,) and np.allclose(probs, run.probs[3], atol=1e-5)

    # the trust was for the folder as hashed, not for whatever lies there later
    marker.unlink()
    (folder / "fingerprint.pb").write_bytes(b"changed")
    with pytest.raises(ModelError, match=ENV_TRUSTED) as changed:
        load_run_model(run)
    assert "--" not in str(changed.value) and not marker.exists()

    # a list kept inside the store vouches for nothing: refused in one line naming it
    inside = store / "trusted.txt"
    inside.write_text(file_sha256(folder) + "\n")
    monkeypatch.setenv(ENV_TRUSTED, str(inside))
    with pytest.raises(ValueError, match="inside the store"):
        load_run_model(run)
    assert not marker.exists()

    # the command line's own flag (explain --unsafe-load) is the caller's opt-in
    monkeypatch.delenv(ENV_TRUSTED)
    load_run_model(run, unsafe=True).predict(run.image(3))
    assert marker.exists()

def test_occlusion_maps_for_a_savedmodel_run_grad_cam_refused_in_one_line(tmp_path, image_tree, marker_savedmodel):
    """A SavedModel has no layers for Grad-CAM, but occlusion only needs its predictions."""
    from core.analysis.gradcam import GradCamUnavailable, explain_rows

    folder, _ = marker_savedmodel
    run = analyze(folder, load_dataset(image_tree), store=RunStore(tmp_path / "s"), progress=False,
                  projection=False, unsafe=True)
    with pytest.raises(ModelError, match="SavedModel"):   # not trusted by this process: refused
        explain_rows(run, [0, 1, 2], method="occlusion")
    from core.analysis import occlusion

    occlusion.remember_model(run, load_run_model(run, unsafe=True))  # the caller's opt-in (explain --unsafe-load)
    got = explain_rows(run, [0, 1, 2], method="occlusion")
    assert got.maps.shape == (3, 2, 20, 20) and not got.skipped and np.isfinite(got.maps).all()
    live = got.maps[~got.empty]
    assert len(live) >= 2 and np.allclose(live.max(axis=(1, 2)), 1.0)
    with pytest.raises(GradCamUnavailable, match="SavedModel.*use --method occlusion"):
        explain_rows(run, [0], method="gradcam")
