"""Runs from predictions made elsewhere: any framework's class probabilities for a data set.

A predictions file has N rows, one per image of a data set (K classes):

* **CSV**: a ``path`` column and one probability column per class, named by
  class, in any order;
* **.npz**: ``paths`` (N,) unicode strings, ``probs`` (N, K) in the data set's
  class order (or in the order of an optional ``classes`` (K,) array), optional
  ``embeddings`` (N, D). Read with ``allow_pickle=False``: arrays of Python
  objects are refused, never unpickled.

Paths are the ones a run of the data set lists: relative to the data set's
root (``cat/cat_0.png``; ``./`` and ``\\`` separators are normalised; an
absolute path inside the root is accepted), or the ids of a built-in data set
(``test/00042``). Paths are only matched against the data set's own list;
nothing named in the predictions file is ever opened.

Rows must be probabilities: finite, non-negative, summing to 1 within 1e-3
(logits are refused: apply a softmax first). ``import_predictions`` writes a
normal run through ``core.run.write.write_run`` (the config's ``model_sha256`` is
the hash of the predictions file, and of the embeddings file when given, so
re-importing the same file reuses the run, as ``analyze`` does); the data set's
images without a prediction are listed in the run as skipped, with the reason
"no prediction in FILE". Embeddings get the UMAP map as in ``core.run.analyze``.
"""

from __future__ import annotations

import csv
import hashlib
import posixpath
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.datasets import ImageDataset
from core.errors import UserError
from core.model.load import file_sha256
from core.progress import Progress, say_function
from core.run import jobs
from core.run.analyze import analysis_config, default_run_id, reuse_or_refuse
from core.run.store import Run, RunStore, valid_run_id
from core.run.write import write_run

PROBABILITY_TOLERANCE = 1e-3
PREDICTION_SUFFIXES = (".csv", ".npz")
_SHOWN = 5  # how many offending paths an error names


class PredictionsError(UserError):
    """A predictions or embeddings file that cannot be imported (the message names the value at fault)."""


@dataclass(frozen=True)
class Predictions:
    """The rows of a predictions file, columns in the data set's class order.

    ``paths`` N normalised paths; ``probs`` float32 (N, K); ``embeddings``
    float32 (N, D) or None; ``where`` how the file numbers its rows ('line',
    1-based with the header as line 1, for a CSV; 'row', 0-based, for a .npz).
    """

    paths: list[str]
    probs: np.ndarray
    embeddings: np.ndarray | None
    where: str


def _row_name(i: int, where: str) -> str:
    return f"line {i + 2}" if where == "line" else f"row {i}"


def normal_path(text: str) -> str:
    """A path as a run lists it: forward slashes, no ``./``, no trailing slash.

    >>> normal_path("./cat\\\\cat_0.png"), normal_path("cat//cat_0.png")
    ('cat/cat_0.png', 'cat/cat_0.png')
    """
    p = str(text).strip().replace("\\", "/")
    return posixpath.normpath(p) if p else p


# --------------------------------------------------------------------------- checks on arrays

def align_columns(columns: Sequence[str], classes: Sequence[str], *, file: str) -> np.ndarray:
    """Index array ``order`` such that ``columns[order[k]]`` is ``classes[k]``.

    Raises PredictionsError naming the data set's classes without a column and the
    columns that are no class.

    >>> align_columns(["dog", "cat"], ["cat", "dog"], file="p.csv").tolist()
    [1, 0]
    """
    columns = [str(c).strip() for c in columns]
    missing = [c for c in classes if c not in columns]
    extra = [c for c in columns if c not in classes]
    if missing:
        raise PredictionsError(f"{file}: no probability column for classes of the data set {missing[:10]}"
                               f"{' ...' if len(missing) > 10 else ''} (one column per class, named by class: "
                               f"{list(classes)[:10]}{' ...' if len(classes) > 10 else ''})")
    if extra:
        raise PredictionsError(f"{file}: columns {extra[:10]}{' ...' if len(extra) > 10 else ''} are not classes of "
                               f"the data set (classes: {list(classes)[:10]}{' ...' if len(classes) > 10 else ''})")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise PredictionsError(f"{file}: class columns {duplicated} appear more than once")
    return np.asarray([columns.index(c) for c in classes], dtype=np.int64)


