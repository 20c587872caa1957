"""The development sets ``duplicates``' bounds were chosen on (not the benchmark's folders).

Fashion-MNIST *training* images (``--n``, default 3,000; the benchmark uses the *test* split), ``--per-kind``
copies of each of 11 kinds (JPEG q60, both flips, crop to 85-92% + resize, rotation 3-5°, scale 0.7x/1.5x,
shift up to 3 px, blur, noise sigma 8, gamma, brightness/contrast) and ``--look-alikes`` (the same class's
closest image in pixels from the rest of the training split), as arrays (no files: the thumbnails are made
as the image scan makes them); or, with ``--colour``, ``--n`` 96 px scenes from the benchmark's generator
(families of similar scenes) with the benchmark's edits and sibling look-alikes. Seeds 1 and 11 are the
development seeds (the benchmark's are 0, 7 and 23). Prints the candidates' recall per kind and what
``accepted`` keeps: copies per kind, look-alikes, and other pairs (all pairs, train and copies alike; two
copies of one original counted apart); ``--list`` names the other pairs accepted and the copies missed with
the test each failed, ``--sheet`` draws them, ``--dump`` writes every verified pair's measures.

    .venv/bin/python benchmarks/dev_duplicates.py --seed 1 --n 10000 --per-kind 40 [--list]
    .venv/bin/python benchmarks/dev_duplicates.py --colour --seed 11 --n 1600 --per-kind 20 --look-alikes 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))
import cv2  # noqa: E402

from core.data.datasets import load_fashion_mnist  # noqa: E402
from core.diagnose import duplicates as dup  # noqa: E402
from core.diagnose.properties import canvas_thumbnail  # noqa: E402

KINDS = ("jpeg q60", "flip h", "flip v", "crop", "rotate", "scale", "shift", "blur", "noise", "gamma", "contrast")


def edit(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    if kind == "jpeg q60":
        return cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_UNCHANGED)
    if kind in ("flip h", "flip v"):
        return (img[:, ::-1] if kind == "flip h" else img[::-1]).copy()
    if kind == "crop":
        f = rng.uniform(0.85, 0.92)
        ch, cw = int(round(h * f)), int(round(w * f))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        return cv2.resize(img[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "rotate":
        m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(3, 5) * rng.choice([-1, 1]), 1.0)
        return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if kind == "scale":
        f = rng.choice([0.7, 1.5])
        return cv2.resize(img, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    if kind == "shift":
        dy, dx = rng.integers(-3, 4, 2)
        return cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REPLICATE)
    if kind == "blur":
        return cv2.GaussianBlur(img, (0, 0), 0.8)
    if kind == "noise":
        return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    if kind == "gamma":
        return (255 * (img / 255.0) ** rng.choice([0.8, 1.25])).astype(np.uint8)
    if kind == "contrast":
        return np.clip(img * rng.uniform(0.7, 0.85) + rng.uniform(10, 40), 0, 255).astype(np.uint8)
    raise ValueError(kind)


def reason(rec: dict, min_detail: float | None) -> str:
    """Which of ``accepted``'s tests a verified pair fails first (for the listing of misses)."""
    one = pd.DataFrame([rec])
    if not dup.plausible(one)[0]:
        return (f"implausible (scale {rec['scale']:.2f}, rot {rec['rotation']:.1f}, overlap {rec['overlap']:.2f}, "
                f"tone {rec['tone']:.0f})")
    if rec["residual"] > min(rec["allowed"], dup.MAX_RESIDUAL):
        return f"residual {rec['residual']:.1f} > allowed {rec['allowed']:.1f}"
    if not dup.accepted(one)[0]:
        return f"structure {rec['structure']:.2f} (self {rec['self_structure']:.2f}), peak {rec['peak']:.1f}"
    if min_detail is not None and rec["detail"] < min_detail:
        return f"detail {rec['detail']:.3f} < {min_detail:.3f}"
    return "accepted"


