"""Nearest neighbours in embedding space: which images does the model see as close to this one?

Conventions: N images are the rows of a run (row position = ``id``), D the
embedding dimensions, K classes are integers in ``range(K)``. Distances are
Euclidean in the embedding space.

The *reference images* an image is compared with are the training images when
the run has a ``train`` split, else every image of the run: a plain folder of
evaluated images has no training split, and its images' neighbours among
themselves say just as much about what the model confuses. The image itself
is never its own neighbour.

Numpy only at import (no TensorFlow, no scikit-learn): the dashboard calls
``nearest`` on every image it opens. The searches over whole runs are here
too: ``exact_neighbors`` (every row's k nearest among the rows, brute force in
blocks, numba-compiled fold) and ``nearest_in_sample`` (an inverted-file
search of a sample), which UMAP's map (``core.umap_map``) uses.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

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


# --------------------------------------------------------------------------- searches over whole runs

def exact_neighbors(x: np.ndarray, k: int, *, threads: int | None = None,
                    on_rows: Callable[[int], object] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours of every row of ``x`` (N, D) among the rows, itself included.

    Returns ``(indices, distances)``, int32 and float32 arrays of shape
    (N, k), nearest first (ties by row number), as umap-learn's
    ``nearest_neighbors`` does. Brute force: blocks of squared distances from
    float32 matrix products (BLAS), each folded into the rows' k best by a
    small numba loop, on ``threads`` threads (default: the CPU count), each
    row owned by one thread, so the result does not depend on the thread
    count; then the chosen neighbours' distances are computed exactly and
    sorted. Written here rather than taken from scikit-learn's brute force
    (the same method, exact and compiled ahead of time) because that one
    computes float32 distances in float64: 16 s of CPU against 11 s on the
    demo's 70,000 points; UMAP's NN-descent is approximate and compiles
    numba code in every new process (about 23 s of CPU). ``on_rows(r)`` is
    called (in this thread) each time another ``r`` rows are done.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from threadpoolctl import threadpool_limits

    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise UserError(f"k must be between 1 and the number of points ({n}). Received: k={k}")
    merge = _jitted(_fold_into_nearest, nogil=True)
    squares = np.einsum("ij,ij->i", x, x)
    best_d = np.full((n, k), np.inf, np.float32)
    best_i = np.zeros((n, k), np.int64)
    rows, cols = 256, 4096

    def block(r0: int) -> int:
        q, bd, bi = x[r0:r0 + rows], best_d[r0:r0 + rows], best_i[r0:r0 + rows]
        for c0 in range(0, n, cols):
            merge(q @ x[c0:c0 + cols].T, squares[r0:r0 + rows], squares[c0:c0 + cols], c0, bd, bi)
        return len(q)

    # one BLAS thread per worker: the workers are the parallelism
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        for done in as_completed([pool.submit(block, r0) for r0 in range(0, n, rows)]):
            finished = done.result()  # raises what the block raised
            if on_rows is not None:
                on_rows(finished)
    return _exact_and_sorted(x, x, best_i)


def _exact_and_sorted(queries: np.ndarray, points: np.ndarray, chosen: np.ndarray,
                      ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The chosen neighbours (rows of ``points``, (Q, k) per query) with their distances computed
    exactly (no cancellation error of the |a|^2 + |b|^2 - 2ab blocks), sorted by distance, then by
    id: ``(ids (int32), distances (float32))``; ``ids`` maps rows of ``points`` to the ids returned."""
    dist = np.empty(chosen.shape, np.float32)
    for r0 in range(0, len(queries), 8192):
        diff = queries[r0:r0 + 8192, None, :] - points[chosen[r0:r0 + 8192]]
        dist[r0:r0 + 8192] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    index = chosen if ids is None else ids[chosen]
    order = np.lexsort((index, dist), axis=1)
    return np.take_along_axis(index, order, 1).astype(np.int32), np.take_along_axis(dist, order, 1)


def _fold_into_nearest(dots, sq_rows, sq_cols, col0, best_d, best_i):
    """Fold a block of candidates into each row's sorted k best (numba, nogil).

    dots: (r, c) float32 products of r rows with c candidates starting at
    column ``col0``; squared distance = |row|^2 + |candidate|^2 - 2 dot.
    """
    k = best_d.shape[1]
    for r in range(dots.shape[0]):
        worst = best_d[r, k - 1]
        sr = sq_rows[r]
        for j in range(dots.shape[1]):
            v = sr + sq_cols[j] - 2.0 * dots[r, j]
            if v < worst:
                p = k - 1
                while p > 0 and best_d[r, p - 1] > v:
                    best_d[r, p] = best_d[r, p - 1]
                    best_i[r, p] = best_i[r, p - 1]
                    p -= 1
                best_d[r, p] = v
                best_i[r, p] = col0 + j
                worst = best_d[r, k - 1]


