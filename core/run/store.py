"""The run store: one folder per analysis run, readable with numpy and pandas alone.

Layout of a run folder::

    manifest.json        schema version, analysis config, model, data set, classes, metrics,
                         timings, library versions, skipped files with reasons, training
                         record, derived analyses
    predictions.parquet  one row per image: id, path, split, true, predicted,
                         true_label, predicted_label, confidence, top2..topK
                         (+ _prob), correct
    probs.npy            float32 (N, K) class probabilities
    embeddings.npy       float32 (N, D) penultimate-layer features (absent if unavailable)
    projection.npy       float32 (N, 2) UMAP of the embeddings (absent if unavailable)
    per_class.csv        the per-class table of the evaluation split
    images.npy           uint8 (N, H, W[, C]) pixels, only for built-in array data sets
    derived/<name>.<uid>/  results computed later from the arrays (see core.run.derived)

Rows of every array are aligned with the rows of ``predictions.parquet``.

Versions and atomicity. ``<store>/<run_id>`` is a symbolic link to a version
folder ``<store>/.runs/<run_id>.<uid>``. A run is written into a hidden
temporary folder, renamed to its version folder when complete, and published
by atomically replacing the link, so readers see the old run or the new one,
never half of one and never none. A writer holds ``<store>/.locks/<run_id>.lock``
(an ``flock``, released by the kernel when the process dies) for the whole
computation, so a second writer of the same name is refused before it starts,
and leftovers of a killed writer are recognised and removed at the next start.
A derived analysis is committed by atomically replacing ``manifest.json``.
Nothing here imports TensorFlow or umap.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError
from core.run.config import SCHEMA_VERSION, AnalysisConfig

READABLE_SCHEMAS = (1, 2)
MANIFEST = "manifest.json"
PREDICTIONS = "predictions.parquet"
PER_CLASS = "per_class.csv"
VERSIONS = ".runs"
LOCKS = ".locks"
WRITER_LOCK = ".writer.lock"
DEFAULT_STORE = Path(__file__).resolve().parents[2] / "artifacts"
# Folders a run may not serve images from: the file system root and the home folder itself.
_TOO_BROAD_ROOTS = {Path("/"), Path.home().resolve()}


def file_inside(root: Path, rel: str) -> Path:
    """``rel`` under the resolved ``root`` (``Run.checked_root``), resolved: links followed. Raises PermissionError
    where it lands outside the root (``..``, an absolute path, a link that leads out)."""
    file = (root / rel).resolve()
    if not file.is_relative_to(root):
        raise PermissionError(f"Refusing to read {rel!r}: outside the data set root {root}")
    return file


class RunNotFoundError(UserError, LookupError):
    """No run of that id in the store."""


class RunSchemaError(UserError, RuntimeError):
    """The run was written by another schema version and must be re-made."""


class RunCorruptError(UserError):
    """A run whose files are missing, truncated or of the wrong shape (the message names the file)."""


class ReadOnlyStoreError(UserError):
    """A write asked of a store (or run) this process cannot write to; reading it still works."""


def check_writable(folder: Path, what: str) -> None:
    """Raise ReadOnlyStoreError (one line naming ``folder``) when this process cannot write there."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        raise ReadOnlyStoreError(f"{folder} is read-only here (a read-only mount or no write permission): "
                                 f"{what} cannot be written; reading works")


class RunBusyError(UserError, RuntimeError):
    """Another process is writing a run of the same name."""


class RunConflictError(UserError, RuntimeError):
    """A run of that name exists and was made from another config."""


def default_store_path() -> Path:
    """``$ARTIFACTS_DIR`` when set, else ``artifacts/`` beside ``core/``."""
    env = os.environ.get("ARTIFACTS_DIR")
    return Path(env).expanduser() if env else DEFAULT_STORE


def valid_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe folder name, else raise ValueError."""
    ok = (
        isinstance(run_id, str) and bool(run_id) and len(run_id) <= 120 and not run_id.startswith(".")
        and all(c.isalnum() or c in "-_." for c in run_id)
    )
    if not ok:
        raise UserError(
            f"Invalid run name {run_id!r}: use 1-120 letters, digits, '-', '_' or '.', "
            "not starting with '.'"
        )
    return run_id


# --------------------------------------------------------------------------- manifest checks

def _require(cond: bool, file: Path, what: str) -> None:
    if not cond:
        raise RunCorruptError(f"{file}: {what}")


def check_manifest(data: object, file: Path) -> dict:
    """Return ``data`` if it has a manifest's shape, else raise RunCorruptError naming ``file``."""
    _require(isinstance(data, dict), file, f"expected a JSON object, found {type(data).__name__}")
    version = data.get("schema_version")
    _require(isinstance(version, int), file, f"schema_version is not a number ({version!r})")
    if version not in READABLE_SCHEMAS:
        return data  # the caller raises RunSchemaError with what to re-run
    classes = data.get("classes")
    _require(isinstance(classes, list) and len(classes) > 0 and all(isinstance(c, str) for c in classes),
             file, "'classes' must be a non-empty list of names")
    counts = data.get("counts")
    _require(isinstance(counts, dict) and isinstance(counts.get("images"), int) and counts["images"] >= 0,
             file, "'counts.images' must be a whole number")
    for key in ("model", "data", "metrics", "splits", "timings"):
        _require(isinstance(data.get(key, {}), dict), file, f"'{key}' must be an object")
    for key in ("training", "projection", "analysis"):
        _require(data.get(key) is None or isinstance(data[key], dict), file, f"'{key}' must be an object")
    for key in ("skipped", "notes"):
        _require(isinstance(data.get(key, []), list), file, f"'{key}' must be a list")
    _require(isinstance(data.get("derived", {}), dict), file, "'derived' must be an object")
    return data


