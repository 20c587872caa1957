"""UMAP projection: seeded and repeatable, PCA first when wide, sample-fit for large N."""

import numpy as np
import pytest

from core.projection import project


def _clusters(n, d, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 5, (4, d))
    return (centers[rng.integers(0, 4, n)] + rng.normal(0, 1, (n, d))).astype(np.float32)


@pytest.mark.slow
def test_same_seed_same_map_and_pca_for_wide_embeddings():
    x = _clusters(240, 80)
    a, info = project(x, seed=3)
    b, _ = project(x, seed=3)
    assert a.shape == (240, 2) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert info["pca_dims"] == 50 and info["method"] == "umap" and info["fit_rows"] == 240


@pytest.mark.slow
def test_narrow_embeddings_skip_pca_and_large_n_fits_a_sample():
    x = _clusters(300, 8)
    out, info = project(x, max_fit=150)
    assert info["pca_dims"] is None and info["fit_rows"] == 150
    assert out.shape == (300, 2) and np.isfinite(out).all()


def test_too_few_images_give_a_reason_not_an_error():
    out, info = project(np.zeros((3, 5), np.float32))
    assert out is None and "at least 4" in info["reason"]
