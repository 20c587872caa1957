"""Training recipes on tiny data: every recipe trains, saves, and its model loads for analysis.

Tiny data: 3 classes of 16x16 RGB PNGs (train/ 6 per class, test/ 2 per class).
Transfer backbones are built with weights=None at 32x32 (the smallest they
accept); every backbone is built, one (MobileNetV2) is trained; nothing
downloads. Tests that train carry the ``slow`` marker.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import LazyModule

keras = LazyModule("keras")  # imported when a test first uses it, not at collection

from core import (
    cli,
    training,  # noqa: E402
)
from core.data.datasets import load_dataset  # noqa: E402
from core.data.images import encode_png  # noqa: E402
from core.model import recipes
from core.model.recipes import Recipe, RecipeError  # noqa: E402
from core.run.store import RunStore  # noqa: E402
from tests.conftest import write_image  # noqa: E402

CLASSES = ("circle", "square", "stripes")


def _picture(kind: str, rng: np.random.Generator, side: int = 16) -> np.ndarray:
    img = rng.integers(0, 40, (side, side, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:side, :side]
    if kind == "circle":
        img[(yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (side / 3) ** 2] = (230, 40, 40)
    elif kind == "square":
        img[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = (40, 230, 40)
    else:
        img[:, ::4] = (40, 40, 230)
    return img


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{c}_{i}.png").write_bytes(encode_png(_picture(c, rng)))
    return load_dataset(root)


def _quick(**changes) -> Recipe:
    base = dict(epochs=1, batch_size=8, dense_units=(16, 8), conv_filters=(4, 8), val_split=0.5,
                early_stopping=False, reduce_lr=False, weights="none")
    base.update(changes)
    return Recipe(**base)


def _train_and_check(tiny_data, tmp_path, recipe: Recipe, *, size=16):
    recipe = recipe.replace(image_size=(size, size))
    store = RunStore(tmp_path / "runs")
    result, run = training.train_and_analyze(tiny_data, recipe, store=store, run_name="tiny",
                                             out_dir=tmp_path / "model", projection=False, progress=False,
                                             verbose=0)
    assert (tmp_path / "model" / "model.keras").is_file()
    assert (tmp_path / "model" / "classes.txt").read_text().splitlines() == list(CLASSES)
    saved = json.loads((tmp_path / "model" / "recipe.json").read_text())
    assert saved["recipe"]["recipe"] == recipe.recipe
    assert saved["classes"] == list(CLASSES)
    # The run was analysed from the saved file: 18 train (9 of them val) + 6 test rows.
    assert run.n_images == 24
    assert run.eval_split == "test"
    assert run.manifest["splits"] == {"test": 6, "train": 9, "val": 9}
    assert run.training["recipe"] == recipe.to_dict() | {"image_size": [size, size], "channels": 3}
    assert run.training["epochs"] == len(run.training["history"]["loss"])
    assert set(run.history.columns) >= {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert run.training["test_accuracy"] == pytest.approx(run.metrics["accuracy"])
    assert run.embeddings.shape == (24, recipe.dense_units[-1])
    from core.model.load import load_model

    loaded = load_model(tmp_path / "model" / "model.keras")  # safe mode
    assert loaded.layers[-1].name == "classifier"
    return result, run


@pytest.mark.slow
def test_small_cnn_trains_saves_and_analyses(tiny_data, tmp_path):
    _train_and_check(tiny_data, tmp_path, _quick(recipe="small-cnn", augment=("flip", "rotation", "shift",
                                                                              "zoom", "contrast")))


@pytest.mark.slow
def test_mlp_trains_saves_and_analyses(tiny_data, tmp_path):
    result, _ = _train_and_check(tiny_data, tmp_path, _quick(recipe="mlp", optimizer="sgd",
                                                             class_weights="balanced"))
    assert not any(isinstance(lyr, keras.layers.Conv2D) for lyr in result.model.layers)


@pytest.mark.slow
def test_demo_cnn_with_schedule_records_learning_rate(tiny_data, tmp_path):
    result, run = _train_and_check(tiny_data, tmp_path, _quick(recipe="demo-cnn", epochs=2,
                                                               lr_schedule="onecycle", learning_rate=0.01))
    lrs = run.training["history"]["learning_rate"]
    assert len(lrs) == 2 and lrs[1] < 0.01  # the cosine tail lowers it


@pytest.fixture
def random_imagenet(monkeypatch):
    """--weights imagenet without a download: the backbone keeps its random initial weights."""
    monkeypatch.setattr(recipes, "resolve_imagenet_weights", lambda backbone, image_size: None)


@pytest.mark.parametrize("backbone", recipes.BACKBONES)
def test_transfer_backbones_build_frozen_under_the_recipe_head(backbone, random_imagenet):
    recipe = _quick(recipe="transfer", backbone=backbone, batch_norm=backbone == "vgg16", image_size=(32, 32),
                    weights="imagenet")
    model = recipes.build_model(recipe, n_classes=3, image_size=(32, 32), channels=3)
    assert not model.get_layer(backbone).trainable  # a pretrained backbone is frozen by default
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 3)
    assert model.layers[-1].name == "classifier" and model.layers[-1].get_config()["activation"] == "softmax"
    assert model.get_layer("preprocess").get_config()["backbone"] == backbone
    # The head's last Dense block is the embedding the analysis projects.
    assert model.get_layer("dense_2").units == recipe.dense_units[-1]
    assert any(lyr.name == "dense_1_bn" for lyr in model.layers) == (backbone == "vgg16")


@pytest.mark.slow
def test_transfer_trains_fine_tunes_top_layers_but_not_batch_norm_and_analyses(tiny_data, tmp_path,
                                                                               random_imagenet):
    recipe = _quick(recipe="transfer", backbone="mobilenetv2", fine_tune=10, fine_tune_epochs=1, weights="imagenet")
    result, run = _train_and_check(tiny_data, tmp_path, recipe, size=32)
    assert run.manifest["model"]["scale"] == "raw"
    backbone = result.model.get_layer("mobilenetv2")
    top = backbone.layers[-10:]
    assert any(lyr.trainable for lyr in top)
    assert all(not lyr.trainable for lyr in top if isinstance(lyr, keras.layers.BatchNormalization))
    assert all(not lyr.trainable for lyr in backbone.layers[:-10])
    assert result.epochs == 2
    assert result.history["learning_rate"][1] == pytest.approx(result.history["learning_rate"][0] / 10)


def test_a_backbone_without_pretrained_weights_trains_whole_from_scratch():
    """--weights none 'trains from scratch' (README): a frozen random backbone left MobileNetV2's features
    at 1e-13 and the head at chance (a new-user sweep); every layer learns, BatchNormalization included."""
    recipe = _quick(recipe="transfer", backbone="mobilenetv2", image_size=(32, 32))
    model = recipes.build_model(recipe, n_classes=3, image_size=(32, 32), channels=3)
    backbone = model.get_layer("mobilenetv2")
    assert backbone.trainable and all(layer.trainable for layer in backbone.layers)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    # in training, its BatchNormalization normalises by the batch (it was pinned to inference mode, whose
    # initial statistics leave a random backbone's features at 1e-12)
    features = keras.Model(model.inputs, model.get_layer("pool").output)(x, training=True)
    assert float(np.abs(np.asarray(features)).max()) > 1e-3
    with pytest.raises(recipes.RecipeError, match="with --weights none the whole backbone trains from scratch"):
        _quick(recipe="transfer", backbone="mobilenetv2", fine_tune=5).validate()


def test_backbone_preprocess_layer_matches_keras_applications():
    from core.model.layers import BackbonePreprocess

    x = np.random.default_rng(1).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    for backbone, module in (("vgg16", keras.applications.vgg16), ("mobilenetv2", keras.applications.mobilenet_v2),
                             ("resnet50", keras.applications.resnet)):
        ours = np.asarray(BackbonePreprocess(backbone)(x))
        np.testing.assert_allclose(ours, module.preprocess_input(x.copy()), rtol=1e-5, atol=1e-4)
    gray = np.full((1, 4, 4, 1), 255.0, np.float32)
    assert np.asarray(BackbonePreprocess("mobilenetv2")(gray)).shape == (1, 4, 4, 3)
    np.testing.assert_allclose(np.asarray(BackbonePreprocess("mobilenetv2")(gray)), 1.0)


@pytest.mark.parametrize("changes, message", [
    (dict(recipe="transfer", backbone="alexnet"), "`backbone` must be one of"),
    (dict(recipe="transfer"), "needs --backbone"),
    (dict(recipe="transfer", backbone="vgg16", image_size=(16, 16)), "vgg16 needs images of at least 32x32"),
    (dict(val_split=0.0), "--val-split must be between 0 and 1"),
    (dict(val_split=1.5), "Received: 1.5"),
    (dict(recipe="resnet"), "`recipe` must be one of"),
    (dict(optimizer="adagrad"), "`optimizer` must be one of"),
    (dict(augment=("blur",)), "`augment` must be one of"),
    (dict(image_size=(8, 8)), "too small for 2 conv blocks"),
    (dict(fine_tune=3), "--fine-tune is only for the transfer recipe"),
])
def test_wrong_options_give_one_line_errors(changes, message):
    with pytest.raises(RecipeError, match=message) as info:
        Recipe(**changes).validate()
    assert "\n" not in str(info.value)


def test_parse_size_and_lists():
    assert recipes.parse_size("64") == (64, 64)
    assert recipes.parse_size("96x128") == (96, 128)
    assert recipes.parse_int_list("32, 64", option="--conv-filters") == (32, 64)
    with pytest.raises(RecipeError, match="--image-size must be H or HxW"):
        recipes.parse_size("big")


def test_imagenet_weights_offline_and_uncached_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("URL fetch failure: network unreachable")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    with pytest.raises(RecipeError) as info:
        recipes.resolve_imagenet_weights("vgg16", (32, 32))
    msg = str(info.value)
    assert "\n" not in msg
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert str(tmp_path / "models") in msg and "network unreachable" in msg


def test_imagenet_weights_come_from_the_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: pytest.fail("must not download"))
    # Real weights for the one-layer-deep check: save an untrained MobileNetV2 under the cache name.
    model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    name = recipes.weights_file_name("mobilenetv2", (96, 96))
    assert name == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    (tmp_path / "models").mkdir()
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(tmp_path / "models" / name, "w") as fh:  # the legacy layout keras.applications ships
        legacy_h5_format.save_weights_to_hdf5_group(fh, model)
    assert recipes.resolve_imagenet_weights("mobilenetv2", (96, 96)) == str(tmp_path / "models" / name)
    backbone = recipes.make_backbone("mobilenetv2", (96, 96), weights="imagenet")
    np.testing.assert_allclose(backbone.get_weights()[0], model.get_weights()[0])


def test_a_damaged_cached_weights_file_is_named(tmp_path, monkeypatch):
    """A truncated download left in the cache gave 'Unable to synchronously open file (file signature not
    found)', which names no file."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: pytest.fail("must not download"))
    name = recipes.weights_file_name("mobilenetv2", (96, 96))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / name).write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(RecipeError) as info:
        recipes.make_backbone("mobilenetv2", (96, 96), weights="imagenet")
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "models" / name) in msg and "delete it" in msg


