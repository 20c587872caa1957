"""Hardening checks that only a real browser can make: addresses, requests leaving the
machine, what the widgets display after a run switch, and the DOM that hostile strings
produce (no link, no bold, no emphasis from the data)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.browser

INJECT = "<b>x</b> **y** [z](http://e) http://e __b__"
EVIL = "http://evil.example"
# Links, bold and emphasis the data could create: in Markdown elements and in plotly's SVG text.
FORBIDDEN_DOM = """() => {
  const bad = [];
  for (const a of document.querySelectorAll('a[href]')) {
    const h = a.getAttribute('href');
    if (h.startsWith('http://e') || h.includes('evil')) bad.push('a ' + h);
  }
  for (const e of document.querySelectorAll('b, strong, em, i')) {
    if (['x', 'y', 'b', 'z', 'bold'].includes(e.textContent.trim())) bad.push(e.tagName + ' ' + e.textContent);
  }
  for (const e of document.querySelectorAll('.js-plotly-plot a, .js-plotly-plot tspan[style*="bold"]')) {
    bad.push('plotly ' + e.textContent);
  }
  return bad;
}"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from core.run.store import RunStore
    from core.run.synthetic import make_synthetic_run, synthetic_arrays
    from core.run.write import write_run

    store = RunStore(tmp_path_factory.mktemp("e2e-hardening"))
    make_synthetic_run(store, "alpha", n=600, n_classes=6, seed=7,
                       class_names=["bolt", "nut", "screw", "washer", "spring", "pin"])
    make_synthetic_run(store, "beta", n=600, n_classes=8, seed=3, class_names=[f"gear{i}" for i in range(8)])
    arrays = synthetic_arrays(300, 4, seed=1)
    classes = [INJECT, "plain", "**bold**", EVIL]
    for run_id, seed, prefix in (("inject", 1, ""), ("inject2", 2, ""), ("inject3", 1, "other ")):
        probs = synthetic_arrays(300, 4, seed=seed)["probs"]
        write_run(store, run_id, name=INJECT if run_id != "inject3" else run_id, classes=classes, y_true=arrays["y_true"], probs=probs,
                  paths=[f"{prefix}{INJECT} {EVIL}/{i}.png" for i in range(300)], splits=arrays["splits"],
                  embeddings=arrays["embeddings"], projection=arrays["projection"], images=arrays["images"],
                  model={"path": f"{INJECT}.keras"}, data={"name": INJECT, "kind": "synthetic"},
                  notes=[f"note: {INJECT}"])
    make_synthetic_run(store, "broken", n=300, n_classes=4, seed=1)
    parquet = store.root / "broken" / "predictions.parquet"
    parquet.write_bytes(parquet.read_bytes()[:100])
    # a fixed order in the picker: alpha, beta, then the rest (newest first)
    for run_id, created in (("alpha", "2099-01-02"), ("beta", "2099-01-01")):
        manifest = store.root / run_id / "manifest.json"
        data = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**data, "created": f"{created}T00:00:00+00:00"}))
    return store


def settle(page) -> None:
    """Wait until the script run the last action started has finished drawing."""
    page.wait_for_timeout(400)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")
    page.wait_for_timeout(300)


def choose(page, combobox, option: str) -> None:
    """Pick the option whose text starts with ``option`` in a selectbox."""
    combobox.click()
    options = page.get_by_role("option")
    options.first.wait_for()
    texts = options.all_inner_texts()
    options.nth(next(i for i, text in enumerate(texts) if text.startswith(option))).click()
    settle(page)


def sidebar_run(page):
    return page.get_by_role("combobox", name="Run")


def wait_heading(page, text: str) -> None:
    """Wait for a heading that reads ``text`` (the word joiners of ``ui.plain`` are invisible)."""
    page.wait_for_function(
        "t => [...document.querySelectorAll('h1, h2, h3')].some(h => h.innerText.replaceAll('\\u2060', '') === t)",
        arg=text)


def go_to(page, title: str, heading: str) -> None:
    page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=title, exact=True).click()
    wait_heading(page, heading)
    settle(page)


def test_overview_has_its_own_address_and_nothing_is_fetched_from_elsewhere(url, page, requested):
    page.goto(f"{url}/overview")
    page.get_by_role("heading", name="Overview: alpha").wait_for()
    settle(page)
    assert page.get_by_text("Page not found").count() == 0
    page.goto(url)
    page.get_by_role("heading", name="Overview: alpha").wait_for()
    page.wait_for_url(f"{url}/overview?run=alpha")  # the view is in the address
    for title, heading in (("Per-class report", "Per-class report"), ("Confusion matrix", "Confusion matrix"),
                           ("Errors", "Errors"), ("Embeddings", "Embeddings"), ("Compare runs", "Compare runs"),
                           ("Try an image", "Try an image"), ("Add a run", "Classifier error analysis")):
        go_to(page, title, heading)
    elsewhere = sorted({u for u in requested if not u.startswith(url) and not u.startswith(("data:", "blob:"))})
    assert elsewhere == []


