"""Duplicates and leakage: the same picture twice, within a split or across splits.

Conventions: N images (the run's rows). A *pair* is two rows (a, b) with
a < b in split order (train, val, test, then the others) and then row order,
so a train-test pair names its training image first. ``kind`` is ``exact``
(identical decoded pixels, whatever the files: a PNG copied or re-saved) or
``near`` (re-encoded, resized, shifted by a pixel or two, mild noise).

How near copies are found (nothing quadratic in N):

1. Every image's gray thumbnail (from the shared ``image_scan``: never
   enlarged, so a 28 px image keeps its pixels) is stretched to S x S and
   re-centred on its intensity centroid (measured against the border's median,
   to sub-pixel precision): a copy shifted by a few pixels lands in the same
   place. A blurred 12 x 12 summary of its central part, at the centred
   position and one pixel around it (9 variants), is its search descriptor.
2. Candidates: an inverted-file index (k-means cells on a PCA of the
   descriptors); each variant of each image is compared with the images of its
   cell only, and each image keeps its ``neighbours`` best matches. Work is
   about N * sqrt(N) descriptor products, not N^2.
3. Verification on the thumbnails' own pixels: the best integer shift (up to
   ``max_shift`` px) around the centroids' offset, then the correlation of the
   fine detail (difference of Gaussians, sigma 0.5 and 1.5 px) over the
   overlap. Two look-alikes (two plain T-shirts) correlate in intensity
   (r > 0.99 is common in Fashion-MNIST) but not in detail; a copy does in
   both. ``similarity`` is that detail correlation (1.0 for exact copies).

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

import numpy as np
import pandas as pd

from core import derived
from core.diagnose.findings import Caption, Card, Column, Filter, Findings, plural, unique_rows
from core.diagnose.properties import load_scan
from core.progress import Progress
from core.store import Run

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
PAIR_COLUMNS = ["row_a", "row_b", "path_a", "path_b", "split_a", "split_b", "label_a", "label_b",
                "labels_agree", "kind", "similarity", "correlation", "embedding_cosine", "shift_y", "shift_x",
                "cross_split"]
CSV_COLUMNS = ["path_a", "path_b", "split_a", "split_b", "similarity", "kind", "labels_agree", "label_a",
               "label_b", "row_a", "row_b"]
_DESCRIPTOR = 12  # side of the search descriptor
_VARIANTS = 9  # the centred position and its 8 one-pixel neighbours
_SMALL = 3000  # below this many images, one cell: exact search
_FINE, _COARSE = 0.5, 1.5  # the detail band of the verification (sigmas in px)
_MAX_GROUP_PAIRS = 6  # exact groups larger than this are listed as a star around one member


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

def _operator(size: int) -> tuple[np.ndarray, int, int]:
    """Row operator (3 * D, size + 2): blur then area-resample the central crop at offsets 0, 1, 2."""
    import cv2

    sigma = size / 32.0
    margin = max(1, round(3 * size / 32))
    crop = size - 2 * margin
    eye = np.eye(crop, dtype=np.float32)
    radius = max(1, int(np.ceil(3 * sigma)))
    kernel = cv2.getGaussianKernel(2 * radius + 1, sigma, cv2.CV_32F)
    blurred = cv2.filter2D(eye, -1, kernel, borderType=cv2.BORDER_REFLECT_101)  # along rows
    small = cv2.resize(blurred, (crop, _DESCRIPTOR), interpolation=cv2.INTER_AREA)  # (D, crop)
    full = np.zeros((3 * _DESCRIPTOR, size + 2), np.float32)
    for o in range(3):
        full[o * _DESCRIPTOR:(o + 1) * _DESCRIPTOR, o + margin:o + margin + crop] = small
    return full, margin, crop


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


def search_descriptors(aligned: np.ndarray) -> np.ndarray:
    """(n, 9, 144) float32 unit vectors: blurred 12 x 12 summaries of each aligned image's centre.

    ``aligned`` is (n, S + 2, S + 2) (see ``_aligned``). Variant v = 3 * (dy + 1) + (dx + 1)
    is the centre crop moved by (dy, dx) in {-1, 0, 1}; variant 4 is the centred one.
    Each descriptor has its mean removed and unit length (brightness and contrast do not count).
    """
    n, p, _ = aligned.shape
    op, _, _ = _operator(p - 2)
    d = _DESCRIPTOR
    left = (op @ aligned.transpose(1, 0, 2).reshape(p, n * p)).reshape(3 * d, n, p).transpose(1, 0, 2)
    both = (np.ascontiguousarray(left).reshape(n * 3 * d, p) @ op.T).reshape(n, 3, d, 3, d)
    desc = both.transpose(0, 1, 3, 2, 4).reshape(n, _VARIANTS, d * d)
    desc -= desc.mean(axis=2, keepdims=True)
    desc /= np.maximum(np.linalg.norm(desc, axis=2, keepdims=True), 1e-6)
    return desc


def _projector(size: int, basis: np.ndarray):
    """``f(aligned) -> (n, 9, K) float32 unit vectors``: ``search_descriptors(aligned) @ basis``, renormalised.

    The descriptor and the projection are linear (the mean removal too; the
    unit length before projecting does not change the direction after), so
    they fold into two matrix products: ``aligned @ op.T``, then, per
    horizontal offset, one product with ``Q`` (op rows x basis), with no
    (n, 9, 144) array in between.
    """
    op, _, _ = _operator(size)
    d, k = _DESCRIPTOR, basis.shape[1]
    centring = np.eye(d * d, dtype=np.float32) - 1.0 / (d * d)
    folded = (centring @ basis).reshape(d, d, k)  # (i, j, k)
    q = np.concatenate([np.einsum("ir,ijk->rjk", op[o * d:(o + 1) * d], folded) for o in range(3)], axis=2)
    q = q.reshape(op.shape[1] * d, 3 * k).astype(np.float32)  # rows (r, j), columns (vertical offset, k)

    def project(aligned: np.ndarray) -> np.ndarray:
        n, p, _ = aligned.shape
        right = (aligned.reshape(n * p, p) @ op.T).reshape(n, p, 3, d)  # (n, r, horizontal offset, j)
        out = np.empty((n, 3, 3, k), np.float32)  # (n, vertical offset, horizontal offset, k)
        for o in range(3):
            out[:, :, o, :] = (np.ascontiguousarray(right[:, :, o, :]).reshape(n, p * d) @ q).reshape(n, 3, k)
        out = out.reshape(n, _VARIANTS, k)
        return out / np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-6)

    return project


# --------------------------------------------------------------------------- candidate pairs

def _kmeans(points: np.ndarray, n_cells: int, rng: np.random.Generator, iterations: int = 8) -> np.ndarray:
    centres = points[rng.choice(len(points), n_cells, replace=False)].copy()
    for _ in range(iterations):
        label = _nearest(points, centres, 1)[:, 0]
        sums = np.zeros_like(centres)
        np.add.at(sums, label, points)
        counts = np.bincount(label, minlength=n_cells)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


def _nearest(points: np.ndarray, centres: np.ndarray, p: int) -> np.ndarray:
    """(len(points), min(p, len(centres))) indices of the nearest centres."""
    d = (centres * centres).sum(axis=1)[None, :] - 2.0 * points @ centres.T
    if p == 1:
        return d.argmin(axis=1)[:, None]
    if len(centres) <= p:
        return np.argsort(d, axis=1)
    return np.argpartition(d, p - 1, axis=1)[:, :p]


def candidate_pairs(thumbnails: np.ndarray, content_size: np.ndarray, rows: np.ndarray, *, neighbours: int = 2,
                    min_score: float = 0.85, max_align: float = 5.0, seed: int = 0,
                    progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of ``rows`` whose search descriptors match best (at most ``neighbours`` per image and direction).

    The query side uses all 9 variants of an image, the index side the centred
    one; the score of a pair is the best cosine (in a 32-dimensional PCA of the
    descriptors) and must reach ``min_score``. Images are compared within the
    two k-means cells nearest to them (one cell, exact search, below 3,000 images).

    Returns ``a``, ``b`` (row ids, a < b), ``score`` and the centroids
    (len(rows), 2) of ``rows`` (see ``centroids``), which the verification reuses.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    centroid, background = centroids(thumbnails, content_size, rows)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), centroid
    rng = np.random.default_rng(seed)
    say = progress or (lambda message, fraction: None)
    chunk = 8192
    # PCA of the centred descriptors of a sample, then every variant of every image projected (float16: bounded)
    sample = np.sort(rng.choice(n, min(n, 10000), replace=False))
    sample_desc = search_descriptors(_aligned(thumbnails, content_size, rows[sample], centroid[sample],
                                              background[sample], max_align=max_align))[:, _VARIANTS // 2]
    centred = sample_desc - sample_desc.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    basis = np.ascontiguousarray(vectors[:, ::-1][:, :min(32, n - 1)]).astype(np.float32)
    projected = np.empty((n, _VARIANTS, basis.shape[1]), np.float16)
    project = _projector(thumbnails.shape[1], basis)

    def describe(start: int) -> int:
        stop = min(start + chunk, n)
        part = _aligned(thumbnails, content_size, rows[start:stop], centroid[start:stop], background[start:stop],
                        max_align=max_align)
        projected[start:stop] = project(part)
        return stop

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:  # OpenCV and BLAS release the GIL
        for stop in pool.map(describe, range(0, n, chunk)):
            say(f"duplicates: descriptors {stop:,}/{n:,}", 0.3 * stop / n)
    centre = projected[:, _VARIANTS // 2].astype(np.float32)
    coarse = min(16, centre.shape[1])
    n_cells = 1 if n <= _SMALL else int(np.sqrt(2 * n))
    if n_cells > 1:
        centres = _kmeans(centre[rng.choice(n, min(n, 40 * n_cells), replace=False), :coarse], n_cells, rng)
        cells = np.concatenate([_nearest(centre[i:i + chunk, :coarse], centres, 2) for i in range(0, n, chunk)])
    else:
        cells = np.zeros((n, 1), np.int64)
    member_of = np.repeat(np.arange(n), cells.shape[1])
    order = np.argsort(cells.ravel(), kind="stable")
    starts = np.searchsorted(cells.ravel()[order], np.arange(n_cells + 1))
    found_a, found_b, found_s = [], [], []
    for cell in range(n_cells):
        members = member_of[order[starts[cell]:starts[cell + 1]]]
        if len(members) < 2:
            continue
        index = centre[members].T
        for q in range(0, len(members), 512):  # bounded memory in a large cell
            queries = members[q:q + 512]
            sims = (projected[queries].astype(np.float32) @ index).max(axis=1)  # best variant, (q, members)
            sims[np.arange(len(queries)), np.arange(q, q + len(queries))] = -2.0  # not itself
            k = min(neighbours, len(members) - 1)
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            best = np.take_along_axis(sims, top, axis=1)
            keep = best >= min_score
            found_a.append(np.repeat(queries, k)[keep.ravel()])
            found_b.append(members[top][keep])
            found_s.append(best[keep])
        if cell % 64 == 0:
            say(f"duplicates: searching cell {cell + 1:,}/{n_cells:,}", 0.3 + 0.4 * (cell + 1) / n_cells)
    if not found_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), centroid
    a, b, score = _top_pairs(np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_s), n,
                             neighbours)
    return rows[a], rows[b], score, centroid


def _top_pairs(qa: np.ndarray, qb: np.ndarray, score: np.ndarray, n: int, neighbours: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unordered pairs (positions) with their best score, kept if among the ``neighbours`` best of either image."""
    if len(qa) == 0:
        return qa.astype(np.int64), qb.astype(np.int64), score
    lo, hi = np.minimum(qa, qb), np.maximum(qa, qb)
    key = lo.astype(np.int64) * n + hi
    order = np.lexsort((-score, key))
    key, score = key[order], score[order]
    first = np.r_[True, key[1:] != key[:-1]]
    key, score = key[first], score[first]
    lo, hi = key // n, key % n
    keep = np.zeros(len(key), bool)
    for source in (lo, hi):  # rank each pair among the pairs of each of its two images
        o = np.lexsort((-score, source))
        ranked = source[o]
        rank = np.arange(len(o)) - np.searchsorted(ranked, ranked)
        keep[o[rank < neighbours]] = True
    return lo[keep], hi[keep], score[keep]


