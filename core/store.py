"""The run store: one folder per analysis run, readable with numpy and pandas alone.

Layout of a run folder ``<store>/<run_id>/``::

    manifest.json        schema version, model, data set, classes, metrics, timings,
                         library versions, skipped files with reasons, training record
    predictions.parquet  one row per image: id, path, split, true, predicted,
                         true_label, predicted_label, confidence, top2..topK
                         (+ _prob), correct
    probs.npy            float32 (N, K) class probabilities
    embeddings.npy       float32 (N, D) penultimate-layer features (absent if unavailable)
    projection.npy       float32 (N, 2) UMAP of the embeddings (absent if unavailable)
    per_class.csv        the per-class table of the evaluation split
    images.npy           uint8 (N, H, W[, C]) pixels, only for built-in array data sets

Rows of every array are aligned with the rows of ``predictions.parquet``.
A run is written into a hidden temporary folder and renamed into place when
complete, so readers never see half a run. Nothing here imports TensorFlow
or umap.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PREDICTIONS = "predictions.parquet"
PER_CLASS = "per_class.csv"
DEFAULT_STORE = Path(__file__).resolve().parent.parent / "artifacts"


class RunNotFoundError(LookupError):
    """No run of that id in the store."""


class RunSchemaError(RuntimeError):
    """The run was written by another schema version and must be re-made."""


def default_store_path() -> Path:
    """``$ARTIFACTS_DIR`` when set, else ``artifacts/`` beside ``core/``."""
    env = os.environ.get("ARTIFACTS_DIR")
    return Path(env).expanduser() if env else DEFAULT_STORE


def valid_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe folder name, else raise ValueError."""
    ok = (
        bool(run_id) and len(run_id) <= 120 and not run_id.startswith(".")
        and all(c.isalnum() or c in "-_." for c in run_id)
    )
    if not ok:
        raise ValueError(
            f"Invalid run name {run_id!r}: use 1-120 letters, digits, '-', '_' or '.', "
            "not starting with '.'"
        )
    return run_id


@dataclass(frozen=True)
class RunSummary:
    """What the run picker shows, read from the manifest alone."""

    run_id: str
    name: str
    created: str
    model: str
    data: str
    n_images: int
    n_classes: int
    accuracy: float
    schema_version: int


class Run:
    """A finished run on disk. Arrays are memory-mapped, tables read on first use."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.id = self.path.name
        try:
            self.manifest: dict = json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            raise RunNotFoundError(f"No run at {self.path} (no {MANIFEST})") from None
        version = self.manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RunSchemaError(
                f"Run {self.id!r} was written with schema version {version}; this version "
                f"reads {SCHEMA_VERSION}. Re-run the analysis: "
                f"python -m core analyze --model {self.manifest.get('model', {}).get('path', 'MODEL')} "
                f"--data {self.manifest.get('data', {}).get('path', 'DATA')} --force"
            )

    def __repr__(self) -> str:
        return f"Run({self.id!r}, n={self.n_images}, classes={len(self.classes)})"

    # --- manifest fields -------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def n_images(self) -> int:
        return int(self.manifest["counts"]["images"])

    @property
    def eval_split(self) -> str:
        """The split the metrics describe ('test', 'val', ... or 'all')."""
        return self.manifest.get("eval_split", "all")

    @property
    def metrics(self) -> dict:
        return dict(self.manifest.get("metrics", {}))

    @property
    def skipped(self) -> pd.DataFrame:
        return pd.DataFrame(self.manifest.get("skipped", []), columns=["path", "reason"])

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
        return pd.read_parquet(self.path / PREDICTIONS)

    def _array(self, name: str) -> np.ndarray | None:
        file = self.path / f"{name}.npy"
        if not file.exists():
            return None
        return np.load(file, mmap_mode="r", allow_pickle=False)

    @cached_property
    def probs(self) -> np.ndarray:
        return self._array("probs")

    @cached_property
    def embeddings(self) -> np.ndarray | None:
        return self._array("embeddings")

    @cached_property
    def projection(self) -> np.ndarray | None:
        return self._array("projection")

    @cached_property
    def per_class(self) -> pd.DataFrame:
        return pd.read_csv(self.path / PER_CLASS, keep_default_na=False)

    def per_class_csv(self) -> bytes:
        """The per-class report exactly as ``python -m core report`` writes it."""
        return (self.path / PER_CLASS).read_bytes()

    def eval_mask(self) -> np.ndarray:
        """Boolean mask of the rows the metrics describe."""
        split = self.eval_split
        splits = self.predictions["split"].to_numpy()
        return np.ones(len(splits), bool) if split == "all" else splits == split

    # --- images ------------------------------------------------------------
    @cached_property
    def _pixels(self) -> np.ndarray | None:
        return self._array("images")

    @property
    def data_root(self) -> Path | None:
        root = self.manifest.get("data", {}).get("root")
        return Path(root) if root else None

    def image_file(self, row: int) -> Path | None:
        """Absolute path of row's image file, only if it lies inside the data root."""
        root = self.data_root
        if root is None:
            return None
        rel = str(self.predictions["path"].iat[row])
        root = root.resolve()
        file = (root / rel).resolve()
        if not file.is_relative_to(root):
            raise PermissionError(f"Refusing to read {rel!r}: outside the data set root {root}")
        return file

    def image(self, row: int) -> np.ndarray | None:
        """RGB (or grayscale 2-D) uint8 pixels of one row, or None if unreadable."""
        if self._pixels is not None:
            return np.asarray(self._pixels[row])
        from core.images import read_image  # OpenCV only; cheap

        file = self.image_file(row)
        if file is None or not file.is_file():
            return None
        try:
            return read_image(file)
        except ValueError:
            return None


