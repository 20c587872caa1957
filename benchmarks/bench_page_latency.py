"""Page latencies of issue 24's missed targets, in headless Chromium, on a quiet and on a busy machine.

    .venv/bin/python benchmarks/bench_page_latency.py ack [--store DIR] [--repeats 20] [--phases quiet,busy]
    .venv/bin/python benchmarks/bench_page_latency.py confusion --store DEMO_STORE [--run ID] [--phases quiet]
    .venv/bin/python benchmarks/bench_page_latency.py embeddings [--store DIR] [--n 1000000] [--phases quiet]

``ack``: the Review queue of a 20,000-image synthetic run; ``--repeats`` verdicts made by keyboard
(M, X, A in turn), one every 300 ms. Per verdict, from the key event's time stamp to the moment the
page marks it saved (the server has committed it to SQLite and its acknowledgement came back), split
into waiting in the page (a batch already on its way) and the round trip of its own batch; beside
it, the floor: the round trip of a trigger to a fragment of a bare app that only answers it (no
SQLite, no data), measured right after, on the same machine.

``confusion``: on a run of ``--store`` (the demo run: ``python -m core demo --store DIR``), click the
largest off-diagonal cells in turn; from the click to the cell's first image loaded and inside the
viewport (page clock).

``embeddings``: the Embeddings page of a synthetic run of ``--n`` predictions (100 classes), opened
from the sidebar (coming from the Overview); from the click to the map drawn (its picture layer
loaded) and Streamlit's run finished (page clock).

``--phases``: ``quiet`` (nothing else started) and/or ``busy`` (``python -m core diagnose --force``
of a 70,000-image synthetic run in a loop beside the server, on the same machine). Medians of
``--repeats`` (and 90th percentiles), the machine's load average before and after each phase and the
CPU line printed beside them: on a shared machine, absolute figures move with the load.
"""

from __future__ import annotations

import argparse
import contextlib
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
import numpy as np  # noqa: E402
from cpu_info import cpu_line  # noqa: E402

from core.run.store import RunStore  # noqa: E402
from core.run.synthetic import make_synthetic_run  # noqa: E402
from tests.e2e.conftest import CHROMIUM_FLAGS, streamlit_process  # noqa: E402

GAP_MS = 300
NO_RUN_JS = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} (1/5 min)"


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):7.0f} ms (p90 {_pct(values, .9):5.0f})"


@contextlib.contextmanager
def _phase(name: str):
    """Nothing for ``quiet``; for ``busy``, a diagnosis of a 70,000-image run in a loop beside."""
    busy = None
    if name == "busy":
        busy_root = Path(tempfile.gettempdir()) / "bench-page-latency-busy"  # not the measured store
        store = RunStore(busy_root)
        if not store.exists("busy"):
            make_synthetic_run(store, "busy", n=70_000, n_classes=10, seed=3, accuracy=0.9)
        loop = (f"while true; do {sys.executable} -m core diagnose --force --store {busy_root} busy "
                ">/dev/null 2>&1; done")
        busy = subprocess.Popen(["bash", "-c", loop], env={**os.environ, "PYTHONPATH": str(ROOT)},
                                start_new_session=True)
        time.sleep(8)  # the diagnosis is under way
    try:
        yield
    finally:
        if busy is not None:
            os.killpg(busy.pid, 15)
            busy.wait()


# --------------------------------------------------------------------------- verdict acknowledged

def ack_times(browser, url: str, run_id: str, repeats: int) -> dict[str, list[float]]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(f"{url}/review?run={run_id}")
    page.locator(".rq-img[data-row]").first.wait_for()
    page.wait_for_function(NO_RUN_JS)
    page.wait_for_timeout(1500)
    for key in list("mxa" * repeats)[:repeats]:
        page.keyboard.press(key)
        page.wait_for_timeout(GAP_MS)
    page.wait_for_function(f"() => (window.__reviewQueueAcks || []).length >= {repeats}", timeout=180_000)
    acks = page.evaluate("() => window.__reviewQueueAcks")
    context.close()
    return {"acknowledged": [a["saved"] - a["made"] for a in acks],
            "waiting in the page": [a["sent"] - a["made"] for a in acks],
            "round trip": [a["saved"] - a["sent"] for a in acks]}


FLOOR_APP = r'''
import streamlit as st

JS = """
export default function (component) {
  const { data, setTriggerValue } = component;
  window.__acks = window.__acks || [];
  const sent = (window.__sent = window.__sent || {});
  if (data && data.ack && sent[data.ack]) { window.__acks.push(performance.now() - sent[data.ack]); delete sent[data.ack]; }
  window.__send = (n) => { sent[n] = performance.now(); setTriggerValue("ev", n); };
}
"""
echo = st.components.v2.component("bench_floor_echo", js=JS)


@st.fragment
def answer():
    value = (st.session_state.get("echo") or {}).get("ev")
    if value is not None:
        st.session_state["last"] = value
    echo(key="echo", data={"ack": st.session_state.get("last")}, on_ev_change=lambda: None, height=0)


answer()
'''


