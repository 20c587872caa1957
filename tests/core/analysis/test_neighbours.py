"""Nearest neighbours in embedding space (core.analysis.neighbours) against scikit-learn's exact search,
and the reference pool: training images when there are any, else the evaluated images."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from core.analysis import neighbours


@pytest.mark.parametrize("seed", range(5))
def test_nearest_matches_scikit_learn_and_never_returns_the_query(seed):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(2000, 16)).astype(np.float32)
    candidates = rng.choice(2000, 500, replace=False)
    query = int(candidates[7])  # the query is among the candidates: it must be skipped
    rows, dist = neighbours.nearest(emb, query, candidates, k=6)
    others = candidates[candidates != query]
    reference = NearestNeighbors(n_neighbors=6, algorithm="brute").fit(emb[others])
    ref_dist, ref_idx = reference.kneighbors(emb[query:query + 1])
    assert rows.tolist() == others[ref_idx[0]].tolist()
    np.testing.assert_allclose(dist, ref_dist[0], rtol=1e-4)
    assert query not in rows.tolist() and np.all(np.diff(dist) >= 0)


def test_ties_go_to_the_lower_row_and_small_pools_give_what_they_have():
    emb = np.array([[0.0], [1.0], [-1.0], [1.0], [5.0]])
    rows, dist = neighbours.nearest(emb, 0, np.array([4, 3, 2, 1]), k=2)
    assert rows.tolist() == [1, 2] and dist.tolist() == [1.0, 1.0]  # rows 1, 2, 3 all at distance 1
    assert neighbours.nearest(emb, 0, np.array([0]), k=3)[0].size == 0
    assert neighbours.nearest(emb, 0, np.array([4]), k=3)[0].tolist() == [4]
    with pytest.raises(ValueError, match="Received: k=0"):
        neighbours.nearest(emb, 0, np.array([1]), k=0)


def test_the_pool_is_the_training_split_else_every_image():
    rows, kind = neighbours.reference_rows(np.array(["train", "test", "train", "val"]))
    assert (rows.tolist(), kind) == ([0, 2], "training")
    rows, kind = neighbours.reference_rows(np.array(["test", "test", "val"]))  # a plain folder: no train/
    assert (rows.tolist(), kind) == ([0, 1, 2], "evaluated")
    groups = neighbours.rows_by_class(np.array([2, 0, 2, 1, 0]), np.array([4, 0, 1, 2]), n_classes=4)
    assert [g.tolist() for g in groups] == [[1, 4], [], [0, 2], []]
    with pytest.raises(ValueError, match="class indices in \\[0, 2\\)"):
        neighbours.rows_by_class(np.array([0, 5]), np.array([0, 1]), n_classes=2)
