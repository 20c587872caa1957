"""The analysis pipeline end to end on tiny models and image trees made by the tests."""

import json

import cv2
import h5py
import numpy as np
import pytest
from PIL import Image

from core.analysis.projection import stored_projection
from core.data.datasets import load_dataset
from core.data.images import fit_to_input
from core.model.load import ModelError, build_inference_model, load_model
from core.run.analyze import analyze, load_run_model, to_probabilities
from core.run.store import RunConflictError, RunStore
from tests.conftest import LazyModule, make_classifier, write_image

keras = LazyModule("keras")  # imported when a test first uses it, not at collection


@pytest.mark.slow  # UMAP
def test_analyze_folder_writes_a_complete_run(tmp_path, image_tree, tiny_model_path):
    store = RunStore(tmp_path / "store")
    run = analyze(tiny_model_path, load_dataset(image_tree), store=store, progress=False,
                  projection=True, batch_size=4)
    assert run.n_images == 15 and run.classes == ["cat", "dog", "fox"]
    assert run.skipped["path"].tolist() == ["dog/broken.jpg"]
    assert "not a decodable image" in run.skipped["reason"][0]
    assert run.manifest["layer"] == "classifier:input"
    assert run.embeddings.shape == (15, 6)
    assert stored_projection(run).shape == (15, 2) and np.isfinite(stored_projection(run)).all()
    assert run.manifest["model"]["scale"] == "raw"  # the model has its own Rescaling layer
    assert np.allclose(run.probs.sum(axis=1), 1, atol=1e-5)
    # the stored probabilities are the model's own, image by image
    model = keras.saving.load_model(tiny_model_path)
    first = run.predictions.iloc[0]
    pixels = run.image(0)
    direct = model.predict(pixels[None].astype("float32"), verbose=0)[0]
    assert np.allclose(run.probs[0], direct, atol=1e-5)
    assert first["path"] == "cat/cat_0.png"
    assert run.image_file(0) == (image_tree / "cat" / "cat_0.png").resolve()
    assert set(run.timings) >= {"predict_s", "total_s"}  # the map is timed in its own derived result
    assert run.manifest["data"]["fingerprint"] and run.manifest["model"]["sha256"]


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_same_model_same_data_reuses_the_run_unless_forced(tmp_path, image_tree, tiny_model_path):
    store = RunStore(tmp_path)
    ds = load_dataset(image_tree)
    first = analyze(tiny_model_path, ds, store=store, progress=False, projection=False)
    created = first.manifest["created"]
    mtime = (first.path / "manifest.json").stat().st_mtime_ns
    again = analyze(tiny_model_path, ds, store=store, progress=False, projection=False)
    assert again.id == first.id and (again.path / "manifest.json").stat().st_mtime_ns == mtime
    forced = analyze(tiny_model_path, ds, store=store, progress=False, projection=False, force=True)
    assert forced.id == first.id and forced.uid != first.uid and forced.created >= created
    # new data: a new cache key, a new run
    write_image(image_tree / "cat" / "extra.png", (200, 40, 40))
    other = analyze(tiny_model_path, load_dataset(image_tree), store=store, progress=False, projection=False)
    assert other.id != first.id and other.n_images == 16


def _fake_projection(calls):
    def project(features, *, seed, **options):
        calls.append(seed)
        return np.random.default_rng(seed).normal(size=(len(features), 2)).astype(np.float32), {
            "method": "fake", "seed": seed}
    return project


def test_the_projection_seed_is_part_of_the_config(tmp_path, image_tree, tiny_model_path, monkeypatch):
    calls = []
    monkeypatch.setattr("core.analysis.projection.project", _fake_projection(calls))
    store, ds = RunStore(tmp_path), load_dataset(image_tree)
    seed0 = analyze(tiny_model_path, ds, store=store, progress=False, seed=0)
    seed1 = analyze(tiny_model_path, ds, store=store, progress=False, seed=1)
    assert calls == [0, 1] and seed0.id != seed1.id and seed0.cache_key != seed1.cache_key
    assert seed1.config.projection.seed == 1 and seed0.config.model_sha256 == seed1.config.model_sha256
    assert analyze(tiny_model_path, ds, store=store, progress=False, seed=1).uid == seed1.uid
    assert calls == [0, 1]


