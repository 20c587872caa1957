"""UMAP's map of embeddings, without ``import umap``: exact neighbours, UMAP's fuzzy graph, UMAP's layout.

``project`` is the whole computation (PCA, neighbours, graph, layout, placing
the rows beyond a fitted sample); ``core.projection`` stores its result as the
run's map. ``import umap`` compiles numba code for ~14 s in every new process
and imports TensorFlow when it is installed: ``core.layout`` runs UMAP's
layout instead, and umap-learn is imported only for the spectral start
(``_import_umap``, TensorFlow hidden from it), never on a path that reads
runs. benchmarks/bench_umap.py compares ``project`` with umap-learn's seeded
defaults; tests compare ``fuzzy_graph`` with umap-learn's.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

from core.neighbours import exact_neighbors, nearest_in_sample
from core.progress import Progress, progress_bar, say_function


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
