"""core.layout, UMAP's layout step without umap-learn: its pieces against umap-learn's own, the map's
neighbourhood preservation against umap-learn's layout of the same graph, and no ``import umap``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import layout
from core.neighbours import exact_neighbors
from core.umap_map import fuzzy_graph

ROOT = Path(__file__).resolve().parents[2]


def _clusters(n, d, k=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (k, d))
    return (centers[rng.integers(0, k, n)] + rng.normal(0, 1, (n, d))).astype(np.float32)


def _graph(x, k=15):
    return fuzzy_graph(*exact_neighbors(x, k))


def test_same_seed_same_layout_and_every_epoch_reported():
    x = _clusters(400, 10)
    g = _graph(x)
    epochs = []
    a = layout.embed(x, g, a=1.577, b=0.895, n_epochs=60, rng=np.random.RandomState(2),
                     on_epoch=lambda: epochs.append(1))
    b = layout.embed(x, g, a=1.577, b=0.895, n_epochs=60, rng=np.random.RandomState(2))
    c = layout.embed(x, g, a=1.577, b=0.895, n_epochs=60, rng=np.random.RandomState(3))
    assert a.shape == (400, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(epochs) == 60


def test_a_graph_without_edges_keeps_the_start():
    import scipy.sparse

    x = _clusters(20, 3)
    out = layout.embed(x, scipy.sparse.coo_matrix((20, 20), dtype=np.float32), a=1.5, b=0.9, n_epochs=30,
                       rng=np.random.RandomState(0))
    assert out.shape == (20, 2) and np.isfinite(out).all()
    assert out.min() == 0.0 and np.isclose(out.max(axis=0), 10.0).all()  # umap-learn's 0..10 box


@pytest.mark.slow
def test_the_pieces_are_umap_learns():
    from umap.umap_ import find_ab_params, make_epochs_per_sample, noisy_scale_coords
    from umap.utils import tau_rand_int

    for min_dist in (0.0, 0.1, 0.5):
        np.testing.assert_allclose(layout.ab_params(min_dist), find_ab_params(1.0, min_dist), rtol=1e-6)
    w = np.random.default_rng(0).random(500)
    w[::7] = 0
    np.testing.assert_array_equal(layout.epochs_per_sample(w, 75), make_epochs_per_sample(w, 75))
    coords = np.random.default_rng(1).normal(size=(50, 2))
    np.testing.assert_array_equal(layout.noisy_scale(coords, np.random.RandomState(4)),
                                  noisy_scale_coords(coords, np.random.RandomState(4), max_coord=10, noise=0.0001))
    ours = layout._tau_rand_int
    s1 = np.array([123456789, -98765, 4294967296 + 17], np.int64) + np.int64(4607182418800017408)
    s2 = s1.copy()
    assert [int(ours(s1)) for _ in range(200)] == [int(tau_rand_int(s2)) for _ in range(200)]


@pytest.mark.slow
def test_neighbourhoods_are_kept_as_well_as_by_umap_learns_layout_of_the_same_graph():
    from sklearn.manifold import trustworthiness
    from umap.umap_ import simplicial_set_embedding

    x = _clusters(3000, 20, k=10)
    g = _graph(x)
    a, b = layout.ab_params(0.1)
    ours, theirs = [], []
    for seed in (0, 1):
        mine = layout.embed(x, g, a=a, b=b, n_epochs=200, rng=np.random.RandomState(seed))
        ref, _ = simplicial_set_embedding(x, g, 2, 1.0, a, b, 1.0, 5, 200, "pca", np.random.RandomState(seed),
                                          "euclidean", {}, False, {}, False, tqdm_kwds={"disable": True})
        ours.append(trustworthiness(x, mine, n_neighbors=10))
        theirs.append(trustworthiness(x, ref, n_neighbors=10))
    assert abs(np.mean(ours) - np.mean(theirs)) < 0.01, (ours, theirs)
    assert min(ours) > 0.9


def test_a_map_with_or_without_a_sample_imports_no_umap():
    code = ("import sys, numpy as np\n"
            "from core.umap_map import project\n"
            "rng = np.random.default_rng(0)\n"
            "xy, info = project(rng.normal(size=(1500, 64)).astype(np.float32), n_epochs=20)\n"
            "assert xy.shape == (1500, 2) and info['neighbors'] == 'exact'\n"
            "xy, info = project(rng.normal(size=(1500, 64)).astype(np.float32), n_epochs=20, max_fit=500)\n"
            "assert xy.shape == (1500, 2) and info['fit_rows'] == 500\n"
            "print(sorted(m for m in ('umap', 'pynndescent', 'tensorflow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_nearest_in_sample_finds_almost_every_true_neighbour_and_is_repeatable():
    from core.neighbours import nearest_in_sample

    x = _clusters(6000, 12, k=12, seed=3)
    sample, queries = x[:2000], x[2000:]
    idx, dist = nearest_in_sample(sample, queries, 10, seed=1)
    full = np.sqrt(((queries[:, None, :].astype(np.float64) - sample[None]) ** 2).sum(-1))
    exact = np.argsort(full, axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, exact)])
    assert recall > 0.95, recall
    assert idx.dtype == np.int32 and dist.dtype == np.float32 and idx.shape == (4000, 10)
    assert (np.diff(dist, axis=1) >= 0).all()  # nearest first
    np.testing.assert_allclose(dist, np.take_along_axis(full, idx.astype(np.int64), 1), rtol=1e-4, atol=1e-4)
    again = nearest_in_sample(sample, queries, 10, seed=1)
    assert np.array_equal(idx, again[0]) and np.array_equal(dist, again[1])


def test_queries_with_too_few_candidates_in_their_cells_are_searched_in_the_whole_sample():
    from core.neighbours import nearest_in_sample

    rng = np.random.default_rng(4)
    groups = rng.normal(0, 50, (5, 4))
    sample = (np.repeat(groups, 6, axis=0) + rng.normal(0, 0.1, (30, 4))).astype(np.float32)  # 5 cells of 6
    queries = rng.normal(0, 50, (200, 4)).astype(np.float32)
    idx, dist = nearest_in_sample(sample, queries, 30, probes=1)  # no cell holds 30 candidates
    full = np.sqrt(((queries[:, None, :].astype(np.float64) - sample[None]) ** 2).sum(-1))
    np.testing.assert_allclose(dist, np.sort(full, axis=1), rtol=1e-4, atol=1e-3)
    assert (np.sort(idx, axis=1) == np.arange(30)).all()


@pytest.mark.slow
def test_a_map_fitted_on_a_sample_keeps_neighbourhoods_like_the_full_map():
    from sklearn.manifold import trustworthiness

    from core.umap_map import project

    x = _clusters(6000, 20, k=10, seed=5)
    full, _ = project(x, n_epochs=100)
    sampled, info = project(x, n_epochs=100, max_fit=1500)
    assert info["fit_rows"] == 1500 and np.isfinite(sampled).all()
    t_full, t_sampled = (trustworthiness(x, m, n_neighbors=10) for m in (full, sampled))
    assert t_sampled > t_full - 0.02, (t_full, t_sampled)