def test_a_name_is_never_silently_replaced_by_another_config(tmp_path, image_tree, tiny_model_path):
    store, ds = RunStore(tmp_path), load_dataset(image_tree)
    keras.utils.set_random_seed(7)
    other_model = tmp_path / "other.keras"
    make_classifier().save(other_model)
    mine = analyze(tiny_model_path, ds, store=store, run_id="mine", progress=False, projection=False)
    with pytest.raises(RunConflictError, match=r"Run 'mine' already exists and was made from another config "
                                               r"\(model_sha256 [0-9a-f]{12} vs [0-9a-f]{12}\): pass --force"):
        analyze(other_model, ds, store=store, run_id="mine", progress=False, projection=False)
    assert store.load("mine").uid == mine.uid
    replaced = analyze(other_model, ds, store=store, run_id="mine", progress=False, projection=False, force=True)
    assert replaced.config.model_sha256 != mine.config.model_sha256


def test_a_name_on_a_cache_hit_is_honoured(tmp_path, image_tree, tiny_model_path):
    store, ds = RunStore(tmp_path), load_dataset(image_tree)
    first = analyze(tiny_model_path, ds, store=store, progress=False, projection=False)
    named = analyze(tiny_model_path, ds, store=store, run_id="named", progress=False, projection=False)
    assert named.id == "named" and named.name == "named" and named.cache_key == first.cache_key
    assert np.array_equal(named.probs, first.probs)
    assert sorted(store.run_ids()) == sorted([first.id, "named"])


