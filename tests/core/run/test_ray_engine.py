"""The Ray Data engine: the same run as the local engine, on a local Ray with 2 CPUs.

Ray starts once for the module (a few seconds) and every Ray pipeline starts
its actors anew (each imports TensorFlow), so the Ray runs here are few: one
analysis through the CLI compared with the local engine's, and one worker
error. The actor class and the pure helpers are tested in this process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.cli import main
from core.data.datasets import load_dataset
from core.model.load import ModelError, file_sha256
from core.run.analyze import analyze
from core.run.ray_engine import (
    BatchPredictor,
    RayEngineError,
    RayOptions,
    _assemble,
    _write_model_files,
    engine_options,
    init_ray,
    read_model_files,
    run_inference_ray,
)
from core.run.store import RunStore
from tests.conftest import CLASS_COLOURS, write_image

REPO = Path(__file__).resolve().parents[3]
PIXEL_LIMIT = 1_000  # the 20x20 images pass, the one 40x40 image is refused from its header


@pytest.fixture(scope="module")
def local_ray():
    import ray

    started = init_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def thirty_images(tmp_path_factory):
    """root/<class>/<i>.png, 3 classes x 9 images, plus a corrupt .jpg, a text file and an image over
    PIXEL_LIMIT: 29 rows, 2 of them undecodable."""
    root = tmp_path_factory.mktemp("ray") / "images"
    for c, (name, rgb) in enumerate(CLASS_COLOURS.items()):
        for i in range(9):
            write_image(root / name / f"{name}_{i}.png", rgb, seed=c * 10 + i)
    (root / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "cat" / "notes.txt").write_text("not an image")
    write_image(root / "fox" / "large.png", CLASS_COLOURS["fox"], size=(40, 40))
    return root


@pytest.fixture(scope="module")
def local_and_ray_runs(local_ray, thirty_images, tiny_model_path, tmp_path_factory):
    """The same analysis by the local engine (analyze) and by Ray (the CLI, 2 actors, blocks of 8 rows)."""
    stores = tmp_path_factory.mktemp("stores")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLASSIFIER_MAX_PIXELS", str(PIXEL_LIMIT))  # Ray's workers started before this: passed on
        local = analyze(tiny_model_path, load_dataset(thirty_images), store=RunStore(stores / "local"),
                        run_id="tiny", batch_size=8, projection=False, progress=False)
        rc = main(["analyze", "--model", str(tiny_model_path), "--data", str(thirty_images), "--name", "tiny",
                   "--batch-size", "8", "--no-projection", "--engine", "ray", "--ray-actors", "2",
                   "--store", str(stores / "ray")])
    assert rc == 0
    return local, RunStore(stores / "ray").load("tiny"), stores / "ray"


def test_the_ray_run_is_the_local_run(local_and_ray_runs, local_ray):
    local, on_ray, _ = local_and_ray_runs
    assert local.timings["engine"] == "local" and on_ray.timings["engine"] == "ray"
    # same rows in the same order
    columns = ["id", "path", "split", "true"]
    assert on_ray.predictions[columns].equals(local.predictions[columns])
    assert len(on_ray.predictions) == 27
    assert on_ray.predictions["predicted"].tolist() == local.predictions["predicted"].tolist()
    np.testing.assert_allclose(on_ray.probs, local.probs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(on_ray.embeddings, local.embeddings, atol=1e-5, rtol=0)
    # same skipped files with the same reasons: one found at discovery, two by the decoder
    assert on_ray.skipped.to_dict("records") == local.skipped.to_dict("records")
    reasons = dict(zip(on_ray.skipped["path"], on_ray.skipped["reason"]))
    assert set(reasons) == {"cat/notes.txt", "dog/broken.jpg", "fox/large.png"}
    assert "not a decodable image" in reasons["dog/broken.jpg"]
    assert "pixel" in reasons["fox/large.png"] and f"{PIXEL_LIMIT:,}" in reasons["fox/large.png"]
    # the same manifest sections, and the same config: the engine is no part of it
    for section in ("model", "metrics", "splits", "classes"):
        assert on_ray.manifest[section] == local.manifest[section], section
    assert on_ray.layer == local.layer == "classifier:input"
    assert on_ray.cache_key == local.cache_key
    # a local Ray listens on the loopback address only
    assert {node["NodeManagerAddress"] for node in local_ray.nodes()} == {"127.0.0.1"}


def test_a_cached_run_asked_of_ray_imports_neither_tensorflow_nor_ray(local_and_ray_runs, thirty_images,
                                                                        tiny_model_path, tmp_path):
    _, on_ray, ray_store = local_and_ray_runs
    script = "\n".join([
        "import sys",
        "from core.run.analyze import analyze",
        "from core.data.datasets import load_dataset",
        "from core.run.store import RunStore",
        f"run = analyze({str(tiny_model_path)!r}, load_dataset({str(thirty_images)!r}), "
        f"store=RunStore({str(ray_store)!r}), run_id='tiny', batch_size=8, projection=False, "
        "progress=False, engine='ray', ray_actors=2)",
        "print(run.uid, sorted(m for m in ('tensorflow', 'keras', 'ray', 'umap') if m in sys.modules))",
    ])
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [on_ray.uid, "[]"]


def test_a_worker_error_reaches_the_caller_as_one_line(local_ray, thirty_images, tiny_model_path):
    # The driver of an analysis loads the model first, so a bad layer stops there; called directly,
    # it is the actor's __init__ that fails, and its ModelError comes back out of Ray's wrappers.
    with pytest.raises(ModelError) as caught:
        run_inference_ray(tiny_model_path, load_dataset(thirty_images), layer="no_such_layer", batch_size=32,
                          options=RayOptions(actors=1), progress=False)
    message = str(caught.value)
    assert message.startswith("No layer named 'no_such_layer'") and "\n" not in message


def _option_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: "), err
    return err


def test_engine_options_are_checked_before_any_work(tmp_path, image_tree, tiny_model_path, capsys, monkeypatch):
    base = ["analyze", "--model", str(tiny_model_path), "--data", str(tmp_path / "absent"),
            "--store", str(tmp_path / "s")]
    assert "--ray-address applies only with --engine ray" in _option_error(base + ["--ray-address", "auto"], capsys)
    assert "--ray-cpus, --ray-actors apply only with --engine ray. Received: --engine local" in _option_error(
        base + ["--ray-cpus", "2", "--ray-actors", "2"], capsys)
    assert "--ray-cpus must be at least 1. Received: 0" in _option_error(
        base + ["--engine", "ray", "--ray-cpus", "0"], capsys)
    assert "--ray-actors must be at least 1. Received: -2" in _option_error(
        base + ["--engine", "ray", "--ray-actors", "-2"], capsys)
    assert "--ray-cpus sizes a local Ray only" in _option_error(
        base + ["--engine", "ray", "--ray-address", "10.0.0.1:6379", "--ray-cpus", "4"], capsys)
    with pytest.raises(ValueError, match=r"Unknown engine 'spark'\. Available: \['local', 'ray'\]"):
        engine_options("spark")
    # Without Ray installed: one line with the command that installs it (no data was read: the
    # data path above does not exist, and the error is not about it)
    monkeypatch.setitem(sys.modules, "ray", None)
    err = _option_error(base + ["--engine", "ray"], capsys)
    assert err == "error: --engine ray needs Ray Data, which is not installed: pip install -r requirements-ray.txt"
    with pytest.raises(RayEngineError, match="pip install -r requirements-ray.txt"):
        analyze(tiny_model_path, load_dataset(image_tree), store=RunStore(tmp_path / "s"), engine="ray")


def test_the_actor_decodes_and_predicts_a_block_in_this_process(tmp_path, tiny_model_path):
    import keras

    from core.model.load import prepare_input

    files = read_model_files(tiny_model_path)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    actor = BatchPredictor(model_files=files, sha256=file_sha256(tiny_model_path), layer=None, scale="auto",
                           image_size=None, unsafe=False, root=None, pixels=pixels, max_pixels=10_000)
    got = actor({"row": np.array([3, 0, 4]), "path": np.array(["a", "b", "c"])})
    model = keras.saving.load_model(tiny_model_path)
    expected = np.asarray(model(prepare_input(pixels[[3, 0, 4]], "raw")))  # the model rescales itself
    assert got["row"].tolist() == [3, 0, 4] and got["ok"].all() and got["reason"].tolist() == ["", "", ""]
    np.testing.assert_allclose(got["outputs"], expected, atol=1e-6)
    assert got["features"].shape == (3, 6)

    # files: a corrupt one is marked with the decoder's reason and zeros, the others predicted
    root = tmp_path / "files"
    write_image(root / "good.png", (200, 40, 40))
    (root / "bad.png").write_bytes(b"\x89PNG but no image")
    on_files = BatchPredictor(model_files=files, sha256=None, layer="penultimate", scale="unit",
                              image_size=None, unsafe=False, root=str(root), pixels=None, max_pixels=10_000)
    got = on_files({"row": np.array([7, 8]), "path": np.array(["bad.png", "good.png"])})
    assert got["ok"].tolist() == [False, True]
    assert got["reason"][0].startswith("not a decodable image") and got["reason"][1] == ""  # its path is beside it
    assert not got["outputs"][0].any() and got["outputs"][1].sum() == pytest.approx(1, abs=1e-5)
    assert got["features"].shape == (2, 6)  # the 'penultimate' layer's 6 outputs

    # bytes that are not the model the run hashed are refused
    with pytest.raises(ModelError, match="changed after it was hashed"):
        BatchPredictor(model_files=files, sha256="0" * 64, layer=None, scale="auto", image_size=None,
                       unsafe=False, root=None, pixels=pixels, max_pixels=10_000)


def test_model_files_travel_as_bytes_and_hash_as_the_original(tmp_path):
    folder = tmp_path / "saved"  # a SavedModel-like folder: nested files
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    files = read_model_files(folder)
    assert sorted(files) == ["saved/saved_model.pb", "saved/variables/variables.index"]
    copy = _write_model_files(files, tmp_path / "worker")
    assert copy == tmp_path / "worker" / "saved" and file_sha256(copy) == file_sha256(folder)
    with pytest.raises(RayEngineError, match=r"leaves the model folder: '\.\./evil'"):
        _write_model_files({"../evil": b"x"}, tmp_path / "worker2")


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_blocks_arriving_in_any_order_give_the_rows_in_order():
    class Rows:  # the two fields _assemble reads of a data set
        paths = [f"img_{i}.png" for i in range(5)]

        def __len__(self):
            return 5

    def block(rows, ok):
        rows, ok = np.array(rows), np.array(ok)
        return {"row": rows, "ok": ok, "reason": np.array(["" if k else f"bad {r}" for r, k in zip(rows, ok)]),
                "outputs": np.stack([np.full(2, r, np.float32) for r in rows]),
                "features": np.stack([np.full(3, 10 * r, np.float32) for r in rows])}

    arrived = [block([3, 4], [True, False]), block([0, 1, 2], [True, False, True])]
    ok_rows, outputs, features, failed = _assemble(arrived, Rows())
    assert ok_rows.tolist() == [0, 2, 3]
    assert outputs[:, 0].tolist() == [0, 2, 3] and features[:, 0].tolist() == [0, 20, 30]
    assert failed == [{"path": "img_1.png", "reason": "bad 1"}, {"path": "img_4.png", "reason": "bad 4"}]
    with pytest.raises(RayEngineError, match="returned 4 rows for 5 images"):
        _assemble([block([0, 1, 2, 2], [True] * 4)], Rows())
