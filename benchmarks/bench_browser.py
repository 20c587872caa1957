"""Interaction latency in a real browser on a 1,000,000-prediction run (not a test).

Starts the dashboard on a store with a large synthetic run (built on first use
with core.synthetic), drives Debian's headless Chromium with Playwright and
prints, per interaction, the wall time from the user's action until the page
shows its answer (the expected text or chart on screen); the next action
waits until Streamlit's "running" indicator is gone. This includes the server's work, the transfer and the browser's
rendering, which bench_dashboard.py (server-side timings) leaves out.

    .venv/bin/python benchmarks/bench_browser.py --store /tmp/dash_bench
"""

from __future__ import annotations

import argparse
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

import numpy as np  # noqa: E402

from core.metrics import confusion_matrix  # noqa: E402
from core.store import RunStore  # noqa: E402
from core.synthetic import make_synthetic_run  # noqa: E402
from dashboard import views  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settled(page, timeout_ms=60_000) -> None:
    """Wait until Streamlit has finished the rerun the last action started."""
    page.wait_for_timeout(150)  # the status widget appears a moment after the action
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                           timeout=timeout_ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=None)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = Path(args.store or tempfile.mkdtemp(prefix="bench-browser-"))
    store = RunStore(root)
    run_id = f"bench-{args.n}-{args.classes}-a"
    if not store.exists(run_id):
        make_synthetic_run(store, run_id, n=args.n, n_classes=args.classes, seed=1)
    run = store.load(store.list_runs()[0].run_id)  # the run the dashboard opens on: the newest
    k = len(run.classes)
    mask = run.eval_mask()
    cm = confusion_matrix(run.predictions["true"].to_numpy()[mask],
                          run.predictions["predicted"].to_numpy()[mask], n_classes=k)

    port = _port()
    env = {**os.environ, "ARTIFACTS_DIR": str(root)}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
                               "--server.port", str(port), "--server.headless", "true"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        timings: dict[str, list[float]] = {}

        def timed(name, action, wait):
            t0 = time.perf_counter()
            action()
            wait()  # the answer is on screen
            timings.setdefault(name, []).append(time.perf_counter() - t0)
            _settled(page)  # let the rerun finish before the next action (not timed)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(int(os.environ.get("BENCH_TIMEOUT_MS", 120_000)))
            # first load pays the run's loading into the server's caches: shown apart
            timed("first page load (cold server caches)", lambda: page.goto(f"{url}/confusion"),
                  lambda: page.locator(".js-plotly-plot .scatterlayer path.point").first.wait_for(state="attached"))
            points = page.locator(".js-plotly-plot .scatterlayer path.point")
            nav = page.locator("[data-testid='stSidebarNav']")
            for r in range(args.repeats):
                n_points = points.count()
                index = (7 * r + 3) % n_points
                # the displayed classes, as the page picks them (all, or the most confused 30)
                side = int(round(n_points ** 0.5))
                order = np.arange(k) if side == k else views.most_confused_classes(cm, top=side)
                true, pred = order[index // side], order[index % side]
                heading = f"True {run.classes[int(true)]}, predicted {run.classes[int(pred)]}"
                box = points.nth(index).bounding_box()
                timed("click a confusion cell -> its gallery",
                      lambda: page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2),
                      lambda: (page.get_by_role("heading", name=heading).wait_for(),
                               page.locator(".st-key-confusion-item-0").filter(
                                   has_text=f"predicted: {run.classes[int(pred)]} (").locator("img").wait_for()))
                timed("sidebar -> Errors page (to its 24th thumbnail)", lambda: nav.get_by_role("link", name="Errors", exact=True).click(),
                      lambda: page.locator(".st-key-errors-item-23 img").wait_for())  # the gallery's last
                timed("sidebar -> Embeddings page (density of 1M points)",
                      lambda: nav.get_by_role("link", name="Embeddings", exact=True).click(),
                      lambda: page.locator(".st-key-embedding-chart .js-plotly-plot .main-svg").first.wait_for())
                timed("sidebar -> Per-class report", lambda: nav.get_by_role("link", name="Per-class report").click(),
                      lambda: page.locator("[data-testid='stDataFrame'] canvas").first.wait_for())
                timed("sidebar -> Confusion matrix", lambda: nav.get_by_role("link", name="Confusion matrix").click(),
                      lambda: points.first.wait_for(state="attached"))
            browser.close()
    finally:
        server.terminate()
    print(f"\n{run.n_images:,} predictions, {k} classes; Chromium headless, median of {args.repeats}")
    print(f"{'interaction':<52} {'median s':>9} {'max s':>7}")
    for name, values in timings.items():
        print(f"{name:<52} {statistics.median(values):9.2f} {max(values):7.2f}")


if __name__ == "__main__":
    main()
