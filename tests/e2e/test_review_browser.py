"""Issues 11 and 24 end to end in headless Chromium: the Review queue runs in the page (a
``st.components.v2`` component, ``dashboard.review_queue``). Verdicts given with the keyboard while
the server is killed with SIGKILL: every verdict the page showed as saved is in SQLite, the others
stay pending, and once a server is back on the same address the page sends them again, each stored
once. Eight browser sessions marking different images at once lose none.

Each test serves its own store (synthetic runs share one data-set identity, so verdicts on one
store's runs would show in another's). The server is conftest's ``streamlit_process`` rather than
``serve`` because the test must kill it with SIGKILL, not stop it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.e2e.conftest import _free_port, streamlit_process

pytestmark = pytest.mark.browser
SHOTS = Path(os.environ.get("REVIEW_SHOTS", "/tmp/shots_review"))
KEYS = {"m": "model-wrong", "x": "exclude", "a": "ambiguous", "l": "label-wrong"}
LOG_JS = """() => [...document.querySelector('.stApp').querySelectorAll('*')].flatMap((e) => e.shadowRoot
  ? [...e.shadowRoot.querySelectorAll('.rq-log div')] : []).map((d) => ({id: d.dataset.id, row: +d.dataset.row,
  kind: d.dataset.kind, verdict: d.dataset.verdict, status: d.dataset.status}))"""


def server(root: Path, log: Path, port: int | None = None):
    """A Streamlit server of the dashboard on ``root``, its log added to across restarts; yields (url, process)."""
    return streamlit_process(root, log, append=True, poll=0.3, port=port)


def shown_row(page) -> int:
    """The run row of the image the queue shows."""
    return int(page.locator(".rq-img").first.get_attribute("data-row"))


def page_log(page) -> list[dict]:
    """The queue's actions as the page shows them, newest first: id, row, kind, verdict, status."""
    return page.evaluate(LOG_JS)


def progress(page) -> str:
    return page.locator(".rq-progress-text").first.inner_text()


def queue_rows(run) -> np.ndarray:
    """The queue's default set without label issues: the evaluation errors, lowest p(given) first."""
    df = run.predictions
    errors = np.flatnonzero(run.eval_mask() & ~df["correct"].to_numpy(bool))
    return errors[np.argsort(df["true_prob"].to_numpy()[errors], kind="stable")]


def open_queue(context, url: str, run_id: str):
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{url}/review?run={run_id}")
    page.locator(".rq-img[data-row]").first.wait_for()
    return page


def test_verdicts_shown_saved_survive_kill_9_and_pending_ones_are_sent_again(browser, tmp_path):
    from core import cli
    from core.review.reviewed import RunReview
    from core.run.store import RunStore
    from core.run.synthetic import make_synthetic_run

    store = RunStore(tmp_path / "store")
    run = make_synthetic_run(store, "r10", n=600, n_classes=10, seed=4, accuracy=0.75)
    order = queue_rows(run)
    assert len(order) > 20
    log = tmp_path / "streamlit.log"
    port = _free_port()
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    keys = list("mxal" * 5)
    with server(store.root, log, port) as (url, proc):
        page = open_queue(context, url, "r10")
        page.screenshot(path=str(SHOTS / "queue_10_classes.png"), full_page=True)
        assert shown_row(page) == order[0]
        for i, key in enumerate(keys):  # 20 verdicts by keyboard; the server is killed after the 8th
            page.keyboard.press(key)
            page.wait_for_timeout(40)
            if i == 7:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shown = page_log(page)
        page.screenshot(path=str(SHOTS / "queue_server_killed.png"), full_page=True)
    saved = [a for a in shown if a["status"] == "saved"]
    pending = [a for a in shown if a["status"] == "pending"]
    assert len(shown) == 20 and len(saved) + len(pending) == 20, shown
    assert pending, "verdicts made after the kill are pending"
    assert [a["row"] for a in reversed(shown)] == order[:20].tolist()  # each key moved on to the next image
    review = RunReview(store.load("r10"))
    row_of = {p: i for i, p in enumerate(review.paths)}
    history = review.history()
    stored = {(row_of[p], v) for p, v in zip(history["path"], history["verdict"])}
    for a in saved:  # every verdict the page showed as saved is in SQLite
        assert (a["row"], a["verdict"]) in stored, a
    assert "pending" in page.locator(".rq-pending").first.inner_text()
    # a server back on the same address: the page reconnects and sends the pending verdicts again
    with server(store.root, log, port) as (url, proc):
        page.wait_for_function(f"() => ({LOG_JS})().filter((a) => a.status === 'saved').length === 20",
                               timeout=90_000)
        page.screenshot(path=str(SHOTS / "queue_after_restart.png"), full_page=True)
        assert progress(page).startswith(f"20 of {len(order)} reviewed")
        with page.expect_download() as info:
            page.locator("[class*='st-key-review-export'] button").click()
        downloaded = Path(info.value.path()).read_bytes()
    context.close()
    review = RunReview(store.load("r10"))
    assert len(review.history()) == 20  # each verdict stored once, the re-sent ones included
    table = review.verdicts().set_index("row")
    paths = run.predictions["path"].astype(str).to_numpy()
    assert {int(r): v for r, v in table["verdict"].items()} == {int(r): KEYS[k] for r, k in zip(order[:20], keys)}
    out = tmp_path / "cli.csv"
    assert cli.main(["review", "export", "--store", str(store.root), "--run", "r10", "--out", str(out)]) == 0
    assert downloaded == out.read_bytes()
    assert sorted(pd.read_csv(out)["path"]) == sorted(paths[order[:20]])