def test_assign_splits_is_stratified_and_keeps_given_splits(tiny_data):
    split = training.assign_splits(tiny_data, val_split=0.5, seed=0)
    val = split.splits == "val"
    assert np.bincount(split.labels[val]).tolist() == [3, 3, 3]
    assert (split.splits == "test").sum() == 6
    again = training.assign_splits(split, val_split=0.5, seed=1)  # a 'val' split present: kept as it is
    np.testing.assert_array_equal(again.splits, split.splits)


def test_balanced_class_weights_exact():
    weights = training.balanced_class_weights(np.array([0, 0, 0, 1]), 3)
    # n / (n_present_classes * count): 4/(2*3), 4/(2*1); absent class 2 -> 1.0
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0, 2: 1.0})


def test_oversample_tops_small_classes_up_with_new_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 12, 12, 1)).astype(np.uint8)
    labels = np.array([0, 0, 0, 0, 1])
    x, y = training.oversample(images, labels, up_to=4, seed=0)
    assert np.bincount(y).tolist() == [4, 4]
    assert x.shape == (8, 12, 12, 1) and x.dtype == np.uint8


def _train_argv(**values) -> list[str]:
    argv = ["train"]
    for key, value in values.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv


def test_train_command_ctrl_c_keeps_checkpoint_and_says_where(tiny_data, tmp_path, monkeypatch, capsys):
    def interrupted(model, fit_args, *, checkpoint, **kwargs):
        model.save(checkpoint)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_fit_phase", interrupted)
    argv = _train_argv(data=tiny_data.source, recipe="mlp", image_size=8, out=tmp_path / "m", no_analyze=True)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"Interrupted: best checkpoint kept at {tmp_path / 'm' / 'checkpoint.keras'}"


