"""Labelled image data sets: discovery, class order, and parallel batched decoding.

Layouts understood by ``load_dataset(path)``:

* **folder**: one sub-folder per class (Keras/ImageFolder), e.g.
  ``101_ObjectCategories/<class>/image_0001.jpg``; optionally below split
  folders ``train/``, ``val/`` (or ``valid/``, ``validation/``), ``test/``;
* **flat**: image files directly in the folder, named ``<class>_<number>.<ext>``
  (class names may contain underscores: ``abraham_grampa_simpson_3.jpg``);
* **csv**: a manifest file ``path,label[,split]``, paths relative to it;
* **builtin**: ``fashion-mnist`` (IDX files) and ``digits`` (scikit-learn).

Class order: the ``classes`` argument, else ``classes.txt`` in the data root,
else sorted names (Keras' ``image_dataset_from_directory`` order).
A data set holds N images; ``labels`` are ints in ``range(K)``; ``splits`` are
'train', 'val', 'test' or 'all'. Files that cannot be used are listed in
``skipped`` with a reason, never dropped silently: among them symbolic links
that lead outside the data set root (as the CSV loader refuses paths outside
its folder) and, when decoded, images over the pixel limit (see core.data.images).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2  # after core.data.images, which sets OpenCV's own pixel cap before OpenCV loads
import numpy as np

from core.data.images import IMAGE_EXTENSIONS, fit_to_input, max_pixels_limit, read_image
from core.errors import UserError

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
BUILTINS = ("fashion-mnist", "digits")
_FLAT_NAME = re.compile(r"^(?P<label>.+?)_(?P<number>\d+)$")
OUTSIDE_ROOT = "symbolic link pointing outside the data set root"


class DatasetError(UserError):
    """A data set that cannot be used at all (the message names the value at fault)."""


@dataclass
class ImageDataset:
    name: str
    kind: str
    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    splits: np.ndarray
    root: Path | None = None
    source: str | None = None
    pixels: np.ndarray | None = None
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        counts = {str(s): int((self.splits == s).sum()) for s in np.unique(self.splits)}
        return (f"ImageDataset({self.name!r}, kind={self.kind}, n={len(self)}, "
                f"classes={len(self.classes)}, splits={counts}, skipped={len(self.skipped)})")

    def subset(self, index: np.ndarray) -> "ImageDataset":
        """Rows ``index`` (int positions or a boolean mask), skipped list kept."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return replace(
            self, paths=[self.paths[i] for i in index], labels=self.labels[index],
            splits=self.splits[index],
            pixels=self.pixels[index] if self.pixels is not None else None,
        )

    def split_names(self) -> list[str]:
        return sorted(set(self.splits.tolist()))

    def fingerprint(self) -> str:
        """Hash of class list, rows and file sizes/mtimes (or pixels): changes when data does."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.classes).encode())
        h.update(self.labels.astype(np.int64).tobytes())
        h.update("\x1f".join(self.splits.tolist()).encode())
        if self.pixels is not None:
            h.update(np.ascontiguousarray(self.pixels).tobytes())
        else:
            for rel in self.paths:
                st = (self.root / rel).stat()
                h.update(f"{rel}\x1f{st.st_size}\x1f{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        """The manifest's ``data`` entry."""
        return {
            "name": self.name, "kind": self.kind, "path": self.source,
            "root": str(self.root.resolve()) if self.root else None,
            "n_images": len(self), "images_in_run": self.pixels is not None,
        }

    def read(self, i: int, *, max_pixels: int | None = None) -> np.ndarray:
        """Pixels of row i, RGB/gray uint8 (raises ValueError if undecodable or over the pixel limit).

        Decoded whole, as a training pipeline decodes it; ``max_pixels``
        overrides the pixel limit (see core.data.images).
        """
        if self.pixels is not None:
            return self.pixels[i]
        return read_image(self.root / self.paths[i], max_pixels=max_pixels)


@dataclass
class Batch:
    index: np.ndarray          # row positions in the data set that decoded
    images: np.ndarray         # uint8 (n, height, width, channels)
    failed: list[dict]         # {'path', 'reason'} for rows that did not decode


