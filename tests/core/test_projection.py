"""The UMAP map: seeded and repeatable, computed after the run is written, stored as the run's
derived 'projection', and its status while a process (this one or a background one) computes it."""

from __future__ import annotations

import fcntl
import os

import numpy as np
import pytest

from core import jobs, neighbours, umap_map
from core import projection as proj
from core.config import AnalysisConfig, ProjectionConfig
from core.projection import projection_status, stored_projection
from core.runs import write_run
from core.store import RunStore
from core.synthetic import synthetic_arrays
from core.umap_map import project


def _clusters(n, d, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 5, (4, d))
    return (centers[rng.integers(0, 4, n)] + rng.normal(0, 1, (n, d))).astype(np.float32)


def _run_without_map(store: RunStore, run_id: str = "r", *, n: int = 120, projection: bool = True,
                     embeddings: bool = True):
    """A run as ``analyze`` now writes it: embeddings, a projection config, no map yet."""
    a = synthetic_arrays(n, 4, dim=12, with_images=False, seed=1)
    config = AnalysisConfig(model_sha256="0" * 64, data_fingerprint=f"test-{run_id}",
                            projection=ProjectionConfig() if projection else None)
    return write_run(store, run_id, classes=["a", "b", "c", "d"], y_true=a["y_true"], probs=a["probs"],
                     paths=a["paths"], splits=a["splits"], embeddings=a["embeddings"] if embeddings else None,
                     config=config)


def _fake_project(x, *, seed, **_):
    """A cheap stand-in for UMAP where the test is about storage and status, not the map."""
    x = np.asarray(x, np.float32)
    return (x[:, :2] + seed).astype(np.float32), {"method": "first-two-columns", "seed": seed}


# --------------------------------------------------------------------------- the map itself

@pytest.mark.slow
def test_same_seed_same_map_and_pca_for_wide_embeddings_with_epoch_progress():
    x = _clusters(240, 80)
    seen = []
    a, info = project(x, seed=3, progress=lambda m, f: seen.append((m, f)))
    b, _ = project(x, seed=3)
    assert a.shape == (240, 2) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert info["pca_dims"] == 50 and info["method"] == "umap" and info["fit_rows"] == 240
    assert info["n_epochs"] == 500 and info["init"] == "pca" and info["neighbors"] == "exact"
    assert dict(seen)["Finding the 15 nearest neighbours: 240/240 points"] == pytest.approx(0.03 + 0.45 * 0.97)
    assert ("UMAP layout: 500/500 epochs", 1.0) in seen  # every epoch reported
    assert sum(m.startswith("UMAP layout: ") and m.endswith(" epochs") for m, _ in seen) == 500
    assert [f for _, f in seen] == sorted(f for _, f in seen) and seen[-1][1] == 1.0


def test_exact_neighbors_match_a_full_distance_matrix():
    rng = np.random.default_rng(4)
    for n, d, k in ((50, 3, 5), (200, 20, 15)):
        x = rng.normal(size=(n, d)).astype(np.float32)
        idx, dist = neighbours.exact_neighbors(x, k)
        full = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
        expected = np.argsort(full, axis=1, kind="stable")[:, :k]  # row i: itself first (distance 0)
        assert idx.dtype == np.int32 and dist.dtype == np.float32 and idx.shape == (n, k)
        assert np.array_equal(idx, expected)
        np.testing.assert_allclose(dist, np.take_along_axis(full, expected, 1), atol=1e-4)
        assert np.array_equal(neighbours.exact_neighbors(x, k, threads=1)[0], neighbours.exact_neighbors(x, k, threads=3)[0])


def test_exact_neighbors_refuse_more_neighbours_than_points():
    with pytest.raises(ValueError, match="k must be between 1 and the number of points \\(4\\). Received: k=5"):
        neighbours.exact_neighbors(np.zeros((4, 2), np.float32), 5)


@pytest.mark.slow
def test_fuzzy_graph_equals_umap_learns_fuzzy_simplicial_set():
    from umap.umap_ import fuzzy_simplicial_set

    rng = np.random.default_rng(5)
    for n, d, k in ((120, 4, 15), (600, 12, 10)):
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[5:9] = x[0]  # exact duplicates: zero distances, rho from the first non-zero one
        idx, dist = neighbours.exact_neighbors(x, k)
        ours = umap_map.fuzzy_graph(idx, dist).tocsr()
        ref = fuzzy_simplicial_set(x, k, np.random.RandomState(0), "euclidean", knn_indices=idx,
                                   knn_dists=dist)[0].tocsr()
        assert ours.nnz == ref.nnz and abs(ours - ref).max() < 1e-6


def test_default_epochs_follow_umap_up_to_30000_points_and_are_fewer_above():
    assert [umap_map.default_epochs(n) for n in (100, 10_000, 10_001, 30_000, 30_001, 1_000_000)] == \
        [500, 500, 200, 200, 75, 75]


@pytest.mark.slow
def test_narrow_embeddings_skip_pca_and_large_n_fits_a_sample():
    x = _clusters(300, 8)
    out, info = project(x, max_fit=150)
    assert info["pca_dims"] is None and info["fit_rows"] == 150
    assert out.shape == (300, 2) and np.isfinite(out).all()