def test_switching_runs_shows_the_new_runs_cell_in_the_boxes(url, store, page):
    from core.run import metrics
    from dashboard import views

    page.goto(f"{url}/confusion")
    page.get_by_role("heading", name="Confusion matrix").wait_for()
    settle(page)
    choose(page, page.get_by_role("combobox", name="True class"), "4 · spring")
    choose(page, page.get_by_role("combobox", name="Predicted class"), "3 · washer")
    page.get_by_role("heading", name="True spring, predicted washer").wait_for()
    choose(page, sidebar_run(page), "beta ·")
    beta = store.load("beta")
    mask = beta.eval_mask()
    true, pred = views.default_cell(metrics.confusion_matrix(
        beta.predictions["true"].to_numpy()[mask], beta.predictions["predicted"].to_numpy()[mask], n_classes=8))
    page.get_by_role("heading", name=f"True {beta.classes[true]}, predicted {beta.classes[pred]}").wait_for()
    assert page.get_by_role("combobox", name="True class").input_value() == f"{true} · {beta.classes[true]}"
    assert page.get_by_role("combobox", name="Predicted class").input_value() == f"{pred} · {beta.classes[pred]}"


def test_a_broken_run_is_marked_and_says_why(url, page):
    page.goto(f"{url}/errors")
    page.get_by_role("heading", name="Errors").wait_for()
    settle(page)
    choose(page, sidebar_run(page), "⚠ broken · broken")
    alert = page.get_by_role("alert")
    alert.first.wait_for()
    assert alert.count() == 1
    text = alert.inner_text()
    assert "Run 'broken' is broken" in text and "predictions.parquet" in text
    assert page.locator("[data-testid='stException']").count() == 0
    # the other runs still open
    choose(page, sidebar_run(page), "alpha ·")
    page.get_by_role("heading", name="Errors").wait_for()
    assert page.get_by_role("alert").count() == 0


def _text(page) -> str:
    """What the page shows as text, Markdown and plotly's SVG included, word joiners removed."""
    return page.evaluate("() => document.body.innerText + ' ' + [...document.querySelectorAll("
                         "'.js-plotly-plot')].map(e => e.textContent).join(' ')").replace("\u2060", "")


def test_hostile_strings_are_shown_as_text_on_every_page(url, page):
    page.goto(f"{url}/overview")
    page.get_by_role("heading", name="Overview: alpha").wait_for()
    settle(page)
    choose(page, sidebar_run(page), INJECT)
    wait_heading(page, f"Overview: {INJECT}")
    assert sidebar_run(page).input_value().startswith(INJECT)
    seen = {}
    for title, heading in (("Overview", f"Overview: {INJECT}"), ("Per-class report", "Per-class report"),
                           ("Confusion matrix", "Confusion matrix"), ("Errors", "Errors"),
                           ("Embeddings", "Embeddings"), ("Compare runs", "Compare runs")):
        go_to(page, title, heading)
        if title == "Compare runs":
            choose(page, page.get_by_role("combobox", name="Run B"), INJECT)
            page.get_by_text("Flips", exact=True).wait_for()
        assert page.evaluate(FORBIDDEN_DOM) == [], title
        assert page.locator("[data-testid='stException']").count() == 0, title
        seen[title] = _text(page)
    for title in ("Overview", "Confusion matrix", "Errors", "Embeddings", "Compare runs"):
        assert INJECT in seen[title], title
    for title in ("Confusion matrix", "Errors", "Compare runs"):
        assert f"{INJECT} {EVIL}/" in seen[title], title  # a file name, shown whole
    assert f"Note: note: {INJECT}" in seen["Overview"]
    # Compare's one-line problem names files of the data set: as text too
    choose(page, page.get_by_role("combobox", name="Run B"), "inject3")
    alert = page.get_by_role("alert")
    alert.first.wait_for()
    assert "list different images" in alert.inner_text()
    assert INJECT in alert.inner_text().replace("\u2060", "")
    assert page.evaluate(FORBIDDEN_DOM) == []


def test_hostile_strings_in_the_detail_in_the_page_are_text(url, store, page):
    """The image detail drawn in the page (``dashboard.detail``, a shadow root the checks above do
    not see into): class names and file names from the data are text, never markup."""
    run = store.load("inject")
    page.goto(f"{url}/errors?run=inject")
    page.get_by_role("heading", name="Errors").wait_for()
    tile = page.locator(".st-key-gallery-errors [class*='st-key-gtile-errors-']").first
    tile.locator("img").wait_for()
    page.wait_for_function("() => window.__galleryDetails && window.__galleryDetails.errors")
    settle(page)
    tile.click()
    detail = page.locator(".gd-overlay.open")
    detail.wait_for()
    bad = page.evaluate("""() => {
      const root = window.__galleryDetailOpen.root, bad = [];
      for (const e of root.querySelectorAll('a, b, strong, em, i, script, [href], [onerror]')) bad.push(e.outerHTML);
      return bad; }""")
    assert bad == []
    row = int(detail.locator(".gd-img").get_attribute("data-row"))
    r = run.predictions.iloc[row]
    text = detail.inner_text()
    assert f"file: {r['path']}" in text and f"{INJECT} {EVIL}/" in r["path"]
    assert f"{r['true_label']} → {r['predicted_label']}" in text
    names = detail.locator(".gd-top .name").all_inner_texts()
    assert len(names) == 4 and any(n.startswith(INJECT) for n in names), names  # 4 classes: all of them
    assert any(n.startswith("**bold**") for n in names) and any(n.startswith(EVIL) for n in names), names
    options = detail.locator(".gd-class option").all_inner_texts()
    assert f"0 · {INJECT}" in options and "2 · **bold**" in options
