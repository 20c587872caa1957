"""Occlusion sensitivity: attention maps for any model (ONNX, SavedModel, Keras), cached in the run.

Zeiler & Fergus (2014): hide one patch of the image at a time and see how much the
model's probability for a class drops. The image is cut into ``grid`` x ``grid`` cells;
a patch is ``patch`` x ``patch`` cells and slides by one cell, so there are
``(grid - patch + 1)^2`` occluded copies per image (36 for 7 x 7 cells) plus the image itself.
A hidden patch is filled with the image's mean colour (no new edges or colours). The map
of class k at cell c is the mean, over the patches covering c, of
``p_k(image) - p_k(image with the patch hidden)``; its positive part is evidence for k.
A map with no positive cell is flagged ``empty`` (no patch lowered the probability).

Deterministic (no random masks, so nothing to seed) and batched: the occluded copies of
many images go through the model in batches of ``PASSES`` (the last one padded so a Keras
model is traced once). The cost is ``passes_per_image`` forward passes per image, printed
by ``explain`` and recorded in the result's summary with the seconds per image.

The grid adapts to the model's cost (``OcclusionConfig()``, the default): the first time a
run's maps are computed, the unoccluded pass of the first images is timed (the better of
two runs: the first also warms the model up) and the finest grid of ``GRIDS`` whose passes
fit ``seconds_per_image`` is chosen (7 x 7 cells for a small CNN on 28x28 images; for a
ResNet18 on 224x224 images on 2 cores, 7 x 7 at load 3 and 4 x 4 when a dozen other
processes share them: a 24-image gallery page in about 18 s of passes at most, under the
dashboard's 20 s page budget, as far as the coarsest grid allows). The choice, the time of a pass it came from and the budget
are recorded in the summary, and every later row of the run uses the same grid (the stored
maps of a run share one shape; the choice therefore depends on how busy the machine was
then). A slower model or machine gets coarser maps rather than slower pages, down to the
coarsest grid, 4 x 4 cells (10 passes), used even when over the budget (the summary says so;
the dashboard's page budget and ``explain --limit`` bound the images). ``OcclusionConfig(grid=7, patch=2)`` fixes the grid instead.

Stored as the derived kind ``occlusion_maps`` with the same arrays as Grad-CAM's
``attention_maps`` (``rows``, ``coarse`` (m, 2, grid, grid) float32, ``empty`` (m, 2):
``[:, 0]`` the predicted class, ``[:, 1]`` the true class), so ``core.analysis.gradcam.explain_rows``,
the CLI's ``explain --method occlusion`` and the dashboard read both the same way. The
model runs as the analysis ran it (``core.run.analyze.load_run_model``: the run's scale and
input size; ONNX through onnxruntime without TensorFlow).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from core.errors import UserError
from core.progress import Progress
from core.run import derived
from core.run.store import Run

KIND = "occlusion_maps"  # core.analysis.gradcam.OCCLUSION_KIND
KIND_VERSION = 2   # 2: the grid adapts to the model's cost (recorded in the summary)
PASSES = 64        # occluded images per forward pass
_MODELS_KEPT = 2
# (grid, patch) from the finest to the coarsest; passes per image 37, 26, 17, 10. 7 x 7 is as fine
# as Grad-CAM on most backbones (a 7x7 last feature map at 224x224) and 4-pixel cells at 28x28.
GRIDS = ((7, 2), (6, 2), (5, 2), (4, 2))
SECONDS_PER_IMAGE = 0.75  # a 24-image gallery page in about 18 s (the dashboard's page budget is 20 s)
PROBE_IMAGES = 8          # images whose unoccluded pass is timed to choose the grid


def passes(grid: int, patch: int) -> int:
    """Forward passes per image: the occluded copies and the image itself.

    >>> [passes(g, p) for g, p in GRIDS]
    [37, 26, 17, 10]
    """
    return (grid - patch + 1) ** 2 + 1


def choose_grid(seconds_per_pass: float, seconds_per_image: float) -> tuple[int, int]:
    """The finest (grid, patch) of ``GRIDS`` whose passes take at most ``seconds_per_image``,
    else the coarsest.

    >>> choose_grid(0.0005, 0.75), choose_grid(0.035, 0.75), choose_grid(0.5, 0.75)
    ((7, 2), (5, 2), (4, 2))
    """
    for grid, patch in GRIDS:
        if passes(grid, patch) * seconds_per_pass <= seconds_per_image:
            return grid, patch
    return GRIDS[-1]


@dataclass(frozen=True)
class OcclusionConfig:
    """``grid`` cells per side; a hidden patch is ``patch`` x ``patch`` cells, sliding by one cell.
    Both None (the default): chosen per run from ``seconds_per_image`` and a timed pass (``choose_grid``)."""

    grid: int | None = None
    patch: int | None = None
    seconds_per_image: float = SECONDS_PER_IMAGE

    def __post_init__(self):
        if (self.grid is None) != (self.patch is None):
            raise UserError(f"occlusion grid and patch are given together or not at all. Received: "
                             f"grid={self.grid!r}, patch={self.patch!r}")
        if self.grid is not None:
            if not isinstance(self.grid, int) or not 2 <= self.grid <= 32:
                raise UserError(f"occlusion grid must be an integer from 2 to 32. Received: grid={self.grid!r}")
            if not isinstance(self.patch, int) or not 1 <= self.patch < self.grid:
                raise UserError(f"occlusion patch must be an integer from 1 to grid - 1 = {self.grid - 1}. "
                                 f"Received: patch={self.patch!r}")
        if not isinstance(self.seconds_per_image, (int, float)) or not self.seconds_per_image > 0:
            raise UserError(f"occlusion seconds_per_image must be a positive number. "
                             f"Received: {self.seconds_per_image!r}")

    @property
    def passes_per_image(self) -> int | None:
        """Forward passes per image of a fixed grid; None when the grid is chosen per run."""
        return None if self.grid is None else passes(self.grid, self.patch)


def cell_edges(size: int, grid: int) -> np.ndarray:
    """Pixel boundaries of ``grid`` cells along a side of ``size`` pixels (grid + 1 ints).

    >>> cell_edges(28, 7).tolist()
    [0, 4, 8, 12, 16, 20, 24, 28]
    >>> cell_edges(10, 3).tolist()
    [0, 3, 7, 10]
    """
    return np.round(np.linspace(0, size, grid + 1)).astype(int)


def occluded_copies(image: np.ndarray, *, grid: int, patch: int) -> np.ndarray:
    """uint8 (M, H, W, C): ``image`` (H, W, C) with each patch in turn filled with its mean colour,
    patches in row-major order of their top-left cell.

    >>> img = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    >>> copies = occluded_copies(img, grid=2, patch=1)
    >>> copies.shape, copies[0, :2, :2, 0].tolist(), copies[0, 2:, 2:, 0].tolist()
    ((4, 4, 4, 1), [[8, 8], [8, 8]], [[10, 11], [14, 15]])
    """
    h, w = image.shape[:2]
    ys, xs = cell_edges(h, grid), cell_edges(w, grid)
    fill = np.round(image.reshape(-1, image.shape[-1]).mean(axis=0)).astype(image.dtype)
    n = grid - patch + 1
    out = np.repeat(image[None], n * n, axis=0)
    for a in range(n):
        for b in range(n):
            out[a * n + b, ys[a]:ys[a + patch], xs[b]:xs[b + patch]] = fill
    return out


def maps_from_drops(drops: np.ndarray, *, grid: int, patch: int) -> np.ndarray:
    """Per-cell maps (..., grid, grid) from the probability drops (..., M) of the M patches: each
    cell gets the mean drop of the patches that cover it.

    >>> maps_from_drops(np.array([1.0, 0.0, 0.0, 0.0]), grid=3, patch=2).tolist()
    [[1.0, 0.5, 0.0], [0.5, 0.25, 0.0], [0.0, 0.0, 0.0]]
    """
    n = grid - patch + 1
    drops = np.asarray(drops, np.float64)
    grid_drops = drops.reshape(*drops.shape[:-1], n, n)
    total = np.zeros((*drops.shape[:-1], grid, grid))
    count = np.zeros((grid, grid))
    for da in range(patch):
        for db in range(patch):
            total[..., da:da + n, db:db + n] += grid_drops
            count[da:da + n, db:db + n] += 1
    return total / count


def occlusion_maps(predict, pixels: np.ndarray, classes: np.ndarray, *, grid: int = 7, patch: int = 2,
                   base: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps of a batch: ``predict`` (uint8 (b, H, W, C) -> probabilities (b, K)), ``pixels`` uint8
    (n, H, W, C), ``classes`` int (n, J); ``base``: the unoccluded probabilities (n, K) when
    already known (then only the copies are run). Returns coarse maps float32 (n, J, grid, grid)
    (the positive part), empty flags (n, J) and the unoccluded probabilities (n, K)."""
    pixels = np.asarray(pixels)
    classes = np.asarray(classes, np.int64)
    n = len(pixels)
    m = (grid - patch + 1) ** 2
    drops = np.empty((n, classes.shape[1], m), np.float64)
    copies = [occluded_copies(img, grid=grid, patch=patch) for img in pixels]
    if base is None:
        out = _batched(predict, np.concatenate([pixels, *copies]))  # the images and their copies, one stream
        base, probs = out[:n], out[n:].reshape(n, m, -1)
    else:
        base = np.asarray(base, np.float64)
        probs = _batched(predict, np.concatenate(copies)).reshape(n, m, -1)
    for j in range(classes.shape[1]):
        k = classes[:, j]
        drops[:, j] = base[np.arange(n), k][:, None] - probs[np.arange(n), :, k]
    maps = maps_from_drops(drops, grid=grid, patch=patch)
    positive = np.maximum(maps, 0.0)
    scale = np.abs(maps).max(axis=(-2, -1))
    empty = ~(positive.max(axis=(-2, -1)) > 1e-6 * np.maximum(scale, 1e-12))
    positive[empty] = 0.0
    return positive.astype(np.float32), empty, base


