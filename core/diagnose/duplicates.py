"""Duplicates and leakage: the same picture twice, within a split or across splits.

Conventions: N images (the run's rows). A *pair* is two rows (a, b) with
a < b in split order (train, val, test, then the others) and then row order,
so a train-test pair names its training image first. ``kind`` is ``exact``
(identical decoded pixels, whatever the files: a PNG copied or re-saved) or
``near`` (the same picture after the edits people and pipelines make: a flip
left-right or upside down, a crop of up to ~15% resized back, a rotation of a
few degrees, a resize, a shift, blur, noise, JPEG/PNG re-encoding,
brightness/contrast/gamma, grayscale conversion). Each near pair says what was
found, in words (``transform``: "flipped left-right, cropped to 90%, rotated 4°").

How near copies are found (nothing quadratic in N):

1. Every image's gray thumbnail (from the shared ``image_scan``: never
   enlarged, so a 28 px image keeps its pixels; colour is converted to gray,
   so a grayscale copy looks the same) is stretched to S x S and re-centred on
   its intensity centroid (measured against the border's median): a shifted
   copy lands in the same place. Blurred 12 x 12 summaries of its central part
   are its search descriptors, in *variants*: as it is, mirrored left-right,
   mirrored upside down, each seen whole or zoomed on its centre by 1.09 and
   1.18 (what a crop to 92% or 85% resized back shows), and seen through a
   window moved by a tenth of the side in each of 8 directions (a shift whose
   padding replicates an edge the object touches moves the centroid little,
   so the centroid alone does not undo it), and turned by -4° and 4°
   (19 variants); and, *unaligned* (stretched to S x S, not re-centred:
   a 3 px shift of a 28 px garment that fills the frame moves its centroid by
   a pixel or two, which leaves the rest between the aligned windows), seen
   through the same 8 moved windows and zoomed by 1.09 and 1.18 on the centre
   and on 8 points a twentieth of the side around it (a crop is a zoom on a
   point off the centre) (26 more; 45 in all). Mean removed and unit
   length, so brightness and contrast do not count; blurred, so blur, noise,
   re-encoding and a few degrees of rotation move them little.
2. Candidates: an inverted-file index (k-means cells on a PCA of the
   descriptors) holds each image as it is, in both frames; each variant of
   each image is a query compared with the images of its cell only, in its
   own frame, and each image keeps its
   ``neighbours`` best matches (with the variant that matched), and the best
   match of the same pair under another mirror, if any. Work is about
   45 N * sqrt(N) descriptor products, not N^2.
3. Verification registers each candidate pair on the thumbnails' pixels:
   the query mirrored as its variant says, then OpenCV's ECC (an affine motion,
   started from the variant's zoom, window, turn and the centroids' offset; a pair
   that also matched under another mirror is registered both ways when both start
   about as close, and the way ECC aligns with the higher correlation measured: a
   symmetric garment matches its own mirror image almost as well). Before ECC and
   after it, a cheap look (``start_residual``: both images smoothed, the best tone
   curve, the RMS left): a pair that starts beyond ``MAX_START`` is not registered,
   one still beyond the data set's own bound after ECC is refused without further measures
   (two thirds of the candidates on Fashion-MNIST; ``calibrate``: 1.5 x the most the
   data set's own edited copies leave, at most ``MAX_QUICK``). Two contents of different sizes are compared at the
   lower one's resolution; a pair the registration finds zoomed (a crop resized
   back) is registered with the finer image as ECC's template and judged in the
   coarser one's frame, the finer one resampled as the crop was. Then over the
   overlap (a band along both frames' edges left out, where a shift or crop
   pads) the tone curve (quadratic: brightness, contrast, gamma; it must rise)
   and the blur (either side smoothed by 0.8 px, or neither) that bring the
   two closest. A near miss (a residual within twice the allowed one, below) is
   registered once more with the moving image's edges left out of ECC
   (``NEAR_MISS``: a shift's replicated or black padding, counted, pulls ECC a
   percent off scale and a copy just over the bound), and that registration
   counts only where it leaves at most 0.8 of the allowed residual. A pair is a near copy when (``accepted``):

   * the registration is one an edit makes (``plausible``: a scale within
     0.7-1.45, stretch <= 1.25, rotation <= 15°, half the grid overlapping,
     tone moved by <= 80 gray levels);
   * the RMS residual is at most ``allowed``: what a quarter of a pixel of
     misregistration (the template, smoothed by 0.8 px, against itself moved
     that far: ECC aligns two pictures of the same size closer than that; half a
     pixel for two of different sizes, whose sampling grids differ), the two
     images' noise (Immerkaer's Laplacian, median; on a side the fit smoothed,
     measured after smoothing; each counted up to 12 gray levels) and resampling
     (below) leave, added in quadrature, at least 2.5 and at most 14 gray levels.
     Half a pixel for all pairs admitted Fashion-MNIST's look-alikes (another
     neckline, straps, another hem: 45 other pairs per 10,480 images of the
     development set, 2 with a quarter);
   * what is left is noise, not shape: the residual low-passed at 2 px (its
     *structure*) has an RMS of at most what resampling alone leaves under the
     found warp (the template sent through the warp and back, compared with
     itself: the image's own self-similarity under that edit) plus 1 gray
     level (at least 2, at most 4.5), and is nowhere more than 16. Two
     look-alikes (two plain T-shirts, two photos of one scene with an object
     moved) differ in shape somewhere; a copy differs by noise and resampling;
   * the fine detail agrees (``detail``, the correlation of the band-passed
     pixels) at least as well as in all but 2% of the data set's *own* edited
     copies: at run time a seeded sample of 256 of its thumbnails is edited
     (JPEG q60, noise, blur, rotation, crop, shift, gamma: ``SELF_EDITS``),
     each registered against its original, and the 2% quantile of their
     ``detail`` is the bound (``calibrate_detail``): low for smooth images, high
     for textured ones, where two look-alikes differ in texture;
   * the compared area holds something to compare (``telling``): the template,
     smoothed, varies there by more than the residual allowed (RMS about its
     mean). Where it does not, a blank picture would pass as a copy too: two
     nearly blank images (a light background, the subject touching an edge,
     inside the band left out) differ by less than any copy may, whatever
     they show. Such pairs are counted in a note, not called copies;

   or, whatever the residual (the compared area still telling), one image is the other re-saved as a JPEG file
   (``reencoded``: two contents of one size that the registration barely moves,
   one re-encoded at one of ``JPEG_QUALITIES`` gives the other's pixels within 2
   gray levels; the encoder is deterministic). A JPEG q60 copy of a 28 px image
   differs from its original by as much as a look-alike does (8-10 gray levels).

   These bounds were set on development sets (``benchmarks/dev_duplicates.py``:
   10,000 Fashion-MNIST *training* images with 40 copies of each of 11 kinds and
   40 look-alikes planted, seeds 1 and 11; and, with ``--colour``, 1,600 scenes
   from the benchmark's generator at the same seeds) and never on the
   benchmark's sets (Fashion-MNIST *test* images; colour scenes at seeds 0, 7, 23).
4. One source per copy (``one_source``): an image of a later split (a test image) that is a near copy of
   two or more images of earlier splits (training images) that are not copies of one another is a copy of
   one of them: the one it fits best (the lowest residual against its allowed one) is kept, and its pairs with
   the others, which it only resembles, are dropped and counted in a note. An edited copy (blurred,
   cropped, turned) has lost the detail that set its source apart from a look-alike of the source; its
   source still fits it better.

Memory for N images: the thumbnails (N x S x S bytes, memory-mapped from
the image scan: 1 GB for 1,000,000 images at S = 32), the centroids (N x 2
float64), the projected descriptors (N x 45 x 32 float16: 2.9 GB for
1,000,000, and the unaligned index, N x 32 float32), the cells' lists (N x 4 int64), the search's raw
matches before each pair's best is kept (N x 45 x 2 of them, 28 bytes each: 2.5 GB for 1,000,000, and
the tables that pick the best pair and mirror from them; all of Fashion-MNIST, 70,000 images, peaked
at 1.5 GB in all) and the candidates (at most
N x ``neighbours`` x 2 pairs and as many other mirrors, a few floats each); the verification goes
through the candidates 1,024 at a time (a task of one of the worker processes, one per core, each
holding its own NumPy, OpenCV and pandas: ~150 MB), and a cell's queries 2,048 at a time
against at most a few thousand members. Nothing holds N x N.

The penultimate features alone would not do: their cosine is as high for two
ordinary look-alikes of a class as for a copy. Where the run has embeddings,
each pair's ``embedding_cosine`` is reported beside the pixels' verdict, and
``min_embedding_cosine`` can require agreement.

>>> import numpy as np
>>> group = exact_groups(np.array([7, 3, 7, 9], np.uint64), np.ones(4, bool))
>>> group.tolist()
[0, -1, 0, -1]
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.diagnose.findings import Caption, Card, Column, Filter, Findings, plural, unique_rows
from core.diagnose.properties import ImageScanConfig, load_scan
from core.errors import UserError
from core.progress import Progress
from core.run import derived
from core.run.store import Run
from core.workers import POOL_FAILURES, cores, in_processes

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
FLIPS = ("", "h", "v")
ZOOMS = (1.0, 1.09, 1.18)
SHIFT_STEP = 0.1  # of the side: 1.5 descriptor cells, so shifts up to ~0.15 of the side fall within a cell of one
SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
ROTATIONS = (-4.0, 4.0)  # degrees: the query turned by these finds a copy turned by 2-6°
# windows (zoom, dy, dx) of the *unaligned* frame (the content stretched to S x S, not re-centred): the same 8
# moved windows (a shift whose padding or cut edge moves the centroid by part of the shift only is undone there by
# one of them), and each zoom on the centre and on points moved by ``CROP_STEP`` of the side in 8 directions (a
# crop is a zoom on a point off the centre: its offset is at most half the part cut, 4-8% of the side)
CROP_STEP = 0.05
UNALIGNED = tuple((1.0, dy * SHIFT_STEP, dx * SHIFT_STEP) for dy, dx in SHIFTS) + tuple(
    (zoom, dy * CROP_STEP, dx * CROP_STEP) for zoom in ZOOMS[1:] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
_ALIGNED_VARIANTS = len(FLIPS) * len(ZOOMS) + len(SHIFTS) + len(ROTATIONS)
_VARIANTS = _ALIGNED_VARIANTS + len(UNALIGNED)
_DESCRIPTOR = 12
_DIMS = 32
_SMALL = 3000
_FINE, _COARSE = 0.5, 1.5
_BLURS = (0.0, 0.8)
_STRUCTURE = 2.0  # sigma (px) of the low-pass that keeps what differs in shape and drops noise
SCALE_RANGE = (0.7, 1.45)  # what a crop (up to ~30%) or a zoom out may change the scale by
MAX_ANISOTROPY = 1.25  # a crop of another aspect resized back stretches one axis at most this much
MAX_ROTATION = 15.0  # degrees
MIN_OVERLAP = 0.5  # of the compared grid
MAX_TONE = 80.0  # gray levels: brightness, contrast and gamma edits move a level by less than a third of the range
MAX_RESIDUAL = 14.0  # RMS gray levels: a copy carries noise of sigma ~10 at most on each side (14 = 10 * sqrt 2)
MIN_ALLOWED = 2.5  # RMS gray levels any pair may differ by (rounding, re-encoding, a slight blur of a smooth picture)
MAX_NOISE = 12.0  # gray levels: the noise a copy may carry (sigma, each image); more hides what differs
MAX_RATIO = 1.0  # a near pair's residual / allowed residual (see ``register_pair``)
MAX_STRUCTURE = 4.5  # RMS gray levels of the residual low-passed at _STRUCTURE px: what differs in shape
MAX_PEAK = 16.0  # the largest local difference in shape (gray levels, same low-pass) a near pair may keep
SELF_MARGIN = 1.0  # gray levels a copy's shape difference may exceed what resampling alone leaves (at least 2)
REENCODED_MAX = 2.0  # RMS gray levels: one image is the other re-saved as JPEG (see ``reencoded``)
MISREGISTRATION = 0.25  # px of edge mismatch a copy may keep after ECC: two pictures of the same size
MISREGISTRATION_RESIZED = 0.5  # px: two of different sizes (one resized: the two sampling grids differ)
ZOOMED_IN = 1.04  # a registration that enlarges the template more than this is judged in the moving image's frame
MAX_START = 35.0  # RMS gray levels where the search's variant puts a pair: beyond, ECC is not tried
# the same measure after ECC: beyond, the pair is refused without the verification's measures. Copies accepted on the
# development sets came to at most 11.3 (a blur) and 5 in colour; 13 judges two thirds as many pairs as 16 did
MAX_QUICK = 13.0
QUICK_MARGIN = 1.5  # the bound a data set gets: this times the most its own edited copies leave (``calibrate``)
QUICK_FLOOR = 2 * MIN_ALLOWED  # ... and at least this (a data set of flat images, whose copies leave next to nothing)
MIRROR_MARGIN = 1.0  # gray levels: of two mirrors, ECC also tries the one whose start is within this of the better one
_MAX_GROUP_PAIRS = 6
ECC_ITERATIONS = 10  # copies converge in a few from the variant's start (development set: the same verdicts as 30)
ECC_SCREEN = 5  # iterations run first on every candidate: one they leave beyond the cheap-look bound gets no more
VERIFY_CHUNK = 1024  # candidate pairs verified together (one task of a worker, one cache of working images)
PROCESS_MIN = 4 * VERIFY_CHUNK  # see ``verify_pairs``
_VERIFY_COLUMNS = ["a", "b", "flip", "scale", "rotation", "anisotropy", "shift_y", "shift_x", "proper", "residual",
                   "allowed", "detail", "overlap", "blur", "tone", "structure", "peak", "half_pixel", "self_structure",
                   "self_peak", "noise", "resampling", "content", "reencoded", "start", "ecc", "quick"]
PAIR_COLUMNS = ["row_a", "row_b", "path_a", "path_b", "split_a", "split_b", "label_a", "label_b",
                "labels_agree", "kind", "similarity", "correlation", "residual", "embedding_cosine", "shift_y",
                "shift_x", "cross_split", "transform", "flip", "scale", "rotation", "allowed"]
CSV_COLUMNS = ["path_a", "path_b", "split_a", "split_b", "similarity", "kind", "labels_agree", "label_a",
               "label_b", "row_a", "row_b", "transform", "residual"]


# --------------------------------------------------------------------------- exact copies

def exact_groups(digest: np.ndarray, readable: np.ndarray) -> np.ndarray:
    """Group id (N,) int64 of rows with identical pixel digests; -1 for rows without a twin (or unreadable)."""
    digest = np.asarray(digest)
    readable = np.asarray(readable, dtype=bool)
    group = np.full(len(digest), -1, np.int64)
    rows = np.flatnonzero(readable)
    if len(rows) == 0:
        return group
    _, inverse, counts = np.unique(digest[rows], return_inverse=True, return_counts=True)
    shared = counts[inverse] > 1
    _, ids = np.unique(inverse[shared], return_inverse=True)
    group[rows[shared]] = ids
    return group


def _group_pairs(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of a small group; a star around its first member for a large one (bounded output)."""
    if len(members) <= _MAX_GROUP_PAIRS:
        a, b = np.triu_indices(len(members), 1)
        return members[a], members[b]
    return np.full(len(members) - 1, members[0]), members[1:]


