"""Causes as a user arrives: a folder of train/ and test/ only (no val), some test images filed under the wrong
class, a plain Keras CNN trained the notebook way (cv2.imread, / 255), saved as .keras, loaded back by the CLI.

Without val the label-error classifier learns on train, whose images the model has seen. Version 4 read that
in-sample error rate as the model's rate on unseen images and called 71% of the model's own errors on correctly
filed test images ``label`` here; version 5 calls 29% (measured when this test was written: 24 of 83). That is
still far from the issue's 10%: on these shapes both the model's embeddings and the gray thumbnails put a square
called a circle among circles, so nothing independent of the model sees what the image shows. The bound below
guards the fix, with room for the model trained on another CPU to differ."""

import csv

import cv2
import numpy as np
import pytest

from core.cli import main

CLASSES = ["circle", "cross", "square", "triangle"]
H, W = 36, 44


def draw(cls: str, rng: np.random.Generator) -> np.ndarray:
    """A filled shape of a random colour, size and place on a random background, with noise (BGR uint8)."""
    img = np.ones((H, W, 3)) * rng.uniform(0, 255, 3)
    colour = rng.uniform(0, 255, 3)
    while np.abs(colour - img[0, 0]).sum() < 180:
        colour = rng.uniform(0, 255, 3)
    c = tuple(float(v) for v in colour)
    cx, cy, r = int(rng.integers(13, W - 13)), int(rng.integers(12, H - 12)), int(rng.integers(6, 11))
    if cls == "circle":
        cv2.circle(img, (cx, cy), r, c, -1, cv2.LINE_AA)
    elif cls == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), c, -1, cv2.LINE_AA)
    elif cls == "triangle":
        cv2.fillPoly(img, [np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)], c, cv2.LINE_AA)
    else:
        t = max(2, r // 3)
        cv2.rectangle(img, (cx - r, cy - t), (cx + r, cy + t), c, -1)
        cv2.rectangle(img, (cx - t, cy - r), (cx + t, cy + r), c, -1)
    return np.clip(np.rint(img + rng.normal(0, rng.uniform(4, 16), img.shape)), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_a_train_test_folder_and_a_saved_cnn_own_errors_are_not_called_wrong_labels(tmp_path):
    import keras

    rng = np.random.default_rng(19)
    root, truth = tmp_path / "data", {}
    for split, n in (("train", 250), ("test", 90)):
        for ci, cls in enumerate(CLASSES):
            for i in range(n):
                filed = cls
                if split == "test" and rng.random() < 0.1:  # a wrong label: filed under another class
                    filed = CLASSES[(ci + int(rng.integers(1, len(CLASSES)))) % len(CLASSES)]
                rel = f"{split}/{filed}/{cls}_{i:03d}.{'jpg' if i % 2 else 'png'}"
                (root / split / filed).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / rel), draw(cls, rng))
                truth[rel] = (cls, filed)
    (root / "test" / "circle" / "empty.png").write_bytes(b"")  # a broken file: skipped with its reason

    files = sorted(p for p in (root / "train").rglob("*.*"))
    x = np.stack([cv2.imread(str(p)) / 255.0 for p in files]).astype(np.float32)
    y = np.array([CLASSES.index(p.parent.name) for p in files])
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((H, W, 3)), keras.layers.Conv2D(16, 3, activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Conv2D(32, 3, activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(len(CLASSES), activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    order = np.random.default_rng(0).permutation(len(y))
    model.fit(x[order], y[order], epochs=25, batch_size=32, verbose=0)
    model.save(tmp_path / "shapes.keras")

    store = str(tmp_path / "store")
    assert main(["analyze", "--model", str(tmp_path / "shapes.keras"), "--data", str(root), "--name", "shapes",
                 "--preprocess", "unit", "--channel-order", "bgr", "--no-projection", "--store", store]) == 0
    assert main(["diagnose", "shapes", "--store", store]) == 0
    out = tmp_path / "causes.csv"
    assert main(["causes", "shapes", "--out", str(out), "--store", store]) == 0
    rows = list(csv.DictReader(out.open()))
    own = [r for r in rows if truth[r["path"]][0] == truth[r["path"]][1]]
    misfiled = [r for r in rows if truth[r["path"]][0] != truth[r["path"]][1]]
    assert len(own) >= 30 and len(misfiled) >= 15, (len(own), len(misfiled))  # a model that errs, some flips
    own_label = sum(r["cause"] == "label" for r in own) / len(own)
    found = sum(r["cause"] in ("label", "copy") for r in misfiled) / len(misfiled)
    assert own_label <= 0.45, own_label
    assert found >= 0.8, found
    called = [r for r in misfiled if r["cause"] == "label"]
    assert called and all(r["suggested_label"] == r["predicted_label"] for r in called)
    assert any("images it learnt from" in r["evidence"] for r in called)
