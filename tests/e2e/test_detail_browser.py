"""Issue 24 end to end in headless Chromium: the image detail runs in the page (``dashboard.detail``).
A click on a thumbnail opens the detail of that image with no script run; ←/→ step through the
gallery's images, past the page's end too; what the detail shows (the image's pixels, its file,
given and predicted class, confidence, top classes) is checked against the run, image by image;
verdict keys in the detail are pending, then saved, then in SQLite; Esc closes it and the tiles show
the verdicts; "Full detail…" opens the server's dialog on the image shown; the address keeps it.
"""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.browser

OPEN = ".gd-overlay.open"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from core.run.store import RunStore
    from core.run.synthetic import make_synthetic_run

    store = RunStore(tmp_path_factory.mktemp("e2e-detail"))
    make_synthetic_run(store, "c10", n=2_000, n_classes=10, seed=4, accuracy=0.75)
    make_synthetic_run(store, "c120", n=3_000, n_classes=120, seed=5, accuracy=0.8)
    return store


@pytest.fixture
def page(page):
    """The conftest's page, patient: the machine may be shared with other work."""
    page.set_default_timeout(90_000)
    return page


def settle(page) -> None:
    page.wait_for_timeout(400)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=90_000)
    page.wait_for_timeout(300)


def errors_order(run) -> np.ndarray:
    """The Errors page's gallery rows: the evaluation errors, most confident first."""
    df = run.predictions
    rows = np.flatnonzero(run.eval_mask() & ~df["correct"].to_numpy())
    return rows[np.argsort(-df["confidence"].to_numpy()[rows], kind="stable")]


def open_errors(page, url: str, run_id: str) -> None:
    page.goto(f"{url}/errors?run={run_id}")
    page.get_by_role("heading", name="Errors").wait_for()
    page.locator(".st-key-gallery-errors [class*='st-key-gtile-errors-'] img").first.wait_for()
    page.wait_for_function("() => window.__galleryDetails && window.__galleryDetails.errors"
                           " && window.__galleryDetails.errors.items.size > 0")
    settle(page)


def shown(page) -> dict:
    """What the open detail shows: its row, file, title, facts, position and the image's pixels."""
    detail = page.locator(OPEN)
    img = detail.locator(".gd-img")
    page.wait_for_function("() => { const s = window.__galleryDetailOpen; if (!s) return false;"
                           " const i = s.root.querySelector('.gd-img'); return i.complete && i.naturalWidth > 0; }")
    src = img.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    pixels = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    top = detail.locator(".gd-top .name").all_inner_texts()
    return {"row": int(img.get_attribute("data-row")), "alt": img.get_attribute("alt"), "pixels": pixels,
            "title": detail.locator(".gd-title").inner_text(), "facts": detail.locator(".gd-facts").inner_text(),
            "pos": detail.locator(".gd-pos").inner_text(), "top": top}


def check(run, seen: dict, row: int, position: int, total: int) -> None:
    """``seen`` (``shown``) is row ``row``'s detail, at ``position`` (1-based) of ``total``."""
    df = run.predictions
    r = df.iloc[row]
    assert seen["row"] == row
    assert seen["alt"] == r["path"]
    assert np.array_equal(seen["pixels"], np.asarray(run.image(row))), row  # the image itself, not a neighbour's
    assert seen["title"] == (f"{r['true_label']} → {r['predicted_label']} (wrong, confidence "
                             f"{r['confidence']:.3f})")
    assert f"file: {r['path']}" in seen["facts"] and f"row {row:,}" in seen["facts"]
    assert f"p(given class) = {r['true_prob']:.3f}" in seen["facts"]
    assert seen["pos"].startswith(f"Image {position:,} of {total:,}")
    # the top classes, the most probable first, the given class among them
    probs = np.asarray(run.probs[row])
    assert seen["top"][0] == run.classes[int(np.argmax(probs))]
    assert f"{run.classes[int(r['true'])]} (given)" in seen["top"]


def last_drawn(page) -> float:
    return page.evaluate("() => window.__galleryDetailDrawn ? window.__galleryDetailDrawn.t0 : -1")


def press(page, key: str) -> None:
    before = last_drawn(page)
    page.keyboard.press(key)
    page.wait_for_function("(b) => window.__galleryDetailDrawn && window.__galleryDetailDrawn.t0 !== b", arg=before)


@pytest.mark.parametrize("run_id", ["c10", "c120"])
def test_a_click_opens_the_detail_in_the_page_and_the_arrow_keys_step_through_the_gallery(url, store, page, run_id):
    run = store.load(run_id)
    rows = errors_order(run)
    assert rows.size > 30  # the walk crosses the first page's end (24 images)
    runs = []  # every message the page sends the server (a rerun request, a component's value)
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: runs.append(payload)))
    open_errors(page, url, run_id)
    assert runs  # the listener hears the page (its first script run was asked for)
    runs.clear()
    tiles = page.locator(".st-key-gallery-errors [class*='st-key-gtile-errors-']")
    assert tiles.count() == 24
    box = tiles.nth(5).bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.85)  # anywhere on the tile
    page.locator(OPEN).wait_for()
    check(run, shown(page), int(rows[5]), 6, rows.size)
    assert page.get_by_role("dialog").count() == 1  # the page's own, not Streamlit's dialog
    assert page.locator("[data-testid='stDialog']").count() == 0
    assert f"img={int(rows[5])}" in page.url
    press(page, "ArrowRight")
    check(run, shown(page), int(rows[6]), 7, rows.size)
    press(page, "ArrowLeft")
    press(page, "ArrowLeft")
    check(run, shown(page), int(rows[4]), 5, rows.size)
    for _ in range(20):  # to the first page's last image and past it: the next page's images were sent
        press(page, "ArrowRight")
    check(run, shown(page), int(rows[24]), 25, rows.size)
    press(page, "ArrowRight")
    check(run, shown(page), int(rows[25]), 26, rows.size)
    assert runs == []  # none of this asked the server for anything
    page.keyboard.press("Escape")
    page.locator(OPEN).wait_for(state="detached")
    page.wait_for_function("() => !location.search.includes('img=')")
    # another tile, then the first image's ← does nothing
    tiles.nth(0).click()
    page.locator(OPEN).wait_for()
    check(run, shown(page), int(rows[0]), 1, rows.size)
    assert page.locator(OPEN).locator(".gd-prev").is_disabled()
    page.keyboard.press("ArrowLeft")
    check(run, shown(page), int(rows[0]), 1, rows.size)


