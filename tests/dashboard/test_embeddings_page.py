"""The Embeddings page while the map is missing, being computed, then ready; and beyond 20,000 points.

"derived" is a run whose map is a derived analysis not computed yet (core.analysis.projection);
"big" has 30,000 points (about 22,500 in its train split), more than the page draws one by one.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.analysis import projection as core_projection
from core.analysis.projection import stored_projection
from core.run import jobs
from core.run.config import AnalysisConfig, ProjectionConfig
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run, synthetic_arrays
from core.run.write import write_run
from dashboard import gallery, mapview
from tests.dashboard.apptest import artifacts_dir, open_address, unescape


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("embeddings-store")
    store = RunStore(root)
    arrays = synthetic_arrays(300, 4, seed=2)
    write_run(store, "derived", classes=list("abcd"), y_true=arrays["y_true"], probs=arrays["probs"],
              paths=arrays["paths"], splits=arrays["splits"], embeddings=arrays["embeddings"],
              images=arrays["images"], model={"path": "m.keras"}, data={"name": "s", "kind": "synthetic"},
              config=AnalysisConfig(model_sha256="0" * 64, data_fingerprint="derived",
                                    projection=ProjectionConfig()))
    write_run(store, "no-map", classes=list("abcd"), y_true=arrays["y_true"], probs=arrays["probs"],
              paths=arrays["paths"], embeddings=arrays["embeddings"], model={"path": "m.keras"},
              config=AnalysisConfig(model_sha256="0" * 64, data_fingerprint="no-map", projection=None))
    make_synthetic_run(store, "big", n=30_000, n_classes=6, seed=1)
    with artifacts_dir(root):
        yield store


def open_embeddings(run_id: str, **params: str) -> AppTest:
    return open_address("embeddings", run=run_id, **params)


def test_a_run_analysed_with_no_projection_says_so_not_that_it_has_no_embeddings(store):
    at = open_embeddings("no-map")
    assert [unescape(i.value) for i in at.info] == [
        "This run was analysed without a 2-D map (`--no-projection`). Re-run the analysis without that option "
        "to get one."]
    assert not at.get("plotly_chart")


def test_a_missing_map_is_offered_then_said_to_be_computed_then_drawn(store, monkeypatch):
    run = store.load("derived")
    at = open_embeddings("derived")
    assert any("has not been computed yet" in i.value for i in at.info)
    assert at.button(key="compute-map").label.startswith("Compute the map")
    assert not at.get("plotly_chart")
    # another process computes it: the page says so (its lock is held) and draws nothing yet
    fd = jobs.try_lock(run, "projection")
    try:
        at.run()
        assert any("is being computed in the background" in i.value for i in at.info)
        assert not at.get("plotly_chart")
    finally:
        os.close(fd)
    # the map arrives (a stand-in for UMAP): the next run draws it, without reopening the page
    monkeypatch.setattr(core_projection, "project", lambda emb, **_: (
        np.asarray(emb, np.float32)[:, :2].copy(), {"method": "umap"}))
    core_projection.ensure_projection(run, progress=False)
    at.run()
    assert not at.info and len(at.get("plotly_chart")) == 1
    # the evaluation split by default (on 'all' the training images bury the errors)
    n_eval = int(run.eval_mask().sum())
    assert 0 < n_eval < 300
    assert f"{n_eval} points in view, coloured by true class." in [unescape(c.value) for c in at.caption]


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_beyond_the_cap_every_point_is_drawn_and_a_selection_holds_every_row_inside(store):
    run = store.load("big")
    xy = np.asarray(stored_projection(run))
    window = mapview.full_window(xy)
    at = open_embeddings("big", colour="conf", split="train")
    captions = [unescape(c.value) for c in at.caption]
    train = run.predictions["split"].astype(str).to_numpy() == "train"
    assert any(c.startswith(f"{int(train.sum()):,} points in view, more than the 20,000 drawn one by one")
               for c in captions), captions
    # a lasso over the left half of the map, from the address
    x0, x1, y0, y1 = window
    mid = (x0 + x1) / 2
    lasso = f"l:{x0:.6g},{y0:.6g},{mid:.6g},{y0:.6g},{mid:.6g},{y1:.6g},{x0:.6g},{y1:.6g}"
    at = open_embeddings("big", split="train", sel=lasso)
    polygon = [(float(f"{x0:.6g}"), float(f"{y0:.6g}")), (float(f"{mid:.6g}"), float(f"{y0:.6g}")),
               (float(f"{mid:.6g}"), float(f"{y1:.6g}")), (float(f"{x0:.6g}"), float(f"{y1:.6g}"))]
    inside = mapview.points_in_polygon(xy, polygon) & train
    n = int(inside.sum())
    assert n > 5_000
    df = run.predictions
    wrong = inside & ~df["correct"].to_numpy(bool)
    said = f"{n:,} images inside the selection, {int(wrong.sum()):,} of them wrong."
    assert said in [unescape(c.value) for c in at.caption]
    # the gallery opens on the errors, most wrong first (lowest probability of the given class)
    first = np.flatnonzero(wrong)[np.argsort(df["true_prob"].to_numpy()[wrong], kind="stable")][:24]
    gallery_rows = at.session_state[gallery.SOURCES_KEY]["embedding"].rows
    assert gallery_rows[:24].tolist() == first.tolist() and gallery_rows.size == n
    at.toggle(key=next(t.key for t in at.toggle if t.key.endswith(":emb-errors-only"))).set_value(True).run()
    gallery_rows = at.session_state[gallery.SOURCES_KEY]["embedding"].rows
    assert sorted(gallery_rows.tolist()) == np.flatnonzero(wrong).tolist()
    assert not at.button(key="emb-zoom-selection").disabled
    at.button(key="emb-zoom-selection").click().run()
    assert at.query_params["view"]  # the window is in the address; the gallery still holds every row
    assert said in [unescape(c.value) for c in at.caption]
    at.button(key="emb-zoom-reset").click().run()
    assert "view" not in at.query_params
    at.button(key="emb-clear").click().run()
    assert "sel" not in at.query_params


def test_the_selection_gallery_options_are_in_the_address_and_restored_from_it(store):
    run = store.load("big")
    xy = stored_projection(run)
    x0, x1 = float(xy[:, 0].min()), float(xy[:, 0].max())
    y0, y1 = float(xy[:, 1].min()), float(xy[:, 1].max())
    box = f"b:{x0:.6g},{(x0 + x1) / 2:.6g},{y0:.6g},{y1:.6g}"
    at = open_embeddings("big", split="train", sel=box)
    assert "errors" not in at.query_params and "order" not in at.query_params  # the defaults are left out
    at.toggle(key=next(t.key for t in at.toggle if t.key.endswith(":emb-errors-only"))).set_value(True).run()
    order = next(s for s in at.get("button_group") if s.key.endswith(":emb-order"))
    order.set_value("most confident first").run()
    assert at.query_params["errors"] == "1" and at.query_params["order"] == "conf"
    # a new session on that address (a reload, a shared link) opens on the same gallery
    again = open_embeddings("big", split="train", sel=box, errors="1", order="conf")
    rows = again.session_state[gallery.SOURCES_KEY]["embedding"].rows
    df = run.predictions
    assert rows.size and not df["correct"].to_numpy(bool)[rows].any()  # errors only
    confidence = df["confidence"].to_numpy()[rows]
    assert (np.diff(confidence) <= 0).all()  # most confident first
    # a value the page does not know is said, not obeyed
    bad = open_embeddings("big", split="train", sel=box, order="random")
    assert any("'order' ignored" in unescape(w.value) and "'random'" in unescape(w.value) for w in bad.warning)
    assert bad.session_state[gallery.SOURCES_KEY]["embedding"].rows.size > rows.size


def test_the_map_figure_is_built_again_only_when_what_it_shows_changes(store):
    figure_key = "emb-figure"  # app_pages/embeddings.py FIGURE_KEY (a page module runs when imported)
    at = open_embeddings("big")
    first = at.session_state[figure_key][2]
    at.run()  # a rerun that changes nothing the map shows: the same figure object
    assert at.session_state[figure_key][2] is first
    at.radio(key="emb-colour").set_value("correct").run()
    recoloured = at.session_state[figure_key][2]
    assert recoloured is not first
    assert [t.name for t in recoloured.data if t.name in ("correct", "wrong")] == ["correct", "wrong"]
    at.radio(key="emb-colour").set_value("true class").run()  # back: the plan is cached, the figure rebuilt
    again = at.session_state[figure_key][2]
    assert again is not recoloured and again.to_json() == first.to_json()