def check_probabilities(probs: np.ndarray, *, paths: Sequence[str], classes: Sequence[str], file: str,
                        where: str = "row", tol: float = PROBABILITY_TOLERANCE) -> None:
    """Raise PredictionsError at the first row of ``probs`` (N, K) that is not a probability vector.

    Checked in order: NaN or infinite values, negative values, row sums away
    from 1 by more than ``tol``. The message names the row, its path and the
    offending value or sum.
    """
    p = np.asarray(probs)  # float32 as read: no float64 copy of a 50,000 x 1,000 file
    bad = ~np.isfinite(p)
    if bad.any():
        i, k = np.argwhere(bad)[0]
        raise PredictionsError(f"{file}: {_row_name(i, where)} ({paths[i]!r}) has {p[i, k]} in column "
                               f"{classes[k]!r}; every probability must be a number")
    negative = p < 0  # not within tol: a negative value is no probability, and breaks log losses later
    if negative.any():
        i, k = np.argwhere(negative)[0]
        raise PredictionsError(f"{file}: {_row_name(i, where)} ({paths[i]!r}) has {p[i, k]:.6g} in column "
                               f"{classes[k]!r}; rows must be probabilities (non-negative, summing to 1): "
                               "apply a softmax to logits first")
    sums = p.sum(axis=1, dtype=np.float64)
    off = np.flatnonzero(np.abs(sums - 1.0) > tol)
    if len(off):
        i = off[0]
        raise PredictionsError(f"{file}: {_row_name(i, where)} ({paths[i]!r}) sums to {sums[i]:.6g}; rows must be "
                               f"probabilities summing to 1 (within {tol:g}): apply a softmax to logits first "
                               f"({len(off):,} rows are off)")


def match_paths(paths: Sequence[str], known: Sequence[str], *, file: str, data_name: str,
                where: str = "row", skipped: dict[str, str] | None = None) -> np.ndarray:
    """Row positions in ``known`` (the data set's paths) of each of ``paths`` (both normalised).

    Raises PredictionsError for a path listed twice (naming both rows) and for
    paths not in the data set (naming the first few and how many there are, and
    why the data set skipped one where ``skipped`` {path: reason} says).

    >>> match_paths(["b.png", "a.png"], ["a.png", "b.png"], file="p.csv", data_name="d").tolist()
    [1, 0]
    """
    first: dict[str, int] = {}
    for i, p in enumerate(paths):
        if p in first:
            raise PredictionsError(f"{file}: path {p!r} appears more than once ({_row_name(first[p], where)} and "
                                   f"{_row_name(i, where)})")
        first[p] = i
    index = {p: i for i, p in enumerate(known)}
    unknown = [p for p in paths if p not in index]
    if unknown:
        skipped = skipped or {}
        shown = ", ".join(repr(p) + (f" (skipped when the data set was read: {skipped[p]})" if p in skipped else "")
                          for p in unknown[:_SHOWN])
        raise PredictionsError(f"{file}: {len(unknown):,} of its {len(paths):,} paths are not in the data set "
                               f"{data_name}: {shown}{' ...' if len(unknown) > _SHOWN else ''} (paths are relative "
                               f"to the data set's root, as a run lists them, e.g. {known[0]!r})")
    return np.asarray([index[p] for p in paths], dtype=np.int64)


# --------------------------------------------------------------------------- reading files

