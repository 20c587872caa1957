"""Leakage through edits: planted copies of training images in test/, made 13-14 ways, plus hard
look-alikes, found (or not) by ``duplicates``, CleanVision and perceptual hashes, side by side.

Two seeded folders of real files (PNG, JPEG where a kind says so), written under ``--folder``:

* ``gray``: 10,000 28 x 28 grayscale images from Fashion-MNIST's *test* split (8,000 in train/,
  2,000 in test/); ``--per-kind`` test images are copies of training images made each way below;
  ``--per-kind`` others are *look-alikes*: for a training image, the image of the same class closest
  to it in pixels among Fashion-MNIST's 60,000 *training* images (none of which is in the folder).
* ``colour``: 2,000 96 x 96 colour scenes (1,600 train, 400 test) drawn from families of similar
  scenes (the same shapes, one moved or recoloured); look-alikes are the closest sibling in pixels.

Kinds: byte copy, PNG re-encode (pixels identical, file differs), JPEG q60, flip left-right, flip
upside down, crop to 85-92% + resize back, rotate 3-5°, scale 0.7x or 1.5x, shift 3 px (1/10 of the
side), blur sigma 0.8 (28 px; 2.7 px at 96), Gaussian noise sigma 8, gamma 0.8 or 1.25, contrast x0.7-0.85
+ brightness +10..40, and (colour only) grayscale conversion.

Per method: recall per kind, look-alikes reported (of the planted ones), *other* train-test pairs per
1,000 test images, wall time, CPU time and peak memory (each method runs in its own process, decoding the
files itself; for ``duplicates``, whose verification runs in worker processes, CPU counts the workers and peak
memory is the resident memory of the process and its workers summed, sampled every 0.1 s). ``duplicates``'
thresholds were chosen on development sets (``dev_duplicates.py``: Fashion-MNIST training images and this
generator's scenes at seeds 1 and 11), never on these folders. ``--sets fmnist70k
--compare-with DIR`` times another version (a copy of the repository in DIR) beside this one on all of
Fashion-MNIST. CleanVision and imagehash live in their own virtualenv::

    python3 -m venv /tmp/dupbench && /tmp/dupbench/bin/pip install cleanvision imagehash
    .venv/bin/python benchmarks/bench_duplicates.py --other-python /tmp/dupbench/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import cv2  # noqa: E402
from cpu_info import cpu_line  # noqa: E402  (this script's folder is on sys.path)

KINDS = ("byte copy", "png re-encode", "jpeg q60", "flip left-right", "flip upside down", "crop 85-92%",
         "rotate 3-5°", "scale 0.7x/1.5x", "shift 3px", "blur", "noise 8", "gamma", "brightness/contrast",
         "grayscale")

OURS = r"""
import json, os, resource, sys, threading, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[3])


def tree_rss_mb() -> float:
    # resident memory of this process and its descendants (the verification's worker processes), summed
    kids, total = {}, 0
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        todo += kids.get(pid, [])
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


peak, done = [0.0], threading.Event()


def sample() -> None:
    while not done.wait(0.1):
        peak[0] = max(peak[0], tree_rss_mb())


threading.Thread(target=sample, daemon=True).start()
import numpy as np, tempfile
from core.run import derived
from core.data.datasets import load_dataset
from core.run.write import write_run
from core.run.store import RunStore
import core.diagnose.duplicates
ds = load_dataset(sys.argv[1])
probs = np.eye(len(ds.classes), dtype=np.float32)[ds.labels]
run = write_run(RunStore(tempfile.mkdtemp(prefix="bench-dup-")), "planted", classes=ds.classes, y_true=ds.labels,
                probs=probs, paths=ds.paths, splits=ds.splits,
                data={"name": "planted", "kind": "folder", "path": sys.argv[1], "root": str(ds.root),
                      "images_in_run": False})
t1 = time.perf_counter()
pairs = derived.get(run, "duplicates").table("pairs")
seconds = time.perf_counter() - t0
done.set()
try:  # the verification's worker processes: ended and waited for, so that their CPU time counts below
    from joblib.externals.loky import get_reusable_executor
    get_reusable_executor().shutdown(wait=True)
