"""Review verdicts: what people decide about images, kept in one SQLite file, and what follows.

A *verdict* is one reviewer's decision about one image:

* ``model-wrong``: the given label is right, the model is wrong;
* ``label-wrong``: the given label is wrong; ``label`` names the right class;
* ``ambiguous``: no single class fits (kept, with its given label);
* ``exclude``: the image is unusable (corrupt, off-topic, a duplicate): it
  leaves the metrics as reviewed, the corrected manifest and training.

Storage. This module alone owns ``<store>/verdicts.sqlite`` (the standard
library's ``sqlite3``; no server). WAL mode, so readers never block the
writer; one short ``BEGIN IMMEDIATE`` transaction per verdict, retried after
short random pauses while another process holds the write lock (SQLITE_BUSY),
so concurrent writers wait their turn instead of failing;
``synchronous=FULL``, so a verdict whose id has been returned survives a
killed process and a power cut; ``PRAGMA user_version`` numbers the schema
and drives upgrades; every value is bound with ``?``, never formatted into
SQL. Verdicts are *what the user decided*, not a cache: they are never
computed again, so they live beside the runs, not in one.

Identity. A verdict is keyed by the data set's identity and the image's
path, not by the run, so it survives re-analysis (``--force``) and deleted
runs, and shows in every run on the same images (a VGG16 run and a
ResNet101 run). The identity (``dataset_identity``) is the resolved data
root for images that are files: the class folder tree, the flat folder, or
the folder of a CSV manifest (its paths are relative to that folder); for
built-in data sets it is ``<kind>:<name>`` (``fashion-mnist:fashion-mnist``).
It is not the data fingerprint, which changes whenever a file is relabelled
or touched. Paths are the run's paths relative to that root, normalised
(``./cat/1.png`` and ``<root>/cat/1.png`` are ``cat/1.png``), so a CSV
manifest written by ``write_manifest`` into the data root is the same data
set as the folder it came from, and its verdicts follow it.

History. Rows are only ever appended (triggers refuse UPDATE and DELETE).
The current verdict of an image is its newest row. ``undo`` appends a row
that restores the state before the newest verdict still in force (repeated
undos walk back one verdict at a time); such a row has ``verdict`` NULL
when it restores "no verdict". "What it was before" (``previous``) and "who
changed this" (``history``) are queries.

``RunReview`` is a run seen through the verdicts (mark by path or row, the
current verdicts aligned with the run's rows, corrections, the manifest,
metrics as reviewed), so that pages built on it stay thin. The numbers are
pure functions on arrays (``reviewed_labels``, ``reviewed_metrics``), and
``apply_corrections`` is what ``train --corrections`` does to a data set.
Nothing here imports TensorFlow or umap.
"""

from __future__ import annotations

import csv
import datetime as _dt
import getpass
import hashlib
import io
import os
import posixpath
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError
from core.store import DataInfo, Run, RunStore

VERDICTS = ("model-wrong", "label-wrong", "ambiguous", "exclude")
DB_FILE = "verdicts.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 0.002       # SQLite's own busy handler: a short wait, then our retry loop takes over
RETRY_FOR_S = 60.0           # how long a verdict waits for the write lock before giving up
MAX_NOTE = 2000
MAX_REVIEWER = 100
MAX_PATH = 4096
CORRECTION_COLUMNS = ["path", "given_label", "new_label", "verdict", "note", "reviewer", "time"]
VERDICT_COLUMNS = ["id", "path", "action", "verdict", "label", "note", "reviewer", "time", "undoes",
                   "restores", "run", "given_label"]

_SCHEMA_V1 = """
CREATE TABLE verdicts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset     TEXT NOT NULL,
    path        TEXT NOT NULL,
    action      TEXT NOT NULL CHECK (action IN ('mark', 'undo')),
    verdict     TEXT CHECK (verdict IS NULL
                            OR verdict IN ('model-wrong', 'label-wrong', 'ambiguous', 'exclude')),
    label       TEXT,
    note        TEXT,
    reviewer    TEXT NOT NULL,
    time        TEXT NOT NULL,
    undoes      INTEGER REFERENCES verdicts (id),
    restores    INTEGER REFERENCES verdicts (id),
    run         TEXT,
    given_label TEXT,
    CHECK (action = 'undo' OR verdict IS NOT NULL),
    CHECK (COALESCE(verdict = 'label-wrong', 0) = (label IS NOT NULL))
);
CREATE INDEX verdicts_by_image ON verdicts (dataset, path, id);
CREATE TRIGGER verdicts_no_update BEFORE UPDATE ON verdicts
    BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END;
CREATE TRIGGER verdicts_no_delete BEFORE DELETE ON verdicts
    BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END;
"""
# user_version N -> the statements that bring a database from N to N + 1
_MIGRATIONS = {0: _SCHEMA_V1}
_COLUMNS_SQL = ("id, dataset, path, action, verdict, label, note, reviewer, time, undoes, restores, run, "
                "given_label")


class ReviewError(UserError):
    """A verdict, path, class, file or database that cannot be used (the message names the value)."""


@dataclass(frozen=True)
class Verdict:
    """One row of the history. ``verdict`` is None for an undo back to "no verdict"."""

    id: int
    dataset: str
    path: str
    action: str                # 'mark' or 'undo'
    verdict: str | None
    label: str | None          # the right class, for 'label-wrong'
    note: str | None
    reviewer: str
    time: str                  # ISO 8601, UTC
    undoes: int | None         # undo rows: the mark they cancel
    restores: int | None       # undo rows: the mark whose state they restore (None: no verdict)
    run: str | None            # the run it was made in (for the record; verdicts do not depend on it)
    given_label: str | None    # the image's label in that run


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def default_reviewer() -> str:
    """The OS user name (``getpass.getuser``), or 'unknown' where there is none."""
    try:
        return getpass.getuser() or "unknown"
    except (OSError, KeyError, ImportError):
        return "unknown"


