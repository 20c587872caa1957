"""``python -m core review ...`` and ``train --corrections``: the commands, their files read back by the
loaders that use them, 8 CLI processes marking at once, and one-line errors.

Runs come from ``write_run`` on the ``image_tree`` fixture (cat/, dog/, fox/: five PNGs each, plus
dog/broken.jpg), see ``tests.core.test_review.folder_run``; only the tests that train or analyse
import TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.cli import main
from core.datasets import load_dataset
from core.review.reviewed import RunReview
from core.review.verdicts import CORRECTION_COLUMNS, ReviewDB
from core.store import RunStore
from core.synthetic import make_synthetic_run
from tests.core.test_review import folder_run

REPO = Path(__file__).resolve().parents[2]


def review(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["review", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


def test_mark_list_undo_export_and_metrics(store, image_tree, tmp_path, capsys):
    folder_run(RunStore(store), image_tree, "r1")
    common = ["--run", "r1", "--store", str(store)]
    rc, out, err = review(capsys, "mark", *common, "--path", "cat/cat_1.png", "--verdict", "label-wrong",
                          "--label", "dog", "--note", "pointy ears", "--reviewer", "ann")
    assert rc == 0 and out.strip() == "1" and "Marked 'cat/cat_1.png' label-wrong -> dog (verdict 1, by ann)" in err
    assert review(capsys, "mark", *common, "--path", "fox/fox_0.png", "--verdict", "exclude",
                  "--reviewer", "bob")[1].strip() == "2"
    assert review(capsys, "mark", *common, "--path", "fox/fox_0.png", "--verdict", "ambiguous",
                  "--reviewer", "cy")[1].strip() == "3"

    rc, out, err = review(capsys, "list", *common)
    listed = pd.read_csv(StringIO(out), keep_default_na=False)
    assert listed[["path", "verdict", "new_label", "reviewer"]].values.tolist() == [
        ["cat/cat_1.png", "label-wrong", "dog", "ann"], ["fox/fox_0.png", "ambiguous", "", "cy"]]

    rc, out, err = review(capsys, "undo", *common, "--path", "fox/fox_0.png", "--reviewer", "cy")
    assert rc == 0 and out.strip() == "4" and "Undid verdict 3 on 'fox/fox_0.png': now exclude" in err
    rc, out, _ = review(capsys, "list", *common, "--path", "fox/fox_0.png", "--history")
    history = pd.read_csv(StringIO(out), keep_default_na=False)
    assert history[["id", "action", "verdict", "reviewer"]].values.tolist() == [
        [2, "mark", "exclude", "bob"], [3, "mark", "ambiguous", "cy"], [4, "undo", "exclude", "cy"]]

    rc, _, err = review(capsys, "export", *common, "--out", str(tmp_path / "corrections.csv"))
    assert rc == 0 and "Wrote 2 corrections" in err
    exported = pd.read_csv(tmp_path / "corrections.csv", keep_default_na=False)
    assert exported.columns.tolist() == CORRECTION_COLUMNS
    assert exported[["path", "given_label", "new_label", "verdict", "note"]].values.tolist() == [
        ["cat/cat_1.png", "cat", "dog", "label-wrong", "pointy ears"], ["fox/fox_0.png", "fox", "", "exclude", ""]]

    rc, out, err = review(capsys, "metrics", *common)
    table = pd.read_csv(StringIO(out))
    assert (table["labels"] == "reviewed").all() and table["support"].sum() == 16 - 1  # fox_0 excluded
    assert table.set_index("class")["support"].to_dict() == {"cat": 4, "dog": 7, "fox": 4}
    assert "1 relabelled, 1 excluded" in err


def test_eight_cli_processes_marking_at_once_lose_nothing(store, image_tree):
    run = folder_run(RunStore(store), image_tree, "r1")
    paths = run.predictions["path"].tolist()[:8]
    procs = [subprocess.Popen([sys.executable, "-m", "core", "review", "mark", "--run", "r1", "--path", p,
                               "--verdict", "exclude", "--reviewer", f"r{j}", "--store", str(store)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for j, p in enumerate(paths)]
    ids = {}
    for j, proc in enumerate(procs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        ids[int(out.strip())] = paths[j]
    stored = ReviewDB(store / "verdicts.sqlite").history(RunReview(run).dataset)
    assert dict(zip(stored["id"].astype(int), stored["path"])) == ids
    assert sorted(ids) == list(range(1, 9))


def test_manifest_is_read_back_by_the_loader_and_by_analyze(store, image_tree, tiny_model_path, capsys):
    from core.analyze import analyze

    folder_run(RunStore(store), image_tree, "r1")
    common = ["--run", "r1", "--store", str(store)]
    for path, verdict, label in (("cat/cat_1.png", "label-wrong", "dog"), ("dog/dog_2.png", "exclude", None),
                                 ("fox/fox_0.png", "model-wrong", None)):
        assert review(capsys, "mark", *common, "--path", path, "--verdict", verdict,
                      *(["--label", label] if label else []))[0] == 0
    rc, _, err = review(capsys, "manifest", *common, "--out", str(image_tree / "fixed.csv"))
    assert rc == 0 and "Wrote 15 images" in err and "(1 relabelled, 1 excluded)" in err
    assert (image_tree / "fixed.csv").read_text().splitlines()[:2] == ["path,label,split", "cat/cat_0.png,cat,"]

    fixed = load_dataset(image_tree / "fixed.csv")
    assert fixed.kind == "csv" and len(fixed) == 15 and not fixed.skipped
    assert "dog/dog_2.png" not in fixed.paths
    assert fixed.classes[fixed.labels[fixed.paths.index("cat/cat_1.png")]] == "dog"
    assert set(fixed.splits) == {"all"}
    # a manifest in a folder above the root names the same images
    rc, _, _ = review(capsys, "manifest", *common, "--out", str(image_tree.parent / "up.csv"))
    up = load_dataset(image_tree.parent / "up.csv")
    assert rc == 0 and up.paths == [f"images/{p}" for p in fixed.paths] and (up.labels == fixed.labels).all()

    run = analyze(tiny_model_path, fixed, store=RunStore(store), run_id="fixed", projection=False, progress=False)
    assert run.n_images == 14  # the corrupt dog/broken.jpg is skipped with its reason, as from the folder
    preds = run.predictions.set_index("path")
    assert preds.loc["cat/cat_1.png", "true_label"] == "dog"
    # the same data set: the verdicts made in r1 show in the run on the corrected manifest
    seen = RunReview(run).verdicts()
    assert seen[["path", "verdict"]].values.tolist() == [["cat/cat_1.png", "label-wrong"],
                                                         ["fox/fox_0.png", "model-wrong"]]


def test_train_with_corrections_relabels_drops_and_records(store, image_tree, tmp_path, capsys):
    pytest.importorskip("keras")
    folder_run(RunStore(store), image_tree, "r1")
    common = ["--run", "r1", "--store", str(store)]
    for path, verdict, label in (("cat/cat_1.png", "label-wrong", "fox"), ("dog/dog_2.png", "exclude", None),
                                 ("dog/broken.jpg", "exclude", None), ("fox/fox_1.png", "ambiguous", None)):
        assert review(capsys, "mark", *common, "--path", path, "--verdict", verdict,
                      *(["--label", label] if label else []))[0] == 0
    corrections = tmp_path / "corrections.csv"
    assert review(capsys, "export", *common, "--out", str(corrections))[0] == 0

    capsys.readouterr()
    rc = main(["train", "--data", str(image_tree), "--recipe", "mlp", "--image-size", "8", "--epochs", "1",
               "--batch-size", "4", "--dense-units", "8,4", "--no-early-stopping", "--no-reduce-lr",
               "--name", "fixed", "--out", str(tmp_path / "model"), "--no-projection",
               "--corrections", str(corrections), "--store", str(store)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"Corrections {corrections.resolve()}: 1 relabelled, 2 dropped" in out.err
    expected = {"file": str(corrections.resolve()), "sha256": hashlib.sha256(corrections.read_bytes()).hexdigest(),
                "rows": 4, "relabelled": 1, "dropped": 2, "model_wrong": 0, "label_wrong": 1, "ambiguous": 1,
                "exclude": 2}
    assert json.loads((tmp_path / "model" / "recipe.json").read_text())["corrections"] == expected
    run = RunStore(store).load("fixed")
    assert run.training["corrections"] == expected
    assert run.n_images == 14 and "dog/dog_2.png" not in set(run.predictions["path"])
    assert run.predictions.set_index("path").loc["cat/cat_1.png", "true_label"] == "fox"
    reasons = dict(zip(run.skipped["path"], run.skipped["reason"]))
    assert reasons["dog/dog_2.png"] == reasons["dog/broken.jpg"] == "excluded in review (corrections.csv)"


@pytest.mark.parametrize("text, expected", [
    ("path,new_label,verdict\ncat/none.png,,exclude\n",
     "corrections.csv: 1 path(s) are not images of data set 'images' (16 images, e.g. 'cat/cat_0.png'): 'cat/none.png'"),
    ("path,new_label,verdict\ncat/cat_1.png,cow,label-wrong\n",
     "corrections.csv: unknown class(es) ['cow'] for data set 'images'. Classes: ['cat', 'dog', 'fox']"),
])
def test_train_with_bad_corrections_stops_before_training(store, image_tree, tmp_path, capsys, text, expected):
    (tmp_path / "corrections.csv").write_text(text)
    rc = main(["train", "--data", str(image_tree), "--recipe", "mlp", "--out", str(tmp_path / "model"),
               "--corrections", str(tmp_path / "corrections.csv"), "--store", str(store)])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and expected in err[-1]
    assert [line for line in err if "error" in line] == err[-1:]
    assert not (tmp_path / "model").exists()  # refused before anything was written


@pytest.mark.parametrize("args, expected", [
    (["mark", "--run", "nope", "--path", "x", "--verdict", "exclude"], "error: No run 'nope' in "),
    (["mark", "--run", "r1", "--path", "cat/x.png", "--verdict", "exclude"],
     "error: Path 'cat/x.png' is not an image of run 'r1' (16 images, e.g. 'cat/cat_0.png', 'cat/cat_1.png')"),
    (["mark", "--run", "r1", "--path", "cat/cat_0.png", "--verdict", "label-wrong"],
     "error: Verdict 'label-wrong' needs the right class (--label CLASS)"),
    (["mark", "--run", "r1", "--path", "cat/cat_0.png", "--verdict", "label-wrong", "--label", "cow"],
     "error: Unknown class 'cow' for run 'r1'. Classes: ['cat', 'dog', 'fox']"),
    (["mark", "--run", "r1", "--path", "cat/cat_0.png", "--verdict", "bad"],
     "error: Unknown verdict 'bad'. Verdicts: ['model-wrong', 'label-wrong', 'ambiguous', 'exclude']"),
    (["undo", "--run", "r1", "--path", "cat/cat_0.png"], "error: No verdict on 'cat/cat_0.png' to undo"),
    (["list", "--run", "r1", "--path", "cat/x.png"], "error: Path 'cat/x.png' is not an image of run 'r1'"),
    (["manifest", "--run", "r1", "--out", "{root}/sub/fixed.csv"], "error: A manifest in '{root}/sub' cannot name the "
                                                                   "images of '{root}'"),
    (["manifest", "--run", "syn", "--out", "{root}/fixed.csv"],
     "error: Run 'syn' is on the built-in data set 'synthetic', whose images are not files"),
])
def test_review_errors_are_one_line(store, image_tree, capsys, args, expected):
    folder_run(RunStore(store), image_tree, "r1")
    make_synthetic_run(RunStore(store), "syn", n=20, with_images=False, history=False)
    root = str(image_tree.resolve())
    rc, out, err = review(capsys, *[a.format(root=root) for a in args], "--store", str(store))
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith(expected.format(root=root))
    assert not (image_tree / "sub").exists()


def test_export_of_a_run_without_verdicts_is_an_empty_table_with_the_columns(store, image_tree, tmp_path, capsys):
    folder_run(RunStore(store), image_tree, "r1")
    rc, _, err = review(capsys, "export", "--run", "r1", "--out", str(tmp_path / "c.csv"), "--store", str(store))
    assert rc == 0 and "Wrote 0 corrections" in err
    assert (tmp_path / "c.csv").read_text().strip() == ",".join(CORRECTION_COLUMNS)
    assert np.asarray(pd.read_csv(tmp_path / "c.csv").columns).tolist() == CORRECTION_COLUMNS


def test_review_list_writes_formula_notes_inert(store, image_tree, capsys):
    folder_run(RunStore(store), image_tree, "r1")
    common = ["--run", "r1", "--store", str(store)]
    assert review(capsys, "mark", *common, "--path", "cat/cat_1.png", "--verdict", "exclude",
                  "--note", "=cmd|' /C calc'!A0", "--reviewer", "+ann")[0] == 0
    for extra in ([], ["--path", "cat/cat_1.png", "--history"]):
        rc, out, _ = review(capsys, "list", *common, *extra)
        listed = pd.read_csv(StringIO(out), keep_default_na=False)
        assert rc == 0 and listed[["note", "reviewer"]].values.tolist() == [["'=cmd|' /C calc'!A0", "'+ann"]]
