"""Duplicates and leakage on Fashion-MNIST written as PNG files, with copies of training images planted
in the test split; then the speed of every kind of issue 10 part 2 on a 70,000-image run.

Part 1 writes the 70,000 images to ``--folder`` (train/<class>/, test/<class>/; reused when present),
copies ``--planted`` training images into test/ in 7 ways (a byte copy, JPEG q90, 2x larger, 0.75x
smaller, shifted 1 px + noise, shifted 2 px + noise, shifted 1 px + noise + JPEG q85), 10% of them
under another class, and prints for each method the recall of the planted pairs and the number of
*other* train-test pairs it reports per 1,000 images:

* ``duplicates`` (this repository, pixels only: the run has no embeddings);
* an exact-hash baseline (MD5 of the file bytes);
* CleanVision 0.3.7 (``exact_duplicates``: MD5; ``near_duplicates``: equal 8x8 pHash), run in-process
  when importable, else with ``--cleanvision-python`` (it pulls matplotlib and more, so it lives in its
  own virtualenv)::

      python -m venv /tmp/cv-venv && /tmp/cv-venv/bin/pip install cleanvision==0.3.7
      .venv/bin/python benchmarks/bench_duplicates.py --cleanvision-python /tmp/cv-venv/bin/python

Fashion-MNIST itself holds near-identical pictures (the same product photographed twice, plain
trousers that differ by a few pixels); "other" pairs include them, and the 24 most similar are written
to ``--montage`` (a PNG) for a look.

Part 2 (``--speed``, on by default) times image_scan, duplicates, image_properties and error_slices on
a 70,000-image run whose pixels are Fashion-MNIST's in images.npy (probabilities and embeddings from
core.synthetic), ``--repeats`` times; wall and CPU seconds (all threads) are printed with the
machine's load average beside, since other work on a shared machine slows every figure.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from cpu_info import cpu_line  # noqa: E402  (this script's folder is on sys.path)

import cv2  # noqa: E402

from core import derived  # noqa: E402
from core.datasets import load_dataset, load_fashion_mnist  # noqa: E402
from core.progress import slug  # noqa: E402
from core.runs import write_run  # noqa: E402
from core.store import RunStore  # noqa: E402

KINDS = ("byte copy", "jpeg q90", "2x larger", "0.75x smaller", "shift 1px + noise", "shift 2px + noise",
         "shift 1px + noise + jpeg q85")
CLEANVISION = r"""
import json, sys
from cleanvision import Imagelab
lab = Imagelab(data_path=sys.argv[1])
lab.find_issues({"exact_duplicates": {}, "near_duplicates": {}})
out = {k: [[str(p) for p in s] for s in lab.info[k]["sets"]] for k in ("exact_duplicates", "near_duplicates")}
json.dump(out, open(sys.argv[2], "w"))
"""


def load() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


# --------------------------------------------------------------------------- the folder

def _plant(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    def shift(x, dy, dx):
        return cv2.warpAffine(x, np.float32([[1, 0, dx], [0, 1, dy]]), x.shape[::-1], borderValue=0)

    def noise(x, sigma=5.0):
        return np.clip(x + rng.normal(0, sigma, x.shape), 0, 255).astype(np.uint8)

    def jpeg(x, q):
        return cv2.imdecode(cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_GRAYSCALE)

    sign = lambda: int(rng.choice([-1, 1]))  # noqa: E731
    if kind == "byte copy":
        return img, ".png"  # the file itself is copied below
    if kind == "jpeg q90":
        return img, ".jpg"  # written with quality 90 below
    if kind == "2x larger":
        return cv2.resize(img, (56, 56), interpolation=cv2.INTER_CUBIC), ".png"
    if kind == "0.75x smaller":
        return cv2.resize(img, (21, 21), interpolation=cv2.INTER_LINEAR), ".png"
    if kind == "shift 1px + noise":
        return noise(shift(img, int(rng.integers(-1, 2)), sign())), ".png"
    if kind == "shift 2px + noise":
        return noise(shift(img, int(rng.integers(-2, 3)), 2 * sign())), ".png"
    if kind == "shift 1px + noise + jpeg q85":
        return jpeg(noise(shift(img, sign(), int(rng.integers(-1, 2)))), 85), ".png"
    raise ValueError(kind)


def make_folder(folder: Path, *, planted: int, seed: int) -> list[tuple[str, str, str]]:
    """Fashion-MNIST as PNGs plus planted copies; returns (train path, copy path, kind) per planted copy."""
    marker = folder / ".planted.json"
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved["planted"] == planted and saved["seed"] == seed:
            return [tuple(t) for t in saved["truth"]]
    shutil.rmtree(folder, ignore_errors=True)
    ds = load_fashion_mnist()
    names = [slug(c) for c in ds.classes]
    paths = [f"{s}/{names[y]}/{i:05d}.png" for i, (s, y) in enumerate(zip(ds.splits, ds.labels))]
    for s in ("train", "test"):
        for name in names:
            (folder / s / name).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: cv2.imwrite(str(folder / paths[i]), ds.pixels[i]), range(len(paths)), chunksize=512))
    print(f"wrote {len(paths):,} PNGs to {folder} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    rng = np.random.default_rng(seed)
    train = np.flatnonzero(ds.splits == "train")
    truth = []
    for j, src in enumerate(rng.choice(train, planted, replace=False)):
        kind = KINDS[j % len(KINDS)]
        label = int(ds.labels[src])
        if rng.random() < 0.1:  # filed under another class: the labels disagree
            label = int((label + rng.integers(1, len(names))) % len(names))
        img, ext = _plant(ds.pixels[src], kind, rng)
        copy = f"test/{names[label]}/planted_{j:05d}{ext}"
        if kind == "byte copy":
            shutil.copy(folder / paths[src], folder / copy)
        else:
            params = [cv2.IMWRITE_JPEG_QUALITY, 90] if ext == ".jpg" else []
            cv2.imwrite(str(folder / copy), img, params)
        truth.append((paths[src], copy, kind))
    marker.write_text(json.dumps({"planted": planted, "seed": seed, "truth": truth}))
    return truth


# --------------------------------------------------------------------------- scoring

def score_pairs(pairs: set[tuple[str, str]], truth: list, n_images: int) -> dict:
    """Recall per kind, and the other train-test pairs (unordered path pairs) per 1,000 images."""
    planted = {frozenset((a, b)) for a, b, _ in truth}
    found = {frozenset(p) for p in pairs}
    per_kind = {k: np.mean([frozenset((a, b)) in found for a, b, kk in truth if kk == k]) for k in KINDS}
    cross = {p for p in found if {q.split("/")[0] for q in p} == {"train", "test"}}
    others = cross - planted
    with_copy = sum(any("planted_" in q for q in p) for p in others)
    return {"recall": len(found & planted) / len(planted), "per_kind": per_kind, "others": len(others),
            "others_per_1000": 1000 * len(others) / n_images, "others_with_a_planted_copy": with_copy}


def score_sets(sets: list[list[str]], truth: list, n_images: int) -> dict:
    """As ``score_pairs`` for a method that reports groups (every pair of a group counts), without listing them."""
    where = {}
    for g, members in enumerate(sets):
        for p in members:
            where[p] = g
    per_kind = {k: np.mean([a in where and where.get(b) == where[a] for a, b, kk in truth if kk == k]) for k in KINDS}
    found_planted = sum(a in where and where.get(b) == where[a] for a, b, _ in truth)
    cross = sum(sum(p.split("/")[0] == "train" for p in s) * sum(p.split("/")[0] == "test" for p in s) for s in sets)
    others = cross - found_planted
    return {"recall": found_planted / len(truth), "per_kind": per_kind, "others": int(others),
            "others_per_1000": 1000 * others / n_images, "others_with_a_planted_copy": None}


def _relative(folder: Path, paths: list[str]) -> list[str]:
    return [str(Path(p).resolve().relative_to(folder.resolve())) for p in paths]


def md5_sets(folder: Path, paths: list[str]) -> list[list[str]]:
    import hashlib

    digests = {}
    for p in paths:
        digests.setdefault(hashlib.md5((folder / p).read_bytes()).hexdigest(), []).append(p)
    return [g for g in digests.values() if len(g) > 1]


def run_cleanvision(folder: Path, python: str | None) -> tuple[dict | None, float, str]:
    out = Path(tempfile.mkdtemp()) / "cleanvision.json"
    t0 = time.perf_counter()
    try:
        import cleanvision  # noqa: F401
        cmd = [sys.executable, "-c", CLEANVISION, str(folder), str(out)]
    except ImportError:
        if python is None:
            return None, 0.0, "not importable here and no --cleanvision-python given"
        cmd = [python, "-c", CLEANVISION, str(folder), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return None, 0.0, f"failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    return json.loads(out.read_text()), time.perf_counter() - t0, "ok"


def print_score(name: str, s: dict) -> None:
    kinds = ", ".join(f"{k} {v:.0%}" for k, v in s["per_kind"].items())
    extra = "" if s["others_with_a_planted_copy"] is None else \
        f" ({s['others_with_a_planted_copy']} of them with a planted copy)"
    print(f"{name:<34} recall {s['recall']:6.1%}   other train-test pairs {s['others']:6,} "
          f"= {s['others_per_1000']:6.2f} per 1,000 images{extra}")
    print(f"{'':<34} by kind: {kinds}")


def montage(folder: Path, table, truth: list, file: Path, count: int = 24) -> None:
    planted = {frozenset((a, b)) for a, b, _ in truth}
    cross = table[(table["split_a"] == "train") & (table["split_b"] == "test")]
    others = cross[[frozenset((a, b)) not in planted for a, b in zip(cross["path_a"], cross["path_b"])]]
    others = others.sort_values("similarity", ascending=False).head(count)
    tiles = []
    for a, b in zip(others["path_a"], others["path_b"]):
        pair = [cv2.resize(cv2.imread(str(folder / p), cv2.IMREAD_GRAYSCALE), (56, 56), interpolation=cv2.INTER_NEAREST)
                for p in (a, b)]
        tiles.append(np.hstack(pair + [np.full((56, 6), 128, np.uint8)]))
    if tiles:
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 6)
        cv2.imwrite(str(file), np.vstack([np.hstack(tiles[i:i + 6]) for i in range(0, len(tiles), 6)]))
        print(f"the {len(others)} most similar other train-test pairs (train left, test right): {file}")


# --------------------------------------------------------------------------- part 1 and part 2

def quality(args) -> None:
    import core.diagnose.duplicates  # noqa: F401  (registers the kinds)

    folder = Path(args.folder)
    truth = make_folder(folder, planted=args.planted, seed=args.seed)
    dataset = load_dataset(str(folder))
    n = len(dataset)
    probs = np.eye(len(dataset.classes), dtype=np.float32)[dataset.labels]
    store = RunStore(tempfile.mkdtemp(prefix="bench-dup-"))
    run = write_run(store, "planted", classes=dataset.classes, y_true=dataset.labels, probs=probs,
                    paths=dataset.paths, splits=dataset.splits,
                    data={"name": "fashion-mnist-png", "kind": "folder", "path": str(folder),
                          "root": str(dataset.root), "images_in_run": False})
    print(f"\n{n:,} images ({', '.join(f'{s} {c:,}' for s, c in run.splits.items())}); {len(truth):,} planted "
          f"copies of training images in test/, {sum(1 for _ in KINDS)} kinds; {load()}")
    t0 = time.perf_counter()
    derived.get(run, "image_scan")
    t1 = time.perf_counter()
    stored = derived.get(run, "duplicates")
    t2 = time.perf_counter()
    table = stored.table("pairs")
    print(f"duplicates: decoding {n:,} PNG/JPEG files {t1 - t0:.1f} s, search and verification {t2 - t1:.1f} s; "
          f"{len(table):,} pairs in all; {load()}")
    print_score("duplicates (this repository)", score_pairs(set(zip(table["path_a"], table["path_b"])), truth, n))
    print_score("exact hash (MD5 of the file)", score_sets(md5_sets(folder, dataset.paths), truth, n))
    result, seconds, status = run_cleanvision(folder, args.cleanvision_python) if not args.skip_cleanvision \
        else (None, 0.0, "skipped (--skip-cleanvision)")
    if result is None:
        print(f"CleanVision: {status}")
    else:
        rel = {k: [_relative(folder, s) for s in v] for k, v in result.items()}
        print(f"CleanVision 0.3.7 took {seconds:.0f} s on the same folder; {load()}")
        print_score("CleanVision exact_duplicates", score_sets(rel["exact_duplicates"], truth, n))
        print_score("CleanVision near_duplicates", score_sets(rel["near_duplicates"], truth, n))
        print_score("CleanVision exact + near", score_sets(rel["exact_duplicates"] + rel["near_duplicates"], truth, n))
    if args.montage:
        montage(folder, table, truth, Path(args.montage))


def speed(args) -> None:
    import core.diagnose.duplicates  # noqa: F401
    import core.diagnose.properties  # noqa: F401
    import core.diagnose.slices  # noqa: F401
    from core.synthetic import synthetic_arrays

    ds = load_fashion_mnist()
    n = len(ds)
    arrays = synthetic_arrays(n, 10, with_images=False, seed=args.seed)
    store = RunStore(tempfile.mkdtemp(prefix="bench-speed-"))
    kinds = ("image_scan", "duplicates", "image_properties", "error_slices")
    print(f"\nSpeed on a {n:,}-image run (Fashion-MNIST pixels in images.npy, synthetic probabilities and "
          f"{arrays['embeddings'].shape[1]}-d embeddings), {os.cpu_count()} CPUs:")
    for repeat in range(args.repeats):
        run = write_run(store, f"speed{repeat}", classes=list(ds.classes), y_true=arrays["y_true"],
                        probs=arrays["probs"], paths=arrays["paths"], splits=arrays["splits"],
                        embeddings=arrays["embeddings"], projection=arrays["projection"], images=ds.pixels,
                        data={"name": "fashion-mnist", "kind": "fashion-mnist", "path": None, "root": None,
                              "images_in_run": True})
        times, cpu = {}, {}
        for name in kinds:
            t0, c0 = time.perf_counter(), time.process_time()
            derived.get(run, name)
            times[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
        line = ", ".join(f"{k} {v:.1f} s (CPU {cpu[k]:.1f} s)" for k, v in times.items())
        print(f"  run {repeat + 1}: {line}; all four {sum(times.values()):.1f} s (CPU {sum(cpu.values()):.1f} s, "
              f"all threads); {load()}")
        summary = derived.get(run, "duplicates").summary
        print(f"  duplicates found: {summary['n_pairs']:,} pairs ({summary['n_exact']:,} exact); "
              f"slices: {derived.get(run, 'error_slices').summary['n_slices']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "bench_duplicates", "fashion-mnist"))
    parser.add_argument("--planted", type=int, default=1400, help="copies planted in test/ (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cleanvision-python", default=None, metavar="PYTHON",
                        help="a Python with cleanvision installed, when this one has none")
    parser.add_argument("--skip-cleanvision", action="store_true")
    parser.add_argument("--montage", default=os.path.join(tempfile.gettempdir(), "bench_duplicates", "others.png"))
    parser.add_argument("--no-speed", action="store_true", help="skip part 2")
    parser.add_argument("--no-quality", action="store_true", help="skip part 1")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    if not args.no_quality:
        quality(args)
    if not args.no_speed:
        speed(args)


if __name__ == "__main__":
    main()
