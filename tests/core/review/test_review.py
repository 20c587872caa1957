"""Review verdicts (core.review): storage, history and undo, identity across runs, metrics as reviewed,
corrections applied to a data set, and concurrent or killed writers.

Folder runs are written with ``write_run`` on a real image tree (``image_tree``: cat/, dog/, fox/, five
PNGs each) and made-up probabilities, so no model and no TensorFlow are needed. In every confusion
matrix rows are true classes and columns predicted ones.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from core.data.datasets import load_dataset
from core.review.corrections import apply_corrections, read_corrections
from core.review.reviewed import RunReview, reviewed_labels, reviewed_metrics, write_corrections
from core.review.verdicts import CORRECTION_COLUMNS, ReviewDB, ReviewError, canonical_path, dataset_identity
from core.run import metrics
from core.run.store import DataInfo, RunStore
from core.run.synthetic import make_synthetic_run
from core.run.write import write_run

REPO = Path(__file__).resolve().parents[3]


def folder_run(store: RunStore, data: str | Path, run_id: str, *, seed: int = 0):
    """A run over the data set at ``data`` with random (seeded) probabilities: a stand-in for a model."""
    dataset = load_dataset(data)
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(dataset.classes)), len(dataset)).astype(np.float32)
    return write_run(store, run_id, classes=dataset.classes, y_true=dataset.labels, probs=probs,
                     paths=dataset.paths, splits=dataset.splits,
                     data={**dataset.describe(), "fingerprint": dataset.fingerprint()},
                     model={"path": f"{run_id}.keras"})


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "store")


# --------------------------------------------------------------------------- storage

def test_new_database_is_wal_with_schema_version_and_append_only(store, image_tree):
    review = RunReview(folder_run(store, image_tree, "r1"))
    review.mark("cat/cat_0.png", "exclude", reviewer="ann")
    assert review.db.path == store.root / "verdicts.sqlite"
    con = sqlite3.connect(review.db.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    for statement in ("UPDATE verdicts SET verdict = 'ambiguous'", "DELETE FROM verdicts"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute(statement)
    # the CHECK constraints hold even for a writer that bypasses this module
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("INSERT INTO verdicts (dataset, path, action, verdict, reviewer, time) "
                    "VALUES ('d', 'p', 'mark', 'label-wrong', 'x', 't')")  # label-wrong without its label
    con.close()
    assert review.db.integrity_check() == "ok"


def test_reading_an_empty_store_creates_no_database(store, image_tree):
    review = RunReview(folder_run(store, image_tree, "r1"))
    assert review.verdicts().empty and review.history().empty and review.db.revision() == 0
    assert review.reviewed_metrics().summary["excluded"] == 0
    assert not review.db.path.exists()


def test_mark_and_undo_walk_back_one_verdict_at_a_time(store, image_tree):
    review = RunReview(folder_run(store, image_tree, "r1"))
    path = "dog/dog_1.png"
    first = review.mark(path, "label-wrong", label="fox", note="ears", reviewer="ann")
    second = review.mark(path, "exclude", reviewer="bob")
    assert review.db.state(review.dataset, path).verdict == "exclude"
    assert review.db.previous(review.dataset, path).id == first.id      # what it was before

    undo1 = review.undo(path, reviewer="cy")
    assert (undo1.action, undo1.undoes, undo1.restores) == ("undo", second.id, first.id)
    assert (undo1.verdict, undo1.label, undo1.note) == ("label-wrong", "fox", "ears")  # the first verdict is back
    undo2 = review.undo(path, reviewer="cy")
    assert (undo2.undoes, undo2.restores, undo2.verdict) == (first.id, None, None)  # back to no verdict
    assert review.verdicts().empty
    with pytest.raises(ReviewError, match="Nothing left to undo on 'dog/dog_1.png'"):
        review.undo(path)
    with pytest.raises(ReviewError, match="No verdict on 'cat/cat_0.png' to undo"):
        review.undo("cat/cat_0.png")

    third = review.mark(path, "ambiguous", reviewer="dan")
    undo3 = review.undo(path, reviewer="dan")
    assert (undo3.undoes, undo3.verdict) == (third.id, None)  # the mark before 'ambiguous' had been undone

    history = review.history(path)  # who changed this, and when: every row kept
    assert history["action"].tolist() == ["mark", "mark", "undo", "undo", "mark", "undo"]
    assert history["reviewer"].tolist() == ["ann", "bob", "cy", "cy", "dan", "dan"]
    assert history["time"].is_monotonic_increasing
    assert history["run"].eq("r1").all()


def test_verdicts_follow_the_images_across_runs_re_analysis_and_deletion(store, image_tree):
    vgg, resnet = folder_run(store, image_tree, "vgg16", seed=1), folder_run(store, image_tree, "resnet101", seed=2)
    RunReview(vgg).mark("fox/fox_2.png", "label-wrong", label="cat", reviewer="ann")
    seen = RunReview(resnet).verdicts()
    assert seen[["path", "verdict", "new_label", "given_label"]].values.tolist() == [
        ["fox/fox_2.png", "label-wrong", "cat", "fox"]]
    store.delete("vgg16")
    assert len(RunReview(store.load("resnet101")).verdicts()) == 1
    remade = folder_run(store, image_tree, "resnet101", seed=3)  # as analyze --force does: a new version
    assert RunReview(remade).verdicts()["path"].tolist() == ["fox/fox_2.png"]


def test_identity_is_the_data_root_not_the_fingerprint(store, image_tree):
    info = dict(name="images", kind="folder", path=str(image_tree), root=str(image_tree.resolve()),
                images_in_run=False)
    assert (dataset_identity(DataInfo(fingerprint="aaaa", **info))
            == dataset_identity(DataInfo(fingerprint="bbbb", **info)) == str(image_tree.resolve()))
    # a CSV manifest in the data root, with paths written differently, is the same data set
    folder = RunReview(folder_run(store, image_tree, "folder"))
    folder.mark("dog/dog_3.png", "exclude", reviewer="ann")
    (image_tree / "list.csv").write_text(
        "path,label\n./dog/dog_3.png,dog\n" + f"{image_tree.resolve() / 'cat' / 'cat_1.png'},cat\n")
    csv_review = RunReview(folder_run(store, image_tree / "list.csv", "from-csv"))
    assert csv_review.dataset == folder.dataset
    assert csv_review.verdicts()[["row", "path", "verdict"]].values.tolist() == [[0, "dog/dog_3.png", "exclude"]]
    assert csv_review.row(str(image_tree / "cat" / "cat_1.png")) == 1
    # built-in data: the name, wherever its files were found
    syn = make_synthetic_run(store, "syn", n=50, with_images=False, history=False)
    assert RunReview(syn).dataset == "synthetic:synthetic"


def test_canonical_path_examples():
    assert canonical_path("a/../b/./c.png", root="/d") == "b/c.png"
    assert canonical_path("/d/e/f.png", root="/d/") == "e/f.png"
    assert canonical_path("train/00001", root=None) == "train/00001"


@pytest.mark.parametrize("call, message", [
    (lambda r: r.mark("cat/cat_0.png", "wrong"), "Unknown verdict 'wrong'. Verdicts: ['model-wrong', "),
    (lambda r: r.mark("cat/cat_0.png", "label-wrong"), "Verdict 'label-wrong' needs the right class"),
    (lambda r: r.mark("cat/cat_0.png", "exclude", label="dog"),
     "A class (--label) goes only with verdict 'label-wrong'. Received: label='dog' with verdict='exclude'"),
    (lambda r: r.mark("cat/cat_0.png", "label-wrong", label="cow"), "Unknown class 'cow' for run 'r1'. Classes: "),
    (lambda r: r.mark("cat/cat_0.png", "label-wrong", label="cat"), "'cat/cat_0.png' is already labelled 'cat'"),
    (lambda r: r.mark("cat/nope.png", "exclude"), "Path 'cat/nope.png' is not an image of run 'r1' (16 images"),
    (lambda r: r.mark("../outside.png", "exclude"), "Path '../outside.png' is not an image of run 'r1'"),
    (lambda r: r.mark("cat/cat_0.png", "exclude", note="x" * 2001), "note is 2001 characters long"),
    (lambda r: r.mark("cat/cat_0.png", "exclude", note="a\x00b"), "note contains a NUL character"),
    (lambda r: r.mark("cat/cat_0.png", "exclude", reviewer=" "), "reviewer must not be empty. Received: ' '"),
    (lambda r: r.mark("cat/cat_0.png", "exclude", reviewer="a\nb"), "reviewer must be one line"),
    (lambda r: r.mark_row(99, "exclude"), "Row 99 is not in run 'r1' (it has 16 rows)"),
])
def test_bad_verdicts_are_refused_naming_the_value(store, image_tree, call, message):
    review = RunReview(folder_run(store, image_tree, "r1"))
    with pytest.raises(ReviewError) as err:
        call(review)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert review.db.revision() == 0  # nothing was written


def test_a_damaged_or_newer_database_gives_one_line(tmp_path):
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ReviewError, match="broken.sqlite: file is not a database"):
        ReviewDB(broken).mark(dataset="d", path="p", verdict="exclude")
    newer = tmp_path / "newer.sqlite"
    sqlite3.connect(newer).execute("PRAGMA user_version = 7").connection.close()
    with pytest.raises(ReviewError, match=r"newer.sqlite was written by a newer version \(schema 7"):
        ReviewDB(newer).history("d")


# --------------------------------------------------------------------------- numbers

def test_reviewed_labels_small_example():
    # rows: kept, relabelled 1 -> 2, excluded, ambiguous (kept with its label)
    labels, keep = reviewed_labels(np.array([0, 1, 2, 0]), ["", "label-wrong", "exclude", "ambiguous"],
                                   np.array([-1, 2, -1, -1]))
    assert labels.tolist() == [0, 2, 2, 0] and keep.tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="needs its new label"):
        reviewed_labels(np.array([0]), ["label-wrong"], np.array([-1]))


@pytest.mark.parametrize("seed", range(5))
def test_reviewed_metrics_equal_sklearn_on_the_corrected_rows(seed):
    rng = np.random.default_rng(seed)
    n, k = 300, 4
    y_true, y_pred = rng.integers(0, k, n), rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k), n)
    verdicts = rng.choice(["", "model-wrong", "label-wrong", "ambiguous", "exclude"], n, p=[.6, .1, .1, .1, .1])
    new = np.where(verdicts == "label-wrong", rng.integers(0, k, n), -1)
    result = reviewed_metrics(y_true, y_pred, probs, verdicts=verdicts, new_labels=new,
                              class_names=list("abcd"))
    keep = verdicts != "exclude"
    truth = np.where(verdicts == "label-wrong", new, y_true)[keep]
    assert result.summary["n"] == keep.sum()
    assert result.summary["accuracy"] == pytest.approx(accuracy_score(truth, y_pred[keep]))
    assert result.summary["given_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert result.summary["excluded"] == (~keep).sum()
    assert result.summary["relabelled"] == ((verdicts == "label-wrong") & (new != y_true)).sum()
    p, r, f, s = precision_recall_fscore_support(truth, y_pred[keep], labels=range(k), zero_division=0)
    np.testing.assert_allclose(result.per_class[["precision", "recall", "f1"]].to_numpy(), np.c_[p, r, f])
    assert result.per_class["support"].tolist() == s.tolist()
    assert (result.per_class["labels"] == "reviewed").all()


def test_run_metrics_as_reviewed_use_the_evaluation_split(store):
    run = make_synthetic_run(store, "syn", n=400, with_images=False, history=False)
    review = RunReview(run)
    preds = run.predictions
    test_rows = np.flatnonzero(preds["split"] == "test")
    wrong = [r for r in test_rows if not preds["correct"].iat[r]][:3]
    right = [r for r in test_rows if preds["correct"].iat[r]][:2]
    for r in wrong:  # the model was right after all: the label was wrong
        review.mark_row(r, "label-wrong", label=run.classes[int(preds["predicted"].iat[r])], reviewer="ann")
    for r in right:
        review.mark_row(r, "exclude", reviewer="ann")
    train_row = int(np.flatnonzero(preds["split"] == "train")[0])
    review.mark_row(train_row, "exclude", reviewer="ann")  # outside the evaluation split: no effect
    result = review.reviewed_metrics()
    n_test = len(test_rows)
    correct = int(preds["correct"].to_numpy()[test_rows].sum())
    assert result.summary["n"] == n_test - 2
    assert result.summary["accuracy"] == pytest.approx((correct + 3 - 2) / (n_test - 2))
    assert result.summary["given_accuracy"] == pytest.approx(run.accuracy)
    assert (result.summary["relabelled"], result.summary["excluded"], result.summary["split"]) == (3, 2, "test")
    given = metrics.per_class_table(preds["true"].to_numpy()[test_rows], preds["predicted"].to_numpy()[test_rows],
                                    run.classes)
    assert result.per_class["support"].sum() == given["support"].sum() - 2


# --------------------------------------------------------------------------- corrections

def test_corrections_export_and_apply_to_the_data_set(store, image_tree, tmp_path):
    review = RunReview(folder_run(store, image_tree, "r1"))
    review.mark("cat/cat_1.png", "label-wrong", label="dog", note='says "woof", twice', reviewer="ann")
    review.mark("dog/broken.jpg", "exclude", reviewer="ann")
    review.mark("fox/fox_0.png", "model-wrong", reviewer="bob")
    review.mark("fox/fox_1.png", "ambiguous", reviewer="bob")
    review.mark("fox/fox_1.png", "exclude", reviewer="cy")  # the latest verdict per image is exported
    out = tmp_path / "corrections.csv"
    assert write_corrections(review, out) == 4
    table = pd.read_csv(out, keep_default_na=False)
    assert table.columns.tolist() == CORRECTION_COLUMNS
    assert table[["path", "given_label", "new_label", "verdict", "reviewer"]].values.tolist() == [
        ["cat/cat_1.png", "cat", "dog", "label-wrong", "ann"],
        ["dog/broken.jpg", "dog", "", "exclude", "ann"],
        ["fox/fox_0.png", "fox", "fox", "model-wrong", "bob"],
        ["fox/fox_1.png", "fox", "", "exclude", "cy"]]
    assert table["note"][0] == 'says "woof", twice'

    dataset = load_dataset(image_tree)
    corrections = read_corrections(out)
    fixed, record = apply_corrections(dataset, corrections)
    assert len(fixed) == len(dataset) - 2
    assert "dog/broken.jpg" not in fixed.paths and "fox/fox_1.png" not in fixed.paths
    assert fixed.classes[fixed.labels[fixed.paths.index("cat/cat_1.png")]] == "dog"
    assert fixed.labels.tolist().count(0) == dataset.labels.tolist().count(0) - 1  # one cat fewer
    assert {"path": "fox/fox_1.png", "reason": "excluded in review (corrections.csv)"} in fixed.skipped
    import hashlib
    assert record == {"file": str(out.resolve()), "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
                      "rows": 4, "relabelled": 1, "dropped": 2, "model_wrong": 1, "label_wrong": 1,
                      "ambiguous": 0, "exclude": 2}
    assert dataset.classes[dataset.labels[dataset.paths.index("cat/cat_1.png")]] == "cat"  # input untouched


def test_a_note_or_reviewer_a_spreadsheet_would_run_is_exported_inert_and_the_file_still_applies(
        store, image_tree, tmp_path):
    review = RunReview(folder_run(store, image_tree, "formula"))
    review.mark("cat/cat_1.png", "label-wrong", label="dog", note='=HYPERLINK("http://evil.example","x")',
                reviewer="@bob")
    review.mark("fox/fox_0.png", "exclude", note="-2 px off, +noise", reviewer="ann")
    review.mark("dog/dog_0.png", "ambiguous", note="plain", reviewer="cy")
    out = tmp_path / "corrections.csv"
    assert write_corrections(review, out) == 3
    table = pd.read_csv(out, keep_default_na=False)
    assert table["note"].tolist() == ['\'=HYPERLINK("http://evil.example","x")', "plain", "'-2 px off, +noise"]
    assert table["reviewer"].tolist() == ["'@bob", "cy", "ann"]
    assert table["path"].tolist() == ["cat/cat_1.png", "dog/dog_0.png", "fox/fox_0.png"]  # read back as they are
    fixed, record = apply_corrections(load_dataset(image_tree), read_corrections(out))
    assert (record["relabelled"], record["dropped"]) == (1, 1)
    assert review.corrections()["note"].iloc[0].startswith("=")  # stored and shown as written


@pytest.mark.parametrize("text, message", [
    ("path,verdict\ncat/cat_1.png,exclude\n", "missing column(s) ['new_label']"),
    ("path,new_label,verdict\ncat/cat_1.png,,wrong\n", "bad.csv:2: unknown verdict 'wrong'"),
    ("path,new_label,verdict\ncat/cat_1.png,,label-wrong\n", "bad.csv:2: verdict 'label-wrong' for 'cat/cat_1.png' "
                                                             "without a new_label"),
    ("path,new_label,verdict\ncat/cat_1.png,,exclude\ncat/cat_1.png,,exclude\n",
     "bad.csv:3: 'cat/cat_1.png' is listed twice (also on line 2)"),
    ("path,new_label,verdict\ncat/cat_1.png,,exclude,extra\n", "bad.csv:2: 4 fields, the header has 3"),
    ("path,new_label,verdict\ncat/none.png,,exclude\n", "1 path(s) are not images of data set 'images'"),
    ("path,new_label,verdict\ncat/cat_1.png,cow,label-wrong\n", "unknown class(es) ['cow'] for data set 'images'"),
    # one image under two spellings was applied twice (counted as 2 relabelled, the last label winning)
    ("path,new_label,verdict\ncat/cat_1.png,dog,label-wrong\n./cat/cat_1.png,,exclude\n",
     "'cat/cat_1.png' and './cat/cat_1.png' are the same image ('cat/cat_1.png'); each image is corrected at "
     "most once"),
    # a field over the csv module's limit (128 KB) ended in a traceback
    ("path,new_label,verdict\ncat/cat_1.png,\"" + "x" * 200_000 + "\",exclude\n",
     "bad.csv:2: not a readable CSV row (field larger than field limit"),
])
def test_bad_corrections_files_are_refused(image_tree, tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ReviewError) as err:
        apply_corrections(load_dataset(image_tree), read_corrections(tmp_path / "bad.csv"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_corrections_file(tmp_path):
    with pytest.raises(ReviewError, match="Corrections file not found: '"):
        read_corrections(tmp_path / "none.csv")


# --------------------------------------------------------------------------- concurrent and killed writers

WRITER = """
import sys
from core.review.verdicts import ReviewDB
db, name, count = ReviewDB(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
for i in range(count):
    v = db.mark(dataset="d", path=f"{name}/{i}", verdict="exclude", note="x" * 200, reviewer=name)
    print(v.id, v.path, flush=True)  # acknowledged: committed to disk
"""


def _writer(db: Path, name: str, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(db), name, str(count)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _acknowledged(output: str) -> dict[int, str]:
    lines = [ln.split() for ln in output.splitlines() if ln and ln != "ready"]
    return {int(i): p for i, p in (ln for ln in lines if len(ln) == 2)}


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_eight_writers_lose_nothing_and_kill_9_loses_no_acknowledged_verdict(tmp_path):
    db_file = tmp_path / "verdicts.sqlite"
    steady = [_writer(db_file, f"w{j}", 40) for j in range(6)]
    victims = [_writer(db_file, f"victim{j}", 100_000) for j in range(2)]
    acked: dict[int, str] = {}
    for j, proc in enumerate(victims):
        seen = 0
        deadline = time.monotonic() + 60
        while seen < 15 + 10 * j and time.monotonic() < deadline:  # let it commit a while, then kill it mid-loop
            line = proc.stdout.readline()
            if not line:
                break
            if line.strip() != "ready":
                i, p = line.split()
                acked[int(i)] = p
                seen += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        acked.update(_acknowledged(proc.stdout.read()))  # the same buffered reader: nothing skipped
        assert proc.returncode == -signal.SIGKILL
        assert seen >= 15 + 10 * j, "the writer to kill never got going"
    for proc in steady:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        acked.update(_acknowledged(out))

    db = ReviewDB(db_file)
    assert db.integrity_check() == "ok"
    stored = db.history("d")
    by_id = dict(zip(stored["id"].astype(int), stored["path"]))
    assert all(by_id.get(i) == p for i, p in acked.items())  # every acknowledged verdict is there
    for j in range(6):  # the writers that were not killed: all 40, none lost
        assert set(stored.loc[stored["reviewer"] == f"w{j}", "path"]) == {f"w{j}/{i}" for i in range(40)}
    for j in range(2):  # a killed writer's rows: what it acknowledged, plus at most the one commit it could not
        rows = stored[stored["reviewer"] == f"victim{j}"]
        mine = sum(p.startswith(f"victim{j}/") for p in acked.values())
        assert len(rows) in (mine, mine + 1)
    assert stored["id"].is_unique
    assert db.mark(dataset="d", path="after", verdict="exclude").id == int(stored["id"].max()) + 1  # no lock left
