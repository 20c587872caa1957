"""``python -m core diagnose`` and ``label-issues``: CSVs written, results stored once and read back,
one-line errors, a failing kind skipped with its reason, and no TensorFlow or umap imported."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.cli import main
from core.diagnose import DIAGNOSES, load_kinds, run_diagnoses
from core.errors import UserError
from core.run import derived
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def store(tmp_path):
    store = RunStore(tmp_path / "store")
    make_synthetic_run(store, "syn", n=400, n_classes=4, with_images=True, history=False)
    return store


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_diagnose_stores_every_kind_once_and_writes_one_csv_per_finding(store, tmp_path, capsys):
    out = tmp_path / "findings"
    rc = main(["diagnose", "syn", "--store", str(store.root), "--out", str(out)])
    captured = capsys.readouterr()
    run = store.load("syn")
    computed = {info.name for info in run.derived_infos()}
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped ")]
    assert rc == (1 if skipped else 0)
    assert computed | {line.split()[1].rstrip(":") for line in skipped} == set(DIAGNOSES)
    assert {"label_issues", "calibration"} <= computed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["kinds"]) == computed and summary["run"] == "syn"
    for name in computed:  # one CSV per stored table, equal to the table
        stored = derived.get(run, name, compute=False)
        for file in stored.info.files:
            if file.endswith(".parquet"):
                csv = pd.read_csv(out / f"{name}.{file[:-8]}.csv", keep_default_na=False, na_values=[""])
                assert len(csv) == len(stored.table(file[:-8]))
    label_csv = pd.read_csv(out / "label_issues.label_issues.csv")
    assert label_csv["score"].is_monotonic_decreasing and len(label_csv) == run.splits["test"]
    assert "calibration: ECE" in captured.out and "label_issues:" in captured.out
    # a second call reads what is stored: the same derived folders, nothing recomputed
    folders = {i.name: i.folder for i in store.load("syn").derived_infos()}
    assert main(["diagnose", "syn", "--store", str(store.root), "--only", "label_issues,calibration"]) == 0
    assert {i.name: i.folder for i in store.load("syn").derived_infos()} == folders
    assert main(["diagnose", "syn", "--store", str(store.root), "--only", "calibration", "--force"]) == 0
    after = {i.name: i.folder for i in store.load("syn").derived_infos()}
    assert after["calibration"] != folders["calibration"] and after["label_issues"] == folders["label_issues"]


def test_label_issues_command_writes_the_ranked_csv(store, tmp_path, capsys):
    out = tmp_path / "issues.csv"
    assert main(["label-issues", "syn", "--store", str(store.root), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "given_label", "suggested_label", "score"]
    assert table["score"].is_monotonic_decreasing and len(table) == store.load("syn").splits["test"]
    assert (table["given_label"] != table["suggested_label"]).all()
    assert table["path"].str.startswith("test/").all()
    flagged = tmp_path / "flagged.csv"
    assert main(["label-issues", "syn", "--store", str(store.root), "--out", str(flagged), "--issues-only"]) == 0
    n_issues = derived.get(store.load("syn"), "label_issues", compute=False).summary["n_issues"]
    assert len(pd.read_csv(flagged)) == n_issues < len(table)
    capsys.readouterr()
    assert main(["label-issues", "syn", "--store", str(store.root)]) == 0  # stdout when no --out
    assert capsys.readouterr().out.splitlines()[0] == "path,given_label,suggested_label,score"


def test_user_errors_are_one_line_with_status_2(store, capsys):
    assert main(["diagnose", "nope", "--store", str(store.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: No run 'nope'")
    assert main(["diagnose", "syn", "--store", str(store.root), "--only", "label_issue"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: Unknown derived analysis 'label_issue'. Available: [")
    assert store.load("syn").derived_infos() == []  # nothing was computed before the refusal


def test_a_failing_kind_is_skipped_with_its_reason_and_the_others_still_run(store):
    @derived.register("test_always_fails", version=1)
    def _fails(run, config, progress):
        raise UserError(f"run {run.id!r} has no images of the needed kind")

    @derived.register("test_backwards_progress", version=1)
    def _backwards(run, config, progress):
        progress("almost", 0.9)
        progress("oops, more to do", 0.2)
        return derived.DerivedResult(summary={"n": run.n_images})

    run = store.load("syn")
    seen = []
    results = run_diagnoses(run, kinds=("test_always_fails", "test_backwards_progress", "calibration"),
                            progress=lambda message, fraction: seen.append(fraction))
    assert list(results) == ["test_backwards_progress", "calibration"]
    assert results.skipped == {"test_always_fails": "run 'syn' has no images of the needed kind"}
    assert seen == sorted(seen) and seen[-1] == 1.0  # one bar over the whole batch, never backwards
    at_90 = [f for f in seen if abs(f - 1.9 / 3) < 1e-9]
    assert len(at_90) == 2  # the second of three kinds at 90%, then its report of 20% held at 90%


def test_every_listed_diagnosis_is_a_registered_kind():
    load_kinds()
    assert len(set(DIAGNOSES)) == len(DIAGNOSES)
    for name in DIAGNOSES:
        assert derived.kind(name).name == name


SCRIPT = """
import sys
from core.cli import main
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run
make_synthetic_run(RunStore(sys.argv[1]), "syn", n=300, n_classes=3, history=False)
rc = main(["diagnose", "syn", "--store", sys.argv[1], "--out", sys.argv[2]])
rc2 = main(["label-issues", "syn", "--store", sys.argv[1], "--out", sys.argv[2] + "/issues.csv"])
print("rc", rc, rc2)
print("heavy:", sorted(m for m in ("tensorflow", "keras", "umap", "torch") if m in sys.modules))
"""


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_diagnose_imports_neither_tensorflow_nor_umap(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "s"), str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)})
    assert "rc " in done.stdout, done.stderr[-2000:]
    assert "heavy: []" in done.stdout, done.stdout
    assert (tmp_path / "o" / "issues.csv").is_file() and (tmp_path / "o" / "summary.json").is_file()
    assert np.isfinite(json.loads((tmp_path / "o" / "summary.json").read_text())
                       ["kinds"]["calibration"]["summary"]["ece"])


def test_progress_in_a_log_is_one_line_per_step_not_a_redraw_per_message(capsys):
    from core.diagnose import stderr_progress

    with stderr_progress("diagnose r") as progress:  # pytest's stderr is no terminal, as a log or a pipe
        for i in range(500):
            progress(f"image scan: {i:,}/500 images", 0.1 + 0.3 * i / 500)
        progress("image scan: done", 0.4)
        progress("duplicates: starting", 0.4)
        progress("duplicates: verifying 12 pairs", 0.9)
    assert capsys.readouterr().err.splitlines() == [
        "diagnose r:  10% image scan: 0/500 images", "diagnose r:  40% duplicates: starting"]


def test_a_bug_in_a_kind_is_not_recorded_as_a_skip(store):
    """Only a user error (or an OSError) is a skip: a KeyError inside a kind is a bug and stops the batch
    with its traceback instead of reading as 'skipped: KeyError'."""
    @derived.register("test_buggy", version=1)
    def _buggy(run, config, progress):
        return {}["missing column"]

    with pytest.raises(KeyError, match="missing column"):
        run_diagnoses(store.load("syn"), kinds=("test_buggy",))