def _text(value: str | None, *, what: str, limit: int, required: bool = False) -> str | None:
    """``value`` checked as user text: a string within ``limit`` characters, no NUL character."""
    if value is None or (not required and value == ""):
        if required:
            raise ReviewError(f"{what} is required")
        return None
    if not isinstance(value, str):
        raise ReviewError(f"{what} must be text. Received: {value!r}")
    if required and not value.strip():
        raise ReviewError(f"{what} must not be empty. Received: {value!r}")
    if len(value) > limit:
        raise ReviewError(f"{what} is {len(value)} characters long; at most {limit} are allowed. "
                          f"Received: {value[:40]!r}...")
    if "\x00" in value:
        raise ReviewError(f"{what} contains a NUL character. Received: {value[:60]!r}")
    return value


def _some(names: Sequence[str], limit: int = 20) -> str:
    """``names`` as a list for a message, the first ``limit`` of them."""
    names = list(names)
    return str(names[:limit])[:-1] + (f", ... ({len(names)} in all)]" if len(names) > limit else "]")


def check_verdict(verdict: str, label: str | None) -> None:
    """Raise ReviewError unless ``verdict`` is one of ``VERDICTS`` and ``label`` goes with it."""
    if verdict not in VERDICTS:
        raise ReviewError(f"Unknown verdict {verdict!r}. Verdicts: {list(VERDICTS)}")
    if verdict == "label-wrong" and not label:
        raise ReviewError("Verdict 'label-wrong' needs the right class (--label CLASS)")
    if verdict != "label-wrong" and label:
        raise ReviewError(f"A class (--label) goes only with verdict 'label-wrong'. "
                          f"Received: label={label!r} with verdict={verdict!r}")


# --------------------------------------------------------------------------- identity

def dataset_identity(data: DataInfo) -> str:
    """The key verdicts are stored under: the resolved data root, else ``<kind>:<name>``.

    >>> dataset_identity(DataInfo(name="images", kind="folder", path="images", root="/data/images",
    ...                           fingerprint="ab12", images_in_run=False))
    '/data/images'
    >>> dataset_identity(DataInfo(name="fashion-mnist", kind="fashion-mnist", path="/usr/share/x",
    ...                           root=None, fingerprint="cd34", images_in_run=True))
    'fashion-mnist:fashion-mnist'
    """
    if data.root:
        return posixpath.normpath(str(data.root))
    return f"{data.kind or 'data'}:{data.name}"


def canonical_path(path: str, *, root: str | None) -> str:
    """``path`` relative to ``root``, normalised without touching the disk; as is without a root.

    >>> canonical_path("./cat//1.png", root="/data")
    'cat/1.png'
    >>> canonical_path("/data/cat/1.png", root="/data")
    'cat/1.png'
    >>> canonical_path("train/00001", root=None)
    'train/00001'
    """
    if root is None:
        return path
    full = posixpath.normpath(posixpath.join(root, path))
    return posixpath.relpath(full, posixpath.normpath(root))


# --------------------------------------------------------------------------- the database

def review_db_path(store: RunStore | str | os.PathLike | None = None) -> Path:
    """``<store>/verdicts.sqlite`` (the default store when None)."""
    root = store.root if isinstance(store, RunStore) else RunStore(store).root
    return root / DB_FILE