# --------------------------------------------------------------------------- search descriptors

def _blur_matrix(length: int, sigma: float) -> np.ndarray:
    """(length, length) float32 G with G @ v = v blurred by a Gaussian (reflected borders, as OpenCV does)."""
    import cv2

    eye = np.eye(length, dtype=np.float32)
    return cv2.GaussianBlur(eye, (1, 2 * max(1, int(np.ceil(3 * sigma))) + 1), sigmaX=0, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT)


def _area_matrix(length: int, lo: float, hi: float, cells: int) -> np.ndarray:
    """(cells, length): cell j averages the interval [lo + j s, lo + (j + 1) s] (pixel u covers [u, u + 1])."""
    step = (hi - lo) / cells
    out = np.zeros((cells, length), np.float64)
    for j in range(cells):
        a0, a1 = lo + j * step, lo + (j + 1) * step
        for u in range(max(0, int(np.floor(a0))), min(length, int(np.ceil(a1)))):
            out[j, u] = max(0.0, min(a1, u + 1) - max(a0, u)) / step
    return out


def _operators(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Blur, then average the central part seen at each zoom into D cells: (len(ZOOMS), D, size + 2) float32;
    and the unzoomed window moved by -1, 0, +1 ``SHIFT_STEP`` (3, D, size + 2).

    Each zoom operator is symmetric about the centre (reversing its columns reverses
    its rows), so the descriptor of a mirrored image is the mirrored descriptor.
    """
    zooms = np.stack([_window(size, zoom, 0.0) for zoom in ZOOMS])
    moved = np.stack([_window(size, 1.0, k * SHIFT_STEP) for k in (-1, 0, 1)])
    return zooms, moved


def unaligned(variant: int) -> bool:
    """Whether a search variant is seen in the unaligned frame (see ``search_descriptors``)."""
    return variant >= _ALIGNED_VARIANTS


def _window(size: int, zoom: float, offset: float) -> np.ndarray:
    """(D, size + 2) float32: blur, then average the central part seen zoomed by ``zoom`` on the centre moved by
    ``offset`` (a fraction of the side) into D cells (one axis; see ``_operators``)."""
    p = size + 2
    blur = _blur_matrix(p, max(0.5, size / 32.0)).astype(np.float64)
    half = (size - 2 * max(1, round(3 * size / 32))) / 2.0
    centre = p / 2 + offset * size
    return (_area_matrix(p, centre - half / zoom, centre + half / zoom, _DESCRIPTOR) @ blur).astype(np.float32)


def variant_parts(variant: int) -> tuple[str, float, float, float, float]:
    """(flip, zoom, dy, dx, angle) of a search variant: the query mirrored, zoomed on its centre, its window moved
    by (dy, dx) (fractions of the side: the query's content there matches the other image's centre), or turned
    by ``angle`` degrees about its centre (OpenCV's sense). In the aligned frame unless ``unaligned``."""
    if unaligned(variant):
        zoom, dy, dx = UNALIGNED[variant - _ALIGNED_VARIANTS]
        return "", zoom, dy, dx, 0.0
    if variant < len(FLIPS) * len(ZOOMS):
        return FLIPS[variant // len(ZOOMS)], ZOOMS[variant % len(ZOOMS)], 0.0, 0.0, 0.0
    if variant < len(FLIPS) * len(ZOOMS) + len(SHIFTS):
        dy, dx = SHIFTS[variant - len(FLIPS) * len(ZOOMS)]
        return "", 1.0, dy * SHIFT_STEP, dx * SHIFT_STEP, 0.0
    return "", 1.0, 0.0, 0.0, ROTATIONS[variant - len(FLIPS) * len(ZOOMS) - len(SHIFTS)]


def search_descriptors(aligned: np.ndarray, plain: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, V, D * D) float32 unit vectors: every variant of each aligned image (see ``_aligned``), and (n, D * D)
    the unaligned image ``plain`` as it is (the index's entry in that frame; ``aligned``'s where None).

    Variant v = flip * len(ZOOMS) + zoom: the image as it is, mirrored left-right
    or upside down (``FLIPS``), each seen whole or zoomed on its centre
    (``ZOOMS``: what a crop to 92% or 85% resized back shows); then the image seen
    through a window moved by ``SHIFT_STEP`` in each of 8 directions (``SHIFTS``:
    a shift that the centroid does not undo, as when the shift's padding
    replicates an edge the object touches; see ``variant_parts``), turned by
    ``ROTATIONS``; last, the unaligned image seen through the same 8 moved windows
    (a 3 px shift of a 28 px garment that fills the frame moves its centroid by
    a pixel or two: re-centring leaves the rest, between the aligned windows). Mean
    removed, unit length: brightness and contrast do not count. Variant 0 is the image itself.
    """
    plain = aligned if plain is None else plain
    n, p, _ = aligned.shape
    ops, moved = _operators(p - 2)
    d = _DESCRIPTOR
    out = np.empty((n, _VARIANTS, d, d), np.float32)
    for k, op in enumerate(ops):
        desc = np.matmul(np.matmul(op, aligned), op.T)
        for f, flip in enumerate(FLIPS):
            out[:, f * len(ZOOMS) + k] = desc[:, :, ::-1] if flip == "h" else desc[:, ::-1, :] if flip == "v" else desc
    rows_by = {k: np.matmul(moved[k + 1], aligned) for k in (-1, 0, 1)}
    for j, (dy, dx) in enumerate(SHIFTS):
        out[:, len(FLIPS) * len(ZOOMS) + j] = np.matmul(rows_by[dy], moved[dx + 1].T)
    windows = {}
    for zoom, dy, dx in UNALIGNED:
        for offset in (dy, dx):
            if (zoom, offset) not in windows:
                windows[(zoom, offset)] = _window(p - 2, zoom, offset)
    rows_by = {(zoom, dy): np.matmul(windows[(zoom, dy)], plain) for zoom, dy, _ in UNALIGNED}
    for j, (zoom, dy, dx) in enumerate(UNALIGNED):
        out[:, _ALIGNED_VARIANTS + j] = np.matmul(rows_by[(zoom, dy)], windows[(zoom, dx)].T)
    index_plain = plain_descriptors(plain)
    import cv2

    centre = ((p - 1) / 2.0, (p - 1) / 2.0)
    for j, angle in enumerate(ROTATIONS):
        turn = cv2.getRotationMatrix2D(centre, angle, 1.0)
        turned = np.stack([cv2.warpAffine(img, turn, (p, p), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                           for img in aligned]) if n else aligned
        out[:, len(FLIPS) * len(ZOOMS) + len(SHIFTS) + j] = np.matmul(np.matmul(ops[0], turned), ops[0].T)
    out = out.reshape(n, _VARIANTS, d * d)
    out -= out.mean(axis=-1, keepdims=True)
    out /= np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-6)
    return out, index_plain


def plain_descriptors(images: np.ndarray) -> np.ndarray:
    """(n, D * D) float32 unit vectors: each image as it is (variant 0 of ``search_descriptors``)."""
    op = _window(images.shape[1] - 2, 1.0, 0.0)
    out = np.matmul(np.matmul(op, images), op.T).reshape(len(images), -1)
    out -= out.mean(axis=1, keepdims=True)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
    return out


def _size_groups(content_size: np.ndarray, rows: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    sizes = content_size[rows].astype(np.int64)
    keys, inverse = np.unique(sizes, axis=0, return_inverse=True)
    return {(int(h), int(w)): rows[inverse.ravel() == i] for i, (h, w) in enumerate(keys)}


def centroids(thumbnails: np.ndarray, content_size: np.ndarray, rows: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Each content's intensity centroid and background level.

    Returns ``centroid`` (len(rows), 2) float: (y, x) as a fraction of the
    content's height and width, and ``background`` (len(rows),): the median of
    the content's border. Weights are |pixel - background|, so the object on a
    plain background (or the scene against its edges) is what moves with a
    shift. A flat image gets its centre (0.5, 0.5).
    """
    centroid = np.full((len(rows), 2), 0.5)
    background = np.zeros(len(rows), np.float32)
    position = {r: i for i, r in enumerate(rows.tolist())}
    for (h, w), members in _size_groups(content_size, rows).items():
        if h == 0 or w == 0:
            continue
        idx = np.array([position[r] for r in members.tolist()])
        for start in range(0, len(members), 8192):
            part, at = members[start:start + 8192], idx[start:start + 8192]
            img = thumbnails[part, :h, :w].astype(np.float32)
            border = np.concatenate([img[:, 0, :], img[:, -1, :], img[:, :, 0], img[:, :, -1]], axis=1)
            bg = np.median(border, axis=1)
            weight = np.abs(img - bg[:, None, None])
            mass = weight.sum(axis=(1, 2))
            ys = (weight.sum(axis=2) * (np.arange(h) + 0.5)).sum(axis=1) / np.maximum(mass, 1e-6) / h
            xs = (weight.sum(axis=1) * (np.arange(w) + 0.5)).sum(axis=1) / np.maximum(mass, 1e-6) / w
            flat = mass < 1e-3 * h * w
            centroid[at, 0] = np.where(flat, 0.5, ys)
            centroid[at, 1] = np.where(flat, 0.5, xs)
            background[at] = bg
    return centroid, background


def _aligned(thumbnails: np.ndarray, content_size: np.ndarray, rows: np.ndarray, centroid: np.ndarray,
             background: np.ndarray, *, max_align: float) -> np.ndarray:
    """(len(rows), S + 2, S + 2) float32: each content stretched to S x S, its centroid moved to the centre
    (by at most ``max_align`` px), the rest filled with its background level."""
    import cv2

    size = thumbnails.shape[1]
    out = np.empty((len(rows), size + 2, size + 2), np.float32)
    centre = (size + 1) / 2.0
    # a source pixel u lands at s * (u + 0.5) - 0.5 (+1 for the padding); move the centroid to the centre
    shift = np.clip(centre - (size * centroid - 0.5 + 1), -max_align, max_align)
    for i, row in enumerate(rows.tolist()):
        h, w = int(content_size[row, 0]), int(content_size[row, 1])
        if h == 0 or w == 0:
            out[i] = 0.0
            continue
        sy, sx = size / h, size / w
        matrix = np.float32([[sx, 0, 0.5 * sx - 0.5 + 1 + shift[i, 1]], [0, sy, 0.5 * sy - 0.5 + 1 + shift[i, 0]]])
        out[i] = cv2.warpAffine(thumbnails[row, :h, :w].astype(np.float32), matrix, (size + 2, size + 2),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=float(background[i]))
    return out


# --------------------------------------------------------------------------- candidate pairs

def _nearest(points: np.ndarray, centres: np.ndarray, p: int) -> np.ndarray:
    """(len(points), min(p, len(centres))) indices of the nearest centres."""
    d = (centres * centres).sum(axis=1)[None, :] - 2.0 * points @ centres.T
    if p == 1:
        return d.argmin(axis=1)[:, None]
    if len(centres) <= p:
        return np.argsort(d, axis=1)
    return np.argpartition(d, p - 1, axis=1)[:, :p]


def _top(sims: np.ndarray, k: int) -> np.ndarray:
    """(len(sims), k) column indices of each row's k largest values (in no order; a few argmax passes for small
    k: several times faster than argpartition; ``sims`` is left as it was)."""
    if k > 4:
        return np.argpartition(-sims, k - 1, axis=1)[:, :k]
    work = sims.copy() if k > 1 else sims
    out = np.empty((len(sims), k), np.int64)
    at = np.arange(len(sims))
    for j in range(k):
        out[:, j] = work.argmax(axis=1)
        if j + 1 < k:
            work[at, out[:, j]] = -np.inf
    return out


def _cells(points: np.ndarray, n_cells: int, seed: int) -> np.ndarray:
    """k-means centres (scikit-learn, a sample of at most 40 points per cell, seeded)."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    sample = points[rng.choice(len(points), min(len(points), 40 * n_cells), replace=False)]
    km = KMeans(n_clusters=n_cells, init="random", n_init=1, max_iter=5, random_state=seed).fit(sample)
    return km.cluster_centers_.astype(np.float32)


def candidate_pairs(thumbnails: np.ndarray, content_size: np.ndarray, rows: np.ndarray, *, neighbours: int = 2,
                    min_score: float = 0.5, max_align: float = 6.0, seed: int = 0,
                    progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Pairs of ``rows`` whose search descriptors match best, each with the variant that matched.

    The index holds each image as it is, in both frames (aligned: variant 0; and
    unaligned); every variant of every image (mirrored, zoomed, moved, turned) is
    a query, compared with the index's entries in its own frame. A query is compared with the images of its
    k-means cell only (the index lists each image in its two nearest cells; one
    cell, an exact search, below ``_SMALL`` images), in a 32-dimensional PCA of
    the descriptors (float16: 45 x 32 x 2 bytes per image). An unordered pair keeps
    its best score and is kept when it is among the ``neighbours`` best of either
    image and scores at least ``min_score``.

    Returns ``query``, ``match`` (row ids: the query's variant ``variant`` looks
    like ``match`` as it is), ``score``, and ``centroid``, ``background``
    (len(rows), ...) of ``rows`` (see ``centroids``), which the verification reuses.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    centroid, background = centroids(thumbnails, content_size, rows)
    empty = {"query": np.zeros(0, np.int64), "match": np.zeros(0, np.int64), "variant": np.zeros(0, np.int64),
             "score": np.zeros(0, np.float32), "alt_query": np.zeros(0, np.int64), "alt_match": np.zeros(0, np.int64),
             "alt_variant": np.zeros(0, np.int64), "centroid": centroid, "background": background}
    if n < 2:
        return empty
    rng = np.random.default_rng(seed)
    say = progress or (lambda message, fraction: None)
    chunk = 4096
    describe_chunk = 1024  # a chunk's 45 variants take 45 x 144 x 4 bytes an image before the projection
    sample = np.sort(rng.choice(n, min(n, 10000), replace=False))
    sample_desc = plain_descriptors(_aligned(thumbnails, content_size, rows[sample], centroid[sample],
                                             background[sample], max_align=max_align))
    centred = sample_desc - sample_desc.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    basis = np.ascontiguousarray(vectors[:, ::-1][:, :min(_DIMS, n - 1)]).astype(np.float32)
    projected = np.empty((n, _VARIANTS, basis.shape[1]), np.float16)
    index_plain = np.empty((n, basis.shape[1]), np.float32)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)

    def describe(start: int) -> int:
        stop = min(start + describe_chunk, n)
        frames = [_aligned(thumbnails, content_size, rows[start:stop], centroid[start:stop], background[start:stop],
                           max_align=align) for align in (max_align, 0.0)]
        variants, plain = search_descriptors(*frames)
        projected[start:stop] = unit(variants @ basis)
        index_plain[start:stop] = unit(plain @ basis)
        return stop

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:  # OpenCV and BLAS release the GIL
        for stop in pool.map(describe, range(0, n, describe_chunk)):
            say(f"duplicates: descriptors {stop:,}/{n:,}", 0.3 * stop / n)
    index = {False: projected[:, 0].astype(np.float32), True: index_plain}  # by frame: unaligned?
    n_cells = 1 if n <= _SMALL else int(np.sqrt(2 * n))
    coarse = min(16, basis.shape[1])
    is_plain = np.array([unaligned(v) for v in range(_VARIANTS)])
    if n_cells > 1:
        centres = _cells(index[False][:, :coarse], n_cells, seed)
        index_cells = {frame: np.concatenate([_nearest(x[i:i + chunk, :coarse], centres, 2)
                                              for i in range(0, n, chunk)]) for frame, x in index.items()}
        flat = projected.reshape(n * _VARIANTS, -1)
        step = 16384  # query vectors at a time: a (step, cells) distance matrix, 90 MB at 1,000,000 images
        query_cells = np.concatenate([_nearest(flat[i:i + step, :coarse].astype(np.float32), centres, 1)[:, 0]
                                      for i in range(0, len(flat), step)])  # (n * V,) one cell per query variant
    else:
        index_cells = {frame: np.zeros((n, 1), np.int64) for frame in index}
        query_cells = np.zeros(n * _VARIANTS, np.int64)
    found_q, found_m, found_s, found_v = [], [], [], []
    flat_queries = projected.reshape(n * _VARIANTS, -1)
    for frame, cells in index_cells.items():
        member_of = np.repeat(np.arange(n), cells.shape[1])
        m_order = np.argsort(cells.ravel(), kind="stable")
        m_starts = np.searchsorted(cells.ravel()[m_order], np.arange(n_cells + 1))
        mine = np.flatnonzero(np.tile(is_plain == frame, n))  # flat ids (image * V + variant) of this frame's queries
        q_order = mine[np.argsort(query_cells[mine], kind="stable")]
        q_starts = np.searchsorted(query_cells[q_order], np.arange(n_cells + 1))
        for cell in range(n_cells):
            members = member_of[m_order[m_starts[cell]:m_starts[cell + 1]]]
            queries = q_order[q_starts[cell]:q_starts[cell + 1]]  # flat ids: image * V + variant
            if len(members) < 2 or len(queries) == 0:
                continue
            block = index[frame][members].T
            for q in range(0, len(queries), 2048):  # bounded memory in a large cell
                part = queries[q:q + 2048]
                sims = flat_queries[part].astype(np.float32) @ block
                own = part // _VARIANTS  # not itself (a cell's members are in ascending order)
                at = np.minimum(np.searchsorted(members, own), len(members) - 1)
                hit = np.flatnonzero(members[at] == own)
                sims[hit, at[hit]] = -2.0
                k = min(neighbours, len(members) - 1)
                top = _top(sims, k)
                best = np.take_along_axis(sims, top, axis=1)
                keep = best >= min_score
                found_q.append(np.repeat(part // _VARIANTS, k)[keep.ravel()])
                found_v.append(np.repeat(part % _VARIANTS, k)[keep.ravel()])
                found_m.append(members[top][keep])
                found_s.append(best[keep])
            if cell % 64 == 0:
                say(f"duplicates: searching cell {cell + 1:,}/{n_cells:,}",
                    0.3 + 0.3 * (cell + 1 + n_cells * frame) / (2 * n_cells))
    if not found_q:
        return empty
    q, m, v, s = (np.concatenate(x) for x in (found_q, found_m, found_v, found_s))
    keep = _top_pairs(q, m, s, n, neighbours)
    alt = _other_mirror(q, m, v, s, keep, n)
    alt_q, alt_m = np.where(alt >= 0, q[alt], q[keep]), np.where(alt >= 0, m[alt], m[keep])
    return {"query": rows[q[keep]], "match": rows[m[keep]], "variant": v[keep], "score": s[keep],
            "alt_query": rows[alt_q], "alt_match": rows[alt_m], "alt_variant": np.where(alt >= 0, v[alt], -1),
            "centroid": centroid, "background": background}


def _other_mirror(qa: np.ndarray, qb: np.ndarray, variant: np.ndarray, score: np.ndarray, keep: np.ndarray,
                  n: int) -> np.ndarray:
    """For each kept match, the index of the best match of the same pair under another mirror (-1: none)."""
    key = np.minimum(qa, qb).astype(np.int64) * n + np.maximum(qa, qb)
    family = np.where(variant < len(FLIPS) * len(ZOOMS), variant // len(ZOOMS), 0)
    table = pd.DataFrame({"key": key, "family": family, "score": score, "at": np.arange(len(key))})
    table = table[table["key"].isin(key[keep])]
    best = table.sort_values("score", ascending=False, kind="stable").drop_duplicates(["key", "family"])
    kept = pd.DataFrame({"key": key[keep], "own": family[keep], "slot": np.arange(len(keep))})
    other = kept.merge(best, on="key")
    other = other[other["family"] != other["own"]].drop_duplicates("slot")  # best first: sorted above
    out = np.full(len(keep), -1, np.int64)
    out[other["slot"].to_numpy()] = other["at"].to_numpy()
    return out


def _top_pairs(qa: np.ndarray, qb: np.ndarray, score: np.ndarray, n: int, neighbours: int) -> np.ndarray:
    """Indices of the matches to keep: the best of each unordered pair, if among the ``neighbours`` best
    of either of its images."""
    lo, hi = np.minimum(qa, qb).astype(np.int64), np.maximum(qa, qb).astype(np.int64)
    key = lo * n + hi
    order = np.lexsort((-score, key))
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    keep = np.zeros(len(first), bool)
    for source in (lo[first], hi[first]):  # rank each pair among the pairs of each of its two images
        o = np.lexsort((-score[first], source))
        ranked = source[o]
        rank = np.arange(len(o)) - np.searchsorted(ranked, ranked)
        keep[o[rank < neighbours]] = True
    return first[keep]


# --------------------------------------------------------------------------- verification

def _work_image(thumbnails: np.ndarray, content_size: np.ndarray, row: int, shape: tuple[int, int]) -> np.ndarray:
    """The thumbnail's content as float32, stretched to ``shape`` (height, width) unless it has that size."""
    import cv2

    h, w = int(content_size[row, 0]), int(content_size[row, 1])
    img = thumbnails[row, :h, :w].astype(np.float32)
    if (h, w) == tuple(shape):
        return img
    shrink = h > shape[0] and w > shape[1]
    return cv2.resize(img, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _noise(img: np.ndarray) -> float:
    """Standard deviation of the image's pixel noise: the median absolute response of Immerkaer's (1996)
    Laplacian difference, which cancels smooth content (6 sigma for white noise of sigma); the median,
    not the mean, so that edges and texture, where pixels are not noise, do not count."""
    import cv2

    kernel = np.float32([[1, -2, 1], [-2, 4, -2], [1, -2, 1]])
    response = np.abs(cv2.filter2D(img, -1, kernel)[1:-1, 1:-1])
    return float(1.4826 * np.median(response) / 6.0)


def _fit(t: np.ndarray, q: np.ndarray) -> tuple[float, np.ndarray]:
    """RMS residual of t against the best tone curve c0 + c1 q + c2 q^2 / 255 of q, and the coefficients
    (least squares by its 3 x 3 normal equations, the Gram matrix and right-hand side by two matrix products,
    solved by Cramer's rule in plain floats: numpy.linalg's call overhead was a third of a verification, six
    separate dot products another; the residual from |t|^2 - c . X t, so the residual image is never formed)."""
    t = t.astype(np.float64)  # sums of squares of 255s: float32 would round them
    x = np.empty((3, len(q)))
    x[0], x[1] = 1.0, q
    np.multiply(x[1], x[1] * (1 / 255.0), out=x[2])
    (a00, a01, a02), (_, a11, a12), (_, _, a22) = (x @ x.T).tolist()
    b0, b1, b2 = (x @ t).tolist()
    e = 1e-6
    a00, a11, a22 = a00 + e, a11 + e, a22 + e
    c00, c01, c02 = a11 * a22 - a12 * a12, a02 * a12 - a01 * a22, a01 * a12 - a02 * a11  # cofactors
    d = a00 * c00 + a01 * c01 + a02 * c02
    if abs(d) < 1e-9 * max(1.0, abs(a00 * a11 * a22)):  # flat: q takes one or two values
        coef = np.linalg.lstsq(x.T, t, rcond=None)[0]
    else:
        c11, c12, c22 = a00 * a22 - a02 * a02, a01 * a02 - a00 * a12, a00 * a11 - a01 * a01
        coef = np.array([(c00 * b0 + c01 * b1 + c02 * b2) / d, (c01 * b0 + c11 * b1 + c12 * b2) / d,
                         (c02 * b0 + c12 * b1 + c22 * b2) / d])
    sse = max(float(t @ t) - float(coef[0] * b0 + coef[1] * b1 + coef[2] * b2), 0.0)
    return float(np.sqrt(sse / max(len(q), 1.0))), coef


def _percentiles(x: np.ndarray, ps: tuple[float, ...]) -> list[float]:
    """``np.percentile(x, ps)`` (its default, linear interpolation between the closest ranks) by one
    ``np.partition``: numpy's percentile costs ten times more on the few hundred values of a pair."""
    n = x.size
    at = [p / 100.0 * (n - 1) for p in ps]
    below = [min(int(v), n - 1) for v in at]
    part = np.partition(x, sorted({k for i in below for k in (i, min(i + 1, n - 1))}))
    return [float(part[i]) + (v - i) * (float(part[min(i + 1, n - 1)]) - float(part[i])) for v, i in zip(at, below)]


def _detail(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (0, 0), _FINE) - cv2.GaussianBlur(img, (0, 0), _COARSE)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / max(np.sqrt((x * x).sum() * (y * y).sum()), 1e-9))


def start_residual(template: np.ndarray, moving: np.ndarray, init: np.ndarray, *, smoothed: bool = False) -> float:
    """RMS gray levels left where the search's variant puts the pair (``init``, before ECC), after the best tone
    curve, over the frame less a band along its edges, both images smoothed by 0.8 px (``smoothed``: they are
    already): a cheap look before the registration."""
    import cv2

    h, w = template.shape
    band = max(1, round(min(h, w) / 7))
    if not smoothed:
        template, moving = (cv2.GaussianBlur(img, (0, 0), _BLURS[1]) for img in (template, moving))
    moved = cv2.warpAffine(moving, init, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REPLICATE)
    return _fit(template[band:h - band, band:w - band].ravel(), moved[band:h - band, band:w - band].ravel())[0]


ECC_BAND = 0.1  # of the side: the moving image's edges a second registration leaves out (see ``ecc``)
NEAR_MISS = 2.0  # a pair whose residual is within this factor of the allowed one is registered again, edges out
RETRY_MARGIN = 0.8  # ... and that registration counts only where it leaves at most this fraction of the allowed


def ecc(template: np.ndarray, moving: np.ndarray, init: np.ndarray, *, masked: bool = False,
        iterations: int = ECC_ITERATIONS) -> tuple[float, np.ndarray]:
    """OpenCV's ECC (affine, from ``init``): (correlation reached, warp); (-1, init) where it does not converge.

    ``masked``: the moving image's pixels within ``ECC_BAND`` of its edges do not count (OpenCV's
    ``findTransformECCWithMask``), where a shift's or rotation's padding (replicated, reflected, constant) stands in
    one image and the picture in the other; the template's pixels that fall outside the moving image never count.
    """
    import cv2

    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, int(iterations), 1e-3)
    warp = init.astype(np.float32).copy()
    try:
        if masked:
            h, w = moving.shape
            band = max(1, round(ECC_BAND * min(h, w)))
            inner = np.zeros((h, w), np.uint8)
            inner[band:h - band, band:w - band] = 1
            cc, warp = cv2.findTransformECCWithMask(template, moving, np.ones(template.shape, np.uint8), inner, warp,
                                                    cv2.MOTION_AFFINE, criteria, 3)
            return float(cc), warp
        cc, warp = cv2.findTransformECC(template, moving, warp, cv2.MOTION_AFFINE, criteria, None, 3)
    except cv2.error:  # no convergence (a flat image, a far start): keep the start, the residual decides
        return -1.0, init.astype(np.float32).copy()
    return float(cc), warp


def unmeasured(warp: np.ndarray) -> dict:
    """``register_pair``'s measures of a pair that is refused before they are taken."""
    return {"warp": warp, "residual": np.inf, "allowed": 0.0, "detail": np.nan, "overlap": 0.0, "blur": 0.0,
            "tone": 0.0, "structure": np.inf, "peak": np.inf, "half_pixel": 0.0, "self_structure": 0.0,
            "self_peak": 0.0, "noise": 0.0, "resampling": 0.0, "content": 0.0}


def register_pair(template: np.ndarray, moving: np.ndarray, init: np.ndarray, *, refine: bool = True,
                  noise=None, misregistration: float = 0.5) -> dict:
    """Register ``moving`` onto ``template`` (both (h, w) float32) from the affine ``init`` (2, 3), which
    maps template coordinates to moving ones (OpenCV's ECC convention), and measure how well they agree.

    The registration is OpenCV's ECC (Evangelidis & Psarakis 2008: it maximises
    the correlation, so gain and offset do not count) with an affine motion, on
    lightly smoothed images. Then, over the overlap: the tone curve (quadratic:
    brightness, contrast, gamma) and the blur (either side smoothed by sigma 0.8 px or
    neither, whichever agrees best) that bring the two closest.

    Returns ``warp`` (2, 3), ``residual`` (RMS gray levels left), ``allowed``
    (what a copy may leave: the template's own difference from itself moved
    by half a pixel and both images' noise, added in quadrature), ``detail``
    (correlation of the fine detail), ``overlap`` (fraction of the template
    covered), ``blur`` (sigma, positive: the template was smoothed, negative: the
    moving image was) and ``tone`` (largest change of the tone curve, gray levels; inf where it falls).

    ``noise``: a callable giving both images' noise sigma (default: measured
    here). ``refine`` False: ``init`` is the registration already (see ``ecc``).
    """
    import cv2

    h, w = template.shape
    warp = ecc(template, moving, init)[1] if refine else init.astype(np.float32).copy()
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    moved = cv2.warpAffine(moving, warp, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(np.ones_like(moving), warp, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0.0) > 0.999
    # leave out a band along both frames' edges: what a shift or crop pushes out is replaced there
    # (by padding or replicated rows) in one image and not the other
    band = max(1, round(min(h, w) / 14))
    frame = np.zeros_like(inside)
    frame[band:h - band, band:w - band] = True
    inside = cv2.erode(inside.astype(np.uint8), np.ones((2 * band + 1, 2 * band + 1), np.uint8)).astype(bool)
    inside &= frame
    overlap = float(inside.mean())
    out = {**unmeasured(warp), "overlap": overlap}
    if inside.sum() < 0.25 * h * w:
        return out
    best = None
    for sigma in _BLURS:
        for side in ((1,) if sigma == 0 else (1, -1)):
            t = cv2.GaussianBlur(template, (0, 0), sigma) if sigma and side > 0 else template
            q = cv2.GaussianBlur(moved, (0, 0), sigma) if sigma and side < 0 else moved
            residual, coef = _fit(t[inside], q[inside])
            if best is None or residual < best[0] - 1e-6:
                best = (residual, coef, side * sigma, t, q)
    residual, coef, blur, t, q = best
    out.update(residual=residual, blur=blur)
    if residual > MAX_RESIDUAL:  # refused whatever the rest says (most candidates): spare the rest
        return out
    smooth = cv2.GaussianBlur(t, (0, 0), _BLURS[1])  # the picture's edges, not its pixel noise
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=1, scale=0.5)  # central differences, as np.gradient
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=1, scale=0.5)
    half_pixel = misregistration * float(np.sqrt(np.mean((gx[inside] ** 2 + gy[inside] ** 2) / 2.0)))
    content = float(np.std(smooth[inside]))  # how much the compared area holds to tell two pictures apart
    lo, hi = _percentiles(q[inside], (1, 99))  # the gray levels the pair has, not the whole range
    levels = np.linspace(lo, max(hi, lo + 1), 18, dtype=np.float32)
    curve = coef[0] + coef[1] * levels + coef[2] * levels * levels / 255.0
    tone = float(np.abs(curve - levels).max())
    if (np.diff(curve) <= 0).any():  # an edit keeps the order of gray levels: a falling curve is no edit
        tone = float("inf")
    nt, nm = noise() if noise is not None else (_noise(template), _noise(moving))
    if blur > 0:  # the noise that counts is what is left in the images compared: the smoothed side has less
        nt = min(nt, _noise(t))  # (texture smoothed away is no noise a copy may differ by)
    elif blur < 0:
        nm = min(nm, _noise(q))
    noise = float(np.hypot(min(nt, MAX_NOISE), min(nm, MAX_NOISE)))
    # the copy hypothesis simulated on the template itself: sent through this very warp and back
    # (resampled twice, as a copy's pixels at most are): what resampling alone leaves, measured on the
    # smoothed template (its edges: resampled noise is noise, counted above already)
    there = cv2.warpAffine(template, warp, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    back = cv2.warpAffine(there, warp, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    smooth_there = cv2.warpAffine(smooth, warp, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    smooth_back = cv2.warpAffine(smooth_there, warp, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    resampling = float(np.sqrt(np.mean((smooth[inside] - smooth_back[inside]) ** 2)))
    allowed = max(MIN_ALLOWED, float(np.sqrt(half_pixel ** 2 + noise ** 2 + resampling ** 2)))
    out.update(allowed=allowed, tone=tone,
               half_pixel=half_pixel, noise=noise, resampling=resampling, content=content)
    if tone > MAX_TONE:
        return out
    fitted = coef[0] + coef[1] * q + coef[2] * q * q / 255.0
    weight = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), _STRUCTURE)
    core_ = inside & (weight > 0.5)

    def shape_difference(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """RMS and largest absolute value of x - y low-passed at _STRUCTURE px, over the overlap."""
        diff = np.where(inside, x - y, 0.0).astype(np.float32)
        low = cv2.GaussianBlur(diff, (0, 0), _STRUCTURE) / np.maximum(weight, 1e-3)
        if not core_.any():
            return np.inf, np.inf
        return float(np.sqrt(np.mean(low[core_] ** 2))), float(np.abs(low[core_]).max())

    structure, peak = shape_difference(t, fitted)
    self_structure, self_peak = shape_difference(template, back)
    out.update(detail=_pearson(_detail(t)[inside], _detail(fitted)[inside]), structure=structure, peak=peak,
               self_structure=self_structure, self_peak=self_peak)
    return out


def _flip(img: np.ndarray, flip: str) -> np.ndarray:
    return img[:, ::-1] if flip == "h" else img[::-1, :] if flip == "v" else img


def describe_transform(g: np.ndarray, flip: str, shape: tuple[int, int]) -> dict:
    """What the affine map ``g`` (3, 3; a's pixel (x, y) to b's, on the size x size grid) does.

    ``flip`` is the mirror it contains ('', 'h' or 'v'); ``shape`` the grid's (height, width). Returns ``scale`` (b
    shows a enlarged that much: > 1 a crop of a), ``rotation`` (degrees), ``shift_y``,
    ``shift_x`` (where a's centre lands in b, minus the centre, grid pixels) and
    ``anisotropy`` (ratio of the linear part's singular values, 1 for a similarity).
    """
    (a, b, tx), (c, d, ty) = g[:2].tolist()
    cx, cy = (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0
    shift_x, shift_y = (a * cx + b * cy + tx) - cx, (c * cx + d * cy + ty) - cy  # where the centre lands
    if flip == "h":  # the mirror taken out: (x, y) -> (-x, y) first
        a, c = -a, -c
    elif flip == "v":
        b, d = -b, -d
    det = a * d - b * c
    # the singular values of [[a, b], [c, d]] in closed form: s1^2 + s2^2 = |M|_F^2, s1 s2 = |det|
    frob = a * a + b * b + c * c + d * d
    big = np.sqrt(max((frob + np.sqrt(max(frob * frob - 4.0 * det * det, 0.0))) / 2.0, 0.0))
    small = abs(det) / big if big > 0 else 0.0
    return {"scale": float(np.sqrt(abs(det))), "anisotropy": float(big / max(small, 1e-9)),
            "rotation": float(np.degrees(np.arctan2(c - b, a + d))),
            "shift_y": float(shift_y), "shift_x": float(shift_x),
            "proper": det > 0}


def verify_pairs(thumbnails: np.ndarray, content_size: np.ndarray, query: np.ndarray, match: np.ndarray,
                 variant: np.ndarray, centroid_of: np.ndarray, *, size: int | None = None,
                 alternative: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 max_quick: float = MAX_QUICK, workers: int | None = None,
                 progress: Progress | None = None) -> pd.DataFrame:
    """Register each candidate pair and measure its agreement (see ``register_pair``).

    ``query``, ``match``, ``variant`` as ``candidate_pairs`` returns them;
    ``centroid_of`` (N, 2) each row's centroid (fractions, see ``centroids``).
    Two contents of the same size are compared on their own grid; others are
    both stretched to ``size`` x ``size`` (default: the thumbnails' side). Returns one
    row per pair with ``a``, ``b`` (rows, a < b), ``flip``, ``scale``, ``rotation``,
    ``anisotropy``, ``shift_y``, ``shift_x``, ``proper`` (b against a, see
    ``describe_transform``), ``residual``, ``allowed``, ``detail``, ``overlap``,
    ``blur`` (positive: b is the blurrier), ``tone``.

    ``alternative`` (query, match, variant; variant -1 for none), one per pair: the
    same pair matched under another mirror (a symmetric garment matches itself
    mirrored almost as well). Both are registered (ECC) and the one whose
    correlation is higher is measured: one verdict per pair.

    ``max_quick``: a pair whose cheap look after ECC (``start_residual``) leaves more is refused without the
    measures (default ``MAX_QUICK``; ``calibrate`` gives a data set's own).

    ``workers``: processes that verify chunks of ``VERIFY_CHUNK`` pairs side by side (default: one per core
    this process may use, up to 4; 0 or 1: threads in this process). Processes only from ``PROCESS_MIN``
    pairs on: most of a verification is Python between small OpenCV calls, which threads run one at a time
    (the GIL); below, starting the workers costs more than it saves.
    """
    size = int(size or thumbnails.shape[1])
    if alternative is None:
        alternative = (query, match, np.full(len(query), -1, np.int64))
    alt_q, alt_m, alt_v = (np.asarray(x, np.int64) for x in alternative)
    say = progress or (lambda message, fraction: None)
    query, match, variant = (np.asarray(x, np.int64) for x in (query, match, variant))
    bounds = [(lo, min(lo + VERIFY_CHUNK, len(query))) for lo in range(0, len(query), VERIFY_CHUNK)]
    parts = [(query[lo:hi], match[lo:hi], variant[lo:hi], alt_q[lo:hi], alt_m[lo:hi], alt_v[lo:hi])
             for lo, hi in bounds]
    n_workers = cores() if workers is None else int(workers)
    out = []

    def report(done: int) -> None:
        say(f"duplicates: verified {bounds[done - 1][1]:,}/{len(query):,} candidate pairs", done / len(bounds))

    if n_workers > 1 and len(query) >= PROCESS_MIN:
        try:
            out = _verify_in_processes(thumbnails, content_size, centroid_of, size, max_quick, parts, n_workers,
                                       report)
        except POOL_FAILURES as exc:  # no worker processes here (a sandbox without semaphores, a killed worker)
            say(f"duplicates: worker processes failed ({type(exc).__name__}: {exc}); verifying in threads", 0.0)
            out = []
    if len(out) != len(parts):
        out = []
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:  # OpenCV releases the GIL
            for done, part in enumerate(pool.map(lambda rows: _verify_chunk(thumbnails, content_size, centroid_of,
                                                                             size, max_quick, *rows), parts), 1):
                out.append(part)
                report(done)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame({c: [] for c in _VERIFY_COLUMNS})


def _verify_in_processes(thumbnails: np.ndarray, content_size: np.ndarray, centroid_of: np.ndarray, size: int,
                         max_quick: float, parts: list[tuple], n_workers: int, report) -> list[pd.DataFrame]:
    """``_verify_chunk`` of each part in ``n_workers`` processes (``core.workers``; a memory-mapped ``thumbnails``
    reaches them by its file name). The chunks in order."""
    out = []
    tasks = ((thumbnails, content_size, centroid_of, size, max_quick, *rows) for rows in parts)
    for done, part in enumerate(in_processes(_verify_chunk, tasks, n_workers, single_thread=True), 1):
        out.append(part)
        report(done)
    return out


def _verify_chunk(thumbnails: np.ndarray, content_size: np.ndarray, centroid_of: np.ndarray, size: int,
                  max_quick: float, query: np.ndarray, match: np.ndarray, variant: np.ndarray, alt_q: np.ndarray,
                  alt_m: np.ndarray, alt_v: np.ndarray, *, single_thread: bool = False) -> pd.DataFrame:
    """``verify_pairs``' verdicts on one chunk of its pairs. ``single_thread``: OpenCV keeps to the calling thread
    (a worker process, one per core: OpenCV's own threads on 32-pixel images only cost)."""
    import cv2

    if single_thread:
        cv2.setNumThreads(1)

    def setup(q: int, m: int, v: int, cache: dict) -> tuple:
        """(template, moving, init, fmap, shape, flip, looks) of query q's variant v against match m; two
        contents of different sizes are both on the size x size grid, the sharper one at the other's
        resolution; ``looks``: both smoothed for ``start_residual`` (each image's once)."""
        import cv2

        same = (content_size[q] == content_size[m]).all()
        shape = (int(content_size[m, 0]), int(content_size[m, 1])) if same else (size, size)
        for row in (q, m):
            if (row, shape) not in cache:
                img = _work_image(thumbnails, content_size, row, shape)
                cache[(row, shape)] = (img, [], cv2.GaussianBlur(img, (0, 0), _BLURS[1]))  # [its noise, when needed]
        flip, zoom, dy, dx, angle = variant_parts(v)
        template, moving = cache[(m, shape)][0], np.ascontiguousarray(_flip(cache[(q, shape)][0], flip))
        looks = (cache[(m, shape)][2], np.ascontiguousarray(_flip(cache[(q, shape)][2], flip)))
        grid = np.array([shape[1], shape[0]], np.float64)  # (x, y)
        ct = np.asarray(centroid_of[m], np.float64)[::-1] * grid - 0.5  # (x, y) in grid pixels
        cq = np.asarray(centroid_of[q], np.float64)[::-1] * grid - 0.5
        if unaligned(v):  # the two frames as they are, zoomed on their centres: no centroids
            ct, cq = (grid - 1) / 2.0, (grid - 1) / 2.0
        fmap = np.eye(3)
        if flip:
            axis = 0 if flip == "h" else 1
            cq[axis] = grid[axis] - 1 - cq[axis]
            fmap[axis, axis], fmap[axis, 2] = -1.0, grid[axis] - 1
        cq += np.array([dx, dy]) * grid  # the query's window was moved there to match the template's centre
        # the query's variant (zoomed by z, turned by R) matches the template: query(p) ~ template(z R p), so ECC
        # starts from template x -> query R^-1 x / z about the centroids
        c, s_ = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        linear = np.array([[c, -s_], [s_, c]]) / zoom
        offset = cq - linear @ ct
        init = np.float32([[linear[0, 0], linear[0, 1], offset[0]], [linear[1, 0], linear[1, 1], offset[1]]])
        if not same:  # compare at the lower resolution: the sharper image sent down to the other's size and back
            pixels = content_size[[q, m]].astype(np.int64)
            low = pixels[0] if pixels[1].prod() > pixels[0].prod() else pixels[1]
            if (low < shape).any():
                def degrade(img: np.ndarray) -> np.ndarray:
                    down = cv2.resize(img, (int(low[1]), int(low[0])), interpolation=cv2.INTER_AREA)
                    return cv2.resize(down, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)

                if pixels[1].prod() > pixels[0].prod():
                    template = degrade(template)
                else:
                    moving = degrade(moving)
                looks = tuple(cv2.GaussianBlur(img, (0, 0), _BLURS[1]) for img in (template, moving))
        return template, moving, init, fmap, shape, flip, looks

    def judge(template: np.ndarray, moving: np.ndarray, warp: np.ndarray, q: int, m: int, shape: tuple,
              cache: dict) -> tuple[dict, int]:
        """``register_pair``'s measures of a registered pair, judged in the coarser image's frame; and the
        number of ECC runs this added."""
        import cv2

        def noise() -> tuple[float, float]:
            for row in (m, q):
                img, known = cache[(row, shape)][:2]
                if not known:
                    known.append(_noise(img))
            return cache[(m, shape)][1][0], cache[(q, shape)][1][0]

        # ECC aligns two pictures sampled on the same grid to well within a quarter of a pixel; two
        # sampled at different resolutions (one resized) keep up to half a pixel of edge mismatch
        slack = MISREGISTRATION if (content_size[q] == content_size[m]).all() else MISREGISTRATION_RESIZED
        more = 0
        if abs(float(np.linalg.det(warp[:, :2]))) < ZOOMED_IN ** -2:
            # the template is the enlarged one: registered again the other way round (ECC lands nearer
            # the edit with the finer image as its template), judged in the template's frame as before
            warp = cv2.invertAffineTransform(ecc(moving, template, cv2.invertAffineTransform(warp))[1])
            more = 1
        if abs(float(np.linalg.det(warp[:, :2]))) > ZOOMED_IN ** 2:
            # the moving image shows the template enlarged (a crop resized back): its pixels are the
            # coarser; judged in its frame, the template resampled as the crop was, not the crop twice
            got = register_pair(moving, template, cv2.invertAffineTransform(warp), refine=False,
                                noise=lambda: noise()[::-1], misregistration=slack)
            got["warp"], got["blur"] = cv2.invertAffineTransform(got["warp"]), -got["blur"]
        else:
            got = register_pair(template, moving, warp, refine=False, noise=noise, misregistration=slack)
        return got, more

    cache: dict[tuple, tuple] = {}
    records = []
    for q, m, v, q2, m2, v2 in zip(query.tolist(), match.tolist(), variant.tolist(), alt_q.tolist(), alt_m.tolist(),
                                   alt_v.tolist()):
        tries = [(q, m, v)] + ([(q2, m2, v2)] if v2 >= 0 else [])
        best = None
        # a cheap look first: where the search's variant puts each, after the best tone curve; ECC runs from the
        # starts that are near a copy (``MAX_START``) and, of two mirrors, not far behind the other
        setups = [setup(*tried, cache) for tried in tries]
        starts = [start_residual(*ready[6], ready[2], smoothed=True) for ready in setups]
        lowest = min(starts)
        aligned = 0
        ready = [(setup_, tried) for setup_, tried, begun in zip(setups, tries, starts)
                 if begun <= MAX_START and begun <= lowest + MIRROR_MARGIN]
        # a screen: ``ECC_SCREEN`` iterations from each start; a pair none of whose starts it brings within the
        # bound is refused there (most candidates: no copy); the others are registered in full from their starts,
        # as if there were no screen
        screened = []
        for (template, moving, init, fmap, shape, flip, looks), (q, m, _) in ready:
            warp = ecc(template, moving, init, iterations=ECC_SCREEN)[1]
            aligned += 1
            screened.append((start_residual(*looks, warp, smoothed=True), warp, template, moving, q, m, fmap, shape,
                             flip, looks))
        best = None
        if screened and min(look[0] for look in screened) <= max_quick:
            for (template, moving, init, fmap, shape, flip, looks), (q, m, _) in ready:
                cc, warp = ecc(template, moving, init)
                aligned += 1
                if best is None or cc > best[0]:  # (one verdict per pair: a look-alike gets no second try)
                    best = (cc, warp, template, moving, q, m, fmap, shape, flip, looks)
        if not ready:  # nowhere near a copy: refused unregistered
            template, moving, init, fmap, shape, flip, _ = setups[0]
            q, m = tries[0][:2]
            got, quick = unmeasured(init), np.inf
        elif best is None:  # the screen left it far from a copy: refused with its nearest registration
            quick, warp, template, moving, q, m, fmap, shape, flip, looks = min(screened, key=lambda look: look[0])
            got = unmeasured(warp)
        else:
            _, warp, template, moving, q, m, fmap, shape, flip, looks = best
            quick = start_residual(*looks, warp, smoothed=True)
            if quick > max_quick:  # still far from a copy after ECC: refused without the measures
                got = unmeasured(warp)
            else:
                got, more = judge(template, moving, warp, q, m, shape, cache)
                aligned += more
                if got["allowed"] < got["residual"] <= NEAR_MISS * got["allowed"]:
                    # a near miss: registered again without the moving image's edges (padding there pulls
                    # ECC off by a percent of scale); a look-alike given a second chance grazes the bound
                    again, more = judge(template, moving, ecc(template, moving, warp, masked=True)[1], q, m,
                                        shape, cache)
                    aligned += 1 + more
                    if again["residual"] <= RETRY_MARGIN * again["allowed"]:  # a clear fit, not a graze
                        got = again
        got["reencoded"], got["start"], got["ecc"] = np.inf, lowest, aligned
        got["quick"] = quick
        if (not flip and (content_size[q] == content_size[m]).all() and got["residual"] <= MAX_RESIDUAL
                and _moves_at_most(got["warp"], shape) <= IDENTITY):
            got["reencoded"] = reencoded(cache[(m, shape)][0], cache[(q, shape)][0])
        g = fmap @ np.vstack([got["warp"].astype(np.float64), [0, 0, 1]])  # template pixel -> query pixel
        a, b, blur = (m, q, got["blur"]) if m < q else (q, m, -got["blur"])
        if m > q:
            g = np.linalg.inv(g)
        records.append({"a": a, "b": b, "flip": flip, **describe_transform(g, flip, shape),
                        "residual": got["residual"], "allowed": got["allowed"], "detail": got["detail"],
                        "overlap": got["overlap"], "blur": blur, "tone": got["tone"],
                        "structure": got["structure"], "peak": got["peak"], "half_pixel": got["half_pixel"],
                        "self_structure": got["self_structure"], "self_peak": got["self_peak"],
                        "noise": got["noise"], "resampling": got["resampling"], "content": got["content"],
                        "reencoded": got["reencoded"], "start": got["start"], "ecc": got["ecc"],
                        "quick": got["quick"]})
    # typed columns now: a list of dicts costs ~1 KB a pair (300 MB for the 70,000-image demo's candidates)
    return pd.DataFrame(records, columns=_VERIFY_COLUMNS)



JPEG_QUALITIES = (50, 60, 70, 75, 80, 85, 90, 95)
IDENTITY = 1.0  # px: a registration that moves no corner farther may be the same grid (see ``reencoded``)


def _moves_at_most(warp: np.ndarray, shape: tuple) -> float:
    """How far (px) the affine ``warp`` moves the farthest corner of a (height, width) grid."""
    h, w = shape
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], np.float64)
    return float(np.abs(corners @ warp.astype(np.float64).T - corners[:, :2]).max())


def reencoded(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest RMS difference (gray levels) between one image and the other re-encoded as a JPEG file
    at one of ``JPEG_QUALITIES``, either way round: about 0 when one is the other re-saved as JPEG (the
    encoder is deterministic: the same pixels at the same quality give the same file), whatever the
    residual; for two different pictures, at least their own difference."""
    import cv2

    best = np.inf
    for src, dst in ((a, b), (b, a)):
        img = np.clip(np.rint(src), 0, 255).astype(np.uint8)
        for quality in JPEG_QUALITIES:
            ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                back = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE).astype(np.float32)
                best = min(best, float(np.sqrt(np.mean((back - dst) ** 2))))
    return best


def plausible(checked: pd.DataFrame) -> np.ndarray:
    """The registrations an edit could have made: no mirror beyond the one searched, a scale within
    ``SCALE_RANGE`` (a crop to 70% or a zoom out to 70%), little stretch, a small rotation, most of the
    picture overlapping, a rising tone curve that moves no gray level by more than ``MAX_TONE``."""
    return (checked["proper"].to_numpy(bool)
            & checked["scale"].between(*SCALE_RANGE).to_numpy()
            & (checked["anisotropy"].to_numpy() <= MAX_ANISOTROPY)
            & (np.abs(checked["rotation"].to_numpy()) <= MAX_ROTATION)
            & (checked["overlap"].to_numpy() >= MIN_OVERLAP)
            & (checked["tone"].to_numpy() <= MAX_TONE))


def accepted(checked: pd.DataFrame, *, max_ratio: float = MAX_RATIO, min_detail: float | None = None) -> np.ndarray:
    """Which verified pairs (``verify_pairs``) are near copies: a plausible registration, a residual of at
    most ``max_ratio`` x ``allowed`` and ``MAX_RESIDUAL``, and a shape difference (``structure``) no larger
    than resampling alone leaves plus ``SELF_MARGIN`` (at least 2 x ``SELF_MARGIN``, at most
    ``MAX_STRUCTURE``), nowhere above ``MAX_PEAK`` (see the module docstring); with ``min_detail``
    (``calibrate_detail``), fine detail that agrees at least that well. Or a plausible registration of
    two images one of which is the other re-saved as JPEG (``reencoded`` <= ``REENCODED_MAX``). Either way,
    a compared area that tells pictures apart (``telling``)."""
    residual, structure = checked["residual"].to_numpy(), checked["structure"].to_numpy()
    ok = (plausible(checked) & telling(checked) & (residual <= max_ratio * checked["allowed"].to_numpy())
          & (residual <= MAX_RESIDUAL)
          & (structure <= MAX_STRUCTURE) & (checked["peak"].to_numpy() <= MAX_PEAK)
          & (structure <= np.maximum(2 * SELF_MARGIN, checked["self_structure"].to_numpy() + SELF_MARGIN)))
    if min_detail is not None:
        ok &= checked["detail"].to_numpy() >= min_detail
    return ok | (plausible(checked) & telling(checked) & (checked["reencoded"].to_numpy() <= REENCODED_MAX))


def telling(checked: pd.DataFrame) -> np.ndarray:
    """Which verified pairs compare enough to tell two pictures apart: the template's variation over the
    compared area (``content``, RMS gray levels, smoothed) exceeds the residual a copy may leave (``allowed``).
    Where it does not, a blank picture of one gray would pass as a copy too: two nearly blank images (the
    subject at the edges, which the comparison leaves out, or nowhere) would be called copies of each other
    whatever they show."""
    return checked["content"].to_numpy(np.float64) > checked["allowed"].to_numpy(np.float64)


SELF_EDITS = ("jpeg q60", "noise 8", "blur 0.8", "rotate 4", "crop 88%", "shift 10%", "gamma 0.8")
DETAIL_QUANTILE = 0.02  # the fraction of a data set's own edited copies the detail bound may refuse


def _self_edit(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(edited uint8 image, init (2, 3): where the edit sends the template's pixels, as ECC starts from it)."""
    import cv2

    h, w = img.shape
    eye = np.float32([[1, 0, 0], [0, 1, 0]])
    if kind == "jpeg q60":
        return cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_GRAYSCALE), eye
    if kind == "noise 8":
        return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8), eye
    if kind == "blur 0.8":
        return cv2.GaussianBlur(img, (0, 0), 0.8 * max(h, w) / 28), eye
    if kind == "gamma 0.8":
        return (255 * (img / 255.0) ** 0.8).astype(np.uint8), eye
    if kind == "rotate 4":
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.choice([-4.0, 4.0])), 1.0)
    elif kind == "crop 88%":
        ch, cw = max(2, round(0.88 * h)), max(2, round(0.88 * w))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        m = np.float64([[w / cw, 0, -x * w / cw], [0, h / ch, -y * h / ch]])
    else:  # shift 10%
        dy, dx = (round(v * 0.1) * float(rng.choice([-1, 1])) for v in (h, w))
        m = np.float64([[1, 0, dx], [0, 1, dy]])
    edited = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return edited, m.astype(np.float32)  # ECC's warp maps the template's pixels to the moving image's: the edit


