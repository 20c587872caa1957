"""Compare two runs on the images they share: metrics, per-class deltas and flips.

Runs A and B are matched image by image on the image's path (its identity in
the data set), not on row position nor on the split each run assigned it: two
runs of the same images whose splits differ (another seed, another
``--val-split``) are compared on the images held out by both, i.e. in A's
evaluation split *and* in B's. Deltas are B - A. A *flip* is a compared image
whose correctness changed: "fixed by B" (wrong in A, right in B) or "broken by
B" (right in A, wrong in B); its confusion cell is that of the wrong
prediction (A's for a fixed image, B's for a broken one).

Used by ``python -m core compare A B --out DIR``, the dashboard's Compare page
and the report's comparison section, so the three show the same numbers.

Conventions: K classes; ``rows_a``/``rows_b`` are row ids of
``a.predictions``/``b.predictions`` of the same images, in A's row order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError
from core.run import metrics as M
from core.run.store import Run

#: The headline metrics compared, in order (keys of ``core.run.metrics.summary``).
METRICS = ("accuracy", "macro_f1", "top3_accuracy", "errors", "n")
#: The per-class columns compared (A, B and B - A each).
PER_CLASS_COMPARED = ("f1", "precision", "recall", "tp", "fp", "fn", "cer")
FIXED, BROKEN = "fixed by B", "broken by B"


class ComparisonError(UserError):
    """Two runs that cannot be compared (no shared image, other classes, other labels)."""


def image_signature(run: Run) -> str:
    """What two comparable runs share: their classes and the (path, true label) set of their
    images, whatever split each image is in. Equal signatures mean the same images and labels."""
    preds = run.predictions
    h = hashlib.sha256("\x1f".join(run.classes).encode())
    order = np.argsort(preds["path"].astype(str).to_numpy(), kind="stable")
    h.update("\x1f".join(preds["path"].astype(str).to_numpy()[order].tolist()).encode())
    h.update(preds["true"].to_numpy().astype(np.int64)[order].tobytes())
    return h.hexdigest()[:16]


def match_rows(paths_a: Sequence[str], paths_b: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Row ids (rows_a, rows_b) of the paths both lists hold, in A's order.

    >>> match_rows(["x", "y", "z"], ["z", "w", "x"])
    (array([0, 2]), array([2, 0]))
    """
    paths_a = pd.Index(np.asarray(paths_a, dtype=object))
    paths_b = pd.Index(np.asarray(paths_b, dtype=object))
    for name, paths in (("A", paths_a), ("B", paths_b)):
        if not paths.is_unique:
            dup = paths[paths.duplicated()][0]
            raise ComparisonError(f"Run {name} lists the image {dup!r} twice; images are matched by path.")
    if len(paths_a) == len(paths_b) and paths_a.equals(paths_b):  # the usual case: same rows
        rows = np.arange(len(paths_a))
        return rows, rows.copy()
    where_b = paths_b.get_indexer(paths_a)
    rows_a = np.flatnonzero(where_b >= 0)
    return rows_a, where_b[rows_a].astype(np.int64)


@dataclass(frozen=True)
class Comparison:
    """Runs A and B compared on the images they share (see the module docstring).

    ``metrics``: one row per metric of ``METRICS`` (``metric``, ``a``, ``b``, ``delta``);
    ``per_class``: ``class`` then ``<col>_a``, ``<col>_b``, ``<col>_delta`` for each of
    ``PER_CLASS_COMPARED``; ``flips``: see ``flips``; ``basis``: one sentence saying which
    images were compared. Plain data (no open run), so it can be cached and pickled.
    """

    a_id: str
    b_id: str
    rows_a: np.ndarray
    rows_b: np.ndarray
    metrics: pd.DataFrame
    per_class: pd.DataFrame
    flips: pd.DataFrame
    basis: str

    @property
    def n_fixed(self) -> int:
        return int((self.flips["kind"] == FIXED).sum())

    @property
    def n_broken(self) -> int:
        return int((self.flips["kind"] == BROKEN).sum())

    def metric(self, name: str) -> tuple[float, float]:
        row = self.metrics.set_index("metric").loc[name]
        return float(row["a"]), float(row["b"])

    def write(self, out: str | Path) -> list[Path]:
        """metrics.csv, per_class.csv and flips.csv in folder ``out`` (created); the files written."""
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"Cannot create the folder {str(out)!r}: {exc.strerror or exc}") from None
        files = []
        for name, table in (("metrics", self.metrics), ("per_class", self.per_class), ("flips", self.flips)):
            file = out / f"{name}.csv"
            tmp = file.with_name(f".{file.name}.tmp")
            table.to_csv(tmp, index=False)
            tmp.replace(file)  # never a half-written CSV under the final name
            files.append(file)
        return files


