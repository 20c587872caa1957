"""UMAP's layout step: place the points of a fuzzy graph in 2-D by stochastic gradient descent.

The same computation as umap-learn 0.5's ``simplicial_set_embedding`` with
``euclidean`` output and a PCA start (``init='pca'``): edges below
max-weight / epochs dropped, each edge sampled in proportion to its weight,
an attractive step on both ends and ``negative_sample_rate`` repulsive steps
on the head, gradients clipped to [-4, 4], the learning rate falling linearly
to zero, a xorshift ("tau") random generator per point seeded as umap-learn
seeds it. Single-threaded, so a seed gives the same map on every run.

Written here rather than called from umap-learn because ``import umap`` costs
a new process about 14 s of numba compilation that its on-disk cache does not
keep (umap-learn and pynndescent jit many functions at import without
``cache=True``), and its layout epoch is not cached either: this module's numba
functions are cached on disk (``cache=True``) and compile in about 2 s
the first time on a machine. ``tests/core/analysis/test_layout.py`` checks the pieces
against umap-learn's own and the map's neighbourhood preservation against
umap-learn's layout of the same graph.
"""

from __future__ import annotations

from typing import Callable

import numba
import numpy as np

INT32_MIN, INT32_MAX = np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max - 1  # umap-learn's bounds


def ab_params(min_dist: float, spread: float = 1.0) -> tuple[float, float]:
    """umap-learn's ``find_ab_params``: a, b of 1 / (1 + a d^2b) fitted to the offset exponential decay.

    >>> a, b = ab_params(0.1)
    >>> round(a, 3), round(b, 3)
    (1.577, 0.895)
    """
    from scipy.optimize import curve_fit

    def curve(x, a, b):
        return 1.0 / (1.0 + a * x ** (2 * b))

    xv = np.linspace(0, spread * 3, 300)
    yv = np.where(xv < min_dist, 1.0, np.exp(-(xv - min_dist) / spread))
    (a, b), _ = curve_fit(curve, xv, yv)
    return float(a), float(b)


def epochs_per_sample(weights: np.ndarray, n_epochs: int) -> np.ndarray:
    """Epochs between two samples of each edge: n_epochs / (n_epochs * w / max w); -1 for weight 0.

    >>> epochs_per_sample(np.array([1.0, 0.5, 0.0]), 10).tolist()
    [1.0, 2.0, -1.0]
    """
    n_samples = n_epochs * (weights / weights.max())
    out = np.full(len(weights), -1.0)
    out[n_samples > 0] = float(n_epochs) / n_samples[n_samples > 0]
    return out


