"""2-D map of the embeddings (UMAP), computed after the run is usable and stored in it.

A run is written without its map; the map is the run's derived analysis
``projection`` (``core.derived``), whose config is the run's
``ProjectionConfig``, computed after the run like any derived kind can be
(``core.jobs``: a lock, a progress file, a background process).
``ensure_projection`` computes it in this process or starts a background
process; ``projection_status`` says 'ready', 'computing', 'missing' or
'unavailable', and ``projection_progress`` what the background process is
doing. A run written before maps were derived keeps its ``projection.npy``,
which is used as is.

The map needs no ``import umap`` (which compiles numba code for ~14 s in
every new process and imports TensorFlow when it is installed):
``core.layout`` runs UMAP's layout. umap-learn is imported only for the
spectral start, inside ``project`` with TensorFlow hidden from it
(``_import_umap``), never on a path that reads runs. benchmarks/bench_umap.py
compares ``project`` with umap-learn's seeded defaults.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from core import derived, jobs
from core.config import ProjectionConfig
from core.errors import UserError
from core.progress import Progress, progress_bar, say_function
from core.store import Run

KIND = "projection"
# core.jobs's files for this kind (the names maps have always used)
LOCK_FILE, PROGRESS_FILE, LOG_FILE = f".{KIND}.lock", f".{KIND}-progress.json", f".{KIND}.log"
REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the computation

def default_epochs(n: int) -> int:
    """UMAP's optimisation epochs for ``n`` points when the config leaves it open.

    umap-learn's own rule up to 30,000 points (500 up to 10,000, else 200);
    75 above, where an epoch costs the most. Measured on the demo's 70,000
    embeddings, trustworthiness (k=10, 5,000-point sample) against 0.9947 for
    umap-learn's defaults: 0.9864 with 50 epochs, 0.9931 with 75, 0.9936
    with 100; the layout takes about 0.1 s of CPU an epoch.

    >>> default_epochs(5_000), default_epochs(20_000), default_epochs(70_000)
    (500, 200, 75)
    """
    return 500 if n <= 10_000 else 200 if n <= 30_000 else 75


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


def fuzzy_graph(knn_indices: np.ndarray, knn_dists: np.ndarray, *, n_iter: int = 64):
    """UMAP's fuzzy simplicial set of the points, from their neighbours, as a (N, N) sparse matrix.

    ``knn_indices``, ``knn_dists`` : (N, k) arrays, nearest first, each row's
    first neighbour the point itself (``exact_neighbors``). The same
    computation as umap-learn's ``fuzzy_simplicial_set`` with its defaults
    (local connectivity 1, fuzzy union): per point the distance to its nearest
    neighbour (rho) and a bandwidth (sigma, by binary search) such that the
    memberships exp(-(d - rho) / sigma) sum to log2(k), then A + A' - A*A'.
    Written here with numpy over all rows at once because umap-learn's
    version is numba code that is never cached and compiles in every new
    process (4.5 s of the 70,000-point map's CPU time); tests compare the two.
    """
    import scipy.sparse

    d = np.asarray(knn_dists, dtype=np.float32)
    idx = np.asarray(knn_indices)
    n, k = d.shape
    target = np.log2(k)
    positive = np.where(d > 0, d, np.inf)
    rho = positive.min(axis=1).astype(np.float32)
    rho[~np.isfinite(rho)] = 0.0  # a point whose neighbours all sit on it
    above = np.maximum(d[:, 1:] - rho[:, None], 0)  # the first column is the point itself; exp(-0) = 1
    sigma = _bandwidths(above, target, n_iter=n_iter)
    floor = np.where(rho > 0, 1e-3 * d.mean(axis=1), 1e-3 * d.mean()).astype(np.float32)
    sigma = np.maximum(sigma, floor)
    with np.errstate(divide="ignore", invalid="ignore"):  # sigma 0: all distances 0, membership 1
        vals = np.exp(-(np.maximum(d - rho[:, None], 0) / sigma[:, None])).astype(np.float32)
    vals[np.isnan(vals)] = 1.0
    vals[idx == np.arange(n)[:, None]] = 0.0
    keep = idx >= 0
    rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)[keep]
    graph = scipy.sparse.coo_matrix((vals[keep], (rows, idx[keep])), shape=(n, n))
    graph.eliminate_zeros()
    transpose = graph.transpose()
    graph = graph + transpose - graph.multiply(transpose)
    graph.eliminate_zeros()
    return graph


def _bandwidths(above: np.ndarray, target: float, *, n_iter: int = 64) -> np.ndarray:
    """Per row the sigma (float32) with sum(exp(-above / sigma)) = ``target``, by binary search."""
    n = len(above)
    lo, hi, mid = np.zeros(n), np.full(n, np.inf), np.ones(n)
    active = np.ones(n, bool)
    for _ in range(n_iter):
        psum = np.exp(-(above / mid[:, None])).sum(axis=1)
        active &= np.abs(psum - target) >= 1e-5
        if not active.any():
            break
        over = active & (psum > target)
        under = active & ~over
        hi = np.where(over, mid, hi)
        lo = np.where(under, mid, lo)
        mid = np.where(over | (under & np.isfinite(hi)), (lo + hi) / 2, np.where(under, mid * 2, mid))
    return mid.astype(np.float32)


def project(
    embeddings: np.ndarray, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
    pca_dims: int = 50, max_fit: int = 100_000, init: str = "pca", n_epochs: int | None = None,
    progress: bool | Progress = False,
) -> tuple[np.ndarray | None, dict]:
    """UMAP of ``embeddings`` (N, D) to (N, 2) float32, seeded: the same input gives the same map.

    Steps: PCA to ``pca_dims`` when wider; the exact ``n_neighbors``
    neighbours (``exact_neighbors``); UMAP's fuzzy graph of them
    (``fuzzy_graph``); UMAP's layout (``core.layout.embed``, umap-learn's
    algorithm without the cost of ``import umap``) starting from a PCA layout
    (``init='pca'``; 'spectral' is UMAP's default, an eigen-decomposition that
    took longer than everything else at 70,000 points, and needs umap-learn)
    for ``n_epochs`` epochs (None: ``default_epochs(N)``), single-threaded
    (umap-learn's parallel layout gives another map on every run, and was no
    faster on 2 shared cores).
    Above ``max_fit`` rows, UMAP is fitted on a seeded sample of ``max_fit``
    rows and every other row is placed among its nearest sampled rows
    (``_fit_sample_and_place``).

    ``progress`` gets the steps and the layout's epochs (True: a tqdm bar on
    stderr). Returns ``(projection, info)``; projection is None (and
    info['reason'] says why) when N is too small.
    """
    say = say_function(progress)
    x = np.asarray(embeddings, dtype=np.float32)
    n, d = x.shape
    fit_rows = min(n, max_fit)
    epochs = n_epochs or default_epochs(fit_rows)
    info = {"method": "umap", "seed": seed, "n_neighbors": n_neighbors, "min_dist": min_dist,
            "pca_dims": None, "fit_rows": n, "init": init, "n_epochs": epochs, "neighbors": "exact"}
    if n < 4:
        return None, {**info, "method": None, "reason": f"UMAP needs at least 4 images; the run has {n}"}
    if d > pca_dims and n > pca_dims:
        from sklearn.decomposition import PCA

        say(f"PCA of {n:,} embeddings to {pca_dims} dimensions", 0.01)
        x = PCA(n_components=pca_dims, random_state=seed).fit_transform(x).astype(np.float32)
        info["pca_dims"] = pca_dims
    k = min(n_neighbors, n - 1)
    if n > max_fit:
        out = _fit_sample_and_place(x, seed=seed, k=k, min_dist=min_dist, init=init, epochs=epochs,
                                    max_fit=max_fit, progress=progress, say=say)
        info["fit_rows"], info["neighbors"] = max_fit, "exact in the sample, approximate for the rest"
    else:
        out = _layout(x, seed=seed, k=k, min_dist=min_dist, init=init, epochs=epochs, progress=progress,
                      say=say, start=0.03, span=0.97)
    say(f"UMAP map of {n:,} points ready", 1.0)
    return out, info


def _layout(x: np.ndarray, *, seed, k, min_dist, init, epochs, progress, say, start: float,
            span: float) -> np.ndarray:
    """UMAP of every row of ``x``: exact neighbours, fuzzy graph, ``core.layout`` (fractions from
    ``start`` over ``span`` of the caller's progress)."""
    from core import layout

    n = len(x)
    bar = progress_bar(progress, n, f"Finding the {k} nearest neighbours", unit="point", start=start,
                       span=0.45 * span)
    graph = fuzzy_graph(*exact_neighbors(x, k, on_rows=bar.update))
    bar.close()
    rng = np.random.RandomState(seed)
    first = None
    if init == "spectral":  # umap-learn's eigen-decomposition of the graph, then its noisy scaling
        say("Spectral start of the layout", start + 0.45 * span)
        _import_umap()
        from umap.spectral import spectral_layout

        first = layout.noisy_scale(spectral_layout(x, graph, 2, rng, metric="euclidean", metric_kwds={}), rng)
    say(f"UMAP layout of {n:,} points, {epochs} epochs", start + 0.47 * span)
    bar = progress_bar(progress, epochs, "UMAP layout", unit="epoch", start=start + 0.47 * span, span=0.53 * span)
    a, b = layout.ab_params(min_dist)
    out = layout.embed(x, graph, a=a, b=b, n_epochs=epochs, rng=rng, start=first, on_epoch=lambda: bar.update(1))
    bar.close()
    return out


def _fit_sample_and_place(x, *, seed, k, min_dist, init, epochs, max_fit, progress, say) -> np.ndarray:
    """Above ``max_fit`` rows: UMAP of a seeded sample of ``max_fit`` rows (``_layout``); every other
    row is placed at the membership-weighted mean of its ``k`` nearest sampled rows
    (``nearest_in_sample``, approximate), UMAP's weights, as umap-learn's ``transform`` starts (its
    refining epochs are left out)."""
    n = len(x)
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(n, max_fit, replace=False))
    rest = np.setdiff1d(np.arange(n), fit_idx)
    out = np.empty((n, 2), np.float32)
    out[fit_idx] = _layout(x[fit_idx], seed=seed, k=k, min_dist=min_dist, init=init, epochs=epochs,
                           progress=progress, say=say, start=0.0, span=0.7)
    bar = progress_bar(progress, len(rest), f"Placing the other {len(rest):,} points", unit="point", start=0.7,
                       span=0.3)
    idx, dist = nearest_in_sample(x[fit_idx], x[rest], k, seed=seed, on_rows=bar.update)
    bar.close()
    weights = memberships(dist)
    out[rest] = (np.einsum("ij,ijk->ik", weights, out[fit_idx][idx]) / weights.sum(axis=1, keepdims=True))
    return out


