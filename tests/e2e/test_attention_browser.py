"""Attention maps in Chromium: the "Show attention" toggle redraws the thumbnails with their
predicted-class map, and the image detail shows the image and both maps side by side.

The run is a small CNN analysed on 24 PNG files (tests/dashboard/test_attention.py builds it).
Screenshots go to $ATTENTION_SHOTS (default /tmp/shots_attention).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.dashboard.test_attention import _analysed_store
from tests.e2e.conftest import settle

SHOTS = Path(os.environ.get("ATTENTION_SHOTS", "/tmp/shots_attention"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _analysed_store(tmp_path_factory.mktemp("e2e-attention"))


def test_toggle_overlays_thumbnails_and_the_detail_shows_both_maps(url, store, page):
    from core import derived, gradcam
    from dashboard import attention_ui

    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{url}/errors?run=cnn")
    page.get_by_role("heading", name="Errors").wait_for()
    settle(page)
    thumbs = page.locator(".st-key-gallery-errors [class*='st-key-gtile-errors-'] img")
    thumbs.first.wait_for()
    settle(page)
    n = thumbs.count()
    assert n == 16  # the untrained CNN's 16 mistakes, one page
    before = [thumbs.nth(i).get_attribute("src") for i in range(n)]
    page.locator(".st-key-gallery-errors").get_by_text("Show attention").click()
    settle(page)
    page.wait_for_function(  # the toast's computation ends with a redraw of the grid
        "(first) => document.querySelector(\"[class*='st-key-gtile-errors-0'] img\").src !== first",
        arg=before[0], timeout=90_000)
    settle(page)
    page.screenshot(path=SHOTS / "e2e_errors_on.png", full_page=True)
    after = [thumbs.nth(i).get_attribute("src") for i in range(n)]
    stored = derived.get(store.load("cnn"), gradcam.KIND, attention_ui.CONFIG, compute=False)
    shown_rows = np.asarray(stored.array("rows"))
    assert shown_rows.size == n  # the page shown, nothing more
    n_heat = int((~np.asarray(stored.array("empty"))[:, 0]).sum())
    assert sum(a != b for a, b in zip(before, after)) == n_heat  # every thumbnail with evidence redrawn

    page.locator(".st-key-gallery-errors .st-key-gtile-errors-0").click()  # the tile's button covers the image
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    settle(page)
    dialog.locator("[class*='st-key-attention-image'] img").wait_for()
    panels = [dialog.locator(f"[class*='st-key-attention-{which}']") for which in gradcam.WHICH]
    for panel in panels:  # each map is an image, or says in words that it is empty
        text = panel.inner_text()
        assert panel.locator("img").count() == 1 or "no positive evidence" in text, text
    assert "predicted class" in panels[0].inner_text() and "true class" in panels[1].inner_text()
    panels[0].scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "e2e_detail.png")
