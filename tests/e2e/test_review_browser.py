"""Issue 11 end to end in headless Chromium: verdicts given with the keyboard on the Review queue
survive a kill -9 of the server and come back in the export (the CLI's file, byte for byte); eight
browser sessions marking different images at once lose none.

Each test serves its own store (synthetic runs share one data-set identity, so verdicts on one
store's runs would show in another's). The server is conftest's ``streamlit_process`` rather than
``serve`` because the test must kill it with SIGKILL, not stop it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.e2e.conftest import streamlit_process

pytestmark = pytest.mark.browser
IMAGE_JS = "\"[class*='st-key-review-image'] img\""  # the queue's image, as a JavaScript string
SHOTS = Path(os.environ.get("REVIEW_SHOTS", "/tmp/shots_review"))


def server(root: Path, log: Path):
    """A Streamlit server of the dashboard on ``root``, its log added to across restarts; yields (url, process)."""
    return streamlit_process(root, log, append=True, poll=0.3)


def settle(page) -> None:
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)
    page.wait_for_timeout(200)


def shown_file(page) -> str:
    """The file of the image the queue shows (the alt text of its image)."""
    return page.locator("[class*='st-key-review-image'] img").first.get_attribute("alt")


def progress(page) -> str:
    return page.locator("[data-testid='stProgress']").first.inner_text()


def queue_rows(run) -> np.ndarray:
    """The queue's default set without label issues: the evaluation errors, lowest p(given) first."""
    df = run.predictions
    errors = np.flatnonzero(run.eval_mask() & ~df["correct"].to_numpy(bool))
    return errors[np.argsort(df["true_prob"].to_numpy()[errors], kind="stable")]


def open_queue(context, url: str, run_id: str):
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{url}/review?run={run_id}")
    page.locator("[class*='st-key-review-image'] img").first.wait_for()
    settle(page)
    return page


def test_keyboard_verdicts_survive_kill_9_and_the_export_holds_exactly_them(browser, tmp_path):
    from core import cli
    from core.review import RunReview
    from core.store import RunStore
    from core.synthetic import make_synthetic_run

    store = RunStore(tmp_path / "store")
    run = make_synthetic_run(store, "r10", n=600, n_classes=10, seed=4, accuracy=0.75)
    order = queue_rows(run)
    paths = run.predictions["path"].astype(str).to_numpy()
    log = tmp_path / "streamlit.log"
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    marked = {}
    with server(store.root, log) as (url, proc):
        page = open_queue(context, url, "r10")
        page.screenshot(path=str(SHOTS / "queue_10_classes.png"), full_page=True)
        for key, verdict in (("m", "model-wrong"), ("x", "exclude"), ("a", "ambiguous")):
            before = shown_file(page)
            page.locator("h1").first.click()  # focus on the page, not in the note field
            page.keyboard.press(key)
            page.wait_for_function("(f) => { const i = document.querySelector(\"[class*='st-key-review-image'] img\");"
                                   " return i && i.alt !== f; }", arg=before)
            settle(page)
            marked[before] = verdict
        assert list(marked) == [paths[r] for r in order[:3]]
        assert progress(page).startswith(f"3 of {len(order)} reviewed")  # acknowledged on the page
        page.screenshot(path=str(SHOTS / "queue_after_3.png"), full_page=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    with server(store.root, log) as (url, proc):
        page = open_queue(context, url, "r10")
        assert progress(page).startswith(f"3 of {len(order)} reviewed")
        assert shown_file(page) == paths[order[3]]  # the queue resumes at the first image without a verdict
        with page.expect_download() as info:
            page.locator("[class*='st-key-review-export'] button").click()
        downloaded = Path(info.value.path()).read_bytes()
    context.close()
    out = tmp_path / "cli.csv"
    assert cli.main(["review", "export", "--store", str(store.root), "--run", "r10", "--out", str(out)]) == 0
    assert downloaded == out.read_bytes()
    table = pd.read_csv(out)
    assert dict(zip(table["path"], table["verdict"])) == marked
    assert len(RunReview(store.load("r10")).history()) == 3


def test_eight_sessions_marking_at_once_lose_no_verdict(browser, tmp_path):
    from core.review import RunReview
    from core.store import RunStore
    from core.synthetic import make_synthetic_run

    store = RunStore(tmp_path / "store")
    run = make_synthetic_run(store, "c120", n=3000, n_classes=120, seed=5, accuracy=0.8)
    order = queue_rows(run)
    paths = run.predictions["path"].astype(str).to_numpy()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with server(store.root, tmp_path / "streamlit.log") as (url, _):
        contexts = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(8)]
        pages = [c.new_page() for c in contexts]
        for page in pages:  # the eight sessions load side by side
            page.set_default_timeout(60_000)
            page.goto(f"{url}/review?run=c120", wait_until="commit")
        for page in pages:
            page.locator("[class*='st-key-review-image'] img").first.wait_for()
            settle(page)
        pages[0].screenshot(path=str(SHOTS / "queue_120_classes.png"), full_page=True)
        for step in range(1, 8):  # session i steps to the i-th image of the queue, the sessions in parallel
            moving = pages[step:]
            for page in moving:
                page.locator("[class*='st-key-review-next'] button").click()
            for page in moving:
                page.wait_for_function("(f) => document.querySelector(IMAGE)?.alt === f".replace("IMAGE", IMAGE_JS),
                                       arg=str(paths[order[step]]))
        for i, page in enumerate(pages):
            settle(page)
            assert shown_file(page) == paths[order[i]]
        for page in pages:  # then all mark at once: the keys go out without waiting for the server
            page.locator("h1").first.click()
        for page in pages:
            page.keyboard.press("l")
        for page in pages:
            page.wait_for_function("() => /^[1-8] of /.test(document.querySelector(\"[data-testid='stProgress']\")"
                                   "?.innerText || '')")
            settle(page)
        pages[-1].screenshot(path=str(SHOTS / "queue_120_after_8.png"), full_page=True)
        for c in contexts:
            c.close()
    table = RunReview(store.load("c120")).verdicts()
    assert sorted(table["path"]) == sorted(paths[order[:8]])
    assert set(table["verdict"]) == {"label-wrong"}
    df = run.predictions.set_index("path")
    # each one relabelled to the class preselected for it: the model's prediction (an error's)
    assert (table["new_label"].to_numpy() == df.loc[table["path"], "predicted_label"].to_numpy()).all()
