"""The Review queue's and the image detail's latency in headless Chromium (issue 24), on a quiet and on
a busy server machine.

    .venv/bin/python benchmarks/bench_instant_review.py [--n 20000] [--repeats 20] [--store DIR] [--skip-queue]
    .venv/bin/python benchmarks/bench_instant_review.py --confusion /tmp/review_store [--run ID]

For each phase (``quiet``, then ``busy``: ``python -m core diagnose --force`` of a 70,000-image
synthetic run running in a loop beside the server, on the same machine) a fresh browser session
opens the queue and presses N ``--repeats`` times, then makes ``--repeats`` verdicts (M, X, A in
turn), one key every 300 ms (a quick reviewer). Printed, as medians (and 90th percentiles):

* key → next image drawn: from the key event's own time stamp (``KeyboardEvent.timeStamp``) to two
  animation frames after the page set the next image (it has been painted), as the page records it
  (``window.__reviewQueueDrawn``);
* verdict acknowledged: from the key to the moment the page marks the verdict saved, i.e. after
  the server committed it to SQLite and its acknowledgement came back;
* the image detail (``dashboard.detail``) on the Errors page's gallery of the same run: thumbnail
  click → detail drawn (``--repeats`` clicks, tiles in turn, Esc between), then → and ← in the open
  detail (``--repeats`` each), from the event's time stamp to two animation frames after the
  detail's image was set (``window.__galleryDetailDrawn``).

``--confusion STORE``: instead, on a run of that store (``python -m core demo --store STORE``), click
``--repeats`` off-diagonal cells of the confusion matrix (the largest, in turn) and time from the
click to the first image of the cell's gallery loaded and inside the viewport (page clock).

The machine's load average is printed beside each phase, with the CPU line: on a shared machine
absolute figures move with the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from cpu_info import cpu_line  # noqa: E402

from core.run.store import RunStore  # noqa: E402
from core.run.synthetic import make_synthetic_run  # noqa: E402
from tests.e2e.conftest import CHROMIUM_FLAGS, streamlit_process  # noqa: E402

GAP_MS = 300


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _phase(browser, url: str, run_id: str, repeats: int) -> dict[str, list[float]]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(f"{url}/review?run={run_id}")
    page.locator(".rq-img[data-row]").first.wait_for()
    page.wait_for_timeout(1500)
    draws: dict[str, list[float]] = {"next": [], "verdict": []}
    for kind, keys in (("next", ["n"] * repeats), ("verdict", list("mxa" * repeats)[:repeats])):
        for key in keys:
            before = page.evaluate("() => window.__reviewQueueDrawn ? window.__reviewQueueDrawn.key : -1")
            page.keyboard.press(key)
            try:
                page.wait_for_function("(b) => window.__reviewQueueDrawn && window.__reviewQueueDrawn.key !== b",
                                       arg=before, timeout=30_000)
            except Exception:
                state = page.evaluate("() => { const q = window.__reviewQueueActive; return q && [q.at, q.data.offset,"
                                      " q.data.items.length, q.asked, q.items.has(q.data.rows[q.at]), q.pending.length,"
                                      " q.inflight, !!document.querySelector('[role=dialog]'), q.root.isConnected]; }")
                raise RuntimeError(f"key {key!r} drew nothing in 30 s; queue state {state}") from None
            drawn = page.evaluate("() => window.__reviewQueueDrawn")
            draws[kind].append(drawn["drawn"] - drawn["key"])
            page.wait_for_timeout(GAP_MS)
    page.wait_for_function(f"() => (window.__reviewQueueAcks || []).length >= {repeats}", timeout=180_000)
    acks = page.evaluate("() => window.__reviewQueueAcks")
    draws["acknowledged"] = [a["saved"] - a["made"] for a in acks]
    context.close()
    return draws


def _detail_phase(browser, url: str, run_id: str, repeats: int) -> dict[str, list[float]]:
    """The image detail (``dashboard.detail``) on the Errors page's gallery: ``repeats`` clicks on a
    thumbnail (tiles in turn, Esc between), each timed from the click event's time stamp to two
    animation frames after the detail's image was set (``window.__galleryDetailDrawn``); then
    ``repeats`` → and ``repeats`` ← keys in the open detail, one every ``GAP_MS``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(f"{url}/errors?run={run_id}")
    page.locator(".st-key-gallery-errors [class*='st-key-gtile-errors-'] img").first.wait_for()
    page.wait_for_function("() => window.__galleryDetails && window.__galleryDetails.errors "
                           "&& window.__galleryDetails.errors.items.size > 0")
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")
    page.wait_for_timeout(1000)
    draws: dict[str, list[float]] = {"open": [], "right": [], "left": []}

    def drawn_after(before):
        page.wait_for_function("(b) => window.__galleryDetailDrawn && window.__galleryDetailDrawn.t0 !== b",
                               arg=before, timeout=30_000)
        d = page.evaluate("() => window.__galleryDetailDrawn")
        return d["drawn"] - d["t0"]

    last = lambda: page.evaluate("() => window.__galleryDetailDrawn ? window.__galleryDetailDrawn.t0 : -1")  # noqa: E731
    for i in range(repeats):
        before = last()
        page.locator(f".st-key-gtile-errors-{i % 8}").click()
        draws["open"].append(drawn_after(before))
        page.wait_for_timeout(GAP_MS)
        page.keyboard.press("Escape")
        page.locator(".gd-overlay.open").wait_for(state="hidden")
        page.wait_for_timeout(GAP_MS)
    page.locator(".st-key-gtile-errors-0").click()
    page.locator(".gd-overlay.open").wait_for()
    page.wait_for_timeout(GAP_MS)
    for key, name in (("ArrowRight", "right"), ("ArrowLeft", "left")):
        for _ in range(repeats):
            before = last()
            page.keyboard.press(key)
            draws[name].append(drawn_after(before))
            page.wait_for_timeout(GAP_MS)
    context.close()
    return draws


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=None)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--confusion", metavar="STORE", default=None)
    ap.add_argument("--run", default=None, help="the --confusion store's run (default: its newest)")
    ap.add_argument("--skip-queue", action="store_true", help="time the image detail only, not the queue")
    args = ap.parse_args()
    print(cpu_line(), flush=True)
    if args.confusion:
        from bench_page_latency import confusion_times
        from playwright.sync_api import sync_playwright

        store = RunStore(args.confusion)
        run = store.load(args.run or store.list_runs(include_broken=False)[0].run_id)
        with streamlit_process(Path(args.confusion), Path(tempfile.mkdtemp()) / "streamlit.log", poll=0.3) as \
                (url, _), sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                        args=CHROMIUM_FLAGS, headless=True)
            before = _load()
            times = confusion_times(browser, url, run, args.repeats)
            browser.close()
        print(f"\nConfusion cell click → first image of the cell visible, run {run.id} ({len(run.predictions):,} "
              f"images), headless Chromium: median of {len(times)} {statistics.median(times):.0f} ms "
              f"(p90 {_pct(times, .9):.0f} ms); {before} → {_load()}")
        return
    root = Path(args.store or tempfile.mkdtemp(prefix="bench-review-"))
    store = RunStore(root)
    if not store.exists("queue"):
        make_synthetic_run(store, "queue", n=args.n, n_classes=10, seed=2, accuracy=0.75)
    if not store.exists("busy"):
        make_synthetic_run(store, "busy", n=70_000, n_classes=10, seed=3, accuracy=0.9)
    from playwright.sync_api import sync_playwright

    results, details = {}, {}
    with streamlit_process(root, root / "streamlit.log", poll=0.3) as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                    args=CHROMIUM_FLAGS, headless=True)
        for phase in ("quiet", "busy"):
            busy = None
            if phase == "busy":
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                loop = (f"while true; do {sys.executable} -m core diagnose --force --store {root} busy "
                        ">/dev/null 2>&1; done")
                busy = subprocess.Popen(["bash", "-c", loop], env=env, start_new_session=True)
                time.sleep(8)  # the diagnosis is under way
            load = _load()
            t0 = time.perf_counter()
            try:
                if not args.skip_queue:
                    results[phase] = (_phase(browser, url, "queue", args.repeats), load, _load())
                load = _load()
                details[phase] = (_detail_phase(browser, url, "queue", args.repeats), load, _load())
            finally:
                if busy is not None:
                    os.killpg(busy.pid, 15)
                    busy.wait()
            print(f"{phase}: {time.perf_counter() - t0:.0f} s", flush=True)
        browser.close()
    print(f"\nImage detail (Errors page gallery), headless Chromium, medians of {args.repeats} (p90), "
          f"one action every {GAP_MS} ms")
    print(f"{'phase':<6} {'thumbnail → detail':>20} {'→ next drawn':>20} {'← previous drawn':>20}   load")
    for phase, (draws, before, after) in details.items():
        cells = [f"{statistics.median(v):7.1f} ms ({_pct(v, .9):6.1f})" for v in
                 (draws["open"], draws["right"], draws["left"])]
        print(f"{phase:<6} {cells[0]:>20} {cells[1]:>20} {cells[2]:>20}   {before} → {after}")
    if not results:
        return
    print(f"\nReview queue, headless Chromium, medians of {args.repeats} (p90), one key every {GAP_MS} ms")
    print(f"{'phase':<6} {'key N → next drawn':>20} {'verdict → next drawn':>22} {'verdict acknowledged':>22}   load")
    for phase, (draws, before, after) in results.items():
        cells = [f"{statistics.median(v):7.1f} ms ({_pct(v, .9):6.1f})" for v in
                 (draws["next"], draws["verdict"], draws["acknowledged"])]
        print(f"{phase:<6} {cells[0]:>20} {cells[1]:>22} {cells[2]:>22}   {before} → {after}")


if __name__ == "__main__":
    main()