def _names(names: list[str], limit: int = 5) -> str:
    """``names`` for a message: at most ``limit`` of them, quoted, and how many more.

    >>> _names(["cat"]), _names(list("abcdefg"), limit=2)
    ("'cat'", "'a', 'b' and 5 more")
    """
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _corrected(run: Run) -> bool:
    """Whether the run was trained on a corrections file (``train --corrections``): its labels are the
    reviewed ones."""
    return bool(isinstance(run.training, dict) and run.training.get("corrections"))


def _compared_rows(a: Run, b: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Rows of A and of B compared (the images both hold out), the true labels they are judged by, and
    a sentence saying so. Labels that differ between the runs are those of the run trained on
    corrections (the reviewed ones; B's when both were); without corrections, the runs are of other
    data sets where compared images differ and are refused."""
    if list(a.classes) != list(b.classes):
        only_a = [c for c in a.classes if c not in set(b.classes)]
        only_b = [c for c in b.classes if c not in set(a.classes)]
        parts = [f"{x.id!r} has {_names(only)}, which {y.id!r} lacks" for x, y, only in ((a, b, only_a), (b, a, only_b))
                 if only]
        what = "; ".join(parts) or "the same names in another order"
        raise ComparisonError(f"The runs have different classes ({what}); compare runs of models with the same "
                              "classes.")
    pa, pb = a.predictions, b.predictions
    rows_a, rows_b = match_rows(pa["path"].astype(str).to_numpy(), pb["path"].astype(str).to_numpy())
    if rows_a.size == 0:
        first_a = str(pa["path"].iat[0]) if len(pa) else "none"
        first_b = str(pb["path"].iat[0]) if len(pb) else "none"
        raise ComparisonError(f"The runs share no image ({len(pa):,} and {len(pb):,} images, matched by path: "
                              f"they list different images, e.g. {first_a!r} and {first_b!r}); "
                              "compare runs made on the same images.")
    true_a, true_b = pa["true"].to_numpy()[rows_a], pb["true"].to_numpy()[rows_b]
    relabelled = true_a != true_b
    shared = rows_a.size
    in_eval = a.eval_mask()[rows_a] & b.eval_mask()[rows_b]
    if not in_eval.any():
        raise ComparisonError(f"The runs share {shared:,} images but none is in both evaluation splits "
                              f"(A: {a.eval_split}, B: {b.eval_split}); nothing held out by both to compare on.")
    judged_by, true = "", true_a  # the same labels on every compared image unless relabelled
    if relabelled[in_eval].any():
        by = b if _corrected(b) else a if _corrected(a) else None
        if by is None:
            first = int(np.flatnonzero(relabelled & in_eval)[0])
            raise ComparisonError(f"The runs give {int((relabelled & in_eval).sum()):,} of the images they both "
                                  f"hold out different true labels (e.g. {pa['path'].iat[rows_a[first]]!r}) and "
                                  "neither was trained on corrections; compare runs on the same data set.")
        judged_by = (f"; true labels as corrected for {'B' if by is b else 'A'} ({int(relabelled[in_eval].sum()):,} "
                     "of them relabelled)")
        true = true_b if by is b else true_a
    elsewhere = int((relabelled & ~in_eval).sum())
    if elsewhere:
        judged_by += (f"; {elsewhere:,} other shared image{'s carry' if elsewhere != 1 else ' carries'} other labels "
                      "in the two runs (corrections)")
    rows_a, rows_b, true = rows_a[in_eval], rows_b[in_eval], true[in_eval]
    same_split = np.array_equal(pa["split"].astype(str).to_numpy()[rows_a], pb["split"].astype(str).to_numpy()[rows_b])
    whole = shared == len(pa) == len(pb)
    if whole and same_split and in_eval.sum() == a.eval_mask().sum() == b.eval_mask().sum():
        basis = f"on the {rows_a.size:,} images of the evaluation split ({a.eval_split}) of both runs"
    else:
        basis = (f"on the {rows_a.size:,} images held out by both runs (in A's {a.eval_split} split and B's "
                 f"{b.eval_split} split) of the {shared:,} images they share")
    return rows_a, rows_b, true, basis + judged_by


def comparison_problem(a: Run, b: Run) -> str | None:
    """Why runs A and B cannot be compared, in one line, or None when they can."""
    try:
        _compared_rows(a, b)
    except ComparisonError as exc:
        return str(exc)
    return None


def compare(a: Run, b: Run) -> Comparison:
    """Runs A and B compared on the images held out by both; ``ComparisonError`` when they cannot be."""
    rows_a, rows_b, true, basis = _compared_rows(a, b)
    pa, pb = a.predictions, b.predictions
    pred_a, pred_b = pa["predicted"].to_numpy()[rows_a], pb["predicted"].to_numpy()[rows_b]
    sum_a = M.summary(true, pred_a, _take(a.probs, rows_a))
    sum_b = M.summary(true, pred_b, _take(b.probs, rows_b))
    metrics_table = pd.DataFrame({"metric": list(METRICS),
                                  "a": [sum_a[m] for m in METRICS], "b": [sum_b[m] for m in METRICS]})
    metrics_table["delta"] = metrics_table["b"] - metrics_table["a"]
    per_class = per_class_comparison(M.per_class_table(true, pred_a, a.classes),
                                     M.per_class_table(true, pred_b, b.classes))
    return Comparison(a_id=a.id, b_id=b.id, rows_a=rows_a, rows_b=rows_b, metrics=metrics_table, per_class=per_class,
                      flips=flips(pa.iloc[rows_a], pb.iloc[rows_b], true=true, class_names=a.classes,
                                  rows_a=rows_a, rows_b=rows_b), basis=basis)


def _take(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` read in ascending row order (a memory-mapped file is read forwards)."""
    order = np.argsort(rows, kind="stable")
    out = np.empty((rows.size,) + array.shape[1:], dtype=array.dtype)
    out[order] = np.asarray(array[rows[order]])
    return out


def per_class_comparison(a: pd.DataFrame, b: pd.DataFrame,
                         columns: Sequence[str] = PER_CLASS_COMPARED) -> pd.DataFrame:
    """Per-class tables of runs A and B side by side with deltas (B - A), one row per class.

    >>> a = pd.DataFrame({"class": ["x"], "f1": [0.5]}); b = pd.DataFrame({"class": ["x"], "f1": [0.75]})
    >>> per_class_comparison(a, b, ["f1"]).values.tolist()
    [['x', 0.5, 0.75, 0.25]]
    """
    out = pd.DataFrame({"class": a["class"].astype(str).to_numpy()})
    for col in columns:
        out[f"{col}_a"] = a[col].to_numpy()
        out[f"{col}_b"] = b[col].to_numpy()
        out[f"{col}_delta"] = b[col].to_numpy() - a[col].to_numpy()
    return out


def flips(a: pd.DataFrame, b: pd.DataFrame, *, true: np.ndarray, class_names: Sequence[str],
          rows_a: np.ndarray | None = None, rows_b: np.ndarray | None = None) -> pd.DataFrame:
    """Images whose correctness changed from A to B; ``a`` and ``b`` are the predictions of the
    same images, row for row (``rows_a``/``rows_b``: their row ids in each run, default 0..n-1).

    Columns: ``id`` (B's row id, which the dashboard opens), ``id_a``, ``path``, ``kind``
    ("fixed by B" or "broken by B"), ``true``, ``wrong_predicted`` (the confusion cell of the wrong
    prediction: A's for fixed, B's for broken), labels and both runs' predictions and confidences.
    ``true``: the labels both are judged by (the corrected ones where the runs' own differ), ``class_names``
    their names.
    """
    n = len(a)
    rows_a = np.arange(n) if rows_a is None else np.asarray(rows_a)
    rows_b = np.arange(n) if rows_b is None else np.asarray(rows_b)
    true = np.asarray(true)
    correct_a, correct_b = a["predicted"].to_numpy() == true, b["predicted"].to_numpy() == true
    true_label = np.asarray(class_names, dtype=object)[true].astype(str)
    fixed = ~correct_a & correct_b
    broken = correct_a & ~correct_b
    pos = np.flatnonzero(fixed | broken)
    is_fixed = fixed[pos]
    wrong_pred = np.where(is_fixed, a["predicted"].to_numpy()[pos], b["predicted"].to_numpy()[pos])
    return pd.DataFrame({
        "id": rows_b[pos],
        "id_a": rows_a[pos],
        "path": a["path"].astype(str).to_numpy()[pos],
        "kind": np.where(is_fixed, FIXED, BROKEN),
        "true": true[pos],
        "wrong_predicted": wrong_pred,
        "true_label": true_label[pos],
        "predicted_a": a["predicted_label"].astype(str).to_numpy()[pos],
        "confidence_a": a["confidence"].to_numpy()[pos],
        "predicted_b": b["predicted_label"].astype(str).to_numpy()[pos],
        "confidence_b": b["confidence"].to_numpy()[pos],
    })


def flip_cells(flip_table: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Counts of flips per kind and confusion cell, largest first."""
    if flip_table.empty:
        return pd.DataFrame(columns=["kind", "true", "wrong_predicted", "count", "true_label",
                                     "wrong_label"])
    counts = (flip_table.groupby(["kind", "true", "wrong_predicted"], observed=True).size()
              .rename("count").reset_index()
              .sort_values(["count", "kind", "true", "wrong_predicted"],
                           ascending=[False, True, True, True], kind="stable")
              .reset_index(drop=True))
    names = np.asarray(class_names, dtype=object)
    counts["true_label"] = names[counts["true"].to_numpy()]
    counts["wrong_label"] = names[counts["wrong_predicted"].to_numpy()]
    return counts