def memberships(dists: np.ndarray, *, n_iter: int = 64) -> np.ndarray:
    """UMAP's membership strengths (N, k) of each row's neighbours at ``dists`` (N, k), nearest first,
    none of them the row itself: exp(-(d - rho) / sigma), rho the nearest non-zero distance, sigma
    such that a row's strengths sum to log2(k) (``fuzzy_graph``'s rows, before the fuzzy union).

    >>> memberships(np.array([[1.0, 2.0, 3.0, 4.0]])).sum().round(4)
    np.float32(2.0)
    """
    d = np.asarray(dists, dtype=np.float32)
    positive = np.where(d > 0, d, np.inf)
    rho = positive.min(axis=1).astype(np.float32)
    rho[~np.isfinite(rho)] = 0.0
    above = np.maximum(d - rho[:, None], 0)
    sigma = _bandwidths(above, np.log2(d.shape[1]), n_iter=n_iter)
    sigma = np.maximum(sigma, np.where(rho > 0, 1e-3 * d.mean(axis=1), 1e-3 * max(float(d.mean()), 1e-12)))
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = np.exp(-(above / sigma[:, None])).astype(np.float32)
    vals[~np.isfinite(vals)] = 1.0
    return vals


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


def _import_umap():
    """``import umap`` without the TensorFlow import its ParametricUMAP pulls in (5-20 s).

    umap-learn imports ``umap.parametric_umap`` (TensorFlow) in its package
    ``__init__`` and falls back to a stub on ImportError; the map never uses
    it, so when TensorFlow is not loaded yet it is hidden for that import.
    """
    if "umap" in sys.modules or "tensorflow" in sys.modules:
        import umap
    else:
        sys.modules["tensorflow"] = None  # makes `import tensorflow` raise ImportError
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ImportWarning)
                import umap
        finally:
            del sys.modules["tensorflow"]
    return umap


