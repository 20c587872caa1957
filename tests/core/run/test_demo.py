"""The demo: the shipped model (its files, accuracy and safe-mode load), the first run that only
analyses, retraining on a tiny fake Fashion-MNIST (IDX gz files in tmp) and the digits fallback.

Tests that train carry the ``slow`` marker.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from core import cli, demo
from core.data import datasets
from core.run import jobs
from core.run.store import RunStore


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion_mnist(tmp_path, monkeypatch):
    """120 train + 40 test 28x28 images; class c is a bar at row 2c+4 (learnable in an epoch or two)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "fmnist"
    folder.mkdir()
    for split, n in (("train", 120), ("test", 40)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 30, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4: 2 * c + 6, 4:24] = 250
        img_file, lbl_file = datasets.FASHION_MNIST_FILES[split]
        _write_idx(folder / img_file, images)
        _write_idx(folder / lbl_file, labels)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(folder))
    return folder


@pytest.mark.slow
def test_run_demo_writes_the_fashion_mnist_run_with_training_figures(fake_fashion_mnist, tmp_path):
    seen: list[tuple[str, float]] = []
    run = demo.run_demo(store=RunStore(tmp_path / "runs"), progress=lambda m, f: seen.append((m, f)),
                        epochs=1, time_budget_s=120, out_dir=tmp_path / "model", projection=False)
    assert run.id == "fashion-mnist-demo"
    assert run.n_images == 160
    assert run.manifest["splits"] == {"test": 40, "train": 108, "val": 12}
    assert run.eval_split == "test" and run.metrics["n"] == 40
    training = run.training
    assert training["epochs"] == 1 and training["seconds"] > 0
    # Training scores the test split in bfloat16 (on AMX CPUs) with other batch boundaries than the
    # analysis: one borderline image of 40 may flip.
    assert training["test_accuracy"] == pytest.approx(run.metrics["accuracy"], abs=1 / 40 + 1e-9)
    assert training["recipe"]["recipe"] == "demo-cnn" and training["recipe"]["time_budget_s"] == 120
    assert len(training["history"]["val_accuracy"]) == 1
    assert run.classes == datasets.FASHION_MNIST_CLASSES
    fractions = [f for _, f in seen]
    assert fractions[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in fractions)
    assert any(m.startswith("Epoch 1 of about ") for m, _ in seen)  # a time budget re-plans the epochs
    assert fractions == sorted(fractions)  # the page's progress bar never runs backwards
    assert (tmp_path / "model" / "model.keras").is_file()


