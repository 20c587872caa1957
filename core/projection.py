"""2-D map of the embeddings: PCA to 50 dimensions when wider, then UMAP, seeded.

``import umap`` imports TensorFlow when it is installed (about 20 s on two
cores), so it happens inside ``project`` and nowhere on a path that reads runs.
"""

from __future__ import annotations

import warnings

import numpy as np


def project(
    embeddings: np.ndarray, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
    pca_dims: int = 50, max_fit: int = 100_000,
) -> tuple[np.ndarray | None, dict]:
    """UMAP of ``embeddings`` (N, D) to (N, 2) float32.

    Above ``max_fit`` rows, UMAP is fitted on a seeded sample and the other
    rows are placed with ``transform``. Returns ``(projection, info)``;
    projection is None (and info['reason'] says why) when N is too small.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    n, d = x.shape
    info = {"method": "umap", "seed": seed, "n_neighbors": n_neighbors, "min_dist": min_dist,
            "pca_dims": None, "fit_rows": n}
    if n < 4:
        return None, {**info, "method": None, "reason": f"UMAP needs at least 4 images; the run has {n}"}
    if d > pca_dims and n > pca_dims:
        from sklearn.decomposition import PCA

        x = PCA(n_components=pca_dims, random_state=seed).fit_transform(x).astype(np.float32)
        info["pca_dims"] = pca_dims
    import umap  # slow import, kept here on purpose

    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, n - 1), min_dist=min_dist,
                        random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value 1 overridden.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        if n > max_fit:
            rng = np.random.default_rng(seed)
            fit_idx = np.sort(rng.choice(n, max_fit, replace=False))
            out = np.empty((n, 2), np.float32)
            out[fit_idx] = reducer.fit_transform(x[fit_idx])
            rest = np.setdiff1d(np.arange(n), fit_idx)
            out[rest] = reducer.transform(x[rest])
            info["fit_rows"] = max_fit
        else:
            out = reducer.fit_transform(x).astype(np.float32)
    return out, info
