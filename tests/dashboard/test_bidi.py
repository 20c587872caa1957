"""Issue 22 item 8: right-to-left overrides and other invisible control characters in user strings are
shown escaped (<U+202E>), never applied: "\u202eevil\u202c txt.exe" showed as "live txt.exe".

Run "bidi": a synthetic run whose class names hold U+202E/U+202C and U+2066 (one also a zero-width
space), shown as titles, captions, widget options and table cells.
"""

from __future__ import annotations

import pandas as pd
import pytest

from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run
from dashboard import ui
from tests.dashboard.apptest import artifacts_dir, open_page

CLASSES = ["\u202eevil\u202c txt.exe", "plain", "\u2066iso\u2069\u200b"]
HIDDEN = ("\u202e", "\u202c", "\u2066", "\u2069", "\u200b")


def test_visible_plain_and_shown_escape_every_hidden_character():
    assert ui.visible(CLASSES[0]) == "<U+202E>evil<U+202C> txt.exe"
    assert ui.visible("a\x07b\u061cc\ufeff") == "a<U+0007>b<U+061C>c<U+FEFF>"
    assert ui.visible("עברית and emoji 👩‍💻") == "עברית and emoji 👩‍💻"  # RTL letters and ZWJ untouched
    assert ui.plain(CLASSES[0]) == "\\<U\\+202E\\>evil\\<U\\+202C\\> txt\\.exe"
    table = ui.shown(pd.DataFrame({"name": CLASSES + [None], "n": [1, 2, 3, 4]}))
    assert table["name"].tolist()[:3] == ["<U+202E>evil<U+202C> txt.exe", "plain", "<U+2066>iso<U+2069><U+200B>"]
    assert table["name"].isna().tolist() == [False, False, False, True] and table["n"].tolist() == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def bidi_store(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("bidi") / "store")
    make_synthetic_run(store, "bidi", n=120, n_classes=3, class_names=CLASSES, seed=0)
    with artifacts_dir(store.root):
        yield store


def _texts(at) -> list[str]:
    out = []
    for kind in ("markdown", "caption", "title", "header", "subheader", "error", "warning", "info"):
        out += [str(e.value) for e in at.get(kind)]
    for box in (*at.selectbox, *at.multiselect):
        out += [str(o) for o in box.options] + [str(box.label)]
    for frame in at.dataframe:
        value = frame.value
        data = value.data if hasattr(value, "data") else value  # a Styler's frame
        out += [str(v) for v in data.astype(str).to_numpy().ravel()]
    return out


@pytest.mark.parametrize("page", ["overview", "per_class", "confusion", "errors"])
def test_no_page_shows_a_hidden_character_raw(bidi_store, page):
    at = open_page(page, "bidi")
    texts = _texts(at)
    raw = [t for t in texts if any(h in t for h in HIDDEN)]
    assert raw == [], (page, raw[:5])
    assert any("<U+202E>evil<U+202C> txt.exe" in t.replace("\\", "") for t in texts), page