def read_predictions(file: str | Path, *, classes: Sequence[str], say: Progress | None = None) -> Predictions:
    """Read and check a CSV or .npz predictions file; probability columns in ``classes`` order.

    Raises PredictionsError (one line, naming the value at fault) for an unknown
    suffix, a missing column or array, a class without a column or a column
    that is no class, a value that is not a number, NaN, rows that are not
    probabilities, and object arrays in a .npz.
    """
    path = Path(file)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        preds = _read_csv(path, classes, say)
    elif suffix == ".npz":
        preds = _read_npz(path, classes)
    else:
        raise PredictionsError(f"Unknown predictions file type {str(path)!r}: expected a .csv "
                               "(path + one column per class) or a .npz (paths, probs[, embeddings])")
    if len(preds.paths) == 0:
        raise PredictionsError(f"{path.name}: no predictions in it")
    check_probabilities(preds.probs, paths=preds.paths, classes=classes, file=path.name, where=preds.where)
    return preds


CSV_CELLS_PER_CHUNK = 1_000_000  # cells parsed at a time: memory stays bounded whatever the file's size


def _read_csv(path: Path, classes: Sequence[str], say: Progress | None = None) -> Predictions:
    """Stream the CSV (the csv module, a row at a time) and parse its numbers a chunk of about
    ``CSV_CELLS_PER_CHUNK`` cells at a time into float32: 50,000 x 1,000 probabilities cost about
    their own size (every cell kept as a Python string cost 5.8 GB). A row with more or fewer fields
    than the header is refused as ragged, naming its line. ``say`` hears the fraction of bytes read,
    every 2 s."""
    total = max(path.stat().st_size, 1)
    paths: list[str] = []
    blocks: list[np.ndarray] = []
    said = time.monotonic()
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise PredictionsError(f"{path.name}: no predictions in it")
            columns = [str(c).strip() for c in header]
            if "path" not in columns:
                raise PredictionsError(f"{path.name}: no 'path' column (columns: {columns[:10]}); expected "
                                       "'path' and one probability column per class")
            path_at = columns.index("path")
            class_at = [i for i, c in enumerate(columns) if c != "path"]
            order = align_columns([columns[i] for i in class_at], classes, file=path.name)
            take = [int(i) for i in np.asarray(class_at)[order]]
            sliced = take == list(range(take[0], take[0] + len(take))) if take else False  # one slice per row
            chunk_rows = max(1, CSV_CELLS_PER_CHUNK // len(columns))
            texts: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if not row:
                    continue  # a blank line, as pandas skipped it
                if len(row) != len(columns):
                    raise PredictionsError(f"{path.name}: line {reader.line_num} has {len(row)} fields but the "
                                           f"header has {len(columns)} (a ragged row)")
                paths.append(normal_path(row[path_at]))
                texts.append(row[take[0]:take[0] + len(take)] if sliced else [row[i] for i in take])
                lines.append(reader.line_num)
                if len(texts) >= chunk_rows:
                    blocks.append(_parse_numbers(texts, paths=paths[-len(texts):], lines=lines,
                                                 classes=classes, file=path.name))
                    texts, lines = [], []
                    if say is not None and time.monotonic() - said >= 2.0:
                        said = time.monotonic()
                        done = fh.buffer.tell() / total  # the text file's own tell() is refused while iterating
                        say(f"Reading predictions: {len(paths):,} rows ({min(done, 1.0):.0%})", min(done, 1.0))
            if texts:
                blocks.append(_parse_numbers(texts, paths=paths[-len(texts):], lines=lines, classes=classes,
                                             file=path.name))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PredictionsError(f"{path.name}: not a readable CSV ({_first_line(exc)})") from None
    probs = np.concatenate(blocks) if blocks else np.empty((0, len(classes)), np.float32)
    return Predictions(paths=paths, probs=probs, embeddings=None, where="line")


def _parse_numbers(texts: list[list[str]], *, paths: list[str], lines: list[int], classes: Sequence[str],
                   file: str) -> np.ndarray:
    """float32 (n, K) from the text cells of one chunk; an empty cell is NaN (refused by
    ``check_probabilities`` by name), any other text that is not a number a PredictionsError naming it."""
    try:
        return np.asarray(texts, dtype=np.float64).astype(np.float32)
    except ValueError:
        pass
    values = np.empty((len(texts), len(classes)), np.float64)
    for i, row in enumerate(texts):
        for k, text in enumerate(row):
            try:
                values[i, k] = float(text) if text.strip() else np.nan
            except ValueError:
                raise PredictionsError(f"{file}: line {lines[i]} ({paths[i]!r}) has {str(text)!r} in column "
                                       f"{classes[k]!r}, which is not a number") from None
    return values.astype(np.float32)


def _npz_array(archive, name: str, file: Path) -> np.ndarray:
    try:
        return archive[name]
    except ValueError as exc:  # "Object arrays cannot be loaded when allow_pickle=False"
        if "allow_pickle" in str(exc):
            raise PredictionsError(f"{file.name}: array {name!r} holds Python objects, which are not loaded "
                                   "(allow_pickle=False: unpickling can run code); save strings as a unicode "
                                   f"array, e.g. np.array({name}, dtype=str)") from None
        raise PredictionsError(f"{file.name}: array {name!r} cannot be read ({_first_line(exc)})") from None


def _read_npz(path: Path, classes: Sequence[str]) -> Predictions:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise PredictionsError(f"{path.name}: not a readable .npz archive ({_first_line(exc)})") from None
    if not hasattr(archive, "files"):
        raise PredictionsError(f"{path.name}: a single array, not a .npz archive of 'paths' and 'probs'")
    with archive:
        missing = [k for k in ("paths", "probs") if k not in archive.files]
        if missing:
            raise PredictionsError(f"{path.name}: no array {missing} (arrays: {archive.files}); expected 'paths' (N,) "
                                   "strings, 'probs' (N, K), optional 'embeddings' (N, D) and 'classes' (K,)")
        paths = _npz_array(archive, "paths", path)
        probs = _npz_array(archive, "probs", path)
        names = _npz_array(archive, "classes", path) if "classes" in archive.files else None
        embeddings = _npz_array(archive, "embeddings", path) if "embeddings" in archive.files else None
    for name, arr in (("paths", paths), ("classes", names)):
        if arr is not None and (arr.ndim != 1 or arr.dtype.kind != "U"):
            raise PredictionsError(f"{path.name}: array {name!r} must be 1-D unicode strings "
                                   f"(np.array(..., dtype=str)); it is {arr.dtype} of shape {arr.shape}")
    if probs.ndim != 2 or probs.dtype.kind not in "fiu":
        raise PredictionsError(f"{path.name}: 'probs' must be a 2-D numeric array (N, K); it is {probs.dtype} of "
                               f"shape {probs.shape}")
    if len(probs) != len(paths):
        raise PredictionsError(f"{path.name}: 'probs' has {len(probs):,} rows but 'paths' has {len(paths):,}")
    if names is not None:
        if len(names) != probs.shape[1]:
            raise PredictionsError(f"{path.name}: 'classes' names {len(names)} classes but 'probs' has "
                                   f"{probs.shape[1]} columns")
        probs = probs[:, align_columns(names.tolist(), classes, file=path.name)]
    elif probs.shape[1] != len(classes):
        raise PredictionsError(f"{path.name}: 'probs' has {probs.shape[1]} columns but the data set has {len(classes)} "
                               f"classes {list(classes)[:10]}{' ...' if len(classes) > 10 else ''} (add a 'classes' "
                               "array to say which column is which)")
    if embeddings is not None:
        embeddings = check_embeddings(embeddings, n_rows=len(paths), file=f"{path.name}['embeddings']",
                                      predictions=path.name)
    return Predictions(paths=[normal_path(p) for p in paths.tolist()], probs=probs.astype(np.float32),
                       embeddings=embeddings, where="row")


def check_embeddings(embeddings: np.ndarray, *, n_rows: int, file: str, predictions: str) -> np.ndarray:
    """float32 (N, D) from ``embeddings``; PredictionsError for a wrong shape, row count, type or NaN."""
    e = np.asarray(embeddings)
    if e.ndim != 2 or e.dtype.kind not in "fiu":
        raise PredictionsError(f"{file}: embeddings must be a 2-D numeric array (N, D); it is {e.dtype} of shape "
                               f"{e.shape}")
    if len(e) != n_rows:
        raise PredictionsError(f"{file}: {len(e):,} rows of embeddings but {predictions} has {n_rows:,} predictions "
                               "(one embedding per prediction, in the same order)")
    finite = np.isfinite(e).all(axis=1)
    if not finite.all():
        raise PredictionsError(f"{file}: embedding row {int(np.flatnonzero(~finite)[0])} is not finite (NaN or inf)")
    return e.astype(np.float32, copy=False)


def read_embeddings(file: str | Path, *, n_rows: int, predictions: str) -> np.ndarray:
    """(N, D) float32 from a ``.npy`` file (allow_pickle=False), checked as ``check_embeddings`` does."""
    path = Path(file)
    if not path.is_file():
        raise PredictionsError(f"Embeddings file does not exist: {str(path)!r}")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        hint = " (an object array: save a numeric one)" if "allow_pickle" in str(exc) else ""
        raise PredictionsError(f"{path.name}: not a readable .npy array{hint} ({_first_line(exc)})") from None
    except OSError as exc:
        raise PredictionsError(f"{path.name}: cannot be read ({_first_line(exc)})") from None
    if not isinstance(arr, np.ndarray):
        raise PredictionsError(f"{path.name}: a .npz archive; --embeddings takes one (N, D) .npy array")
    return check_embeddings(arr, n_rows=n_rows, file=path.name, predictions=predictions)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# --------------------------------------------------------------------------- the run

def _dataset_paths(dataset: ImageDataset) -> list[str]:
    return [normal_path(p) for p in dataset.paths]


def _relative_to_root(path: str, dataset: ImageDataset) -> str:
    """An absolute path inside the data set's root made relative to it (as text; nothing is opened)."""
    if not posixpath.isabs(path) or dataset.root is None:
        return path
    for base in {str(dataset.root.absolute()), str(dataset.root.resolve())}:
        base = normal_path(base)
        if path.startswith(base.rstrip("/") + "/"):
            return path[len(base.rstrip("/")) + 1:]
    return path


def predictions_sha256(predictions_file: str | Path, embeddings_file: str | Path | None = None) -> str:
    """The run's ``model_sha256``: the predictions file's hash, combined with the embeddings file's if any."""
    sha = file_sha256(predictions_file)
    if embeddings_file is None:
        return sha
    return hashlib.sha256(f"{sha}:{file_sha256(embeddings_file)}".encode()).hexdigest()


def import_predictions(
    dataset: ImageDataset, predictions_file: str | Path, *, store: RunStore | None = None,
    run_id: str | None = None, embeddings_file: str | Path | None = None, projection: bool = True,
    seed: int = 0, force: bool = False, progress: bool | Progress = True, background_projection: bool = False,
) -> Run:
    """Make a run of ``dataset`` from a predictions file (CSV or .npz; see the module docstring).

    The run holds the predicted rows in the data set's order; the other images
    are listed as skipped ("no prediction in FILE"). ``embeddings_file`` (.npy,
    (N, D), rows in the predictions file's order) or the .npz's ``embeddings``
    give the run its embeddings and UMAP map (unless ``projection=False``).
    A run of the same files, data and options is reused unless ``force``.
    Raises PredictionsError (a ValueError, one line) for a file that cannot be used.
    """
    store = store or RunStore()
    t_start = time.perf_counter()
    say = say_function(progress)
    file = Path(predictions_file)
    if not file.is_file():
        raise PredictionsError(f"Predictions file does not exist: {str(file)!r}")
    if file.suffix.lower() not in PREDICTION_SUFFIXES:
        raise PredictionsError(f"Unknown predictions file type {str(file)!r}: expected a .csv "
                               "(path + one column per class) or a .npz (paths, probs[, embeddings])")
    if embeddings_file is not None and not Path(embeddings_file).is_file():
        raise PredictionsError(f"Embeddings file does not exist: {str(embeddings_file)!r}")
    config = analysis_config(model_sha256=predictions_sha256(file, embeddings_file), dataset=dataset,
                             projection=projection, seed=seed)
    named = run_id is not None
    if run_id is None:
        run_id = default_run_id(file.stem, dataset, config)
    valid_run_id(run_id)
    run = reuse_or_refuse(store, run_id, config, named=named, force=force, say=say)
    if run is None:
        with store.reserve(run_id):
            run = _write_imported_run(dataset, file, embeddings_file, store=store, run_id=run_id, config=config,
                                      say=say, t_start=t_start)
    # the map, a derived kind like any other (core.analysis.projection), named rather than imported;
    # progress from 0.92, the map's share of an analysis
    return jobs.ensure(run, "projection", background=background_projection, progress=progress, start_at=0.92)


def _write_imported_run(dataset: ImageDataset, file: Path, embeddings_file: str | Path | None, *,
                        store: RunStore, run_id: str, config, say: Progress, t_start: float) -> Run:
    say(f"Reading predictions {file}", 0.0)
    preds = read_predictions(file, classes=dataset.classes, say=lambda message, fraction: say(message, 0.8 * fraction))
    embeddings = preds.embeddings
    if embeddings_file is not None:
        if embeddings is not None:
            raise PredictionsError(f"Embeddings given twice: {file.name} has an 'embeddings' array and "
                                   f"--embeddings {Path(embeddings_file).name} was given; keep one")
        embeddings = read_embeddings(embeddings_file, n_rows=len(preds.paths), predictions=file.name)
    paths = [_relative_to_root(p, dataset) for p in preds.paths]
    known = _dataset_paths(dataset)
    rows = match_paths(paths, known, file=file.name, where=preds.where,
                       data_name=f"{dataset.name!r} ({dataset.source or dataset.kind})",
                       skipped={str(s["path"]): str(s["reason"]) for s in dataset.skipped})
    order = np.argsort(rows, kind="stable")  # the run lists images in the data set's order
    rows = rows[order]
    predicted = np.zeros(len(dataset), bool)
    predicted[rows] = True
    reason = f"no prediction in {file.name}"
    not_predicted = [{"path": dataset.paths[i], "reason": reason} for i in np.flatnonzero(~predicted)]
    kept = dataset.subset(rows)
    notes = [f"Imported from {file.name}: the predictions were made outside this tool, so there is no model "
             "to classify new images or to compute Grad-CAM maps."]
    if not_predicted:
        notes.append(f"{len(not_predicted):,} of the data set's {len(dataset):,} images have no prediction in "
                     f"{file.name} and are listed as skipped.")
    say("Writing run", 0.9)
    run = write_run(
        store, run_id, classes=dataset.classes, y_true=kept.labels, probs=preds.probs[order], paths=kept.paths,
        splits=kept.splits, embeddings=None if embeddings is None else embeddings[order], images=kept.pixels,
        model={"path": None, "sha256": config.model_sha256, "format": "predictions",
               "predictions_file": str(file.resolve()),
               "embeddings_file": str(Path(embeddings_file).resolve()) if embeddings_file else None,
               "outputs_were": "probabilities"},
        data={**dataset.describe(), "fingerprint": config.data_fingerprint},
        layer=None, skipped=list(dataset.skipped) + not_predicted,
        timings={"total_s": round(time.perf_counter() - t_start, 3)},
        config=config, notes=notes,
    )
    say(f"Run {run.id!r}: accuracy {run.metrics['accuracy']:.4f} on {run.eval_split} "
        f"({run.metrics['n']:,} images), {len(not_predicted):,} without a prediction", 0.92)
    return run

