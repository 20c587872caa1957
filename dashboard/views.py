"""Data selection for the dashboard pages: pure functions on arrays and DataFrames.

Nothing here imports Streamlit, so every choice a page makes (which rows a
confusion cell holds, which errors pass the filters, what the embedding plot
draws) can be tested without a server.

Conventions: N images are the rows of ``run.predictions`` (row position =
``id``), K classes are integers in ``range(K)``; a confusion cell is a pair
``(true, predicted)`` of class indices, rows of a confusion matrix are true
classes and columns predicted classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
UPLOAD_TYPES = ("jpg", "jpeg", "png", "bmp", "webp")
EXPORT_COLUMNS = ["id", "path", "split", "true_label", "predicted_label", "confidence", "true_prob"]
# The columns of predictions.parquet the pages read; a run without one of them cannot be shown.
PREDICTION_COLUMNS = ("id", "path", "split", "true", "predicted", "true_label", "predicted_label",
                      "confidence", "true_prob", "correct")


def one_line(message: object, *, limit: int = 500) -> str:
    """``message`` (an exception or text) as one line of at most ``limit`` characters.

    >>> one_line(ValueError("bad file\\n  at line 3"))
    'bad file at line 3'
    >>> one_line(KeyError("confidence"))
    "missing key 'confidence'"
    """
    if isinstance(message, KeyError) and message.args:
        text = f"missing key {message.args[0]!r}"
    elif isinstance(message, BaseException):
        text = str(message).strip() or type(message).__name__
    else:
        text = str(message)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- confusion cells ----------------------------------------------------------
def cell_rows(predictions: pd.DataFrame, mask: np.ndarray, *, true: int, predicted: int) -> np.ndarray:
    """Row ids of the images in cell (true, predicted) among ``mask``, most confident first.

    >>> df = pd.DataFrame({"true": [0, 0, 1, 0], "predicted": [1, 1, 1, 1],
    ...                    "confidence": [0.6, 0.9, 0.8, 0.7]})
    >>> cell_rows(df, np.array([True, True, True, False]), true=0, predicted=1).tolist()
    [1, 0]
    """
    hit = mask & (predictions["true"].to_numpy() == true) & (predictions["predicted"].to_numpy() == predicted)
    rows = np.flatnonzero(hit)
    confidence = predictions["confidence"].to_numpy()[rows]
    # stable sort on -confidence keeps ties in row order
    return rows[np.argsort(-confidence, kind="stable")]


def cell_from_point(point: dict, class_order: Sequence[int]) -> tuple[int, int] | None:
    """The (true, predicted) class indices of a clicked point of the confusion figure.

    The figure plots cell (i, j) of the displayed sub-matrix at x=j, y=i and stores
    ``[true, predicted]`` (full class indices) as customdata; ``class_order`` maps a
    displayed position to its class index when customdata is absent.

    >>> cell_from_point({"x": 2, "y": 0}, [4, 7, 9])
    (4, 9)
    >>> cell_from_point({"customdata": [3, 5], "x": 0, "y": 0}, [4, 7, 9])
    (3, 5)
    """
    custom = point.get("customdata")
    if isinstance(custom, dict):  # Streamlit can deliver an array as {"0": ..., "1": ...}
        custom = [custom[k] for k in sorted(custom, key=lambda key: int(key))]
    if custom is not None and len(custom) >= 2:
        return int(custom[0]), int(custom[1])
    x, y = point.get("x"), point.get("y")
    if x is None or y is None:
        return None
    col, row = int(round(float(x))), int(round(float(y)))
    if not (0 <= row < len(class_order) and 0 <= col < len(class_order)):
        return None
    return int(class_order[row]), int(class_order[col])


def selection_cell(selection: dict | None, class_order: Sequence[int]) -> tuple[int, int] | None:
    """The cell of the first selected point in a plotly selection state, if any."""
    points = (selection or {}).get("points") or []
    for point in points:
        cell = cell_from_point(point, class_order)
        if cell is not None:
            return cell
    return None


def most_confused_classes(cm: np.ndarray, *, top: int) -> np.ndarray:
    """Indices of the ``top`` classes involved in most errors (as true or predicted), in index order."""
    if top < 1:
        raise ValueError(f"`top` must be at least 1. Received: top={top}")
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    involvement = off.sum(axis=0) + off.sum(axis=1)
    order = np.lexsort((np.arange(len(cm)), -involvement))[:top]
    return np.sort(order)


def default_cell(cm: np.ndarray) -> tuple[int, int]:
    """The off-diagonal cell with most images (the first such), or (0, 0) when there is no error."""
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, -1)
    if off.max() <= 0:
        return 0, 0
    t, p = np.unravel_index(int(np.argmax(off)), off.shape)
    return int(t), int(p)


# --- paging -------------------------------------------------------------------
def page_count(n_items: int, per_page: int) -> int:
    """Number of pages needed for ``n_items`` (at least 1)."""
    if per_page < 1:
        raise ValueError(f"`per_page` must be at least 1. Received: per_page={per_page}")
    return max(1, -(-n_items // per_page))


def page_of(items: np.ndarray, *, page: int, per_page: int) -> np.ndarray:
    """The items of 1-based ``page`` (clamped to the valid pages)."""
    page = min(max(1, int(page)), page_count(len(items), per_page))
    return items[(page - 1) * per_page: page * per_page]


# --- errors -------------------------------------------------------------------
def filter_errors(
    predictions: pd.DataFrame, mask: np.ndarray, *, true_classes: Sequence[int] = (),
    predicted_classes: Sequence[int] = (), confidence_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Row ids of misclassified rows in ``mask`` passing the filters, most confident first.

    Empty ``true_classes``/``predicted_classes`` mean every class; the
    confidence range is inclusive at both ends.
    """
    low, high = confidence_range
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"`confidence_range` must satisfy 0 <= low <= high <= 1. "
                         f"Received: confidence_range={confidence_range}")
    true = predictions["true"].to_numpy()
    pred = predictions["predicted"].to_numpy()
    conf = predictions["confidence"].to_numpy()
    keep = mask & (true != pred) & (conf >= low) & (conf <= high)
    if len(true_classes):
        keep &= np.isin(true, np.asarray(true_classes))
    if len(predicted_classes):
        keep &= np.isin(pred, np.asarray(predicted_classes))
    rows = np.flatnonzero(keep)
    return rows[np.argsort(-conf[rows], kind="stable")]