def calibrate(thumbnails: np.ndarray, content_size: np.ndarray, rows: np.ndarray, *, sample: int = 256,
              seed: int = 0) -> tuple[float | None, float, int]:
    """What this data set's own copies show: (the lowest agreement of fine detail a copy shows, the bound on the
    cheap look after ECC, the number of copies measured).

    A seeded sample of ``rows``' own thumbnails is edited the ways in
    ``SELF_EDITS`` (one edit each, in turn), each copy registered against its
    original from where its edit sends it (as the search's variants start the
    verification). The ``DETAIL_QUANTILE`` quantile of their ``detail`` (see
    ``register_pair``) is the detail bound: a data set of smooth images (little
    fine detail: its copies agree loosely) gets a low bound, one with texture a
    high one, where two look-alikes of a textured class differ in it. The most
    their cheap look (``start_residual`` under the found warp) leaves, times
    ``QUICK_MARGIN``, at least ``QUICK_FLOOR`` and at most ``MAX_QUICK``, is the
    bound beyond which a candidate is refused unmeasured: the smooth colour scenes
    of the development sets gave 7.3 (their copies came to at most 5; their
    look-alikes' median was 8.7), Fashion-MNIST 13 (18 capped: a blurred garment
    leaves 12). (None, ``MAX_QUICK``, n) for fewer than 20 measurable copies.
    """
    rows = np.asarray(rows, np.int64)
    rng = np.random.default_rng(seed)
    picked = rng.choice(rows, min(sample, len(rows)), replace=False) if len(rows) else rows
    details, quick = [], []
    for i, row in enumerate(picked.tolist()):
        h, w = int(content_size[row, 0]), int(content_size[row, 1])
        if h < 8 or w < 8:
            continue
        img = np.ascontiguousarray(thumbnails[row, :h, :w])
        edited, init = _self_edit(img, SELF_EDITS[i % len(SELF_EDITS)], rng)
        original, copy = img.astype(np.float32), edited.astype(np.float32)
        got = register_pair(original, copy, init)
        if np.isfinite(got["detail"]):
            details.append(got["detail"])
            quick.append(start_residual(original, copy, got["warp"]))
    if len(details) < 20:
        return None, MAX_QUICK, len(details)
    bound = float(min(MAX_QUICK, max(QUICK_FLOOR, QUICK_MARGIN * max(quick))))
    return float(np.quantile(details, DETAIL_QUANTILE)), bound, len(details)