def iter_batches(
    dataset: ImageDataset, *, size: tuple[int, int], channels: int, batch_size: int = 64,
    workers: int | None = None, prefetch: int = 2, max_pixels: int | None = None, resize: str = "area",
) -> Iterator[Batch]:
    """Decode and resize in a thread pool (OpenCV releases the GIL), a batch at a time.

    Up to ``prefetch`` batches are decoded ahead while the caller works on the
    current one, so decoding overlaps inference. An image larger than
    ``max_pixels`` (default ``core.data.images.max_pixels_limit()``) is refused from
    its header and reported in ``Batch.failed`` like an undecodable one. ``resize``: see
    ``core.data.preprocess.RESIZE_METHODS``.
    """
    n = len(dataset)
    workers = workers or min(8, os.cpu_count() or 1)
    max_pixels = max_pixels_limit() if max_pixels is None else max_pixels  # a bad setting stops here

    def load_rows(rows: range, positions: range, out: np.ndarray, errors: list) -> None:
        # each worker decodes a strided share of the batch straight into the batch array
        for i, j in zip(rows, positions):
            try:
                out[j] = fit_to_input(dataset.read(i, max_pixels=max_pixels),
                                      size=size, channels=channels, resize=resize)
            except (ValueError, OSError, MemoryError) as exc:  # cv2.imdecode returns None, no cv2.error
                # the row's path is beside the reason: not the file's absolute path again (a report is shared)
                where = f"{dataset.root / dataset.paths[i]}: " if dataset.root is not None else ""
                errors[j] = str(exc).removeprefix(where) if where else str(exc)

    def load_batch(start: int) -> Batch:
        stop = min(start + batch_size, n)
        out = np.empty((stop - start, *size, channels), np.uint8)
        errors: list[str | None] = [None] * (stop - start)
        shares = [(range(start + w, stop, workers), range(w, stop - start, workers)) for w in range(workers)]
        if workers > 1:
            list(pool.map(lambda share: load_rows(*share, out, errors), shares))
        else:
            load_rows(range(start, stop), range(stop - start), out, errors)
        good = [j for j, err in enumerate(errors) if err is None]
        failed = [{"path": dataset.paths[start + j], "reason": err} for j, err in enumerate(errors)
                  if err is not None]
        images = out if len(good) == len(out) else out[good]
        return Batch(np.asarray(good, dtype=np.int64) + start, images, failed)

    # One image per worker thread; OpenCV's own worker threads on top would only contend.
    cv_threads = cv2.getNumThreads()
    if workers > 1:
        cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(max_workers=1) as ahead:
            starts = list(range(0, n, batch_size))
            pending = [ahead.submit(load_batch, s) for s in starts[:prefetch]]
            for j in range(len(starts)):
                batch = pending.pop(0).result()
                if j + prefetch < len(starts):
                    pending.append(ahead.submit(load_batch, starts[j + prefetch]))
                yield batch
    finally:
        cv2.setNumThreads(cv_threads)


# --------------------------------------------------------------------------- discovery

def load_dataset(
    path: str | os.PathLike | None = None, *, classes: Sequence[str] | None = None,
    builtin: str | None = None,
) -> ImageDataset:
    """Open a data set by path (folder, flat folder, CSV manifest) or built-in name.

    ``path`` may also be a built-in name ('fashion-mnist', 'digits').
    """
    if builtin is None and path is not None and str(path) in BUILTINS:
        builtin = str(path)
    if builtin is not None:
        if builtin == "fashion-mnist":
            return load_fashion_mnist()
        if builtin == "digits":
            return load_digits()
        raise DatasetError(f"Unknown built-in data set {builtin!r}. Available: {list(BUILTINS)}")
    if path is None:
        raise DatasetError("No data set given: pass a folder, a CSV manifest or a built-in name")
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"Data path does not exist: {str(p)!r}")
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise DatasetError(f"Unknown data layout for file {str(p)!r}: expected a .csv manifest "
                               "(path,label[,split]) or a folder")
        ds = _load_csv(p, classes)
    else:
        ds = _load_folder(p, classes)
    if len(ds) == 0:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in ds.skipped[:3])
        raise DatasetError(f"No usable images in {str(p)!r}" + (f" (e.g. {reasons})" if reasons else ""))
    return ds


def _class_order(found: Sequence[str], given: Sequence[str] | None, root: Path) -> list[str]:
    if given is None and (root / "classes.txt").is_file():
        given = [ln.strip() for ln in (root / "classes.txt").read_text().splitlines() if ln.strip()]
    if given is None:
        return sorted(set(found))
    given = list(given)
    if len(set(given)) != len(given):
        raise DatasetError(f"Class list has duplicates: {given}")
    unknown = sorted(set(found) - set(given))
    if unknown:
        raise DatasetError(f"Data has classes not in the given class list: {unknown[:10]} "
                           f"(class list: {given[:10]}{'...' if len(given) > 10 else ''})")
    return given


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _link_problem(path: Path, real_root: Path) -> str | None:
    """Why the symbolic link ``path`` is not followed (it leads out of ``real_root``, nowhere,
    or round in a loop), or None (not a link, or a link to something inside the root)."""
    if not path.is_symlink():
        return None
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python 3.11's "Symlink loop"
        return "symbolic link loop"
    if not target.is_relative_to(real_root):
        return OUTSIDE_ROOT
    if not target.exists():
        return "broken symbolic link (its target does not exist)"
    return None


