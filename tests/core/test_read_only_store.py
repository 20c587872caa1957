"""Issue 22 item 2: a read-only store (a read-only mount, a shared drive, an archived copy) is read by
every CLI command that only reads, and a command that would write says in one line why it cannot.

Before, the sweep at every CLI start opened ``.derived.lock`` for writing, so even ``runs`` failed
with ``[Errno 30] Read-only file system``; ``review list`` could not open the WAL verdicts file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.review.reviewed import RunReview
from core.review.verdicts import ReviewDB
from core.store import RunStore
from core.synthetic import make_synthetic_run
from tests.readonly import read_only

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def make_reviewed_store(root: Path, *, open_writer: bool = False) -> RunStore:
    """Run 'syn' (60 rows, 3 classes) and two verdicts in a WAL verdicts file."""
    store = RunStore(root)
    run = make_synthetic_run(store, "syn", n=60, n_classes=3, seed=0)
    db = ReviewDB.for_store(store.root)
    review = RunReview(run, db)
    review.mark_row(0, "exclude", reviewer="ann")
    review.mark_row(1, "label-wrong", label=run.classes[(int(run.predictions["true"].iat[1]) + 1) % 3],
                    reviewer="ann", note="wrong")
    if not open_writer:
        db.close()  # the last connection checkpoints: no -wal/-shm left
    return store


@pytest.fixture(params=["closed", "live-writer"])
def frozen(request, tmp_path):
    """The store read-only; 'live-writer': copied while a writer still had the WAL file open."""
    store = make_reviewed_store(tmp_path / "data" / "store", open_writer=request.param == "live-writer")
    if request.param == "live-writer":
        assert (store.root / "verdicts.sqlite-wal").exists()
    with read_only(tmp_path / "data", tmp_path / "mnt") as seen:
        yield seen / "store"


@pytest.mark.slow
def test_every_read_command_works_on_a_read_only_store(frozen, tmp_path):
    store = str(frozen)
    for args in (["runs", "--store", store], ["report", "--store", store, "syn"],
                 ["errors", "--store", store, "syn"], ["review", "metrics", "--store", store, "--run", "syn"]):
        done = _cli(*args)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and "Errno" not in done.stderr, (args, done.stderr)
    listed = _cli("review", "list", "--store", store, "--run", "syn")
    assert [line.split(",")[3] for line in listed.stdout.splitlines()[1:]] == ["exclude", "label-wrong"]
    export = tmp_path / "corrections.csv"
    done = _cli("review", "export", "--store", store, "--run", "syn", "--out", str(export))
    assert done.returncode == 0, done.stderr
    assert len(export.read_text().splitlines()) == 3


@pytest.mark.slow
def test_a_write_to_a_read_only_store_says_why_in_one_line(frozen):
    store = str(frozen)
    for args in (["review", "mark", "--store", store, "--run", "syn", "--path", "train/0000002", "--verdict",
                  "exclude"],
                 ["delete", "--store", store, "syn"],
                 ["diagnose", "--store", store, "syn", "--force"]):
        done = _cli(*args)
        assert done.returncode == 2, (args, done.stderr[-2000:])
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and done.stderr.rstrip().endswith(errors[0]), (args, done.stderr)
        assert "read-only" in errors[0] and "Errno" not in errors[0] and "Traceback" not in done.stderr, errors
    assert "syn" in _cli("runs", "--store", store).stdout  # nothing was changed
