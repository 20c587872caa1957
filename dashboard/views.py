"""Data selection for the dashboard pages: pure functions on arrays and DataFrames.

Nothing here imports Streamlit, so every choice a page makes (which rows a
confusion cell holds, which errors pass the filters, how a share is labelled)
can be tested without a server. The embedding map's selection and drawing are
in ``mapview``.

Conventions: N images are the rows of ``run.predictions`` (row position =
``id``), K classes are integers in ``range(K)``; a confusion cell is a pair
``(true, predicted)`` of class indices, rows of a confusion matrix are true
classes and columns predicted classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

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
    """Indices of ``top`` classes, in index order: the classes of the largest confusions first
    (``core.run.metrics.most_confused_classes``, which the report's matrix uses too)."""
    from core.run.metrics import most_confused_classes as chosen

    return chosen(cm, top=top)


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
    from core.report.tables import errors_table

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


def top_k_with_true(probs: np.ndarray, *, true: int | None, k: int = 10) -> np.ndarray:
    """Class indices of the ``k`` most probable classes, most probable first, with ``true`` always
    among them (in place of the k-th when it ranks lower). Ties go to the lower index.

    >>> top_k_with_true(np.array([0.5, 0.3, 0.15, 0.05]), true=3, k=2).tolist()
    [0, 3]
    >>> top_k_with_true(np.array([0.5, 0.3, 0.2]), true=1, k=2).tolist()
    [0, 1]
    """
    probs = np.asarray(probs, dtype=np.float64)
    if k < 1:
        raise ValueError(f"`k` must be at least 1. Received: k={k}")
    order = np.lexsort((np.arange(probs.size), -probs))
    top = order[:k]
    if true is not None and 0 <= true < probs.size and true not in top:
        top = np.append(top[:k - 1], true)
    return top


def share_label(count: int, share: float) -> str:
    """A cell's share of its row as a label that never reads 0% for images that are there, nor
    100% for a row that is not whole: '' (no image), '<1%', '>99%' or the rounded percentage.

    >>> [share_label(c, c / 1000) for c in (0, 4, 5, 10, 994, 995, 1000)]
    ['', '<1%', '<1%', '1%', '99%', '>99%', '100%']
    """
    if count <= 0:
        return ""
    if share < 0.01:
        return "<1%"
    if share < 1.0 and round(share * 100) >= 100:
        return ">99%"
    return f"{share:.0%}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """'1 image', '2 images', '1,000 images'.

    >>> plural(1, "image"), plural(2500, "class", "classes")
    ('1 image', '2,500 classes')
    """
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


# --- embedding map filters ----------------------------------------------------
def filter_mask(predictions: pd.DataFrame, *, split: str = "all", classes: Sequence[int] = ()) -> np.ndarray:
    """Boolean (N,) mask of rows in ``split`` ('all': every split) whose true class is in ``classes``
    (empty: every class). Compares the categorical split column, never N strings."""
    mask = np.ones(len(predictions), bool)
    if split != "all":
        mask &= (predictions["split"] == split).to_numpy()
    if len(classes):
        mask &= np.isin(predictions["true"].to_numpy(), np.asarray(classes))
    return mask


# --- per-class report ----------------------------------------------------------
def flag_worst(table: pd.DataFrame, *, share: float = 0.1) -> pd.DataFrame:
    """``table`` with a boolean ``worst`` column first: the lowest-F1 ``share`` of classes (at least one),
    and every class tied with the last of them (``core.run.metrics.lowest_f1``, as the report)."""
    from core.run.metrics import lowest_f1

    worst = np.zeros(len(table), bool)
    worst[lowest_f1(table, share=share)] = True
    out = table.copy()
    out.insert(0, "worst", worst)
    return out


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


def distribution_top(distribution: pd.DataFrame, *, top: int = 30) -> tuple[pd.DataFrame, int]:
    """The ``top`` classes with most images (all splits), then the other M classes as one row
    'others (M classes, mean per class)' holding their mean count per class and split (a sum
    would dwarf every bar beside it); returns (table, M). Columns as ``class_distribution``'s,
    classes in descending total, the others last."""
    if distribution.empty:
        return distribution, 0
    totals = distribution.groupby("class", sort=False)["count"].sum()
    order = totals.sort_values(ascending=False, kind="stable").index.tolist()
    keep, rest = order[:top], order[top:]
    table = distribution[distribution["class"].isin(keep)].copy()
    table["class"] = pd.Categorical(table["class"], categories=keep, ordered=True)
    table = table.sort_values(["class", "split"], kind="stable")
    table["class"] = table["class"].astype(str)
    if rest:
        label = f"others ({len(rest)} classes, mean per class)"
        others = (distribution[distribution["class"].isin(rest)].groupby("split", sort=True)["count"].sum()
                  .div(len(rest)).reset_index().assign(**{"class": label}))
        table = pd.concat([table, others[["class", "split", "count"]]], ignore_index=True)
    return table.reset_index(drop=True), len(rest)


def training_summary(history: pd.DataFrame | None, training: dict | None) -> dict:
    """What a training record says in a few numbers: epochs run and planned, why it stopped,
    the best validation accuracy and its epoch, the first and last learning rate, the seconds.

    ``history`` has one row per epoch (``epoch``, ``loss``, ``val_accuracy``, ``learning_rate``...);
    ``training`` is the manifest's training record (``recipe.epochs``, ``stopped_by``, ``seconds``).
    Missing items are None.

    >>> h = pd.DataFrame({"epoch": [1, 2, 3], "val_accuracy": [0.5, 0.7, 0.6],
    ...                   "learning_rate": [1e-3, 1e-3, 1e-4]})
    >>> s = training_summary(h, {"recipe": {"epochs": 60}, "stopped_by": "early stopping"})
    >>> s["epochs_run"], s["epochs_planned"], s["stopped_by"], s["best_epoch"], s["best_val_accuracy"]
    (3, 60, 'early stopping', 2, 0.7)
    """
    training = training or {}
    recipe = training.get("recipe") if isinstance(training.get("recipe"), dict) else {}
    out = {"epochs_run": None, "epochs_planned": recipe.get("epochs"), "stopped_by": training.get("stopped_by"),
           "best_epoch": None, "best_val_accuracy": None, "first_lr": None, "last_lr": None,
           "seconds": training.get("seconds")}
    if history is None or history.empty:
        out["epochs_run"] = training.get("epochs")
        return out
    out["epochs_run"] = int(len(history))
    if "val_accuracy" in history and history["val_accuracy"].notna().any():
        best = int(history["val_accuracy"].astype(float).idxmax())
        out["best_epoch"] = int(history["epoch"].iat[best]) if "epoch" in history else best + 1
        out["best_val_accuracy"] = float(history["val_accuracy"].iat[best])
    if "learning_rate" in history and history["learning_rate"].notna().any():
        lr = history["learning_rate"].dropna().astype(float)
        out["first_lr"], out["last_lr"] = float(lr.iat[0]), float(lr.iat[-1])
    return out


def latest_comparable_pair(signatures: Sequence[tuple[str, object]]) -> tuple[str, str] | None:
    """The most recent pair of runs with equal signatures (the same images and classes), as
    (older, newer); ``signatures`` lists (run id, signature) newest first; None when no two match.

    >>> latest_comparable_pair([("c", 2), ("b", 1), ("a", 1)])
    ('a', 'b')
    >>> latest_comparable_pair([("c", 2), ("b", 1)]) is None
    True
    """
    for i, (newer, signature) in enumerate(signatures):
        for older, other in signatures[i + 1:]:
            if other == signature:
                return older, newer
    return None


def most_wrong_first(rows: np.ndarray, *, correct: np.ndarray, true_prob: np.ndarray) -> np.ndarray:
    """``rows`` (int (M,)) with the errors first, each part by the probability of the given class,
    lowest first. ``correct``: bool (N,), ``true_prob``: float (N,), indexed by row.

    >>> most_wrong_first(np.array([0, 1, 2, 3]), correct=np.array([True, False, True, False]),
    ...                  true_prob=np.array([0.2, 0.3, 0.9, 0.1])).tolist()
    [3, 1, 0, 2]
    """
    rows = np.asarray(rows, dtype=np.int64)
    return rows[np.lexsort((np.asarray(true_prob)[rows], np.asarray(correct, bool)[rows]))]
