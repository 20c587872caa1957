"""Issue 22 items 2 and 3: the dashboard on a read-only store, with a damaged verdicts file, and with
another process holding the verdicts file's write lock.

Before: a WAL ``verdicts.sqlite`` in a read-only folder, or a damaged one, replaced Overview,
Per-class, Confusion, Errors and Review with one line ("This page cannot show run ..."), and a
verdict blocked by another process's lock froze the page for 60 s without a word.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import cache, review_ui
from tests.core.test_read_only_store import make_reviewed_store
from tests.dashboard.apptest import APP, TIMEOUT, artifacts_dir, unescape
from tests.readonly import read_only

PAGES = ("overview", "per_class", "confusion", "errors", "embeddings", "compare", "diagnose", "review",
         "try_image")


def _pages(root) -> dict[str, tuple[list[str], list[str]]]:
    """Every run page of run 'syn': (errors, warnings) as shown, after no exception."""
    cache.review_db.clear()
    getattr(review_ui, "_failed", {}).clear()
    review_ui._recent.clear()
    shown = {}
    with artifacts_dir(root):
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
        at.sidebar.selectbox(key="run_id").set_value("syn").run()
        for page in PAGES:
            at.switch_page(f"app_pages/{page}.py").run()
            assert not at.exception, (page, [e.value for e in at.exception])
            shown[page] = ([unescape(e.value) for e in at.error], [unescape(w.value) for w in at.warning])
    cache.review_db.clear()
    return shown


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["closed", "live-writer"])
def test_every_page_works_on_a_read_only_store(tmp_path, writer):
    make_reviewed_store(tmp_path / "data" / "store", open_writer=writer == "live-writer")
    with read_only(tmp_path / "data", tmp_path / "mnt") as seen:
        shown = _pages(seen / "store")
    for page, (errors, warnings) in shown.items():
        if page == "try_image":  # a synthetic run has no model file: said in its own line
            assert all("model file of this run is missing" in e for e in errors), errors
            continue
        assert errors == [] and not any("Verdicts are unavailable" in w for w in warnings), (page, errors, warnings)


@pytest.mark.slow
def test_a_damaged_verdicts_file_costs_the_pages_their_verdicts_only(tmp_path):
    store = make_reviewed_store(tmp_path / "store")
    (store.root / "verdicts.sqlite").write_bytes(b"\x00garbage, not SQLite" * 300)
    shown = _pages(store.root)
    line = f"Verdicts are unavailable: {store.root / 'verdicts.sqlite'}: file is not a database"
    for page, (errors, warnings) in shown.items():
        if page == "try_image":
            continue
        assert errors == [], (page, errors)
        if page in ("overview", "per_class", "confusion", "errors", "review"):
            assert warnings.count(line) == 1, (page, warnings)


HOLD = textwrap.dedent("""
    import sqlite3, sys, time
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def test_a_verdict_blocked_by_another_process_says_so_within_seconds(tmp_path):
    store = make_reviewed_store(tmp_path / "store")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store.root / "verdicts.sqlite"), "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cache.review_db.clear()
        getattr(review_ui, "_failed", {}).clear()
        with artifacts_dir(store.root):
            at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
            at.sidebar.selectbox(key="run_id").set_value("syn").run()
            at.switch_page("app_pages/overview.py").run()
            assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
            tiles = [b for b in at.selectbox if (b.key or "").startswith("rvt-syn-")]
            assert tiles, "every thumbnail has its verdict box"
            t0 = time.monotonic()
            tiles[0].set_value("exclude").run()
            waited = time.monotonic() - t0
        assert not at.exception, [e.value for e in at.exception]
        toasts = [unescape(t.value) for t in at.toast]
        assert waited < 15, waited  # was 60 s and more, without a word
        assert len(toasts) == 1 and toasts[0].startswith("Verdict not recorded:") and "another process" in toasts[0] \
            and toasts[0].endswith("Try again in a moment."), toasts
    finally:
        holder.kill()
        holder.wait()
        cache.review_db.clear()


def test_the_review_queue_keeps_a_blocked_verdict_pending_and_says_why_within_seconds(tmp_path):
    """The queue's page sends verdicts itself: a write blocked by another process's lock is neither
    saved nor refused (the page keeps it pending and sends it again), and the server says why at once."""
    from collections import deque

    from core.review.reviewed import RunReview
    from dashboard import review_queue

    store = make_reviewed_store(tmp_path / "store")
    run = store.load("syn")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store.root / "verdicts.sqlite"), "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cache.review_db.clear()
        review = RunReview(run, cache.review_db(str(store.root)))  # the dashboard's verdicts file object
        rows = np.flatnonzero(run.eval_mask() & ~run.predictions["correct"].to_numpy(bool))[:3]
        acked, failed = deque(), {}
        actions = [{"id": "1", "kind": "mark", "row": int(rows[0]), "verdict": "exclude"}]
        t0 = time.monotonic()
        with pytest.raises(review_queue.StoreUnavailable, match="lock|another process"):
            review_queue.record_actions(review, rows, actions, reviewer="ann", acked=acked, failed=failed)
        assert time.monotonic() - t0 < 15
        assert not acked and not failed  # still pending in the page, sent again later
    finally:
        holder.kill()
        holder.wait()