def test_too_few_images_give_a_reason_not_an_error():
    out, info = project(np.zeros((3, 5), np.float32))
    assert out is None and "at least 4" in info["reason"]


# --------------------------------------------------------------------------- status and storage

def test_map_is_computed_after_the_run_and_read_back_by_a_fresh_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(proj, "project", _fake_project)
    store = RunStore(tmp_path)
    run = _run_without_map(store)
    assert projection_status(run) == "missing" and stored_projection(run) is None
    assert not (run.path / "projection.npy").exists()
    messages = []
    done = proj.ensure_projection(run, progress=lambda m, f: messages.append((m, f)))
    assert projection_status(run) == "ready"  # the same object sees it too (manifest re-read)
    expected = run.embeddings[:, :2] + 0
    assert np.array_equal(stored_projection(done), expected)
    fresh = store.load("r")
    assert np.array_equal(stored_projection(fresh), expected) and stored_projection(fresh).dtype == np.float32
    assert fresh.derived_info("projection").config == {**ProjectionConfig().__dict__}
    assert messages[-1][1] == 1.0 and "ready" in messages[-1][0]
    assert [f for _, f in messages] == sorted(f for _, f in messages)
    assert not (run.path / proj.PROGRESS_FILE).exists()  # progress is removed once the map is stored


def test_a_held_lock_reads_computing_and_a_released_one_missing(tmp_path):
    run = _run_without_map(RunStore(tmp_path))
    fd = os.open(run.path / proj.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a computing process holds
        assert projection_status(run) == "computing"
        assert proj.start_projection(run) is None  # nobody starts a second one
    finally:
        os.close(fd)
    assert projection_status(run) == "missing"


def test_background_ensure_does_not_start_a_second_process_while_one_computes(tmp_path, monkeypatch):
    run = _run_without_map(RunStore(tmp_path))
    started = []
    monkeypatch.setattr(jobs, "start", lambda r, name: started.append(r.id))
    fd = os.open(run.path / proj.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        proj.ensure_projection(run, background=True, progress=False)
    finally:
        os.close(fd)
    assert started == []
    proj.ensure_projection(run, background=True, progress=False)
    assert started == ["r"]


@pytest.mark.parametrize("kwargs, why", [
    ({"projection": False}, "no map asked for"),
    ({"embeddings": False}, "no embeddings (a SavedModel)"),
])
def test_runs_that_cannot_have_a_map_are_unavailable(tmp_path, kwargs, why):
    run = _run_without_map(RunStore(tmp_path), **kwargs)
    assert projection_status(run) == "unavailable", why
    assert stored_projection(proj.ensure_projection(run, progress=False)) is None


def test_too_few_images_store_the_reason_and_read_unavailable(tmp_path):
    run = _run_without_map(RunStore(tmp_path), n=3)
    proj.ensure_projection(run, progress=False)
    assert projection_status(run) == "unavailable" and stored_projection(run) is None
    assert "at least 4" in run.derived_info("projection").summary["reason"]


def test_a_legacy_projection_file_is_ready_as_is(tmp_path):
    a = synthetic_arrays(50, 3, with_images=False)
    run = write_run(RunStore(tmp_path), "old", classes=["x", "y", "z"], y_true=a["y_true"] % 3,
                    probs=np.full((50, 3), 1 / 3, np.float32), paths=a["paths"], embeddings=a["embeddings"],
                    projection=a["projection"])
    assert projection_status(run) == "ready"
    assert np.array_equal(stored_projection(run), a["projection"])


def test_a_failed_map_is_reported_in_the_progress_file_and_stays_missing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise MemoryError("out of memory in the layout")

    monkeypatch.setattr(proj, "project", broken)
    run = _run_without_map(RunStore(tmp_path))
    with pytest.raises(MemoryError):
        proj.ensure_projection(run, progress=False)
    assert projection_status(run) == "missing"
    report = proj.projection_progress(run)
    assert report["error"] == "MemoryError: out of memory in the layout" and report["fraction"] is None


@pytest.mark.slow
def test_background_process_computes_the_same_map_as_this_process(tmp_path):
    """The real thing: a child process with real UMAP; 'computing' from the moment it is started."""
    store = RunStore(tmp_path)
    run = _run_without_map(store, n=150)
    child = proj.start_projection(run)
    assert child is not None
    assert projection_status(run) == "computing"  # the lock was taken before start_projection returned
    assert child.wait(timeout=240) == 0, (run.path / proj.LOG_FILE).read_text()
    assert projection_status(run) == "ready"
    here, _ = project(np.asarray(run.embeddings), seed=0)
    assert np.array_equal(stored_projection(store.load("r")), here)  # seeded: the same map in any process


def test_ensure_projection_tells_its_caller_each_step_not_each_epoch(tmp_path):
    run = _run_without_map(RunStore(tmp_path))
    messages = []
    proj.ensure_projection(run, progress=lambda m, f: messages.append(m))
    layout = [m for m in messages if m.startswith("UMAP layout: ")]
    assert layout and len(layout) <= 5, layout  # 500 epochs, reported when the step starts and every 2 s
    assert any(m.startswith("Finding the ") for m in messages) and messages[-1].endswith("UMAP map ready")
