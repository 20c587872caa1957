"""Error causes in the dashboard (dashboard.causes_ui): the image detail's cause section with the
neighbours that decided it, the cause mix per confused pair, the Review queue's cause set and the
confident-error queue led by the model's own errors.

Run "c": 600 synthetic images of 5 classes (about 150 in 'test', the evaluated split) whose causes
are computed before the app opens.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.diagnose.causes import CAPTION_WORDS
from core.run import derived
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run
from dashboard import review_ui
from tests.dashboard.apptest import APP, TIMEOUT, artifacts_dir, unescape


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("causes-store")
    store = RunStore(root)
    make_synthetic_run(store, "c", n=600, n_classes=5, seed=4, accuracy=0.8)
    derived.get(store.load("c"), "causes")
    with artifacts_dir(root):
        yield store


def detail_app(row: int) -> None:
    from dashboard import cache, causes_ui

    run = cache.load_run(cache.store_root(), "c")
    causes_ui.detail_section(run, row)
    causes_ui.pair_mix_ui(run)


def test_detail_says_the_cause_and_shows_the_neighbours_that_decided_it(store):
    run = store.load("c")
    stored = derived.get(run, "causes", compute=False)
    table, neighbours = stored.table("causes"), stored.table("neighbours")
    row = int(table["row"].iloc[0])
    at = AppTest.from_function(detail_app, kwargs={"row": row}, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    text = [unescape(m.value) for m in at.markdown] + [unescape(c.value) for c in at.caption]
    assert f"Cause: {CAPTION_WORDS[table['cause'].iloc[0]]}" in " ".join(text)
    assert table["evidence"].iloc[0] in text
    near = neighbours[neighbours["row"] == row].sort_values("rank")
    labels = [t.split("\n")[0].strip() for t in text if "cosine distance" in t]
    assert labels == near["neighbour_label"].astype(str).tolist()
    assert len(at.get("image")) == len(near)
    # the cause mix per confused pair, first pair first
    first = stored.summary["pair_mix"][0]
    assert any(f"{first['given']} → {first['predicted']}: " in t for t in text)
    # a correct image has no cause section
    correct = int(np.flatnonzero(run.predictions["correct"].to_numpy())[0])
    at = AppTest.from_function(detail_app, kwargs={"row": correct}, default_timeout=TIMEOUT)
    at.run()
    assert not any("Cause:" in unescape(m.value) for m in at.markdown)


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_review_queue_by_cause_and_confident_errors_led_by_the_models_own(store):
    run = store.load("c")
    table = derived.get(run, "causes", compute=False).table("causes")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("app_pages/review.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key=next(s.key for s in at.selectbox if s.key.endswith(":review-set"))).set_value("cause")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    cause = at.selectbox(key=next(s.key for s in at.selectbox if s.key.endswith(":review-cause")))
    assert cause.value == "model"
    common = table["cause"].value_counts().index[0]
    cause.set_value(common)
    at.run()
    expected = table[table["cause"] == common].sort_values(["confidence", "row"], ascending=[False, True])
    caption = next(unescape(c.value) for c in at.caption if f"cause is '{common}'" in unescape(c.value))
    assert caption.startswith(f"{len(expected)} image")
    (component,) = [e for e in at.get("bidi_component") if e.proto.component_name.endswith("review_queue")]
    items = json.loads(component.proto.json)["items"]  # what the page's queue was given, in order
    assert items[0]["row"] == int(expected["row"].iloc[0])
    # the confident errors: the model's own errors first
    from dashboard import cache  # noqa: F401 - queue_rows reads through the cache outside a session too

    rows, how = review_ui.queue_rows(run, which="confident", min_confidence=0.0)
    causes = table.set_index("row").loc[rows, "cause"].to_numpy()
    n_model = int((causes == "model").sum())
    assert n_model and (causes[:n_model] == "model").all() and "own errors first" in how


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_errors_page_filters_by_cause_and_shows_the_cause_columns(store):
    from tests.dashboard.apptest import open_page

    run = store.load("c")
    table = derived.get(run, "causes", compute=False).table("causes")
    at = open_page("errors", "c")
    n_model = int((table["cause"] == "model").sum())
    causes = at.dataframe[0].value["cause"].tolist()  # the screw-vs-nut view leads with the model's own errors
    assert n_model and causes[:n_model] == ["model"] * n_model and "model" not in causes[n_model:]
    assert any("the model's own errors first" in unescape(c.value) for c in at.caption)
    at.toggle(key=next(t.key for t in at.toggle if t.key.endswith("errors-model-first"))).set_value(False).run()
    confidence = at.dataframe[0].value["confidence"].to_numpy()
    assert (np.diff(confidence) <= 1e-9).all()  # off: most confident first, whatever the cause
    ms = at.multiselect(key=next(m.key for m in at.multiselect if m.key.endswith("errors-filter-cause")))
    assert sorted(ms.options) == sorted(set(table["cause"]))
    ms.set_value(["model"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(unescape(c.value).startswith(f"{n_model} misclassified image") for c in at.caption)
    shown = at.dataframe[0].value
    assert set(shown["cause"]) == {"model"} and shown["evidence"].str.len().gt(0).all()
    assert at.query_params["cause"] in ("model", ["model"])  # the filter is in the address, by name
    # a shared link opens the same filter; an unknown name is one warning naming it, and the filter is unset
    from tests.dashboard.apptest import open_address

    again = open_address("errors", run="c", cause="model")
    assert set(again.dataframe[0].value["cause"]) == {"model"}
    bad = open_address("errors", run="c", cause="1")
    warnings = [unescape(w.value) for w in bad.warning]
    assert any("cause must be names from label, model, ambiguous, atypical, copy, undetermined. Received: '1'" in w
               for w in warnings), warnings
    assert len(set(bad.dataframe[0].value["cause"])) > 1