def test_walking_far_past_the_page_asks_the_server_for_more(url, store, page):
    run = store.load("c10")
    rows = errors_order(run)
    open_errors(page, url, "c10")
    page.locator(".st-key-gtile-errors-23").click()
    page.locator(OPEN).wait_for()
    for _ in range(40):  # 24 were sent after the page; the page asks for the window around its position
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(60)
    page.wait_for_function(f"() => window.__galleryDetailOpen.items.has({23 + 40})")
    press(page, "ArrowLeft")
    press(page, "ArrowRight")
    check(run, shown(page), int(rows[63]), 64, rows.size)


def test_verdict_keys_in_the_detail_are_pending_then_saved_then_in_sqlite(url, store, page):
    from core.review.reviewed import RunReview

    run = store.load("c120")
    rows = errors_order(run)
    open_errors(page, url, "c120")
    page.locator(".st-key-gtile-errors-2").click()
    page.locator(OPEN).wait_for()
    press(page, "m")  # model wrong on rows[2], and on to the next image
    check(run, shown(page), int(rows[3]), 4, rows.size)
    page.keyboard.press("x")  # exclude on rows[3]
    page.wait_for_timeout(100)
    press(page, "ArrowLeft")
    status = page.locator(OPEN).locator(".gd-status")
    page.wait_for_function("() => window.__galleryDetailOpen.root.querySelector('.gd-status').dataset.status"
                           " === 'saved'", timeout=60_000)
    assert status.inner_text() == "verdict now: exclude (saved ✓)"
    table = RunReview(store.load("c120")).verdicts().set_index("row")
    assert table.at[int(rows[2]), "verdict"] == "model-wrong"
    assert table.at[int(rows[3]), "verdict"] == "exclude"
    page.keyboard.press("u")  # undoes the most recent verdict (exclude on rows[3])
    page.wait_for_function("() => window.__galleryDetailOpen.pending.length === 0"
                           " && window.__galleryDetailOpen.root.querySelector('.gd-status').textContent"
                           " === 'verdict now: no verdict'", timeout=60_000)
    table = RunReview(store.load("c120")).verdicts().set_index("row")
    assert int(rows[3]) not in table.index and table.at[int(rows[2]), "verdict"] == "model-wrong"
    # closing reruns the page: the tile's verdict box shows the saved verdict
    page.keyboard.press("Escape")
    box = page.locator(".st-key-gallery-errors .st-key-errors-item-2")
    page.wait_for_function("() => document.querySelector('.st-key-gallery-errors .st-key-errors-item-2')"
                           ".innerText.includes('model wrong')", timeout=60_000)
    assert "verdict: model wrong" in box.inner_text()


def test_full_detail_opens_the_servers_dialog_on_the_image_shown(url, store, page):
    run = store.load("c10")
    rows = errors_order(run)
    open_errors(page, url, "c10")
    page.locator(".st-key-gtile-errors-1").click()
    page.locator(OPEN).wait_for()
    press(page, "ArrowRight")
    page.locator(OPEN).get_by_role("button", name="Full detail…").click()
    dialog = page.locator("[data-testid='stDialog']")
    dialog.wait_for()
    dialog.locator("[class*='st-key-detail-image'] img").wait_for()
    assert dialog.locator("[class*='st-key-detail-image'] img").get_attribute("alt") == \
        run.predictions["path"].iat[int(rows[2])]
    assert f"Image 3 of {rows.size:,}" in dialog.inner_text()
    assert page.locator(OPEN).count() == 0


def test_the_address_reopens_the_detail(url, store, page):
    run = store.load("c10")
    rows = errors_order(run)
    page.goto(f"{url}/errors?run=c10&img={int(rows[30])}")  # on the gallery's second page
    page.locator(OPEN).wait_for()
    check(run, shown(page), int(rows[30]), 31, rows.size)
    assert page.locator("[data-testid='stDialog']").count() == 0


def test_caption_lines_are_padded_so_verdict_boxes_line_up(url, store, page):
    """Thumbnails with and without a verdict caption line in one gallery line: the verdict boxes
    under them start at one height."""
    from core.review.reviewed import RunReview

    run = store.load("c10")
    rows = errors_order(run)
    RunReview(run).mark_row(int(rows[1]), "ambiguous", reviewer="tester")
    open_errors(page, url, "c10")
    tops = page.evaluate("""() => [...Array(8).keys()].map((i) => {
        const item = document.querySelector('.st-key-errors-item-' + i);
        const box = item.querySelector('[data-testid=stSelectbox]');
        return [item.innerText.includes('verdict: ambiguous'), box.getBoundingClientRect().top]; })""")
    assert tops[1][0] and not tops[0][0]
    assert max(t for _, t in tops) - min(t for _, t in tops) < 1, tops