def floor_times(browser, repeats: int) -> list[float]:
    """The floor under any acknowledgement: a trigger to a fragment that does nothing but answer
    with it, on a bare Streamlit app (same machine, same moment), one every ``GAP_MS``."""
    import socket
    import urllib.request

    folder = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    (folder / "app.py").write_text(FLOOR_APP)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(folder / "app.py"), "--server.port",
                               str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
                               "--browser.gatherUsageStats", "false"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}")
        page.wait_for_function("() => window.__send")
        page.wait_for_timeout(1000)
        for i in range(1, repeats + 1):
            page.evaluate(f"() => window.__send({i})")
            page.wait_for_function(f"() => window.__acks.length >= {i}", timeout=60_000)
            page.wait_for_timeout(GAP_MS)
        times = page.evaluate("() => window.__acks")
        context.close()
        return times
    finally:
        server.terminate()
        server.wait()


def bench_ack(args) -> None:
    root = Path(args.store or tempfile.mkdtemp(prefix="bench-latency-"))
    store = RunStore(root)
    if not store.exists("queue"):
        make_synthetic_run(store, "queue", n=20_000, n_classes=10, seed=2, accuracy=0.75)
    from playwright.sync_api import sync_playwright

    rows = []
    with streamlit_process(root, root / "streamlit.log", poll=0.3) as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                    args=CHROMIUM_FLAGS, headless=True)
        for phase in args.phases:
            with _phase(phase):
                before = _load()
                times = ack_times(browser, url, "queue", args.repeats)
                times["floor (a fragment that only answers)"] = floor_times(browser, args.repeats)
                rows.append((phase, times, before, _load()))
        browser.close()
    print(f"\nReview queue, verdict key -> shown saved (SQLite committed, acknowledged), headless Chromium, "
          f"medians of {args.repeats}, one key every {GAP_MS} ms; target <= 500 ms")
    for phase, times, before, after in rows:
        cells = "  ".join(f"{name} {_fmt(v)}" for name, v in times.items())
        print(f"{phase:<6} {cells}   {before} -> {after}")


# --------------------------------------------------------------------------- confusion cell

VISIBLE_JS = """([t0, heading]) => {
  const cell = document.querySelector(".st-key-confusion-cell");
  if (!cell || !cell.innerText.includes(heading)) return false;
  const img = cell.querySelector(".st-key-gallery-confusion img");
  if (!img || !img.complete || !img.naturalWidth) return false;
  const r = img.getBoundingClientRect();
  if (r.top < 0 || r.bottom > window.innerHeight || r.height === 0) return false;
  return performance.now() - t0;
}"""


def confusion_times(browser, url: str, run, repeats: int) -> list[float]:
    from bench_browser import cell_centre

    from core.run.metrics import confusion_matrix

    df, mask = run.predictions, run.eval_mask()
    cm = confusion_matrix(df["true"].to_numpy()[mask], df["predicted"].to_numpy()[mask], n_classes=len(run.classes))
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.arange(len(run.classes))
    if len(order) > 40:  # the page opens on the 30 most confused classes
        involvement = off.sum(axis=0) + off.sum(axis=1)
        order = np.sort(np.lexsort((order, -involvement))[:30])
    sub = off[np.ix_(order, order)]
    cells = [tuple(int(v) for v in np.unravel_index(i, sub.shape)) for i in np.argsort(-sub, axis=None)[:8]]
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(f"{url}/confusion?run={run.id}")
    page.locator("[class*='confusion-chart'] .js-plotly-plot").first.wait_for()
    page.wait_for_function(NO_RUN_JS)
    times = []
    for i in range(repeats):
        true_pos, pred_pos = cells[i % len(cells)]
        true, pred = int(order[true_pos]), int(order[pred_pos])
        page.evaluate("() => window.scrollTo(0, 0)")
        x, y = cell_centre(page, true_pos, pred_pos)
        t0 = page.evaluate("() => performance.now()")
        page.mouse.click(x, y)
        heading = f"True {run.classes[true]}, predicted {run.classes[pred]}"
        times.append(page.wait_for_function(VISIBLE_JS, arg=[t0, heading], polling="raf").json_value())
        page.wait_for_function(NO_RUN_JS)
        page.wait_for_timeout(300)
    context.close()
    return times


def bench_confusion(args) -> None:
    if not args.store:
        raise SystemExit("confusion needs --store: a store with the demo run (python -m core demo --store DIR)")
    store = RunStore(args.store)
    run = store.load(args.run or store.list_runs(include_broken=False)[0].run_id)
    from playwright.sync_api import sync_playwright

    rows = []
    with streamlit_process(Path(args.store), Path(tempfile.mkdtemp()) / "streamlit.log", poll=0.3) as (url, _), \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                    args=CHROMIUM_FLAGS, headless=True)
        for phase in args.phases:
            with _phase(phase):
                before = _load()
                times = confusion_times(browser, url, run, args.repeats)
                rows.append((phase, times, before, _load()))
        browser.close()
    print(f"\nConfusion cell click -> its first image visible, run {run.id} ({len(run.predictions):,} images, "
          f"{len(run.classes)} classes), headless Chromium, medians of {args.repeats}; target <= 1000 ms")
    for phase, times, before, after in rows:
        print(f"{phase:<6} {_fmt(times)}   {before} -> {after}")


