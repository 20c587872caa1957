"""Every page of the dashboard run with Streamlit's AppTest on small synthetic runs.

The store is a temporary folder given to the app through $ARTIFACTS_DIR.
Run "small" has 600 images of 5 classes (about 150 in the 'test' split, the
evaluation split); "better" has the same images with fewer errors; "other"
has different images, so it cannot be compared with "small".
"""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.analysis.projection import stored_projection
from core.data.images import encode_png
from core.report.tables import ERROR_COLUMNS
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run
from dashboard import ui, views
from tests.dashboard import apptest
from tests.dashboard.apptest import APP, TIMEOUT, artifacts_dir, unescape


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    store = RunStore(root)
    make_synthetic_run(store, "small", n=600, n_classes=5, seed=0, accuracy=0.8)
    make_synthetic_run(store, "better", n=600, n_classes=5, seed=0, accuracy=0.9)
    make_synthetic_run(store, "other", n=500, n_classes=5, seed=1, history=False)
    with artifacts_dir(root):
        yield store


def open_page(page: str, run_id: str = "small") -> AppTest:
    return apptest.open_page(page, run_id)


def key(store: RunStore, run_id: str, name: str, *, other: str | None = None) -> str:
    """The widget key of the page state ``name`` that belongs to run ``run_id`` (see ``ui.scoped``)."""
    return ui.scoped(store.load(run_id), name, other=None if other is None else store.load(other))


def captions(at: AppTest) -> list[str]:
    return [unescape(c.value) for c in at.caption]


def gallery_paths(at: AppTest, gallery: str) -> list[str]:
    """The files of gallery ``gallery``'s current page, in page order (each thumbnail's open button
    is labelled 'Open <file>')."""
    buttons = [b for b in at.button if (b.key or "").startswith(f"gopen-{gallery}-")]
    buttons.sort(key=lambda b: int(b.key.rsplit("-", 1)[1]))
    return [unescape(b.label).removeprefix("Open ") for b in buttons]


def tile_captions(at: AppTest) -> list[str]:
    """The captions of gallery thumbnails, prediction first: '→ predicted 0.93' (or '✓ predicted
    0.93'), then 'true: class', one line each."""
    return [c for c in captions(at) if re.match(r"^[→✓] ", c)]


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_run_picker_lists_the_runs_and_overview_shows_the_run_metrics(store):
    at = open_page("overview")
    picker = at.sidebar.selectbox(key="run_id")
    run = store.load("small")
    # each option names the run, model file, data set, date and accuracy
    assert len(picker.options) == 3
    option = next(o for o in picker.options if o.startswith("small "))
    assert option == (f"small · small.keras · synthetic · {run.manifest['created'][:16].replace('T', ' ')}"
                      f" · acc {run.metrics['accuracy']:.1%}")
    m = run.metrics
    shown = {x.label: x.value for x in at.metric}
    assert shown["Accuracy"] == f"{m['accuracy']:.2%}"
    assert shown["Macro-F1"] == f"{m['macro_f1']:.3f}"
    assert shown["Top-3 accuracy"] == f"{m['top3_accuracy']:.2%}"
    assert shown["Images"] == f"{run.n_images:,}"
    assert shown["test split"] == f"{run.manifest['splits']['test']:,}"
    assert shown["Skipped files"] == "0"
    # the training record in a few numbers, the curves, the recipe folded away
    assert shown["Epochs trained"] == "8"
    assert "of 8 planned" in captions(at)
    assert shown["Best validation accuracy"] == f"{run.history['val_accuracy'].max():.2%}"
    assert '"recipe": "synthetic"' in at.code[0].value