def test_a_cache_hit_imports_no_tensorflow(tmp_path, image_tree, tiny_model_path):
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    store = tmp_path / "store"
    args = ["analyze", "--model", str(tiny_model_path), "--data", str(image_tree), "--no-projection",
            "--store", str(store)]
    from core.cli import main
    assert main(args) == 0
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})
        from core.cli import main
        code = main({args!r})
        print(code, sorted(m for m in ("tensorflow", "keras", "umap") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 []"
    assert "Reusing run" in out.stderr


def test_logits_are_softmaxed_and_layer_option(tmp_path, image_tree):
    path = tmp_path / "logits.keras"
    make_classifier(logits=True).save(path)
    run = analyze(path, load_dataset(image_tree), store=RunStore(tmp_path / "s"), progress=False,
                  projection=False, layer="conv")
    assert run.manifest["model"]["outputs_were"] == "logits"
    assert np.allclose(run.probs.sum(axis=1), 1, atol=1e-5)
    assert run.manifest["layer"] == "conv" and run.embeddings.shape == (15, 4)  # feature map pooled
    with pytest.raises(ModelError, match="No layer named 'nope'. Layers:"):
        build_inference_model(load_model(path), layer="nope")


def test_output_width_mismatch_names_both_numbers(tmp_path, image_tree):
    path = tmp_path / "five.keras"
    make_classifier(5).save(path)
    with pytest.raises(ModelError, match="The model outputs 5 classes but the data set has 3 classes"):
        analyze(path, load_dataset(image_tree), store=RunStore(tmp_path), progress=False)
    assert RunStore(tmp_path).run_ids() == []


def test_image_size_for_a_fixed_size_model_is_refused_naming_both(tmp_path, image_tree, tiny_model_path):
    """--image-size is for models that take any size: another size for a fixed one was silently ignored."""
    size = tuple(load_model(tiny_model_path).input_shape[1:3])
    with pytest.raises(ModelError, match=rf"--image-size 32x30 does not apply: the model takes {size[0]}x{size[1]} "):
        analyze(tiny_model_path, load_dataset(image_tree), store=RunStore(tmp_path), progress=False,
                image_size=(32, 30), projection=False)
    assert RunStore(tmp_path).run_ids() == []


def test_a_two_headed_model_is_read_on_its_first_output_and_says_so(tmp_path, image_tree, capsys):
    """A classifier with a second, linear head saved last: the activation and the embeddings come from
    the first head's layers (the second head's linear activation made the probabilities logits)."""
    from core.cli import main

    inp = keras.Input((20, 20, 3))
    z = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(
        keras.layers.Rescaling(1 / 255)(inp)))
    hidden = keras.layers.Dense(6, activation="relu", name="hidden")(z)
    classes = keras.layers.Dense(3, activation="softmax", name="classes")(hidden)
    box = keras.layers.Dense(4, name="box")(z)
    path = tmp_path / "two.keras"
    keras.Model(inp, [classes, box]).save(path)
    assert main(["analyze", "--model", str(path), "--data", str(image_tree), "--store", str(tmp_path / "s"),
                 "--no-projection", "--no-input-check"]) == 0
    err = capsys.readouterr().err
    assert "The model has 2 outputs ('classes' (3 wide), 'box' (4 wide)): the first is read as the classes." in err
    run = RunStore(tmp_path / "s").load(RunStore(tmp_path / "s").run_ids()[0])
    info = run.manifest["model"]
    assert info["output_activation"] == "softmax" and info["outputs_were"] == "probabilities"
    assert run.manifest["layer"] == "classes:input" and run.embeddings.shape[1] == 6
    direct = keras.saving.load_model(path).predict(run.image(0)[None].astype("float32"), verbose=0)[0][0]
    assert np.allclose(run.probs[0], direct, atol=1e-5)


def test_a_reused_run_is_judged_again_with_a_history_given_now(tmp_path, image_tree, tiny_model_path):
    """analyze --history on a cached run: the stored check (made without it) is judged again, no model run."""
    store = RunStore(tmp_path)
    run = analyze(tiny_model_path, load_dataset(image_tree), store=store, run_id="r", progress=False,
                  projection=False)
    manifest = json.loads((run.path / "manifest.json").read_text())
    fake = {"sample": 15, "current": "raw", "suggested": "unit", "class_order": None, "rescaling_layer": None,
            "accuracies": {"raw": run.accuracy, "unit": min(1.0, run.accuracy + 0.5)}, "notes": [],
            "lines": ["Preprocessing mismatch: accuracy ... Re-run with --preprocess unit."]}
    manifest["model"]["input_check"] = fake
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    again = analyze(tiny_model_path, load_dataset(image_tree), store=store, run_id="r", progress=False,
                    projection=False, expected_accuracy=(run.accuracy, "val_accuracy"))
    assert again.model_info.input_warnings == []
    assert again.model_info.input_notes[-1].startswith(f"Accuracy {run.accuracy:.2f} here matches")
    assert store.load("r").model_info.input_check["suggested"] is None  # recorded in the run


@pytest.mark.parametrize("resize, like", [
    ("linear", lambda img, size: cv2.resize(img, size)),                        # cv2.resize's default
    ("nearest", lambda img, size: np.asarray(Image.fromarray(img).resize(size, Image.NEAREST))),  # load_img's
])
def test_resize_feeds_the_model_pictures_resized_as_its_training_pipeline_did(tmp_path, tiny_model_path, resize,
                                                                               like):
    """Pictures larger than the model's input, resized as cv2.resize / Keras' load_img do: the run's
    probabilities are the model's on exactly those pixels, and the run and its single-image model say so."""
    rng = np.random.default_rng(2)
    root = tmp_path / "big"
    pictures = {}
    for c in ("cat", "dog", "fox"):
        for i in range(3):
            img = rng.integers(0, 256, (57, 63, 3), dtype=np.uint8)  # fine detail: the methods differ
            (root / c).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / c / f"{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            pictures[f"{c}/{i}.png"] = img
    store = RunStore(tmp_path / "s")
    area = analyze(tiny_model_path, load_dataset(root), store=store, progress=False, projection=False)
    run = analyze(tiny_model_path, load_dataset(root), store=store, progress=False, projection=False, resize=resize)
    assert run.id != area.id and run.manifest["model"]["resize"] == resize and run.config.resize == resize
    assert "resize" not in area.config.to_dict()  # the key of an 'area' run is the key it had before
    model = keras.saving.load_model(tiny_model_path)
    paths = run.predictions["path"].tolist()
    fed = np.stack([like(pictures[p], (20, 20)) for p in paths]).astype("float32")
    assert np.allclose(run.probs, model.predict(fed, verbose=0), atol=1e-5)
    assert not np.allclose(area.probs, run.probs, atol=1e-4)  # another picture than INTER_AREA's
    single = load_run_model(run).predict(pictures[paths[0]])
    assert np.allclose(single, run.probs[0], atol=1e-5)


def test_grayscale_model_gets_one_channel_and_resized_input(tmp_path, image_tree):
    path = tmp_path / "gray.keras"
    make_classifier(input_shape=(12, 10, 1)).save(path)
    run = analyze(path, load_dataset(image_tree), store=RunStore(tmp_path), progress=False, projection=False)
    assert run.manifest["model"]["channels"] == 1 and run.manifest["model"]["input_size"] == [12, 10]
    assert run.n_images == 15


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_nested_backbone_features_are_the_last_dense_input(tmp_path, image_tree):
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35)
    model = keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 127.5, offset=-1), backbone,
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(8, activation="relu"),
        keras.layers.Dropout(0.3), keras.layers.Dense(3, activation="softmax"),
    ])
    path = tmp_path / "nested.keras"
    model.save(path)
    run = analyze(path, load_dataset(image_tree), store=RunStore(tmp_path), progress=False, projection=False)
    assert run.embeddings.shape == (15, 8)
    assert run.manifest["layer"].endswith(":input")
    # a layer inside the backbone, pooled over space; probabilities unchanged by the rebuild
    inner = analyze(path, load_dataset(image_tree), store=RunStore(tmp_path), progress=False,
                    projection=False, layer=f"{backbone.name}/block_16_project")
    assert inner.manifest["layer"] == f"{backbone.name}/block_16_project"
    assert inner.embeddings.shape == (15, backbone.get_layer("block_16_project").output.shape[-1])
    assert np.allclose(inner.probs, run.probs, atol=1e-5)
    with pytest.raises(ModelError, match="No layer named 'nope' inside"):
        build_inference_model(load_model(path), layer=f"{backbone.name}/nope")
    with pytest.raises(ModelError, match="is a Dense, not a nested model"):
        build_inference_model(load_model(path), layer=f"{model.layers[-1].name}/x")


