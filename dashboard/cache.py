"""Every Streamlit cache of the dashboard, in one place.

Runs are cached with ``st.cache_resource`` (one shared, read-only object per
store path + run id + ``run_stamp``: the version folder the run's link points
to and its manifest's modification time, so a re-made run is re-read), and so
is the verdict on whether a run can be opened at all (``run_problem``).
Derived data takes the run as ``_run`` (not hashed) plus its ``run_key``
(hashed). Small tables use ``st.cache_data``; arrays with one
entry per image (up to millions of rows) use ``st.cache_resource`` because
``st.cache_data`` would pickle and copy them on every rerun. Callers must not
modify what these functions return.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.analysis import neighbours
from core.analysis.projection import stored_projection
from core.run import metrics
from core.run.store import (
    MANIFEST,
    PREDICTIONS,
    Run,
    RunCorruptError,
    RunNotFoundError,
    RunSchemaError,
    RunStore,
    RunSummary,
    default_store_path,
)
from dashboard import mapview, views

# What opening a run raises when its files cannot be used (ValueError: a name that is no run id;
# OSError: a file that cannot be read). Every one becomes a one-line reason.
RUN_ERRORS = (RunNotFoundError, RunSchemaError, RunCorruptError, ValueError, OSError)  # boundary: pyarrow's ArrowInvalid and numpy's load errors are ValueErrors


def store_root() -> str:
    """The run store folder: $ARTIFACTS_DIR, else the project default (read on every rerun)."""
    return str(default_store_path())


def run_key(run: Run) -> str:
    """A key unique to this written version of the run (its version folder and uid)."""
    return f"{run.path}:{run.uid}"


def run_stamp(root: str, run_id: str) -> str:
    """Changes when ``run_id`` is re-made (its link points to a new version folder) or its
    manifest is rewritten; "" when the run is gone."""
    link = Path(root) / run_id
    try:
        return f"{link.resolve(strict=True)}:{(link / MANIFEST).stat().st_mtime_ns}"
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return ""


def open_run(root: str, run_id: str) -> Run:
    """Open and verify a run, uncached: the store's file checks, then the prediction columns
    the pages read. Raises one of ``RUN_ERRORS``, its message naming the file at fault."""
    import pyarrow.parquet as pq

    run = RunStore(root).load(run_id)
    try:
        names = set(pq.read_schema(run.path / PREDICTIONS).names)
    except Exception as exc:  # boundary: pyarrow's errors for a damaged file are of several types
        raise RunCorruptError(f"{run.location / PREDICTIONS}: not a readable Parquet file "
                              f"({views.one_line(exc)})") from None
    missing = [c for c in views.PREDICTION_COLUMNS if c not in names]
    if missing:
        raise RunCorruptError(f"{run.location / PREDICTIONS}: no column {', '.join(map(repr, missing))}")
    return run


@st.cache_resource(max_entries=8, show_spinner=False)
def _load_run(root: str, run_id: str, stamp: str) -> Run:
    return open_run(root, run_id)


def load_run(root: str, run_id: str) -> Run:
    """The run ``run_id`` of the store at ``root``, verified (cached until it is re-made or its
    manifest changes). Raises one of ``RUN_ERRORS``."""
    return _load_run(root, run_id, run_stamp(root, run_id))


@st.cache_data(max_entries=1024, show_spinner=False)
def _run_problem(root: str, run_id: str, stamp: str) -> str | None:
    try:
        open_run(root, run_id)
    except RUN_ERRORS as exc:
        return views.one_line(exc)
    return None


def run_problem(root: str, summary: RunSummary) -> str | None:
    """Why the run cannot be opened (one line), or None: the store's verdict from the manifest,
    else the file checks of ``open_run`` (run once per version of the run)."""
    if summary.problem:
        return views.one_line(summary.problem)
    return _run_problem(root, summary.run_id, run_stamp(root, summary.run_id))


@st.cache_resource(max_entries=8, show_spinner=False)
def eval_mask(_run: Run, key: str) -> np.ndarray:
    """Boolean (N,) mask of the evaluation split."""
    return _run.eval_mask()


def projection_stamp(run: Run) -> str:
    """Changes when the run's map appears or is recomputed: 'legacy' (a projection.npy written with
    the run), the derived result's folder, or 'none'."""
    if (run.path / "projection.npy").exists():
        return "legacy"
    info = run.derived_info("projection")
    return f"derived:{info.folder}" if info is not None else "none"


