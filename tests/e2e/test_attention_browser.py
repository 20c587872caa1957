"""Attention maps in Chromium: the attention control ("Grad-CAM") redraws the thumbnails with
their predicted-class map, and the image detail shows the image and both maps side by side;
its one control offers "Both" to compare Grad-CAM with occlusion, at 10 and 120 classes.

The runs are small CNNs analysed on PNG files: "cnn" (3 classes, 24 images;
tests/dashboard/test_attention.py builds it), "cnn10" and "cnn120" (10 and 120 classes, 2
images each). Screenshots go to $ATTENTION_SHOTS (default /tmp/shots_attention).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.dashboard.test_attention import _analysed_store
from tests.e2e.conftest import open_full_detail, settle

SHOTS = Path(os.environ.get("ATTENTION_SHOTS", "/tmp/shots_attention"))


def _many_classes(store, n_classes: int) -> None:
    """Run f"cnn{n_classes}": an untrained small CNN on 2 coloured 20x20 PNGs per class."""
    import keras

    from core.data.datasets import load_dataset
    from core.run.analyze import analyze
    from tests.conftest import write_image

    base = store.root.parent / f"data{n_classes}"
    rng = np.random.default_rng(n_classes)
    for c in range(n_classes):
        rgb = tuple(int(v) for v in rng.integers(0, 256, 3))
        for i in range(2):
            write_image(base / f"class_{c:03d}" / f"img_{i}.png", rgb, seed=c * 10 + i)
    keras.utils.set_random_seed(n_classes)
    L = keras.layers
    model = keras.Sequential([keras.Input((20, 20, 3)), L.Rescaling(1 / 255), L.Conv2D(8, 3, activation="relu"),
                              L.Conv2D(8, 3, activation="relu"), L.GlobalAveragePooling2D(),
                              L.Dense(n_classes, activation="softmax")])
    path = base / "model.keras"
    model.save(path)  # a Sequential, loaded back from the file by the dashboard
    analyze(path, load_dataset(base), store=store, run_id=f"cnn{n_classes}", progress=False, projection=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = _analysed_store(tmp_path_factory.mktemp("e2e-attention"))
    for n in (10, 120):
        _many_classes(store, n)
    return store


def test_toggle_overlays_thumbnails_and_the_detail_shows_both_maps(url, store, page):
    from core.analysis import gradcam
    from core.run import derived
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
    page.locator(".st-key-gallery-errors .st-key-attention-method-errors").get_by_text("Grad-CAM").click()
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

    # the detail opens in the page; its Full detail (the server's dialog) has both maps
    dialog = open_full_detail(page, page.locator(".st-key-gallery-errors .st-key-gtile-errors-0"))
    settle(page)
    dialog.locator("[class*='st-key-attention-gradcam-image'] img").wait_for()
    panels = [dialog.locator(f"[class*='st-key-attention-gradcam-{which}']") for which in gradcam.WHICH]
    for panel in panels:  # each map is an image, or says in words that it is empty
        text = panel.inner_text()
        assert panel.locator("img").count() == 1 or "no positive evidence" in text, text
    assert "predicted class" in panels[0].inner_text() and "true class" in panels[1].inner_text()
    panels[0].scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "e2e_detail.png")


@pytest.mark.parametrize("n_classes", [10, 120])
def test_the_detail_has_one_control_comparing_grad_cam_and_occlusion(url, store, page, n_classes):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{url}/errors?run=cnn{n_classes}")
    page.get_by_role("heading", name="Errors").wait_for()
    settle(page)
    page.locator(".st-key-gallery-errors [class*='st-key-gtile-errors-'] img").first.wait_for(timeout=90_000)
    settle(page)
    dialog = open_full_detail(page, page.locator(".st-key-gallery-errors .st-key-gtile-errors-0"))
    settle(page)
    control = dialog.locator(".st-key-attention-method-detail")
    words = [t.strip() for t in control.inner_text().split("\n") if t.strip()]
    assert words[-4:] == ["Off", "Grad-CAM", "Occlusion", "Both"], words
    assert dialog.get_by_role("switch").count() == 0  # no toggle besides it, and no button below
    assert dialog.get_by_role("button", name="Show attention maps").count() == 0
    control.get_by_text("Both").click()
    settle(page)
    for method in ("gradcam", "occlusion"):
        dialog.locator(f"[class*='st-key-attention-{method}-image'] img").wait_for(timeout=90_000)
        for which in ("predicted", "true"):
            panel = dialog.locator(f"[class*='st-key-attention-{method}-{which}']")
            # each map is an image, or says in words that it is empty
            panel.locator("img").or_(panel.get_by_text("no positive evidence")).wait_for(timeout=90_000)
            assert f"{which} class" in panel.inner_text()
    page.wait_for_function("() => [...document.querySelectorAll('[role=dialog] img')].every(i => i.complete)")
    assert "occlusion: 37 model passes per image" in dialog.inner_text()
    page.screenshot(path=SHOTS / f"e2e_detail_both_{n_classes}.png", full_page=True)
    dialog.locator("[class*='st-key-attention-occlusion-image']").scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / f"e2e_detail_both_{n_classes}_maps.png")