def test_lambda_model_refused_in_safe_mode_unless_opted_in(tmp_path, image_tree):
    inp = keras.Input((20, 20, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inp)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(4)(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    path = tmp_path / "lambda.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(ModelError, match="needs arbitrary Python code.*--unsafe-load"):
        load_model(path)
    run = analyze(path, load_dataset(image_tree), store=RunStore(tmp_path), progress=False,
                  projection=False, unsafe=True)
    assert run.n_images == 15


def test_not_a_model_file(tmp_path):
    bad = tmp_path / "garbage.keras"
    bad.write_bytes(b"definitely not a zip")
    with pytest.raises(ModelError, match="Not a Keras model file: '.*garbage.keras'"):
        load_model(bad)
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"Not a model file: '.*weights.pt' \(expected: .keras file, legacy .h5 file, .onnx file, SavedModel folder\)"):
        load_model(tmp_path / "weights.pt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelError, match="has no saved_model.pb"):
        load_model(tmp_path / "folder")


def test_legacy_h5_written_by_keras3(tmp_path, image_tree, tiny_model_path):
    model = keras.saving.load_model(tiny_model_path)
    path = tmp_path / "legacy.h5"
    model.save(path)
    run = analyze(path, load_dataset(image_tree), store=RunStore(tmp_path), progress=False, projection=False)
    ref = analyze(tiny_model_path, load_dataset(image_tree), store=RunStore(tmp_path), progress=False,
                  projection=False)
    assert run.manifest["model"]["format"] == "h5"
    assert np.allclose(run.probs, ref.probs, atol=1e-5)


def _write_tf_keras_2_h5(path, kernel1, bias1, kernel2, bias2):
    """An HDF5 model laid out exactly as tf.keras 2.x's model.save('x.h5') writes it."""
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 8, 8, 1], "dtype": "float32",
                                                "sparse": False, "ragged": False, "name": "input_1"}},
        {"class_name": "Flatten", "config": {"name": "flatten", "trainable": True, "dtype": "float32",
                                             "data_format": "channels_last"}},
        {"class_name": "Dense", "config": {"name": "dense", "trainable": True, "dtype": "float32",
                                           "units": 16, "activation": "relu", "use_bias": True,
                                           "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
                                           "bias_initializer": {"class_name": "Zeros", "config": {}},
                                           "kernel_regularizer": None, "bias_regularizer": None,
                                           "activity_regularizer": None, "kernel_constraint": None,
                                           "bias_constraint": None}},
        {"class_name": "Dense", "config": {"name": "dense_1", "trainable": True, "dtype": "float32",
                                           "units": 3, "activation": "softmax", "use_bias": True,
                                           "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
                                           "bias_initializer": {"class_name": "Zeros", "config": {}},
                                           "kernel_regularizer": None, "bias_regularizer": None,
                                           "activity_regularizer": None, "kernel_constraint": None,
                                           "bias_constraint": None}},
    ]}}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(config)
        g = f.create_group("model_weights")
        g.attrs["keras_version"] = "2.15.0"
        g.attrs["backend"] = "tensorflow"
        g.attrs["layer_names"] = np.array([b"flatten", b"dense", b"dense_1"])
        g.create_group("flatten").attrs["weight_names"] = np.array([], dtype="S1")
        for name, (k, b) in (("dense", (kernel1, bias1)), ("dense_1", (kernel2, bias2))):
            lg = g.create_group(name)
            lg.attrs["weight_names"] = np.array([f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()])
            lg.create_dataset(f"{name}/kernel:0", data=k)
            lg.create_dataset(f"{name}/bias:0", data=b)


