"""The HTML report opened from disk in headless Chromium with every network request refused, and the
dashboard's Download report button giving the CLI's file byte for byte.

A synthetic run with hostile class names (markup, a right-to-left override), its
diagnoses and a second run to compare with: the report must load with no failed
request and no console error, render every section, run no script, and print
to PDF. Screenshots and the PDF go to $REPORT_SHOTS when set (to look at them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from core.diagnose import run_diagnoses
from core.report.document import build_report, render_html
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run

pytestmark = pytest.mark.browser

HOSTILE = ["<script>alert(1)</script>", "nut\u202eevil", "screw & \"bolt\"", "washer", "spring", "pin"]


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-store")
    store = RunStore(root)
    a = make_synthetic_run(store, "base", n=600, n_classes=6, seed=3, accuracy=0.75, class_names=HOSTILE)
    run = make_synthetic_run(store, "hostile-run", n=600, n_classes=6, seed=3, accuracy=0.85, class_names=HOSTILE)
    run_diagnoses(run, kinds=("label_issues", "calibration", "error_slices"))
    report = build_report(run, compare_with=a, max_images=60)
    file = tmp_path_factory.mktemp("report") / "report.html"
    file.write_text(render_html(report), encoding="utf-8")
    return file, report


def test_report_renders_offline_with_no_failed_request_and_no_console_error(browser, report_file, tmp_path):
    file, report = report_file
    context = browser.new_context(viewport={"width": 1200, "height": 900}, java_script_enabled=True)
    page = context.new_page()
    requests, failed, console, dialogs = [], [], [], []

    def route(r):
        requests.append(r.request.url)
        if r.request.url.startswith(("file:", "data:")):
            r.continue_()
        else:
            r.abort()
    page.route("**/*", route)
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(file.as_uri())
    page.wait_for_load_state("load")
    assert failed == [] and console == [] and dialogs == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    # every section is there, visible, with its title
    for section in report.sections:
        assert page.locator(f"section#{section.key} h2").is_visible(), section.key
    keys = [s.key for s in report.sections]
    assert keys[:4] == ["summary", "per-class", "confusion", "errors"]
    assert {"diagnoses", "map", "training", "compare"} <= set(keys)
    # every thumbnail decoded (a broken data URI has naturalWidth 0)
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert widths and min(widths) > 0
    # hostile names are text, never markup: no script element, the names shown literally
    assert page.eval_on_selector_all("script", "els => els.length") == 0
    text = page.inner_text("section#per-class")
    assert "<script>alert(1)</script>" in text and "nut<U+202E>evil" in text
    shots = Path(os.environ.get("REPORT_SHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "report_top.png"))
    page.screenshot(path=str(shots / "report_full.png"), full_page=True)
    page.emulate_media(media="print")
    pdf = page.pdf(path=str(shots / "report.pdf"), format="A4", print_background=True)
    assert pdf[:5] == b"%PDF-" and len(pdf) > 10_000
    context.close()
    if shutil.which("pdftoppm"):
        os.system(f"pdftoppm -r 50 -png {shots / 'report.pdf'} {shots / 'page'}")


def test_the_dashboards_download_report_is_the_clis_file(server, e2e_store, page, tmp_path):
    from core.cli import main

    page.goto(f"{server}/overview")
    page.wait_for_selector("[data-testid='stSidebar']")
    button = page.get_by_role("button", name="Download report")
    button.wait_for(timeout=90_000)  # a busy machine: the first script run of a fresh server is slow
    with page.expect_download(timeout=90_000) as info:
        button.click()
    downloaded = tmp_path / "downloaded.html"
    info.value.save_as(downloaded)
    assert info.value.suggested_filename == "report_e2e-run.html"
    assert main(["report", "e2e-run", "--store", str(e2e_store.root), "--html", str(tmp_path / "cli.html")]) == 0
    assert downloaded.read_bytes() == (tmp_path / "cli.html").read_bytes()
