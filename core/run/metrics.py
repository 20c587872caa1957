"""Classification metrics for one analysis run: pure functions, no I/O.

Conventions used throughout:

* N images, K classes; labels are integers in ``range(K)``.
* ``y_true`` and ``y_pred`` are int arrays of shape (N,); ``probs`` is a float
  array of shape (N, K) whose rows sum to 1.
* In a confusion matrix rows are true classes and columns predicted classes.
* Per class ``c``: TP = predicted c and truly c; FP = predicted c, truly
  another; FN = truly c, predicted another; TN = N - TP - FP - FN; and the
  class error rate CER = (FP + FN) / N (the Simpsons analysis' definition).

Precision, recall, F1 and support come from scikit-learn so that they agree
with ``sklearn.metrics.classification_report`` exactly.

>>> import numpy as np
>>> y_true = np.array([0, 0, 1, 2]); y_pred = np.array([0, 1, 1, 2])
>>> per_class_table(y_true, y_pred, ["a", "b", "c"])[["class", "tp", "fp", "fn", "tn"]].values.tolist()
[['a', 1, 0, 1, 2], ['b', 1, 1, 0, 2], ['c', 1, 0, 0, 3]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix
from sklearn.metrics import f1_score, precision_recall_fscore_support

from core.errors import UserError

PER_CLASS_COLUMNS = [
    "class", "precision", "recall", "f1", "support", "tp", "fp", "fn", "tn", "cer",
]


def _check_labels(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> None:
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise UserError(
            f"y_true and y_pred must be 1-D of equal length. Received shapes "
            f"{y_true.shape} and {y_pred.shape}"
        )
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise UserError(
                f"{name} holds labels outside range({n_classes}): "
                f"min={int(y.min())}, max={int(y.max())}"
            )


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int) -> np.ndarray:
    """Counts of shape (K, K) with K = ``n_classes``: row = true class, column = predicted class.

    >>> confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), n_classes=3).tolist()
    [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    """
    y_true = np.asarray(y_true); y_pred = np.asarray(y_pred)
    _check_labels(y_true, y_pred, n_classes)
    if y_true.size == 0:
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return _sk_confusion_matrix(y_true, y_pred, labels=np.arange(n_classes)).astype(np.int64)


def row_normalize(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the recall view); empty rows stay zero.

    >>> row_normalize(np.array([[3, 1], [0, 0]])).tolist()
    [[0.75, 0.25], [0.0, 0.0]]
    """
    sums = cm.sum(axis=1, keepdims=True).astype(float)
    return np.divide(cm, sums, out=np.zeros(cm.shape, dtype=float), where=sums > 0)


def per_class_table(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> pd.DataFrame:
    """One row per class with the columns of ``PER_CLASS_COLUMNS``.

    precision/recall/F1 use ``zero_division=0`` like ``classification_report``
    would print for a class never predicted; CER = (FP + FN) / N.
    """
    k = len(class_names)
    y_true = np.asarray(y_true); y_pred = np.asarray(y_pred)
    cm = confusion_matrix(y_true, y_pred, n_classes=k)
    n = int(cm.sum())
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = n - tp - fp - fn
    if n:
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=np.arange(k), zero_division=0
        )
    else:
        precision = recall = f1 = np.zeros(k); support = np.zeros(k, dtype=int)
    return pd.DataFrame({
        "class": list(class_names),
        "precision": precision.astype(float),
        "recall": recall.astype(float),
        "f1": f1.astype(float),
        "support": np.asarray(support, dtype=np.int64),
        "tp": tp.astype(np.int64),
        "fp": fp.astype(np.int64),
        "fn": fn.astype(np.int64),
        "tn": tn.astype(np.int64),
        "cer": (fp + fn) / n if n else np.zeros(k),
    }, columns=PER_CLASS_COLUMNS)


def top_k(probs: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable classes per row of ``probs`` (N, K), best first.

    Returns ``(indices, probabilities)``, both of shape (N, min(k, K)).

    >>> idx, p = top_k(np.array([[0.1, 0.6, 0.3]]), k=2)
    >>> idx.tolist(), p.tolist()
    ([[1, 2]], [[0.6, 0.3]])
    """
    probs = np.asarray(probs)
    k = min(k, probs.shape[1])
    part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    part_probs = np.take_along_axis(probs, part, axis=1)
    order = np.argsort(-part_probs, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_probs, order, axis=1)


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, *, k: int) -> float:
    """Share of rows whose true class is among the k most probable (NaN for no rows).

    >>> top_k_accuracy(np.array([2, 0]), np.array([[0.1, 0.6, 0.3], [0.2, 0.5, 0.3]]), k=2)
    0.5
    """
    y_true = np.asarray(y_true)
    if y_true.size == 0:
        return float("nan")
    idx, _ = top_k(probs, k=k)
    return float((idx == y_true[:, None]).any(axis=1).mean())


def summary(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray) -> dict[str, float | int]:
    """Headline numbers: n, errors, accuracy, macro-F1, top-3 and top-5 accuracy."""
    y_true = np.asarray(y_true); y_pred = np.asarray(y_pred)
    n_classes = probs.shape[1]
    _check_labels(y_true, y_pred, n_classes)
    n = int(y_true.size)
    return {
        "n": n,
        "errors": int((y_true != y_pred).sum()),
        "accuracy": float((y_true == y_pred).mean()) if n else float("nan"),
        "macro_f1": float(f1_score(y_true, y_pred, labels=np.arange(n_classes),
                                   average="macro", zero_division=0)) if n else float("nan"),
        "top3_accuracy": top_k_accuracy(y_true, probs, k=3),
        "top5_accuracy": top_k_accuracy(y_true, probs, k=5),
    }


def ranked_errors(
    y_true: np.ndarray, probs: np.ndarray, *, min_confidence: float = 0.0
) -> pd.DataFrame:
    """Every misclassified row, most confident mistake first.

    Returns a DataFrame with ``index`` (row position in the inputs), ``true``,
    ``predicted``, ``confidence`` (probability of the predicted class),
    ``true_prob`` (probability given to the true class) and ``margin``
    (confidence minus the runner-up's probability; small = a near tie).
    """
    y_true = np.asarray(y_true)
    idx, p = top_k(probs, k=2)
    pred = idx[:, 0]
    wrong = np.flatnonzero((pred != y_true) & (p[:, 0] >= min_confidence))
    margin = p[wrong, 0] - (p[wrong, 1] if p.shape[1] > 1 else 0.0)
    out = pd.DataFrame({
        "index": wrong,
        "true": y_true[wrong],
        "predicted": pred[wrong],
        "confidence": p[wrong, 0],
        "true_prob": probs[wrong, y_true[wrong]] if wrong.size else np.zeros(0),
        "margin": margin,
    })
    return out.sort_values(["confidence", "index"], ascending=[False, True],
                           kind="stable").reset_index(drop=True)


def confused_pairs(cm: np.ndarray, class_names: Sequence[str], *, top: int = 10) -> pd.DataFrame:
    """The off-diagonal cells with most images, largest first.

    Columns: ``true``, ``predicted`` (names), ``count``, ``share_of_true``
    (count / images of the true class) and ``true_index``/``predicted_index``.
    """
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    rows, cols = np.nonzero(off)
    counts = off[rows, cols]
    order = np.lexsort((cols, rows, -counts))[:top]
    row_sums = cm.sum(axis=1)
    names = np.asarray(class_names, dtype=object)
    return pd.DataFrame({
        "true": names[rows[order]],
        "predicted": names[cols[order]],
        "count": counts[order],
        "share_of_true": counts[order] / np.maximum(row_sums[rows[order]], 1),
        "true_index": rows[order],
        "predicted_index": cols[order],
    })


def most_confused_classes(cm: np.ndarray, *, top: int) -> np.ndarray:
    """Indices (ascending) of ``top`` classes for a part of the confusion matrix: both classes of each of
    the largest off-diagonal cells in turn, largest first (a pair that no longer fits whole is passed
    over), then the classes involved in most errors (as true or predicted), then by index.

    Choosing by involvement alone left out two of the three largest cells of a 120-class run: a pair
    confused only with each other is involved in fewer errors than a class confused a little with many.

    >>> cm = np.array([[9, 3, 1, 0], [0, 9, 0, 0], [0, 5, 9, 0], [0, 0, 0, 9]])
    >>> most_confused_classes(cm, top=2).tolist(), most_confused_classes(cm, top=3).tolist()
    ([1, 2], [0, 1, 2])
    """
    if top < 1:
        raise ValueError(f"`top` must be at least 1. Received: top={top}")
    k = len(cm)
    off = np.asarray(cm).astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    chosen: list[int] = []
    rows, cols = np.nonzero(off > 0)
    for i in np.lexsort((cols, rows, -off[rows, cols])):
        new = [c for c in dict.fromkeys((int(rows[i]), int(cols[i]))) if c not in chosen]
        if len(chosen) + len(new) <= top:
            chosen += new
        if len(chosen) >= top:
            break
    involvement = off.sum(axis=0) + off.sum(axis=1)
    for c in np.lexsort((np.arange(k), -involvement)):
        if len(chosen) >= min(top, k):
            break
        if int(c) not in chosen:
            chosen.append(int(c))
    return np.sort(np.asarray(chosen, dtype=np.int64))


def lowest_f1(per_class: pd.DataFrame, *, share: float = 0.1) -> np.ndarray:
    """Row positions of the lowest-F1 ``share`` of classes (at least one), lowest first, and every class
    tied with the last of them: three classes at F1 0 are all the weakest, not the first one by order.

    >>> table = pd.DataFrame({"f1": [0.9, 0.0, 0.5, 0.0, 0.0, 0.8, 0.7, 0.6, 0.95, 0.99]})
    >>> lowest_f1(table).tolist(), lowest_f1(table, share=0.5).tolist()
    ([1, 3, 4], [1, 3, 4, 2, 7])
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"`share` must be in (0, 1]. Received: share={share}")
    f1 = per_class["f1"].to_numpy(float)
    if len(f1) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((np.arange(len(f1)), f1))
    n = max(1, int(round(len(f1) * share)))
    cut = f1[order[n - 1]]
    return order[: max(n, int(np.sum(f1 <= cut)))] if np.isfinite(cut) else order[:n]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits, numerically stable.

    >>> softmax(np.array([[0.0, np.log(3.0)]])).round(6).tolist()
    [[0.25, 0.75]]
    """
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def looks_like_probabilities(outputs: np.ndarray, *, atol: float = 1e-3) -> bool:
    """True when every row is non-negative and sums to 1 (within atol)."""
    if outputs.size == 0:
        return True
    return bool((outputs >= -atol).all() and np.allclose(outputs.sum(axis=1), 1.0, atol=atol))