def read_manifest(folder: Path, *, shown: Path | None = None) -> dict:
    """The manifest of a run folder, checked; RunNotFoundError if absent, RunCorruptError if broken.

    Messages name the file as ``shown / manifest.json`` (the run's link in the store) when given.
    """
    file = (shown or folder) / MANIFEST
    try:
        text = (folder / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunNotFoundError(f"No run at {folder} (no {MANIFEST})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunCorruptError(f"{file}: cannot read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunCorruptError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return check_manifest(data, file)


def _schema_error(run_id: str, manifest: dict) -> RunSchemaError:
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    return RunSchemaError(
        f"Run {run_id!r} was written with schema version {manifest.get('schema_version')}; this version "
        f"reads {list(READABLE_SCHEMAS)}. Re-run the analysis: "
        f"python -m core analyze --model {model.get('path') or 'MODEL'} "
        f"--data {data.get('path') or 'DATA'} --force"
    )


# --------------------------------------------------------------------------- typed views

@dataclass(frozen=True)
class ModelInfo:
    """The manifest's ``model`` section."""

    path: str | None
    sha256: str | None
    format: str | None
    input_size: tuple[int, ...]
    channels: int | None
    scale: str
    output_activation: str | None
    outputs_were: str | None
    unsafe_load: bool
    channel_order: str = "rgb"         # runs made before channel orders existed were fed RGB
    input_check: dict | None = None    # core.model.input_check's finding: 'lines' to show, accuracies per preprocessing
    resize: str = "area"               # how pictures were resized to the input (--resize); older runs: area

    @classmethod
    def from_manifest(cls, m: dict) -> "ModelInfo":
        check = m.get("input_check")
        return cls(path=m.get("path"), sha256=m.get("sha256"), format=m.get("format"),
                   input_size=tuple(m.get("input_size") or ()), channels=m.get("channels"),
                   scale=m.get("scale") or "auto", output_activation=m.get("output_activation"),
                   outputs_were=m.get("outputs_were"), unsafe_load=bool(m.get("unsafe_load", False)),
                   channel_order=m.get("channel_order") or "rgb",
                   input_check=check if isinstance(check, dict) else None, resize=m.get("resize") or "area")

    @property
    def input_warnings(self) -> list[str]:
        """The input check's warnings (a preprocessing or class-order mismatch), empty when all is well."""
        return self._input_sentences("lines")

    @property
    def input_notes(self) -> list[str]:
        """The input check's sentences that are no warning (e.g. the model rescales its own input)."""
        return self._input_sentences("notes")

    def _input_sentences(self, key: str) -> list[str]:
        lines = (self.input_check or {}).get(key) or []
        return [str(line) for line in lines] if isinstance(lines, list) else []

    @property
    def file_name(self) -> str:
        return Path(self.path).name if self.path else "?"


@dataclass(frozen=True)
class DataInfo:
    """The manifest's ``data`` section."""

    name: str
    kind: str | None
    path: str | None
    root: str | None
    fingerprint: str | None
    images_in_run: bool

    @classmethod
    def from_manifest(cls, m: dict) -> "DataInfo":
        return cls(name=str(m.get("name") or "?"), kind=m.get("kind"), path=m.get("path"),
                   root=m.get("root"), fingerprint=m.get("fingerprint"),
                   images_in_run=bool(m.get("images_in_run", False)))


@dataclass(frozen=True)
class DerivedInfo:
    """One derived analysis as the manifest records it."""

    name: str
    version: int
    config: dict
    created: str
    folder: str
    files: tuple[str, ...]
    seconds: float | None
    summary: dict
    versions: dict = field(default_factory=dict)  # library versions it was computed with
    inputs: dict | None = None  # the stored results it read, by folder ("" absent); None: not recorded (older)

    @classmethod
    def from_manifest(cls, name: str, m: dict) -> "DerivedInfo":
        return cls(name=name, version=int(m.get("version", 0)), config=dict(m.get("config") or {}),
                   created=str(m.get("created", "")), folder=str(m.get("folder", "")),
                   files=tuple(m.get("files") or ()), seconds=m.get("seconds"),
                   summary=dict(m.get("summary") or {}), versions=dict(m.get("versions") or {}),
                   inputs=dict(m["inputs"]) if isinstance(m.get("inputs"), dict) else None)

    def to_manifest(self) -> dict:
        return {"version": self.version, "config": self.config, "created": self.created,
                "folder": self.folder, "files": list(self.files), "seconds": self.seconds,
                "summary": self.summary, "versions": self.versions,
                **({} if self.inputs is None else {"inputs": self.inputs})}


@dataclass(frozen=True)
class RunSummary:
    """What the run picker shows, read from the manifest alone. ``problem`` is None for a
    readable run, else one line saying why it cannot be opened."""

    run_id: str
    name: str
    created: str
    model: str
    data: str
    n_images: int
    n_classes: int
    accuracy: float
    schema_version: int
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


# --------------------------------------------------------------------------- reading

class Run:
    """A finished run on disk. Arrays are memory-mapped, tables read on first use.

    ``path`` is the run's own version folder (the link resolved when the run is
    opened), so a run replaced while it is open keeps reading its own files.
    """

    def __init__(self, path: Path, *, run_id: str | None = None):
        link = Path(path)
        self.id = run_id or link.name
        self.path = link.resolve() if link.exists() else link
        self.location = link  # where the user sees the run: named in messages
        self.manifest: dict = read_manifest(self.path, shown=link)
        if self.manifest.get("schema_version") not in READABLE_SCHEMAS:
            raise _schema_error(self.id, self.manifest)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, n={self.n_images}, classes={len(self.classes)})"

    def check_files(self) -> None:
        """Raise RunCorruptError naming the first file that is missing, truncated or misshapen.

        Cheap: reads the Parquet footer and the ``.npy`` headers, not the data.
        """
        import pyarrow.parquet as pq

        n, k = self.n_images, len(self.classes)
        file = self.location / PREDICTIONS
        try:
            rows = pq.read_metadata(self.path / PREDICTIONS).num_rows
        except FileNotFoundError:
            raise RunCorruptError(f"{file}: missing") from None
        except Exception as exc:  # boundary: pyarrow raises ArrowInvalid, OSError, ... for a damaged file
            raise RunCorruptError(f"{file}: not a readable Parquet file ({_first_line(exc)})") from None
        _require(rows == n, file, f"{rows} rows, the manifest says {n}")
        probs = self._array("probs", required=True)
        _require(probs.shape == (n, k), self.location / "probs.npy",
                 f"shape {probs.shape}, expected ({n}, {k})")
        for name in ("embeddings", "projection", "images"):
            arr = self._array(name)
            if arr is not None:
                _require(arr.shape[0] == n, self.location / f"{name}.npy", f"{arr.shape[0]} rows, expected {n}")
        if (self.path / "projection.npy").exists():
            _require(self._array("projection").shape[1:] == (2,), self.location / "projection.npy",
                     "expected 2 columns")

    # --- manifest fields -------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.id)

    @property
    def created(self) -> str:
        return str(self.manifest.get("created", ""))

    @property
    def uid(self) -> str:
        """Unique per written version of the run (changes when the run is re-made)."""
        return str(self.manifest.get("run_uid") or f"{self.path.name}:{self.created}")

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def n_images(self) -> int:
        return int(self.manifest["counts"]["images"])

    @property
    def eval_split(self) -> str:
        """The split the metrics describe ('test', 'val', ... or 'all')."""
        return str(self.manifest.get("eval_split", "all"))

    @property
    def metrics(self) -> dict:
        return dict(self.manifest.get("metrics", {}))

    @property
    def accuracy(self) -> float:
        return float(self.metrics.get("accuracy", float("nan")))

    @property
    def splits(self) -> dict[str, int]:
        """Images per split, e.g. {'test': 10000, 'train': 54000, 'val': 6000}."""
        return {str(k): int(v) for k, v in (self.manifest.get("splits") or {}).items()}

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo.from_manifest(self.manifest.get("model") or {})

    @property
    def data_info(self) -> DataInfo:
        return DataInfo.from_manifest(self.manifest.get("data") or {})

    @property
    def config(self) -> AnalysisConfig | None:
        """The analysis config (None for runs written before schema 2)."""
        section = self.manifest.get("analysis")
        return AnalysisConfig.from_dict(section) if section else None

    @property
    def cache_key(self) -> str | None:
        return self.manifest.get("cache_key")

    @property
    def layer(self) -> str | None:
        return self.manifest.get("layer")

    @property
    def notes(self) -> list[str]:
        return [str(n) for n in self.manifest.get("notes", [])]

    @property
    def timings(self) -> dict:
        return dict(self.manifest.get("timings") or {})

    @property
    def projection_info(self) -> dict:
        return dict(self.manifest.get("projection") or {})

    @property
    def skipped(self) -> pd.DataFrame:
        rows = [s for s in self.manifest.get("skipped", []) if isinstance(s, dict)]
        return pd.DataFrame(rows, columns=["path", "reason"])

    @property
    def training(self) -> dict | None:
        return self.manifest.get("training")

    @property
    def history(self) -> pd.DataFrame | None:
        """Per-epoch training history (loss, accuracy, val_*, learning_rate), if trained here."""
        hist = (self.training or {}).get("history")
        if not hist:
            return None
        df = pd.DataFrame(hist)
        df.insert(0, "epoch", np.arange(1, len(df) + 1))
        return df

    # --- tables and arrays -----------------------------------------------
    @cached_property
    def predictions(self) -> pd.DataFrame:
        file = self.location / PREDICTIONS
        try:
            return pd.read_parquet(self.path / PREDICTIONS)
        except FileNotFoundError:
            raise RunCorruptError(f"{file}: missing") from None
        except Exception as exc:  # boundary: pyarrow's errors for a damaged file are of several types
            raise RunCorruptError(f"{file}: not a readable Parquet file ({_first_line(exc)})") from None

    def _array(self, name: str, *, required: bool = False) -> np.ndarray | None:
        real, file = self.path / f"{name}.npy", self.location / f"{name}.npy"
        if not real.exists():
            if required:
                raise RunCorruptError(f"{file}: missing")
            return None
        try:
            return np.load(real, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:  # object arrays need pickle, which is never allowed
            raise RunCorruptError(f"{file}: not a plain numeric array ({_first_line(exc)})") from None
        except OSError as exc:
            raise RunCorruptError(f"{file}: cannot read ({_first_line(exc)})") from None

    @cached_property
    def probs(self) -> np.ndarray:
        return self._array("probs", required=True)

    @cached_property
    def embeddings(self) -> np.ndarray | None:
        return self._array("embeddings")

    @cached_property
    def per_class(self) -> pd.DataFrame:
        file = self.location / PER_CLASS
        try:
            return pd.read_csv(self.path / PER_CLASS, keep_default_na=False)
        except (OSError, ValueError) as exc:
            raise RunCorruptError(f"{file}: cannot read ({_first_line(exc)})") from None

    def per_class_csv(self) -> bytes:
        """The per-class report exactly as ``python -m core report`` writes it."""
        file = self.location / PER_CLASS
        try:
            return (self.path / PER_CLASS).read_bytes()
        except OSError as exc:
            raise RunCorruptError(f"{file}: cannot read ({exc.strerror or exc})") from None

    def eval_mask(self) -> np.ndarray:
        """Boolean mask of the rows the metrics describe."""
        split = self.eval_split
        splits = self.predictions["split"].to_numpy()
        return np.ones(len(splits), bool) if split == "all" else splits == split

    # --- derived analyses (see core.run.derived for the registry) ----------------
    def derived_info(self, name: str) -> DerivedInfo | None:
        entry = (self.manifest.get("derived") or {}).get(name)
        return DerivedInfo.from_manifest(name, entry) if isinstance(entry, dict) else None

    def derived_infos(self) -> list[DerivedInfo]:
        return [DerivedInfo.from_manifest(k, v) for k, v in (self.manifest.get("derived") or {}).items()
                if isinstance(v, dict)]

    def derived_folder(self, name: str) -> Path:
        info = self.derived_info(name)
        if info is None:
            raise RunNotFoundError(f"Run {self.id!r} has no derived analysis {name!r}")
        folder = (self.path / "derived" / info.folder).resolve()
        _require(folder.is_relative_to((self.path / "derived").resolve()) and folder.is_dir(),
                 self.location / MANIFEST, f"derived analysis {name!r} points to a missing folder")
        return folder

    def save_derived(self, name: str, *, version: int, config: dict, arrays: dict[str, np.ndarray],
                     tables: dict[str, pd.DataFrame], summary: dict, seconds: float | None = None,
                     versions: dict[str, str] | None = None, inputs: dict[str, str] | None = None) -> DerivedInfo:
        """Store a derived analysis in this run: its files, then one atomic manifest update.

        A process killed at any point leaves the run as it was (at most a hidden
        temporary folder, removed by the next sweep).
        """
        valid_run_id(name)
        check_writable(self.path, f"derived analysis {name!r} of run {self.id!r}")
        base = self.path / "derived"
        base.mkdir(exist_ok=True)
        uid = uuid.uuid4().hex[:8]
        tmp = base / f".tmp-{name}-{uid}"
        tmp.mkdir()
        files = []
        with _held_writer_lock(tmp):
            for key, arr in arrays.items():
                valid_run_id(key)
                np.save(tmp / f"{key}.npy", np.ascontiguousarray(arr), allow_pickle=False)
                files.append(f"{key}.npy")
            for key, df in tables.items():
                valid_run_id(key)
                df.to_parquet(tmp / f"{key}.parquet", index=False)
                files.append(f"{key}.parquet")
            folder = f"{name}.{uid}"
            info = DerivedInfo(name=name, version=version, config=dict(config),
                               created=_now(), folder=folder, files=tuple(files),
                               seconds=None if seconds is None else round(seconds, 3),
                               summary=json.loads(json.dumps(summary, default=_json_default)),
                               versions=dict(versions or {}), inputs=None if inputs is None else dict(inputs))
            with _flock(self.path / ".derived.lock"):
                manifest = read_manifest(self.path)  # another writer may have added one meanwhile
                old = (manifest.get("derived") or {}).get(name)
                manifest.setdefault("derived", {})[name] = info.to_manifest()
                staged = _stage_json(self.path / MANIFEST, manifest)
                # two renames: a kill between them leaves only a folder no manifest names,
                # which readers never see and RunStore.sweep removes
                os.rename(tmp, base / folder)
                os.replace(staged, self.path / MANIFEST)
        self.manifest = manifest
        if isinstance(old, dict) and old.get("folder"):
            shutil.rmtree(base / str(old["folder"]), ignore_errors=True)
        return info

    def record_unsafe_opt_in(self) -> None:
        """Record in the manifest that the run was analysed with the unsafe-load opt-in (information
        only: core.model.trust decides what is loaded)."""
        self._record_model_info("unsafe_load", True)

    def record_input_check(self, finding: dict) -> None:
        """Replace the manifest's input-check finding (``core.model.input_check.judged_with_training``: a
        reused run judged again with training's accuracy)."""
        self._record_model_info("input_check", finding)

    def _record_model_info(self, key: str, value) -> None:
        """Set ``model.<key>`` in the manifest, under the run's lock, written whole or not at all."""
        check_writable(self.path, f"run {self.id!r}")
        with _flock(self.path / ".derived.lock"):
            manifest = read_manifest(self.path)
            manifest.setdefault("model", {})[key] = value
            _write_json_atomic(self.path / MANIFEST, manifest)
        self.manifest = manifest

    def delete_derived(self, name: str) -> None:
        check_writable(self.path, f"run {self.id!r}")
        with _flock(self.path / ".derived.lock"):
            manifest = read_manifest(self.path)
            old = (manifest.get("derived") or {}).pop(name, None)
            if old is None:
                raise RunNotFoundError(f"Run {self.id!r} has no derived analysis {name!r}")
            _write_json_atomic(self.path / MANIFEST, manifest)
        self.manifest = manifest
        shutil.rmtree(self.path / "derived" / str(old.get("folder", "")), ignore_errors=True)

    # --- images ------------------------------------------------------------
    @cached_property
    def _pixels(self) -> np.ndarray | None:
        return self._array("images")

    @property
    def data_root(self) -> Path | None:
        root = self.data_info.root
        return Path(root) if root else None

    def image_file(self, row: int) -> Path | None:
        """Absolute path of row's image file, only if it lies inside the data root.

        Raises PermissionError for a path outside the root and for a root that
        is not an analysed data folder (the file system root, the home folder).
        """
        root = self.checked_root()
        return None if root is None else file_inside(root, str(self.predictions["path"].iat[row]))

    def checked_root(self) -> Path | None:
        """The data root resolved (None where the run has none). Raises PermissionError for a root that is not an
        analysed data folder: missing, the file system root or the home folder."""
        root = self.data_root
        if root is None:
            return None
        root = root.resolve()
        if root in _TOO_BROAD_ROOTS or not root.is_dir():
            raise PermissionError(f"Refusing to read images: the run's data root {str(root)!r} is "
                                  "not a data set folder (it is missing, the file system root or the home folder)")
        return root

    def data_change_line(self, *, shown: int = 2) -> str | None:
        """One line when the image files of the run are no longer those it was made from, else None.

        A file missing, or modified after the run was written (its mtime later than ``created``), means
        the run's predictions, embeddings and every diagnosis are of another picture. One ``stat`` per
        image: 70,000 files cost well under a second. Runs that hold their pixels never change.
        """
        if self._pixels is not None or self.data_root is None:
            return None
        import datetime as _dt

        try:
            root = self.checked_root()
        except PermissionError as exc:
            return str(exc)
        try:
            made = _dt.datetime.fromisoformat(self.created).timestamp()
        except ValueError:
            made = float("inf")  # no time to compare with: only missing files are told
        missing, modified = [], []
        for rel in self.predictions["path"].astype(str):
            try:
                if (root / rel).stat().st_mtime > made + 1.0:
                    modified.append(rel)
            except OSError:
                missing.append(rel)
        if not missing and not modified:
            return None
        parts = [f"{len(v):,} {word} (e.g. {', '.join(repr(x) for x in v[:shown])})"
                 for v, word in ((missing, "missing"), (modified, f"modified since {self.created}")) if v]
        return (f"The data changed since run {self.id!r} was made: of its {self.n_images:,} image files, "
                f"{' and '.join(parts)}. Its predictions and diagnoses are of the old files: analyse again "
                "with --force.")

    def image(self, row: int) -> np.ndarray | None:
        """RGB (or grayscale 2-D) uint8 pixels of one row, or None if unreadable.

        Raises PermissionError for a file outside the data set root (see ``image_file``).
        """
        if self._pixels is not None:
            return np.asarray(self._pixels[row])
        from core.data.images import read_image  # OpenCV only; cheap

        file = self.image_file(row)
        if file is None or not file.is_file():
            return None
        try:
            return read_image(file)
        except ValueError:
            return None


# --------------------------------------------------------------------------- writing

class RunWriter:
    """Collects a run's files in a hidden temporary folder; ``commit`` publishes it."""

    def __init__(self, store: "RunStore", run_id: str):
        self.store = store
        self.run_id = valid_run_id(run_id)
        self.uid = uuid.uuid4().hex[:12]
        (store.root / VERSIONS).mkdir(parents=True, exist_ok=True)
        self.tmp = store.root / VERSIONS / f".tmp-{run_id}.{self.uid}"
        self.tmp.mkdir()
        self._lock = _hold_writer_lock(self.tmp)

    def save_array(self, name: str, array: np.ndarray) -> None:
        np.save(self.tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)

    def save_predictions(self, df: pd.DataFrame) -> None:
        df.to_parquet(self.tmp / PREDICTIONS, index=False)

    def save_per_class(self, df: pd.DataFrame) -> None:
        df.to_csv(self.tmp / PER_CLASS, index=False)

    def save_manifest(self, manifest: dict) -> None:
        manifest = {"schema_version": SCHEMA_VERSION, "run_id": self.run_id, "run_uid": self.uid,
                    **manifest}
        manifest.setdefault("derived", {})
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default))

    def commit(self) -> Run:
        if not (self.tmp / MANIFEST).exists():
            raise RuntimeError("A run needs its manifest before it is committed")
        root = self.store.root
        version = root / VERSIONS / f"{self.run_id}.{self.uid}"
        os.rename(self.tmp, version)
        _release(self._lock)
        (version / WRITER_LOCK).unlink(missing_ok=True)
        link = root / self.run_id
        old = _current_version(link)
        if link.is_dir() and not link.is_symlink():
            # a run written before versioned folders: move it aside, then link (two renames;
            # RunStore.sweep restores the link if a crash falls between them)
            old = root / VERSIONS / f"{self.run_id}.legacy-{uuid.uuid4().hex[:8]}"
            os.rename(link, old)
        tmp_link = root / f".link-{self.run_id}.{self.uid}"
        os.symlink(Path(VERSIONS) / version.name, tmp_link)
        os.replace(tmp_link, link)
        if old is not None and old != version:
            _remove_version(old)
        return Run(link)

    def abort(self) -> None:
        _release(self._lock)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Cannot write {type(obj).__name__} to a manifest")


