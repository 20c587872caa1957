"""core.report.document: the HTML/Markdown report shows the run's own numbers, escapes every user string,
has a section only where the run has data, and stays within its image budget."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.analysis.compare import compare
from core.cli import main
from core.report.document import (
    build_report,
    clean,
    matrix_classes,
    md,
    render_html,
    report_html_bytes,
    worst_classes,
    write_markdown,
)
from core.report.tables import errors_table
from core.review.reviewed import RunReview
from core.run import metrics as M
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run, synthetic_arrays
from core.run.write import write_run

ROOT = Path(__file__).resolve().parents[3]
HOSTILE = ["<script>alert('x')</script>", "shirt\u202eevil", "a & \"b\"", "t-shirt/top", "<img src=x>"]


class Tables(HTMLParser):
    """Every table of one section: rows of (text, data-value or None) cells, and whether the row is called out."""

    def __init__(self, section: str):
        super().__init__()
        self.section, self.inside, self.tables = section, False, []
        self.cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.inside = attrs.get("id") == self.section
        elif self.inside and tag == "table":
            self.tables.append([])
        elif self.inside and tag == "tr" and self.tables:
            self.tables[-1].append({"worst": attrs.get("class") == "worst", "cells": []})
        elif self.inside and tag == "td":
            self.cell = ["", attrs.get("data-value")]

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.tables[-1][-1]["cells"].append(tuple(self.cell))
            self.cell = None
        elif tag == "section":
            self.inside = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[0] += data


def tables(page: str, section: str) -> list[list[dict]]:
    parser = Tables(section)
    parser.feed(page)
    return [[r for r in t if r["cells"]] for t in parser.tables]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("store"))
    make_synthetic_run(store, "base", n=800, n_classes=5, seed=2, accuracy=0.7, class_names=HOSTILE)
    make_synthetic_run(store, "run", n=800, n_classes=5, seed=2, accuracy=0.85, class_names=HOSTILE)
    return store


@pytest.fixture(scope="module")
def page(store) -> str:
    run = store.load("run")
    return render_html(build_report(run, compare_with=store.load("base"), max_images=40))


def test_per_class_table_holds_exactly_the_numbers_of_per_class_csv(store, page):
    run = store.load("run")
    expected = pd.read_csv(ROOT / run.path / "per_class.csv", keep_default_na=False)
    (table,) = tables(page, "per-class")
    assert len(table) == len(expected)
    for row, (_, want) in zip(table, expected.iterrows()):
        cells = row["cells"]
        assert cells[0][0] == clean(want["class"])
        values = [c[1] for c in cells[1:]]
        assert [float(v) for v in values] == [pytest.approx(float(want[c]), abs=0, rel=1e-12) for c in
                                               ["precision", "recall", "f1", "support", "tp", "fp", "fn", "tn",
                                                "cer"]]
        assert cells[3][0] == f"{want['f1']:.3f}" and cells[5][0] == f"{int(want['tp']):,}"
    worst = [clean(r["cells"][0][0]) for r in table if r["worst"]]
    assert worst == [clean(run.per_class["class"].iat[int(i)]) for i in worst_classes(run.per_class)]


def test_summary_confusion_errors_and_comparison_equal_core(store, page):
    run, base = store.load("run"), store.load("base")
    m = run.metrics
    summary = {r["cells"][0][0]: r["cells"][1][0] for r in tables(page, "summary")[0]}
    assert summary["Accuracy"] == f"{m['accuracy']:.2%}"
    assert summary["Macro-F1"] == f"{m['macro_f1']:.3f}"
    assert summary["Top-3 accuracy"] == f"{m['top3_accuracy']:.2%}"
    assert summary["Errors"] == f"{m['errors']:,}"
    # the most confused pairs: core.run.metrics.confused_pairs of the evaluated split
    mask = run.eval_mask()
    preds = run.predictions
    cm = M.confusion_matrix(preds["true"][mask], preds["predicted"][mask], n_classes=5)
    pairs = M.confused_pairs(cm, run.classes, top=10)
    shown = [[c[0] for c in r["cells"]] for r in tables(page, "confusion")[0]]
    assert shown == [[clean(p["true"]), clean(p["predicted"]), f"{p['count']:,}", f"{p['share_of_true']:.1%}"]
                     for _, p in pairs.iterrows()]
    # the most confident errors: python -m core errors, first 20
    errors = errors_table(run).head(20)
    shown = [[c[0] for c in r["cells"]] for r in tables(page, "errors")[0]]
    assert [s[1] for s in shown] == errors["path"].tolist()
    assert [s[4] for s in shown] == [f"{c:.3f}" for c in errors["confidence"]]
    # the comparison: python -m core compare base run
    cmp = compare(base, run)
    metrics_rows = {r["cells"][0][0]: [c[0] for c in r["cells"][1:]] for r in tables(page, "compare")[0]}
    a, b = cmp.metric("accuracy")
    assert metrics_rows["accuracy"] == [f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}"]
    assert metrics_rows["errors"][2] == f"{int(cmp.metric('errors')[1] - cmp.metric('errors')[0]):+,}"
    per_class = tables(page, "compare")[1]
    assert [r["cells"][3][0] for r in per_class] == [f"{d:+.3f}" for d in cmp.per_class["f1_delta"]]
    assert f"fixes {cmp.n_fixed:,} images and breaks {cmp.n_broken:,}" in page


def test_every_user_string_is_escaped(page):
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "\u202e" not in page and "shirt&lt;U+202E&gt;evil" in page
    assert "a &amp; &quot;b&quot;" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    # one style element, inline; no external anything
    assert page.count("<style>") == 1 and not re.search(r"<link|@import|url\(", page)


def test_a_run_with_a_map_training_and_a_comparison_has_those_sections(page):
    keys = re.findall(r'<section id="([a-z-]+)"', page)
    assert keys == ["summary", "per-class", "confusion", "errors", "map", "training", "compare"]
    # the map by class and by correctness, as PNG pictures
    assert len(re.findall(r'<img src="data:image/png;base64,[^"]+" alt="map coloured by', page)) == 2


def test_sections_only_when_the_run_has_the_data(tmp_path):
    store = RunStore(tmp_path)
    # no projection, no training, no diagnoses, no verdicts, every prediction right
    y = np.array([0, 1, 0, 1])
    probs = np.eye(2, dtype=np.float32)[y]
    run = write_run(store, "plain", classes=["x", "y"], y_true=y, probs=probs, paths=[f"{i}.png" for i in range(4)],
                    splits=np.array(["test"] * 4))
    report = build_report(run)
    assert [s.key for s in report.sections] == ["summary", "per-class", "confusion"]
    assert "No image of the evaluated split is misclassified." in render_html(report)


def test_max_images_bounds_the_thumbnails_and_the_size(store):
    run = store.load("run")
    sizes = {}
    for n in (0, 10, 40):
        html = render_html(build_report(run, max_images=n))
        thumbs = len(re.findall(r'<img src="data:image/(?:png|jpeg);base64,[^"]+" alt="[^"]*"(?! width)', html))
        assert thumbs <= n
        sizes[n] = len(html)
    assert sizes[0] < sizes[10] < sizes[40]
    with pytest.raises(ValueError, match="--max-images must be 0 or more"):
        build_report(run, max_images=-1)


def test_a_hundred_classes_keep_the_matrix_to_twenty_classes(tmp_path):
    store = RunStore(tmp_path)
    run = make_synthetic_run(store, "many", n=3000, n_classes=120, seed=1, accuracy=0.7)
    report = build_report(run, max_images=20)
    html = render_html(report)
    confusion = next(s for s in report.sections if s.key == "confusion")
    assert "The 20 classes of the largest confusions (then those most involved in errors) of 120" in \
        confusion.blocks[0].caption
    weakest, every = tables(html, "per-class")
    f1 = run.per_class["f1"].to_numpy()
    assert len(every) == 120 and len(weakest) == max(12, int((f1 <= np.sort(f1)[11]).sum()))  # ties at the cut
    assert [r["cells"][0][0] for r in weakest] == [run.classes[i] for i in worst_classes(run.per_class)]
    # the shares of a part of the matrix are of the whole row (every class of the row counted)
    preds, mask = run.predictions, run.eval_mask()
    cm = M.confusion_matrix(preds["true"][mask], preds["predicted"][mask], n_classes=120)
    i = int(matrix_classes(cm)[0])
    name = run.classes[i]
    assert f"{name} → {name}: {cm[i, i]:,} ({cm[i, i] / cm[i].sum():.1%})" in html
    cm = np.array([[5, 1, 0], [0, 5, 0], [3, 0, 5]])
    assert matrix_classes(cm, top=2).tolist() == [0, 2]


def test_markdown_writes_report_md_and_its_pictures(store, tmp_path):
    report = build_report(store.load("run"), max_images=8)
    files = write_markdown(report, tmp_path / "md")
    text = (tmp_path / "md" / "report.md").read_text()
    assert files[0].name == "report.md" and all(f.exists() for f in files)
    for ref in re.findall(r"\]\((images/[^)]+)\)", text):
        assert (tmp_path / "md" / ref).is_file()
    assert "<script>" not in text and md("<script>") in text
    assert "\u202e" not in text
    assert md("a & \"b\"") == 'a \\& "b"'
    # a backslash before a digit is no escape in CommonMark: "| Accuracy | \\58.04% |" showed it
    assert re.search(r"\\\d", text) is None and re.search(r"\| \d+\.\d+%? \|", text)


def test_cli_html_is_the_dashboards_bytes_and_the_csv_form_is_unchanged(store, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", "run", "--store", str(store.root), "--html", str(out)]) == 0
    assert out.read_bytes() == report_html_bytes(store.load("run"))
    assert "Wrote the report of run 'run'" in capsys.readouterr().err
    assert main(["report", "run", "--store", str(store.root)]) == 0
    assert capsys.readouterr().out == store.load("run").per_class_csv().decode()
    assert main(["report", "run", "--store", str(store.root), "--html", str(out), "--max-images", "-2"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-images must be 0 or more. Received: -2"
    assert main(["report", "run", "--store", str(store.root), "--compare", "base"]) == 2
    assert "go with --html FILE or --markdown DIR" in capsys.readouterr().err
    make_synthetic_run(store, "three", n=100, n_classes=3, seed=0)
    assert main(["report", "run", "--store", str(store.root), "--html", str(out), "--compare", "three"]) == 2
    assert "different classes" in capsys.readouterr().err
    assert main(["report", "run", "--store", str(store.root), "--markdown", str(tmp_path / "md")]) == 0
    assert (tmp_path / "md" / "report.md").is_file()


def test_verdicts_and_metrics_as_reviewed(tmp_path):
    store = RunStore(tmp_path)
    run = make_synthetic_run(store, "rev", n=300, n_classes=4, seed=0, accuracy=0.8)
    wrong = np.flatnonzero(run.eval_mask() & ~run.predictions["correct"].to_numpy())
    review = RunReview(run)
    row = int(wrong[0])
    review.mark_row(row, "label-wrong", label=run.classes[int(run.predictions["predicted"].iat[row])],
                    note="<b>looks like</b> \u202ea bag", reviewer="<script>eve</script>")
    html = render_html(build_report(run, max_images=0))
    reviewed = review.reviewed_metrics().summary
    assert 'id="verdicts"' in html
    assert f"the accuracy is {reviewed['accuracy']:.2%} against {reviewed['given_accuracy']:.2%}" in html
    assert "&lt;script&gt;eve&lt;/script&gt;" in html and "&lt;b&gt;looks like&lt;/b&gt; &lt;U+202E&gt;a bag" in html


def test_building_a_report_imports_neither_tensorflow_nor_umap(store):
    script = ("import sys; from core.run.store import RunStore; from core.report.document import report_html_bytes; "
              f"report_html_bytes(RunStore({str(store.root)!r}).load('run'), max_images=5); "
              "print(sorted(m for m in ('tensorflow', 'keras', 'umap') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_markdown_rewritten_in_the_same_folder_keeps_no_stale_picture_and_no_other_file(store, tmp_path):
    folder = tmp_path / "md"
    write_markdown(build_report(store.load("run"), max_images=12), folder)
    (folder / "images" / "mine.png").write_bytes(b"user file")
    files = write_markdown(build_report(store.load("run"), max_images=0), folder)
    pictures = sorted(p.name for p in (folder / "images").iterdir())
    assert pictures == sorted([f.name for f in files[1:]] + ["mine.png"])
    assert "Colours: " in (folder / "report.md").read_text()


def test_the_training_section_says_what_corrections_it_learnt_from(tmp_path):
    store = RunStore(tmp_path)
    arrays = synthetic_arrays(60, 3, seed=4)
    run = write_run(store, "fixed", classes=list("abc"), y_true=arrays["y_true"], probs=arrays["probs"],
                    paths=arrays["paths"], splits=arrays["splits"],
                    training={"recipe": {"recipe": "small-cnn"}, "corrections": {
                        "file": "/home/me/<i>fix.csv", "sha256": "ab" * 32, "relabelled": 12, "dropped": 3}})
    training = next(s for s in build_report(run, max_images=0).sections if s.key == "training")
    assert ("Trained on the corrections of <i>fix.csv: 12 images relabelled, 3 excluded (SHA-256 abababababab...)."
            in training.narrative)
    assert "&lt;i&gt;fix.csv" in render_html(build_report(run, max_images=0))  # shown as text