class ReviewDB:
    """The verdicts file. Each call runs one short transaction on its thread's own connection,
    so one object serves any number of threads, and no lock is held between calls."""

    def __init__(self, path: str | os.PathLike, *, busy_timeout_s: float = BUSY_TIMEOUT_S,
                 retry_for_s: float = RETRY_FOR_S):
        self.path = Path(path).expanduser()
        self.busy_timeout_s, self.retry_for_s = busy_timeout_s, retry_for_s
        self._schema_ok = False
        self._local = threading.local()

    @classmethod
    def for_store(cls, store: RunStore | str | os.PathLike | None = None) -> "ReviewDB":
        return cls(review_db_path(store))

    def __repr__(self) -> str:
        return f"ReviewDB({str(self.path)!r})"

    # --- connections and transactions -------------------------------------
    def _connect(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use and kept: closing the last connection to a
        WAL database checkpoints and syncs it, which would cost every verdict a few fsyncs more.
        A connection holds no lock between transactions."""
        held = getattr(self._local, "connection", None)
        if held is not None and held[0] == os.getpid():  # never use a connection across fork()
            return held[1]
        if self.read_only():
            con = self._connect_read_only()
            self._local.connection = (os.getpid(), con)
            return con
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise ReviewError(f"{self.path}: cannot open the verdicts database ({exc})") from None
        try:
            # an acknowledged verdict is on disk; retried, since even this first statement can meet
            # "database is locked" while another process creates the file or switches it to WAL
            self._retrying(lambda: con.execute("PRAGMA synchronous=FULL"))
            if not self._schema_ok:
                self._prepare(con)
        except sqlite3.Error as exc:
            con.close()
            raise self._error(exc) from None
        except BaseException:
            con.close()
            raise
        self._local.connection = (os.getpid(), con)
        return con

    def read_only(self) -> bool:
        """Whether this process cannot write the verdicts file (a read-only mount, a folder or file
        without write permission): then it is read without creating or changing anything."""
        if self.path.exists():
            return not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK))
        folder = self.path.parent
        while not folder.exists() and folder.parent != folder:
            folder = folder.parent
        return not os.access(folder, os.W_OK)

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that writes nothing. A WAL file needs its -shm beside it, which SQLite cannot
        create in a read-only folder: then the file is opened as immutable (its last checkpoint; a
        WAL left behind by a writer that never closed is not seen, and said nowhere else)."""
        uri = self.path.resolve().as_uri()
        last: sqlite3.Error | None = None
        for options in ("mode=ro", "mode=ro&immutable=1"):
            try:
                con = sqlite3.connect(f"{uri}?{options}", uri=True, timeout=self.busy_timeout_s,
                                      isolation_level=None)
                version = con.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.Error as exc:
                last = exc
                continue
            if version > SCHEMA_VERSION:
                con.close()
                raise ReviewError(f"{self.path} was written by a newer version (schema {version}; this one "
                                  f"reads up to {SCHEMA_VERSION}): update the code")
            return con
        raise self._error(last) from None

    def _check_writable(self) -> None:
        if self.read_only():
            raise ReviewError(f"{self.path}: the store is read-only here (a read-only mount or no write "
                              "permission), so verdicts can be read but not recorded")

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        held = getattr(self._local, "connection", None)
        self._local.connection = None
        if held is not None and held[0] == os.getpid():
            held[1].close()

    def _prepare(self, con: sqlite3.Connection) -> None:
        """WAL mode and the current schema (created or upgraded under the write lock)."""
        version = self._retrying(lambda: con.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise ReviewError(f"{self.path} was written by a newer version (schema {version}; this one "
                              f"reads up to {SCHEMA_VERSION}): update the code")
        if version < SCHEMA_VERSION:
            mode = self._retrying(lambda: con.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise ReviewError(f"{self.path}: SQLite refused WAL mode (journal mode {mode!r}); "
                                  "put the store on a local file system")
            self._retrying(lambda: con.execute("BEGIN IMMEDIATE"))
            try:
                version = con.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
                while version < SCHEMA_VERSION:
                    for statement in _statements(_MIGRATIONS[version]):
                        con.execute(statement)
                    version += 1
                    # PRAGMA takes no bound parameters; the value is our own integer, never user data
                    con.execute(f"PRAGMA user_version = {int(version)}")
                con.execute("COMMIT")
            except BaseException:
                _rollback(con)
                raise
        self._schema_ok = True

    def _retrying(self, step):
        """Run ``step`` again while SQLite says the database is busy or locked, up to ``retry_for_s``.

        SQLite's own busy handler backs off to 100 ms sleeps, so under contention a waiting writer
        loses the lock again and again to newcomers (3 s waits with 8 writers); short random pauses
        (0.5-5 ms) keep every writer's chance about equal.
        """
        deadline = time.monotonic() + self.retry_for_s
        pause = 0.0005
        while True:
            try:
                return step()
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() > deadline:
                    raise self._error(exc) from None
                time.sleep(random.uniform(0.5, 1.0) * pause)
                pause = min(pause * 1.5, 0.005)
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None

    def _error(self, exc: sqlite3.Error) -> ReviewError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return ReviewError(f"{self.path}: the verdicts database stayed busy for {self.retry_for_s:g} s "
                               f"({text}); another process holds it")
        return ReviewError(f"{self.path}: {text}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with BEGIN IMMEDIATE (so reads inside it see a state no
        other writer can change before COMMIT); rolled back on any exception."""
        self._check_writable()
        con = self._connect()
        try:
            self._retrying(lambda: con.execute("BEGIN IMMEDIATE"))
            try:
                yield con
                self._retrying(lambda: con.execute("COMMIT"))
            except BaseException:
                _rollback(con)
                raise
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        if not self.path.exists():
            return []  # nothing decided yet: a reader (a page, 'review list') does not create the file
        con = self._connect()
        return self._retrying(lambda: con.execute(sql, tuple(params)).fetchall())

    # --- writing ----------------------------------------------------------
    def mark(self, *, dataset: str, path: str, verdict: str, label: str | None = None,
             note: str | None = None, reviewer: str | None = None, run: str | None = None,
             given_label: str | None = None) -> Verdict:
        """Record a verdict on ``path`` of ``dataset``; returns it once it is committed to disk.

        Knows nothing of classes or runs: ``RunReview.mark`` checks the path and the class.
        """
        dataset = _text(dataset, what="data set identity", limit=MAX_PATH, required=True)
        path = _text(path, what="path", limit=MAX_PATH, required=True)
        label = _text(label, what="label", limit=MAX_PATH)
        check_verdict(verdict, label)
        note = _text(note, what="note", limit=MAX_NOTE)
        reviewer = _text(reviewer if reviewer is not None else default_reviewer(), what="reviewer",
                         limit=MAX_REVIEWER, required=True)
        if any(c in reviewer for c in "\n\r\t"):
            raise ReviewError(f"reviewer must be one line. Received: {reviewer!r}")
        row = dict(dataset=dataset, path=path, action="mark", verdict=verdict, label=label, note=note,
                   reviewer=reviewer, time=_now(), undoes=None, restores=None, run=run, given_label=given_label)
        with self._write() as con:
            row["id"] = _insert(con, row)
        return Verdict(**row)

    def undo(self, *, dataset: str, path: str, reviewer: str | None = None, run: str | None = None) -> Verdict:
        """Cancel the newest verdict in force on ``path``: append a row restoring the state before it.

        Raises ReviewError when there is nothing to undo.
        """
        reviewer = _text(reviewer if reviewer is not None else default_reviewer(), what="reviewer",
                         limit=MAX_REVIEWER, required=True)
        with self._write() as con:
            latest = _latest(con, dataset, path)
            if latest is None:
                raise ReviewError(f"No verdict on {path!r} to undo")
            undone = latest.id if latest.action == "mark" else latest.restores
            if undone is None:
                raise ReviewError(f"Nothing left to undo on {path!r}: every verdict on it has been undone")
            before = _latest(con, dataset, path, below=undone)
            restores = None if before is None else (before.id if before.action == "mark" else before.restores)
            state = _by_id(con, restores) if restores is not None else None
            row = dict(dataset=dataset, path=path, action="undo",
                       verdict=state.verdict if state else None, label=state.label if state else None,
                       note=state.note if state else None, reviewer=reviewer, time=_now(), undoes=undone,
                       restores=restores, run=run, given_label=state.given_label if state else None)
            row["id"] = _insert(con, row)
        return Verdict(**row)

    # --- reading ----------------------------------------------------------
    def current(self, dataset: str, *, paths: Sequence[str] | None = None) -> pd.DataFrame:
        """The verdict in force on each image of ``dataset`` that has one (columns ``VERDICT_COLUMNS``),
        oldest first; only ``paths`` when given."""
        rows = self._read(
            f"SELECT {_COLUMNS_SQL} FROM verdicts WHERE id IN "
            "(SELECT MAX(id) FROM verdicts WHERE dataset = ? GROUP BY path) AND verdict IS NOT NULL "
            "ORDER BY id", (dataset,))
        table = _table(rows)
        if paths is not None:
            table = table[table["path"].isin(set(paths))].reset_index(drop=True)
        return table

    def state(self, dataset: str, path: str) -> Verdict | None:
        """The newest row of ``path`` (its ``verdict`` is None after an undo back to none), or None."""
        rows = self._read(f"SELECT {_COLUMNS_SQL} FROM verdicts WHERE dataset = ? AND path = ? "
                          "ORDER BY id DESC LIMIT 1", (dataset, path))
        return _verdict(rows[0]) if rows else None

    def previous(self, dataset: str, path: str) -> Verdict | None:
        """What it was before: the row before the newest one of ``path`` (None if there is none)."""
        rows = self._read(f"SELECT {_COLUMNS_SQL} FROM verdicts WHERE dataset = ? AND path = ? "
                          "ORDER BY id DESC LIMIT 2", (dataset, path))
        return _verdict(rows[1]) if len(rows) > 1 else None

    def history(self, dataset: str, *, path: str | None = None) -> pd.DataFrame:
        """Every row (who, when, what, undo links) of ``dataset``, or of one ``path``, oldest first."""
        if path is None:
            rows = self._read(f"SELECT {_COLUMNS_SQL} FROM verdicts WHERE dataset = ? ORDER BY id", (dataset,))
        else:
            rows = self._read(f"SELECT {_COLUMNS_SQL} FROM verdicts WHERE dataset = ? AND path = ? ORDER BY id",
                              (dataset, path))
        return _table(rows)

    def get(self, verdict_id: int) -> Verdict | None:
        rows = self._read(f"SELECT {_COLUMNS_SQL} FROM verdicts WHERE id = ?", (int(verdict_id),))
        return _verdict(rows[0]) if rows else None

    def revision(self) -> int:
        """The newest row's id (0 when empty): changes with every verdict, a cache key for pages."""
        rows = self._read("SELECT COALESCE(MAX(id), 0) FROM verdicts")
        return int(rows[0][0]) if rows else 0

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: 'ok' for a sound file."""
        con = self._connect()
        return "; ".join(str(r[0]) for r in self._retrying(lambda: con.execute("PRAGMA integrity_check").fetchall()))


def _rollback(con: sqlite3.Connection) -> None:
    if con.in_transaction:
        con.execute("ROLLBACK")


def _statements(script: str) -> list[str]:
    """Split a schema script into statements (CREATE TRIGGER bodies hold ';' of their own)."""
    out, buffer = [], ""
    for line in script.strip().splitlines():
        buffer += line + "\n"
        if sqlite3.complete_statement(buffer):
            out.append(buffer.strip())
            buffer = ""
    return out


def _insert(con: sqlite3.Connection, row: dict) -> int:
    cur = con.execute(
        "INSERT INTO verdicts (dataset, path, action, verdict, label, note, reviewer, time, undoes, restores, "
        "run, given_label) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (row["dataset"], row["path"], row["action"], row["verdict"], row["label"], row["note"], row["reviewer"],
         row["time"], row["undoes"], row["restores"], row["run"], row["given_label"]))
    return int(cur.lastrowid)


def _verdict(row: tuple) -> Verdict:
    (id_, dataset, path, action, verdict, label, note, reviewer, time_, undoes, restores, run, given) = row
    return Verdict(id=id_, dataset=dataset, path=path, action=action, verdict=verdict, label=label, note=note,
                   reviewer=reviewer, time=time_, undoes=undoes, restores=restores, run=run, given_label=given)


def _latest(con: sqlite3.Connection, dataset: str, path: str, *, below: int | None = None) -> Verdict | None:
    if below is None:
        row = con.execute(f"SELECT {_COLUMNS_SQL} FROM verdicts WHERE dataset = ? AND path = ? "
                          "ORDER BY id DESC LIMIT 1", (dataset, path)).fetchone()
    else:
        row = con.execute(f"SELECT {_COLUMNS_SQL} FROM verdicts WHERE dataset = ? AND path = ? AND id < ? "
                          "ORDER BY id DESC LIMIT 1", (dataset, path, below)).fetchone()
    return _verdict(row) if row else None


def _by_id(con: sqlite3.Connection, verdict_id: int) -> Verdict:
    return _verdict(con.execute(f"SELECT {_COLUMNS_SQL} FROM verdicts WHERE id = ?", (verdict_id,)).fetchone())


def _table(rows: list[tuple]) -> pd.DataFrame:
    table = pd.DataFrame([r[:1] + r[2:] for r in rows], columns=VERDICT_COLUMNS)  # drop 'dataset'
    for column in ("id", "undoes", "restores"):
        table[column] = table[column].astype("Int64")
    return table


# --------------------------------------------------------------------------- numbers (pure)

def reviewed_labels(y_true: np.ndarray, verdicts: Sequence[str | None], new_labels: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The labels as reviewed and the rows that remain.

    Parameters
    ----------
    y_true : int array (N,), the given labels.
    verdicts : N verdicts (None or '' for none).
    new_labels : int array (N,), the right class of 'label-wrong' rows (ignored elsewhere).

    Returns
    -------
    (labels, keep): int array (N,) with 'label-wrong' rows relabelled, and a
    boolean mask (N,) that is False for 'exclude' rows.

    >>> labels, keep = reviewed_labels(np.array([0, 1, 2, 0]), [None, "label-wrong", "exclude", "ambiguous"],
    ...                                np.array([-1, 2, -1, -1]))
    >>> labels.tolist(), keep.tolist()
    ([0, 2, 2, 0], [True, True, False, True])
    """
    y_true = np.asarray(y_true)
    verdict = np.asarray([v or "" for v in verdicts], dtype=object)
    new_labels = np.asarray(new_labels)
    if not (len(verdict) == len(new_labels) == len(y_true)):
        raise ValueError(f"y_true ({len(y_true)}), verdicts ({len(verdict)}) and new_labels "
                         f"({len(new_labels)}) differ in length")
    relabel = verdict == "label-wrong"
    if relabel.any() and (new_labels[relabel] < 0).any():
        raise ValueError("every 'label-wrong' row needs its new label (>= 0) in new_labels")
    labels = np.where(relabel, new_labels, y_true).astype(y_true.dtype if y_true.size else np.int64)
    return labels, verdict != "exclude"


@dataclass(frozen=True)
class ReviewedMetrics:
    """Metrics of the evaluation rows with the corrected labels, excluded rows left out."""

    summary: dict          # metrics.summary() of the kept rows, plus relabelled, excluded, given_accuracy
    per_class: pd.DataFrame  # metrics.per_class_table() + a 'labels' column saying 'reviewed'


def reviewed_metrics(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, *,
                     verdicts: Sequence[str | None], new_labels: np.ndarray,
                     class_names: Sequence[str]) -> ReviewedMetrics:
    """Accuracy and the per-class table as reviewed, for rows given as arrays (N rows, K classes).

    ``y_true``, ``y_pred``: int (N,); ``probs``: (N, K); ``verdicts`` and
    ``new_labels`` as in ``reviewed_labels``. The table's ``labels`` column is
    'reviewed' on every row, so a CSV of it says which labels it counts.
    """
    from core import metrics  # scikit-learn: only where metrics are computed, not for every verdict

    labels, keep = reviewed_labels(y_true, verdicts, new_labels)
    y_pred = np.asarray(y_pred)
    given = metrics.summary(np.asarray(y_true), y_pred, np.asarray(probs))
    summary = metrics.summary(labels[keep], y_pred[keep], np.asarray(probs)[keep])
    summary.update(relabelled=int((labels != np.asarray(y_true)).sum()), excluded=int((~keep).sum()),
                   given_accuracy=given["accuracy"], given_n=given["n"])
    table = metrics.per_class_table(labels[keep], y_pred[keep], class_names)
    table["labels"] = "reviewed"
    return ReviewedMetrics(summary=summary, per_class=table)


# --------------------------------------------------------------------------- a run, reviewed

class RunReview:
    """One run seen through the verdicts on its data set.

    Paths are the run's, normalised (``canonical_path``); rows are positions in
    ``run.predictions``. Reads are fresh on every call (another reviewer may
    have marked meanwhile); ``db.revision()`` tells a page when to re-read.
    """

    def __init__(self, run: Run, db: ReviewDB | None = None):
        self.run = run
        self.db = db if db is not None else ReviewDB.for_store(run.location.parent)
        self.data = run.data_info
        self.dataset = dataset_identity(self.data)
        self.root = posixpath.normpath(self.data.root) if self.data.root else None

    def __repr__(self) -> str:
        return f"RunReview({self.run.id!r}, dataset={self.dataset!r}, db={str(self.db.path)!r})"

    @cached_property
    def paths(self) -> np.ndarray:
        """Canonical path of every row, object array (N,)."""
        raw = self.run.predictions["path"].astype(str).tolist()
        if self.root is not None and self.data.kind == "csv":  # the folder loaders' paths are canonical
            raw = [canonical_path(p, root=self.root) for p in raw]
        return np.asarray(raw, dtype=object)

    @cached_property
    def _rows(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}

    def row(self, path: str) -> int:
        """The run row of ``path``; ReviewError naming it when the run has no such image."""
        if not isinstance(path, str) or not path:
            raise ReviewError(f"Expected an image path of run {self.run.id!r}. Received: {path!r}")
        key = canonical_path(path, root=self.root)
        if key not in self._rows:
            examples = ", ".join(repr(p) for p in self.paths[:2])
            raise ReviewError(f"Path {path!r} is not an image of run {self.run.id!r} "
                              f"({len(self.paths):,} images, e.g. {examples})")
        return self._rows[key]

    def given_label(self, row: int) -> str:
        return self.run.classes[int(self.run.predictions["true"].iat[row])]

    def mark(self, path: str, verdict: str, *, label: str | None = None, note: str | None = None,
             reviewer: str | None = None) -> Verdict:
        """Record a verdict on the run's image ``path``; 'label-wrong' needs ``label``, one of the classes."""
        return self.mark_row(self.row(path), verdict, label=label, note=note, reviewer=reviewer)

    def mark_row(self, row: int, verdict: str, *, label: str | None = None, note: str | None = None,
                 reviewer: str | None = None) -> Verdict:
        """``mark`` for the image in row ``row`` (what a gallery knows)."""
        if not 0 <= int(row) < len(self.paths):
            raise ReviewError(f"Row {row} is not in run {self.run.id!r} (it has {len(self.paths):,} rows)")
        check_verdict(verdict, label)
        given = self.given_label(row)
        if label is not None:
            if label not in self.run.classes:
                raise ReviewError(f"Unknown class {label!r} for run {self.run.id!r}. "
                                  f"Classes: {_some(self.run.classes)}")
            if label == given:
                raise ReviewError(f"{self.paths[row]!r} is already labelled {label!r}: a 'label-wrong' verdict "
                                  "needs another class (the model is wrong: --verdict model-wrong)")
        return self.db.mark(dataset=self.dataset, path=str(self.paths[row]), verdict=verdict, label=label,
                            note=note, reviewer=reviewer, run=self.run.id, given_label=given)

    def undo(self, path: str, *, reviewer: str | None = None) -> Verdict:
        """Undo the newest verdict in force on the run's image ``path``."""
        return self.db.undo(dataset=self.dataset, path=str(self.paths[self.row(path)]), reviewer=reviewer,
                            run=self.run.id)

    def history(self, path: str | None = None) -> pd.DataFrame:
        """Every verdict row on the run's images (or on ``path``), oldest first (``VERDICT_COLUMNS``)."""
        if path is not None:
            return self.db.history(self.dataset, path=str(self.paths[self.row(path)]))
        table = self.db.history(self.dataset)
        return table[table["path"].isin(self._rows.keys())].reset_index(drop=True)

    def verdicts(self) -> pd.DataFrame:
        """The verdict in force on each of the run's images that has one, in row order.

        Columns: ``row``, ``path``, ``given_label`` (the run's), ``verdict``,
        ``new_label`` (the right class for 'label-wrong', the given one for
        'model-wrong', empty otherwise), ``note``, ``reviewer``, ``time``, ``id``.
        """
        current = self.db.current(self.dataset)
        current = current[current["path"].isin(self._rows.keys())]
        rows = np.array([self._rows[p] for p in current["path"]], dtype=np.int64)
        true = self.run.predictions["true"].to_numpy()
        names = np.asarray(self.run.classes, dtype=object)
        given = names[true[rows]] if len(rows) else np.zeros(0, object)
        verdict = current["verdict"].to_numpy(dtype=object)
        new_label = np.where(verdict == "label-wrong", current["label"].to_numpy(dtype=object),
                             np.where(verdict == "model-wrong", given, ""))
        table = pd.DataFrame({
            "row": rows, "path": current["path"].to_numpy(dtype=object), "given_label": given,
            "verdict": verdict, "new_label": new_label, "note": current["note"].fillna("").to_numpy(dtype=object),
            "reviewer": current["reviewer"].to_numpy(dtype=object), "time": current["time"].to_numpy(dtype=object),
            "id": current["id"].to_numpy(dtype=np.int64),
        })
        return table.sort_values("row", kind="stable").reset_index(drop=True)

    def corrections(self) -> pd.DataFrame:
        """The export: the verdict in force per image, columns ``CORRECTION_COLUMNS``, in row order."""
        return self.verdicts()[CORRECTION_COLUMNS]

    def row_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(verdicts, new_labels) aligned with the run's rows: object (N,) ('' for none) and int (N,) (-1)."""
        n = len(self.paths)
        verdicts = np.full(n, "", dtype=object)
        new_labels = np.full(n, -1, dtype=np.int64)
        table = self.verdicts()
        rows = table["row"].to_numpy()
        verdicts[rows] = table["verdict"].to_numpy(dtype=object)
        index = {c: i for i, c in enumerate(self.run.classes)}
        wrong = table["verdict"].to_numpy(dtype=object) == "label-wrong"
        # a label-wrong class unknown to this run (verdict made in a run with more classes) counts as none
        known = np.array([index.get(c, -1) for c in table["new_label"].to_numpy(dtype=object)], np.int64)
        unusable = wrong & (known < 0)
        verdicts[rows[unusable]] = ""
        new_labels[rows[wrong & ~unusable]] = known[wrong & ~unusable]
        return verdicts, new_labels

    def reviewed_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels as reviewed, rows kept) for every row of the run: int (N,), bool (N,)."""
        verdicts, new_labels = self.row_arrays()
        return reviewed_labels(self.run.predictions["true"].to_numpy(), verdicts, new_labels)

    def reviewed_metrics(self) -> ReviewedMetrics:
        """Accuracy and the per-class table of the run's evaluation split as reviewed."""
        verdicts, new_labels = self.row_arrays()
        mask = self.run.eval_mask()
        preds = self.run.predictions
        result = reviewed_metrics(preds["true"].to_numpy()[mask], preds["predicted"].to_numpy()[mask],
                                  np.asarray(self.run.probs)[mask], verdicts=verdicts[mask],
                                  new_labels=new_labels[mask], class_names=self.run.classes)
        result.summary["split"] = self.run.eval_split
        return result

    def manifest_rows(self, folder: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
        """The corrected manifest for a CSV in ``folder``, and its counts.

        Returns a table with ``path`` (relative to ``folder``), ``label`` (as
        reviewed) and ``split`` ('' for 'all'), excluded images left out, in
        row order; and the counts rows, relabelled, excluded. ``folder`` must
        be the data root or a folder above it: the CSV loader reads only
        images inside the manifest's folder.
        """
        root = self.run.data_root
        if root is None:
            raise ReviewError(f"Run {self.run.id!r} is on the built-in data set {self.data.name!r}, whose images "
                              "are not files, so no CSV manifest can name them; export the corrections "
                              "(review export) and train with --corrections instead")
        real_root, folder = root.resolve(), Path(folder).resolve()
        if not real_root.is_dir():
            raise ReviewError(f"The data root of run {self.run.id!r} is missing: {str(root)!r}")
        if not real_root.is_relative_to(folder):
            raise ReviewError(f"A manifest in {str(folder)!r} cannot name the images of {str(real_root)!r} (the CSV "
                              "loader reads only files inside the manifest's folder): write it into the data "
                              f"root, e.g. --out {real_root / 'fixed.csv'}")
        labels, keep = self.reviewed_labels()
        true = self.run.predictions["true"].to_numpy()
        prefix = real_root.relative_to(folder).as_posix()
        names = np.asarray(self.run.classes, dtype=object)
        rel = [p if prefix == "." else posixpath.join(prefix, p) for p in self.paths[keep]]
        splits = self.run.predictions["split"].astype(str).to_numpy()[keep]
        table = pd.DataFrame({"path": rel, "label": names[labels[keep]],
                              "split": np.where(splits == "all", "", splits)})
        counts = {"rows": len(table), "relabelled": int(((labels != true) & keep).sum()),
                  "excluded": int((~keep).sum())}
        return table, counts

    def write_manifest(self, out: str | os.PathLike) -> dict:
        """Write the corrected CSV manifest ``out`` (``manifest_rows``) atomically; returns its counts."""
        out = Path(out)
        table, counts = self.manifest_rows(out.parent)
        _write_csv_atomic(table, out)
        return counts


def _write_csv_atomic(table: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            table.to_csv(fh, index=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FREE_TEXT_COLUMNS = ("note", "reviewer")
_INVISIBLE_LEAD = r"^[\s\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]+"  # white space, zero-width, bidi marks


def spreadsheet_safe(table: pd.DataFrame, columns: tuple[str, ...] = FREE_TEXT_COLUMNS) -> pd.DataFrame:
    """``table`` with the free text of ``columns`` that a spreadsheet would run as a formula (a cell
    starting with = + - @, a tab or a carriage return) prefixed with an apostrophe, OWASP's advice
    against CSV injection. Only free text: paths and labels are read back by ``read_corrections``.

    >>> spreadsheet_safe(pd.DataFrame({"note": ["=1+2", "blurry", "-2 px", " =1", "\\xa0@x"]}))["note"].tolist()
    ["'=1+2", 'blurry', "'-2 px", "' =1", "'\\xa0@x"]
    """
    out = table.copy()
    for column in columns:
        if column in out:
            text = out[column].fillna("").astype(str)
            # spreadsheets skip leading spaces (NBSP included) and invisible characters before a formula
            bare = text.str.replace(_INVISIBLE_LEAD, "", regex=True)
            out[column] = np.where(text.str.startswith(FORMULA_STARTS) | bare.str.startswith(FORMULA_STARTS),
                                   "'" + text, text)
    return out


def corrections_csv(corrections: pd.DataFrame) -> bytes:
    """``RunReview.corrections()`` as the CSV bytes ``write_corrections`` writes (the dashboard's export)."""
    return spreadsheet_safe(corrections).to_csv(index=False).encode("utf-8")


def write_corrections(review: RunReview, out: str | os.PathLike) -> int:
    """``review.corrections()`` written as CSV to ``out`` (free text made spreadsheet-safe); returns the rows."""
    table = spreadsheet_safe(review.corrections())
    _write_csv_atomic(table, Path(out))
    return len(table)


# --------------------------------------------------------------------------- training on corrections

@dataclass(frozen=True)
class Corrections:
    """A corrections file, read and checked: its rows (``CORRECTION_COLUMNS`` as text), name and hash."""

    table: pd.DataFrame
    file: str
    sha256: str


def read_corrections(file: str | os.PathLike, *, max_rows: int | None = None) -> Corrections:
    """Read a corrections CSV (``review export``): needs ``path``, ``verdict`` and ``new_label``.

    Raises ReviewError naming the file, line and value at fault: a missing
    column, an unknown verdict, a 'label-wrong' row without its new label, a
    path listed twice, or more than ``max_rows`` rows (the data set's image
    count: each image is corrected at most once), said as soon as that row is read.
    """
    path = Path(file).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReviewError(f"Corrections file not found: {str(path)!r}") from None
    except IsADirectoryError:
        raise ReviewError(f"Corrections must be a CSV file, not a folder: {str(path)!r}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ReviewError(f"{path}: not a UTF-8 CSV file") from None
    rows = csv.reader(io.StringIO(text, newline=""))  # lazily: a huge file is refused at its first bad row
    header = [c.strip() for c in next(rows, [])]
    missing = [c for c in ("path", "verdict", "new_label") if c not in header]
    if missing:
        raise ReviewError(f"{path}: missing column(s) {missing}; a corrections file has the columns "
                          f"{CORRECTION_COLUMNS} (python -m core review export). Found: {header[:10]}")
    records, seen = [], {}
    for lineno, rec in enumerate(rows, start=2):
        if not rec or all(not c.strip() for c in rec):
            continue
        if max_rows is not None and len(records) >= max_rows:
            raise ReviewError(f"{path}:{lineno}: more corrections than the data set has images ({max_rows:,}); "
                              "each image is corrected at most once: is it the file for this data set?")
        if len(rec) != len(header):
            raise ReviewError(f"{path}:{lineno}: {len(rec)} fields, the header has {len(header)}")
        record = dict(zip(header, rec))
        verdict, new_label, p = record["verdict"].strip(), record["new_label"].strip(), record["path"]
        if verdict not in VERDICTS:
            raise ReviewError(f"{path}:{lineno}: unknown verdict {verdict!r}. Verdicts: {list(VERDICTS)}")
        if verdict == "label-wrong" and not new_label:
            raise ReviewError(f"{path}:{lineno}: verdict 'label-wrong' for {p!r} without a new_label")
        if not p:
            raise ReviewError(f"{path}:{lineno}: empty path")
        if p in seen:
            raise ReviewError(f"{path}:{lineno}: {p!r} is listed twice (also on line {seen[p]})")
        seen[p] = lineno
        records.append({c: record.get(c, "") for c in CORRECTION_COLUMNS} | {"verdict": verdict,
                                                                             "new_label": new_label})
    table = pd.DataFrame(records, columns=CORRECTION_COLUMNS, dtype=object)
    return Corrections(table=table, file=str(path.resolve()), sha256=hashlib.sha256(data).hexdigest())


def apply_corrections(dataset, corrections: Corrections):
    """``dataset`` (a ``core.datasets.ImageDataset``) relabelled and with excluded rows dropped.

    Paths are matched after normalisation against the data root
    (``canonical_path``). Returns ``(dataset, record)``; ``record`` is what the
    training keeps: file, sha256, rows, relabelled (labels that changed),
    dropped, and the count of each verdict. Excluded images go to the data
    set's ``skipped`` list with the reason, so the run lists them. Raises
    ReviewError for paths the data set does not have and classes it does not
    know (naming the first ones).
    """
    table = corrections.table
    root = posixpath.normpath(str(dataset.root.resolve())) if dataset.root is not None else None
    keys = [canonical_path(p, root=root) for p in dataset.paths] if root is not None else list(dataset.paths)
    index = {p: i for i, p in enumerate(keys)}
    wanted = [canonical_path(p, root=root) for p in table["path"]]
    unknown = [p for p, key in zip(table["path"], wanted) if key not in index]
    if unknown:
        raise ReviewError(f"{corrections.file}: {len(unknown)} path(s) are not images of data set "
                          f"{dataset.name!r} ({len(dataset):,} images, e.g. {keys[0]!r}): "
                          f"{', '.join(repr(p) for p in unknown[:3])}{' ...' if len(unknown) > 3 else ''}")
    classes = {c: i for i, c in enumerate(dataset.classes)}
    verdicts = table["verdict"].to_numpy(dtype=object)
    relabel = verdicts == "label-wrong"
    bad = sorted({c for c in table["new_label"][relabel] if c not in classes})
    if bad:
        raise ReviewError(f"{corrections.file}: unknown class(es) {bad[:5]} for data set {dataset.name!r}. "
                          f"Classes: {_some(dataset.classes)}")
    rows = np.array([index[k] for k in wanted], dtype=np.int64)
    labels = dataset.labels.copy()
    new = np.array([classes[c] for c in table["new_label"][relabel]], dtype=labels.dtype)
    changed = int((labels[rows[relabel]] != new).sum())
    labels[rows[relabel]] = new
    drop = rows[verdicts == "exclude"]
    keep = np.ones(len(dataset), bool)
    keep[drop] = False
    name = Path(corrections.file).name
    if keep.sum() == 0:
        raise ReviewError(f"{corrections.file}: the corrections exclude all {len(dataset):,} images of data set "
                          f"{dataset.name!r}: nothing is left to train on")
    left = np.unique(labels[keep])
    if len(left) < 2 and len(dataset.classes) > 1:
        raise ReviewError(f"{corrections.file}: after the corrections every remaining image ({int(keep.sum()):,}) "
                          f"is labelled {dataset.classes[int(left[0])]!r}; a classifier needs images of at least "
                          "two classes")
    corrected = replace(dataset, labels=labels,
                        skipped=list(dataset.skipped) + [{"path": dataset.paths[i],
                                                          "reason": f"excluded in review ({name})"} for i in drop])
    corrected = corrected.subset(np.flatnonzero(keep))
    record = {"file": corrections.file, "sha256": corrections.sha256, "rows": len(table), "relabelled": changed,
              "dropped": int(len(drop)), **{v.replace("-", "_"): int((verdicts == v).sum()) for v in VERDICTS}}
    return corrected, record


def apply_corrections_file(dataset, file: str | os.PathLike):
    """``apply_corrections(dataset, read_corrections(file))``: what ``train --corrections`` does."""
    return apply_corrections(dataset, read_corrections(file, max_rows=len(dataset)))
