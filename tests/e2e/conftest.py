"""A real Streamlit server and headless Debian Chromium driven by Playwright.

The server reads a store of synthetic runs made by the fixture. Chromium is
Debian's (/usr/bin/chromium): Playwright's own browser download cannot work
offline. Tests here are skipped, with the reason, when Chromium is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def e2e_store(tmp_path_factory):
    from core.run.store import RunStore
    from core.run.synthetic import make_synthetic_run

    root = tmp_path_factory.mktemp("e2e-store")
    store = RunStore(root)
    make_synthetic_run(store, "e2e-run", n=600, n_classes=6, seed=7,
                       class_names=["bolt", "nut", "screw", "washer", "spring", "pin"])
    return store


@contextmanager
def streamlit_process(store_root: Path, log: Path, *, append: bool = False, poll: float = 0.5,
                      port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """A Streamlit server of the dashboard on the store at ``store_root``, its output written to
    ``log`` (added to it with ``append``), health checked every ``poll`` seconds, on ``port`` (default:
    a free one; a restarted server on the same port is one the open pages reconnect to); yields
    (URL, process). Stopped on leaving, unless it has already exited (a test may kill it)."""
    port = port or _free_port()
    env = {**os.environ, "ARTIFACTS_DIR": str(store_root), "PYTHONPATH": str(REPO)}
    with open(log, "a" if append else "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"),
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
             "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(poll)
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}: {log.read_text()[-2000:]}")
        else:
            pytest.fail(f"streamlit did not answer in 90 s: {log.read_text()[-2000:]}")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def serve(store_root: Path, log: Path) -> Iterator[str]:
    """A Streamlit server of the dashboard on the store at ``store_root``; yields its URL."""
    with streamlit_process(store_root, log) as (url, _):
        yield url


def settle(page) -> None:
    """Wait until the script run the last action started has finished (no running indicator), up to 90 s."""
    page.wait_for_timeout(400)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                           timeout=90_000)
    page.wait_for_timeout(300)


@pytest.fixture(scope="module")
def url(store, request, tmp_path_factory):
    """``serve`` on the store of the module's own ``store`` fixture, for the module; yields the URL."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    with serve(store.root, tmp_path_factory.mktemp(f"{name}-log") / "streamlit.log") as address:
        yield address


@pytest.fixture(scope="module")
def server(e2e_store, tmp_path_factory):
    with serve(e2e_store.root, tmp_path_factory.mktemp("e2e-log") / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


@pytest.fixture
def requested(page) -> list[str]:
    """Every URL the page requests from now on (documents, scripts, fonts, icons, images)."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    return urls


def pytest_collection_modifyitems(config, items):
    """Every test of this folder is a browser test (the fast lane, -m "not slow and not browser",
    leaves them out), whether or not its module says so."""
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(here):
            item.add_marker(pytest.mark.browser)


def open_full_detail(page, tile, *, timeout: float = 90_000):
    """Click ``tile`` (a thumbnail's locator): its detail opens in the page (``dashboard.detail``);
    then its "Full detail…" opens the server's dialog (attention maps, history, ...). Returns the
    dialog's locator."""
    tile.click()
    overlay = page.locator(".gd-overlay.open")
    overlay.wait_for(timeout=timeout)
    overlay.get_by_role("button", name="Full detail…").click()
    dialog = page.locator("[data-testid='stDialog']")
    dialog.wait_for(timeout=timeout)
    return dialog
