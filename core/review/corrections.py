"""Training on corrections: a corrections CSV read and checked, and applied to a data set (``train --corrections``)."""

from __future__ import annotations

import csv
import hashlib
import os
import posixpath
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from core.review.verdicts import CORRECTION_COLUMNS, VERDICTS, ReviewError, canonical_path, some_names


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
        # streamed, a row at a time: an oversized file is refused at its first row too many, not read
        # whole first (a 112 MB file peaked at 781 MB), and hashed in blocks
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = csv.reader(fh)
            try:
                table = _checked_corrections(rows, path, max_rows=max_rows)
            except csv.Error as exc:  # a field over the csv module's limit, a NUL byte
                raise ReviewError(f"{path}:{rows.line_num}: not a readable CSV row ({exc})") from None
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise ReviewError(f"Corrections file not found: {str(path)!r}") from None
    except IsADirectoryError:
        raise ReviewError(f"Corrections must be a CSV file, not a folder: {str(path)!r}") from None
    except UnicodeDecodeError:
        raise ReviewError(f"{path}: not a UTF-8 CSV file") from None
    return Corrections(table=table, file=str(path.resolve()), sha256=digest.hexdigest())


def _checked_corrections(rows, path: Path, *, max_rows: int | None) -> pd.DataFrame:
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
    return table


def apply_corrections(dataset, corrections: Corrections):
    """``dataset`` (a ``core.data.datasets.ImageDataset``) relabelled and with excluded rows dropped.

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
    first: dict[str, str] = {}
    for p, key in zip(table["path"], wanted):  # two spellings of one image ('x.png', './x.png', its full path)
        if key in first:
            raise ReviewError(f"{corrections.file}: {first[key]!r} and {p!r} are the same image ({key!r}); each "
                              "image is corrected at most once")
        first[key] = p
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
                          f"Classes: {some_names(dataset.classes)}")
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