@st.cache_resource(max_entries=8, show_spinner=False)
def projection(_run: Run, key: str, stamp: str) -> np.ndarray | None:
    """(N, 2) float32 projection in memory, or None when the run has none (yet)."""
    xy = stored_projection(_run)
    return None if xy is None else np.ascontiguousarray(xy, dtype=np.float32)


@st.cache_resource(max_entries=8, show_spinner=False)
def point_index(_run: Run, key: str, stamp: str) -> mapview.SortedPoints:
    """The map's points sorted by y, for box and lasso selections (built once per map)."""
    return mapview.SortedPoints(projection(_run, key, stamp))


@st.cache_resource(max_entries=8, show_spinner=False)
def full_window(_run: Run, key: str, stamp: str) -> mapview.Window:
    """The window that shows every point of the map."""
    return mapview.full_window(projection(_run, key, stamp))


@st.cache_resource(max_entries=8, show_spinner=False)
def split_names(_run: Run, key: str) -> list[str]:
    """The run's split names, sorted (read from the categorical, not from N strings)."""
    return sorted(str(s) for s in _run.predictions["split"].unique())


@st.cache_resource(max_entries=16, show_spinner=False)
def map_filter(_run: Run, key: str, split: str, classes: tuple[int, ...]) -> np.ndarray:
    """Boolean (N,) mask of the rows the map's filters keep."""
    return views.filter_mask(_run.predictions, split=split, classes=classes)


@st.cache_resource(max_entries=32, show_spinner=False)
def map_plan(_run: Run, key: str, stamp: str, split: str, classes: tuple[int, ...], window: mapview.Window,
             color_by: str, cap: int) -> mapview.MapPlan:
    """The Embeddings page's plan for one set of filters, window and colouring: reruns that change
    only the selection or the gallery page reuse it."""
    df = _run.predictions
    return mapview.plan_map(
        projection(_run, key, stamp), map_filter(_run, key, split, classes), window, color_by=color_by,
        true=df["true"].to_numpy(), predicted=df["predicted"].to_numpy(), correct=df["correct"].to_numpy(bool),
        confidence=df["confidence"].to_numpy(), n_classes=len(_run.classes), cap=cap)


@st.cache_resource(max_entries=16, show_spinner=False)
def selection_rows(_run: Run, key: str, stamp: str, split: str, classes: tuple[int, ...],
                   shapes_text: str) -> np.ndarray:
    """Every row the filters keep inside the selection's shapes (``state.encode_shapes`` text),
    computed from the projection, most confident first."""
    from dashboard.state import decode_shapes

    inside = point_index(_run, key, stamp).in_shapes(decode_shapes(shapes_text))
    inside = inside[map_filter(_run, key, split, classes)[inside]]
    confidence = _run.predictions["confidence"].to_numpy()[inside]
    return inside[np.argsort(-confidence, kind="stable")]


@st.cache_data(max_entries=16, show_spinner=False)
def eval_confusion(_run: Run, key: str) -> np.ndarray:
    """(K, K) confusion matrix of the evaluation split, rows true, columns predicted."""
    df = _run.predictions
    mask = eval_mask(_run, key)
    return metrics.confusion_matrix(df["true"].to_numpy()[mask], df["predicted"].to_numpy()[mask],
                                    n_classes=len(_run.classes))


@st.cache_data(max_entries=16, show_spinner=False)
def class_distribution(_run: Run, key: str) -> pd.DataFrame:
    """Images per class and split (columns class, split, count)."""
    return views.class_distribution(_run.predictions, _run.classes)


@st.cache_resource(max_entries=8, show_spinner=False)
def reference_pools(_run: Run, key: str) -> tuple[str, list[np.ndarray]]:
    """The images neighbours are searched among, by true class, and what they are: the training
    images when the run has a 'train' split, else every image (see ``core.analysis.neighbours``)."""
    df = _run.predictions
    rows, kind = neighbours.reference_rows(df["split"].astype(str).to_numpy())
    return kind, neighbours.rows_by_class(df["true"].to_numpy(), rows, n_classes=len(_run.classes))


@st.cache_resource(max_entries=8, show_spinner=False)
def samples_per_class(_run: Run, key: str, per_class: int = 4) -> list[np.ndarray]:
    """The first ``per_class`` rows of each class (a fixed, cheap sample for the overview)."""
    true = _run.predictions["true"].to_numpy()
    order = np.argsort(true, kind="stable")
    bounds = np.searchsorted(true[order], np.arange(len(_run.classes) + 1))
    return [order[bounds[c]:min(bounds[c] + per_class, bounds[c + 1])] for c in range(len(_run.classes))]