class RunWriter:
    """Collects a run's files in a hidden temporary folder; ``commit`` publishes it."""

    def __init__(self, store: "RunStore", run_id: str):
        self.store = store
        self.run_id = valid_run_id(run_id)
        self.tmp = store.root / f".tmp-{run_id}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)

    def save_array(self, name: str, array: np.ndarray) -> None:
        np.save(self.tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)

    def save_predictions(self, df: pd.DataFrame) -> None:
        df.to_parquet(self.tmp / PREDICTIONS, index=False)

    def save_per_class(self, df: pd.DataFrame) -> None:
        df.to_csv(self.tmp / PER_CLASS, index=False)

    def save_manifest(self, manifest: dict) -> None:
        manifest = {"schema_version": SCHEMA_VERSION, "run_id": self.run_id, **manifest}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default))

    def commit(self) -> Run:
        if not (self.tmp / MANIFEST).exists():
            raise RuntimeError("A run needs its manifest before it is committed")
        final = self.store.root / self.run_id
        trash = None
        if final.exists():
            trash = self.store.root / f".trash-{self.run_id}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
        os.replace(self.tmp, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return Run(final)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Cannot write {type(obj).__name__} to a manifest")


class RunStore:
    """Lists, loads, writes and deletes runs under one folder."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_store_path()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def run_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()
        )

    def list_runs(self) -> list[RunSummary]:
        """Every readable run, newest first. Runs of another schema are listed too."""
        out = []
        for run_id in self.run_ids():
            try:
                m = json.loads((self.root / run_id / MANIFEST).read_text())
            except (OSError, json.JSONDecodeError):
                continue
            out.append(RunSummary(
                run_id=run_id,
                name=m.get("name", run_id),
                created=m.get("created", ""),
                model=Path(m.get("model", {}).get("path") or "?").name,
                data=m.get("data", {}).get("name") or "?",
                n_images=int(m.get("counts", {}).get("images", 0)),
                n_classes=len(m.get("classes", [])),
                accuracy=float(m.get("metrics", {}).get("accuracy", float("nan"))),
                schema_version=int(m.get("schema_version", 0)),
            ))
        return sorted(out, key=lambda s: s.created, reverse=True)

    def exists(self, run_id: str) -> bool:
        return (self.root / run_id / MANIFEST).exists()

    def load(self, run_id: str) -> Run:
        valid_run_id(run_id)
        if not self.exists(run_id):
            known = ", ".join(self.run_ids()) or "none"
            raise RunNotFoundError(f"No run {run_id!r} in {self.root}. Runs: {known}")
        return Run(self.root / run_id)

    def delete(self, run_id: str) -> None:
        valid_run_id(run_id)
        if not self.exists(run_id):
            raise RunNotFoundError(f"No run {run_id!r} in {self.root}")
        trash = self.root / f".trash-{run_id}-{uuid.uuid4().hex[:8]}"
        os.replace(self.root / run_id, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def find_cached(self, cache_key: str) -> str | None:
        """The id of a current-schema run made with this cache key, if any."""
        for run_id in self.run_ids():
            try:
                m = json.loads((self.root / run_id / MANIFEST).read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if m.get("cache_key") == cache_key and m.get("schema_version") == SCHEMA_VERSION:
                return run_id
        return None

    @contextmanager
    def writing(self, run_id: str) -> Iterator[RunWriter]:
        """Context manager: files written inside become visible only on clean exit.

        The body must call ``writer.save_manifest``; the run is committed when the
        block ends without an exception and discarded (temp folder removed) otherwise,
        KeyboardInterrupt included.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep_stale()
        writer = RunWriter(self, run_id)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    def _sweep_stale(self, max_age_s: float = 24 * 3600) -> None:
        """Remove temp/trash folders left by a process killed hard (SIGKILL) a day ago."""
        now = time.time()
        for p in self.root.glob(".*-*"):
            if p.is_dir() and p.name.startswith((".tmp-", ".trash-")):
                try:
                    if now - p.stat().st_mtime > max_age_s:
                        shutil.rmtree(p, ignore_errors=True)
                except OSError:
                    pass