def calibrate_detail(thumbnails: np.ndarray, content_size: np.ndarray, rows: np.ndarray, *, sample: int = 256,
                     seed: int = 0) -> tuple[float | None, int]:
    """``calibrate``'s detail bound and the number of copies measured."""
    min_detail, _, n = calibrate(thumbnails, content_size, rows, sample=sample, seed=seed)
    return min_detail, n


def transform_texts(pairs: pd.DataFrame, original_size: np.ndarray | None, grayscale: np.ndarray | None) -> list[str]:
    """``transform_text`` of each pair (columns ``a``, ``b``, ``flip``, ``scale``, ``rotation``, ``shift_y``,
    ``shift_x``, ``blur``, ``tone``: b against a)."""
    sizes = None if original_size is None else np.asarray(original_size)
    gray = None if grayscale is None else np.asarray(grayscale, bool)
    texts = []
    for rec in pairs.to_dict("records"):
        a, b = int(rec["a"]), int(rec["b"])
        resized = sizes is not None and not np.array_equal(sizes[a], sizes[b])
        change = "" if gray is None or gray[a] == gray[b] else ("converted to grayscale" if gray[b] else "colourised")
        texts.append(transform_text(rec, resized=resized, gray_change=change))
    return texts


def transform_text(rec: dict, *, resized: bool = False, gray_change: str = "") -> str:
    """'flipped left-right, cropped to 90%, rotated 4°' from a verified pair's measurements (b against a)."""
    parts = []
    if rec.get("flip") == "h":
        parts.append("flipped left-right")
    elif rec.get("flip") == "v":
        parts.append("flipped upside down")
    scale = float(rec.get("scale", 1.0))
    if scale > 1.04:
        parts.append(f"cropped to {100 / scale:.0f}%")
    elif scale < 0.96:
        parts.append(f"zoomed out to {100 * scale:.0f}%")
    rotation = float(rec.get("rotation", 0.0))
    if abs(rotation) >= 1.0:
        parts.append(f"rotated {abs(rotation):.0f}°")
    dy, dx = float(rec.get("shift_y", 0.0)), float(rec.get("shift_x", 0.0))
    if abs(scale - 1) <= 0.04 and max(abs(dy), abs(dx)) >= 1.5:
        parts.append(f"shifted {round(dy):+d}, {round(dx):+d} px")
    if resized:
        parts.append("resized")
    blur = float(rec.get("blur", 0.0))
    if blur > 0:
        parts.append("blurred")
    elif blur < 0:
        parts.append("sharper")
    if float(rec.get("tone", 0.0)) >= 10.0:
        parts.append("brightness/contrast/gamma changed")
    if gray_change:
        parts.append(gray_change)
    return ", ".join(parts) or "re-encoded or noisy (same geometry)"


