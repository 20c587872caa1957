"""Malformed runs, deleted runs, run switches and hostile strings, through AppTest.

One store holds two good runs ("good", "good2": the same 300 images, 5 classes)
beside runs broken in every way a run folder can break. Each broken run must
be listed as broken in the picker, say why in one line on every page, and
leave the good runs working. The newest run of the store is a broken one
("trunc-parquet"), so that it would be the default everywhere if nothing
skipped it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.data.images import encode_png
from core.run import metrics
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run, synthetic_arrays
from core.run.write import write_run
from dashboard import views
from tests.dashboard.apptest import APP, TIMEOUT, artifacts_dir, unescape

PAGES = ["overview", "per_class", "confusion", "errors", "embeddings", "compare"]
INJECT = "<b>x</b> **y** [z](http://e) http://e __b__"


def _edit_manifest(store: RunStore, run_id: str, edit) -> None:
    file = store.root / run_id / "manifest.json"
    data = edit(json.loads(file.read_text()))
    file.write_text(json.dumps(data))


def _replace(value):
    return lambda _m: value


# run id -> a piece of the reason each page must show
BROKEN = {
    "m-list": "expected a JSON object",
    "m-null": "expected a JSON object",
    "m-classes-null": "'classes' must be a non-empty list",
    "m-no-counts": "'counts.images'",
    "no-probs": "probs.npy: missing",
    "pickled-probs": "probs.npy: not a plain numeric array",
    "pickled-embeddings": "embeddings.npy: not a plain numeric array",
    "no-column": "confidence",
    "trunc-parquet": "predictions.parquet: not a readable Parquet file",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening-store")
    store = RunStore(root)
    make_synthetic_run(store, "good", n=300, n_classes=5, seed=0, accuracy=0.8)
    make_synthetic_run(store, "good2", n=300, n_classes=5, seed=0, accuracy=0.9)
    for run_id in BROKEN:
        make_synthetic_run(store, run_id, n=300, n_classes=5, seed=0, accuracy=0.8)
    folder = {run_id: store.root / run_id for run_id in BROKEN}
    _edit_manifest(store, "m-list", _replace([1]))
    _edit_manifest(store, "m-null", _replace(None))
    _edit_manifest(store, "m-classes-null", lambda m: {**m, "classes": None})
    _edit_manifest(store, "m-no-counts", lambda m: {k: v for k, v in m.items() if k != "counts"})
    (folder["no-probs"] / "probs.npy").unlink()
    objects = np.empty((300, 5), dtype=object)
    objects[:] = 0.2
    np.save(folder["pickled-probs"] / "probs.npy", objects, allow_pickle=True)
    np.save(folder["pickled-embeddings"] / "embeddings.npy", np.empty((300, 4), dtype=object),
            allow_pickle=True)
    preds = store.load("no-column").predictions.drop(columns=["confidence"])
    preds.to_parquet(folder["no-column"] / "predictions.parquet", index=False)
    parquet = folder["trunc-parquet"] / "predictions.parquet"
    parquet.write_bytes(parquet.read_bytes()[: parquet.stat().st_size // 2])
    # the newest run of the store: the picker's and Compare's first candidate
    _edit_manifest(store, "trunc-parquet", lambda m: {**m, "created": "2100-01-01T00:00:00+00:00"})
    with artifacts_dir(root):
        yield store


def start(run_id: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if run_id is not None:
        at.sidebar.selectbox(key="run_id").set_value(run_id).run()
    return at


def visit(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_picker_marks_broken_runs_and_opens_on_a_readable_one(store):
    at = start()
    assert not at.exception, [e.value for e in at.exception]
    picker = at.sidebar.selectbox(key="run_id")
    assert picker.value in ("good", "good2")
    labels = picker.options
    for run_id in BROKEN:
        assert f"⚠ {run_id} · broken" in labels, labels
    assert sum("broken" in label for label in labels) == len(BROKEN)
    # broken runs come last
    assert all("broken" in label for label in labels[2:])


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
@pytest.mark.parametrize("page", PAGES)
def test_good_runs_work_on_every_page_beside_broken_ones(store, page):
    at = start("good")
    visit(at, page)
    assert not at.error, [unescape(e.value) for e in at.error]
    assert at.title


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
@pytest.mark.parametrize("run_id", sorted(BROKEN))
def test_a_broken_run_says_why_in_one_line_on_every_page(store, run_id):
    at = start(run_id)
    for page in PAGES:
        visit(at, page)
        if page == "compare":  # Compare chooses its own runs: the broken one as run A
            at.selectbox(key="compare-a").set_value(run_id).run()
        errors = [unescape(e.value) for e in at.error]
        assert len(errors) == 1, (page, errors)
        assert BROKEN[run_id] in errors[0], (page, errors)
        assert "\n" not in errors[0]
        assert "Traceback" not in errors[0]
    # another run still works afterwards
    at.sidebar.selectbox(key="run_id").set_value("good").run()
    visit(at, "confusion")
    assert not at.error


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_a_missing_per_class_table_is_one_line_on_the_pages_that_need_it(store, tmp_path, monkeypatch):
    local = RunStore(tmp_path / "store")
    make_synthetic_run(local, "fine", n=200, n_classes=4, seed=3)
    make_synthetic_run(local, "no-per-class", n=200, n_classes=4, seed=3)
    (local.root / "no-per-class" / "per_class.csv").unlink()
    monkeypatch.setenv("ARTIFACTS_DIR", str(local.root))
    at = start("no-per-class")
    for page in PAGES:
        visit(at, page)
        errors = [unescape(e.value) for e in at.error]
        if page == "per_class":  # Compare computes its per-class deltas from the predictions (core.analysis.compare)
            assert len(errors) == 1 and "per_class.csv" in errors[0], (page, errors)
        else:
            assert not errors, (page, errors)


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_compare_never_defaults_to_a_broken_run_and_names_a_broken_choice(store):
    at = start("trunc-parquet")  # the newest run, broken, chosen in the sidebar
    visit(at, "compare")
    run_a = next(s for s in at.selectbox if s.label == "Run A")
    run_b = next(s for s in at.selectbox if s.label == "Run B")
    assert {run_a.value, run_b.value} == {"good", "good2"}  # the only readable pair on the same images
    assert not at.error
    assert any(m.label == "Accuracy (B)" for m in at.metric)
    run_b.set_value("trunc-parquet").run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [unescape(e.value) for e in at.error]
    assert len(errors) == 1 and "trunc-parquet" in errors[0] and "predictions.parquet" in errors[0]
    assert not any(m.label == "Accuracy (B)" for m in at.metric)


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_a_manifest_value_of_the_wrong_type_stops_only_that_page_with_one_line(tmp_path, monkeypatch):
    """A run that opens, but whose metrics are text: the pages that format them say why in one
    line (the page guard in app.py), the others work."""
    local = RunStore(tmp_path / "store")
    make_synthetic_run(local, "fine", n=200, n_classes=4, seed=3)
    make_synthetic_run(local, "odd", n=200, n_classes=4, seed=3)
    _edit_manifest(local, "odd", lambda m: {**m, "metrics": {**m["metrics"], "accuracy": "high"}})
    monkeypatch.setenv("ARTIFACTS_DIR", str(local.root))
    at = start("odd")
    assert any(o.startswith("odd ") and o.endswith("acc n/a") for o in at.sidebar.selectbox(key="run_id").options)
    for page in PAGES:
        visit(at, page)
        errors = [unescape(e.value) for e in at.error]
        if page == "overview":
            assert len(errors) == 1 and errors[0].startswith("This page cannot show run 'odd': "), errors
        else:  # Compare's metrics come from the predictions (core.analysis.compare), not the manifest
            assert not errors, (page, errors)


# --------------------------------------------------------------------------- images on disk

@pytest.fixture
def image_store(tmp_path, monkeypatch):
    """A run over a real folder: row 0 readable, 1 missing, 2 not an image, 3 outside the root.

    Every row is a mistake of the 'test' split, most confident first in row order.
    """
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "a" / "ok.png").write_bytes(encode_png(np.full((8, 8, 3), 200, np.uint8)))
    (data / "a" / "junk.png").write_bytes(b"these are not pixels")
    (tmp_path / "secret.png").write_bytes(encode_png(np.zeros((8, 8, 3), np.uint8)))
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]], np.float32)
    store = RunStore(tmp_path / "store")
    write_run(store, "folder", classes=["cat", "dog"], y_true=np.zeros(4, int), probs=probs,
              paths=["a/ok.png", "a/gone.png", "a/junk.png", "../secret.png"], splits=np.full(4, "test"),
              model={"path": "m.keras"}, data={"name": "folder", "kind": "folder", "path": str(data),
                                               "root": str(data)})
    monkeypatch.setenv("ARTIFACTS_DIR", str(store.root))
    return store


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_each_gallery_cell_says_why_its_image_cannot_be_shown(image_store):
    at = start("folder")
    visit(at, "errors")
    assert not at.error
    texts = [unescape(c.value) for c in at.caption]
    unavailable = [t for t in texts if t.startswith("(image unavailable")]
    # the gallery's three unreadable cells, each with its own reason
    assert len(unavailable) == 3, texts
    assert "gone.png" in unavailable[0]
    assert "junk.png" in unavailable[1]
    assert "outside the data set root" in unavailable[2]
    # the detail of each row, opened from its thumbnail: one line saying why not (after the gallery's)
    for row, reason in ((1, "gone.png"), (2, "junk.png"), (3, "outside the data set root")):
        at.button(key=f"gopen-errors-{row}").click().run()
        assert not at.exception, [e.value for e in at.exception]
        unavailable = [unescape(c.value) for c in at.caption if unescape(c.value).startswith("(image unavailable")]
        assert len(unavailable) == 4 and reason in unavailable[-1], unavailable


# --------------------------------------------------------------------------- deleted and switched runs

@pytest.fixture
def two_runs(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "store")
    make_synthetic_run(store, "five", n=400, n_classes=5, seed=0, accuracy=0.7)
    make_synthetic_run(store, "eight", n=400, n_classes=8, seed=5, accuracy=0.7,
                       class_names=[f"wide{i}" for i in range(8)])
    monkeypatch.setenv("ARTIFACTS_DIR", str(store.root))
    return store


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_a_deleted_run_is_named_and_the_run_shown_instead_too(two_runs):
    at = start("five")
    visit(at, "confusion")
    two_runs.delete("five")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.selectbox(key="run_id").value == "eight"
    warnings = [unescape(w.value) for w in at.warning]
    assert "Run 'five' is no longer in the store; showing 'eight'." in warnings


def _widget(widgets, label):
    return next(w for w in widgets if w.label == label)


def _default_cell(run) -> tuple[int, int]:
    mask = run.eval_mask()
    cm = metrics.confusion_matrix(run.predictions["true"].to_numpy()[mask],
                                  run.predictions["predicted"].to_numpy()[mask], n_classes=len(run.classes))
    return views.default_cell(cm)


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_switching_runs_resets_cell_filters_and_pages(two_runs):
    at = start("five")
    visit(at, "confusion")
    five = two_runs.load("five")
    _widget(at.selectbox, "True class").set_value(4).run()
    _widget(at.selectbox, "Predicted class").set_value(3).run()
    visit(at, "errors")
    _widget(at.multiselect, "True class").set_value([4]).run()
    at.sidebar.selectbox(key="run_id").set_value("eight").run()
    eight = two_runs.load("eight")
    visit(at, "errors")
    assert _widget(at.multiselect, "True class").value == []
    visit(at, "confusion")
    true, pred = _default_cell(eight)
    assert (true, pred) != (4, 3)
    assert _widget(at.selectbox, "True class").value == true
    assert _widget(at.selectbox, "Predicted class").value == pred
    assert any(unescape(h.value) == f"True {eight.classes[true]}, predicted {eight.classes[pred]}"
               for h in at.subheader)
    # the Embeddings page highlights no cell of the other run
    visit(at, "embeddings")
    assert all(five.classes[0] not in unescape(c.label) for c in at.checkbox)


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_a_remade_run_starts_from_fresh_state(two_runs):
    at = start("eight")
    visit(at, "confusion")
    _widget(at.selectbox, "True class").set_value(7).run()
    _widget(at.selectbox, "Predicted class").set_value(7).run()
    # the same name, made again from other data with as many classes
    two_runs.delete("eight")
    remade = make_synthetic_run(two_runs, "eight", n=300, n_classes=8, seed=9,
                                class_names=[f"new{i}" for i in range(8)])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error
    assert (_widget(at.selectbox, "True class").value,
            _widget(at.selectbox, "Predicted class").value) == _default_cell(remade)


# --------------------------------------------------------------------------- hostile strings

@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_user_strings_reach_markdown_only_inert(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "store")
    arrays = synthetic_arrays(200, 3, seed=1)
    paths = [f"{INJECT} http://evil.example/{i}.png" for i in range(200)]
    for run_id in ("inject", "inject2"):
        write_run(store, run_id, name=INJECT, classes=[INJECT, "plain", "**bold**"],
                  y_true=arrays["y_true"], probs=arrays["probs"], paths=paths, splits=arrays["splits"],
                  embeddings=arrays["embeddings"], projection=arrays["projection"], images=arrays["images"],
                  model={"path": f"{INJECT}.keras"}, data={"name": INJECT, "kind": "synthetic"},
                  notes=[f"note: {INJECT}"])
    monkeypatch.setenv("ARTIFACTS_DIR", str(store.root))
    at = start("inject")
    seen = set()
    for page in PAGES:
        visit(at, page)
        assert not at.error, [unescape(e.value) for e in at.error]
        sources = ([t.value for t in at.title] + [t.value for t in at.subheader] + [c.value for c in at.caption]
                   + [m.value for m in at.markdown] + [w.value for w in at.warning]
                   + [i.value for i in at.info] + [c.label for c in at.checkbox])
        for source in sources:
            if INJECT in unescape(source) or "evil" in source:
                seen.add(page)
                # nothing Markdown would act on survives: no raw tag, emphasis, link or autolink
                for raw in ("<b>", "**y**", "](", "__b__", "http://", "evil.example"):
                    assert raw not in source, (page, source)
    assert {"overview", "confusion", "errors", "embeddings"} <= seen
    assert unescape(at.title[0].value) == "Compare runs"
    # the image detail (dialog), its buttons' labels and tooltips too
    visit(at, "errors")
    at.button(key="gopen-errors-0").click().run()
    assert not at.exception and not at.error
    sources = ([c.value for c in at.caption] + [m.value for m in at.markdown]
               + [b.label for b in at.button] + [b.help or "" for b in at.button])
    assert any(INJECT in unescape(source) for source in sources)
    for source in sources:
        for raw in ("<b>", "**y**", "](", "__b__", "http://", "evil.example"):
            assert raw not in source, source
    # the Review queue's set of one confusion cell names both classes in its caption
    visit(at, "review")
    at.selectbox(key=next(s.key for s in at.selectbox if s.key.endswith(":review-set"))).set_value("cell").run()
    assert not at.exception
    cell_captions = [c.value for c in at.caption if "true " in unescape(c.value) and "predicted" in unescape(c.value)]
    assert cell_captions, [unescape(c.value) for c in at.caption]
    for source in cell_captions:
        assert "**bold**" in unescape(source) or INJECT in unescape(source)
        for raw in ("<b>", "**", "](", "__b__", "http://"):
            assert raw not in source, source