@st.cache_data(max_entries=8, show_spinner=False)
def comparison(_a: Run, _b: Run, key_a: str, key_b: str):
    """Runs A and B compared on the images held out by both (``core.analysis.compare.Comparison``), or the
    one line saying why they cannot be compared."""
    from core.analysis.compare import ComparisonError, compare

    try:
        return compare(_a, _b)
    except ComparisonError as exc:
        return str(exc)


@st.cache_data(max_entries=64, show_spinner=False)
def image_signature(_run: Run, key: str) -> str:
    """The run's images and labels as one hash, whatever their splits (``core.analysis.compare.image_signature``)."""
    from core.analysis.compare import image_signature as signature

    return signature(_run)


@st.cache_data(max_entries=1024, show_spinner=False)
def thumbnail(_run: Run, key: str, row: int, size: int) -> tuple[np.ndarray | None, str | None]:
    """Row ``row``'s image scaled to about ``size`` px on its long side, or (None, why not).

    Kept per run key, row and size (at most 1,024 thumbnails, about 40 MB), so a
    rerun decodes nothing. The reason is one line: an image over the pixel limit
    (refused from its header, see core.data.images), missing, undecodable or outside
    the data set root.
    """
    from core.data.images import read_image
    from core.data.images import thumbnail as scaled

    try:
        file = _run.image_file(row)
        img = _run.image(row) if file is None else read_image(file, min_size=(size, size))
    except (ValueError, OSError) as exc:  # OSError: PermissionError for a path outside the root
        return None, str(exc)
    if img is None:
        return None, "the run stores no image for this row"
    return scaled(img, size=size), None


@st.cache_resource(max_entries=2, show_spinner="Loading the model...")
def run_model(_run: Run, key: str):
    """The run's model for single-image predictions (imports TensorFlow on first use).

    Loaded in Keras safe mode unless the dashboard's operator listed the file's hash in
    ``CLASSIFIER_TRUSTED_MODELS`` (``core.model.trust``; never the run's manifest); a model that can
    run arbitrary code otherwise raises ModelError, and the refusal (an exception) is not cached."""
    from core.run.analyze import load_run_model  # heavy: TensorFlow, only on the "Try an image" page

    return load_run_model(_run)


# --------------------------------------------------------------------------- review verdicts (dashboard.review_ui)

DASHBOARD_RETRY_S = 2.0  # how long a verdict (or a read) waits for another process's lock


@st.cache_resource(max_entries=4, show_spinner=False)
def review_db(root: str):
    """The store's verdicts file (``core.review.verdicts.ReviewDB``): one object for every session; each
    thread keeps its own SQLite connection, and a verdict is one short transaction."""
    from core.review.verdicts import ReviewDB, review_db_path

    # a page never waits a minute for another process's write lock: it says so and lets the user retry
    return ReviewDB(review_db_path(root), retry_for_s=DASHBOARD_RETRY_S)


@st.cache_resource(max_entries=8, show_spinner=False)
def run_review(_run: Run, key: str, root: str):
    """``core.review.reviewed.RunReview`` of the run (its canonical paths computed once)."""
    from core.review.reviewed import RunReview

    return RunReview(_run, review_db(root))


@st.cache_resource(max_entries=8, show_spinner=False)
def review_rows(_run: Run, key: str, root: str, revision: int) -> tuple[np.ndarray, np.ndarray]:
    """(verdicts, new_labels) aligned with the run's rows (``RunReview.row_arrays``), read again
    whenever the verdicts file's ``revision`` changes (any reviewer, any process)."""
    return run_review(_run, key, root).row_arrays()


def derived_stamp(run: Run, name: str) -> str:
    """Changes when the derived result ``name`` of ``run`` appears or is recomputed ('none' without)."""
    info = run.derived_info(name)
    return f"{info.folder}" if info is not None else "none"


@st.cache_resource(max_entries=8, show_spinner=False)
def label_issues(_run: Run, key: str, stamp: str) -> pd.DataFrame | None:
    """The stored ``label_issues`` table (most likely wrong first), or None when it is not stored
    or stale (never computed here)."""
    if stamp == "none":
        return None
    from core.run import derived

    stored = derived.get(_run, "label_issues", compute=False)
    return None if stored is None else stored.table("label_issues")


@st.cache_resource(max_entries=8, show_spinner=False)
def stored_slices(_run: Run, key: str, stamp: str) -> pd.DataFrame | None:
    """The stored ``error_slices`` table of slices, or None when it is not stored or stale."""
    if stamp == "none":
        return None
    from core.run import derived

    stored = derived.get(_run, "error_slices", compute=False)
    return None if stored is None else stored.table("slices")


