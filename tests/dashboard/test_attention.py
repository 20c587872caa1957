"""Attention maps in the gallery and the image detail (dashboard.attention_ui), through AppTest.

Run "cnn": an untrained small CNN (Rescaling -> Conv 8 -> Conv 8 -> GAP -> Dense softmax)
analysed on 3 classes x 8 PNG files of 20x20 (24 rows, one gallery page of 24); run "syn": a
synthetic run, which has no model to explain.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.analysis import gradcam
from core.run import derived
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run
from dashboard import attention_ui, gallery
from tests.dashboard.apptest import TIMEOUT, artifacts_dir, unescape

ROOT = Path(__file__).resolve().parents[2]


def _cnn(seed: int = 1):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((20, 20, 3))
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_1")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(3, activation="softmax", name="classifier")(x)
    return keras.Model(inp, out, name="plain_cnn")


def _analysed_store(base: Path) -> RunStore:
    from core.data.datasets import load_dataset
    from core.run.analyze import analyze
    from tests.conftest import CLASS_COLOURS, write_image

    root = base / "images"
    for c, (name, rgb) in enumerate(CLASS_COLOURS.items()):
        for i in range(8):
            write_image(root / name / f"{name}_{i}.png", rgb, seed=c * 10 + i)
    model_path = base / "plain_cnn.keras"
    _cnn().save(model_path)
    store = RunStore(base / "store")
    analyze(model_path, load_dataset(root), store=store, run_id="cnn", progress=False, projection=False)
    make_synthetic_run(store, "syn", n=40, n_classes=3, seed=0)
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two copies of the store: one the in-process tests fill with maps, one kept fresh (no maps
    stored) for the subprocess that checks the imports."""
    first = _analysed_store(tmp_path_factory.mktemp("attention-a"))
    fresh = _analysed_store(tmp_path_factory.mktemp("attention-b"))
    with artifacts_dir(first.root):
        attention_ui.register()
        yield first, fresh
        gallery.unregister(attention_ui.NAME)


def gallery_app(run_id: str) -> None:
    """One gallery of every row of ``run_id``, and the detail it opens."""
    import numpy as np  # noqa: F811 - AppTest runs this function's source alone

    from dashboard import attention_ui, cache, gallery, state  # noqa: F401 - registers the hooks

    run = cache.load_run(cache.store_root(), run_id)
    state.start_run("test")
    gallery.start_run()
    gallery.gallery_ui(run, np.arange(run.n_images), key="t", title="all rows")
    gallery.detail_ui_if_open()