def test_empty_store_offers_the_demo_and_the_analyze_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path / "empty"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    codes = [c.value for c in at.code]
    assert "python -m core analyze --model PATH --data PATH" in codes
    # core.demo ships with core, so the page offers the button that builds the demo in place
    assert at.button(key="build-demo").label == "Build the demo run"


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_confusion_gallery_shows_exactly_the_chosen_pair(store):
    at = open_page("confusion")
    run = store.load("small")
    df = run.predictions
    mask = run.eval_mask()
    cm = np.zeros((5, 5), int)
    np.add.at(cm, (df["true"][mask], df["predicted"][mask]), 1)
    assert (at.selectbox(key=key(store, "small", "cell-true")).value, at.selectbox(key=key(store, "small", "cell-predicted")).value) == \
        views.default_cell(cm)
    # choose an off-diagonal cell with a few images
    t, p = next((t, p) for t in range(5) for p in range(5) if t != p and 2 <= cm[t, p] <= 24)
    at.selectbox(key=key(store, "small", "cell-true")).set_value(t)
    at.selectbox(key=key(store, "small", "cell-predicted")).set_value(p)
    at.run()
    expected = df.index[mask & (df["true"] == t) & (df["predicted"] == p)]
    expected = df.loc[expected].sort_values("confidence", ascending=False, kind="stable")
    assert gallery_paths(at, "confusion") == expected["path"].tolist()
    tiles = tile_captions(at)
    assert tiles == [f"→ {run.classes[p]} {c:.2f}  \ntrue: {run.classes[t]}" for c in expected["confidence"]]
    assert f"{len(expected)} images" in " ".join(captions(at))
    assert at.query_params["cell"] == f"{t},{p}"


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_a_click_on_the_chart_moves_the_selectboxes(store):
    at = open_page("confusion")
    at.session_state[key(store, "small", "confusion-chart")] = {"selection": {"points": [
        {"customdata": [1, 3, 0, 0.0], "x": 3, "y": 1}]}}
    at.run()
    assert (at.selectbox(key=key(store, "small", "cell-true")).value, at.selectbox(key=key(store, "small", "cell-predicted")).value) == (1, 3)
    # the selectboxes then win until the next click
    at.selectbox(key=key(store, "small", "cell-true")).set_value(2).run()
    assert (at.selectbox(key=key(store, "small", "cell-true")).value, at.selectbox(key=key(store, "small", "cell-predicted")).value) == (2, 3)
    assert at.session_state[key(store, "small", ui.CELL_KEY)] == (2, 3)


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_errors_page_lists_and_filters_the_eval_errors(store, served):
    at = open_page("errors")
    run = store.load("small")
    df = run.predictions
    mask = run.eval_mask()
    n_errors = int((mask & ~df["correct"]).sum())
    assert n_errors == run.metrics["errors"]
    assert any(c.startswith(f"{n_errors:,} misclassified images") for c in captions(at))
    assert at.get("download_button")[0].label == "Download CSV"
    at.multiselect(key=key(store, "small", "errors-true")).set_value([2]).run()
    n_true2 = int((mask & ~df["correct"] & (df["true"] == 2)).sum())
    assert any(c.startswith(f"{n_true2:,} misclassified images") for c in captions(at))
    assert at.query_params["true"] == "2"
    exported = pd.read_csv(io.BytesIO(served["download-errors"]()))
    expected_rows = df[mask & ~df["correct"] & (df["true"] == 2)].sort_values(
        "confidence", ascending=False, kind="stable")
    assert exported["id"].tolist() == expected_rows["id"].tolist()
    assert list(exported.columns) == ERROR_COLUMNS and exported["rank"].tolist() == list(range(1, n_true2 + 1))
    assert gallery_paths(at, "errors") == expected_rows["path"].tolist()[:24]
    assert at.dataframe[0].value["id"].tolist() == expected_rows["id"].tolist()
    # a click on the first thumbnail opens its detail: probabilities and neighbours of both classes
    at.button(key="gopen-errors-0").click().run()
    assert not at.exception, [e.value for e in at.exception]
    top = expected_rows.iloc[0]
    assert at.query_params["img"] == str(int(top["id"]))
    assert any(unescape(m.value).startswith(f"**{top['true_label']}** → **{top['predicted_label']}**")
               for m in at.markdown)
    assert any("nearest training images" in m.value for m in at.markdown)
    # gallery thumbnails + the detail image + 5 neighbours from each of the two classes
    assert len(at.get("image")) == min(n_true2, 24) + 1 + 2 * 5
    assert any(c == f"Image 1 of {n_true2} · errors, most confident first" for c in captions(at))
    # next: the second error of the list
    at.button(key="detail-next").click().run()
    assert at.query_params["img"] == str(int(expected_rows.iloc[1]["id"]))
    assert any(c.startswith("Image 2 of ") for c in captions(at))