_JITTED: dict = {}


def _jitted(function, **options):
    """``function`` compiled by numba with ``cache=True`` (on disk: compiled once per machine), made on first use."""
    if function not in _JITTED:
        import numba

        _JITTED[function] = numba.njit(cache=True, **options)(function)
    return _JITTED[function]


def nearest_in_sample(sample: np.ndarray, queries: np.ndarray, k: int, *, seed: int = 0, probes: int = 8,
                      on_rows: Callable[[int], object] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximately the ``k`` nearest rows of ``sample`` (M, D) to each row of ``queries`` (Q, D).

    An inverted-file search: the sample is cut into about sqrt(M) cells by a few seeded k-means
    steps (``_kmeans_cells``); each query is compared with every sampled row in its ``probes`` nearest cells (the same
    blocks of float32 products and numba fold as ``exact_neighbors``). Queries with fewer than
    ``k`` candidates there are searched exhaustively. Returns ``(indices into sample, distances)``,
    (Q, k) int32 and float32, nearest first. Deterministic for a seed. ``on_rows(r)``: progress.
    """
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    m, q = len(sample), len(queries)
    if not 1 <= k <= m:
        raise UserError(f"k must be between 1 and the sample size ({m}). Received: k={k}")
    centroids, labels = _kmeans_cells(sample, max(1, int(round(np.sqrt(m)))), seed=seed)
    order = np.argsort(labels, kind="stable")
    sorted_sample = sample[order]
    bounds = np.searchsorted(labels[order], np.arange(len(centroids) + 1))
    probes = min(probes, len(centroids))
    merge = _jitted(_fold_into_nearest, nogil=True)
    best_d = np.full((q, k), np.inf, np.float32)
    best_i = np.zeros((q, k), np.int64)
    sq_sample = np.einsum("ij,ij->i", sorted_sample, sorted_sample)
    sq_queries = np.einsum("ij,ij->i", queries, queries)
    chunk = 65_536
    probe = np.empty((q, probes), np.int64)
    sq_centroids = np.einsum("ij,ij->i", centroids, centroids)
    for r0 in range(0, q, chunk):  # each query's nearest cells
        d2 = sq_centroids[None, :] - 2.0 * (queries[r0:r0 + chunk] @ centroids.T)
        near = np.argpartition(d2, probes - 1, axis=1)[:, :probes] if probes < len(centroids) else \
            np.broadcast_to(np.arange(len(centroids)), (len(d2), probes))
        probe[r0:r0 + chunk] = near
    pairs_query = np.repeat(np.arange(q), probes)
    pairs_cell = probe.ravel()
    by_cell = np.argsort(pairs_cell, kind="stable")
    starts = np.searchsorted(pairs_cell[by_cell], np.arange(len(centroids) + 1))
    for c in range(len(centroids)):
        lo, hi = bounds[c], bounds[c + 1]
        rows = pairs_query[by_cell[starts[c]:starts[c + 1]]]
        if hi == lo or rows.size == 0:
            continue
        for r0 in range(0, rows.size, chunk):
            block = rows[r0:r0 + chunk]
            bd, bi = best_d[block], best_i[block]
            merge(queries[block] @ sorted_sample[lo:hi].T, sq_queries[block], sq_sample[lo:hi], lo, bd, bi)
            best_d[block], best_i[block] = bd, bi
        if on_rows is not None:
            on_rows(int(round(rows.size / probes)))
    short = np.flatnonzero(~np.isfinite(best_d[:, -1]))
    for r0 in range(0, short.size, 4096):  # too few candidates in the probed cells: every sampled row
        block = short[r0:r0 + 4096]
        bd = np.full((len(block), k), np.inf, np.float32)
        bi = np.zeros((len(block), k), np.int64)
        for c0 in range(0, m, 4096):
            merge(queries[block] @ sorted_sample[c0:c0 + 4096].T, sq_queries[block], sq_sample[c0:c0 + 4096],
                  c0, bd, bi)
        best_d[block], best_i[block] = bd, bi
    return _exact_and_sorted(queries, sorted_sample, best_i, ids=order)


def _kmeans_cells(x: np.ndarray, n_cells: int, *, seed: int, steps: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (C, D) float32, label of each row): scikit-learn's k-means, ``steps`` Lloyd steps
    from a seeded choice of rows (cells for a search, not a clustering to report)."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # fewer distinct rows than cells: some cells stay empty, which is fine
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_cells, init="random", n_init=1, max_iter=steps, random_state=seed).fit(x)
    return km.cluster_centers_.astype(np.float32), km.labels_.astype(np.int64)