# --------------------------------------------------------------------------- all pairs of a data set

def find_duplicates(thumbnails: np.ndarray, content_size: np.ndarray, digest: np.ndarray, readable: np.ndarray,
                    *, original_size: np.ndarray | None = None, grayscale: np.ndarray | None = None,
                    max_ratio: float = MAX_RATIO, neighbours: int = 2, seed: int = 0,
                    progress: Progress | None = None) -> pd.DataFrame:
    """Exact and near duplicate pairs among the readable rows (see the module docstring).

    Parameters
    ----------
    thumbnails : uint8 (N, S, S); content_size : (N, 2); digest : uint64 (N,); readable : bool (N,)
        as the shared image scan keeps them (``core.diagnose.properties.ImageScan``).
    original_size : (N, 2) height and width of each picture; grayscale : bool (N,) whether it has
        no colour (both only describe the transform: "resized", "converted to grayscale").
    max_ratio : a near pair's residual may be at most this times its ``allowed`` residual
        (1: what half a pixel of misregistration and the two images' noise leave, see ``register_pair``).
    neighbours : candidates kept per image.

    Returns
    -------
    DataFrame ``a``, ``b`` (rows, a < b), ``kind``, ``similarity`` (1 - residual / allowed, clipped to
    [0, 1]; 1 for exact), ``correlation`` (of the fine detail), ``residual``, ``allowed``, ``flip``,
    ``scale``, ``rotation``, ``shift_y``, ``shift_x`` and ``transform`` (b against a, in words).
    Identical images are searched once: a near pair between two of them is listed for every member
    of their groups when the groups are small.
    """
    for name, value, low, high in (("max_ratio", max_ratio, 0, 10), ("neighbours", neighbours, 1, 100)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and low <= value <= high):
            raise UserError(f"{name} must be a number in [{low}, {high}]. Received: {name}={value!r}")
    say = progress or (lambda message, fraction: None)
    group = exact_groups(digest, readable)
    members = {int(g): np.flatnonzero(group == g) for g in np.unique(group[group >= 0])}
    cols = ["a", "b", "kind", "similarity", "correlation", "residual", "allowed", "flip", "scale", "rotation",
            "shift_y", "shift_x", "blur", "tone", "transform"]
    parts = []
    for rows in members.values():
        ea, eb = _group_pairs(rows)
        parts.append(pd.DataFrame({"a": ea, "b": eb, "kind": "exact", "similarity": 1.0, "correlation": 1.0,
                                   "residual": 0.0, "allowed": 0.0, "flip": "", "scale": 1.0, "rotation": 0.0,
                                   "shift_y": 0.0, "shift_x": 0.0, "blur": 0.0, "tone": 0.0,
                                   "transform": "identical pixels"}))
    # one representative per group of identical images (its first row) goes through the near-copy search
    readable_rows = np.flatnonzero(readable)
    reps = np.sort(np.concatenate([readable_rows[group[readable_rows] < 0],
                                   np.array([rows[0] for rows in members.values()], np.int64)]))
    found = candidate_pairs(thumbnails, content_size, reps, neighbours=neighbours, seed=seed,
                            progress=lambda m, f: say(m, 0.5 * f))
    centroid_of = np.full((len(digest), 2), 0.5)
    centroid_of[reps] = found["centroid"]
    min_detail, max_quick, n_edited = calibrate(thumbnails, content_size, reps, seed=seed)
    say(f"duplicates: verifying {len(found['query']):,} candidate pairs", 0.5)
    checked = verify_pairs(thumbnails, content_size, found["query"], found["match"], found["variant"], centroid_of,
                           alternative=(found["alt_query"], found["alt_match"], found["alt_variant"]),
                           max_quick=max_quick, progress=lambda m, f: say(m, 0.5 + 0.4 * f))
    ok = accepted(checked, max_ratio=max_ratio, min_detail=min_detail)
    flat = int((accepted(checked.assign(content=np.inf), max_ratio=max_ratio, min_detail=min_detail) & ~ok).sum())
    near = checked[ok].reset_index(drop=True)
    near["kind"] = "near"
    near["similarity"] = np.clip(1 - near["residual"] / np.maximum(near["allowed"], 1e-6), 0, 1)
    near["correlation"] = near["detail"]
    near["transform"] = transform_texts(near, original_size, grayscale)
    parts.append(near)
    twins = []  # the verdict holds for the identical twins of each side
    for rec in near[near["a"].map(lambda r: group[r] >= 0) | near["b"].map(lambda r: group[r] >= 0)].to_dict("records"):
        side_a = members.get(int(group[rec["a"]]), np.array([rec["a"]]))
        side_b = members.get(int(group[rec["b"]]), np.array([rec["b"]]))
        if len(side_a) * len(side_b) <= _MAX_GROUP_PAIRS ** 2:
            twins += [{**rec, "a": x, "b": y} for x in side_a for y in side_b if (x, y) != (rec["a"], rec["b"])]
    parts.append(pd.DataFrame(twins))
    pairs = pd.concat([p[cols] for p in parts if len(p)] or [pd.DataFrame({c: [] for c in cols})],
                      ignore_index=True)
    a, b = pairs["a"].to_numpy(np.int64), pairs["b"].to_numpy(np.int64)
    pairs["a"], pairs["b"] = np.minimum(a, b), np.maximum(a, b)  # twins may come in either order
    pairs = pairs.sort_values(["a", "b", "similarity"], ascending=[True, True, False], kind="stable")
    pairs = pairs.drop_duplicates(["a", "b"]).reset_index(drop=True)
    pairs.attrs["min_detail"], pairs.attrs["n_edited"] = min_detail, n_edited  # the calibration, for a note
    pairs.attrs["max_quick"] = max_quick
    pairs.attrs["n_flat"] = flat  # pairs that would pass but compare too little to tell (``telling``)
    say("duplicates: verified", 0.9)
    return pairs


