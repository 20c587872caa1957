"""A blind audit of Fashion-MNIST's own labels among the demo model's errors: how many of the errors that
``bench_causes.py`` counts as "the model's own" are in fact wrong labels in the original data set?

``bench_causes.py`` takes Fashion-MNIST's test labels as right and plants flips on top. Among the
misclassified test images it calls every unflipped one the model's own error, so a detector that
flags one of them counts against the target (at most 10% of own errors called ``label``). Looking at
those images suggested many carry a wrong original label; this script measures it blind.

``--make`` draws, from flip seed ``--seed`` of the benchmark's Fashion-MNIST set, three groups of
misclassified test images: every unflipped one that ``causes`` calls ``label`` ("own_label"), as many
unflipped ones with another cause ("own_other"), and 60 planted flips called ``label`` ("flip_label", the
control: the planted label is wrong by construction). They are shuffled and each is shown with two
options, the given and the predicted label in random order (``option_a`` / ``option_b``), without its
group, cause or confidence. It writes the key (CSV) and contact sheets of 40 (PNG). A person writes A,
B or ? (cannot tell) in the key's ``answer`` column, looking at the sheets only.

``--score KEY`` prints, per group, how often the answer was the given label, the predicted label, or ?.

``benchmarks/data/causes_audit_fashion_seed0.csv`` is the audit done on 2026-12-02 by the developer
who wrote ``causes`` (blind to group as above, not to the method): groups drawn from ``causes``
version 3 on flip seed 0. Rows are rows of the demo run (``python -m core demo``): rows 0-59,999 are
Fashion-MNIST's training images (6,000 of them its val split), row 60,000 + i is test image i.

Usage:
    python benchmarks/audit_causes.py --make /tmp/audit.csv --sheets /tmp/audit [--demo-store DIR] [--seed 0]
    python benchmarks/audit_causes.py --sheets /tmp/audit --from-key benchmarks/data/causes_audit_fashion_seed0.csv
    python benchmarks/audit_causes.py --score benchmarks/data/causes_audit_fashion_seed0.csv
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_causes import fashion_arrays, partners, plant  # noqa: E402

from core.diagnose.causes import CAUSES  # noqa: E402
from core.run import derived  # noqa: E402
from core.run.store import RunStore  # noqa: E402
from core.run.write import write_run  # noqa: E402

GROUPS = ("own_label", "own_other", "flip_label")


def make_key(demo_store: str, seed: int, *, n_flips: int = 60) -> pd.DataFrame:
    arrays = fashion_arrays(demo_store, dev=False, seed=seed)
    labels, splits, probs = arrays["labels"], arrays["splits"], arrays["probs"]
    classes = list(arrays["classes"])
    test = np.flatnonzero(splits == "test")
    noisy, flipped = plant(labels, test, partners(labels, arrays["embeddings"], splits == "train", len(classes)),
                           rate=0.1, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(RunStore(tmp), f"audit{seed}", classes=classes, y_true=noisy, probs=probs,
                        paths=[f"{s}/{i:05d}" for i, s in enumerate(splits)], splits=splits,
                        embeddings=arrays["embeddings"], images=arrays["images"],
                        data={"name": "fashion", "root": None, "images_in_run": True})
        derived.get(run, "image_scan")
        cause = np.asarray(derived.get(run, "causes").array("cause"))
    pred = probs.argmax(axis=1)
    errors = test[pred[test] != noisy[test]]
    own, flips = errors[~flipped[errors]], errors[flipped[errors]]
    is_label = CAUSES.index("label")
    rng = np.random.default_rng(12345 + seed)
    own_label = own[cause[own] == is_label]
    own_other = rng.choice(own[cause[own] != is_label], len(own_label), replace=False)
    flip_label = rng.choice(flips[cause[flips] == is_label], n_flips, replace=False)
    rows = np.r_[own_label, own_other, flip_label]
    groups = np.repeat(GROUPS, [len(own_label), len(own_other), len(flip_label)])
    order = rng.permutation(len(rows))
    rows, groups = rows[order], groups[order]
    names = np.asarray(classes, object)
    a_is_given = rng.integers(0, 2, len(rows)).astype(bool)
    given, predicted = names[noisy[rows]], names[pred[rows]]
    return pd.DataFrame({"n": np.arange(len(rows)), "row": rows, "group": groups,
                         "option_a": np.where(a_is_given, given, predicted),
                         "option_b": np.where(a_is_given, predicted, given), "answer": "",
                         "given_label": given, "predicted_label": predicted})


def sheets(key: pd.DataFrame, images: np.ndarray, folder: Path, *, per_sheet: int = 40) -> list[Path]:
    """Contact sheets: each image 140 px with its number and the two options, nothing else."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for start in range(0, len(key), per_sheet):
        tiles = []
        for item in key.iloc[start:start + per_sheet].itertuples():
            image = cv2.resize(np.squeeze(images[item.row]).astype(np.uint8), (140, 140),
                               interpolation=cv2.INTER_CUBIC)
            tile = np.full((190, 140, 3), 255, np.uint8)
            tile[:140] = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            for y, text, colour in ((155, f"#{item.n}", (200, 0, 0)), (170, f"A {item.option_a}", (0, 0, 0)),
                                    (185, f"B {item.option_b}", (0, 0, 0))):
                cv2.putText(tile, text, (2, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
            tiles.append(tile)
        while len(tiles) % 8:
            tiles.append(np.full((190, 140, 3), 255, np.uint8))
        path = folder / f"sheet_{start // per_sheet}.png"
        cv2.imwrite(str(path), np.vstack([np.hstack(tiles[i:i + 8]) for i in range(0, len(tiles), 8)]))
        written.append(path)
    return written


def score(key: pd.DataFrame) -> pd.DataFrame:
    answer = key["answer"].astype(str).str.strip().str.upper()
    if not answer.isin(["A", "B", "?"]).all():
        bad = key.loc[~answer.isin(["A", "B", "?"]), "n"].tolist()[:5]
        raise SystemExit(f"audit: every answer must be A, B or ?; items {bad} are not")
    chosen = np.where(answer == "A", key["option_a"], np.where(answer == "B", key["option_b"], ""))
    verdict = np.where(answer == "?", "cannot tell",
                       np.where(chosen == key["given_label"], "given label right", "predicted label right"))
    table = pd.crosstab(key["group"], verdict, colnames=["answer"]).reindex(GROUPS).fillna(0).astype(int)
    return table.assign(n=table.sum(axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make", help="write a new key (CSV) here")
    parser.add_argument("--from-key", help="draw the sheets of this key")
    parser.add_argument("--sheets", help="folder for the contact sheets")
    parser.add_argument("--score", help="a key with answers")
    parser.add_argument("--demo-store", default="/tmp/causes_store")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.make or args.from_key:
        key = make_key(args.demo_store, args.seed) if args.make else pd.read_csv(args.from_key)
        if args.make:
            key.to_csv(args.make, index=False)
            print(f"key: {args.make} ({len(key)} images; fill its 'answer' column with A, B or ?)")
        if args.sheets:
            images = np.load(RunStore(args.demo_store).load("fashion-mnist-demo").path / "images.npy",
                             mmap_mode="r", allow_pickle=False)
            for path in sheets(key, images, Path(args.sheets)):
                print(path)
    if args.score:
        table = score(pd.read_csv(args.score, keep_default_na=False))
        print(table.to_string())
        for group, line in table.iterrows():
            print(f"{group}: predicted label right {line.get('predicted label right', 0) / line['n']:.0%}, "
                  f"given label right {line.get('given label right', 0) / line['n']:.0%}, "
                  f"cannot tell {line.get('cannot tell', 0) / line['n']:.0%} (of {line['n']})")


if __name__ == "__main__":
    main()