# --------------------------------------------------------------------------- the derived kind

# version 2: core.layout instead of umap-learn's layout; above max_fit rows, placement instead of transform
def projection_config(run: Run) -> dict | None:
    """The run's projection config as the derived kind's config, or None when the run asked for no map."""
    config = run.config
    if config is None or config.projection is None:
        return None
    return asdict(config.projection)


def _unavailable(run: Run) -> str | None:
    if projection_config(run) is None:
        return "the run asked for no map"
    if not (run.path / "embeddings.npy").exists():
        return "the run has no embeddings"
    return None


def _legacy_map(run: Run) -> bool:
    return (run.path / "projection.npy").exists()


@derived.register(KIND, version=2, config=ProjectionConfig, run_config=projection_config,
                  libraries=("numba", "scikit-learn"), unavailable=_unavailable, ready=_legacy_map,
                  description="UMAP map")
def compute_projection(run: Run, config: ProjectionConfig, progress: Progress) -> derived.DerivedResult:
    """The run's map as a derived result: array ``xy`` (N, 2) float32, or none with summary['reason']."""
    embeddings = run.embeddings
    if embeddings is None:
        return derived.DerivedResult(summary={"method": None, "reason": "the run has no embeddings"})
    p = config
    progress(f"Projecting {len(embeddings):,} embeddings with UMAP", 0.0)
    xy, info = project(np.asarray(embeddings), seed=p.seed, n_neighbors=p.n_neighbors, min_dist=p.min_dist,
                       pca_dims=p.pca_dims, max_fit=p.max_fit, init=p.init, n_epochs=p.n_epochs,
                       progress=progress)
    return derived.DerivedResult(arrays={} if xy is None else {"xy": xy}, summary=info)