def test_per_class_download_is_exactly_the_cli_report(store, served):
    at = open_page("per_class")
    run = store.load("small")
    assert served["download-per-class"] == run.per_class_csv()
    table = at.dataframe[0].value
    assert table["class"].tolist() == run.classes
    assert table["worst"].sum() == 1
    assert table.loc[table["worst"], "class"].item() == run.per_class.sort_values("f1")["class"].iloc[0]


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_embeddings_page_highlights_the_confusion_cell(store):
    at = open_page("confusion")
    at.selectbox(key=key(store, "small", "cell-true")).set_value(1)
    at.selectbox(key=key(store, "small", "cell-predicted")).set_value(2)
    at.run()
    at.switch_page("app_pages/embeddings.py").run()
    assert not at.exception
    run = store.load("small")
    assert at.checkbox(key=key(store, "small", "emb-highlight")).value
    assert run.classes[1] in unescape(at.checkbox(key=key(store, "small", "emb-highlight")).label)
    evaluated = run.eval_mask()  # the evaluation split by default
    assert f"{int(evaluated.sum())} points in view, coloured by true class." in captions(at)
    at.multiselect(key=key(store, "small", "emb-classes")).set_value([0]).run()
    n0 = int(((run.predictions["true"] == 0).to_numpy() & evaluated).sum())
    assert f"{n0} points in view, coloured by true class." in captions(at)
    assert at.query_params["classes"] == "0"