except ImportError:
    pass
out = {"pairs": [[a, b, t] for a, b, t in zip(pairs["path_a"], pairs["path_b"], pairs["transform"])],
       "seconds": seconds, "setup": t1 - t0,
       "cpu": sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
                  for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)),
       "peak_mb": max(peak[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
json.dump(out, open(sys.argv[2], "w"))
"""

CLEANVISION = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from cleanvision import Imagelab
lab = Imagelab(data_path=sys.argv[1])
lab.find_issues({"exact_duplicates": {}, "near_duplicates": {}})
sets = [[str(p) for p in s] for k in ("exact_duplicates", "near_duplicates") for s in lab.info[k]["sets"]]
json.dump({"sets": sets, "seconds": time.perf_counter() - t0,
           "cpu": sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
                      for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)),
           "peak_mb": max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
           / 1024}, open(sys.argv[2], "w"))
"""

IMAGEHASH = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
import numpy as np, imagehash
from PIL import Image
root = sys.argv[1]
paths = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
               if f.lower().endswith((".png", ".jpg")))
bits = np.array([imagehash.phash(Image.open(os.path.join(root, p))).hash.ravel() for p in paths], bool)
codes = np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)
out = {}
for limit in (4, 10):
    pairs = []
    for i in range(0, len(codes), 512):
        x = codes[i:i + 512, None] ^ codes[None, :]
        d = np.unpackbits(x.view(np.uint8).reshape(len(x), len(codes), 8), axis=2).sum(axis=2)
        a, b = np.nonzero(d <= limit)
        keep = a + i < b
        pairs += [[paths[i + p], paths[q]] for p, q in zip(a[keep], b[keep])]
    out[str(limit)] = pairs
json.dump({"pairs": out, "seconds": time.perf_counter() - t0,
           "cpu": sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
                      for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)),
           "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, open(sys.argv[2], "w"))
