"""The demo on a tiny fake Fashion-MNIST (IDX gz files in tmp) and on the digits fallback.

Tests that train carry the ``slow`` marker.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest

pytest.importorskip("keras")

from core import cli, datasets, demo  # noqa: E402
from core.store import RunStore  # noqa: E402


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
