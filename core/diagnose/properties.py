"""Odd images and image properties: is the model worse on dark, blurry, small or atypical images?

Conventions: N images (the run's rows), K classes, D embedding dimensions.
Classes are the *true* labels; error rates are taken over the evaluated split
(``run.eval_split``), where ``correct`` means top-1 class = true class.

Two derived kinds live here:

* ``image_scan``: one pass over the pixels (``run.image(row)``: files inside the
  data set root, or the run's ``images.npy``), each image decoded once, in a
  thread pool, a bounded number of chunks in flight. For every row it keeps a
  small gray thumbnail (never enlarged, aspect kept, in an S x S canvas), a
  digest of the decoded pixels (identical pixels, identical digest) and cheap
  OpenCV properties. ``duplicates`` and ``image_properties`` both read it, so a
  run's images are decoded once for both.
* ``image_properties``: those properties plus *atypicality* (mean cosine
  distance to the k nearest images of the same class in embedding space,
  normalised within the class) and, per class and property, the error rate in
  the bottom and top tails (deciles by default) against the class's rate.

Properties (computed on the gray image shrunk to at most 256 px on its long
side, so that they compare across image sizes):

* ``brightness``: mean gray level / 255, in [0, 1];
* ``contrast``: RMS contrast, standard deviation of the gray levels / 255;
* ``blur``: variance of the Laplacian of the gray levels (low = blurry);
* ``subject``: the share of the picture whose colour differs from its border's (``subject_share``),
  in [0, 1]: a dot at the edge of an empty picture scores near 0, a textured object filling the frame
  near 1, a plain object on a plain ground its area. Pixels alone cannot tell a plain object that
  fills the frame from an empty ground, nor a black shirt from the black ground it lies on: both score
  low, so the words for its low tail are "most uniform", not "smallest object";
* ``height``, ``width`` (original pixels), ``size`` (height * width),
  ``aspect`` (width / height), ``grayscale`` (one channel, or R = G = B within
  JPEG noise).

>>> import numpy as np
>>> props = image_properties(np.full((10, 20), 51, np.uint8))
>>> props["brightness"], props["contrast"], props["aspect"], props["grayscale"]
(0.2, 0.0, 2.0, True)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.diagnose.findings import Card, Findings
from core.errors import UserError
from core.progress import Progress
from core.run import derived
from core.run.store import Run, file_inside
from core.workers import POOL_FAILURES, cores, in_processes

PROPERTY_SIZE = 256  # long side at which brightness, contrast and blur are measured
SCAN_CHUNK = 256  # rows per task of the thread pool
SCAN_PROCESS_CHUNK = 1024  # rows per task of a worker process
SCAN_PROCESS_MIN = 2 * SCAN_PROCESS_CHUNK  # images from which worker processes read a folder (see ``_scan_results``)
# Words for the low and high tail of each property ("errors are 3x more frequent among the darkest 10%").
TAIL_WORDS: dict[str, tuple[str, str]] = {
    "brightness": ("darkest", "brightest"),
    "contrast": ("lowest-contrast", "highest-contrast"),
    "blur": ("blurriest", "sharpest"),
    "size": ("smallest", "largest"),
    "aspect": ("tallest (narrowest)", "widest"),
    "subject": ("most uniform", "busiest"),
    "atypicality": ("most typical", "most atypical"),
}
# Short adjectives for slice names ("shirt -> t-shirt, dark").
TAIL_ADJECTIVES: dict[str, tuple[str, str]] = {
    "brightness": ("dark", "bright"), "contrast": ("low contrast", "high contrast"),
    "blur": ("blurry", "sharp"), "size": ("small", "large"), "aspect": ("tall", "wide"),
    "subject": ("uniform", "busy"), "atypicality": ("typical", "atypical"),
}
BOOLEAN_WORDS = {"grayscale": ("colour images", "grayscale images")}
PROPERTIES = ("brightness", "contrast", "blur", "subject", "size", "aspect", "grayscale", "atypicality")
SUBJECT_SIZE = 96  # long side at which ``subject`` is measured
SUBJECT_MIN_STEP = 25.0  # colour distance (0-255 levels) from the background below which a pixel is background


# --------------------------------------------------------------------------- one image

def _gray(img: np.ndarray) -> np.ndarray:
    import cv2

    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        return cv2.cvtColor(np.ascontiguousarray(img[:, :, :3]), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(img)


def _shrunk(img: np.ndarray, long_side: int) -> np.ndarray:
    """``img`` scaled down (INTER_AREA, aspect kept) so its long side is at most ``long_side``."""
    import cv2

    h, w = img.shape[:2]
    if max(h, w) <= long_side:
        return img
    scale = long_side / max(h, w)
    return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def subject_share(img: np.ndarray) -> float:
    """The share of ``img`` (uint8 (H, W) or (H, W, C)) whose colour differs from its border's, in [0, 1].

    Measured on the image shrunk to at most ``SUBJECT_SIZE`` pixels on its long side. The border's
    colour (the background, where there is one) is the per-channel median of a border band (5% of the
    short side, at least one pixel), which holds even where the subject touches up to half of the
    border. After a 3x3 Gaussian smoothing (film grain and JPEG noise do not count), a pixel is subject
    when its Euclidean colour distance to the background exceeds ``SUBJECT_MIN_STEP`` levels: a textured
    ground or an object filling the frame with texture scores high, a plain one low. (A step raised with
    the border's own spread, tried first, gave textured bags that fill the frame of Fashion-MNIST 0.0:
    the border then is the bag.) Colour, not gray: a red disc on a green ground of the same luminance is
    a subject. The smoothing widens a sharp edge by a pixel (below: a square covering 25% of its picture
    scores 0.3).

    >>> blank = np.full((48, 64, 3), 200, np.uint8); blank[0:2, 10:13] = 40
    >>> round(subject_share(blank), 3), round(subject_share(np.pad(np.full((20, 20), 255, np.uint8), 10)), 3)
    (0.004, 0.3)
    """
    return float(subject_shares([img])[0])


def subject_shares(images) -> np.ndarray:
    """``subject_share`` of each image of a sequence (float64 (B,)), images of one size measured together:
    a scan's chunk of 256 small images costs a few array operations, not 256 times a dozen (in a thread pool,
    per-image NumPy calls cost five times the rest of the scan on 70,000 images of 28x28)."""
    small = [_shrunk(np.asarray(img), SUBJECT_SIZE) for img in images]  # the box average keeps an area share
    small = [x[:, :, :3] if x.ndim == 3 else x[:, :, None] for x in small]
    out = np.zeros(len(small))
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(small):
        groups.setdefault(x.shape, []).append(i)
    for (h, w, _), members in groups.items():
        x = np.stack([small[i] for i in members]).astype(np.float32)  # (B, h, w, c)
        # [1, 2, 1] / 4 in each direction, the border reflected as OpenCV's GaussianBlur((3, 3), 0) does
        x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
        x = (x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]) / 4
        smooth = (x[:, :, :-2] + 2 * x[:, :, 1:-1] + x[:, :, 2:]) / 4
        band = max(1, round(0.05 * min(h, w)))
        edge = np.ones((h, w), bool)
        edge[band:h - band, band:w - band] = False
        background = np.median(smooth[:, edge], axis=1)  # (B, c)
        squared = ((smooth - background[:, None, None, :]) ** 2).sum(axis=3)
        out[members] = (squared > SUBJECT_MIN_STEP ** 2).mean(axis=(1, 2))
    return out


def image_properties(img: np.ndarray, *, subject: float | None = None) -> dict:
    """Cheap properties of one uint8 image (H, W), (H, W, 1) or RGB (H, W, 3); see the module docstring.

    Returns a dict with ``brightness``, ``contrast``, ``blur``, ``subject`` (``subject_share``, unless
    given: measured with others of its size), ``height``, ``width``, ``size``, ``aspect`` and ``grayscale``.
    """
    import cv2

    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or img.size == 0:
        raise UserError(f"expected a non-empty uint8 image (H, W) or (H, W, C). Received: dtype={img.dtype}, "
                         f"shape={img.shape}")
    h, w = img.shape[:2]
    small = _shrunk(img, PROPERTY_SIZE)
    if small.ndim == 3 and small.shape[2] >= 3:
        rgb = small[:, :, :3]
        # JPEG leaves a little chroma noise in gray pictures: a mean channel difference under 1 level is gray
        diff = (cv2.mean(cv2.absdiff(rgb[:, :, 0], rgb[:, :, 1]))[0]
                + cv2.mean(cv2.absdiff(rgb[:, :, 1], rgb[:, :, 2]))[0])
        grayscale = diff < 1.0
    else:
        grayscale = True
    gray = _gray(small)
    mean, std = cv2.meanStdDev(gray)
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F))
    return {"brightness": float(mean[0, 0]) / 255.0, "contrast": float(std[0, 0]) / 255.0,
            "blur": float(lap_std[0, 0]) ** 2, "subject": subject_share(img) if subject is None else float(subject),
            "height": int(h), "width": int(w), "size": int(h * w), "aspect": float(w) / float(h),
            "grayscale": bool(grayscale)}


def canvas_thumbnail(img: np.ndarray, *, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Gray thumbnail of ``img`` in the top-left corner of a zero (size, size) uint8 canvas.

    The image is shrunk by the smallest whole factor that makes it fit (INTER_AREA:
    a box average, aspect kept), never enlarged, so an image of at most ``size``
    pixels keeps its own pixels (a copy shifted by one pixel is shifted by exactly
    one pixel here) and a copy saved at twice the size comes back to the very same
    grid. Returns the canvas and the (height, width) of the content.
    """
    import cv2

    gray = _gray(np.asarray(img))
    h, w = gray.shape
    factor = -(-max(h, w) // size)  # ceil
    if factor > 1:
        gray = cv2.resize(gray, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
    h, w = gray.shape
    canvas = np.zeros((size, size), np.uint8)
    canvas[:h, :w] = gray
    return canvas, (h, w)


def pixel_digest(img: np.ndarray) -> int:
    """64-bit digest of the decoded pixels and their shape: equal for identical images, whatever their files."""
    img = np.ascontiguousarray(img)
    h = hashlib.blake2b(digest_size=8)
    h.update(repr((img.shape, img.dtype.str)).encode())
    h.update(img.data)
    return int.from_bytes(h.digest(), "little")


# --------------------------------------------------------------------------- the scan

@dataclass
class ImageScan:
    """What one pass over a run's pixels keeps (rows aligned with the run's, N).

    thumbnails : uint8 (N, S, S), see ``canvas_thumbnail`` (zeros for unreadable rows)
    content_size : int16 (N, 2), (height, width) of each thumbnail's content ((0, 0) if unreadable)
    digest : uint64 (N,), ``pixel_digest`` of the decoded image (0 if unreadable)
    readable : bool (N,)
    properties : DataFrame, one row per image: ``row`` and the columns of ``image_properties`` (NaN if unreadable)
    skipped : DataFrame ``row``, ``path``, ``reason`` of the rows that could not be read
    """

    thumbnails: np.ndarray
    content_size: np.ndarray
    digest: np.ndarray
    readable: np.ndarray
    properties: pd.DataFrame
    skipped: pd.DataFrame


_PROPERTY_COLUMNS = ("brightness", "contrast", "blur", "subject", "height", "width", "size", "aspect", "grayscale")


def _why(exc: Exception) -> str:
    """The first line of an exception's message, or its type's name: a skipped row's reason."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _decode_row(run: Run, row: int) -> tuple[np.ndarray | None, str | None]:
    """Pixels of ``row`` (as ``run.image``), or None and why not."""
    try:
        img = run.image(row)
        return (img, None) if img is not None else (None, "no pixels stored for this row")
    except (PermissionError, ValueError, OSError) as exc:
        return None, _why(exc)


def _decode_file(root: Path, rel: str) -> tuple[np.ndarray | None, str | None]:
    """Pixels of the file ``rel`` under the resolved data root (only there: ``file_inside``), or None and why not."""
    from core.data.images import read_image

    file = None
    try:
        file = file_inside(root, rel)
        if not file.is_file():
            return None, "file not found"
        return read_image(file), None
    except (PermissionError, ValueError, OSError) as exc:  # the row's path is beside the reason: not repeated
        return None, _why(exc).removeprefix(f"{file}: ") if file is not None else _why(exc)


def _scan_one(row: int, img: np.ndarray | None, reason: str | None, size: int,
              subject: float | None = None) -> tuple:
    if img is None:
        return row, None, reason
    try:
        thumb, content = canvas_thumbnail(img, size=size)
        return row, (thumb, content, pixel_digest(img), image_properties(img, subject=subject)), None
    except ValueError as exc:
        return row, None, str(exc)


def _scan_chunk(run: Run, rows: range, size: int) -> list:
    """(row, (thumbnail, content size, digest, properties) or None, reason or None) of each row of a run whose
    pixels are stored with it (one size, mostly: ``subject`` is measured for the chunk at once)."""
    decoded = [(row, *_decode_row(run, row)) for row in rows]
    usable = [i for i, (_, img, _) in enumerate(decoded)
              if img is not None and img.dtype == np.uint8 and img.ndim in (2, 3) and img.size]
    subject = dict(zip(usable, subject_shares([decoded[i][1] for i in usable]))) if usable else {}
    return [_scan_one(row, img, reason, size, subject.get(i)) for i, (row, img, reason) in enumerate(decoded)]


def _scan_files(root: str, rels: list[str], rows: range, size: int, *, single_thread: bool = False) -> list:
    """``_scan_chunk`` of a folder run's rows: ``rels`` their paths under the resolved data root ``root``.
    Top-level, for worker processes (``single_thread``: OpenCV keeps to the calling thread, one process per core)."""
    if single_thread:
        import cv2

        cv2.setNumThreads(1)
    base = Path(root)
    return [_scan_one(row, *_decode_file(base, rel), size) for row, rel in zip(rows, rels)]


def _bounded_map(pool: ThreadPoolExecutor, fn, items: list, in_flight: int) -> Iterator:
    """``pool.map`` keeping at most ``in_flight`` tasks queued, results in order (bounded memory)."""
    pending = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= in_flight:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


def scan_images(run: Run, *, thumb_size: int = 32, workers: int | None = None,
                progress: Progress | None = None) -> ImageScan:
    """Decode every row of ``run`` once and keep thumbnails, digests and properties.

    A row whose image cannot be read (missing file, outside the data set root,
    not decodable, over the pixel limit) is recorded in ``skipped`` with its
    reason; the others go on. ``workers``: see ``_scan_results``.
    """
    if not isinstance(thumb_size, int) or not 8 <= thumb_size <= 256:
        raise UserError(f"thumb_size must be a whole number of pixels in 8..256. Received: thumb_size={thumb_size!r}")
    n = run.n_images
    if run.data_root is None and not run.data_info.images_in_run:
        raise UserError(f"Run {run.id!r} has neither image files (no data root) nor images.npy: "
                         "there are no pixels to scan")
    thumbs = np.zeros((n, thumb_size, thumb_size), np.uint8)
    content = np.zeros((n, 2), np.int16)
    digest = np.zeros(n, np.uint64)
    readable = np.zeros(n, bool)
    props = {c: np.full(n, np.nan) for c in _PROPERTY_COLUMNS}
    skipped = []
    done = 0
    for results in _scan_results(run, thumb_size, workers):
        for row, value, reason in results:
            if value is None:
                skipped.append((row, reason))
                continue
            thumbs[row], content[row], digest[row], p = value[0], value[1], value[2], value[3]
            readable[row] = True
            for c in _PROPERTY_COLUMNS:
                props[c][row] = p[c]
        done += len(results)
        if progress is not None:
            progress(f"image scan: {done:,}/{n:,} images", done / max(n, 1))
    table = pd.DataFrame({"row": np.arange(n, dtype=np.int64), **props})
    table["grayscale"] = table["grayscale"].astype("boolean")
    for c in ("height", "width", "size"):
        table[c] = table[c].astype("Int64")
    paths = run.predictions["path"].astype(str).to_numpy()
    skipped_table = pd.DataFrame({"row": np.array([r for r, _ in skipped], dtype=np.int64),
                                  "path": [paths[r] for r, _ in skipped],
                                  "reason": [why for _, why in skipped]})
    return ImageScan(thumbnails=thumbs, content_size=content, digest=digest, readable=readable,
                     properties=table, skipped=skipped_table)


def _scan_results(run: Run, size: int, workers: int | None) -> Iterator[list]:
    """The scan's chunks of ``_scan_one`` results, in row order.

    A folder run of ``SCAN_PROCESS_MIN`` images or more is read in worker processes (``core.workers``, one per
    core up to ``workers``, default 4): decoding a small image is mostly Python around OpenCV's call, which
    threads run one at a time (the GIL; two threads were no faster than one on 10,000 PNGs). Where processes
    cannot start, and for fewer images or pixels stored with the run, threads (``workers`` of them, default one
    per core up to 8). A data root that may not be read (``Run.checked_root``) skips every row with its reason.
    """
    n = run.n_images
    run.predictions, run._pixels  # load once here, not once per thread
    threads = workers or min(8, os.cpu_count() or 2)
    chunks = [range(i, min(i + SCAN_CHUNK, n)) for i in range(0, n, SCAN_CHUNK)]
    if run.data_root is None or run.data_info.images_in_run:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            yield from _bounded_map(pool, lambda rows: _scan_chunk(run, rows, size), chunks, 2 * threads)
        return
    try:
        root = run.checked_root()
    except PermissionError as exc:
        yield [(row, None, _why(exc)) for row in range(n)]
        return
    rels = run.predictions["path"].astype(str).tolist()
    n_workers = cores() if workers is None else min(4, int(workers))
    if n_workers > 1 and n >= SCAN_PROCESS_MIN:
        tasks = [(str(root), rels[i:i + SCAN_PROCESS_CHUNK], range(i, min(i + SCAN_PROCESS_CHUNK, n)), size)
                 for i in range(0, n, SCAN_PROCESS_CHUNK)]
        done = 0
        try:
            for results in in_processes(_scan_files, tasks, n_workers, single_thread=True):
                done += 1
                yield results
            return
        except POOL_FAILURES:  # no worker processes here (a sandbox without semaphores, a killed worker)
            if done:  # some chunks are out already: the rest in this process
                for task in tasks[done:]:
                    yield _scan_files(*task)
                return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield from _bounded_map(pool, lambda rows: _scan_files(str(root), rels[rows.start:rows.stop], rows, size),
                                chunks, 2 * threads)


@dataclass(frozen=True)
class ImageScanConfig:
    """``thumb_size``: the side of the square grey thumbnails kept of every image."""

    thumb_size: int = 32

    def __post_init__(self):
        if not isinstance(self.thumb_size, int) or not 8 <= self.thumb_size <= 256:
            raise UserError(f"thumb_size must be a whole number of pixels in 8..256. Received: thumb_size={self.thumb_size!r}")


@derived.register("image_scan", version=2, config=ImageScanConfig,
                  description="one pass over the pixels: thumbnails, pixel digests and image properties")
def compute_image_scan(run: Run, config: ImageScanConfig, progress: Progress) -> derived.DerivedResult:
    """Arrays ``thumbnails`` (N, S, S) uint8, ``content_size`` (N, 2), ``digest`` (N,) uint64,
    ``readable`` (N,); tables ``properties`` and ``skipped`` (see ``ImageScan``)."""
    scan = scan_images(run, thumb_size=config.thumb_size, progress=progress)
    return derived.DerivedResult(
        arrays={"thumbnails": scan.thumbnails, "content_size": scan.content_size, "digest": scan.digest,
                "readable": scan.readable},
        tables={"properties": scan.properties, "skipped": scan.skipped},
        summary={"n_images": int(run.n_images), "n_readable": int(scan.readable.sum()),
                 "n_skipped": int(len(scan.skipped)), "thumb_size": config.thumb_size,
                 "skipped_examples": scan.skipped.head(5).to_dict("records")},
    )


def load_scan(run: Run, *, thumb_size: int = 32, progress: Progress | None = None) -> ImageScan:
    """The run's ``image_scan`` (stored, or computed and stored now)."""
    stored = derived.get(run, "image_scan", {"thumb_size": thumb_size}, progress=progress or False)
    return ImageScan(thumbnails=stored.array("thumbnails"), content_size=stored.array("content_size"),
                     digest=stored.array("digest"), readable=stored.array("readable"),
                     properties=stored.table("properties"), skipped=stored.table("skipped"))


# --------------------------------------------------------------------------- atypicality

def knn_atypicality(embeddings: np.ndarray, labels: np.ndarray, *, k: int = 10, max_reference: int = 2000,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How far each image lies from the other images of its class in embedding space.

    Parameters
    ----------
    embeddings : float array (N, D); compared by cosine distance (1 - cosine similarity).
    labels : int array (N,), the class of each row (rows with a negative label, or an embedding that
        is not finite, are left NaN and are no one's neighbour).
    k : neighbours averaged; max_reference : at most this many rows of each class (a seeded sample)
        are the neighbours searched, which bounds the cost by N * max_reference * D.

    Returns
    -------
    distance : float32 (N,), mean cosine distance to the k nearest reference rows of the class (itself excluded)
    robust_z : float32 (N,), (distance - class median) / (1.4826 * class MAD): 0 typical, 3 very odd
    percentile : float32 (N,), rank of the distance within the class, in [0, 1]

    >>> e = np.array([[1, 0], [1, 0.01], [1, -0.01], [0, 1]], np.float32)
    >>> d, z, p = knn_atypicality(e, np.zeros(4, int), k=1)
    >>> np.round(d.astype(float), 3).tolist(), float(p[3])   # the last one is far from the others
    ([0.0, 0.0, 0.0, 0.99], 1.0)
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise UserError(f"embeddings must be (N, D) with N = len(labels). Received: {embeddings.shape} and "
                         f"{labels.shape}")
    if k < 1 or max_reference < 2:
        raise UserError(f"k must be >= 1 and max_reference >= 2. Received: k={k}, max_reference={max_reference}")
    n = len(labels)
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():  # a NaN row would make every distance of its class NaN: it is left out, and NaN itself
        labels = np.where(finite, labels, -1)
        embeddings = np.where(finite[:, None], embeddings, 0.0).astype(np.float32)
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    distance = np.full(n, np.nan, np.float32)
    robust_z = np.full(n, np.nan, np.float32)
    percentile = np.full(n, np.nan, np.float32)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue
        reference = members if len(members) <= max_reference else np.sort(
            rng.choice(members, max_reference, replace=False))
        position = np.full(n, -1)
        position[reference] = np.arange(len(reference))
        kk = min(k, len(reference) - 1)
        ref = unit[reference]
        for start in range(0, len(members), 4096):
            rows = members[start:start + 4096]
            sims = unit[rows] @ ref.T
            own = position[rows]
            mine = own >= 0
            sims[np.flatnonzero(mine), own[mine]] = -np.inf  # an image is not its own neighbour
            top = np.partition(-sims, kk - 1, axis=1)[:, :kk]
            distance[rows] = np.maximum(1.0 + top.mean(axis=1), 0.0)  # 1 - mean cosine similarity
        d = distance[members].astype(np.float64)
        median = np.median(d)
        mad = 1.4826 * np.median(np.abs(d - median))
        robust_z[members] = (d - median) / (mad if mad > 1e-12 else max(d.std(), 1e-12))
        ranks = pd.Series(d).rank(method="average").to_numpy()
        percentile[members] = (ranks - 1) / max(len(d) - 1, 1)
    return distance, robust_z, percentile


# --------------------------------------------------------------------------- error rates by property

ERROR_RATE_COLUMNS = ["class", "property", "n", "errors", "error_rate", "low_n", "low_errors", "low_rate",
                      "low_ratio", "low_threshold", "high_n", "high_errors", "high_rate", "high_ratio",
                      "high_threshold"]
ALL_CLASSES = "(all classes)"


def _tail_groups(values: np.ndarray, tail: float, min_count: int) -> tuple[np.ndarray | None, np.ndarray | None,
                                                                             float, float]:
    """Masks of the low and high tail of ``values`` (None where the tail is not a real minority)."""
    ok = ~np.isnan(values)
    if ok.sum() < 2 * min_count:
        return None, None, np.nan, np.nan
    lo_t, hi_t = np.quantile(values[ok], [tail, 1.0 - tail])
    low, high = ok & (values <= lo_t), ok & (values >= hi_t)
    limit = 0.5 * ok.sum()  # ties can make a "tail" the majority (a property constant in the class)
    return ((low if min_count <= low.sum() <= limit else None),
            (high if min_count <= high.sum() <= limit else None), float(lo_t), float(hi_t))


def property_error_rates(values: dict[str, np.ndarray], labels: np.ndarray, correct: np.ndarray, *,
                         classes: list[str], tail: float = 0.1, min_count: int = 5) -> pd.DataFrame:
    """Error rate in the low and high tail of each property, per class, against the class's rate.

    Parameters
    ----------
    values : {property: float or bool array (N,)}; NaN = unknown. A boolean property's
        "low" group is False (e.g. colour images), its "high" group True.
    labels : int array (N,), true classes (index into ``classes``); correct : bool array (N,).
    tail : fraction in each tail (0.1: the bottom and top deciles of the class).
    min_count : a tail with fewer images (or more than half the class, from ties) is left NaN.

    Returns
    -------
    DataFrame with ``ERROR_RATE_COLUMNS``: one row per (class, property), then one per
    property for ``ALL_CLASSES`` (each image in its own class's tail, pooled).
    ``low_ratio`` = low_rate / error_rate (NaN when the class makes no error).

    >>> v = {"brightness": np.arange(20) / 20}
    >>> right = np.ones(20, bool); right[:2] = False      # the two darkest images are wrong
    >>> t = property_error_rates(v, np.zeros(20, int), right, classes=["shirt"], min_count=2)
    >>> t.loc[0, ["error_rate", "low_rate", "low_ratio", "high_rate"]].tolist()
    [0.1, 1.0, 10.0, 0.0]
    """
    if not 0 < tail < 0.5:
        raise UserError(f"tail must be in (0, 0.5). Received: tail={tail}")
    labels = np.asarray(labels)
    correct = np.asarray(correct, dtype=bool)
    wrong = ~correct
    out = []
    for prop, raw in values.items():
        raw = np.asarray(raw)
        boolean = raw.dtype == bool or prop in BOOLEAN_WORDS
        vals = raw.astype(np.float64)
        pooled_low = np.zeros(len(vals), bool)
        pooled_high = np.zeros(len(vals), bool)
        for c in range(len(classes)):
            in_class = labels == c
            if not in_class.any():
                continue
            v = vals[in_class]
            w = wrong[in_class]
            if boolean:
                known = ~np.isnan(v)
                low, high = known & (v == 0), known & (v == 1)
                low = low if low.sum() >= min_count and high.sum() >= min_count else None
                high = high if low is not None else None
                lo_t, hi_t = 0.0, 1.0
            else:
                low, high, lo_t, hi_t = _tail_groups(v, tail, min_count)
            if low is not None:
                pooled_low[np.flatnonzero(in_class)[low]] = True
            if high is not None:
                pooled_high[np.flatnonzero(in_class)[high]] = True
            out.append(_rate_row(classes[c], prop, w, low, high, lo_t, hi_t))
        has_class = labels >= 0
        out.append(_rate_row(ALL_CLASSES, prop, wrong[has_class],
                             pooled_low[has_class] if pooled_low.any() else None,
                             pooled_high[has_class] if pooled_high.any() else None, np.nan, np.nan))
    return pd.DataFrame(out, columns=ERROR_RATE_COLUMNS)


def _rate_row(name: str, prop: str, wrong: np.ndarray, low, high, lo_t: float, hi_t: float) -> dict:
    n, errors = len(wrong), int(wrong.sum())
    rate = errors / n if n else np.nan
    row = {"class": name, "property": prop, "n": n, "errors": errors, "error_rate": rate}
    for side, mask, threshold in (("low", low, lo_t), ("high", high, hi_t)):
        if mask is None:
            row.update({f"{side}_n": 0, f"{side}_errors": 0, f"{side}_rate": np.nan, f"{side}_ratio": np.nan,
                        f"{side}_threshold": np.nan})
            continue
        k, m = int(wrong[mask].sum()), int(mask.sum())
        r = k / m
        row.update({f"{side}_n": m, f"{side}_errors": k, f"{side}_rate": r,
                    f"{side}_ratio": r / rate if rate and rate > 0 else np.nan, f"{side}_threshold": threshold})
    return row


def error_rate_findings(table: pd.DataFrame, *, tail: float = 0.1, min_ratio: float = 1.5,
                        min_errors: int = 3) -> pd.DataFrame:
    """The tails of ``property_error_rates`` where errors are at least ``min_ratio`` times as frequent.

    Returns a DataFrame ``class``, ``property``, ``side`` (low/high), ``n``,
    ``errors``, ``rate``, ``class_rate``, ``ratio``, ``z`` (binomial z-score of
    the tail's errors under the class's rate) and ``text``, strongest first, e.g.
    "errors are 3.0x more frequent among the darkest 10% of Shirt: 30% (15 of 50) vs 10% overall".
    """
    rows = []
    for rec in table.to_dict("records"):
        for side in ("low", "high"):
            ratio, k, m, p = rec[f"{side}_ratio"], rec[f"{side}_errors"], rec[f"{side}_n"], rec["error_rate"]
            if not (ratio == ratio) or ratio < min_ratio or k < min_errors:  # ratio == ratio: not NaN
                continue
            z = (k - m * p) / np.sqrt(max(m * p * (1 - p), 1e-12))
            rows.append({"class": rec["class"], "property": rec["property"], "side": side, "n": m, "errors": k,
                         "rate": k / m, "class_rate": p, "ratio": ratio, "z": float(z),
                         "text": _finding_text(rec, side, tail)})
    out = pd.DataFrame(rows, columns=["class", "property", "side", "n", "errors", "rate", "class_rate", "ratio",
                                      "z", "text"])
    return out.sort_values(["z", "ratio"], ascending=False, kind="stable").reset_index(drop=True)


def _finding_text(rec: dict, side: str, tail: float) -> str:
    prop, name = rec["property"], rec["class"]
    k, m, rate = rec[f"{side}_errors"], rec[f"{side}_n"], rec[f"{side}_rate"]
    if prop in BOOLEAN_WORDS:
        group = BOOLEAN_WORDS[prop][0 if side == "low" else 1] + ("" if name == ALL_CLASSES else f" of {name}")
    else:
        words = TAIL_WORDS.get(prop, (f"lowest-{prop}", f"highest-{prop}"))
        where = "each class" if name == ALL_CLASSES else name
        group = f"the {words[0 if side == 'low' else 1]} {tail:.0%} of {where}"
    return (f"errors are {rec[f'{side}_ratio']:.1f}x more frequent among {group}: {rate:.0%} ({k:,} of {m:,}) "
            f"vs {rec['error_rate']:.0%} overall")


# --------------------------------------------------------------------------- the derived kind

@dataclass(frozen=True)
class ImagePropertiesConfig:
    """``thumb_size`` of the shared image scan; atypicality from the ``k`` nearest of at most
    ``max_reference`` labelled images (sampled with ``seed``); the error rate of each property's
    ``tail`` (fraction, each side) per class, for classes with at least ``min_count`` images there."""

    thumb_size: int = 32
    k: int = 10
    max_reference: int = 2000
    tail: float = 0.1
    min_count: int = 5
    seed: int = 0

    def __post_init__(self):
        ImageScanConfig(thumb_size=self.thumb_size)
        if not isinstance(self.k, int) or self.k < 1:
            raise UserError(f"image_properties: k must be a positive integer. Received: {self.k!r}")
        if not 0.0 < float(self.tail) < 0.5:
            raise UserError(f"image_properties: tail must be between 0 and 0.5. Received: {self.tail!r}")


ATYPICAL_QUANTILE = 0.95  # the odd-images card: the evaluated images above this atypicality quantile
MAX_PROPERTY_CARDS = 5


def finding_rows(properties: pd.DataFrame, error_rates: pd.DataFrame, finding: pd.Series) -> np.ndarray:
    """The rows of one property finding (its class, or every class, and its tail of the property).

    ``properties``: the ``image_properties`` table of every image; ``error_rates``: its per-class
    thresholds. Rows of the evaluated split (``finding``'s group), most extreme value first.
    """
    prop, side = finding["property"], finding["side"]
    rates = error_rates[(error_rates["property"] == prop) & (error_rates["class"] != "(all classes)")]
    if finding["class"] != "(all classes)":
        rates = rates[rates["class"] == finding["class"]]
    threshold = dict(zip(rates["class"], rates[f"{side}_threshold"]))
    per_row = properties["true_label"].map(threshold).to_numpy(float)
    value = properties[prop].to_numpy(float)
    inside = (value <= per_row) if side == "low" else (value >= per_row)
    inside &= ~np.isnan(per_row)
    picked = properties[inside]
    picked = picked.sort_values(prop, ascending=side == "low")
    return picked["row"].to_numpy(np.int64)


def property_findings(run: Run, stored) -> Findings:
    """Cards for the most atypical evaluated images (unless a property finding already names
    atypicality) and for each of the ``MAX_PROPERTY_CARDS`` strongest property findings."""
    props = stored.table("properties")
    evaluated = props[run.eval_mask()[props["row"].to_numpy(np.int64)]]
    cards = []
    findings = stored.table("findings")
    atypical = evaluated["atypicality"].to_numpy(float)
    if np.isfinite(atypical).any() and not (findings["property"] == "atypicality").any():
        cut = float(np.nanquantile(atypical, ATYPICAL_QUANTILE))
        odd = evaluated[atypical >= cut].sort_values("atypicality", ascending=False)
        rows = odd["row"].to_numpy(np.int64)
        wrong = int((~odd["correct"].to_numpy(bool)).sum())
        base = float((~evaluated["correct"]).mean()) if len(evaluated) else 0.0
        cards.append(Card("atypical", "image_properties", "Odd images: the most atypical",
                          f"The {1 - ATYPICAL_QUANTILE:.0%} most atypical evaluated images (far from their "
                          f"class's neighbours in embedding space): {wrong:,} of {rows.size:,} misclassified "
                          f"({wrong / max(rows.size, 1):.0%}, against {base:.0%} overall).",
                          rows, "most atypical first"))
    rates = stored.table("error_rates")
    for i, finding in findings.head(MAX_PROPERTY_CARDS).iterrows():
        cards.append(Card(f"property-{i}", "image_properties",
                          f"Odd images: {finding['property']}, "
                          + ("every class" if finding["class"] == "(all classes)" else str(finding["class"])),
                          str(finding["text"]), finding_rows(evaluated, rates, finding),
                          f"{'lowest' if finding['side'] == 'low' else 'highest'} {finding['property']} first"))
    return Findings(cards=tuple(cards))


@derived.register("image_properties", version=2, config=ImagePropertiesConfig, findings=property_findings,
                  reads=("image_scan",),
                  description="image properties and atypicality, and the error rate in their tails per class")
def compute_image_properties(run: Run, config: ImagePropertiesConfig, progress: Progress) -> derived.DerivedResult:
    """Per-image properties and atypicality, and error rates by property for the evaluated split.

    Arrays (N,): ``atypicality`` (robust z within the true class, NaN without
    embeddings), ``knn_distance``. Tables: ``properties`` (one row per image:
    ``row``, ``path``, ``split``, ``true_label``, ``correct`` and every property),
    ``error_rates`` (``property_error_rates`` of the evaluated split) and
    ``findings`` (``error_rate_findings``: the tails where errors are frequent).

    Options: ``thumb_size`` (of the shared image scan), ``k`` and
    ``max_reference`` (see ``knn_atypicality``), ``tail`` and ``min_count``
    (see ``property_error_rates``), ``seed``.
    """
    notes = []
    preds = run.predictions
    labels = preds["true"].to_numpy().astype(np.int64)
    n = len(labels)
    table = pd.DataFrame({"row": np.arange(n, dtype=np.int64), "path": preds["path"].astype(str).to_numpy(),
                          "split": preds["split"].astype(str).to_numpy(),
                          "true_label": preds["true_label"].astype(str).to_numpy(),
                          "correct": preds["correct"].to_numpy()})
    for c in _PROPERTY_COLUMNS:  # the same columns with or without pixels
        table[c] = pd.array([pd.NA] * n, dtype="boolean") if c == "grayscale" else np.nan
    try:
        scan = load_scan(run, thumb_size=config.thumb_size,
                         progress=lambda m, f: progress(m, 0.8 * f))
        for c in _PROPERTY_COLUMNS:
            table[c] = scan.properties[c].array
        if len(scan.skipped):
            notes.append(f"{len(scan.skipped):,} images could not be read (see image_scan's skipped table)")
    except ValueError as exc:  # a run without pixels still gets atypicality
        notes.append(f"No image properties: {exc}")
    progress("image properties: atypicality in embedding space", 0.85)
    if run.embeddings is not None:
        distance, robust_z, _ = knn_atypicality(run.embeddings, labels, k=config.k,
                                                max_reference=config.max_reference,
                                                seed=config.seed)
        n_bad = int((~np.isfinite(np.asarray(run.embeddings)).all(axis=1)).sum())
        if n_bad:
            notes.append(f"{n_bad:,} images have embeddings that are not finite (NaN or inf): no atypicality "
                         "for them, and they are no other image's neighbour")
    else:
        distance = robust_z = np.full(n, np.nan, np.float32)
        notes.append("The run has no embeddings: no atypicality")
    table["atypicality"] = robust_z
    table["knn_distance"] = distance
    eval_rows = run.eval_mask()
    values = {p: (table[p].to_numpy(dtype=bool, na_value=False) if p == "grayscale" else
                  table[p].to_numpy(dtype=np.float64, na_value=np.nan))[eval_rows]
              for p in PROPERTIES if p in table and table[p].notna().any()}
    progress("image properties: error rates by property", 0.95)
    rates = property_error_rates(values, labels[eval_rows], table["correct"].to_numpy()[eval_rows],
                                 classes=run.classes, tail=float(config.tail), min_count=config.min_count)
    findings = error_rate_findings(rates, tail=float(config.tail))
    progress("image properties: done", 1.0)
    return derived.DerivedResult(
        arrays={"atypicality": robust_z.astype(np.float32), "knn_distance": distance.astype(np.float32)},
        tables={"properties": table, "error_rates": rates, "findings": findings},
        summary={"n_findings": int(len(findings)), "split": run.eval_split,
                 "top_finding": findings["text"].iloc[0] if len(findings) else None,
                 "n_images": n, "properties": sorted(values), "notes": notes,
                 "top_findings": findings["text"].head(5).tolist()},
    )