@pytest.mark.slow
def test_train_command_trains_without_analysis(tiny_data, tmp_path, capsys):
    argv = _train_argv(data=tiny_data.source, recipe="mlp", image_size=8, epochs=1, dense_units="8,4",
                       out=tmp_path / "m", no_analyze=True, val_split=0.3)
    assert cli.main(argv) == 0
    assert (tmp_path / "m" / "model.keras").is_file()
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert len(history["val_accuracy"]) == 1
    out, err = capsys.readouterr()
    assert out == ""  # no analysis run, so no run id
    assert "test accuracy" in err


@pytest.mark.parametrize("option, value, message", [
    ("val_split", 1.0, "error: --val-split must be between 0 and 1 (exclusive). Received: 1.0"),
    ("image_size", "big", "error: --image-size must be H or HxW"),
    ("conv_filters", "32,x", "error: --conv-filters must be comma-separated integers"),
    ("oversample_to", 0, "error: --oversample-to must be a positive number of images. Received: 0"),
])
def test_train_command_rejects_bad_options_in_one_line(tiny_data, capsys, option, value, message):
    assert cli.main(_train_argv(data=tiny_data.source, recipe="mlp", **{option: value})) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


# --------------------------------------------------------------------------- streaming from disk

@pytest.fixture(scope="module")
def uneven_data(tmp_path_factory):
    """train/: circle 8, square 4, stripes 2 PNGs and an undecodable square/broken.png; val/ and test/:
    one a class, and an undecodable test/stripes/broken.png."""
    root = tmp_path_factory.mktemp("uneven")
    colours = {"circle": (230, 40, 40), "square": (40, 230, 40), "stripes": (40, 40, 230)}
    seed = 0
    for split, counts in (("train", (8, 4, 2)), ("val", (1, 1, 1)), ("test", (1, 1, 1))):
        for (name, rgb), n in zip(colours.items(), counts):
            for i in range(n):
                seed += 1
                write_image(root / split / name / f"{name}_{i}.png", rgb, size=(16, 16), seed=seed)
    (root / "train" / "square" / "broken.png").write_bytes(b"not a png")
    (root / "test" / "stripes" / "broken.png").write_bytes(b"not a png either")
    return load_dataset(root)


