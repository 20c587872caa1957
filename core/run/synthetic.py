"""Synthetic runs for tests, screenshots and benchmarks (no model, no TensorFlow).

``make_synthetic_run`` writes a run whose numbers behave like a real
classifier's: probabilities peaked on the true class for most rows, confusions
concentrated on neighbouring classes, clustered embeddings and projection, and
small generated images (a class-specific pattern plus noise) stored in the run.
"""

from __future__ import annotations

import numpy as np

from core.run.config import AnalysisConfig
from core.run.store import Run, RunStore
from core.run.write import write_run


def synthetic_arrays(
    n: int, n_classes: int, *, accuracy: float = 0.85, dim: int = 32, image_size: int = 16,
    with_images: bool = True, seed: int = 0, label_noise: float = 0.0,
) -> dict:
    """Arrays for ``write_run``: y_true, probs, embeddings, projection, images, splits, paths.

    ``label_noise``: the share of the correctly predicted test rows whose given label is then replaced by
    the next class (wrong labels: the image, its embedding and the prediction show the class it is);
    ``flipped`` lists them. Drawn from a generator of its own: the other arrays do not change with it."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, n)
    wrong = rng.random(n) > accuracy
    # mistakes mostly go to the next class (structured confusion, like shirt vs T-shirt)
    offset = np.where(rng.random(n) < 0.7, 1, rng.integers(1, max(n_classes, 2), n))
    y_pred = np.where(wrong, (y_true + offset) % n_classes, y_true)
    logits = rng.normal(0.0, 1.0, (n, n_classes)).astype(np.float32)
    logits[np.arange(n), y_pred] += rng.uniform(1.0, 6.0, n).astype(np.float32)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits); probs /= probs.sum(axis=1, keepdims=True)
    centers = rng.normal(0.0, 4.0, (n_classes, dim)).astype(np.float32)
    embeddings = centers[y_pred] + rng.normal(0.0, 1.0, (n, dim)).astype(np.float32)
    angle = 2 * np.pi * np.arange(n_classes) / n_classes
    ring = np.stack([np.cos(angle), np.sin(angle)], axis=1) * 10
    projection = (ring[y_true] * 0.6 + ring[y_pred] * 0.4
                  + rng.normal(0.0, 1.0, (n, 2))).astype(np.float32)
    splits = np.where(rng.random(n) < 0.25, "test", "train")
    out = {
        "y_true": y_true, "probs": probs.astype(np.float32), "embeddings": embeddings,
        "projection": projection, "splits": splits,
        "paths": [f"{s}/{i:07d}" for i, s in enumerate(splits)],
    }
    if with_images:
        yy, xx = np.mgrid[0:image_size, 0:image_size]
        base = np.stack([((np.sin(xx * (c % 5 + 1) / 3.0) + np.cos(yy * (c // 5 + 1) / 3.0)) * 60 + 128)
                         for c in range(n_classes)]).astype(np.float32)
        noise = rng.normal(0.0, 20.0, (n, image_size, image_size)).astype(np.float32)
        out["images"] = np.clip(base[y_true] + noise, 0, 255).astype(np.uint8)
    candidates = np.flatnonzero((splits == "test") & ~wrong)
    flip_rng = np.random.default_rng([seed, 1])
    flipped = np.sort(flip_rng.choice(candidates, int(round(label_noise * len(candidates))), replace=False))
    out["y_true"] = y_true.copy()
    out["y_true"][flipped] = (y_true[flipped] + 1) % n_classes
    out["flipped"] = flipped
    return out


def make_synthetic_run(
    store: RunStore, run_id: str, *, n: int = 2000, n_classes: int = 10,
    class_names: list[str] | None = None, accuracy: float = 0.85, seed: int = 0,
    with_images: bool = True, history: bool = True, label_noise: float = 0.0, **kwargs,
) -> Run:
    """Write a synthetic run with ``n`` rows and ``n_classes`` classes and return it (``label_noise``: see
    ``synthetic_arrays``)."""
    arrays = synthetic_arrays(n, n_classes, accuracy=accuracy, with_images=with_images, seed=seed,
                              label_noise=label_noise)
    classes = class_names or [f"class_{i:03d}" if n_classes > 26 else chr(ord("a") + i) * 3
                              for i in range(n_classes)]
    training = None
    if history:
        epochs = 8
        loss = np.linspace(1.2, 0.3, epochs)
        training = {
            "recipe": {"recipe": "synthetic", "epochs": epochs},
            "history": {"loss": loss.tolist(), "accuracy": (1 - loss / 2).tolist(),
                        "val_loss": (loss + 0.1).tolist(), "val_accuracy": (1 - loss / 2 - 0.05).tolist(),
                        "learning_rate": [1e-3] * epochs},
            "seconds": 1.0, "epochs": epochs,
        }
    return write_run(
        store, run_id, classes=classes, y_true=arrays["y_true"], probs=arrays["probs"],
        paths=arrays["paths"], splits=arrays["splits"], embeddings=arrays["embeddings"],
        projection=arrays["projection"], images=arrays.get("images"),
        model={"path": f"synthetic/{run_id}.keras", "sha256": "0" * 64, "format": "synthetic"},
        data={"name": "synthetic", "kind": "synthetic", "path": None, "root": None,
              "n_images": n, "images_in_run": with_images},
        layer="synthetic", config=AnalysisConfig(model_sha256="0" * 64, data_fingerprint=f"synthetic-{run_id}-{seed}",
                                                 projection=None),
        training=training,
        projection_info={"method": "synthetic"}, **kwargs,
    )