def _sub_folders(folder: Path, root: Path, real_root: Path, skipped: list[dict]) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted; links leading out of the root go to ``skipped``."""
    folders = []
    for d in sorted(folder.iterdir()):
        if not (_visible(d) and d.is_dir()):
            continue
        problem = _link_problem(d, real_root)
        if problem:
            skipped.append({"path": str(d.relative_to(root)), "reason": problem})
        else:
            folders.append(d)
    return folders


def _files_below(folder: Path, root: Path, real_root: Path, skipped: list[dict]) -> list[Path]:
    """Visible files anywhere below ``folder``, sorted, following symbolic links (to files or
    folders) that stay inside the root; the others are listed in ``skipped`` with the reason."""
    files: list[Path] = []

    def visit(directory: Path, ancestors: frozenset[Path]) -> None:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:  # DirEntry's type tests cost no system call for a plain file
            path = directory / entry.name
            problem = _link_problem(path, real_root) if entry.is_symlink() else None
            if problem:
                if _visible(path):
                    skipped.append({"path": str(path.relative_to(root)), "reason": problem})
            elif entry.is_dir():
                real = path.resolve()
                if real in ancestors:  # a link back up the tree
                    skipped.append({"path": str(path.relative_to(root)), "reason": "symbolic link loop"})
                else:
                    visit(path, ancestors | {real})
            elif entry.is_file() and _visible(path):
                files.append(path)

    visit(folder, frozenset({folder.resolve()}))
    return sorted(files)


def _load_folder(root: Path, classes: Sequence[str] | None) -> ImageDataset:
    real_root = root.resolve()
    skipped: list[dict] = []
    subdirs = _sub_folders(root, root, real_root, skipped)
    split_dirs = {d: SPLIT_ALIASES[d.name.lower()] for d in subdirs if d.name.lower() in SPLIT_ALIASES}
    if split_dirs and len(split_dirs) == len(subdirs):
        parts = list(split_dirs.items())
    elif subdirs:
        parts = [(root, "all")]
    else:
        return _load_flat(root, classes, skipped=skipped)

    rows: list[tuple[str, str, str]] = []
    for base, split in parts:
        class_dirs = subdirs if base == root else _sub_folders(base, root, real_root, skipped)
        if not class_dirs:
            raise DatasetError(f"Unknown layout: {str(base)!r} has no class sub-folders")
        for cdir in class_dirs:
            files = _files_below(cdir, root, real_root, skipped)
            images = [f for f in files if _is_image(f)]
            skipped += [{"path": str(f.relative_to(root)), "reason": f"not an image file ({f.suffix or 'no extension'})"}
                        for f in files if not _is_image(f)]
            if not images:
                raise DatasetError(f"Class folder has no images: {str(cdir)!r}")
            rows += [(str(f.relative_to(root)), cdir.name, split) for f in images]
    order = _class_order([r[1] for r in rows], classes, root)
    index = {c: i for i, c in enumerate(order)}
    return ImageDataset(
        name=root.resolve().name, kind="folder", classes=order,
        paths=[r[0] for r in rows], labels=np.array([index[r[1]] for r in rows], dtype=np.int64),
        splits=np.array([r[2] for r in rows], dtype=str), root=root, source=str(root),
        skipped=skipped,
    )


def _load_flat(root: Path, classes: Sequence[str] | None, *, skipped: list[dict]) -> ImageDataset:
    """Image files directly in ``root``; ``skipped`` already lists its sub-folder links that
    lead out of the root (``_load_folder``)."""
    real_root = root.resolve()
    files, rows = [], []
    for f in sorted(root.iterdir()):
        if not _visible(f) or f.name == "classes.txt" or f.is_dir():
            continue
        problem = _link_problem(f, real_root)
        if problem:
            skipped.append({"path": f.name, "reason": problem})
        elif f.is_file():
            files.append(f)
    for f in files:
        if not _is_image(f):
            skipped.append({"path": f.name, "reason": f"not an image file ({f.suffix or 'no extension'})"})
            continue
        m = _FLAT_NAME.match(f.stem)
        if not m:
            skipped.append({"path": f.name, "reason": "name is not <class>_<number>.<ext>"})
            continue
        rows.append((f.name, m.group("label")))
    if not rows and not skipped:
        raise DatasetError(f"Unknown layout: {str(root)!r} has no class folders and no image files")
    order = _class_order([r[1] for r in rows], classes, root)
    index = {c: i for i, c in enumerate(order)}
    return ImageDataset(
        name=root.resolve().name, kind="flat", classes=order, paths=[r[0] for r in rows],
        labels=np.array([index[r[1]] for r in rows], dtype=np.int64),
        splits=np.full(len(rows), "all"), root=root, source=str(root), skipped=skipped,
    )


def _load_csv(manifest: Path, classes: Sequence[str] | None) -> ImageDataset:
    root = manifest.parent
    rows, skipped = [], []
    with manifest.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        for lineno, rec in enumerate(reader, start=1):
            if not rec or all(not c.strip() for c in rec):
                continue
            if lineno == 1 and [c.strip().lower() for c in rec[:2]] == ["path", "label"]:
                continue
            if len(rec) < 2:
                skipped.append({"path": f"{manifest.name}:{lineno}", "reason": "needs path,label[,split]"})
                continue
            rel, label = rec[0].strip(), rec[1].strip()
            split = SPLIT_ALIASES.get(rec[2].strip().lower(), None) if len(rec) > 2 and rec[2].strip() else "all"
            file = (root / rel).resolve()
            if split is None:
                skipped.append({"path": rel, "reason": f"unknown split {rec[2].strip()!r} (train, val, test)"})
            elif not file.is_relative_to(root.resolve()):
                skipped.append({"path": rel, "reason": "outside the manifest's folder"})
            elif not file.is_file():
                skipped.append({"path": rel, "reason": "file not found"})
            elif not _is_image(file):
                skipped.append({"path": rel, "reason": f"not an image file ({file.suffix or 'no extension'})"})
            else:
                rows.append((rel, label, split))
    order = _class_order([r[1] for r in rows], classes, root)
    index = {c: i for i, c in enumerate(order)}
    return ImageDataset(
        name=manifest.stem, kind="csv", classes=order, paths=[r[0] for r in rows],
        labels=np.array([index[r[1]] for r in rows], dtype=np.int64),
        splits=np.array([r[2] for r in rows], dtype=str), root=root, source=str(manifest),
        skipped=skipped,
    )


# --------------------------------------------------------------------------- built-ins

def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or plain) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"Not an unsigned-byte IDX file: {str(path)!r}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"Truncated IDX file {str(path)!r}: {body.size} bytes for shape {dims}")
    return body.reshape(dims)


def fashion_mnist_dirs() -> list[Path]:
    """Where Fashion-MNIST IDX files are looked for, in order."""
    dirs = []
    if os.environ.get("FASHION_MNIST_DIR"):
        dirs.append(Path(os.environ["FASHION_MNIST_DIR"]).expanduser())
    dirs.append(DEBIAN_FASHION_MNIST)
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    dirs.append(keras_home / "datasets" / "fashion-mnist")
    return dirs


def find_fashion_mnist() -> Path | None:
    for d in fashion_mnist_dirs():
        if all((d / f).is_file() for pair in FASHION_MNIST_FILES.values() for f in pair):
            return d
    return None


def load_fashion_mnist(*, download: bool = False) -> ImageDataset:
    """Fashion-MNIST from IDX files ($FASHION_MNIST_DIR, the Debian package, the Keras cache).

    With ``download=True`` and no local copy, Keras' downloader fetches it (network).
    """
    d = find_fashion_mnist()
    if d is None and download:
        from keras.datasets import fashion_mnist  # the real user's download path
        fashion_mnist.load_data()
        d = find_fashion_mnist()
    if d is None:
        raise DatasetError(
            "Fashion-MNIST not found in " + ", ".join(str(x) for x in fashion_mnist_dirs())
            + ": install the Debian package dataset-fashion-mnist or set FASHION_MNIST_DIR"
        )
    pixels, labels, splits, paths = [], [], [], []
    for split, (img_file, lbl_file) in FASHION_MNIST_FILES.items():
        x, y = _read_idx(d / img_file), _read_idx(d / lbl_file)
        if len(x) != len(y):
            raise DatasetError(f"{d / img_file}: {len(x)} images but {len(y)} labels")
        pixels.append(x); labels.append(y.astype(np.int64))
        splits += [split] * len(x)
        paths += [f"{split}/{i:05d}" for i in range(len(x))]
    return ImageDataset(
        name="fashion-mnist", kind="fashion-mnist", classes=list(FASHION_MNIST_CLASSES),
        paths=paths, labels=np.concatenate(labels), splits=np.array(splits, dtype=str),
        pixels=np.concatenate(pixels), source=str(d),
    )


def load_digits(*, test_size: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), scaled to 0-255, stratified split."""
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_digits()
    pixels = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    idx = np.arange(len(labels))
    _, test_idx = train_test_split(idx, test_size=test_size, stratify=labels, random_state=seed)
    splits = np.full(len(labels), "train", dtype="<U5")
    splits[test_idx] = "test"
    return ImageDataset(
        name="digits", kind="digits", classes=[str(i) for i in range(10)],
        paths=[f"{s}/{i:04d}" for i, s in enumerate(splits)], labels=labels, splits=splits,
        pixels=pixels, source="sklearn.datasets.load_digits",
    )