def sheet(path: str, images: list, rows: list[tuple[int, int, str]], *, zoom: int = 3) -> None:
    """A contact sheet: one line per pair (first image, second image, their difference), with a caption."""
    cell = 28 * zoom
    lines = []
    for a, b, text in rows[:80]:
        tiles = []
        for img in (images[a], images[b]):
            g = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            tiles.append(cv2.resize(g, (cell, cell), interpolation=cv2.INTER_NEAREST))
        diff = np.clip(128 + tiles[0].astype(np.int16) - tiles[1].astype(np.int16), 0, 255).astype(np.uint8)
        line = np.full((cell + 14, 3 * cell + 4 + 520), 255, np.uint8)
        line[14:, :cell], line[14:, cell + 2:2 * cell + 2], line[14:, 2 * cell + 4:3 * cell + 4] = *tiles, diff
        cv2.putText(line, text[:110], (2, 11), cv2.FONT_HERSHEY_PLAIN, 0.8, 0, 1)
        lines.append(line)
    if lines:
        cv2.imwrite(path, np.vstack(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--per-kind", type=int, default=15)
    parser.add_argument("--look-alikes", type=int, default=40)
    parser.add_argument("--sheet", default=None, metavar="PNG",
                        help="write a contact sheet of the other pairs accepted and the copies missed")
    parser.add_argument("--list", action="store_true", help="list the other pairs accepted and the copies missed")
    parser.add_argument("--dump", default=None, metavar="CSV", help="write every verified pair's measures and label")
    parser.add_argument("--colour", action="store_true",
                        help="96 px colour scenes (the benchmark's generator, this seed) instead of Fashion-MNIST")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    kinds = KINDS
    if args.colour:  # the benchmark's scene families and edits, at a development seed
        import bench_duplicates as bench

        kinds = bench.KINDS[2:]  # (byte and PNG copies are exact)
        images, layouts = [], []
        for _ in range(args.n):
            img, layout = bench.scene(rng) if not layouts or rng.random() < 0.5 else bench.scene(rng, layouts[-1])
            images.append(img), layouts.append(layout)
        truth, source_of = [], list(range(args.n))
        for kind in kinds:
            for src in rng.choice(args.n, args.per_kind, replace=False):
                truth.append((int(src), len(images), kind))
                images.append(bench.edit(images[src], kind, rng)[0])
                source_of.append(int(src))
        for src in rng.choice(args.n, args.look_alikes, replace=False):
            siblings = [bench.scene(rng, layouts[src])[0] for _ in range(8)]
            d = [((s.astype(np.float32) - images[src].astype(np.float32)) ** 2).sum() for s in siblings]
            truth.append((int(src), len(images), "look-alike"))
            images.append(siblings[int(np.argmin(d))])
            source_of.append(-1 - len(images))
    else:
        ds = load_fashion_mnist()
        train = np.flatnonzero(ds.splits == "train")
        base = rng.choice(train, args.n, replace=False)
        rest = np.setdiff1d(train, base)
        images, truth = [ds.pixels[i] for i in base], []
        source_of = list(range(args.n))  # each image's original (a copy's source)
        for kind in KINDS:
            for src in rng.choice(args.n, args.per_kind, replace=False):
                truth.append((int(src), len(images), kind))
                images.append(edit(images[src], kind, rng))
                source_of.append(int(src))
        for src in rng.choice(args.n, args.look_alikes, replace=False):
            same = rest[ds.labels[rest] == ds.labels[base[src]]]
            d = ((ds.pixels[same].reshape(len(same), -1).astype(np.float32)
                  - images[src].reshape(-1).astype(np.float32)) ** 2).sum(axis=1)
            truth.append((int(src), len(images), "look-alike"))
            images.append(ds.pixels[same[d.argmin()]])
            source_of.append(-1 - len(images))
    # (as the scan reads a file cv2 wrote: the scenes are drawn in BGR order, the scan reads RGB)
    scanned = [canvas_thumbnail(im[:, :, ::-1] if im.ndim == 3 else im, size=32) for im in images]
    thumbs, sizes = np.stack([t for t, _ in scanned]), np.array([hw for _, hw in scanned], np.int16)
    t0 = time.perf_counter()
    found = dup.candidate_pairs(thumbs, sizes, np.arange(len(images)))
    t1 = time.perf_counter()
    min_detail, max_quick, _ = dup.calibrate(thumbs, sizes, np.arange(len(images)))
    t2 = time.perf_counter()
    checked = dup.verify_pairs(thumbs, sizes, found["query"], found["match"], found["variant"], found["centroid"],
                               alternative=(found["alt_query"], found["alt_match"], found["alt_variant"]),
                               max_quick=max_quick)
    t3 = time.perf_counter()
    ok = dup.accepted(checked, min_detail=min_detail)
    n_ecc = int(checked["ecc"].sum())
    print(f"{len(images):,} images, {len(checked):,} candidate pairs ({n_ecc:,} ECC alignments, "
          f"{n_ecc / len(images):.2f} per image): search {t1 - t0:.1f} s, calibration {t2 - t1:.1f} s (detail bound "
          f"{min_detail}, cheap look bound {max_quick:.2f}), verification {t3 - t2:.1f} s")
    key = {(min(a, b), max(a, b)): k for a, b, k in truth}
    source = np.array(source_of)
    a_, b_ = checked["a"].to_numpy(), checked["b"].to_numpy()
    label = np.array([key.get((a, b), "other") for a, b in zip(a_, b_)])
    label[(label == "other") & (source[a_] == source[b_])] = "same source"  # two copies of one original
    rows = []
    for kind in tuple(kinds) + ("look-alike",):
        n = sum(k == kind for *_, k in truth)
        rows.append((kind, (label == kind).sum() / n, (ok & (label == kind)).sum() / n))
    print(pd.DataFrame(rows, columns=["kind", "candidate", "accepted"]).round(2).to_string(index=False))
    n_copies = sum(k != "look-alike" for *_, k in truth)
    print(f"copies accepted {int((ok & ~np.isin(label, ['other', 'same source', 'look-alike'])).sum())}/{n_copies}; "
          f"other pairs accepted: {int((ok & (label == 'other')).sum())} per {len(images):,} images "
          f"(and {int((ok & (label == 'same source')).sum())} of two copies of one original)")
    # one source per copy: the originals as the earlier split, the copies and look-alikes as the later one
    rank = (np.arange(len(images)) >= args.n).astype(np.int64)
    near = np.flatnonzero(ok)
    kept = dup.one_source(a_[near], b_[near], np.ones(len(near), bool),
                          checked["residual"].to_numpy()[near] / np.maximum(checked["allowed"].to_numpy()[near], 1e-6),
                          rank)
    dropped = pd.Series(label[near[~kept]]).value_counts().to_dict()
    print(f"one source per copy (originals earlier, copies later): {int((~kept).sum())} accepted pairs left out "
          f"{dropped}")
    if args.dump:
        checked.assign(label=label, accepted=ok, min_detail=min_detail).to_csv(args.dump, index=False)
    records = checked.to_dict("records")
    listed = [(int(r["a"]), int(r["b"]), f"OTHER {reason(r, min_detail)} res {r['residual']:.1f}/{r['allowed']:.1f} "
               f"str {r['structure']:.2f}/{r['self_structure']:.2f} det {r['detail']:.2f}")
              for r, lab, good in zip(records, label, ok) if lab == "other" and good]
    got = {(min(a, b), max(a, b)) for a, b in zip(a_[ok], b_[ok])}
    where = {(int(r["a"]), int(r["b"])): r for r in records}
    for src, copy, kind in truth:
        if kind != "look-alike" and (src, copy) not in got:
            r = where.get((src, copy))
            listed.append((src, copy, f"MISSED {kind}: " + ("no candidate" if r is None else reason(r, min_detail))))
    if args.list:
        for a, b, text in listed:
            print(f"  {a:>6} {b:>6}  {text}")
    if args.sheet:
        sheet(args.sheet, images, listed)
        print(f"contact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