def test_legacy_h5_in_tf_keras_2_layout(tmp_path):
    rng = np.random.default_rng(0)
    k1, b1 = rng.normal(0, 0.1, (64, 16)).astype("float32"), rng.normal(0, 0.1, 16).astype("float32")
    k2, b2 = rng.normal(0, 0.5, (16, 3)).astype("float32"), rng.normal(0, 0.1, 3).astype("float32")
    path = tmp_path / "tfkeras2.h5"
    _write_tf_keras_2_h5(path, k1, b1, k2, b2)
    root = tmp_path / "digits"
    for c, name in enumerate(["zero", "one", "two"]):
        for i in range(3):
            write_image(root / name / f"{i}.png", (c * 80, c * 80, c * 80), size=(8, 8), seed=i)
    run = analyze(path, load_dataset(root), store=RunStore(tmp_path / "s"), progress=False, projection=False)
    assert run.manifest["model"]["scale"] == "unit" and run.embeddings.shape == (9, 16)
    gray = [fit_to_input(run.image(i), size=(8, 8), channels=1) for i in range(9)]
    x = np.stack(gray).reshape(9, -1).astype("float32") / 255.0
    hidden = np.maximum(x @ k1 + b1, 0)
    expected = to_probabilities(hidden @ k2 + b2, activation=None, n_classes=3)
    assert np.allclose(run.probs, expected, atol=1e-4)
    assert np.allclose(run.embeddings, hidden, atol=1e-4)


def test_savedmodel_gives_probabilities_without_embeddings(tmp_path, image_tree, tiny_model_path):
    model = keras.saving.load_model(tiny_model_path)
    export = tmp_path / "exported"
    model.export(export, verbose=False)
    run = analyze(export, load_dataset(image_tree), store=RunStore(tmp_path), progress=False, unsafe=True)
    ref = analyze(tiny_model_path, load_dataset(image_tree), store=RunStore(tmp_path), progress=False,
                  projection=False)
    assert run.model_info.format == "savedmodel" and run.model_info.scale == "raw" and run.model_info.unsafe_load
    assert np.allclose(run.probs, ref.probs, atol=1e-5)
    assert run.embeddings is None and stored_projection(run) is None
    assert "No embeddings" in run.manifest["notes"][0]


def test_run_model_classifies_one_image_like_the_run(tmp_path, image_tree, tiny_model_path):
    run = analyze(tiny_model_path, load_dataset(image_tree), store=RunStore(tmp_path), progress=False,
                  projection=False)
    rm = load_run_model(run)
    probs = rm.predict(run.image(3))
    assert probs.shape == (3,) and np.allclose(probs, run.probs[3], atol=1e-5)


def test_sigmoid_single_unit_becomes_two_columns():
    p = to_probabilities(np.array([[0.2], [0.9]]), activation="sigmoid", n_classes=2)
    assert np.allclose(p, [[0.8, 0.2], [0.1, 0.9]])


def test_nested_layer_in_a_branching_model_is_refused():
    backbone = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="inner_conv")],
                                name="tiny_backbone")
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(backbone(inp)))
    b = keras.layers.Dense(3)(keras.layers.Flatten()(inp))
    out = keras.layers.Activation("softmax")(keras.layers.Add()([a, b]))
    with pytest.raises(ModelError, match="not a single chain"):
        build_inference_model(keras.Model(inp, out), layer="tiny_backbone/inner_conv")


def test_a_reused_run_records_an_unsafe_load_opt_in_given_later(tmp_path, image_tree, tiny_model_path):
    store, ds = RunStore(tmp_path), load_dataset(image_tree)
    first = analyze(tiny_model_path, ds, store=store, progress=False, projection=False)
    assert first.model_info.unsafe_load is False
    again = analyze(tiny_model_path, ds, store=store, progress=False, projection=False, unsafe=True)
    assert again.uid == first.uid and again.model_info.unsafe_load is True
    assert store.load(first.id).model_info.unsafe_load is True


def test_a_second_writer_of_the_same_name_is_refused_before_any_work(tmp_path, image_tree, tiny_model_path,
                                                                    monkeypatch):
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    from core.run.store import RunBusyError

    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})
        from core.run.store import RunStore
        with RunStore({str(tmp_path)!r}).reserve("busy"):
            print("holding", flush=True); time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"

        def no_model_loading(*args, **kwargs):
            raise AssertionError("the model was loaded although the name is taken")
        monkeypatch.setattr("core.run.analyze.load_model", no_model_loading)
        with pytest.raises(RunBusyError, match="'busy' is being written by another process"):
            analyze(tiny_model_path, load_dataset(image_tree), store=RunStore(tmp_path), run_id="busy",
                    progress=False, projection=False)
    finally:
        holder.kill()
        holder.wait(timeout=30)
