"""Issue 9 end to end in headless Chromium, one server for the module: a click on a thumbnail opens
that image's detail (10 and 120 classes); a lasso on a 70,000-point map gives a gallery of every image
inside it, counted again here with the textbook ray-cast; a reload restores run, page, cell and filters.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from core.analysis.projection import stored_projection

pytestmark = pytest.mark.browser

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from core.run.store import RunStore
    from core.run.synthetic import make_synthetic_run

    store = RunStore(tmp_path_factory.mktemp("e2e-issue9"))
    make_synthetic_run(store, "c120", n=3_000, n_classes=120, seed=5, accuracy=0.8)
    make_synthetic_run(store, "big", n=70_000, n_classes=10, seed=3, class_names=FASHION)
    return store


def settle(page) -> None:
    """Wait until the script run the last action started has finished drawing (no running indicator,
    no placeholder left where an element is still to come)."""
    page.wait_for_timeout(400)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
                           " && !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=90_000)
    page.wait_for_timeout(300)


@pytest.fixture
def page(page):
    """The conftest's page, patient: the machine may be shared with other work."""
    page.set_default_timeout(90_000)
    return page


def params(page) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlparse(page.url).query).items()}


def params_after(page, expected: dict[str, str], seconds: float = 30) -> dict[str, str]:
    """The address's parameters once they equal `expected`, or after `seconds` as they are: the app
    writes them at the end of the script run a click starts, and on a loaded machine that run may not
    have begun when `settle` looks (CI once read the address before a radio's run wrote `values`)."""
    for _ in range(int(seconds * 10)):
        if params(page) == expected:
            break
        page.wait_for_timeout(100)
    return params(page)


def detail_alt(page) -> str:
    """The file name (alt text) of the image the server's detail dialog shows (a table row's)."""
    dialog = page.locator("[data-testid='stDialog']")
    dialog.wait_for()
    return dialog.locator("[class*='st-key-detail-image'] img").get_attribute("alt")


def page_detail_alt(page) -> str:
    """The file name (alt text) of the image the detail in the page shows (a thumbnail's,
    ``dashboard.detail``)."""
    page.locator(".gd-overlay.open").wait_for()
    return page.locator(".gd-overlay.open .gd-img").get_attribute("alt")


@pytest.mark.parametrize("run_id", ["big", "c120"])
def test_a_click_on_a_thumbnail_opens_its_detail_and_the_arrow_keys_walk_the_gallery(url, store, page, run_id):
    run = store.load(run_id)
    df = run.predictions
    mask = run.eval_mask() & ~df["correct"].to_numpy()
    rows = np.flatnonzero(mask)
    rows = rows[np.argsort(-df["confidence"].to_numpy()[rows], kind="stable")]  # the Errors page's order
    page.goto(f"{url}/errors?run={run_id}")
    page.get_by_role("heading", name="Errors").wait_for()
    settle(page)
    tiles = page.locator(".st-key-gallery-errors [class*='st-key-gtile-errors-']")
    assert tiles.count() == 24
    tiles.nth(5).click()  # anywhere on the thumbnail: the detail opens in the page
    assert page_detail_alt(page) == df["path"].iat[int(rows[5])]
    detail = page.locator(".gd-overlay.open")
    assert f"Image 6 of {rows.size:,}" in detail.inner_text()
    assert params(page)["img"] == str(int(rows[5]))
    assert "nearest training images" in detail.inner_text()
    page.keyboard.press("ArrowRight")
    assert page_detail_alt(page) == df["path"].iat[int(rows[6])]
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert page_detail_alt(page) == df["path"].iat[int(rows[4])]
    page.keyboard.press("Escape")
    detail.wait_for(state="detached")
    page.wait_for_function("() => !location.search.includes('img=')")  # the address closes it too


def test_the_whole_tile_and_any_cell_of_a_table_row_open_the_detail(url, store, page):
    """Issue 24: a click at 15% or 85% of a tile's height opened nothing (only a 40-px band did), and
    a table row opened only from its checkbox column."""
    run = store.load("c120")
    df = run.predictions
    rows = np.flatnonzero(run.eval_mask() & ~df["correct"].to_numpy())
    rows = rows[np.argsort(-df["confidence"].to_numpy()[rows], kind="stable")]  # the Errors page's order
    page.goto(f"{url}/errors?run=c120")
    page.get_by_role("heading", name="Errors").wait_for()
    settle(page)
    tiles = page.locator(".st-key-gallery-errors [class*='st-key-gtile-errors-']")
    for i, fraction in ((3, 0.15), (9, 0.85), (12, 0.97)):
        tiles.nth(i).scroll_into_view_if_needed()
        box = tiles.nth(i).bounding_box()
        assert box["height"] > 100, box  # image and caption
        page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * fraction)
        assert page_detail_alt(page) == df["path"].iat[int(rows[i])], (i, fraction)
        page.keyboard.press("Escape")
        page.locator(".gd-overlay.open").wait_for(state="detached")
    page.goto(f"{url}/errors?run=c120")  # a fresh page: the table as a user first meets it
    page.get_by_role("heading", name="Errors").wait_for()
    settle(page)
    table = page.locator("[data-testid='stDataFrame']").first
    table.scroll_into_view_if_needed()
    settle(page)
    box = table.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + 35 * 3 + 17)  # a cell of the third row
    assert detail_alt(page) == df["path"].iat[int(rows[2])]