def stored_projection(run: Run) -> np.ndarray | None:
    """(N, 2) float32 map of the run, memory-mapped, or None while there is none.

    Reads ``projection.npy`` (runs written before maps were derived) or the
    current derived result; the manifest is re-read, so a map added by
    another process since ``run`` was opened is found.
    """
    legacy = run._array("projection")
    if legacy is not None:
        return legacy
    fresh = jobs.fresh(run)
    config = projection_config(fresh)
    if config is None:
        return None
    result = derived.get(fresh, KIND, config, compute=False)
    if result is None or "xy.npy" not in result.info.files:
        return None
    return result.array("xy")


# --------------------------------------------------------------------------- computed after the run (core.jobs)

def projection_status(run: Run) -> str:
    """'ready', 'computing' (a live process holds the run's lock), 'missing' or 'unavailable'.

    'unavailable': the run asked for no map, has no embeddings, or too few
    images (the stored summary's 'reason' says which). 'missing': nobody is
    computing it (``ensure_projection`` or ``start_projection`` does).
    """
    return jobs.status(run, KIND)


def projection_progress(run: Run) -> dict | None:
    """What the process computing the map last reported: {'message', 'fraction', 'error', 'time'}, or None."""
    return jobs.progress(run, KIND)


def ensure_projection(run: Run, *, background: bool = False, progress: bool | Progress = True) -> Run:
    """Make sure ``run`` gets its map (``core.jobs.ensure``); ``progress`` runs from 0.92 to 1.0, the
    share of an analysis the map takes."""
    return jobs.ensure(run, KIND, background=background, progress=progress, start_at=0.92)


def start_projection(run: Run) -> subprocess.Popen | None:
    """Start a background process computing ``run``'s map (``core.jobs.start``); None if one already is."""
    return jobs.start(run, KIND)


def main(argv: list[str] | None = None) -> int:
    """``python -m core.projection RUN_FOLDER [--background]``: compute one run's map (or start it)."""
    import argparse

    from core.quiet import quiet_start

    quiet_start()
    parser = argparse.ArgumentParser(prog="python -m core.projection", description=main.__doc__)
    parser.add_argument("run_folder", nargs="?", help="the run's folder (its version folder or the store's link)")
    parser.add_argument("--background", action="store_true",
                        help="start a background process if the map is missing, and return")
    parser.add_argument("--warm-up", action="store_true",
                        help="only fill numba's on-disk cache (what a map compiles), as setup.sh does")
    args = parser.parse_args(argv)
    if args.warm_up:  # a map of 300 random points compiles everything the real ones use, once
        project(np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32), n_epochs=5)
        return 0
    if args.run_folder is None:
        parser.error("a run folder is needed (or --warm-up)")
    return jobs.main([args.run_folder, KIND, *(["--background"] if args.background else [])])


if __name__ == "__main__":
    sys.exit(main())
