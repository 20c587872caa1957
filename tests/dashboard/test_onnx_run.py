"""Every dashboard page on a run of an ONNX model, and on a run imported from predictions.

Run "onnx" is the tiny ONNX classifier of tests/core/model/test_onnx.py on 12 PNGs of 3 classes
(its UMAP map made by a stand-in for ``project``: UMAP itself is tested elsewhere); run
"imported" is the same predictions imported from an .npz, so the two can be compared.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.analysis import projection as projection_module
from core.data.datasets import load_dataset
from core.data.images import decode_bytes, encode_png
from core.run.analyze import analyze, load_run_model
from core.run.importer import import_predictions
from core.run.store import RunStore
from tests.conftest import CLASS_COLOURS, write_image
from tests.core.model.test_onnx import make_onnx_classifier
from tests.dashboard.apptest import artifacts_dir, open_page, unescape

pytest.importorskip("onnxruntime")

PAGES = ("overview", "per_class", "confusion", "errors", "embeddings", "compare", "try_image")


def stand_in_projection(embeddings, **_):
    """A 2-D map from the embeddings (their sum against the row number), never constant along an axis."""
    e = np.asarray(embeddings, np.float32)
    return np.stack([e.sum(axis=1), np.arange(len(e), dtype=np.float32)], axis=1), {"method": "umap"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("onnx-dashboard")
    for c, (name, rgb) in enumerate(CLASS_COLOURS.items()):
        for i in range(4):
            write_image(base / "images" / name / f"{name}_{i}.png", rgb, seed=c * 10 + i)
    make_onnx_classifier(base / "tiny.onnx", seed=7)
    store = RunStore(base / "store")
    dataset = load_dataset(base / "images")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(projection_module, "project", stand_in_projection)
        run = analyze(base / "tiny.onnx", dataset, store=store, run_id="onnx", progress=False)
    np.savez(base / "preds.npz", paths=np.array(run.predictions["path"], dtype=str), probs=np.asarray(run.probs))
    import_predictions(dataset, base / "preds.npz", store=store, run_id="imported", progress=False,
                       projection=False)
    with artifacts_dir(store.root):
        yield store


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
@pytest.mark.parametrize("run_id", ["onnx", "imported"])
def test_every_page_opens(store, run_id):
    for page in PAGES:
        at = open_page(page, run_id)
        assert not at.error or page == "try_image", (page, [e.value for e in at.error])
        if page == "overview":
            caption = unescape(at.caption[0].value)
            assert ("tiny.onnx" in caption) == (run_id == "onnx"), caption
        if page == "embeddings":
            has_map = run_id == "onnx"
            assert (len(at.get("plotly_chart")) > 0) == has_map
            assert any("no 2-D projection" in i.value for i in at.info) == (not has_map)


def test_try_an_image_uses_the_onnx_model(store):
    png = encode_png(np.full((32, 24, 3), (40, 200, 40), np.uint8))
    at = open_page("try_image", "onnx")
    at.get("file_uploader")[0].upload("green.png", png, "image/png").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    top = at.dataframe[0].value
    expected = load_run_model(store.load("onnx")).predict(decode_bytes(png))
    order = np.argsort(-expected)
    run = store.load("onnx")
    assert top["class"].tolist() == [run.classes[i] for i in order]
    np.testing.assert_allclose(top["probability"].to_numpy(), expected[order], atol=1e-6)


def test_an_imported_run_says_it_has_no_model(store):
    at = open_page("try_image", "imported")
    at.get("file_uploader")[0].upload("green.png", encode_png(np.zeros((8, 8, 3), np.uint8)), "image/png").run()
    assert [unescape(e.value) for e in at.error] == [
        "Run imported was imported from predictions made elsewhere; it has no model here to classify "
        "new images."]
    assert [unescape(w.value) for w in at.warning] == [unescape(e.value) for e in at.error]  # said up front too