def test_eight_sessions_marking_at_once_lose_no_verdict(browser, tmp_path):
    from core.review.reviewed import RunReview
    from core.run.store import RunStore
    from core.run.synthetic import make_synthetic_run

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
            page.locator(".rq-img[data-row]").first.wait_for()
        pages[0].screenshot(path=str(SHOTS / "queue_120_classes.png"), full_page=True)
        for i, page in enumerate(pages):  # session i steps to the i-th image of the queue (in the page)
            for _ in range(i):
                page.keyboard.press("n")
            assert shown_row(page) == order[i]
            assert f"qimg={order[i]}" in page.url  # the review position is in the address
        for page in pages:  # then all mark at once: the keys go out without waiting for the server
            page.keyboard.press("l")
        deadline = time.time() + 120
        for page in pages:
            page.wait_for_function(f"() => ({LOG_JS})().some((a) => a.status === 'saved')",
                                   timeout=max(1_000, int(1000 * (deadline - time.time()))))
        pages[-1].screenshot(path=str(SHOTS / "queue_120_after_8.png"), full_page=True)
        for c in contexts:
            c.close()
    table = RunReview(store.load("c120")).verdicts()
    assert sorted(table["path"]) == sorted(paths[order[:8]])
    assert set(table["verdict"]) == {"label-wrong"}
    df = run.predictions.set_index("path")
    # each one relabelled to the class preselected for it: the model's prediction (an error's)
    assert (table["new_label"].to_numpy() == df.loc[table["path"], "predicted_label"].to_numpy()).all()


def test_the_first_verdict_made_while_one_is_on_its_way_goes_at_once_and_later_ones_wait(browser, tmp_path):
    """Issue 24 (acknowledged <= 500 ms): a key made while a batch is on its way is sent at once, a
    follow-up the server answers with the same run; a third waits for an answer, so at most one run
    is interrupted per answer. Every verdict ends saved, each stored once."""
    from core.review.reviewed import RunReview
    from core.run.store import RunStore
    from core.run.synthetic import make_synthetic_run

    store = RunStore(tmp_path / "store")
    make_synthetic_run(store, "r", n=400, n_classes=5, seed=6, accuracy=0.7)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    with server(store.root, tmp_path / "streamlit.log") as (url, _):
        page = open_queue(context, url, "r")
        page.wait_for_timeout(1000)
        for key in "mxa":  # back to back: the second and third are made before the first is answered
            page.keyboard.press(key)
        page.wait_for_function("() => (window.__reviewQueueAcks || []).length >= 3", timeout=60_000)
        acks = {a["id"]: a for a in page.evaluate("() => window.__reviewQueueAcks")}
        made = sorted(acks.values(), key=lambda a: a["made"])
        assert made[1]["sent"] < made[0]["saved"]  # the follow-up did not wait for the first's answer
        assert made[2]["sent"] >= made[0]["saved"]  # the third did
        assert all(a["status"] == "saved" for a in page_log(page))
    context.close()
    assert len(RunReview(store.load("r")).history()) == 3
