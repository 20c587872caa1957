"""The one gallery and image detail (dashboard.gallery), driven alone through AppTest.from_function.

Run "g": 120 synthetic images of 4 classes; run "flat": a plain folder's run (every image in the
'test' split, no training images) with embeddings, for the neighbours of the detail.
"""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.analysis import neighbours
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run, synthetic_arrays
from core.run.write import write_run
from dashboard import gallery, ui
from tests.dashboard.apptest import TIMEOUT, artifacts_dir, unescape


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery-store")
    store = RunStore(root)
    make_synthetic_run(store, "g", n=120, n_classes=4, seed=2)
    arrays = synthetic_arrays(80, 3, seed=5)
    write_run(store, "flat", classes=["ant", "bee", "cow"], y_true=arrays["y_true"], probs=arrays["probs"],
              paths=[f"img/{i:03d}.png" for i in range(80)], splits=np.full(80, "test"),
              embeddings=arrays["embeddings"], images=arrays["images"],
              model={"path": "m.keras"}, data={"name": "flat", "kind": "synthetic"})
    with artifacts_dir(root):
        yield store


def gallery_app(run_id: str = "g", rows: list[int] | None = None) -> None:
    """One gallery of ``rows`` of ``run_id`` (all rows by default), and the detail it opens."""
    import numpy as np  # noqa: F811 - AppTest runs this function's source alone

    from dashboard import cache, gallery, state

    run = cache.load_run(cache.store_root(), run_id)
    state.start_run("test")
    gallery.start_run()
    shown = np.arange(run.n_images) if rows is None else np.asarray(rows)
    gallery.gallery_ui(run, shown, key="t", title="the test rows", url_param="p")
    gallery.detail_ui_if_open()
    state.write_url(scope=None, run_id=run_id)


def start(**kwargs) -> AppTest:
    at = AppTest.from_function(gallery_app, kwargs=kwargs, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def tile_files(at: AppTest) -> list[str]:
    buttons = sorted((b for b in at.button if (b.key or "").startswith("gopen-t-")),
                     key=lambda b: int(b.key.rsplit("-", 1)[1]))
    return [unescape(b.label).removeprefix("Open ") for b in buttons]


def test_pages_of_the_chosen_size_in_the_given_order(store):
    run = store.load("g")
    paths = run.predictions["path"].tolist()
    rows = list(range(119, -1, -1))  # reversed: the gallery keeps the order it is given
    at = start(rows=rows)
    assert tile_files(at) == [paths[r] for r in rows[:24]]
    assert "Images 1–24 of 120, most confident first. Click an image to inspect it." in [unescape(c.value)
                                                                                          for c in at.caption]
    assert len(at.get("pagination")) == 2  # above and below the grid
    at.selectbox(key=gallery.PER_PAGE_KEY).set_value(48).run()
    assert tile_files(at) == [paths[r] for r in rows[:48]]
    at.session_state[ui.scoped(run, "t-page")] = 3  # what a click on page 3 sets
    at.run()
    assert tile_files(at) == [paths[r] for r in rows[96:]]
    assert at.query_params["p"] == "3"
    # one line per thumbnail, confidence first; the full text is the button's tooltip
    r = run.predictions.iloc[rows[96]]
    lines = unescape(at.button(key="gopen-t-0").help).split("  \n")
    assert lines[:2] == [f"true: {r['true_label']}", f"predicted: {r['predicted_label']} ({r['confidence']:.2f})"]
    assert lines[2].startswith(f"top-3: {r['predicted_label']} ") and lines[3] == r["path"]


def test_a_click_opens_the_detail_and_previous_next_walk_the_gallery(store):
    run = store.load("g")
    rows = [5, 9, 2]
    at = start(rows=rows)
    at.button(key="gopen-t-2").click().run()
    assert at.query_params["img"] == "2"
    assert any(unescape(c.value) == "Image 3 of 3 · the test rows" for c in at.caption)
    assert at.button(key="detail-next").disabled and not at.button(key="detail-prev").disabled
    at.button(key="detail-prev").click().run()
    assert at.query_params["img"] == "9"
    images = at.get("image")
    assert images[3].proto.imgs[0].alt == run.predictions["path"].iat[9]  # 3 thumbnails, then the detail's
    # the probability chart lists the true class (its bars are tested in test_figures)
    import json

    spec = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert run.predictions["true_label"].iat[9] in spec["data"][0]["y"]


def test_neighbours_come_from_the_evaluated_images_when_there_is_no_train_split(store):
    run = store.load("flat")
    df = run.predictions
    row = int(np.flatnonzero(~df["correct"].to_numpy())[0])
    at = start(run_id="flat", rows=[row])
    at.button(key="gopen-t-0").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("the nearest evaluated images in embedding space" in m.value for m in at.markdown)
    true, pred = int(df["true"].iat[row]), int(df["predicted"].iat[row])
    pool = neighbours.rows_by_class(df["true"].to_numpy(), np.arange(len(df)), n_classes=3)
    expected = []
    for cls in (true, pred):
        near, dist = neighbours.nearest(run.embeddings, row, pool[cls], k=5)
        assert row not in near.tolist()
        expected += [df["path"].iat[int(r)] for r in near]
    shown = [img.proto.imgs[0].alt for img in at.get("image")][2:]  # the tile, the detail, then neighbours
    assert shown == expected
    captions = [unescape(c.value) for c in at.caption]
    assert any(c.endswith(f"distance {dist[0]:.2f}") for c in captions)


@pytest.fixture
def hooks():
    """A caption field, a transform, an item slot and a detail section registered as a later feature
    would, recording what they are asked to draw; unregistered afterwards."""
    calls = {"transform": [], "slot": [], "section": []}

    def invert(run, row, pixels):
        calls["transform"].append(int(row))
        return 255 - pixels

    def slot(run, row, where):
        import streamlit as st

        calls["slot"].append((int(row), where))
        st.caption(f"verdict slot {row} ({where})")

    def section(run, row):
        import streamlit as st

        calls["section"].append(int(row))
        st.caption(f"extra section for {row}")

    gallery.register_caption_field("cluster", lambda run, row: f"cluster {row % 3}")
    gallery.register_transform("invert", "Invert the images", invert)
    gallery.register_item_slot("review", slot)
    gallery.register_detail_section("extra", section)
    yield calls
    for name in ("cluster", "invert", "review", "extra"):
        gallery.unregister(name)


def test_registered_hooks_reach_every_tile_and_the_detail_without_page_changes(store, hooks):
    at = start(rows=[4, 7])
    captions = [unescape(c.value) for c in at.caption]
    assert [c.split("  \n")[2] for c in captions if c.count("  \n") >= 2 and c.split("  \n")[2].startswith("cluster")] \
        == ["cluster 1", "cluster 1"]  # after the two standard lines
    assert hooks["slot"] == [(4, "tile"), (7, "tile")] and "verdict slot 7 (tile)" in captions
    assert hooks["transform"] == []  # the toggle starts off
    toggle = at.toggle(key="gtransform-invert-t")
    assert unescape(toggle.label) == "Invert the images"
    toggle.set_value(True).run()
    assert hooks["transform"][-2:] == [4, 7]
    hooks["slot"].clear()
    at.button(key="gopen-t-1").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert (7, "detail") in hooks["slot"] and hooks["section"] == [7]
    assert at.toggle(key="gtransform-invert-detail").value  # one setting for the galleries and the detail
    captions = [unescape(c.value) for c in at.caption]
    assert "extra section for 7" in captions and any("cluster 1" in c for c in captions)