def test_embeddings_selection_from_the_address_fills_the_gallery_with_every_row_inside(store):
    """A lasso and a box in the URL (as a reload or a shared link brings them): the gallery holds
    exactly the rows inside either shape, counted by the reference ray-cast."""
    from dashboard import mapview

    run = store.load("small")
    xy = np.asarray(stored_projection(run))
    lasso = [(-8.0, -8.0), (9.0, -6.0), (2.0, 9.0)]
    box = (6.0, 12.0, 2.0, 12.0)
    inside = mapview.points_in_polygon(xy, lasso) | (
        (xy[:, 0] >= box[0]) & (xy[:, 0] <= box[1]) & (xy[:, 1] >= box[2]) & (xy[:, 1] <= box[3]))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"run": "small", "sel": "l:-8,-8,9,-6,2,9~b:6,12,2,12", "colour": "correct"})
    at.switch_page("app_pages/embeddings.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key="emb-colour").value == "correct"
    inside &= run.eval_mask()  # the evaluation split by default
    n = int(inside.sum())
    assert 10 < n < 600
    df = run.predictions
    wrong = int((inside & ~df["correct"].to_numpy(bool)).sum())
    assert f"{n} images inside the selection, {wrong} of them wrong." in captions(at)
    expected = views.most_wrong_first(np.flatnonzero(inside), correct=df["correct"].to_numpy(bool),
                                      true_prob=df["true_prob"].to_numpy())  # the errors first
    assert gallery_paths(at, "embedding") == df["path"].to_numpy()[expected].tolist()[:24]
    assert at.query_params["sel"] == "l:-8,-8,9,-6,2,9~b:6,12,2,12"


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_compare_page_opens_on_the_latest_comparable_pair_and_shows_deltas_and_flips(store):
    at = open_page("compare", run_id="other")  # the sidebar's run plays no part
    assert not at.exception
    # "other" (the newest) has other images: the latest pair on the same images is small -> better
    assert (at.selectbox(key="compare-a").value, at.selectbox(key="compare-b").value) == ("small", "better")
    assert (at.query_params["a"], at.query_params["b"]) == ("small", "better")
    a, b = store.load("small"), store.load("better")
    acc = next(m for m in at.metric if m.label == "Accuracy (B)")
    assert acc.value == f"{b.metrics['accuracy']:.2%}"
    assert acc.delta == f"{(b.metrics['accuracy'] - a.metrics['accuracy']) * 100:+.2f} pp"
    errors = next(m for m in at.metric if m.label == "Errors (B)")
    assert errors.delta == f"{b.metrics['errors'] - a.metrics['errors']:+,}"
    table = at.dataframe[0].value
    assert table["f1_delta"].to_numpy() == pytest.approx(
        b.per_class["f1"].to_numpy() - a.per_class["f1"].to_numpy())
    assert list(table.columns) == ["class", "f1_a", "f1_b", "f1_delta", "tp_delta", "fp_delta", "fn_delta",
                                   "cer_delta"]
    mask = a.eval_mask()
    fixed = int((mask & ~a.predictions["correct"] & b.predictions["correct"]).sum())
    broken = int((mask & a.predictions["correct"] & ~b.predictions["correct"]).sum())
    assert any(c.startswith(f"{fixed:,} images fixed by B") and f"{broken:,} broken by B" in c
               for c in captions(at))
    assert any(d.label == "Download flips CSV" for d in at.get("download_button"))
    # a flip opens the detail of run B with A's prediction beside it
    at.button(key="gopen-flips-0").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("A: " in c and " → B: " in c for c in captions(at))
    at.button(key="compare-swap").click().run()
    assert (at.selectbox(key="compare-a").value, at.selectbox(key="compare-b").value) == ("better", "small")


def test_overview_offers_the_report_for_download(store):
    at = open_page("overview")
    assert not at.exception
    assert [d.label for d in at.get("download_button")] == ["Download report"]


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_compare_refuses_runs_on_different_images(store):
    at = open_page("compare")
    at.selectbox(key="compare-b").set_value("other").run()
    # "other" has other images: the paths they share give them other true labels
    assert "different true labels" in unescape(at.error[0].value)


def png_bytes() -> bytes:
    return encode_png(np.full((8, 8, 3), 128, np.uint8))


def test_try_an_image_refuses_a_non_image_naming_the_file(store):
    at = open_page("try_image")
    at.get("file_uploader")[0].upload("holiday_notes.png", b"these are not pixels", "image/png")
    at.run()
    assert len(at.error) == 1
    message = unescape(at.error[0].value)
    assert message.startswith("holiday_notes.png: not an image")


def test_try_an_image_refuses_files_over_10_mb(store):
    at = open_page("try_image")
    big = png_bytes() + b"\0" * (10 * 1024 * 1024)
    at.get("file_uploader")[0].upload("huge.png", big, "image/png").run()
    assert "larger than the 10 MB limit" in unescape(at.error[0].value)


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_try_an_image_says_when_the_model_file_is_missing(store):
    at = open_page("try_image")
    at.get("file_uploader")[0].upload("grey.png", png_bytes(), "image/png").run()
    assert len(at.get("image")) == 1
    assert "model file of this run is missing" in unescape(at.error[0].value)


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_the_start_page_builds_the_demo_with_progress_then_shows_it(tmp_path, monkeypatch):
    demo = pytest.importorskip("core.demo")
    calls = []

    def fake_run_demo(*, store, progress=None, background_projection=False):
        calls.append(("background map", background_projection))
        for message, fraction in (("Training", 0.5), ("Analysing", 1.0)):
            progress(message, fraction)
            calls.append((message, fraction))
        return make_synthetic_run(store, "demo", n=200, n_classes=3)

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path / "store"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.button(key="build-demo").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert calls == [("background map", True), ("Training", 0.5), ("Analysing", 1.0)]
    assert [unescape(t.value) for t in at.title] == ["Overview: demo"]
    assert at.sidebar.selectbox(key="run_id").value == "demo"


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_unfiltered_errors_csv_is_the_cli_file(store, served, tmp_path):
    from core.cli import main

    at = open_page("errors")
    at.slider(key=key(store, "small", "errors-conf")).set_value((0.5, 1.0)).run()
    page_csv = served["download-errors"]()
    assert main(["errors", "small", "--min-confidence", "0.5", "--out", str(tmp_path / "cli.csv"),
                 "--store", str(store.root)]) == 0
    assert page_csv == (tmp_path / "cli.csv").read_bytes()


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_compare_pairs_runs_on_the_same_images_whose_splits_differ(tmp_path):
    """Two runs of the same images and labels, each with its own split (another seed): the page opens on
    them, never says that no two runs share their images, and compares them on the images both hold out."""
    from core.analysis.compare import compare
    from core.run.synthetic import synthetic_arrays
    from core.run.write import write_run

    local = RunStore(tmp_path / "store")
    arrays = synthetic_arrays(400, 4, seed=5)
    paths = [f"img/{i:04d}.png" for i in range(400)]
    rng = np.random.default_rng(0)
    for run_id, accuracy in (("seed-a", 0.8), ("seed-b", 0.9)):
        probs = synthetic_arrays(400, 4, seed=5 if run_id == "seed-a" else 6, accuracy=accuracy)["probs"]
        # the data set's fingerprint hashes the splits too, so it differs between the two runs
        write_run(local, run_id, classes=list("abcd"), y_true=arrays["y_true"], probs=probs, paths=paths,
                  splits=np.where(rng.random(400) < 0.5, "test", "train"),
                  data={"name": "photos", "kind": "folder", "fingerprint": f"fp-{run_id}"})
    with artifacts_dir(local.root):
        at = open_page("compare", run_id="seed-b")
    a_id, b_id = at.selectbox(key="compare-a").value, at.selectbox(key="compare-b").value
    assert {a_id, b_id} == {"seed-a", "seed-b"}  # written in the same second: either is the newer
    assert not at.error and not any("share their images" in c or "hold the same images" in c
                                    for c in captions(at))
    cmp = compare(local.load(a_id), local.load(b_id))
    assert f"Compared {cmp.basis}." in captions(at) and "held out by both" in cmp.basis
    assert any(c.startswith(f"{cmp.n_fixed:,} images fixed by B") for c in captions(at))
    acc = next(m for m in at.metric if m.label == "Accuracy (B)")
    assert acc.value == f"{cmp.metric('accuracy')[1]:.2%}"


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_compare_opens_on_runs_that_share_only_some_images(tmp_path):
    """No two runs hold the same images, but two share 200: the page pairs them and says what it compares."""
    from core.analysis.compare import compare
    from core.run.synthetic import synthetic_arrays
    from core.run.write import write_run

    local = RunStore(tmp_path / "store")
    arrays = synthetic_arrays(400, 3, seed=1)
    paths = np.array([f"img/{i:04d}.png" for i in range(400)])
    for run_id, rows in (("first-300", np.arange(300)), ("last-300", np.arange(100, 400))):
        write_run(local, run_id, classes=list("abc"), y_true=arrays["y_true"][rows], probs=arrays["probs"][rows],
                  paths=list(paths[rows]), splits=np.array(["test"] * len(rows)))
    with artifacts_dir(local.root):
        at = open_page("compare", run_id="first-300")
    a_id, b_id = at.selectbox(key="compare-a").value, at.selectbox(key="compare-b").value
    assert {a_id, b_id} == {"first-300", "last-300"}
    assert not at.error and not any(c.startswith("No two runs") for c in captions(at))
    cmp = compare(local.load(a_id), local.load(b_id))
    assert cmp.metric("n") == (200, 200)
    assert f"Compared {cmp.basis}." in captions(at) and "of the 200 images they share" in cmp.basis
