"""The Diagnose page, its cards and the diagnosis columns of the Errors page and of every gallery.

Run "planted" (600 synthetic images of 10 classes, ~170 in 'test', the evaluated
split) has 12 'test' images that are exact copies of 'train' images; the first
4 copies carry another label than their original. Run "bare" has no pixels, so
the kinds that need them record why they cannot run. A folder run is analysed
with a tiny Keras model (tests/conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import diagnose
from core.diagnose.properties import finding_rows
from core.run import derived
from core.run.config import AnalysisConfig
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run, synthetic_arrays
from core.run.write import write_run
from dashboard import diagnose_ui, figures, ui
from tests.dashboard import apptest
from tests.dashboard.apptest import APP, artifacts_dir, open_address

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 90
N_COPIES, N_DISAGREE = 12, 4


def planted_run(store: RunStore, run_id: str, *, n: int = 600, n_classes: int = 10, seed: int = 0,
                class_names: list[str] | None = None):
    """A synthetic run whose first 12 'test' images copy the first 12 'train' images (labels kept for all
    but the first 4). Returns (run, copied test rows, disagreeing test rows)."""
    a = synthetic_arrays(n, n_classes, accuracy=0.8, seed=seed)
    splits, y = a["splits"], a["y_true"].copy()
    train, test = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
    rng = np.random.default_rng(seed)
    # a texture of its own per image, so that only the planted copies match
    images = np.clip(a["images"].astype(np.int16) + rng.integers(-40, 40, a["images"].shape), 0, 255)
    images = images.astype(np.uint8)
    src, dst = train[:N_COPIES], test[:N_COPIES]
    images[dst] = images[src]
    y[dst] = y[src]
    y[dst[:N_DISAGREE]] = (y[src[:N_DISAGREE]] + 1) % n_classes
    classes = class_names or [f"class_{i:03d}" if n_classes > 26 else chr(ord("a") + i) * 3
                              for i in range(n_classes)]
    run = write_run(store, run_id, classes=classes, y_true=y, probs=a["probs"], paths=a["paths"], splits=splits,
                    embeddings=a["embeddings"], projection=a["projection"], images=images,
                    model={"path": "synthetic/planted.keras", "sha256": "0" * 64, "format": "synthetic"},
                    data={"name": "synthetic", "kind": "synthetic", "path": None, "root": None, "n_images": n,
                          "images_in_run": True},
                    layer="synthetic", config=AnalysisConfig(model_sha256="0" * 64,
                                                             data_fingerprint=f"planted-{run_id}", projection=None),
                    projection_info={"method": "synthetic"})
    return run, dst, dst[:N_DISAGREE]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnose-store")
    store = RunStore(root)
    planted_run(store, "planted")
    planted_run(store, "computed")
    make_synthetic_run(store, "bare", n=300, n_classes=4, with_images=False)
    diagnose.run_diagnoses(store.load("computed"))
    with artifacts_dir(root):
        yield store


def open_page(page: str, run_id: str) -> AppTest:
    return apptest.open_page(page, run_id, timeout=TIMEOUT)


def texts(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
                     + [s.value for s in at.subheader]).replace("\\", "").replace("\u2060", "")


# --------------------------------------------------------------------------- cards on arrays

@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_cards_find_the_planted_copies_and_rank_by_errors_explained(store):
    run = store.load("computed")
    _, copied, disagreeing = planted_run(RunStore(store.root / "scratch"), "again")  # same seed: same rows
    findings = diagnose_ui.stored_findings(run)
    assert all(findings[name] is not None for name in diagnose.DIAGNOSES)
    cards = diagnose_ui.build_cards(run, findings, run.eval_mask())
    by_key = {c.key: c for c in cards}
    correct = run.predictions["correct"].to_numpy(bool)
    # leaks: the copied test images that are misclassified or whose copy disagrees, no other image
    expected_leaks = {int(r) for r in copied if not correct[r] or r in set(disagreeing)}
    assert set(by_key["leaks"].rows.tolist()) == expected_leaks
    assert by_key["leaks"].explains == int((~correct[list(expected_leaks)]).sum())
    # copies whose labels disagree: exactly the 4 planted pairs, both images of each
    train = np.flatnonzero(run.predictions["split"].to_numpy() == "train")[:N_DISAGREE]
    assert set(by_key["disagreeing_copies"].rows.tolist()) == set(disagreeing.tolist()) | set(train.tolist())
    assert set(by_key["duplicates"].rows.tolist()) == (set(copied.tolist())
                                                       | set(np.flatnonzero(run.predictions["split"] == "train")
                                                             [:N_COPIES].tolist()))
    # suspected label errors: the flagged rows, highest score first
    table = findings["label_issues"].table("label_issues")
    scores = dict(zip(table["row"], table["score"]))
    rows = by_key["label_issues"].rows
    assert rows.size == int(table["is_issue"].sum())
    assert np.all(np.diff([scores[r] for r in rows]) <= 0)
    # ranking: errors explained, never increasing
    assert [c.explains for c in cards] == sorted((c.explains for c in cards), reverse=True)


def test_row_findings_and_caption(store):
    run = store.load("computed")
    findings = diagnose_ui.stored_findings(run)
    table = diagnose_ui.row_findings(run, findings)
    copies = findings["duplicates"].table("eval_with_train_copy")["row"].to_numpy()
    assert sorted(np.flatnonzero(table["train_copy"]).tolist()) == sorted(set(copies.tolist()))
    issues = findings["label_issues"].table("label_issues")
    top = issues.sort_values("score", ascending=False).iloc[0]
    assert table["label_issue"].iat[int(top["row"])] == pytest.approx(top["score"])
    assert table["suggested"].iat[int(top["row"])] == top["suggested_label"]
    assert table["label_issue"].isna().sum() == len(run.predictions) - len(issues)  # only the evaluated split


def test_property_finding_rows_follow_the_class_thresholds():
    import pandas as pd

    # class 'a' has its low brightness tail at 0.2, class 'b' at 0.3; only rows at or under them count
    props = pd.DataFrame({"row": [0, 1, 2, 3, 4, 5], "true_label": ["a", "a", "a", "b", "b", "b"],
                          "brightness": [0.1, 0.2, 0.5, 0.3, 0.25, 0.9]})
    rates = pd.DataFrame({"class": ["a", "b", "(all classes)"], "property": ["brightness"] * 3,
                          "low_threshold": [0.2, 0.3, np.nan], "high_threshold": [0.5, 0.8, np.nan]})
    one = pd.Series({"class": "a", "property": "brightness", "side": "low"})
    assert finding_rows(props, rates, one).tolist() == [0, 1]  # darkest first
    every = pd.Series({"class": "(all classes)", "property": "brightness", "side": "low"})
    assert finding_rows(props, rates, every).tolist() == [0, 1, 4, 3]
    high = pd.Series({"class": "(all classes)", "property": "brightness", "side": "high"})
    assert finding_rows(props, rates, high).tolist() == [5, 2]


def test_calibration_figures_draw_the_tables(store):
    stored = diagnose_ui.stored_findings(store.load("computed"))["calibration"]
    reliability = stored.table("reliability")
    fig = figures.reliability_figure(reliability)
    raw = reliability[(reliability["probabilities"] == "raw") & (reliability["count"] > 0)]
    drawn = [t for t in fig.data if t.name == "before scaling"][0]
    assert np.allclose(sorted(drawn.x), sorted(raw["mean_confidence"]))
    hist = stored.table("confidence_histogram")
    fig = figures.confidence_histogram_figure(hist, probabilities="scaled")
    wrong = [t for t in fig.data if t.name == "wrong"][0]
    assert int(np.sum(wrong.y)) == int(hist[hist["probabilities"] == "scaled"]["n_wrong"].sum()) > 0
    # the wrong ones on their own scale (issue 24: stacked under the right ones they could not be seen)
    right = [t for t in fig.data if t.name == "right"][0]
    assert (right.yaxis, wrong.yaxis) == ("y", "y2") and right.xaxis != wrong.xaxis
    assert fig.layout.xaxis2.matches == "x" or fig.layout.xaxis.matches == "x2"  # one confidence axis


# --------------------------------------------------------------------------- the pages

@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_compute_button_runs_the_diagnoses_then_shows_ranked_cards(store):
    at = open_page("diagnose", "planted")
    assert "Not computed yet" in texts(at)
    at.button(key="diagnose-compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert store.load("planted").derived_info("duplicates") is not None
    subheaders = [s.value.replace("\\", "") for s in at.subheader]
    assert subheaders and subheaders[0].startswith("1. ")
    assert any("Copies whose labels disagree" in s for s in subheaders)
    assert "Compute diagnoses" not in [b.label for b in at.button]
    assert "Out of date" not in texts(at)
    at.button(key="diagnose-show-leaks").click().run()
    assert not at.exception, [e.value for e in at.exception]
    run = store.load("planted")
    card = {c.key: c for c in diagnose_ui.build_cards(run, diagnose_ui.stored_findings(run), run.eval_mask())}
    shown = [img.proto.imgs[0].alt for img in at.get("image")]
    assert shown == run.predictions["path"].to_numpy()[card["leaks"].rows[:24]].tolist()
    assert "copy in train" in texts(at)  # the caption line registered for every gallery
    # an input recomputed: what reads it is out of date, said so, not "not computed yet"
    derived.get(run, "image_scan", force=True)
    at = open_page("diagnose", "planted")
    assert "Not computed yet" not in texts(at)
    assert "Out of date (made by an older version of the tool, with other settings, or before what it reads was " \
           "recomputed): " in texts(at)
    assert "causes" in texts(at).split("Out of date", 1)[1].split("Compute diagnoses to bring", 1)[0]
    diagnose.run_diagnoses(store.load("planted"))  # current again for the tests after this one


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_kinds_that_cannot_run_say_why(store):
    at = open_page("diagnose", "bare")
    at.button(key="diagnose-compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    lines = [c.value.replace("\\", "") for c in at.caption if "cannot run on this run" in c.value.replace("\\", "")]
    assert any(line.startswith("duplicates: cannot run on this run:") for line in lines), lines
    assert any("Calibration" in s.value for s in at.subheader)  # the kinds that can run still show
    assert "Compute diagnoses" not in [b.label for b in at.button]  # a skip is not offered again


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_calibration_tiles_without_val_say_they_are_of_the_held_out_half(store):
    """Without val the temperature is fitted on half the evaluated split and judged on the other half:
    the 'before' tile then differs from the card's ECE (of the whole split) and says what it is of."""
    make_synthetic_run(store, "noval", n=300, n_classes=4, seed=5, with_images=False)  # train and test only
    assert "val" not in store.load("noval").splits
    diagnose.run_diagnoses(store.load("noval"), kinds=("calibration",))
    s = derived.get(store.load("noval"), "calibration", compute=False).summary
    at = open_page("diagnose", "noval")
    labels = [m.label for m in at.metric]
    assert f"ECE before temperature scaling ({s['n_held_out']:,} held-out images)" in labels, labels
    assert f"the ECE above, {s['ece']:.4f}, is of all {s['n_evaluated']:,}." in texts(at)


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_errors_page_filters_on_copy_in_train_and_label_issue(store):
    at = open_page("errors", "computed")
    run = store.load("computed")
    table = diagnose_ui.row_findings(run, diagnose_ui.stored_findings(run))
    errors = run.eval_mask() & ~run.predictions["correct"].to_numpy(bool)
    df = at.dataframe[0].value
    assert {"label issue", "copy in train", "slice", "suggested"} <= set(df.columns)
    assert len(df) == int(errors.sum())
    at.selectbox(key=ui.scoped(run, "errors-filter-copy")) \
        .set_value("yes").run()
    df = at.dataframe[0].value
    assert sorted(df["id"].tolist()) == sorted(np.flatnonzero(errors & table["train_copy"].to_numpy()).tolist())
    assert len(df) > 0 and df["copy in train"].all()
    at.selectbox(key=ui.scoped(run, "errors-filter-copy")) \
        .set_value("any").run()
    issue = table["label_issue"].fillna(-1).to_numpy()
    level = float(np.ceil((issue[errors].min() + issue[errors].max()) / 2 * 20) / 20)  # on the slider's grid
    at.slider(key=ui.scoped(run, "errors-filter-issue")) \
        .set_value(level).run()
    df = at.dataframe[0].value
    expected = errors & (issue >= level)
    assert expected.sum() < errors.sum()  # the filter removes some
    assert len(df) == int(expected.sum()) > 0


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_folder_run_diagnoses_in_the_page(tmp_path, image_tree, tiny_model_path):
    from core.data.datasets import load_dataset
    from core.run.analyze import analyze

    store = RunStore(tmp_path / "store")
    analyze(tiny_model_path, load_dataset(image_tree), store=store, run_id="folder", progress=False,
            projection=False)
    with artifacts_dir(store.root):
        at = open_page("diagnose", "folder")
        at.button(key="diagnose-compute").click().run()
        assert not at.exception, [e.value for e in at.exception]
        run = store.load("folder")
        stored = [name for name in diagnose.DIAGNOSES if run.derived_info(name) is not None]
        assert "image_scan" in stored  # the pixels were read from the folder's files
        said = texts(at)
        for name in set(diagnose.DIAGNOSES) - set(stored):
            assert f"{name}: cannot run on this run:" in said