@st.cache_resource(max_entries=8, show_spinner=False)
def stored_causes(_run: Run, key: str, stamp: str):
    """The stored ``causes`` result's (table, neighbours table, summary), or None when it is not
    stored or stale (never computed here)."""
    if stamp == "none":
        return None
    from core.run import derived

    stored = derived.get(_run, "causes", compute=False)
    if stored is None:
        return None
    table = stored.table("causes")
    return table.set_axis(table["row"].to_numpy(), axis=0), stored.table("neighbours"), stored.summary


@st.cache_resource(max_entries=2, show_spinner=False)  # attention_ui says so in a toast
def attention_explainer(_run: Run, key: str):
    """The run's model prepared for Grad-CAM (imports TensorFlow on first use; only when the
    attention toggle is on or the image detail asks). Refusals raise and are not cached."""
    from core.analysis.gradcam import explainer_for_run

    return explainer_for_run(_run)


@st.cache_resource(max_entries=8, show_spinner=False)
def attention_memo(_run: Run, key: str):
    """The attention maps of run ``key`` computed or read so far (an ``AttentionMemo``, filled under
    its lock by attention_ui.row_maps)."""
    return AttentionMemo()


@dataclass
class AttentionMemo:
    """The maps of one run computed or read so far in this server process (rows -> attention_ui's
    RowMaps), and the one-line reason when the run's model cannot be explained at all."""

    rows: dict = field(default_factory=dict)
    problem: str | None = None
    cost: dict = field(default_factory=dict)  # occlusion: passes_per_image, seconds_per_image
    deferred: dict = field(default_factory=dict)  # row -> (reason, time.monotonic()): over a page's budget
    lock: threading.Lock = field(default_factory=threading.Lock)


@st.cache_resource(max_entries=8, show_spinner=False)
def label_suggestions(_run: Run, key: str, stamp: str) -> np.ndarray | None:
    """int (N,): the class the stored ``label_issues`` result suggests for each row (-1 where it
    scored none), or None when that result is not stored."""
    table = label_issues(_run, key, stamp)
    if table is None:
        return None
    index = {c: i for i, c in enumerate(_run.classes)}
    suggested = np.full(_run.n_images, -1, dtype=np.int64)
    suggested[table["row"].to_numpy(np.int64)] = [index.get(c, -1) for c in table["suggested_label"]]
    return suggested


# --------------------------------------------------------------------------- diagnoses (dashboard/diagnose_ui.py)

def diagnoses_stamp(run: Run) -> str:
    """Changes whenever any derived result of ``run`` is stored again (each is a new folder)."""
    return ",".join(sorted(f"{info.name}={info.folder}" for info in run.derived_infos()))


@st.cache_resource(max_entries=8, show_spinner=False)
def diagnose_rows(_run: Run, key: str, stamp: str) -> pd.DataFrame | None:
    """Every stored kind's per-image diagnosis columns side by side (N lines), None when none is stored."""
    from core.diagnose.findings import merged_columns

    return merged_columns(diagnose_declared(_run, key, stamp), _run.n_images)


@st.cache_resource(max_entries=8, show_spinner=False)
def diagnose_declared(_run: Run, key: str, stamp: str) -> dict:
    """``{kind: Findings}`` of the stored results that declare findings (``core.run.derived.all_findings``)."""
    from core.run import derived

    return derived.all_findings(_run)


@st.cache_resource(max_entries=8, show_spinner=False)
def diagnose_cards(_run: Run, key: str, stamp: str) -> list:
    """``(core Card, errors explained)`` of the stored findings, most errors explained first."""
    from core.diagnose import DIAGNOSES
    from core.diagnose.findings import rank_cards

    found = diagnose_declared(_run, key, stamp)
    correct = _run.predictions["correct"].to_numpy(bool)
    return rank_cards([c for f in found.values() for c in f.cards], correct, eval_mask(_run, key),
                      kind_order=DIAGNOSES)


@st.cache_resource(max_entries=8, show_spinner=False)
def reviewed_metrics(_run: Run, key: str, root: str, revision: int):
    """``RunReview.reviewed_metrics()`` of the run, recomputed when the verdicts' ``revision`` changes."""
    return run_review(_run, key, root).reviewed_metrics()


@st.cache_resource(max_entries=8, show_spinner=False, ttl=60)
def _data_change_line(key: str, _run: Run) -> str | None:
    return _run.data_change_line()


def data_change_line(run: Run) -> str | None:
    """``Run.data_change_line`` (one stat per image file), looked at again at most once a minute."""
    return _data_change_line(run_key(run), run)