def export_table(predictions: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """The columns exported as CSV for ``rows``, in that order, labels as plain strings."""
    out = predictions.iloc[rows][EXPORT_COLUMNS].copy()
    for col in ("split", "true_label", "predicted_label"):
        out[col] = out[col].astype(str)
    return out.reset_index(drop=True)


def errors_csv(run, rows: np.ndarray, *, min_confidence: float = 0.0) -> bytes:
    """The CLI's error list (``python -m core errors``) restricted to ``rows``, ranked anew.

    With no class filter and the confidence range [m, 1] it is byte for byte
    ``python -m core errors RUN --min-confidence m``.
    """
    from core.reports import errors_table

    table = errors_table(run, min_confidence=min_confidence)
    table = table[np.isin(table["id"].to_numpy(), rows)].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table.to_csv(index=False).encode()


def top_classes(probs: np.ndarray, class_names: Sequence[str], *, k: int = 3) -> pd.DataFrame:
    """The ``k`` most probable classes of one probability vector (K,): class, probability."""
    probs = np.asarray(probs, dtype=np.float64)
    k = min(k, probs.size)
    order = np.lexsort((np.arange(probs.size), -probs))[:k]
    return pd.DataFrame({"class": [class_names[i] for i in order], "probability": probs[order]})


# --- nearest neighbours -------------------------------------------------------
def nearest_rows(embeddings: np.ndarray, query_row: int, candidates: np.ndarray, *, k: int = 6) -> np.ndarray:
    """The ``k`` candidate rows nearest (Euclidean) to ``query_row`` in embedding space, nearest first.

    The query row itself is never returned. ``candidates`` are row ids.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    candidates = candidates[candidates != query_row]
    if candidates.size == 0 or k < 1:
        return np.zeros(0, np.int64)
    ordered = np.sort(candidates)  # sorted indices read a memory-mapped array faster
    query = np.asarray(embeddings[query_row], dtype=np.float32)
    points = np.asarray(embeddings[ordered], dtype=np.float32)
    # |a-b|^2 = |b|^2 - 2 a.b (+ |a|^2, the same for every candidate)
    distance = np.einsum("ij,ij->i", points, points) - 2.0 * points @ query
    take = min(k, distance.size)
    nearest = np.argpartition(distance, take - 1)[:take]
    nearest = nearest[np.lexsort((ordered[nearest], distance[nearest]))]
    return ordered[nearest]


# --- embedding plot -----------------------------------------------------------
@dataclass(frozen=True)
class EmbeddingPlan:
    """What the embedding figure draws for one rerun.

    ``mode`` is "points" (every visible row drawn) or "density" (a 2-D
    histogram of the visible rows with ``overlay`` rows drawn as points).
    ``rows`` are the rows drawn as points in either mode (at most the cap).
    """

    mode: str
    rows: np.ndarray
    n_visible: int
    histogram: np.ndarray | None = None
    x_edges: np.ndarray | None = None
    y_edges: np.ndarray | None = None
    sampled: bool = False


def filter_mask(predictions: pd.DataFrame, *, split: str = "all", classes: Sequence[int] = ()) -> np.ndarray:
    """Boolean (N,) mask of rows in ``split`` ('all': every split) whose true class is in ``classes``
    (empty: every class). Compares the categorical split column, never N strings."""
    mask = np.ones(len(predictions), bool)
    if split != "all":
        mask &= (predictions["split"] == split).to_numpy()
    if len(classes):
        mask &= np.isin(predictions["true"].to_numpy(), np.asarray(classes))
    return mask


def visible_rows(
    xy: np.ndarray, base: np.ndarray, *, x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Row ids in boolean ``base`` whose projection lies inside the ranges (inclusive)."""
    keep = base.copy()
    if x_range is not None:
        keep &= (xy[:, 0] >= x_range[0]) & (xy[:, 0] <= x_range[1])
    if y_range is not None:
        keep &= (xy[:, 1] >= y_range[0]) & (xy[:, 1] <= y_range[1])
    return np.flatnonzero(keep)


def rows_within(candidates: np.ndarray, rows: np.ndarray, *, n_rows: int) -> np.ndarray:
    """The ``candidates`` that are also in ``rows`` (row ids below ``n_rows``), in candidates' order.

    A boolean mask instead of ``np.intersect1d``: linear, and 400x faster at a million rows.
    """
    inside = np.zeros(n_rows, bool)
    inside[np.asarray(rows, dtype=np.int64)] = True
    candidates = np.asarray(candidates, dtype=np.int64)
    return candidates[inside[candidates]]


def sample_rows(rows: np.ndarray, *, cap: int, seed: int = 0) -> np.ndarray:
    """At most ``cap`` of ``rows``, a fixed-seed random subset in row order when there are more."""
    rows = np.asarray(rows)
    if rows.size <= cap:
        return rows
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=cap, replace=False))


