"""Nearest neighbours in embedding space: which images does the model see as close to this one?

Conventions: N images are the rows of a run (row position = ``id``), D the
embedding dimensions, K classes are integers in ``range(K)``. Distances are
Euclidean in the embedding space.

The *reference images* an image is compared with are the training images when
the run has a ``train`` split, else every image of the run: a plain folder of
evaluated images has no training split, and its images' neighbours among
themselves say just as much about what the model confuses. The image itself
is never its own neighbour.

Numpy only (no TensorFlow, no scikit-learn): the dashboard calls this on every
image it opens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import UserError

TRAIN_SPLIT = "train"


def reference_rows(splits: np.ndarray | Sequence[str]) -> tuple[np.ndarray, str]:
    """Row ids of the reference images and what they are: ('train' rows, "training") when
    any row is in the 'train' split, else (every row, "evaluated").

    >>> rows, kind = reference_rows(np.array(["test", "train", "train"]))
    >>> rows.tolist(), kind
    ([1, 2], 'training')
    >>> reference_rows(np.array(["test", "test"]))[1]
    'evaluated'
    """
    splits = np.asarray(splits).astype(str)
    train = np.flatnonzero(splits == TRAIN_SPLIT)
    if train.size:
        return train, "training"
    return np.arange(splits.size, dtype=np.int64), "evaluated"


def rows_by_class(labels: np.ndarray, rows: np.ndarray, *, n_classes: int) -> list[np.ndarray]:
    """``rows`` grouped by ``labels[rows]`` (class indices below ``n_classes``), each group in row order.

    >>> [g.tolist() for g in rows_by_class(np.array([1, 0, 1, 0]), np.array([0, 2, 3]), n_classes=2)]
    [[3], [0, 2]]
    """
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    labels = np.asarray(labels)[rows]
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(f"labels must be class indices in [0, {n_classes}). "
                         f"Received labels from {labels.min()} to {labels.max()}")
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_classes + 1))
    return [rows[order[bounds[c]:bounds[c + 1]]] for c in range(n_classes)]


def nearest(embeddings: np.ndarray, query_row: int, candidates: np.ndarray, *, k: int = 6
            ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` candidate rows nearest to ``query_row`` and their distances, nearest first.

    Parameters
    ----------
    embeddings : array (N, D), may be memory-mapped (only the query and candidate rows are read).
    query_row : row id of the image whose neighbours are wanted; never returned.
    candidates : row ids to search among.
    k : how many neighbours at most.

    Returns
    -------
    rows : int64 array (m,), m = min(k, candidates other than the query); ties in row order.
    distances : float64 array (m,), Euclidean.

    >>> emb = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    >>> rows, dist = nearest(emb, 0, np.arange(4), k=2)
    >>> rows.tolist(), dist.tolist()
    ([2, 3], [1.0, 2.0])
    """
    if k < 1:
        raise UserError(f"`k` must be at least 1. Received: k={k}")
    candidates = np.unique(np.asarray(candidates, dtype=np.int64))  # sorted: a memory map reads faster
    candidates = candidates[candidates != query_row]
    if candidates.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    query = np.asarray(embeddings[query_row], dtype=np.float64)
    points = np.asarray(embeddings[candidates], dtype=np.float64)
    # |a-b|^2 = |b|^2 - 2 a.b + |a|^2: one matrix-vector product instead of N differences
    squared = np.einsum("ij,ij->i", points, points) - 2.0 * points @ query + query @ query
    take = min(k, squared.size)
    if take < squared.size:  # every candidate as near as the k-th, so that ties go to the lower row
        limit = squared[np.argpartition(squared, take - 1)[take - 1]]
        part = np.flatnonzero(squared <= limit)
    else:
        part = np.arange(squared.size)
    part = part[np.lexsort((candidates[part], squared[part]))][:take]
    return candidates[part], np.sqrt(np.maximum(squared[part], 0.0))


def neighbour_inputs(query, reference, reference_labels, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``query`` (Nq, D) and ``reference`` (Nr, D) as float32, ``reference_labels`` (Nr,) as int64,
    checked for a nearest-neighbour search of ``k`` (one line naming what does not fit)."""
    query = np.asarray(query, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    reference_labels = np.asarray(reference_labels, dtype=np.int64)
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise UserError(f"query and reference must be (N, D) with the same D. "
                        f"Received shapes {query.shape} and {reference.shape}")
    if len(reference_labels) != len(reference):
        raise UserError(f"{len(reference_labels)} reference labels for {len(reference)} reference rows")
    if k < 1:
        raise UserError(f"k must be at least 1. Received: k={k}")
    return query, reference, reference_labels


def unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