# --------------------------------------------------------------------------- the derived kind

COLOUR_SIDE = 64  # px: the colour check looks at pictures shrunk to this (long side)
COLOUR_MIN_STD = 3.0  # gray levels: a channel (or the luminance) that varies less says nothing of its colours (noise
# below it would give any correlation; above, a weak channel still needs |correlation| >= COLOUR_FLIP to count)
COLOUR_FLIP = 0.5  # a channel follows the luminance (correlation >= this) in one picture, goes against it in the other


def channel_signs(img: np.ndarray) -> np.ndarray | None:
    """For an RGB uint8 picture, each channel's correlation with its luminance (3,), NaN where the channel
    (or the luminance) varies less than ``COLOUR_MIN_STD``; None for a gray picture.

    Brightness, contrast and gamma edits, applied to all channels alike, keep each correlation's sign; a
    picture recoloured (a green square on maroon redrawn teal on dark red) turns one round.

    >>> img = np.zeros((8, 8, 3), np.uint8); img[:] = (128, 0, 0); img[2:6, 2:6] = (150, 220, 150)
    >>> np.round(channel_signs(img), 2).tolist()
    [1.0, 1.0, 1.0]
    >>> img[:] = (139, 0, 0); img[2:6, 2:6] = (0, 128, 128)
    >>> np.round(channel_signs(img), 2).tolist()
    [-1.0, 1.0, 1.0]
    """
    from core.data.images import thumbnail

    if img is None or img.ndim != 3 or img.shape[2] < 3:
        return None
    if max(img.shape[:2]) > COLOUR_SIDE:
        img = thumbnail(img, size=COLOUR_SIDE)
    x = img[:, :, :3].reshape(-1, 3).astype(np.float64)
    if np.abs(np.diff(x, axis=1)).max() == 0:
        return None  # stored as colour, gray in fact
    y = x @ np.array([0.299, 0.587, 0.114])
    out = np.full(3, np.nan)
    if y.std() < COLOUR_MIN_STD:
        return out
    for c in range(3):
        if x[:, c].std() >= COLOUR_MIN_STD:
            out[c] = np.corrcoef(x[:, c], y)[0, 1]
    return out