def plan_embedding(
    xy: np.ndarray, rows: np.ndarray, *, cap: int = 20_000, overlay: np.ndarray | None = None,
    overlay_cap: int | None = None, bins: int = 200, seed: int = 0,
) -> EmbeddingPlan:
    """Decide how to draw the visible ``rows`` of projection ``xy`` (N, 2) without shipping more than ``cap`` points.

    At most ``cap`` visible rows: draw them all. More: bin them server-side
    (``np.histogram2d``, ``bins`` x ``bins``) and draw only ``overlay`` rows
    that are visible (``overlay``: unique row ids of errors, the current
    selection), sampled with a fixed seed
    down to ``overlay_cap`` (default ``cap``) if still too many.
    """
    if cap < 1:
        raise ValueError(f"`cap` must be at least 1. Received: cap={cap}")
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size <= cap:
        return EmbeddingPlan("points", rows, int(rows.size))
    pts = np.asarray(xy[rows], dtype=np.float64)
    hist, x_edges, y_edges = np.histogram2d(pts[:, 0], pts[:, 1], bins=bins)
    shown = (np.zeros(0, np.int64) if overlay is None
             else np.sort(rows_within(overlay, rows, n_rows=len(xy))))
    limit = cap if overlay_cap is None else min(overlay_cap, cap)
    sampled = shown.size > limit
    return EmbeddingPlan("density", sample_rows(shown, cap=limit, seed=seed), int(rows.size),
                         hist, x_edges, y_edges, sampled)


def rows_from_selection(selection: dict | None) -> np.ndarray:
    """Row ids (customdata[0]) of the points in a plotly box/lasso selection state."""
    points = (selection or {}).get("points") or []
    out = []
    for point in points:
        custom = point.get("customdata")
        if custom is None:
            continue
        value = custom[0] if isinstance(custom, (list, tuple)) else custom
        out.append(int(value))
    return np.unique(np.asarray(out, dtype=np.int64))


