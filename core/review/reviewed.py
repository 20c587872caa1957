"""A run seen through the verdicts (``RunReview``), and the numbers as reviewed (pure functions on arrays)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from core.review.export import spreadsheet_safe, write_csv_atomic
from core.review.verdicts import (
    CORRECTION_COLUMNS,
    ReviewDB,
    ReviewError,
    Verdict,
    canonical_path,
    check_verdict,
    dataset_identity,
    some_names,
)
from core.store import Run


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
                                  f"Classes: {some_names(self.run.classes)}")
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
        write_csv_atomic(table, out)
        return counts


def write_corrections(review: RunReview, out: str | os.PathLike) -> int:
    """``review.corrections()`` written as CSV to ``out`` (free text made spreadsheet-safe); returns the rows."""
    table = spreadsheet_safe(review.corrections())
    write_csv_atomic(table, Path(out))
    return len(table)