@pytest.mark.slow
def test_demo_falls_back_to_digits_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "find_fashion_mnist", lambda: None)
    argv = ["demo", "--store", str(tmp_path / "runs"), "--time-budget", "60", "--epochs", "1",
            "--out", str(tmp_path / "model"), "--no-projection"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "digits-demo"
    assert "using scikit-learn's digits" in err
    run = RunStore(tmp_path / "runs").load("digits-demo")
    assert run.n_images == 1797 and run.training["image_size"] == [16, 16]


@pytest.mark.parametrize("option, value, message", [
    ("--time-budget", "0", "error: --time-budget must be positive seconds. Received: 0.0"),
    ("--epochs", "0", "error: --epochs must be at least 1. Received: 0"),
])
def test_demo_command_rejects_bad_options_before_training(tmp_path, monkeypatch, capsys, option, value, message):
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: pytest.fail("must not train"))
    assert cli.main(["demo", option, value, "--store", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]


def test_demo_options_are_checked_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "find_fashion_mnist", lambda: None)
    argv = ["demo", "--export-to", str(tmp_path / "ship"), "--store", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --export-to writes the Fashion-MNIST demo model; the data set here is 'digits'")
    assert not (tmp_path / "ship").exists()


# --------------------------------------------------------------------------- the shipped model

def test_shipped_model_is_small_complete_and_recorded_above_the_target():
    folder = demo.SHIPPED_MODEL_DIR
    for name in demo.SHIPPED_FILES + ("README.md",):
        assert (folder / name).is_file(), name
    assert (folder / "model.keras").stat().st_size < 5_000_000  # tracked files stay under 5 MB
    record = demo.shipped_record()
    assert record["test_accuracy"] >= 0.92
    assert record["recipe"]["time_budget_s"] is None and record["recipe"]["epochs"] == record["epochs"]
    assert record["stopped_by"] == "epochs" and len(record["history"]["val_accuracy"]) == record["epochs"]
    assert record["classes"] == datasets.FASHION_MNIST_CLASSES
    assert (folder / "classes.txt").read_text().splitlines() == datasets.FASHION_MNIST_CLASSES


def test_shipped_model_loads_in_safe_mode_and_scores_what_it_records_on_the_test_split():
    from core.model.load import load_model

    model = load_model(demo.SHIPPED_MODEL_DIR / "model.keras")  # the analysis' own loader, safe mode
    assert tuple(model.input_shape[1:]) == (28, 28, 1) and model.output_shape[-1] == 10
    with zipfile.ZipFile(demo.SHIPPED_MODEL_DIR / "model.keras") as z:  # uncompiled: no optimizer state
        assert not json.loads(z.read("config.json")).get("compile_config")
        assert "optimizer" not in h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
    if datasets.find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST is not installed")
    data = datasets.load_fashion_mnist()
    test = data.splits == "test"
    assert data.fingerprint() == demo.shipped_record()["data_fingerprint"]
    probs = model.predict(data.pixels[test][..., None].astype(np.float32), batch_size=1000, verbose=0)
    accuracy = float((probs.argmax(1) == data.labels[test]).mean())
    assert accuracy == pytest.approx(demo.shipped_record()["test_accuracy"], abs=2e-4)


@pytest.fixture
def tiny_shipped_model(tmp_path, fake_fashion_mnist):
    """A shipped-model folder for the fake Fashion-MNIST: a tiny untrained model and its records."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((28, 28, 1))
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(4, 3, strides=3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="relu", name="embedding")(x)
    out = keras.layers.Dense(10, activation="softmax", name="classifier")(x)
    folder = tmp_path / "shipped"
    folder.mkdir()
    keras.Model(inp, out).save(folder / "model.keras")
    recipe = demo.demo_recipe().to_dict()
    (folder / "recipe.json").write_text(json.dumps({
        "recipe": recipe, "epochs": 15, "seconds": 1.0, "test_accuracy": 0.1, "stopped_by": "epochs",
        "data_fingerprint": datasets.load_fashion_mnist().fingerprint()}))
    (folder / "history.json").write_text(json.dumps({"accuracy": [0.1] * 15, "val_accuracy": [0.1] * 15}))
    (folder / "classes.txt").write_text("\n".join(datasets.FASHION_MNIST_CLASSES) + "\n")
    return folder


def test_first_run_analyses_with_the_shipped_model_in_safe_mode_and_never_trains(
        tiny_shipped_model, tmp_path, monkeypatch):
    from core import training
    from core.run import analyze

    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("the first run must not train"))
    loads = []
    real_load = analyze.load_model
    monkeypatch.setattr(analyze, "load_model", lambda path, *, unsafe: loads.append(unsafe) or real_load(path, unsafe=unsafe))
    store = RunStore(tmp_path / "runs")
    seen: list[tuple[str, float]] = []
    run = demo.run_demo(store=store, shipped_dir=tiny_shipped_model, projection=False,
                        progress=lambda m, f: seen.append((m, f)))
    assert loads == [False]  # Keras safe mode, like any model given to analyze
    assert run.id == "fashion-mnist-demo" and run.n_images == 160
    assert run.manifest["splits"] == {"test": 40, "train": 108, "val": 12}  # the splits it was trained with
    assert run.training["shipped"] is True and run.training["epochs"] == 15
    assert run.training["history"]["val_accuracy"] == [0.1] * 15
    assert run.model_info.path == str((tiny_shipped_model / "model.keras").resolve())
    assert seen[0][0].startswith("Analysing fashion-mnist (160 images) with the shipped demo model")
    assert seen[-1][1] == 1.0 and [f for _, f in seen] == sorted(f for _, f in seen)
    # a second demo reuses the run: no model load, no prediction
    monkeypatch.setattr(analyze, "load_model", lambda *a, **k: pytest.fail("must reuse the run"))
    again = demo.run_demo(store=store, shipped_dir=tiny_shipped_model, projection=False, progress=lambda m, f: None)
    assert again.uid == run.uid


def test_first_run_can_leave_the_map_to_a_background_process(tiny_shipped_model, tmp_path, monkeypatch):
    from core.analysis import projection

    started = []
    monkeypatch.setattr(jobs, "start", lambda run, name: started.append(run.id))
    run = demo.run_demo(store=RunStore(tmp_path / "runs"), shipped_dir=tiny_shipped_model,
                        background_projection=True, progress=lambda m, f: None)
    assert started == ["fashion-mnist-demo"]
    assert projection.projection_status(run) == "missing" and projection.stored_projection(run) is None  # the stub started nothing
    assert run.embeddings.shape == (160, 8)


def test_a_shipped_model_for_other_data_is_not_used(tiny_shipped_model, tmp_path, monkeypatch):
    record = json.loads((tiny_shipped_model / "recipe.json").read_text())
    (tiny_shipped_model / "recipe.json").write_text(json.dumps({**record, "data_fingerprint": "0" * 16}))
    trained = []
    monkeypatch.setattr(demo, "_train_and_analyse", lambda dataset, **kwargs: trained.append(kwargs["run_id"]))
    seen = []
    demo.run_demo(store=RunStore(tmp_path / "runs"), shipped_dir=tiny_shipped_model, projection=False,
                  progress=lambda m, f: seen.append(m))
    assert trained == ["fashion-mnist-demo"]
    assert any("not the copy the shipped model was trained on" in m for m in seen)


# --------------------------------------------------------------------------- quiet terminal output

@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_quiet_start_leaves_nothing_of_tensorflows_import_on_stderr_but_what_is_real():
    """TensorFlow 2.21 prints the absl and oneDNN lines at import whatever TF_CPP_MIN_LOG_LEVEL says."""
    code = ("from core.quiet import quiet_start; quiet_start(); import os, keras, tensorflow; "
            "os.write(2, b'written after the import\\n')")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "written after the import\n"


def test_the_import_filter_passes_on_every_line_that_is_not_known_noise(capfd):
    from core import quiet

    noise = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
             "I0000 00:00:1795369126.238189   20854 port.cc:153] oneDNN custom operations are on.\n"
             "E0000 00:00:1795369126.238189   20854 cuda_executor.cc:1228] failed call to cuInit: UNKNOWN\n")
    with quiet._stderr_filtered():
        os.write(2, noise.encode() + b"ImportError: a real problem\n")
    assert capfd.readouterr().err == "ImportError: a real problem\n"