def recoloured(signs_a: np.ndarray | None, signs_b: np.ndarray | None) -> bool:
    """Whether two pictures' colours cannot be one picture's under a brightness, contrast or gamma edit:
    a channel follows the luminance in one (correlation >= ``COLOUR_FLIP``) and goes against it in the
    other (<= -``COLOUR_FLIP``). False where either is gray (a grayscale copy keeps no colour to compare)."""
    if signs_a is None or signs_b is None:
        return False
    with np.errstate(invalid="ignore"):
        return bool(np.any((signs_a >= COLOUR_FLIP) & (signs_b <= -COLOUR_FLIP))
                    or np.any((signs_a <= -COLOUR_FLIP) & (signs_b >= COLOUR_FLIP)))


def recoloured_pairs(run: Run, a: np.ndarray, b: np.ndarray, near: np.ndarray) -> np.ndarray:
    """Which near pairs (a[i], b[i]) are recoloured look-alikes (``recoloured``), from the run's colour pixels;
    False where a picture cannot be read. Each image is decoded once."""
    rows = np.unique(np.concatenate([a[near], b[near]])) if near.any() else np.zeros(0, np.int64)
    signs = {}
    for row in rows.tolist():
        try:
            signs[row] = channel_signs(run.image(row))
        except (PermissionError, ValueError, OSError):
            signs[row] = None
    return np.array([bool(n) and recoloured(signs.get(int(i)), signs.get(int(j))) for i, j, n in zip(a, b, near)],
                    dtype=bool)


def one_source(a: np.ndarray, b: np.ndarray, near: np.ndarray, ratio: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Which pairs to keep (bool, one per pair ``a``, ``b``): of an image's ``near`` pairs with images of an
    earlier split (lower ``rank``), the best fit (lowest ``ratio``: residual / allowed) and those whose other
    image is paired (exact or near) with the best fit's; exact pairs always. A copy has one source: two
    earlier images that are not copies of each other cannot both be it (see the module docstring)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    keep = np.ones(len(a), bool)
    later, earlier = np.where(rank[a] > rank[b], a, b), np.where(rank[a] > rank[b], b, a)
    cross = np.flatnonzero(np.asarray(near, bool) & (rank[a] != rank[b]))
    if len(cross) < 2:
        return keep
    linked = set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))
    order = cross[np.lexsort((np.asarray(ratio)[cross], later[cross]))]  # by image, best fit first
    firsts = np.flatnonzero(np.r_[True, later[order][1:] != later[order][:-1]])
    for lo, hi in zip(firsts.tolist(), np.r_[firsts[1:], len(order)].tolist()):
        best = int(earlier[order[lo]])
        for i in order[lo + 1:hi].tolist():
            other = int(earlier[i])
            keep[i] = (min(best, other), max(best, other)) in linked
    return keep


def _split_rank(splits: np.ndarray) -> np.ndarray:
    names = sorted(set(splits.tolist()), key=lambda s: (SPLIT_ORDER.get(s, 3), s))
    rank = {s: i for i, s in enumerate(names)}
    return np.array([rank[s] for s in splits.tolist()], np.int64)


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the pairs: (N,) int64 group id, -1 for rows in no pair."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    group = np.full(n, -1, np.int64)
    if len(a) == 0:
        return group
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    linked = np.zeros(n, bool)
    linked[a], linked[b] = True, True
    _, ids = np.unique(label[linked], return_inverse=True)
    group[linked] = ids
    return group


def _embedding_cosine(embeddings: np.ndarray | None, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if embeddings is None or len(a) == 0:
        return np.full(len(a), np.nan, np.float32)
    out = np.empty(len(a), np.float32)
    for start in range(0, len(a), 65536):
        ea = np.asarray(embeddings[a[start:start + 65536]], np.float32)
        eb = np.asarray(embeddings[b[start:start + 65536]], np.float32)
        out[start:start + 65536] = (ea * eb).sum(axis=1) / np.maximum(
            np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1), 1e-12)
    return out


def eval_images_with_train_copy(pairs: pd.DataFrame, predictions: pd.DataFrame, *, eval_split: str,
                                classes: list[str]) -> pd.DataFrame:
    """One row per image of ``eval_split`` that has a copy in ``train`` (its most similar one), errors first.

    ``pairs`` is the ``pairs`` table of the ``duplicates`` kind. Columns: ``row``,
    ``path``, ``true_label``, ``predicted_label``, ``correct``, ``copy_row``,
    ``copy_path``, ``copy_label``, ``kind``, ``similarity``, ``labels_agree``
    ``predicted_is_copy_label`` (the model answered the training copy's label:
    it may have memorised that picture, label and all) and ``transform`` (how the
    pair's second image differs from its first, in words: "flipped left-right, cropped to 90%").
    """
    cols = ["row", "path", "true_label", "predicted_label", "correct", "copy_row", "copy_path", "copy_label", "kind",
            "similarity", "labels_agree", "predicted_is_copy_label", "transform"]
    if eval_split in ("all", "train"):
        return pd.DataFrame({c: [] for c in cols})
    a_train = (pairs["split_a"] == "train") & (pairs["split_b"] == eval_split)
    b_train = (pairs["split_b"] == "train") & (pairs["split_a"] == eval_split)
    links = pd.concat([
        pd.DataFrame({"row": pairs.loc[a_train, "row_b"], "copy_row": pairs.loc[a_train, "row_a"],
                      "kind": pairs.loc[a_train, "kind"], "similarity": pairs.loc[a_train, "similarity"],
                      "transform": pairs.loc[a_train, "transform"] if "transform" in pairs else ""}),
        pd.DataFrame({"row": pairs.loc[b_train, "row_a"], "copy_row": pairs.loc[b_train, "row_b"],
                      "kind": pairs.loc[b_train, "kind"], "similarity": pairs.loc[b_train, "similarity"],
                      "transform": pairs.loc[b_train, "transform"] if "transform" in pairs else ""}),
    ], ignore_index=True)
    if links.empty:
        return pd.DataFrame({c: [] for c in cols})
    links = (links.sort_values(["row", "similarity"], ascending=[True, False], kind="stable")
             .drop_duplicates("row").reset_index(drop=True))
    rows, copies = links["row"].to_numpy(np.int64), links["copy_row"].to_numpy(np.int64)
    names = np.asarray(classes, dtype=object)
    true, pred = predictions["true"].to_numpy(), predictions["predicted"].to_numpy()
    paths = predictions["path"].astype(str).to_numpy()
    out = pd.DataFrame({
        "row": rows, "path": paths[rows], "true_label": names[true[rows]], "predicted_label": names[pred[rows]],
        "correct": predictions["correct"].to_numpy()[rows], "copy_row": copies, "copy_path": paths[copies],
        "copy_label": names[true[copies]], "kind": links["kind"].to_numpy(),
        "similarity": links["similarity"].to_numpy(np.float32),
        "labels_agree": true[rows] == true[copies], "predicted_is_copy_label": pred[rows] == true[copies],
        "transform": links["transform"].astype(str).to_numpy(),
    })
    return out.sort_values(["correct", "similarity"], ascending=[True, False], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class DuplicatesConfig:
    """``thumb_size`` of the shared image scan; ``max_ratio``, ``neighbours``, ``seed`` (see
    ``find_duplicates``); ``min_embedding_cosine`` (None: not used) also requires a near pair's
    penultimate features to agree that much."""

    thumb_size: int = 32
    max_ratio: float = MAX_RATIO
    neighbours: int = 2
    min_embedding_cosine: float | None = None
    seed: int = 0

    def __post_init__(self):
        ImageScanConfig(thumb_size=self.thumb_size)
        for name, low, high in (("max_ratio", 0, 10), ("neighbours", 1, 100)):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and low <= value <= high):
                raise UserError(f"duplicates: {name} must be a number in [{low}, {high}]. Received: {name}={value!r}")
        cos = self.min_embedding_cosine
        if cos is not None and (isinstance(cos, bool) or not (isinstance(cos, (int, float)) and -1 <= cos <= 1)):
            raise UserError(f"duplicates: min_embedding_cosine must be None or a number in [-1, 1]. Received: {cos!r}")