def _stream_epoch(stream) -> tuple[np.ndarray, np.ndarray]:
    batches = [stream[i] for i in range(len(stream))]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def test_streaming_data_skips_and_oversamples_like_in_memory(uneven_data):
    recipe = training.with_geometry(uneven_data, _quick(recipe="mlp", batch_size=4, image_size=(16, 16),
                                                        oversample_to=6))
    memory = training.prepare_data(uneven_data, recipe)
    streamed = training.prepare_data(uneven_data, recipe, in_memory_limit_bytes=0)
    assert not memory.streaming and streamed.streaming
    # The same files skipped, in the same order, with their reasons.
    assert streamed.failed == memory.failed
    assert sorted(Path(f["path"]).as_posix() for f in memory.failed) == ["test/stripes/broken.png",
                                                                         "train/square/broken.png"]
    # The same oversampled copies: 8 circles, 4 + 2 squares, 2 + 4 stripes.
    np.testing.assert_array_equal(streamed.train_labels, memory.train_labels)
    assert np.bincount(memory.train_labels).tolist() == [8, 6, 6]
    assert streamed.steps == memory.steps == 5

    x_mem, y_mem = memory.fit_args["x"], memory.fit_args["y"]
    x_str, y_str = _stream_epoch(streamed.fit_args["x"])
    assert np.bincount(y_mem).tolist() == np.bincount(y_str).tolist() == [8, 6, 6]
    assert x_str.shape == x_mem.shape == (20, 16, 16, 3) and x_str.dtype == np.float32
    # The copies are augmented on both paths: no image appears twice.
    assert len({img.tobytes() for img in x_mem}) == 20
    assert len({img.astype(np.uint8).tobytes() for img in x_str}) == 20

    x_val, y_val = _stream_epoch(streamed.fit_args["validation_data"])
    np.testing.assert_array_equal(x_val, memory.fit_args["validation_data"][0])
    np.testing.assert_array_equal(y_val, memory.fit_args["validation_data"][1])
    x_test, y_test = _stream_epoch(streamed.test)
    np.testing.assert_array_equal(x_test, memory.test[0])
    np.testing.assert_array_equal(y_test, memory.test[1])


