"""Interaction latency in a real browser on a large run (not a test).

Starts the dashboard on a store with a large synthetic run (built on first use
with core.run.synthetic), drives Debian's headless Chromium with Playwright and
prints, per interaction, the wall time from the user's action until the page
has finished answering (the expected heading or element on screen, then
Streamlit's "running" indicator gone). This includes the server's work, the
transfer and the browser's rendering, which bench_dashboard.py (server-side
timings) leaves out.

    .venv/bin/python benchmarks/bench_browser.py --store /tmp/dash_bench                 # 1M rows, 100 classes
    .venv/bin/python benchmarks/bench_browser.py --store /tmp/dash120 --n 70000 --classes 120 --full-matrix

``--full-matrix`` also times clicks on the full K x K matrix (the "most confused
classes" limit switched off). Interactions the dashboard does not offer (the
image detail, the embedding lasso, in versions before they existed) are left
out of the table with a note. The machine's load average is printed before and
after: timings taken on a shared machine are noisy, compare runs taken close
together.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import numpy as np  # noqa: E402
from cpu_info import cpu_line  # noqa: E402

from core.run.metrics import confusion_matrix  # noqa: E402
from core.run.store import RunStore  # noqa: E402
from core.run.synthetic import make_synthetic_run  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOP = 30  # the classes the confusion page shows by default beyond 40 classes


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settled(page, timeout_ms=120_000) -> None:
    """Wait until Streamlit has finished the rerun the last action started."""
    page.wait_for_timeout(150)  # the status widget appears a moment after the action
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                           timeout=timeout_ms)


def most_confused(cm: np.ndarray, top: int) -> np.ndarray:
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    involvement = off.sum(axis=0) + off.sum(axis=1)
    return np.sort(np.lexsort((np.arange(len(cm)), -involvement))[:top])


CELL_JS = """([col, row]) => {
  const gd = document.querySelector("[class*='confusion-chart'] .js-plotly-plot");
  const box = gd.getBoundingClientRect(), x = gd._fullLayout.xaxis, y = gd._fullLayout.yaxis;
  return [box.left + x._offset + x.l2p(col), box.top + y._offset + y.l2p(row)];
}"""


FULL_JS = """last => {
  const gd = document.querySelector("[class*='confusion-chart'] .js-plotly-plot");
  return gd && gd._fullLayout && Math.max(...gd._fullLayout.xaxis.range) >= last;
}"""


def cell_centre(page, true_pos: int, pred_pos: int) -> tuple[float, float]:
    """Viewport position of displayed cell (row true_pos, column pred_pos), from plotly's own axes
    (scrolled into view first)."""
    height = page.viewport_size["height"]
    for _ in range(10):
        x, y = page.evaluate(CELL_JS, [pred_pos, true_pos])
        if 60 <= y <= height - 60:
            return x, y
        page.mouse.move(700, height / 2)
        page.mouse.wheel(0, y - height / 2)
        page.wait_for_timeout(300)
    raise RuntimeError(f"cannot scroll cell ({true_pos}, {pred_pos}) into view")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=None)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full-matrix", action="store_true", help="also time clicks on the full matrix")
    args = ap.parse_args()
    print(cpu_line(), flush=True)
    root = Path(args.store or tempfile.mkdtemp(prefix="bench-browser-"))
    store = RunStore(root)
    run_id = f"bench-{args.n}-{args.classes}-a"
    if not store.exists(run_id):
        make_synthetic_run(store, run_id, n=args.n, n_classes=args.classes, seed=1)
    run = store.load(run_id)
    k = len(run.classes)
    mask = run.eval_mask()
    cm = confusion_matrix(run.predictions["true"].to_numpy()[mask],
                          run.predictions["predicted"].to_numpy()[mask], n_classes=k)
    load_before = os.getloadavg()

    port = _port()
    env = {**os.environ, "ARTIFACTS_DIR": str(root)}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
                               "--server.port", str(port), "--server.headless", "true",
                               "--browser.gatherUsageStats", "false"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    timings: dict[str, list[float]] = {}
    missing: list[str] = []
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        def timed(name, action, wait):
            t0 = time.perf_counter()
            action()
            try:
                wait()  # the answer is on screen
            except Exception:
                shot = Path(tempfile.gettempdir()) / "bench-browser-failed.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"{name}: no answer; the page is in {shot}", file=sys.stderr)
                raise
            _settled(page)  # and the rerun that drew it has finished
            timings.setdefault(name, []).append(time.perf_counter() - t0)

        def click_cell(label: str, order: np.ndarray, index: int) -> None:
            n = len(order)
            true_pos, pred_pos = divmod(index, n)
            true, pred = order[true_pos], order[pred_pos]
            heading = f"True {run.classes[int(true)]}, predicted {run.classes[int(pred)]}"
            x, y = cell_centre(page, true_pos, pred_pos)
            timed(label, lambda: page.mouse.click(x, y),
                  lambda: page.get_by_role("heading", name=heading).wait_for())

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(int(os.environ.get("BENCH_TIMEOUT_MS", 120_000)))
            chart = page.locator("[class*='confusion-chart'] .js-plotly-plot .nsewdrag").first
            # first load pays the run's loading into the server's caches: shown apart
            timed("first page load (cold server caches)", lambda: page.goto(f"{url}/confusion?run={run_id}"),
                  lambda: chart.wait_for(state="attached"))
            nav = page.locator("[data-testid='stSidebarNav']")
            shown = most_confused(cm, TOP) if k > 40 else np.arange(k)
            for r in range(args.repeats):
                index = (7 * r + 3) % (len(shown) ** 2)
                click_cell(f"click a confusion cell ({len(shown)} classes shown) -> its gallery", shown, index)
                timed("sidebar -> Errors page (gallery drawn)",
                      lambda: nav.get_by_role("link", name="Errors", exact=True).click(),
                      lambda: page.locator(".st-key-gallery-errors img").first.wait_for())
                timed("sidebar -> Embeddings page (map drawn)",
                      lambda: nav.get_by_role("link", name="Embeddings", exact=True).click(),
                      lambda: page.locator("[class*='embedding-chart'] .js-plotly-plot .main-svg").first.wait_for())
                timed("sidebar -> Per-class report", lambda: nav.get_by_role("link", name="Per-class report").click(),
                      lambda: page.locator("[data-testid='stDataFrame'] canvas").first.wait_for())
                timed("sidebar -> Confusion matrix", lambda: nav.get_by_role("link", name="Confusion matrix").click(),
                      lambda: chart.wait_for(state="attached"))
            # the image detail (absent before the dashboard had one)
            opener = page.locator(".st-key-gallery-confusion [class*='st-key-gtile-confusion-']")
            if opener.count():
                for r in range(args.repeats):
                    timed("click a thumbnail -> its detail", lambda: opener.nth(r % opener.count()).click(),
                          lambda: page.get_by_role("dialog").wait_for())
                    page.keyboard.press("Escape")
                    page.get_by_role("dialog").wait_for(state="detached")
                    _settled(page)
            else:
                missing.append("click a thumbnail -> its detail (no image detail in this version)")
            # a lasso on the map, and a zoom to it (absent before the map selected on the server)
            nav.get_by_role("link", name="Embeddings", exact=True).click()
            page.locator("[class*='embedding-chart'] .js-plotly-plot .main-svg").first.wait_for()
            _settled(page)
            zoom = page.get_by_role("button", name="Zoom to selection")
            if zoom.count():
                for r in range(args.repeats):
                    if r:
                        page.get_by_role("button", name="Show everything").click()
                        _settled(page)
                    area = page.locator("[class*='embedding-chart'] .nsewdrag").first.bounding_box()
                    cx, cy = area["x"] + area["width"] * (0.3 + 0.2 * r), area["y"] + area["height"] * 0.4
                    lasso = [(cx + 120 * math.cos(a), cy + 90 * math.sin(a))
                             for a in np.linspace(0, 2 * math.pi, 31)]

                    page.mouse.move(*lasso[0])  # drawing the lasso is the user's time, not timed
                    page.mouse.down()
                    for x, y in lasso[1:]:
                        page.mouse.move(x, y)
                    timed("map: lasso released -> gallery of every image inside", page.mouse.up,
                          lambda: page.get_by_text("inside the selection, most confident first").wait_for())
                    timed("map: zoom to the selection -> window re-drawn", lambda: zoom.click(),
                          lambda: page.get_by_text("Zoomed: x").wait_for())
            else:
                missing.append("map lasso and zoom to selection (not in this version)")
            if args.full_matrix and k > 40:
                nav.get_by_role("link", name="Confusion matrix", exact=True).click()
                chart.wait_for(state="attached")
                _settled(page)
                toggle = page.get_by_text("Show only the most confused classes")
                timed(f"switch to the full matrix ({k} classes)", lambda: toggle.click(),
                      lambda: page.wait_for_function(FULL_JS, arg=k - 1, timeout=120_000))
                for r in range(args.repeats):
                    click_cell(f"click a cell of the full matrix ({k} classes) -> its gallery",
                               np.arange(k), (37 * r + 5) % (k * k))
            browser.close()
    finally:
        server.terminate()
    print(f"\n{run.n_images:,} predictions, {k} classes; Chromium headless, median of {args.repeats}")
    print(f"load average (1, 5, 15 min) before: {tuple(round(x, 2) for x in load_before)}, "
          f"after: {tuple(round(x, 2) for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{'interaction':<64} {'median s':>9} {'max s':>7}")
    for name, values in timings.items():
        print(f"{name:<64} {statistics.median(values):9.2f} {max(values):7.2f}")
    for note in missing:
        print(f"not measured: {note}")


if __name__ == "__main__":
    main()