def _batched(predict, x: np.ndarray) -> np.ndarray:
    """``predict`` over ``x`` in batches of PASSES, the last one padded to PASSES images."""
    out = []
    for start in range(0, len(x), PASSES):
        chunk = x[start:start + PASSES]
        pad = PASSES - len(chunk) if len(x) > PASSES else 0
        batch = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]) if pad else chunk
        out.append(np.asarray(predict(batch), np.float64)[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 0))


# --------------------------------------------------------------------------- the run side

_RUN_MODELS: dict[str, object] = {}
_LOCK = threading.Lock()


def check_occludable(run: Run) -> None:
    """Raise (one line) for a run without a model to run: synthetic, or no model file recorded."""
    from core.analysis.gradcam import check_has_model

    check_has_model(run, what="Occlusion maps")


def remember_model(run: Run, model) -> None:
    """Keep ``model`` (a ``core.run.analyze.RunModel`` of ``run``, e.g. loaded with the command line's
    unsafe-load opt-in) so that this process computes ``run``'s maps with it."""
    with _LOCK:
        _RUN_MODELS.pop(run.uid, None)
        _RUN_MODELS[run.uid] = model
        while len(_RUN_MODELS) > _MODELS_KEPT:
            _RUN_MODELS.pop(next(iter(_RUN_MODELS)))


