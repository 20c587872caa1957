"""Issue 22 item 1: a run's manifest cannot switch on loading a model that runs code, in any dashboard path.

The run "lambda" was analysed (with the CLI's opt-in) from a small CNN whose
Lambda layer writes a marker file whenever its Python code runs; its manifest
on disk says ``unsafe_load: true`` and records the file's real SHA-256, the
state an attacker who can write to the store would set up. The dashboard's two
paths that load a run's model ("Try an image" and the attention maps) must
refuse it and run no code; only the dashboard's operator (a trusted-hashes file
named by CLASSIFIER_TRUSTED_MODELS, outside the store) can allow it.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.model.trust import ENV_TRUSTED
from core.run.store import RunStore
from tests.dashboard.apptest import APP, TIMEOUT, artifacts_dir, unescape


def _lambda_cnn(marker):
    import keras

    keras.utils.set_random_seed(0)
    # the marker's path is a constant of the lambda's bytecode, which Keras stores in the file
    touch = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), t)[1]")  # noqa: S307
    inp = keras.Input((20, 20, 3))
    x = keras.layers.Lambda(touch, name="touch")(inp)
    x = keras.layers.Rescaling(1 / 255)(x)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


@pytest.fixture(scope="module")
def tampered(tmp_path_factory):
    from core.data.datasets import load_dataset
    from core.model.load import file_sha256
    from core.run.analyze import analyze
    from tests.conftest import CLASS_COLOURS, write_image

    base = tmp_path_factory.mktemp("unsafe")
    marker = base / "marker.txt"
    root = base / "images"
    for c, (name, rgb) in enumerate(CLASS_COLOURS.items()):
        for i in range(4):
            write_image(root / name / f"{name}_{i}.png", rgb, seed=c * 10 + i)
    model_path = base / "lambda.keras"
    _lambda_cnn(marker).save(model_path)
    store = RunStore(base / "store")
    run = analyze(model_path, load_dataset(root), store=store, run_id="lambda", progress=False,
                  projection=False, unsafe=True)
    manifest_file = run.path / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    assert manifest["model"]["unsafe_load"] is True and manifest["model"]["sha256"] == file_sha256(model_path)
    manifest_file.write_text(json.dumps(manifest))
    marker.unlink()
    return store, marker, model_path, base


def _upload(store) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.sidebar.selectbox(key="run_id").set_value("lambda")
    at.switch_page("app_pages/try_image.py").run()
    png = cv2.imencode(".png", np.full((20, 20, 3), 120, np.uint8))[1].tobytes()
    at.get("file_uploader")[0].upload("probe.png", png, "image/png").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def gallery_app() -> None:
    import numpy as np  # noqa: F811 - AppTest runs this function's source alone

    from dashboard import attention_ui, cache, gallery, state

    attention_ui.register()
    run = cache.load_run(cache.store_root(), "lambda")
    state.start_run("test")
    gallery.start_run()
    gallery.gallery_ui(run, np.arange(run.n_images), key="t", title="all rows")


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_a_tampered_manifest_enables_no_unsafe_load_in_any_dashboard_path(tampered, monkeypatch):
    from dashboard import attention_ui, cache, gallery

    store, marker, model_path, base = tampered
    monkeypatch.delenv(ENV_TRUSTED, raising=False)
    try:
        with artifacts_dir(store.root):
            at = _upload(store)
            errors = [unescape(e.value) for e in at.error]
            assert len(errors) == 1 and "Lambda" in errors[0] and ENV_TRUSTED in errors[0], errors
            assert not marker.exists()

            at = AppTest.from_function(gallery_app, default_timeout=TIMEOUT).run()
            assert not at.exception, [e.value for e in at.exception]
            for method in ("gradcam", "occlusion"):  # both attention methods load the run's model
                cache.attention_memo.clear()
                at.segmented_control(key="attention-method-t").set_value(method).run()
                assert not at.exception, [e.value for e in at.exception]
                texts = [unescape(c.value) for c in at.caption]
                assert any("No attention maps" in t and ENV_TRUSTED in t for t in texts), (method, texts)
                assert not marker.exists()

            # the control: the operator trusts the file's hash (a list outside the store) and restarts
            from core.model.load import file_sha256

            trusted = base / "trusted.txt"
            trusted.write_text(file_sha256(model_path) + "\n")
            monkeypatch.setenv(ENV_TRUSTED, str(trusted))
            cache.run_model.clear()
            at = _upload(store)
            assert not at.error, [e.value for e in at.error]
            assert marker.exists()
    finally:
        gallery.unregister(attention_ui.NAME)
        cache.run_model.clear()
        cache.attention_explainer.clear()
        cache.attention_memo.clear()