# --------------------------------------------------------------------------- verification

def _blur_matrix(length: int, sigma: float) -> np.ndarray:
    """(length, length) float32 G with G @ v = v blurred by a Gaussian (reflected borders, as OpenCV does)."""
    import cv2

    eye = np.eye(length, dtype=np.float32)
    return cv2.GaussianBlur(eye, (1, 2 * max(1, int(np.ceil(3 * sigma))) + 1), sigmaX=0, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT)


def _gaussian(images: np.ndarray, sigma: float) -> np.ndarray:
    """Each image of a float32 stack (n, h, w) blurred (reflected borders): G_h @ image @ G_w.T as stacks of
    small matrix products (several times faster here than filtering 28-pixel rows one by one)."""
    n, h, w = images.shape
    return np.matmul(_blur_matrix(h, sigma), np.matmul(np.asarray(images, np.float32), _blur_matrix(w, sigma).T))


def _detail_stack(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lightly smoothed images (sigma 0.5) and their fine detail (minus a sigma 1.5 blur), (n, h, w) each."""
    smooth = _gaussian(images, _FINE)
    return smooth, smooth - _gaussian(images, _COARSE)


def _centred(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1)
    return x - x.mean(axis=1, keepdims=True)


def _correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of the rows of two (n, ...) arrays."""
    x, y = _centred(x), _centred(y)
    return (x * y).sum(axis=1) / np.maximum(np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1)), 1e-6)