def test_a_lasso_on_the_70000_point_map_shows_every_image_inside_it(url, store, page):
    from dashboard import mapview, state

    run = store.load("big")
    xy = np.asarray(stored_projection(run))
    page.goto(f"{url}/embeddings?run=big&split=all")  # every split: the default is the evaluation split
    page.get_by_role("heading", name="Embeddings").wait_for()
    settle(page)
    assert page.get_by_text("70,000 points in view, more than the 20,000 drawn one by one").count() == 1
    area = page.locator("[class*='embedding-chart'] .nsewdrag").first.bounding_box()
    # a lasso over a dense cluster and the sparse middle: a rough ellipse of 40 vertices
    cx, cy = area["x"] + area["width"] * 0.62, area["y"] + area["height"] * 0.35
    path = [(cx + 170 * math.cos(a), cy + 110 * math.sin(a)) for a in np.linspace(0, 2 * np.pi, 41)]
    page.mouse.move(*path[0])
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(x, y, steps=2)
    page.mouse.up()
    page.wait_for_function("() => location.search.includes('sel=')")  # the selection's rerun is done
    settle(page)
    shapes = state.decode_shapes(params(page)["sel"])
    assert [kind for kind, _ in shapes] == ["lasso"] and len(shapes[0][1]) >= 20
    expected = int(mapview.points_in_polygon(xy, shapes[0][1]).sum())
    assert expected > 1_000  # far more than plotly would have had points to select in the picture
    note = page.get_by_text("images inside the selection,")
    note.wait_for()
    wrong = int((mapview.points_in_polygon(xy, shapes[0][1]) & ~run.predictions["correct"].to_numpy(bool)).sum())
    assert note.inner_text() == f"{expected:,} images inside the selection, {wrong:,} of them wrong."
    assert page.get_by_text(f"Images 1–24 of {expected:,}").count() == 1
    # the selection's own pages: the last page holds the remainder
    assert page.locator(".st-key-gallery-embedding [class*='st-key-gtile-embedding-']").count() == 24


def test_a_reload_restores_run_page_cell_and_filters(url, store, page):
    run = store.load("c120")
    page.goto(f"{url}/confusion?run=c120")
    page.get_by_role("heading", name="Confusion matrix").wait_for()
    settle(page)
    for label, option in (("True class", f"7 · {run.classes[7]}"), ("Predicted class", f"9 · {run.classes[9]}")):
        page.get_by_role("combobox", name=label).click()
        page.keyboard.type(option)  # 120 options: the list shows a window of them, typing filters
        page.get_by_role("option", name=option, exact=True).click()
        settle(page)
    page.get_by_text("Row-normalised").click()
    settle(page)
    heading = f"True {run.classes[7]}, predicted {run.classes[9]}"
    page.get_by_role("heading", name=heading).wait_for()
    expected = {"run": "c120", "cell": "7,9", "values": "share", "top": "30"}
    assert params_after(page, expected) == expected
    page.reload()
    page.get_by_role("heading", name=heading).wait_for()
    settle(page)
    assert page.get_by_role("radio", name="Row-normalised").is_checked()
    assert page.get_by_role("combobox", name="Run").input_value().startswith("c120 ")
    # the Errors page's filters, through the address bar of a new tab (a shared link)
    page.locator("[data-testid='stSidebarNav']").get_by_role("link", name="Errors", exact=True).click()
    page.get_by_role("heading", name="Errors").wait_for()
    settle(page)
    page.get_by_role("combobox", name="True class").click()
    page.keyboard.type(f"3 · {run.classes[3]}")
    page.get_by_role("option", name=f"3 · {run.classes[3]}", exact=True).click()
    settle(page)
    page.keyboard.press("Escape")
    settle(page)
    shared = page.url
    assert params_after(page, {"run": "c120", "true": "3"}) == {"run": "c120", "true": "3"}
    count = page.get_by_text("misclassified image").first.inner_text()
    other = page.context.new_page()
    other.set_default_timeout(90_000)
    other.goto(shared)
    other.get_by_role("heading", name="Errors").wait_for()
    settle(other)
    assert other.get_by_text("misclassified image").first.inner_text() == count
    assert f"3 · {run.classes[3]}" in other.locator("[data-testid='stMultiSelect']").first.inner_text()
    other.close()