def _edited_text(leaks: pd.DataFrame) -> str:
    """' 12 of them edited, e.g. flipped left-right (5); ...' from the leaks' ``transform`` column."""
    if "transform" not in leaks or leaks.empty:
        return ""
    how = leaks.drop_duplicates("row")["transform"].astype(str)
    edited = how[~how.isin(["identical pixels", "re-encoded or noisy (same geometry)"])]
    if edited.empty:
        return ""
    common = edited.value_counts().head(3)
    return (f" {len(edited):,} of them edited, e.g. "
            + "; ".join(f"{text} ({count:,})" for text, count in common.items()) + ".")


def duplicate_findings(run: Run, stored) -> Findings:
    """Cards for leaks (evaluated images with a copy in train that are wrong or labelled otherwise),
    copies whose labels disagree and all duplicates; the per-image ``train_copy`` flag, its caption
    line and the Errors page's 'copy in train' filter."""
    s = stored.summary
    leaks = stored.table("eval_with_train_copy")
    leaks = leaks[~leaks["correct"] | ~leaks["labels_agree"]].sort_values("similarity", ascending=False)
    n_wrong = int((~leaks.drop_duplicates("row")["correct"]).sum())
    pairs = stored.table("pairs").sort_values("similarity", ascending=False)
    disagree = pairs[~pairs["labels_agree"]]
    cards = (
        Card("leaks", "duplicates", "Leaks: evaluated images with a near copy in train",
             f"{plural(s.get('n_eval_with_train_copy', 0), 'image')} of '{s.get('eval_split', '?')}' with a copy "
             f"in train; {n_wrong:,} of them misclassified; "
             f"{plural(int((~leaks['labels_agree']).sum()), 'copy', 'copies')} with another label.",
             unique_rows(leaks["row"]), "closest copy first"),
        Card("disagreeing_copies", "duplicates", "Copies whose labels disagree",
             f"{plural(len(disagree), 'pair')} of (near) copies with different labels: at least one image of "
             "each pair is mislabelled.", unique_rows(np.column_stack([disagree["row_a"], disagree["row_b"]]).ravel()),
             "closest pair first, the two images side by side"),
        Card("duplicates", "duplicates", "Duplicates",
             f"{plural(s.get('n_pairs', 0), 'pair')} of copies ({s.get('n_exact', 0):,} exact, "
             f"{s.get('n_near', 0):,} near; {s.get('n_cross_split', 0):,} across splits) among "
             f"{s.get('n_scanned', 0):,} images.", unique_rows(np.column_stack([pairs["row_a"], pairs["row_b"]]).ravel()),
             "closest pair first, the two images side by side", notes=tuple(str(n) for n in s.get("notes", []))),
    )
    table = stored.table("eval_with_train_copy")
    columns = pd.DataFrame({"train_copy": np.zeros(run.n_images, bool),
                            "train_copy_edit": np.full(run.n_images, "", dtype=object)})
    rows = table["row"].to_numpy(np.int64)
    columns.loc[rows, "train_copy"] = True
    if "transform" in table:  # how the copy differs; nothing to say for identical pixels
        how = table["transform"].astype(str).to_numpy()
        columns.loc[rows, "train_copy_edit"] = np.where(how == "identical pixels", "", how)
    return Findings(cards=cards, columns=columns,
                    column_specs=(Column("train_copy", "copy in train", "an evaluated image with a near copy in train"),
                                  Column("train_copy_edit", "copy edit",
                                         "how the training copy differs: 'flipped left-right, cropped to 90%'")),
                    captions=(Caption("copy in train", when="train_copy"),
                              Caption("copy edited: {train_copy_edit}", when="train_copy_edit")),
                    filters=(Filter("train_copy", "Copy in train", "flag", "copy"),))


@derived.register("duplicates", version=6, config=DuplicatesConfig, findings=duplicate_findings, reads=("image_scan",),
                  description="exact and near duplicate images within and across splits (leakage), "
                              "through flips, crops, rotations, blur, noise and tone changes")
def compute_duplicates(run: Run, config: DuplicatesConfig, progress: Progress) -> derived.DerivedResult:
    """Duplicate pairs of the run's images, and the evaluated images that have a copy in train.

    Arrays (N,): ``group`` (connected groups of copies, -1 for none),
    ``copies`` (how many pairs each row is in). Tables: ``pairs``
    (``PAIR_COLUMNS``, one row per pair, train before val before test) and
    ``eval_with_train_copy`` (see ``eval_images_with_train_copy``).

    Options: ``thumb_size`` (of the shared image scan), ``max_ratio``,
    ``neighbours``, ``seed`` (see ``find_duplicates``); ``min_embedding_cosine`` (None: not used) also
    requires a near pair's penultimate features to agree that much.
    """
    min_cos = config.min_embedding_cosine
    scan = load_scan(run, thumb_size=config.thumb_size, progress=lambda m, f: progress(m, 0.4 * f))
    say = lambda message, fraction: progress(message, 0.4 + 0.55 * fraction)  # noqa: E731
    original = scan.properties[["height", "width"]].to_numpy(dtype=np.float64, na_value=0)
    gray = scan.properties["grayscale"].to_numpy(dtype=bool, na_value=False) if "grayscale" in scan.properties else None
    found = find_duplicates(scan.thumbnails, scan.content_size, scan.digest, scan.readable, original_size=original,
                            grayscale=gray, max_ratio=float(config.max_ratio), neighbours=int(config.neighbours),
                            seed=int(config.seed), progress=say)
    a, b = found["a"].to_numpy(np.int64), found["b"].to_numpy(np.int64)
    cosine = _embedding_cosine(run.embeddings, a, b)
    notes = []
    if found.attrs.get("min_detail") is not None:
        notes.append(f"Near copies' fine detail agrees at least {found.attrs['min_detail']:.3f} (correlation): what "
                     f"all but 2% of {found.attrs['n_edited']:,} edited copies of this data set's own images reach.")
        notes.append(f"Candidates still more than {found.attrs['max_quick']:.1f} gray levels apart after registration "
                     f"(smoothed, after the best tone curve) are refused without further measures: {QUICK_MARGIN:g}x "
                     f"the most those edited copies leave, at least {QUICK_FLOOR:g} and at most {MAX_QUICK:g}.")
    if found.attrs.get("n_flat"):
        notes.append(f"{plural(found.attrs['n_flat'], 'candidate pair')} not called copies: the compared area (the "
                     "frame less its edges) is nearly blank, varying less than a copy may differ, so a blank picture "
                     "would match too. Nearly blank images cannot be told apart here.")
    # the search and verification compare gray structure: a recoloured look-alike (the same shape in other
    # colours, drawn apart) passes there; its colour channels say it is not one picture edited
    odd = recoloured_pairs(run, a, b, found["kind"].to_numpy() == "near")
    if odd.any():
        notes.append(f"{plural(int(odd.sum()), 'candidate pair')} not called copies: their colours cannot be one "
                     "picture's under a brightness, contrast or gamma edit (a colour channel rises with brightness "
                     "in one and falls in the other): the same shapes, recoloured.")
        found, a, b = found[~odd].reset_index(drop=True), a[~odd], b[~odd]
        cosine = cosine[~odd]
    if run.embeddings is None:
        notes.append("The run has no embeddings: pairs verified on pixels alone (embedding_cosine is NaN).")
    elif min_cos is not None:
        keep = (found["kind"].to_numpy() == "exact") | (cosine >= float(min_cos))
        found, a, b, cosine = found[keep].reset_index(drop=True), a[keep], b[keep], cosine[keep]
    preds = run.predictions
    splits = preds["split"].astype(str).to_numpy()
    rank = _split_rank(splits)
    allowed = found["allowed"].to_numpy(np.float64)
    keep = one_source(a, b, found["kind"].to_numpy() == "near", found["residual"].to_numpy(np.float64)
                      / np.maximum(allowed, 1e-6), rank)
    n_second = int((~keep).sum())
    if n_second:
        notes.append(f"{plural(n_second, 'pair')} left out where an image matched a second image of an earlier "
                     "split: it fits another one better, and those two are not copies of each other (a copy has "
                     "one source; the other only resembles it).")
        found, a, b, cosine = found[keep].reset_index(drop=True), a[keep], b[keep], cosine[keep]
    swap = (rank[a] > rank[b]) | ((rank[a] == rank[b]) & (a > b))  # train first, then val, then test
    ra, rb = np.where(swap, b, a), np.where(swap, a, b)
    sy, sx = found["shift_y"].to_numpy(np.float32), found["shift_x"].to_numpy(np.float32)
    scale, rot = found["scale"].to_numpy(np.float64), found["rotation"].to_numpy(np.float32)
    true = preds["true"].to_numpy()
    names = np.asarray(run.classes, dtype=object)
    paths = preds["path"].astype(str).to_numpy()
    pairs = pd.DataFrame({
        "row_a": ra, "row_b": rb, "path_a": paths[ra], "path_b": paths[rb], "split_a": splits[ra],
        "split_b": splits[rb], "label_a": names[true[ra]], "label_b": names[true[rb]],
        "labels_agree": true[ra] == true[rb], "kind": found["kind"].to_numpy(),
        "similarity": found["similarity"].to_numpy(np.float32),
        "correlation": found["correlation"].to_numpy(np.float32),
        "residual": found["residual"].to_numpy(np.float32), "embedding_cosine": cosine,
        "shift_y": np.where(swap, -sy, sy), "shift_x": np.where(swap, -sx, sx), "cross_split": splits[ra] != splits[rb],
        "transform": found["transform"].astype(str).to_numpy(), "flip": found["flip"].astype(str).to_numpy(),
        "blur": np.where(swap, -found["blur"].to_numpy(np.float32), found["blur"].to_numpy(np.float32)),
        "tone": found["tone"].to_numpy(np.float32),
        "scale": np.where(swap, 1.0 / np.maximum(scale, 1e-6), scale).astype(np.float32),
        "rotation": np.where(swap, -rot, rot).astype(np.float32),
        "allowed": found["allowed"].to_numpy(np.float32),
    })
    redo = swap & (pairs["kind"] == "near").to_numpy()  # the words describe b against a: say them the other way
    if redo.any():
        pairs.loc[redo, "transform"] = transform_texts(
            pairs.loc[redo].rename(columns={"row_a": "a", "row_b": "b"}), original, gray)
    pairs = pairs.drop(columns=["blur", "tone"])
    pairs = pairs.iloc[np.lexsort((rb, ra, rank[rb], rank[ra]))].reset_index(drop=True)
    leaks = eval_images_with_train_copy(pairs, preds, eval_split=run.eval_split, classes=run.classes)
    n = run.n_images
    copies = np.bincount(np.concatenate([ra, rb]), minlength=n).astype(np.int32)
    progress("duplicates: done", 1.0)
    train_eval = pairs["split_a"].eq("train") & pairs["split_b"].eq(run.eval_split) & (run.eval_split != "train")
    return derived.DerivedResult(
        arrays={"group": _components(n, ra, rb), "copies": copies},
        tables={"pairs": pairs, "eval_with_train_copy": leaks},
        summary={
            "n_pairs": int(len(pairs)), "n_exact": int((pairs["kind"] == "exact").sum()),
            "n_near": int((pairs["kind"] == "near").sum()), "n_cross_split": int(pairs["cross_split"].sum()),
            "n_train_eval_pairs": int(train_eval.sum()), "eval_split": run.eval_split,
            "n_eval_with_train_copy": int(len(leaks)),
            "n_eval_errors_with_train_copy": int((~leaks["correct"].astype(bool)).sum()) if len(leaks) else 0,
            "n_label_disagreements": int((~pairs["labels_agree"]).sum()), "n_second_sources": n_second,
            "n_images_with_copy": int((copies > 0).sum()), "n_scanned": int(scan.readable.sum()),
            "n_unreadable": int(len(scan.skipped)), "notes": notes,
        },
    )


def duplicates_csv(run: Run, *, cross_split_only: bool = False, force: bool = False,
                   progress: bool | Progress = False) -> pd.DataFrame:
    """``python -m core duplicates``: the pairs with ``CSV_COLUMNS``, train-test leaks first."""
    pairs = derived.get(run, "duplicates", force=force, progress=progress).table("pairs")
    if cross_split_only:
        pairs = pairs[pairs["cross_split"]]
    order = np.lexsort((-pairs["similarity"].to_numpy(), ~pairs["cross_split"].to_numpy()))
    return pairs.iloc[order][CSV_COLUMNS].reset_index(drop=True)
