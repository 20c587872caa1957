"""The image detail sent to the page (dashboard.detail), checked through AppTest: what each gallery's
component is given (the page's images and the window around it, each with its facts from the run),
user strings with their invisible characters written out, and the caption padding that lines up
the widgets under the tiles. The browser side is tests/e2e/test_detail_browser.py.
"""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run
from dashboard import detail
from tests.dashboard.apptest import TIMEOUT, artifacts_dir, unescape

HIDDEN_NAMES = ["\u202eevil\u202c txt.exe", "plain", "\u2066iso\u2069\u200b", "<b>x</b>"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("detail-store")
    store = RunStore(root)
    make_synthetic_run(store, "d", n=200, n_classes=4, seed=2, class_names=HIDDEN_NAMES)
    with artifacts_dir(root):
        yield store


def gallery_app(run_id: str, rows: list[int]) -> None:
    """One gallery of ``rows`` of ``run_id``."""
    import numpy as np  # noqa: F811 - AppTest runs this function's source alone

    from dashboard import cache, gallery, state

    run = cache.load_run(cache.store_root(), run_id)
    state.start_run("test")
    gallery.start_run()
    gallery.gallery_ui(run, np.asarray(rows), key="t", title="the test rows", url_param="p")


def sent(at: AppTest) -> dict:
    """What the gallery's detail component was given."""
    (component,) = [e for e in at.get("bidi_component") if e.proto.component_name.endswith("image_detail")]
    return json.loads(component.proto.json)


def test_top_classes_keep_the_given_class():
    probs = np.array([0.05, 0.5, 0.2, 0.15, 0.1])
    assert detail.top_classes(probs, 1, k=3) == [(1, 0.5), (2, 0.2), (3, 0.15)]
    assert detail.top_classes(probs, 0, k=3) == [(1, 0.5), (2, 0.2), (0, 0.05)]  # in place of the 3rd
    assert [c for c, _ in detail.top_classes(probs, 4, k=10)] == [1, 2, 3, 4, 0]


def test_small_or_gray_images_go_as_png_with_their_pixels_and_colour_photos_as_jpeg():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    url = detail._png_url(small)
    assert url.startswith("data:image/png;base64,")
    back = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(cv2.cvtColor(back, cv2.COLOR_BGR2RGB), small)  # RGB kept (red stays red)
    assert detail._png_url(rng.integers(0, 256, (200, 200), dtype=np.uint8)).startswith("data:image/png")
    photo = np.zeros((200, 200, 3), np.uint8)
    photo[..., 0] = 200  # red
    url = detail._png_url(photo)
    assert url.startswith("data:image/jpeg;base64,")
    back = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert abs(int(back[..., 2].mean()) - 200) <= 2 and back[..., 0].mean() < 3  # red in BGR's last channel


def test_the_window_is_the_page_and_the_images_around_it_and_around_the_detail():
    assert detail.window(100, 24, 24, None).tolist() == list(range(24 - detail.BEHIND, 48 + detail.AHEAD))
    assert detail.window(30, 0, 24, None).tolist() == list(range(30))
    far = detail.window(1000, 0, 24, 500).tolist()
    assert far[:48] == list(range(48)) and far[48:] == list(range(500 - detail.BEHIND, 500 + detail.AHEAD))


def test_each_image_of_the_page_and_the_next_ones_are_sent_with_their_facts(store):
    run = store.load("d")
    rows = np.argsort(-run.predictions["confidence"].to_numpy(), kind="stable")[:80]
    at = AppTest.from_function(gallery_app, kwargs={"run_id": "d", "rows": rows.tolist()}, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    data = sent(at)
    assert data["total"] == 80 and data["start"] == 0 and data["key"] == "t"
    assert [it["pos"] for it in data["items"]] == list(range(24 + detail.AHEAD))
    df = run.predictions
    for it in data["items"]:
        row = int(rows[it["pos"]])
        r = df.iloc[row]
        assert it["row"] == row and it["true"] == int(r["true"]) and it["pred"] == int(r["predicted"])
        assert it["conf"] == pytest.approx(float(r["confidence"]))
        assert it["ptrue"] == pytest.approx(float(r["true_prob"]))
        assert it["file"] == r["path"]
        assert it["top"][0][0] == int(np.argmax(run.probs[row])) and int(r["true"]) in [c for c, _ in it["top"]]
        png = base64.b64decode(it["src"].split(",", 1)[1])
        assert np.array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED), run.image(row))
        for group in it["near"]:  # the neighbours' thumbnails come with them
            assert all(data["thumbs"][str(n["row"])].startswith("data:image/png") for n in group["rows"])
    # user strings with their invisible characters written out; markup stays text (textContent)
    assert data["classes"] == ["<U+202E>evil<U+202C> txt.exe", "plain", "<U+2066>iso<U+2069><U+200B>", "<b>x</b>"]
    raw = json.dumps(data, ensure_ascii=False)
    assert not any(h in raw for h in ("\u202e", "\u202c", "\u2066", "\u2069", "\u200b"))


def test_caption_lines_of_a_gallery_line_are_padded_to_the_longest(store, monkeypatch):
    """A caption field only some images have (a label issue, a verdict) left the widgets under the
    tiles of a gallery line at different heights."""
    from dashboard import gallery

    gallery.register_caption_field("test-odd", lambda run, row: "label issue" if row % 3 == 0 else None)
    try:
        at = AppTest.from_function(gallery_app, kwargs={"run_id": "d", "rows": list(range(16))},
                                   default_timeout=TIMEOUT)
        at.run()
        assert not at.exception
        captions = [unescape(c.value) for c in at.caption if "true:" in unescape(c.value)]
        assert len(captions) == 16
        counts = [c.count("  \n") + 1 for c in captions]
        assert counts == [3] * 16  # rows 0, 3, 6, ... have 3 lines; the others are padded to 3
        assert sum("label issue" in c for c in captions) == 6
    finally:
        gallery.unregister("test-odd")