# --------------------------------------------------------------------------- embeddings page

MAP_JS = """(t0) => {
  // drawn: plotly's plot of the new page, its picture layer(s) decoded, Streamlit's run finished
  const plot = document.querySelector("[class*='embedding-chart'] .js-plotly-plot");
  if (!plot || !plot._fullLayout || !plot.querySelector(".main-svg .cartesianlayer")) return false;
  if (document.querySelector('[data-testid="stStatusWidget"]')) return false;
  const seen = (window.__benchImages = window.__benchImages || new Map());
  for (const im of plot.querySelectorAll("image")) {
    const href = im.getAttribute("href") || im.getAttribute("xlink:href");
    if (!href) return false;
    if (!seen.has(href)) { const probe = new Image(); probe.src = href; seen.set(href, probe); }
    const probe = seen.get(href);
    if (!probe.complete || !probe.naturalWidth) return false;
  }
  return performance.now() - t0;
}"""


def embeddings_times(browser, url: str, run_id: str, repeats: int, cell: str | None = None) -> list[float]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(180_000)
    if cell:  # chosen on the confusion page: the map outlines its points
        page.goto(f"{url}/confusion?run={run_id}&cell={cell}")
        page.locator("[class*='confusion-chart'] .js-plotly-plot").first.wait_for()
        page.wait_for_function(NO_RUN_JS)
        page.locator("[data-testid='stSidebarNav']").get_by_role("link", name="Embeddings", exact=True).click()
    else:
        page.goto(f"{url}/embeddings?run={run_id}")
    page.locator("[class*='embedding-chart'] .js-plotly-plot").first.wait_for()  # the server's caches warm
    page.wait_for_function(NO_RUN_JS)
    nav = page.locator("[data-testid='stSidebarNav']")
    times = []
    for _ in range(repeats):
        nav.get_by_role("link", name="Overview", exact=True).click()
        page.locator("[class*='embedding-chart']").first.wait_for(state="detached")
        page.wait_for_timeout(300)
        page.wait_for_function(NO_RUN_JS)
        link = nav.get_by_role("link", name="Embeddings", exact=True)
        box = link.bounding_box()
        t0 = page.evaluate("() => performance.now()")
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_timeout(100)  # Streamlit's status widget appears a moment after the click
        times.append(page.wait_for_function(MAP_JS, arg=t0, polling="raf").json_value())
    context.close()
    return times


def bench_embeddings(args) -> None:
    root = Path(args.store or tempfile.mkdtemp(prefix="bench-latency-"))
    store = RunStore(root)
    run_id = f"big-{args.n}"
    if not store.exists(run_id):
        make_synthetic_run(store, run_id, n=args.n, n_classes=100, seed=1)
    from playwright.sync_api import sync_playwright

    rows = []
    with streamlit_process(root, root / "streamlit.log", poll=0.3) as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                    args=CHROMIUM_FLAGS, headless=True)
        for phase in args.phases:
            with _phase(phase):
                for cell in (None, args.cell):
                    before = _load()
                    times = embeddings_times(browser, url, run_id, args.repeats, cell)
                    rows.append((phase, cell, times, before, _load()))
        browser.close()
    print(f"\nSidebar -> Embeddings page drawn (coming back to it: the browser holds the figure's big "
          f"messages), {args.n:,} predictions, 100 classes, headless Chromium, medians of {args.repeats}; "
          "target < 1000 ms")
    for phase, cell, times, before, after in rows:
        what = f"cell {cell} outlined" if cell else "no cell chosen"
        print(f"{phase:<6} {what:<22} {_fmt(times)}   {before} -> {after}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["ack", "confusion", "embeddings"])
    ap.add_argument("--store", default=None)
    ap.add_argument("--run", default=None, help="confusion: the store's run (default: its newest)")
    ap.add_argument("--n", type=int, default=1_000_000, help="embeddings: predictions of the synthetic run")
    ap.add_argument("--cell", default="0,0", help="embeddings: also with this confusion cell chosen "
                    "(true,predicted; a diagonal cell outlines ~1,500 points of the 1M run's map)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--phases", default="quiet,busy", help="quiet, busy or both (comma-separated)")
    args = ap.parse_args()
    args.phases = [p for p in args.phases.split(",") if p]
    if not set(args.phases) <= {"quiet", "busy"}:
        raise SystemExit(f"--phases must be quiet and/or busy. Received: {','.join(args.phases)!r}")
    print(cpu_line(), f"{os.cpu_count()} CPUs", flush=True)
    {"ack": bench_ack, "confusion": bench_confusion, "embeddings": bench_embeddings}[args.what](args)


if __name__ == "__main__":
    main()