@pytest.mark.slow
def test_streaming_training_records_skipped_files_like_in_memory(uneven_data, tmp_path):
    # label smoothing (one-hot targets) and class weights (sample weights) go through the stream too
    recipe = _quick(recipe="mlp", batch_size=4, image_size=(16, 16), oversample_to=6, label_smoothing=0.1,
                    class_weights="balanced")
    results = {}
    for name, limit in (("memory", None), ("streamed", 0)):
        result = training.train(uneven_data, recipe, out_dir=tmp_path / name, verbose=0, in_memory_limit_bytes=limit)
        results[name] = (result, json.loads((tmp_path / name / "recipe.json").read_text()))
    (memory, memory_record), (streamed, streamed_record) = results["memory"], results["streamed"]
    assert streamed_record["n_skipped_in_training"] == memory_record["n_skipped_in_training"] == 2
    assert streamed_record["skipped_in_training"] == memory_record["skipped_in_training"]
    assert streamed_record["splits"] == memory_record["splits"] == {"test": 4, "train": 15, "val": 3}
    assert set(streamed.history) == set(memory.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert streamed.epochs == memory.epochs == 1
    # 3 decodable test images: the accuracy is a multiple of 1/3
    assert streamed.test_accuracy is not None and round(streamed.test_accuracy * 3, 6) % 1 == 0


def test_geometry_comes_from_the_first_image_that_decodes(tmp_path):
    from core.model.recipes import Recipe
    from core.training import default_geometry
    from tests.conftest import write_image

    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "0_broken.png").write_bytes(b"not a png")  # sorted first
    write_image(root / "a" / "1.png", (200, 40, 40))
    write_image(root / "b" / "2.png", (40, 200, 40))
    size, channels = default_geometry(load_dataset(root), Recipe(recipe="small-cnn"))
    assert size == (64, 64) and channels == 3
