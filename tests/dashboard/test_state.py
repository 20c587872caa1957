"""The view in the URL: codecs, and what a reload (a fresh session on the same address) restores.

A reload or a shared link is simulated by a new AppTest whose ``query_params`` hold the address
and which opens on the page of that address. Store: "small" (600 images, 5 classes) and
"wide" (400 images, 8 classes).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run
from dashboard import state, ui, views
from tests.dashboard.apptest import artifacts_dir, open_address, unescape


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("state-store")
    store = RunStore(root)
    make_synthetic_run(store, "small", n=600, n_classes=5, seed=0, accuracy=0.8)
    make_synthetic_run(store, "wide", n=400, n_classes=8, seed=4, accuracy=0.7)
    with artifacts_dir(root):
        yield store


# --------------------------------------------------------------------------- codecs

def test_codecs_name_the_value_they_refuse():
    with pytest.raises(ValueError, match=r"true must be an integer from 0 to 4\. Received: '7'"):
        state.decode_ints("1,7", low=0, high=4, name="true")
    with pytest.raises(ValueError, match="Received: 'x,1'"):
        state.decode_pair("x,1", high=4)
    with pytest.raises(ValueError, match="Received: '0.9,0.1'"):
        state.decode_range("0.9,0.1", name="conf")
    with pytest.raises(ValueError, match="Received: '1,0,0,1'"):
        state.decode_window("1,0,0,1")
    with pytest.raises(ValueError, match=r"must be one of \['a', 'b'\]. Received: 'c'"):
        state.decode_choice("c", ["a", "b"])
    with pytest.raises(ValueError, match="nan"):
        state.decode_floats("nan,1", count=2)
    with pytest.raises(ValueError, match="starts with 'b:'"):
        state.decode_shapes("q:1,2")
    with pytest.raises(ValueError, match="at least 3 x,y pairs"):
        state.decode_shapes("l:0,0,1,1")


def test_shapes_round_trip_through_the_url_to_six_digits():
    rng = np.random.default_rng(0)
    lasso = tuple((float(x), float(y)) for x, y in rng.normal(0, 10, (50, 2)))
    shapes = [("box", (0.25, 1.5, -3.0, 2.0)), ("lasso", lasso)]
    rounded = state.round_shapes(shapes)
    assert state.decode_shapes(state.encode_shapes(rounded)) == rounded  # a fixed point
    assert np.allclose(np.array(rounded[1][1]), np.array(lasso), rtol=1e-5)
    assert state.round_shapes([]) == []


# --------------------------------------------------------------------------- reload restores the view

def test_a_reload_restores_run_cell_and_display_of_the_confusion_page(store):
    at = open_address("confusion", run="wide", cell="3,5", values="share", log="1", p="1")
    run = store.load("wide")
    assert at.sidebar.selectbox(key="run_id").value == "wide"
    assert (at.selectbox(key=ui.scoped(run, "cell-true")).value,
            at.selectbox(key=ui.scoped(run, "cell-predicted")).value) == (3, 5)
    assert at.radio(key="cm-view").value == "Row-normalised" and at.checkbox(key="cm-log").value
    assert unescape(at.subheader[0].value) == f"True {run.classes[3]}, predicted {run.classes[5]}"
    assert at.query_params == {"run": "wide", "cell": "3,5", "values": "share", "log": "1"}


def test_a_reload_restores_the_errors_filters_and_the_open_image(store):
    run = store.load("small")
    df = run.predictions
    rows = views.filter_errors(df, run.eval_mask(), true_classes=[1, 2], confidence_range=(0.3, 1.0))
    at = open_address("errors", run="small", true="1,2", conf="0.3,1", img=str(int(rows[1])))
    assert at.multiselect(key=ui.scoped(run, "errors-true")).value == [1, 2]
    assert at.slider(key=ui.scoped(run, "errors-conf")).value == (0.3, 1.0)
    assert any(unescape(c.value).startswith(f"{rows.size} misclassified images") for c in at.caption)
    # the image detail (drawn in the browser, dashboard.detail) is told to open on the image of
    # the address, second of the list, and holds that image's facts
    (component,) = [e for e in at.get("bidi_component") if e.proto.component_name.endswith("image_detail")]
    sent = json.loads(component.proto.json)
    assert sent["urlAt"] == 1 and sent["total"] == rows.size
    (item,) = [it for it in sent["items"] if it["pos"] == 1]
    assert item["row"] == int(rows[1])
    assert at.query_params["img"] == str(int(rows[1]))  # kept: the page writes it, the server leaves it


def test_filters_outlive_a_visit_to_another_page(store):
    at = open_address("errors", run="small")
    run = store.load("small")
    at.multiselect(key=ui.scoped(run, "errors-true")).set_value([3]).run()
    at.switch_page("app_pages/confusion.py").run()
    assert "true" not in at.query_params  # the address is the confusion page's now
    at.switch_page("app_pages/errors.py").run()
    assert at.multiselect(key=ui.scoped(run, "errors-true")).value == [3]
    assert at.query_params["true"] == "3"


def test_a_value_that_does_not_fit_the_run_is_dropped_with_one_warning(store):
    at = open_address("confusion", run="small", cell="2,9")
    warnings = [unescape(w.value) for w in at.warning]
    assert warnings == ["Address parameter 'cell' ignored: cell must be two class indices from 0 to 4, 'i,j'. "
                        "Received: '2,9'"]
    run = store.load("small")
    assert (at.selectbox(key=ui.scoped(run, "cell-true")).value,
            at.selectbox(key=ui.scoped(run, "cell-predicted")).value) != (2, 9)


def test_an_unknown_run_in_the_address_says_so_and_offers_the_runs(store):
    at = open_address("errors", run="gone-run", true="1")
    assert len(at.error) == 1
    assert "The address names run 'gone-run', which is not in the store" in unescape(at.error[0].value)
    offered = [unescape(b.label) for b in at.button if (b.key or "").startswith("open-run-")]
    assert sorted(o.split(" · ")[0] for o in offered) == ["small", "wide"]
    assert not any(t.value == "Errors" for t in at.title)  # the page is not drawn for another run
    next(b for b in at.button if unescape(b.label).startswith("small ·")).click().run()
    assert at.sidebar.selectbox(key="run_id").value == "small"
    assert at.title[0].value == "Errors" and not at.error
    assert at.query_params == {"run": "small"}  # the unknown run's filters are not applied to another


def test_switching_runs_drops_the_old_runs_view_from_the_address(store):
    at = open_address("confusion", run="wide", cell="6,7")
    at.sidebar.selectbox(key="run_id").set_value("small").run()
    small = store.load("small")
    cell = (at.selectbox(key=ui.scoped(small, "cell-true")).value,
            at.selectbox(key=ui.scoped(small, "cell-predicted")).value)
    assert cell != (6, 7) and at.query_params["run"] == "small"
    assert at.query_params["cell"] == f"{cell[0]},{cell[1]}"
