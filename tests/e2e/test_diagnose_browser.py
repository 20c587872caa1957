"""The Diagnose page in headless Chromium: "Compute diagnoses" with its progress bar on a
Fashion-MNIST-like run with planted train/test copies, then the ranked cards; a card's gallery
opens an image detail that shows the diagnosis line; a 120-class run and a folder run analysed by a
tiny Keras model show their cards. Screenshots go to $DIAGNOSE_SHOTS (default /tmp/shots_diagnose).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.dashboard.test_diagnose_page import planted_run
from tests.e2e.conftest import settle

pytestmark = pytest.mark.browser

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
SHOTS = Path(os.environ.get("DIAGNOSE_SHOTS", "/tmp/shots_diagnose"))


@pytest.fixture(scope="module")
def store(tmp_path_factory, image_tree_module, tiny_model_path):
    from core import diagnose
    from core.data.datasets import load_dataset
    from core.run.analyze import analyze
    from core.run.store import RunStore

    store = RunStore(tmp_path_factory.mktemp("e2e-diagnose"))
    planted_run(store, "fashion", n=2_000, n_classes=10, class_names=FASHION)
    planted_run(store, "c120", n=3_000, n_classes=120)
    diagnose.run_diagnoses(store.load("c120"))
    analyze(tiny_model_path, load_dataset(image_tree_module), store=store, run_id="folder", progress=False,
            projection=False)
    diagnose.run_diagnoses(store.load("folder"))
    return store


@pytest.fixture(scope="module")
def image_tree_module(tmp_path_factory):
    from tests.conftest import CLASS_COLOURS, write_image

    root = tmp_path_factory.mktemp("folder") / "images"
    for c, (name, rgb) in enumerate(CLASS_COLOURS.items()):
        for split in ("train", "test"):
            for i in range(8):
                write_image(root / split / name / f"{name}_{i}.png", rgb, seed=c * 100 + i + (50 if split == "test"
                                                                                             else 0))
    # a test image that is a copy of a train image of another class: a leak whose labels disagree
    (root / "test" / "dog" / "dog_copy.png").write_bytes((root / "train" / "cat" / "cat_0.png").read_bytes())
    return root


def shot(page, name: str) -> None:
    if page.locator("[class*='st-key-diagnose-card-']").count():
        page.locator("[data-testid='stMetricValue']").first.wait_for()  # drawn, not skeletons
    for chart in page.locator(".js-plotly-plot").all():
        chart.wait_for()
    page.wait_for_timeout(1_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_compute_then_cards_then_a_cards_gallery_and_detail(url, store, page):
    page.set_viewport_size({"width": 1400, "height": 2600})  # Streamlit scrolls inside its main block
    page.goto(f"{url}/diagnose?run=fashion")
    settle(page)
    shot(page, "fashion_before")
    page.get_by_role("button", name="Compute diagnoses").click()
    page.locator("[data-testid='stProgress']").first.wait_for(timeout=30_000)  # the bar shows while it runs
    page.get_by_role("button", name="Compute diagnoses").wait_for(state="detached", timeout=90_000)
    settle(page)
    cards = page.locator("[class*='st-key-diagnose-card-']")
    cards.first.wait_for()
    titles = [t.strip() for t in page.locator("[class*='st-key-diagnose-card-'] h3").all_inner_texts()]
    assert titles[0].startswith("1. ") and any("Leaks" in t for t in titles), titles
    assert page.get_by_role("button", name="Compute diagnoses").count() == 0
    shot(page, "fashion_cards")
    leaks = page.locator("[class*='st-key-diagnose-card-leaks']")
    leaks.get_by_role("button", name="Show its").click()
    settle(page)
    tiles = page.locator("[class*='st-key-gtile-diagnose-leaks-']")
    tiles.first.wait_for()
    assert "copy in train" in tiles.first.inner_text()
    shot(page, "fashion_leaks_gallery")
    page.wait_for_function("() => (window.__galleryDetails || {})['diagnose-leaks']")  # the detail's page side
    tiles.first.get_by_role("button", name="Open ").click()
    detail = page.locator(".gd-overlay.open")  # the detail opens in the page, with the cause's line
    detail.wait_for()
    assert "copy in train" in detail.locator(".gd-lines").inner_text()
    shot(page, "fashion_detail")
    page.goto(f"{url}/errors?run=fashion")  # the Errors page gains the diagnosis columns and filters
    settle(page)
    page.get_by_text("Copy in train").first.wait_for()
    page.wait_for_timeout(1_000)
    page.screenshot(path=str(SHOTS / "fashion_errors.png"))


@pytest.mark.parametrize("run_id", ["c120", "folder"])
def test_stored_findings_show_as_cards(url, store, page, run_id):
    page.set_viewport_size({"width": 1400, "height": 2600})
    page.goto(f"{url}/diagnose?run={run_id}")
    settle(page)
    page.locator("[class*='st-key-diagnose-card-']").first.wait_for()
    page.locator("[class*='st-key-diagnose-card-leaks']").wait_for()
    shot(page, f"{run_id}_cards")
    text = page.locator("[data-testid='stMain']").inner_text()
    assert "Traceback" not in text and "Compute diagnoses" not in text
    assert "Leaks" in text