# --- comparing runs -----------------------------------------------------------
def comparison_problem(a: pd.DataFrame, b: pd.DataFrame, *, classes_a: Sequence[str],
                       classes_b: Sequence[str]) -> str | None:
    """Why two runs' predictions cannot be compared row by row, or None when they can."""
    if len(a) != len(b):
        return (f"The runs have different numbers of images ({len(a):,} and {len(b):,}); "
                "compare runs made on the same images.")
    if not np.array_equal(a["path"].to_numpy(), b["path"].to_numpy()):
        first = int(np.flatnonzero(a["path"].to_numpy() != b["path"].to_numpy())[0])
        return (f"The runs list different images (row {first}: {a['path'].iat[first]!r} vs "
                f"{b['path'].iat[first]!r}); compare runs made on the same images.")
    if list(classes_a) != list(classes_b):
        return "The runs have different classes; compare runs of models with the same classes."
    if not np.array_equal(a["true"].to_numpy(), b["true"].to_numpy()):
        return "The runs give the same images different true labels; compare runs on the same data set."
    return None


def per_class_comparison(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per-class tables of runs A and B side by side with deltas (B - A)."""
    out = pd.DataFrame({"class": a["class"].astype(str)})
    for col in ("f1", "tp", "fp", "fn", "cer"):
        out[f"{col}_a"] = a[col].to_numpy()
        out[f"{col}_b"] = b[col].to_numpy()
        out[f"{col}_delta"] = b[col].to_numpy() - a[col].to_numpy()
    return out


def flips(a: pd.DataFrame, b: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    """Images whose correctness changed from run A to run B, among ``mask``.

    ``kind`` is "fixed by B" (wrong in A, right in B) or "broken by B" (right
    in A, wrong in B); ``cell_true``/``cell_predicted`` name the confusion cell
    of the wrong prediction (A's for fixed, B's for broken).
    """
    correct_a = a["correct"].to_numpy(bool)
    correct_b = b["correct"].to_numpy(bool)
    fixed = mask & ~correct_a & correct_b
    broken = mask & correct_a & ~correct_b
    rows = np.flatnonzero(fixed | broken)
    is_fixed = fixed[rows]
    wrong_pred = np.where(is_fixed, a["predicted"].to_numpy()[rows], b["predicted"].to_numpy()[rows])
    return pd.DataFrame({
        "id": rows,
        "path": a["path"].to_numpy()[rows].astype(str),
        "kind": np.where(is_fixed, "fixed by B", "broken by B"),
        "true": a["true"].to_numpy()[rows],
        "wrong_predicted": wrong_pred,
        "true_label": a["true_label"].astype(str).to_numpy()[rows],
        "predicted_a": a["predicted_label"].astype(str).to_numpy()[rows],
        "confidence_a": a["confidence"].to_numpy()[rows],
        "predicted_b": b["predicted_label"].astype(str).to_numpy()[rows],
        "confidence_b": b["confidence"].to_numpy()[rows],
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


# --- per-class report ----------------------------------------------------------
def flag_worst(table: pd.DataFrame, *, share: float = 0.1) -> pd.DataFrame:
    """``table`` with a boolean ``worst`` column first: the lowest-F1 ``share`` of classes (at least one).

    Ties are broken by row order (the first rows are flagged).
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"`share` must be in (0, 1]. Received: share={share}")
    n_worst = max(1, int(round(len(table) * share)))
    ranked = table["f1"].rank(method="first")
    out = table.copy()
    out.insert(0, "worst", (ranked <= n_worst).to_numpy())
    return out


# --- uploads ------------------------------------------------------------------
def upload_problem(name: str, size: int, *, max_bytes: int = MAX_UPLOAD_BYTES) -> str | None:
    """Why an uploaded file is refused before decoding (too big, wrong extension), or None."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext not in UPLOAD_TYPES:
        return f"{name}: not an accepted image type (accepted: {', '.join(UPLOAD_TYPES)})."
    if size > max_bytes:
        return (f"{name}: {size / 1024 / 1024:.1f} MB is larger than the "
                f"{max_bytes / 1024 / 1024:.0f} MB limit.")
    return None


def class_distribution(predictions: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Images per class and split: columns class, split, count (every class listed in each split)."""
    k = len(class_names)
    true = predictions["true"].to_numpy()
    splits = predictions["split"].astype(str).to_numpy()
    frames = []
    for split in sorted(set(splits.tolist())):
        counts = np.bincount(true[splits == split], minlength=k)
        frames.append(pd.DataFrame({"class": list(class_names), "split": split, "count": counts}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["class", "split", "count"])