def pca_start(data: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """The PCA start of umap-learn (``init='pca'``): 2 principal components scaled to |x| <= 10, tiny noise."""
    from sklearn.decomposition import PCA

    return noisy_scale(PCA(n_components=2, random_state=rng).fit_transform(data), rng)


def noisy_scale(coords: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """umap-learn's ``noisy_scale_coords``: scaled so that the largest |coordinate| is 10, plus N(0, 0.0001) noise."""
    coords = (coords * (10.0 / np.abs(coords).max())).astype(np.float32)
    return coords + rng.normal(scale=0.0001, size=coords.shape).astype(np.float32)


def embed(
    data: np.ndarray, graph, *, a: float, b: float, n_epochs: int, rng: np.random.RandomState,
    start: np.ndarray | None = None, gamma: float = 1.0, negative_sample_rate: int = 5,
    on_epoch: Callable[[], object] | None = None,
) -> np.ndarray:
    """Lay out the (N, N) fuzzy ``graph`` of ``data`` in 2-D; returns (N, 2) float32.

    ``start``: the initial layout (default ``pca_start(data, rng)``);
    ``rng`` is consumed in umap-learn's order (PCA, noise, then the layout's
    generator seeds). ``on_epoch()`` is called after every epoch.
    """
    graph = graph.tocoo()
    graph.sum_duplicates()
    n = graph.shape[1]
    weights = graph.data.astype(np.float64)
    if n_epochs > 10 and len(weights):
        weights[weights < weights.max() / float(n_epochs)] = 0.0
    keep = weights > 0
    head, tail, weights = graph.row[keep].astype(np.int32), graph.col[keep].astype(np.int32), weights[keep]
    embedding = pca_start(data, rng) if start is None else np.asarray(start, dtype=np.float32)
    span = embedding.max(axis=0) - embedding.min(axis=0)
    embedding = np.ascontiguousarray(10.0 * (embedding - embedding.min(axis=0)) / span, dtype=np.float32)
    rng_state = rng.randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
    if len(weights) == 0:
        return embedding
    per_sample = epochs_per_sample(weights, n_epochs)
    per_negative = per_sample / negative_sample_rate
    next_negative = per_negative.copy()
    next_sample = per_sample.copy()
    # one generator per point, as umap-learn seeds them: the seed plus the bits of the point's first coordinate
    states = np.full((n, 3), rng_state, dtype=np.int64) + embedding[:, 0].astype(np.float64).view(np.int64)[:, None]
    for e in range(n_epochs):
        alpha = 1.0 - e / n_epochs
        _epoch(embedding, head, tail, per_sample, next_sample, per_negative, next_negative, states,
              np.float32(a), np.float32(b), np.float32(gamma), np.float32(alpha), float(e))
        if on_epoch is not None:
            on_epoch()
    return embedding


@numba.njit(cache=True)
def _tau_rand_int(state):
    """umap-learn's ``tau_rand_int``: a xorshift step of the three int64 ``state`` words."""
    state[0] = (((state[0] & 4294967294) << 12) & 0xFFFFFFFF) ^ ((((state[0] << 13) & 0xFFFFFFFF) ^ state[0]) >> 19)
    state[1] = (((state[1] & 4294967288) << 4) & 0xFFFFFFFF) ^ ((((state[1] << 2) & 0xFFFFFFFF) ^ state[1]) >> 25)
    state[2] = (((state[2] & 4294967280) << 17) & 0xFFFFFFFF) ^ ((((state[2] << 3) & 0xFFFFFFFF) ^ state[2]) >> 11)
    return np.int32(state[0] ^ state[1] ^ state[2])  # umap-learn's signature returns i4


@numba.njit(cache=True, fastmath=True)
def _clip(v):
    return 4.0 if v > 4.0 else (-4.0 if v < -4.0 else v)


@numba.njit(cache=True, fastmath=True, nogil=True)
def _epoch(emb, head, tail, per_sample, next_sample, per_negative, next_negative, states, a, b, gamma, alpha, n):
    """One epoch over the edges due at epoch ``n`` (umap-learn's single-epoch function, move_other=True)."""
    n_vertices = emb.shape[0]
    dim = emb.shape[1]
    for i in range(per_sample.shape[0]):
        if next_sample[i] > n:
            continue
        j = head[i]
        k = tail[i]
        d2 = np.float32(0.0)
        for d in range(dim):
            diff = emb[j, d] - emb[k, d]
            d2 += diff * diff
        if d2 > 0.0:
            pb = d2 ** b  # one power for both of umap-learn's pow(d2, b - 1) and pow(d2, b)
            coeff = -2.0 * a * b * (pb / d2) / (a * pb + 1.0)
        else:
            coeff = np.float32(0.0)
        for d in range(dim):
            g = _clip(coeff * (emb[j, d] - emb[k, d]))
            emb[j, d] += g * alpha
            emb[k, d] += -g * alpha
        next_sample[i] += per_sample[i]
        n_neg = int((n - next_negative[i]) / per_negative[i])
        for _ in range(n_neg):
            k = _tau_rand_int(states[j]) % n_vertices
            d2 = np.float32(0.0)
            for d in range(dim):
                diff = emb[j, d] - emb[k, d]
                d2 += diff * diff
            if d2 > 0.0:
                coeff = 2.0 * gamma * b / ((0.001 + d2) * (a * d2 ** b + 1.0))
                for d in range(dim):
                    emb[j, d] += _clip(coeff * (emb[j, d] - emb[k, d])) * alpha
        next_negative[i] += n_neg * per_negative[i]