def run_model(run: Run):
    """``core.run.analyze.load_run_model(run)``, loaded once per process (the two most recent runs kept)."""
    with _LOCK:
        found = _RUN_MODELS.get(run.uid)
    if found is None:
        from core.run.analyze import load_run_model

        found = load_run_model(run)
        with _LOCK:
            _RUN_MODELS[run.uid] = found
            while len(_RUN_MODELS) > _MODELS_KEPT:
                _RUN_MODELS.pop(next(iter(_RUN_MODELS)))
    return found


def timed_pass(predict, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """(probabilities (n, K), seconds per image): ``predict`` run twice on ``pixels``, the faster
    run timed (the first also warms the model up: tracing, memory arenas)."""
    best, out = np.inf, None
    for _ in range(2):
        t0 = time.perf_counter()
        out = np.asarray(predict(pixels), np.float64)
        best = min(best, time.perf_counter() - t0)
    return out, best / max(len(pixels), 1)


def _fixed_grid(config: OcclusionConfig, previous) -> tuple[int | None, int | None, dict]:
    """The grid to use before anything is timed: the stored maps' (a run's maps share one shape),
    else the config's, else (None, None): to be chosen."""
    if previous is not None and previous.summary.get("grid"):
        keep = ("grid", "patch", "grid_choice", "seconds_per_pass", "seconds_per_image_budget")
        return (int(previous.summary["grid"]), int(previous.summary["patch"]),
                {k: previous.summary[k] for k in keep if k in previous.summary})
    if config.grid is not None:
        return config.grid, config.patch, {"grid_choice": "fixed by the config"}
    return None, None, {}


@derived.register(KIND, version=KIND_VERSION, config=OcclusionConfig, row_inputs=True,
                  description="occlusion-sensitivity maps of the predicted and the true class, per requested "
                              "row (any model format)")
def _compute(run: Run, config: OcclusionConfig, progress: Progress, *, rows, previous) -> derived.DerivedResult:
    from core.analysis.gradcam import collect_maps

    check_occludable(run)
    grid, patch, choice = _fixed_grid(config, previous)
    model, seconds = None, 0.0

    def step() -> int:
        # until the grid is chosen, a few images whose unoccluded pass is timed; then images whose
        # copies fill about one batch of PASSES
        return PROBE_IMAGES if grid is None else PASSES // passes(grid, patch)

    def compute(pixels, classes):
        nonlocal model, grid, patch, choice, seconds
        if model is None:
            model = run_model(run)
        t0 = time.perf_counter()
        base = None
        if grid is None:
            base, per_pass = timed_pass(model.predict_batch, pixels)
            grid, patch = choose_grid(per_pass, config.seconds_per_image)
            over = passes(grid, patch) * per_pass > config.seconds_per_image
            choice = {"grid_choice": (f"chosen: a pass took {per_pass * 1e3:.1f} ms, so {passes(grid, patch)} "
                                      f"passes {'exceed' if over else 'fit'} {config.seconds_per_image:g} s per "
                                      "image" + (" (the coarsest grid)" if over else "")),
                      "seconds_per_pass": per_pass, "seconds_per_image_budget": config.seconds_per_image}
        out = occlusion_maps(model.predict_batch, pixels, classes, grid=grid, patch=patch, base=base)
        seconds += time.perf_counter() - t0
        return out

    got = collect_maps(run, rows, previous=previous, compute=compute, step=step, what="Occlusion",
                       progress=progress)
    if grid is None:  # no image could be read: nothing timed; the cheapest grid, so later rows stay bounded
        grid, patch = GRIDS[-1]
        choice = {"grid_choice": "the coarsest: no image could be read to time a pass"}
    arrays = got.arrays(previous, (grid, grid))
    summary = got.summary(previous, arrays)
    n_new = len(arrays["rows"])
    timed = int(summary.get("timed_images", 0)) + n_new
    total_s = float(summary.get("seconds", 0.0)) + seconds
    summary.update(choice)
    summary.update({
        "layer": f"occlusion {patch}x{patch} of {grid}x{grid} cells",
        "score": "drop in the class probability when a patch is hidden (mean colour)",
        "feature_size": [grid, grid], "grid": grid, "patch": patch, "passes_per_image": passes(grid, patch),
        "timed_images": timed, "seconds": total_s,
        "seconds_per_image": total_s / timed if timed else None,
        "last_seconds_per_image": seconds / n_new if n_new else None,
    })
    return derived.DerivedResult(arrays=arrays, summary=summary, skipped=got.skipped)
