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

This module is the map as a derived kind; the map's computation is
``core.umap_map.project`` (UMAP without ``import umap``), its neighbour search
``core.neighbours.exact_neighbors``.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from core import derived, jobs
from core.config import ProjectionConfig
from core.progress import Progress
from core.store import Run
from core.umap_map import project

KIND = "projection"
# core.jobs's files for this kind (the names maps have always used)
LOCK_FILE, PROGRESS_FILE, LOG_FILE = f".{KIND}.lock", f".{KIND}-progress.json", f".{KIND}.log"
REPO_ROOT = Path(__file__).resolve().parent.parent


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
