"""Review verdicts: what people decide about images, kept in one SQLite file.

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

import datetime as _dt
import getpass
import os
import posixpath
import random
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.errors import UserError
from core.store import DataInfo, RunStore

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


def some_names(names: Sequence[str], limit: int = 20) -> str:
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