def start(run_id: str) -> AppTest:
    at = AppTest.from_function(gallery_app, kwargs={"run_id": run_id}, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def counted(monkeypatch):
    """Count explain_rows calls (with their rows) and overlays drawn."""
    calls = {"explain": [], "overlay": 0}
    explain, overlay = gradcam.explain_rows, gradcam.overlay

    def explain_rows(run, rows, **options):
        calls["explain"].append(np.asarray(rows).tolist())
        return explain(run, rows, **options)

    def counted_overlay(image, cam, **options):
        calls["overlay"] += 1
        return overlay(image, cam, **options)

    monkeypatch.setattr(gradcam, "explain_rows", explain_rows)
    monkeypatch.setattr(gradcam, "overlay", counted_overlay)
    return calls


def test_page_batch_is_the_page_that_holds_the_row():
    rows = np.arange(100, 150)
    assert attention_ui.page_batch(rows, 130, per_page=24).tolist() == list(range(124, 148))
    assert attention_ui.page_batch(rows, 149, per_page=24).tolist() == [148, 149]
    assert attention_ui.page_batch(rows, 7, per_page=24).tolist() == [7]


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_toggle_overlays_the_page_in_one_call_and_detail_shows_both_maps(stores, counted):
    store, _ = stores
    run = store.load("cnn")
    at = start("cnn")
    assert counted["explain"] == [] and counted["overlay"] == 0  # off by default: nothing computed
    control = at.segmented_control(key="attention-method-t")
    assert unescape(control.label) == "Attention" and control.value == "off"
    control.set_value("gradcam").run()
    assert not at.exception, [e.value for e in at.exception]
    assert counted["explain"] == [list(range(24))]  # the visible page, in one batched call
    stored = derived.get(store.load("cnn"), gradcam.KIND, attention_ui.CONFIG, compute=False)  # re-read: a new derived
    assert sorted(np.asarray(stored.array("rows")).tolist()) == list(range(24))
    n_empty = int(np.asarray(stored.array("empty"))[:, 0].sum())
    # every thumbnail with evidence drawn with its map; the page's detail in the browser
    # (dashboard.detail) may draw the same 24 again: it did in CI after the file's other tests, and did
    # not when this test ran alone (left open: which runs give the detail the overlay)
    assert counted["overlay"] in (24 - n_empty, 2 * (24 - n_empty))
    at.run()  # a rerun computes nothing again
    assert len(counted["explain"]) == 1

    at.button(key="gopen-t-3").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.segmented_control(key="attention-method-detail").value == "gradcam"  # the shared choice
    texts = [unescape(c.value) for c in at.caption]
    pred, true = (run.classes[int(run.predictions[c].iat[3])] for c in ("predicted", "true"))
    empty = np.asarray(stored.array("empty"))[list(np.asarray(stored.array("rows"))).index(3)]
    for flag, what, name in zip(empty, ("predicted", "true"), (pred, true)):
        wanted = (f"{what} class {name}: no positive evidence" if flag else f"{what} class: {name}")
        assert any(t.startswith(wanted) for t in texts), (wanted, texts)
    assert len(counted["explain"]) == 1  # the detail reuses the page's maps


def test_empty_map_is_said_in_words_not_overlaid(stores, counted, monkeypatch):
    store, _ = stores
    run = store.load("cnn")
    real = gradcam.explain_rows

    def nothing_for_the_predicted_class(run, rows, **options):
        found = real(run, rows, **options)
        empty = found.empty.copy()
        empty[:, 0] = True
        maps = found.maps.copy()
        maps[:, 0] = 0.0
        return gradcam.Attention(**{**found.__dict__, "empty": empty, "maps": maps})

    monkeypatch.setattr(gradcam, "explain_rows", nothing_for_the_predicted_class)
    attention_ui.cache.attention_memo.clear()
    at = start("cnn")
    at.segmented_control(key="attention-method-t").set_value("gradcam").run()
    assert not at.exception, [e.value for e in at.exception]
    texts = [unescape(c.value) for c in at.caption]
    name = run.classes[int(run.predictions["predicted"].iat[0])]
    assert any(t.endswith(f"no positive evidence for {name}") for t in texts), texts
    at.button(key="gopen-t-0").click().run()
    texts = [unescape(c.value) for c in at.caption]
    assert any(t.startswith(f"predicted class {name}: no positive evidence") for t in texts), texts
    assert counted["overlay"] == 1  # only the detail's true-class map: no blank overlay anywhere
    attention_ui.cache.attention_memo.clear()


def test_a_run_without_a_model_says_why_in_one_line(stores, counted):
    at = start("syn")
    at.button(key="gopen-t-0").click().run()
    texts = [unescape(c.value) for c in at.caption]
    assert "Choose Grad-CAM or Occlusion under the image to see what the model looks at." in texts
    assert counted["explain"] == []
    at.segmented_control(key="attention-method-detail").set_value("gradcam").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.segmented_control(key="attention-method-t").value == "gradcam"  # one shared choice
    reason = "No attention maps: Grad-CAM is unavailable for run 'syn': it is synthetic and has no model"
    texts = [unescape(c.value) for c in at.caption]
    assert reason in texts, texts  # in the detail, as its own line
    assert sum(reason in t for t in texts) >= 24  # and under each thumbnail instead of an overlay
    assert counted["overlay"] == 0 and counted["explain"] == []


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_the_detail_has_one_attention_control_and_compares_the_methods(stores, counted):
    store, _ = stores
    at = start("cnn")
    at.button(key="gopen-t-5").click().run()
    assert not at.exception, [e.value for e in at.exception]
    # one control: no toggle, no button
    assert not [t for t in at.toggle if "attention" in (t.key or "")]
    assert not [b for b in at.button if "attention" in (b.key or "")]
    detail = at.segmented_control(key="attention-method-detail")
    assert detail.value == "off" and counted["explain"] == []
    detail.set_value("compare").run()
    assert not at.exception, [e.value for e in at.exception]
    markdown = [unescape(m.value) for m in at.markdown]
    assert "**Attention (Grad-CAM)**" in markdown and "**Attention (Occlusion)**" in markdown
    texts = [unescape(c.value) for c in at.caption]
    assert any(t.startswith("occlusion: 37 model passes per image") for t in texts), texts
    run = store.load("cnn")
    occluded = derived.get(run, "occlusion_maps", compute=False)
    assert occluded is not None and 5 in np.asarray(occluded.array("rows")).tolist()
    # galleries show the Grad-CAM overlay for "Both", and the gallery control offers no "Both"
    assert at.segmented_control(key="attention-method-t").value == "gradcam"
    at.segmented_control(key="attention-method-t").set_value("occlusion").run()
    assert not at.exception, [e.value for e in at.exception]
    occluded = derived.get(store.load("cnn"), "occlusion_maps", compute=False)
    assert sorted(np.asarray(occluded.array("rows")).tolist()) == list(range(24))  # the page, extended


SCRIPT = """
import os, sys
from streamlit.testing.v1 import AppTest
os.environ["ARTIFACTS_DIR"] = sys.argv[1]
at = AppTest.from_file(sys.argv[2], default_timeout=60).run()
at.sidebar.selectbox(key="run_id").set_value("cnn").run()
for page in ["overview", "confusion", "errors"]:
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, (page, at.exception[0].value)
opener = next(b for b in at.button if (b.key or "").startswith("gopen-errors-"))
opener.click().run()
assert not at.exception, at.exception[0].value
print("off:", sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
at.segmented_control(key="attention-method-errors").set_value("gradcam").run()
assert not at.exception, at.exception[0].value
print("on:", sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_pages_with_the_toggle_off_import_no_tensorflow(stores, tmp_path):
    _, fresh = stores
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(fresh.root), str(ROOT / "dashboard" / "app.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "off: []" in out.stdout, out.stdout
    assert "on: ['keras', 'tensorflow']" in out.stdout, out.stdout  # the check can fail: on, it imports


def test_occlusion_page_budget_leaves_the_rest_for_the_next_rerun(stores, monkeypatch):
    import types

    store, _ = stores
    attention_ui.cache.attention_memo.clear()
    if derived.get(store.load("cnn"), "occlusion_maps", compute=False) is not None:  # left by another test
        derived.delete(store.load("cnn"), "occlusion_maps")
    monkeypatch.setattr(attention_ui, "PAGE_BUDGET_S", 1e-9)  # one chunk of 8 rows, then out of time
    monkeypatch.setattr(attention_ui, "DEFER_S", 0.5)
    # the page's own clock, moved on by hand between the two runs: a script run that took longer than DEFER_S
    # on a slow or loaded machine (1,172 s suite, no AVX-512) let a later thumbnail start a second chunk
    clock = types.SimpleNamespace(offset=0.0)
    monkeypatch.setattr(attention_ui, "time", types.SimpleNamespace(monotonic=lambda: clock.offset))
    at = start("cnn")
    at.segmented_control(key="attention-method-t").set_value("occlusion").run()
    assert not at.exception, [e.value for e in at.exception]
    over = [c for c in at.caption if "over the time budget" in unescape(c.value)]
    stored = derived.get(store.load("cnn"), "occlusion_maps", compute=False)
    assert len(np.asarray(stored.array("rows"))) == 8 and len(over) == 24 - 8  # said, not computed twice
    clock.offset += 0.6  # DEFER_S later
    at.run()  # the next rerun goes on with the page
    stored = derived.get(store.load("cnn"), "occlusion_maps", compute=False)
    assert len(np.asarray(stored.array("rows"))) == 16
    attention_ui.cache.attention_memo.clear()