def _sample(windows: np.ndarray, idx: np.ndarray, top: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Bilinear windows: ``windows`` is a sliding-window view (n, P, P, wh, ww); (top, left) are
    fractional window positions in [0, P - 1], one per pair."""
    last = windows.shape[1] - 1
    y0 = np.clip(np.floor(top).astype(np.int64), 0, last)
    x0 = np.clip(np.floor(left).astype(np.int64), 0, last)
    wy = np.clip(top - y0, 0, 1)[:, None, None].astype(np.float32)
    wx = np.clip(left - x0, 0, 1)[:, None, None].astype(np.float32)
    y1, x1 = np.minimum(y0 + 1, last), np.minimum(x0 + 1, last)
    return ((1 - wy) * ((1 - wx) * windows[idx, y0, x0] + wx * windows[idx, y0, x1])
            + wy * ((1 - wx) * windows[idx, y1, x0] + wx * windows[idx, y1, x1]))


def _peak_offset(left: np.ndarray, centre: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Sub-pixel offset in [-0.5, 0.5] of a parabola through three correlations (0 where it has no maximum)."""
    curvature = left - 2 * centre + right
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(curvature < -1e-6, 0.5 * (left - right) / curvature, 0.0)  # NaN sides: no offset
    return np.clip(np.nan_to_num(offset), -0.5, 0.5)


def _margin(h: int, w: int, max_shift: int) -> int:
    """Pixels left out on each side of the compared window (the largest shift tried)."""
    return max(0, min(max_shift, (min(h, w) - 4) // 2))


def _compare(smooth: np.ndarray, detail: np.ndarray, ia: np.ndarray, ib: np.ndarray, est_y: np.ndarray,
             est_x: np.ndarray, refinable: np.ndarray, *, max_shift: int) -> tuple[np.ndarray, ...]:
    """Pairs (ia[i], ib[i]) of images of one size: the shift of b onto a (within +-1 of the estimate and
    +-max_shift) that best correlates the smoothed intensities, refined to sub-pixel precision, and at
    that shift the detail correlation, the intensity correlation and the RMS difference of the smoothed
    intensities (offset removed).

    A fractional shift f is applied half to each image (a by -f/2, b by +f/2, bilinear), so both are
    smoothed alike by the interpolation: a copy shifted by one pixel of a picture twice the
    thumbnail's size (half a thumbnail pixel) still matches. Only ``refinable`` pairs are refined: between
    two pictures at their own size a shift of whole pixels stays whole, and letting look-alikes slide by
    fractions of a pixel would only help them pass.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    n = len(ia)
    _, h, w = smooth.shape
    m = _margin(h, w, max_shift)
    wh, ww = h - 2 * m, w - 2 * m
    a_int = _centred(smooth[ia, m:m + wh, m:m + ww])
    a_norm = np.sqrt((a_int * a_int).sum(axis=1))
    win = sliding_window_view(smooth, (wh, ww), axis=(1, 2))

    def corr(rows: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        b = win[ib[rows], m + dy, m + dx].reshape(len(rows), -1)
        # a is centred, so a . b = a . (b - mean b); |b - mean b|^2 = b . b - (sum b)^2 / size
        dot = np.einsum("ij,ij->i", a_int[rows], b)
        b_norm = np.sqrt(np.maximum(np.einsum("ij,ij->i", b, b) - b.sum(axis=1, dtype=np.float64) ** 2 / b.shape[1], 0))
        return dot / np.maximum(a_norm[rows] * b_norm, 1e-6)

    every = np.arange(n)
    offsets = np.array([0, 1, 2])
    if m >= 1:
        # the 3 x 3 shifts around the estimate (moved inwards at the border), from one (wh + 2, ww + 2) region per pair
        top = np.clip(est_y - 1, -m, m - 2) if m >= 2 else np.full(n, -1)
        left = np.clip(est_x - 1, -m, m - 2) if m >= 2 else np.full(n, -1)
        region = sliding_window_view(smooth, (wh + 2, ww + 2), axis=(1, 2))[ib, m + top, m + left]
        a_grid = a_int.reshape(n, wh, ww)
        grid = np.empty((n, 3, 3))
        for jy in range(3):
            for jx in range(3):
                b = region[:, jy:jy + wh, jx:jx + ww]
                dot = np.einsum("pij,pij->p", a_grid, b)
                sums = b.sum(axis=(1, 2), dtype=np.float64)
                b_norm = np.sqrt(np.maximum(np.einsum("pij,pij->p", b, b) - sums ** 2 / (wh * ww), 0))
                grid[:, jy, jx] = dot / np.maximum(a_norm * b_norm, 1e-6)
        grid_y, grid_x = top[:, None] + offsets, left[:, None] + offsets  # (n, 3): the shifts tried
    else:
        grid_y = grid_x = np.zeros((n, 3), np.int64)
        grid = np.repeat(np.repeat(corr(every, grid_y[:, 0], grid_x[:, 0])[:, None, None], 3, 1), 3, 2)
    flat = grid.reshape(n, 9).argmax(axis=1)
    best = grid.reshape(n, 9)[every, flat].astype(np.float32)
    dy_best, dx_best = grid_y[every, flat // 3], grid_x[every, flat % 3]

    def at(ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
        """Correlation at shift (ty, tx): from the grid when it was tried, else computed; NaN outside +-m."""
        hit_y, hit_x = grid_y == ty[:, None], grid_x == tx[:, None]
        found = hit_y.any(axis=1) & hit_x.any(axis=1)
        out = np.full(n, np.nan)
        out[found] = grid[found, hit_y[found].argmax(axis=1), hit_x[found].argmax(axis=1)]
        rest = np.flatnonzero(~found & (np.abs(ty) <= m) & (np.abs(tx) <= m))
        if len(rest):
            out[rest] = corr(rest, ty[rest], tx[rest])
        return out

    # sub-pixel: a parabola through the correlations one pixel either side (none at the search's border)
    fy = _peak_offset(at(dy_best - 1, dx_best), best, at(dy_best + 1, dx_best))
    fx = _peak_offset(at(dy_best, dx_best - 1), best, at(dy_best, dx_best + 1))
    fy[np.abs(dy_best) == m], fx[np.abs(dx_best) == m] = 0.0, 0.0
    detail_win = sliding_window_view(detail, (wh, ww), axis=(1, 2))

    def measure(a_s, b_s, a_d, b_d):
        diff = _centred(b_s - a_s)
        return _correlation(a_d, b_d), _correlation(a_s, b_s), np.sqrt((diff * diff).mean(axis=1))

    similarity, correlation, residual = measure(smooth[ia, m:m + wh, m:m + ww], win[ib, m + dy_best, m + dx_best],
                                                detail[ia, m:m + wh, m:m + ww],
                                                detail_win[ib, m + dy_best, m + dx_best])
    refine = np.flatnonzero(refinable & ((np.abs(fy) >= 0.15) | (np.abs(fx) >= 0.15)))
    shift_y, shift_x = dy_best.astype(np.float32), dx_best.astype(np.float32)
    if len(refine):
        ty, tx = m - fy[refine] / 2, m - fx[refine] / 2
        uy, ux = m + dy_best[refine] + fy[refine] / 2, m + dx_best[refine] + fx[refine] / 2
        sub = measure(_sample(win, ia[refine], ty, tx), _sample(win, ib[refine], uy, ux),
                      _sample(detail_win, ia[refine], ty, tx), _sample(detail_win, ib[refine], uy, ux))
        better = sub[2] < residual[refine]  # keep the whole-pixel answer where it was the closer one
        at = refine[better]
        similarity[at], correlation[at], residual[at] = sub[0][better], sub[1][better], sub[2][better]
        shift_y[at], shift_x[at] = dy_best[at] + fy[at], dx_best[at] + fx[at]
    return similarity, correlation, residual, shift_y, shift_x


def pixel_similarity(thumbnails: np.ndarray, content_size: np.ndarray, a: np.ndarray, b: np.ndarray, *,
                     centroid_a: np.ndarray | None = None, centroid_b: np.ndarray | None = None,
                     original_size: np.ndarray | None = None, max_shift: int = 3) -> pd.DataFrame:
    """Compare the thumbnails of pairs (a[i], b[i]) pixel by pixel.

    Two contents of different sizes (a resized copy) are compared at the
    smaller size. The shift of b onto a is searched among integers within one
    pixel of the centroids' offset (fractions, (len, 2), see ``centroids``;
    none given: around 0), at most ``max_shift``. It is refined to a fraction of a
    pixel when one of the two was shrunk to make its thumbnail (``original_size``,
    (N, 2) (height, width) of each picture; none given: never) or their sizes differ.

    Returns a DataFrame with, at the best shift: ``similarity`` (correlation of
    the fine detail, in [-1, 1]), ``correlation`` (of the lightly smoothed
    intensities), ``residual`` (RMS difference of the smoothed intensities, in
    gray levels 0..255, their mean difference removed), ``shift_y``, ``shift_x``
    (b's content is a's moved by that many pixels). Pairs too small to compare
    (under 4 px) get NaN.
    """
    import cv2

    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    n = len(a)
    out = {"similarity": np.full(n, np.nan, np.float32), "correlation": np.full(n, np.nan, np.float32),
           "residual": np.full(n, np.nan, np.float32), "shift_y": np.zeros(n, np.float32),
           "shift_x": np.zeros(n, np.float32)}
    if n == 0:
        return pd.DataFrame(out)
    ca = np.full((n, 2), 0.5) if centroid_a is None else np.asarray(centroid_a, np.float64)
    cb = np.full((n, 2), 0.5) if centroid_b is None else np.asarray(centroid_b, np.float64)
    size_a, size_b = content_size[a].astype(np.int64), content_size[b].astype(np.int64)
    target = np.where((size_a.prod(axis=1) <= size_b.prod(axis=1))[:, None], size_a, size_b)
    usable = target.min(axis=1) >= 4
    for h, w in np.unique(target[usable], axis=0):
        sel = np.flatnonzero(usable & (target[:, 0] == h) & (target[:, 1] == w))
        # every image once at this size: its own pixels, or shrunk (INTER_AREA) when it is the larger of a pair
        rows = np.unique(np.concatenate([a[sel], b[sel]]))
        ia, ib = np.searchsorted(rows, a[sel]), np.searchsorted(rows, b[sel])
        bank = np.empty((len(rows), h, w), np.float32)
        native = (content_size[rows, 0] == h) & (content_size[rows, 1] == w)
        bank[native] = thumbnails[rows[native], :h, :w]
        for j in np.flatnonzero(~native):
            row = rows[j]
            img = thumbnails[row, :content_size[row, 0], :content_size[row, 1]]
            bank[j] = cv2.resize(img, (int(w), int(h)), interpolation=cv2.INTER_AREA)
        smooth, detail = _detail_stack(bank)
        shrunk = (np.zeros(len(content_size), bool) if original_size is None
                  else (np.asarray(original_size) > content_size).any(axis=1))
        refinable = shrunk[a[sel]] | shrunk[b[sel]] | (size_a[sel] != size_b[sel]).any(axis=1)
        est_y = np.rint((cb[sel, 0] - ca[sel, 0]) * h).astype(np.int64)
        est_x = np.rint((cb[sel, 1] - ca[sel, 1]) * w).astype(np.int64)
        for start in range(0, len(sel), 8192):
            part = slice(start, start + 8192)
            sim, corr, res, dy, dx = _compare(smooth, detail, ia[part], ib[part], est_y[part], est_x[part],
                                              refinable[part], max_shift=max_shift)
            at = sel[part]
            out["similarity"][at], out["correlation"][at], out["residual"][at] = sim, corr, res
            out["shift_y"][at], out["shift_x"][at] = dy, dx
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- all pairs of a data set

def find_duplicates(thumbnails: np.ndarray, content_size: np.ndarray, digest: np.ndarray, readable: np.ndarray,
                    *, original_size: np.ndarray | None = None, min_similarity: float = 0.9,
                    max_residual: float = 10.0, min_correlation: float = 0.9,
                    max_shift: int = 3, neighbours: int = 2, seed: int = 0,
                    progress: Progress | None = None) -> pd.DataFrame:
    """Exact and near duplicate pairs among the readable rows (see the module docstring).

    Parameters
    ----------
    thumbnails : uint8 (N, S, S); content_size : (N, 2); digest : uint64 (N,); readable : bool (N,)
        as the shared image scan keeps them (``core.diagnose.properties.ImageScan``).
    original_size : (N, 2) height and width of each picture (see ``pixel_similarity``).
    min_similarity : detail correlation a near pair needs; max_residual : the RMS difference
        (gray levels) it may keep; min_correlation : intensity correlation it needs (see ``pixel_similarity``).
    max_shift : largest shift (px of the thumbnail) tried; neighbours : candidates kept per image.

    Returns
    -------
    DataFrame ``a``, ``b`` (rows, a < b), ``kind``, ``similarity``, ``correlation``, ``residual``,
    ``shift_y``, ``shift_x`` (b is a moved by that much). Identical images are
    searched once: a near pair between two of them is listed for every member
    of their groups when the groups are small.
    """
    for name, value, low, high in (("min_similarity", min_similarity, -1, 1), ("max_residual", max_residual, 0, 255),
                                   ("min_correlation", min_correlation, -1, 1), ("max_shift", max_shift, 0, 16),
                                   ("neighbours", neighbours, 1, 100)):
        if not (isinstance(value, (int, float)) and low <= value <= high):
            raise ValueError(f"{name} must be a number in [{low}, {high}]. Received: {name}={value!r}")
    say = progress or (lambda message, fraction: None)
    group = exact_groups(digest, readable)
    members = {int(g): np.flatnonzero(group == g) for g in np.unique(group[group >= 0])}
    parts = []
    for rows in members.values():
        ea, eb = _group_pairs(rows)
        parts.append(pd.DataFrame({"a": ea, "b": eb, "kind": "exact", "similarity": 1.0, "correlation": 1.0,
                                   "residual": 0.0, "shift_y": 0, "shift_x": 0}))
    # one representative per group of identical images (its first row) goes through the near-copy search
    readable_rows = np.flatnonzero(readable)
    reps = np.sort(np.concatenate([readable_rows[group[readable_rows] < 0],
                                   np.array([rows[0] for rows in members.values()], np.int64)]))
    ca, cb, _, centroid = candidate_pairs(thumbnails, content_size, reps, neighbours=neighbours, seed=seed,
                                          progress=say)
    say(f"duplicates: verifying {len(ca):,} candidate pairs", 0.75)
    position = np.full(len(digest), -1)
    position[reps] = np.arange(len(reps))
    checked = pixel_similarity(thumbnails, content_size, ca, cb, centroid_a=centroid[position[ca]],
                               centroid_b=centroid[position[cb]], original_size=original_size,
                               max_shift=max_shift)
    ok = ((checked["similarity"].to_numpy() >= min_similarity) & (checked["residual"].to_numpy() <= max_residual)
          & (checked["correlation"].to_numpy() >= min_correlation))
    near = checked[ok].assign(a=ca[ok], b=cb[ok], kind="near")
    parts.append(near)
    twins = []  # the verdict holds for the identical twins of each side
    for rec in near[near["a"].map(lambda r: group[r] >= 0) | near["b"].map(lambda r: group[r] >= 0)].to_dict("records"):
        side_a = members.get(int(group[rec["a"]]), np.array([rec["a"]]))
        side_b = members.get(int(group[rec["b"]]), np.array([rec["b"]]))
        if len(side_a) * len(side_b) <= _MAX_GROUP_PAIRS ** 2:
            twins += [{**rec, "a": x, "b": y} for x in side_a for y in side_b if (x, y) != (rec["a"], rec["b"])]
    parts.append(pd.DataFrame(twins))
    cols = ["a", "b", "kind", "similarity", "correlation", "residual", "shift_y", "shift_x"]
    pairs = pd.concat([p[cols] for p in parts if len(p)] or [pd.DataFrame({c: [] for c in cols})],
                      ignore_index=True)
    a, b = pairs["a"].to_numpy(np.int64), pairs["b"].to_numpy(np.int64)
    swap = a > b  # b onto a by (dy, dx) is a onto b by (-dy, -dx)
    pairs["a"], pairs["b"] = np.where(swap, b, a), np.where(swap, a, b)
    for c in ("shift_y", "shift_x"):
        shift = pairs[c].to_numpy(np.float32)
        pairs[c] = np.where(swap, -shift, shift)
    pairs = pairs.drop_duplicates(["a", "b"]).sort_values(["a", "b"], kind="stable").reset_index(drop=True)
    say("duplicates: verified", 0.9)
    return pairs


# --------------------------------------------------------------------------- the derived kind

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
    and ``predicted_is_copy_label`` (the model answered the training copy's label:
    it may have memorised that picture, label and all).
    """
    cols = ["row", "path", "true_label", "predicted_label", "correct", "copy_row", "copy_path", "copy_label", "kind",
            "similarity", "labels_agree", "predicted_is_copy_label"]
    if eval_split in ("all", "train"):
        return pd.DataFrame({c: [] for c in cols})
    a_train = (pairs["split_a"] == "train") & (pairs["split_b"] == eval_split)
    b_train = (pairs["split_b"] == "train") & (pairs["split_a"] == eval_split)
    links = pd.concat([
        pd.DataFrame({"row": pairs.loc[a_train, "row_b"], "copy_row": pairs.loc[a_train, "row_a"],
                      "kind": pairs.loc[a_train, "kind"], "similarity": pairs.loc[a_train, "similarity"]}),
        pd.DataFrame({"row": pairs.loc[b_train, "row_a"], "copy_row": pairs.loc[b_train, "row_b"],
                      "kind": pairs.loc[b_train, "kind"], "similarity": pairs.loc[b_train, "similarity"]}),
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
    })
    return out.sort_values(["correct", "similarity"], ascending=[True, False], kind="stable").reset_index(drop=True)


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
    columns = pd.DataFrame({"train_copy": np.zeros(run.n_images, bool)})
    columns.loc[stored.table("eval_with_train_copy")["row"].to_numpy(np.int64), "train_copy"] = True
    return Findings(cards=cards, columns=columns,
                    column_specs=(Column("train_copy", "copy in train", "an evaluated image with a near copy in train"),),
                    captions=(Caption("copy in train", when="train_copy"),),
                    filters=(Filter("train_copy", "Copy in train", "flag", "copy"),))


@derived.register("duplicates", version=1, findings=duplicate_findings,
                  defaults={"thumb_size": 32, "min_similarity": 0.9, "max_residual": 10.0, "min_correlation": 0.9,
                            "max_shift": 3, "neighbours": 2, "min_embedding_cosine": None, "seed": 0},
                  description="exact and near duplicate images within and across splits (leakage)")
def compute_duplicates(run: Run, config: dict, progress: Progress) -> derived.DerivedResult:
    """Duplicate pairs of the run's images, and the evaluated images that have a copy in train.

    Arrays (N,): ``group`` (connected groups of copies, -1 for none),
    ``copies`` (how many pairs each row is in). Tables: ``pairs``
    (``PAIR_COLUMNS``, one row per pair, train before val before test) and
    ``eval_with_train_copy`` (see ``eval_images_with_train_copy``).

    Options: ``thumb_size`` (of the shared image scan), ``min_similarity``,
    ``max_residual``, ``min_correlation``, ``max_shift``, ``neighbours``, ``seed``
    (see ``find_duplicates``); ``min_embedding_cosine`` (None: not used) also
    requires a near pair's penultimate features to agree that much.
    """
    min_cos = config["min_embedding_cosine"]
    if min_cos is not None and not (isinstance(min_cos, (int, float)) and -1 <= min_cos <= 1):
        raise ValueError(f"min_embedding_cosine must be None or a number in [-1, 1]. Received: {min_cos!r}")
    scan = load_scan(run, thumb_size=int(config["thumb_size"]), progress=lambda m, f: progress(m, 0.4 * f))
    say = lambda message, fraction: progress(message, 0.4 + 0.55 * fraction)  # noqa: E731
    original = scan.properties[["height", "width"]].to_numpy(dtype=np.float64, na_value=0)
    found = find_duplicates(scan.thumbnails, scan.content_size, scan.digest, scan.readable, original_size=original,
                            min_similarity=float(config["min_similarity"]), max_residual=float(config["max_residual"]),
                            min_correlation=float(config["min_correlation"]), max_shift=int(config["max_shift"]),
                            neighbours=int(config["neighbours"]), seed=int(config["seed"]), progress=say)
    a, b = found["a"].to_numpy(np.int64), found["b"].to_numpy(np.int64)
    cosine = _embedding_cosine(run.embeddings, a, b)
    notes = []
    if run.embeddings is None:
        notes.append("The run has no embeddings: pairs verified on pixels alone (embedding_cosine is NaN).")
    elif min_cos is not None:
        keep = (found["kind"].to_numpy() == "exact") | (cosine >= float(min_cos))
        found, a, b, cosine = found[keep].reset_index(drop=True), a[keep], b[keep], cosine[keep]
    preds = run.predictions
    splits = preds["split"].astype(str).to_numpy()
    rank = _split_rank(splits)
    swap = (rank[a] > rank[b]) | ((rank[a] == rank[b]) & (a > b))  # train first, then val, then test
    ra, rb = np.where(swap, b, a), np.where(swap, a, b)
    sy, sx = found["shift_y"].to_numpy(np.float32), found["shift_x"].to_numpy(np.float32)
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
    })
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
            "n_label_disagreements": int((~pairs["labels_agree"]).sum()),
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