def _stage_json(file: Path, data: dict) -> Path:
    """Write ``data`` beside ``file`` under a hidden name, flushed to disk; returns that path."""
    tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2, default=_json_default))
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def _write_json_atomic(file: Path, data: dict) -> None:
    os.replace(_stage_json(file, data), file)


def _current_version(link: Path) -> Path | None:
    """The version folder a run link points to (None if there is no link)."""
    if link.is_symlink():
        return (link.parent / os.readlink(link)).resolve()
    return None


def _remove_version(folder: Path) -> None:
    trash = folder.parent / f".trash-{folder.name}"
    try:
        os.rename(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- locks

_held: dict[str, tuple[int, int]] = {}  # lock file -> (fd, depth) held by this process
_held_guard = threading.Lock()


def try_flock(file: Path) -> int | None:
    """An open fd holding an exclusive flock on ``file`` (created if need be), or None if another
    process holds it. OSError when the file cannot be opened (a read-only store)."""
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _release(fd: int | None) -> None:
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _hold_writer_lock(folder: Path) -> int:
    fd = try_flock(folder / WRITER_LOCK)
    if fd is None:  # a fresh folder of ours: cannot be held by anyone else
        raise RuntimeError(f"Cannot lock {folder}")
    return fd


@contextmanager
def _held_writer_lock(folder: Path) -> Iterator[None]:
    fd = _hold_writer_lock(folder)
    try:
        yield
    finally:
        _release(fd)
        (folder / WRITER_LOCK).unlink(missing_ok=True)


@contextmanager
def _flock(file: Path, *, timeout_s: float = 30.0) -> Iterator[None]:
    """A blocking exclusive flock, for short critical sections (derived-analysis commits)."""
    deadline = time.monotonic() + timeout_s
    while True:
        fd = try_flock(file)
        if fd is not None:
            break
        if time.monotonic() > deadline:
            raise RunBusyError(f"{file.parent.name}: another process keeps the run locked")
        time.sleep(0.05)
    try:
        yield
    finally:
        _release(fd)


# --------------------------------------------------------------------------- the store

class RunStore:
    """Lists, loads, writes and deletes runs under one folder."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_store_path()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def run_ids(self) -> list[str]:
        """Names of every run entry (readable or not), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if not p.name.startswith(".") and (p.is_symlink() or (p / MANIFEST).exists())
        )

    def summary(self, run_id: str) -> RunSummary:
        """The picker's line for one run; a run that cannot be opened has ``problem`` set."""
        folder = self.root / run_id
        try:
            m = read_manifest(folder)
        except RunNotFoundError:
            return _broken(run_id, f"{folder} has no {MANIFEST} (its folder is missing)")
        except RunCorruptError as exc:
            return _broken(run_id, str(exc))
        version = m.get("schema_version")
        problem = None
        if version not in READABLE_SCHEMAS:
            problem = str(_schema_error(run_id, m))
        model = m.get("model") if isinstance(m.get("model"), dict) else {}
        data = m.get("data") if isinstance(m.get("data"), dict) else {}
        metrics = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
        counts = m.get("counts") if isinstance(m.get("counts"), dict) else {}
        try:
            accuracy = float(metrics.get("accuracy", math.nan))
        except (TypeError, ValueError):
            accuracy = math.nan
        return RunSummary(
            run_id=run_id, name=str(m.get("name") or run_id), created=str(m.get("created", "")),
            model=_model_label(model), data=str(data.get("name") or "?"),
            n_images=int(counts.get("images") or 0) if isinstance(counts.get("images"), int) else 0,
            n_classes=len(m.get("classes") or []) if isinstance(m.get("classes"), list) else 0,
            accuracy=accuracy, schema_version=int(version), problem=problem,
        )

    def list_runs(self, *, include_broken: bool = True) -> list[RunSummary]:
        """Every run, newest first; broken ones (``problem`` set) last unless left out."""
        out = [self.summary(run_id) for run_id in self.run_ids()]
        ok = sorted((s for s in out if s.ok), key=lambda s: s.created, reverse=True)
        broken = [s for s in out if not s.ok] if include_broken else []
        return ok + broken

    def exists(self, run_id: str) -> bool:
        return (self.root / run_id / MANIFEST).exists()

    def load(self, run_id: str, *, check: bool = True) -> Run:
        """Open a run; with ``check``, its files are verified (footer and headers only).

        Raises RunNotFoundError, RunSchemaError or RunCorruptError (naming the file).
        """
        valid_run_id(run_id)
        if not self.exists(run_id) and not (self.root / run_id).is_symlink():
            known = ", ".join(self.run_ids()) or "none"
            raise RunNotFoundError(f"No run {run_id!r} in {self.root}. Runs: {known}")
        run = Run(self.root / run_id, run_id=run_id)
        if check:
            run.check_files()
        return run

    def delete(self, run_id: str) -> None:
        valid_run_id(run_id)
        link = self.root / run_id
        if not link.is_symlink() and not link.is_dir():
            raise RunNotFoundError(f"No run {run_id!r} in {self.root}")
        with self.reserve(run_id):
            version = _current_version(link)
            if version is None:  # a run written before versioned folders
                trash = self.root / f".trash-{run_id}-{uuid.uuid4().hex[:8]}"
                os.replace(link, trash)
                shutil.rmtree(trash, ignore_errors=True)
                return
            link.unlink()
            _remove_version(version)

    def find_cached(self, cache_key: str) -> str | None:
        """The id of a current-schema run made with this cache key, if any."""
        for run_id in self.run_ids():
            try:
                m = read_manifest(self.root / run_id)
            except (RunNotFoundError, RunCorruptError):
                continue
            if m.get("cache_key") == cache_key and m.get("schema_version") == SCHEMA_VERSION:
                return run_id
        return None

    def copy_run(self, source: str, run_id: str) -> Run:
        """A new run ``run_id`` with the files of ``source`` (hard links where possible)."""
        src = self.load(source)
        with self.writing(run_id) as w:
            for f in src.path.iterdir():
                if f.name in (MANIFEST, WRITER_LOCK) or f.name.startswith("."):
                    continue
                if f.is_dir():
                    shutil.copytree(f, w.tmp / f.name, copy_function=_link_or_copy)
                else:
                    _link_or_copy(f, w.tmp / f.name)
            manifest = {k: v for k, v in src.manifest.items()
                        if k not in ("schema_version", "run_id", "run_uid")}
            w.save_manifest({**manifest, "name": run_id, "copied_from": source})
        return self.load(run_id)

    # --- locking and writing ------------------------------------------------
    @contextmanager
    def reserve(self, run_id: str) -> Iterator[None]:
        """Hold the write lock of ``run_id`` (re-entrant in this process).

        Raises RunBusyError at once when another process holds it.
        """
        valid_run_id(run_id)
        check_writable(self.root, f"run {run_id!r}")
        (self.root / LOCKS).mkdir(parents=True, exist_ok=True)
        file = str((self.root / LOCKS / f"{run_id}.lock").resolve())
        with _held_guard:
            if file in _held:
                fd, depth = _held[file]
                _held[file] = (fd, depth + 1)
            else:
                fd = try_flock(Path(file))
                if fd is None:
                    raise RunBusyError(
                        f"Run {run_id!r} is being written by another process in {self.root}; "
                        "wait for it to finish or choose another name")
                _held[file] = (fd, 1)
        try:
            yield
        finally:
            with _held_guard:
                fd, depth = _held[file]
                if depth > 1:
                    _held[file] = (fd, depth - 1)
                else:
                    del _held[file]
                    _release(fd)

    @contextmanager
    def writing(self, run_id: str) -> Iterator[RunWriter]:
        """Context manager: files written inside become visible only on clean exit.

        The body must call ``writer.save_manifest``; the run is committed when the
        block ends without an exception and discarded (temp folder removed) otherwise,
        KeyboardInterrupt included. Holds the run's write lock throughout.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with self.reserve(run_id):
            self.sweep()
            writer = RunWriter(self, run_id)
            try:
                yield writer
            except BaseException:
                writer.abort()
                raise
            writer.commit()

    def sweep(self) -> list[str]:
        """Remove what killed writers left behind; restore a link lost mid-replacement.

        A temporary folder is removed only when no live process holds its writer
        lock, so a writer still at work is never disturbed. Returns what was removed.
        """
        removed: list[str] = []
        versions = self.root / VERSIONS
        candidates = list(versions.glob(".tmp-*")) + list(versions.glob(".trash-*")) if versions.is_dir() else []
        candidates += [p for p in self.root.glob(".tmp-*")] + [p for p in self.root.glob(".trash-*")]
        candidates += list(self.root.glob(".link-*"))
        for run_dir in self.root.iterdir() if self.root.is_dir() else ():
            derived = run_dir / "derived"
            if not run_dir.name.startswith(".") and derived.is_dir():
                candidates += list(derived.glob(".tmp-*"))
                removed += _sweep_unreferenced_derived(run_dir)
        for p in candidates:
            if p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p.name)
                continue
            if not p.is_dir():
                continue
            lock = p / WRITER_LOCK
            fd = try_flock(lock) if lock.exists() else -1
            if fd is None:
                continue  # its writer is alive
            if fd == -1 and time.time() - p.stat().st_mtime < 3600 and not p.name.startswith(".trash-"):
                continue  # no lock file yet (just created, or an old-format folder): wait an hour
            if fd != -1:
                _release(fd)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
        if versions.is_dir():
            self._restore_lost_links(versions)
        return removed

    def writable(self) -> bool:
        """Whether this process can change the store (False on a read-only mount or without write
        permission on its folder; True for a store not created yet)."""
        folder = self.root
        while not folder.exists() and folder.parent != folder:
            folder = folder.parent
        return os.access(folder, os.W_OK)

    def _restore_lost_links(self, versions: Path) -> None:
        linked = {_current_version(self.root / name) for name in self.run_ids()}
        by_run: dict[str, list[Path]] = {}
        for v in versions.iterdir():
            if v.name.startswith(".") or v.resolve() in linked or not (v / MANIFEST).exists():
                continue
            by_run.setdefault(v.name.rsplit(".", 1)[0], []).append(v)
        for run_id, folders in by_run.items():
            link = self.root / run_id
            try:
                valid_run_id(run_id)
            except ValueError:
                continue
            with _try_reserve(self, run_id) as got:
                if not got:
                    continue
                if link.exists() or link.is_symlink():
                    for v in folders:  # superseded versions whose removal was cut short
                        _remove_version(v)
                    continue
                newest = max(folders, key=lambda v: v.stat().st_mtime)
                os.symlink(Path(VERSIONS) / newest.name, link)
                for v in folders:
                    if v != newest:
                        _remove_version(v)


def _sweep_unreferenced_derived(run_dir: Path) -> list[str]:
    """Derived folders and staged manifests that no manifest names (a writer killed mid-commit)."""
    try:
        lock = try_flock(run_dir / ".derived.lock")
    except OSError:
        return []  # a run folder this process cannot write to: nothing to repair from here
    if lock is None:
        return []  # a derived analysis is being committed right now
    removed = []
    try:
        try:
            referenced = {str(e.get("folder")) for e in (read_manifest(run_dir).get("derived") or {}).values()
                          if isinstance(e, dict)}
        except (RunNotFoundError, RunCorruptError):
            return []
        for p in (run_dir / "derived").iterdir():
            if not p.name.startswith(".") and p.is_dir() and p.name not in referenced:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        for p in run_dir.glob(f".{MANIFEST}.*"):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    finally:
        _release(lock)
    return removed


@contextmanager
def _try_reserve(store: RunStore, run_id: str) -> Iterator[bool]:
    """Like ``store.reserve`` but yields False instead of raising when the run is busy."""
    try:
        held = store.reserve(run_id)
        held.__enter__()
    except RunBusyError:
        yield False
        return
    try:
        yield True
    finally:
        held.__exit__(None, None, None)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _model_label(model: dict) -> str:
    """The model column of a run list: the file name, or 'imported: FILE' for imported predictions."""
    if model.get("format") == "predictions":
        return f"imported: {Path(str(model.get('predictions_file') or '?')).name}"
    return Path(str(model.get("path") or "?")).name


def _broken(run_id: str, problem: str) -> RunSummary:
    return RunSummary(run_id=run_id, name=run_id, created="", model="?", data="?", n_images=0,
                      n_classes=0, accuracy=math.nan, schema_version=0, problem=problem)