LIGHT = """
import os, sys
from core.run.store import RunStore
from streamlit.testing.v1 import AppTest
os.environ["ARTIFACTS_DIR"] = sys.argv[1]
at = AppTest.from_file(sys.argv[2], default_timeout=60).run()
at.sidebar.selectbox(key="run_id").set_value("computed")
for page in ["diagnose", "errors"]:
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, (page, at.exception[0].value)
    if page == "diagnose":
        assert any("Leaks" in s.value for s in at.subheader), [s.value for s in at.subheader]
heavy = sorted(m for m in ("tensorflow", "keras", "umap") if m in sys.modules)
print("heavy:", heavy)
"""


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_reading_stored_findings_imports_no_tensorflow_or_umap(store, tmp_path):
    out = subprocess.run([sys.executable, "-c", LIGHT, str(store.root), APP], cwd=ROOT, capture_output=True,
                         text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "heavy: []" in out.stdout


# --------------------------------------------------------------------------- a planted error slice

SLICE_CLASSES = ["shirt", "t-shirt", "coat"]


def sliced_run(store: RunStore, run_id: str):
    """900 'test' images of 3 classes (as tests/core/diagnose/test_slices.py): 60 shirts sit apart in embedding
    space and are darker, and 42 of them are called t-shirt; 30 other mistakes are scattered.
    Returns (run, the 60 odd shirts' rows)."""
    rng = np.random.default_rng(0)
    n = 900
    y = np.arange(n) % 3
    x = np.eye(3, 8)[y] * 6 + rng.normal(0, 1, (n, 8))
    odd = np.flatnonzero(y == 0)[:60]
    x[odd] = np.eye(1, 8, 5) * 6 + rng.normal(0, 0.7, (60, 8))
    predicted = y.copy()
    predicted[odd[:42]] = 1
    other = rng.choice(np.flatnonzero(y != 0), 30, replace=False)
    predicted[other] = (y[other] + 1) % 3
    probs = np.full((n, 3), 0.05, np.float32)
    probs[np.arange(n), predicted] = 0.9
    images = np.random.default_rng(3).integers(60, 230, (n, 12, 12)).astype(np.uint8)
    images[odd] -= 55
    run = write_run(store, run_id, classes=SLICE_CLASSES, y_true=y, probs=probs,
                    paths=[f"test/{i:04d}.png" for i in range(n)], splits=np.full(n, "test"),
                    embeddings=x.astype(np.float32), images=images,
                    data={"name": "arrays", "kind": "synthetic", "path": None, "root": None, "images_in_run": True})
    return run, odd


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_slice_cards_and_the_errors_pages_slice_filter(tmp_path):
    store = RunStore(tmp_path / "sliced")
    run, odd = sliced_run(store, "sliced")
    diagnose.run_diagnoses(run, kinds=("image_scan", "image_properties", "error_slices"))
    findings = diagnose_ui.stored_findings(run)
    cards = diagnose_ui.build_cards(run, findings, run.eval_mask())
    stored = findings["error_slices"]
    first = stored.table("slices").iloc[0]
    members = stored.table("members")
    mine = members[members["slice_id"] == first["slice_id"]].sort_values("distance")
    card = [c for c in cards if c.key == f"slice-{int(first['slice_id'])}"][0]
    assert card.rows.tolist() == mine["row"].tolist() and set(card.rows) <= set(odd)  # nearest the centre first
    assert card.explains == int((~run.predictions["correct"].to_numpy()[card.rows]).sum()) > 0
    assert card.title == f"Error slice: {first['name']}"
    # the darker shirts also make a property finding whose rows are the shirts under their threshold
    props = [c for c in cards if c.key.startswith("property-")]
    assert props and any(set(c.rows) & set(odd) for c in props)
    with artifacts_dir(store.root):
        at = open_page("errors", "sliced")
        at.multiselect(key=ui.scoped(run, "errors-filter-slice")).set_value([first["name"]]).run()
        assert not at.exception, [e.value for e in at.exception]
        df = at.dataframe[0].value
        wrong = ~run.predictions["correct"].to_numpy()
        assert sorted(df["id"].tolist()) == sorted(r for r in card.rows.tolist() if wrong[r])
        assert (df["slice"] == first["name"]).all()


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_the_open_card_is_in_the_address_and_a_reload_opens_it_again(store):
    at = open_page("diagnose", "computed")
    at.button(key="diagnose-show-leaks").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert dict(at.query_params).get("card") in ("leaks", ["leaks"])
    again = open_address("diagnose", run="computed", card="leaks")
    assert any(b.label.startswith("Hide its") for b in again.button if b.key == "diagnose-show-leaks")
    assert again.get("image"), "the leaks card's gallery is open after the reload"
    wrong = open_address("diagnose", run="computed", card="nope")
    assert any("Address parameter 'card' ignored: card must be one of" in w.value.replace("\\", "") for w in wrong.warning)
    assert not any(b.label.startswith("Hide its") for b in wrong.button)