"""


def load() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


# --------------------------------------------------------------------------- the edits

def edit(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """(pixels, extension) of a copy of ``img`` made by ``kind``."""
    h, w = img.shape[:2]
    if kind in ("byte copy", "png re-encode"):
        return img, ".png"
    if kind == "jpeg q60":
        return img, ".jpg"
    if kind == "flip left-right":
        return img[:, ::-1].copy(), ".png"
    if kind == "flip upside down":
        return img[::-1].copy(), ".png"
    if kind.startswith("crop"):
        f = rng.uniform(0.85, 0.92)
        ch, cw = int(round(h * f)), int(round(w * f))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return cv2.resize(img[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_LINEAR), ".png"
    if kind.startswith("rotate"):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(3, 5) * rng.choice([-1, 1]), 1.0)
        return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT), ".png"
    if kind.startswith("scale"):
        f = float(rng.choice([0.7, 1.5]))
        size = (int(round(w * f)), int(round(h * f)))
        return cv2.resize(img, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC), ".png"
    if kind.startswith("shift"):
        step = max(1, round(w / 10))
        dy, dx = (int(v) for v in rng.choice([-step, step], 2))
        moved = cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REPLICATE)
        return moved, ".png"
    if kind == "blur":
        return cv2.GaussianBlur(img, (0, 0), 0.8 * w / 28), ".png"
    if kind.startswith("noise"):
        return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8), ".png"
    if kind == "gamma":
        return (255 * (img / 255.0) ** float(rng.choice([0.8, 1.25]))).astype(np.uint8), ".png"
    if kind == "brightness/contrast":
        return np.clip(img * rng.uniform(0.7, 0.85) + rng.uniform(10, 40), 0, 255).astype(np.uint8), ".png"
    if kind == "grayscale":
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), ".png"
    raise ValueError(kind)


def _write(folder: Path, rel: str, img: np.ndarray) -> None:
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 60] if rel.endswith(".jpg") else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    assert cv2.imwrite(str(folder / rel), img, params), rel


def plant(folder: Path, train: list, test: list, labels: list, lookalikes: list, kinds: tuple, per_kind: int,
          rng: np.random.Generator) -> dict:
    """Write train/<label>/, test/<label>/ and the planted copies; ``lookalikes`` (train index, image).

    Returns the truth: ``copies`` [(train path, test path, kind)], ``lookalikes`` [(train path, test path)].
    """
    shutil.rmtree(folder, ignore_errors=True)
    train_paths = []
    for i, (img, y) in enumerate(zip(train, labels[:len(train)])):
        train_paths.append(f"train/{y}/{i:05d}.png")
        _write(folder, train_paths[-1], img)
    for i, (img, y) in enumerate(zip(test, labels[len(train):])):
        _write(folder, f"test/{y}/{i:05d}.png", img)
    copies, looks = [], []
    sources = rng.choice(len(train), per_kind * len(kinds), replace=False)
    for j, src in enumerate(sources):
        kind = kinds[j // per_kind]
        img, ext = edit(train[src], kind, rng)
        rel = f"test/{labels[src]}/copy_{j:04d}{ext}"
        if kind == "byte copy":
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / train_paths[src], folder / rel)
        elif kind == "png re-encode":  # the same pixels in another file
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / rel), img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        else:
            _write(folder, rel, img)
        copies.append((train_paths[src], rel, kind))
    for j, (src, img) in enumerate(lookalikes):
        rel = f"test/{labels[src]}/lookalike_{j:04d}.png"
        _write(folder, rel, img)
        looks.append((train_paths[src], rel))
    truth = {"copies": copies, "lookalikes": looks}
    (folder / "truth.json").write_text(json.dumps(truth))  # for a look at what was missed; not an image
    return truth


def _closest(target: np.ndarray, pool: np.ndarray) -> int:
    d = ((pool.reshape(len(pool), -1).astype(np.float32) - target.reshape(-1).astype(np.float32)) ** 2).sum(axis=1)
    return int(d.argmin())


def gray_set(folder: Path, *, per_kind: int, seed: int) -> dict:
    from core.data.datasets import load_fashion_mnist

    ds = load_fashion_mnist()
    rng = np.random.default_rng(seed)
    base = np.flatnonzero(ds.splits == "test")
    outside = np.flatnonzero(ds.splits == "train")
    kinds = KINDS[:-1]
    order = rng.permutation(base)
    n_train = 8000
    n_test = 2000 - per_kind * (len(kinds) + 1)
    train, test = order[:n_train], order[n_train:n_train + n_test]
    names = [c.replace("/", "-").replace(" ", "_") for c in ds.classes]
    labels = [names[y] for y in ds.labels[np.concatenate([train, test])]]
    looks = []
    for src in rng.choice(n_train, per_kind, replace=False):
        same = outside[ds.labels[outside] == ds.labels[train[src]]]
        looks.append((int(src), ds.pixels[same[_closest(ds.pixels[train[src]], ds.pixels[same])]]))
    truth = plant(folder, list(ds.pixels[train]), list(ds.pixels[test]), labels, looks, kinds, per_kind, rng)
    return {**truth, "kinds": list(kinds), "n_test": 2000}


def scene(rng: np.random.Generator, layout: dict | None = None, *, size: int = 96) -> tuple[np.ndarray, dict]:
    """A colour scene: a gradient background, 4-6 shapes and a fine texture. With ``layout``, a sibling:
    the same scene with one shape moved by 3-6 px and recoloured, and a new texture."""
    if layout is None:
        layout = {"bg": rng.uniform(30, 220, (2, 3)).tolist(),
                  "shapes": [{"kind": str(rng.choice(["ellipse", "rect"])), "c": rng.uniform(0, size, 2).tolist(),
                              "r": rng.uniform(8, 26, 2).tolist(), "angle": float(rng.uniform(0, 180)),
                              "colour": rng.uniform(0, 255, 3).tolist()} for _ in range(int(rng.integers(4, 7)))]}
    else:
        layout = json.loads(json.dumps(layout))
        shape = layout["shapes"][int(rng.integers(len(layout["shapes"])))]
        shape["c"] = (np.array(shape["c"]) + rng.choice([-1, 1], 2) * rng.uniform(3, 6, 2)).tolist()
        shape["colour"] = np.clip(np.array(shape["colour"]) + rng.normal(0, 40, 3), 0, 255).tolist()
    t = np.linspace(0, 1, size)[:, None, None]
    img = (np.array(layout["bg"][0]) * (1 - t) + np.array(layout["bg"][1]) * t) * np.ones((size, size, 3))
    img = img.astype(np.float32)
    for s in layout["shapes"]:
        c, r = tuple(int(round(v)) for v in s["c"]), tuple(int(round(v)) for v in s["r"])
        if s["kind"] == "ellipse":
            cv2.ellipse(img, c, r, s["angle"], 0, 360, s["colour"], -1, cv2.LINE_AA)
        else:
            box = cv2.boxPoints(((c[0], c[1]), (2 * r[0], 2 * r[1]), s["angle"])).astype(np.int32)
            cv2.fillPoly(img, [box], s["colour"], cv2.LINE_AA)
    texture = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 1.2)
    img += 40 * texture[:, :, None] / max(float(texture.std()), 1e-6) * 0.3
    return np.clip(img, 0, 255).astype(np.uint8), layout


def colour_set(folder: Path, *, per_kind: int, seed: int, n_total: int = 2000) -> dict:
    rng = np.random.default_rng(seed)
    n_train = n_total * 4 // 5
    n_test = n_total - n_train - per_kind * (len(KINDS) + 1)
    images, layouts, labels = [], [], []
    while len(images) < n_train + n_test:  # families of 1-3 similar scenes, labelled by family group
        family = int(rng.integers(10))
        img, layout = scene(rng)
        images.append(img), layouts.append(layout), labels.append(f"class{family}")
        for _ in range(int(rng.integers(0, 3))):
            img, _ = scene(rng, layout)
            images.append(img), layouts.append(layout), labels.append(f"class{family}")
    order = rng.permutation(len(images))[:n_train + n_test]
    images = [images[i] for i in order]
    layouts = [layouts[i] for i in order]
    labels = [labels[i] for i in order]
    looks = []
    for src in rng.choice(n_train, per_kind, replace=False):
        siblings = np.stack([scene(rng, layouts[src])[0] for _ in range(8)])
        looks.append((int(src), siblings[_closest(images[src], siblings)]))
    truth = plant(folder, images[:n_train], images[n_train:], labels, looks, KINDS, per_kind, rng)
    return {**truth, "kinds": list(KINDS), "n_test": n_total - n_train}


# --------------------------------------------------------------------------- scoring

def score(found: set, truth: dict) -> dict:
    """Recall per kind, look-alikes reported and other train-test pairs per 1,000 test images, from a set of
    unordered path pairs (frozensets)."""
    per_kind = {k: float(np.mean([frozenset((a, b)) in found for a, b, kk in truth["copies"] if kk == k]))
                for k in truth["kinds"]}
    planted = {frozenset((a, b)) for a, b, _ in truth["copies"]}
    looks = {frozenset(p) for p in truth["lookalikes"]}
    copy_paths = {b for _, b, _ in truth["copies"]}
    cross = {p for p in found if sorted(q.split("/")[0] for q in p) == ["test", "train"]}
    # a copy of a copy's training source is planted; a pair of a copy with another training image is "other"
    others = cross - planted - looks
    return {"per_kind": per_kind, "recall": len(found & planted) / len(planted), "lookalikes": len(found & looks),
            "n_lookalikes": len(looks), "others": len(others),
            "others_with_copy": sum(bool(p & copy_paths) for p in others),
            "others_per_1000": 1000 * len(others) / truth["n_test"]}


def pairs_of_sets(sets: list[list[str]]) -> set:
    out = set()
    for s in sets:
        train = [p for p in s if p.startswith("train/")]
        test = [p for p in s if p.startswith("test/")]
        out |= {frozenset((a, b)) for a in train for b in test}
    return out


def _run(python: str, code: str, folder: Path, *extra: str) -> tuple[dict | None, str]:
    out = Path(tempfile.mkdtemp()) / "out.json"
    done = subprocess.run([python, "-c", code, str(folder), str(out), *extra], capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()
        return None, f"failed: {tail[-1] if tail else done.returncode}"
    return json.loads(out.read_text()), "ok"


def _relative(folder: Path, p: str) -> str:
    return str(Path(p).resolve().relative_to(folder.resolve())) if os.path.isabs(p) else p


def compare(name: str, folder: Path, truth: dict, other_python: str | None, compare_with: str | None = None) -> None:
    n = sum(1 for f in folder.rglob("*") if f.suffix in (".png", ".jpg"))
    print(f"\n== {name}: {n:,} images in {folder} ({len(truth['copies'])} planted copies, "
          f"{len(truth['lookalikes'])} look-alikes, {truth['n_test']:,} test images); {load()}", flush=True)
    rows = []
    ours, status = _run(sys.executable, OURS, folder, str(REPO))
    if ours is None:
        print(f"duplicates: {status}")
    else:
        found = {frozenset((a, b)) for a, b, _ in ours["pairs"]}
        rows.append(("duplicates (this repo)", score(found, truth), ours["seconds"], ours["peak_mb"], ours["cpu"]))
        said = {frozenset((a, b)): t for a, b, t in ours["pairs"]}
        examples = {}
        for a, b, k in truth["copies"]:
            if frozenset((a, b)) in said and k not in examples:
                examples[k] = said[frozenset((a, b))]
        print("transform found, one example per kind: " + "; ".join(f"{k}: {v}" for k, v in examples.items()))
    if compare_with:  # another version of this repository, in the same run: its time beside this one's
        theirs, status = _run(sys.executable, OURS, folder, compare_with)
        if theirs is None:
            print(f"duplicates (--compare-with): {status}")
        else:
            found = {frozenset((a, b)) for a, b, _ in theirs["pairs"]}
            rows.append(("duplicates (--compare-with)", score(found, truth), theirs["seconds"], theirs["peak_mb"],
                         theirs["cpu"]))
    if other_python:
        cv, status = _run(other_python, CLEANVISION, folder)
        if cv is None:
            print(f"CleanVision: {status}")
        else:
            sets = [[_relative(folder, p) for p in s] for s in cv["sets"]]
            rows.append(("CleanVision (exact+near)", score(pairs_of_sets(sets), truth), cv["seconds"], cv["peak_mb"],
                         cv["cpu"]))
        ih, status = _run(other_python, IMAGEHASH, folder)
        if ih is None:
            print(f"imagehash: {status}")
        else:
            for limit, pairs in ih["pairs"].items():
                rows.append((f"imagehash pHash <= {limit} bits", score({frozenset(p) for p in pairs}, truth),
                             ih["seconds"], ih["peak_mb"], ih["cpu"]))
    kinds = truth["kinds"]
    print(f"{'method':<27}{'recall':>7}{'min kind':>9}{'look-alikes':>12}{'other/1000':>11}{'(w/ copy)':>10}"
          f"{'time s':>8}{'CPU s':>7}{'peak MB':>8}")
    for label, s, seconds, peak, cpu in rows:
        print(f"{label:<27}{s['recall']:>7.1%}{min(s['per_kind'].values()):>9.0%}"
              f"{s['lookalikes']:>6}/{s['n_lookalikes']:<5}{s['others_per_1000']:>11.2f}{s['others_with_copy']:>10}"
              f"{seconds:>8.1f}{cpu:>7.1f}{peak:>8.0f}")
    print("(w/ copy): of the other pairs, those with a planted copy on one side (a copy matched to another "
          "training image)")
    print("recall per kind:")
    print(f"  {'kind':<22}" + "".join(f"{label[:14]:>16}" for label, *_ in rows))
    for k in kinds:
        print(f"  {k:<22}" + "".join(f"{s['per_kind'][k]:>16.0%}" for _, s, *_ in rows))
    by = {label: (seconds, cpu) for label, _, seconds, _, cpu in rows}
    for other, short in (("duplicates (--compare-with)", "the other version"), ("CleanVision (exact+near)",
                                                                                  "CleanVision")):
        if "duplicates (this repo)" in by and other in by:
            (ours_s, ours_cpu), (their_s, their_cpu) = by["duplicates (this repo)"], by[other]
            print(f"time: duplicates / {short} = {ours_s / their_s:.2f} wall, {ours_cpu / their_cpu:.2f} CPU "
                  f"(same folder, same run; {load()})")


def fashion_mnist_70k(folder: Path, compare_with: str | None = None) -> None:
    """Cost at the size of the Fashion-MNIST demo (70,000 images, the Diagnose page's 'Compute diagnoses'):
    all of Fashion-MNIST as PNG files (train/ 60,000, test/ 10,000), ``duplicates`` alone (nothing planted)."""
    from core.data.datasets import load_fashion_mnist

    ds = load_fashion_mnist()
    if not (folder / "done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        for i, (img, y, split) in enumerate(zip(ds.pixels, ds.labels, ds.splits)):
            _write(folder, f"{split}/{ds.classes[y].replace('/', '-').replace(' ', '_')}/{i:05d}.png", img)
        (folder / "done").write_text("")
    print(f"\n== Fashion-MNIST, all 70,000 images in {folder}; {load()}", flush=True)
    for name, repo in [("this version", str(REPO))] + ([("--compare-with " + compare_with, compare_with)]
                                                        if compare_with else []):
        ours, status = _run(sys.executable, OURS, folder, repo)
        if ours is None:
            print(f"duplicates ({name}): {status}")
            continue
        cross = sum(sorted(p.split("/")[0] for p in (a, b)) == ["test", "train"] for a, b, _ in ours["pairs"])
        print(f"duplicates ({name}): {ours['seconds']:.1f} s wall ({ours['setup']:.1f} s of it imports and the run), "
              f"{ours['cpu']:.1f} s CPU, peak {ours['peak_mb']:.0f} MB; {len(ours['pairs']):,} pairs, {cross:,} "
              f"train-test; {load()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "bench_duplicates"))
    parser.add_argument("--sets", default="gray,colour",
                        help="comma-separated: gray, colour, fmnist70k (cost on 70,000 images; default %(default)s)")
    parser.add_argument("--per-kind", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--colour-n", type=int, default=2000,
                        help="images in the colour set (a fifth of them in test/; default %(default)s)")
    parser.add_argument("--compare-with", default=None, metavar="DIR",
                        help="also time the copy of this repository in DIR (another version), in the same run")
    parser.add_argument("--other-python", default=None, metavar="PYTHON",
                        help="a Python with cleanvision and imagehash installed (their own virtualenv)")
    args = parser.parse_args()
    n_test = args.colour_n - args.colour_n * 4 // 5
    if "colour" in args.sets.split(",") and (args.colour_n < 100 or args.per_kind * (len(KINDS) + 1) > n_test):
        parser.error(f"the colour set has {n_test} test images: --per-kind at most {n_test // (len(KINDS) + 1)} with "
                     f"it (received {args.per_kind}), --colour-n at least 100 (received {args.colour_n})")
    print(cpu_line(), flush=True)
    for name in args.sets.split(","):
        folder = Path(args.folder) / name
        if name == "fmnist70k":
            fashion_mnist_70k(folder, args.compare_with)
            continue
        t0 = time.perf_counter()
        if name == "gray":
            truth = gray_set(folder, per_kind=args.per_kind, seed=args.seed)
        else:
            truth = colour_set(folder, per_kind=args.per_kind, seed=args.seed, n_total=args.colour_n)
        print(f"wrote the {name} set in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        compare(name, folder, truth, args.other_python, args.compare_with)


if __name__ == "__main__":
    main()
