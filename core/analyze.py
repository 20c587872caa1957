"""The analysis pipeline: one pass of a Keras model over a data set, written as a run.

``analyze`` decodes images in a thread pool while the model runs (one call
gives both class probabilities and penultimate-layer features), projects the
features with UMAP, computes the tables and writes the run atomically. The
same model on the same data reuses the cached run unless ``force=True``.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core import metrics
from core.datasets import ImageDataset, iter_batches
from core.images import fit_to_input
from core.models import (InferenceModel, ModelError, build_inference_model, file_sha256,
                         load_model, model_format, prepare_input)
from core.runs import write_run
from core.store import Run, RunStore, valid_run_id

Progress = Callable[[str, float], None]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "run"


def cache_key(*, model_sha: str, data_fingerprint: str, layer: str | None, scale: str,
              image_size: tuple[int, int] | None, projection: bool) -> str:
    from core.store import SCHEMA_VERSION

    text = f"{SCHEMA_VERSION}|{model_sha}|{data_fingerprint}|{layer}|{scale}|{image_size}|{projection}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _progress_bar(progress: bool | Progress, total: int, desc: str):
    """A tqdm bar on stderr when progress is True; a callback adapter when it is callable."""
    if callable(progress):
        class _Callback:
            def __init__(self):
                self.done = 0

            def update(self, k):
                self.done += k
                # prediction is the first 90% of the bar; projection and writing follow
                progress(f"{desc}: {self.done:,}/{total:,} images", 0.9 * self.done / max(total, 1))

            def close(self):
                pass
        return _Callback()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not progress, file=sys.stderr,
                mininterval=0.5)


def to_probabilities(outputs: np.ndarray, *, activation: str | None, n_classes: int) -> np.ndarray:
    """Class probabilities from model outputs: softmax logits, expand a 1-unit sigmoid."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if outputs.ndim != 2:
        outputs = outputs.reshape(len(outputs), -1)
    if outputs.shape[1] == 1 and n_classes == 2:
        p = outputs[:, 0]
        if activation not in ("sigmoid",) and (p.min() < 0 or p.max() > 1):
            p = 1.0 / (1.0 + np.exp(-p))
        return np.stack([1.0 - p, p], axis=1)
    if activation == "softmax" or metrics.looks_like_probabilities(outputs):
        return outputs
    return metrics.softmax(outputs).astype(np.float32)


def run_inference(
    inference: InferenceModel, dataset: ImageDataset, *, batch_size: int = 128,
    image_size: tuple[int, int] | None = None, progress: bool | Progress = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[dict]]:
    """Run the wrapped model once over every row.

    Returns ``(ok_rows, outputs, features, failed)``: the row positions that
    decoded, raw model outputs (n_ok, K), features (n_ok, D) or None, and the
    rows that failed with reasons.
    """
    size = inference.input_size or image_size
    if size is None:
        raise ModelError("The model accepts any image size: pass --image-size HxW")
    channels = inference.channels or 3
    if channels not in (1, 3):
        raise ModelError(f"Model expects {channels} input channels; only 1 (grayscale) or 3 (RGB) are supported")
    ok_rows, outputs, features, failed = [], [], [], []
    bar = _progress_bar(progress, len(dataset), "Predicting")
    try:
        for batch in iter_batches(dataset, size=size, channels=channels, batch_size=batch_size):
            failed += batch.failed
            if len(batch.index):
                x = prepare_input(batch.images, inference.scale)
                if inference.has_features:
                    out, feat = inference.model.predict_on_batch(x)
                    features.append(np.asarray(feat, dtype=np.float32))
                else:
                    out = inference.model(x)
                outputs.append(np.asarray(out, dtype=np.float32))
                ok_rows.append(batch.index)
            bar.update(len(batch.index) + len(batch.failed))
    finally:
        bar.close()
    if not ok_rows:
        return np.zeros(0, np.int64), np.zeros((0, max(inference.n_outputs, 0)), np.float32), None, failed
    return (np.concatenate(ok_rows), np.concatenate(outputs),
            np.concatenate(features) if features else None, failed)


def analyze(
    model, dataset: ImageDataset, *, store: RunStore | None = None, run_id: str | None = None,
    layer: str | None = None, batch_size: int = 128, force: bool = False,
    training: dict | None = None, model_path: str | Path | None = None, unsafe: bool = False,
    projection: bool = True, progress: bool | Progress = True, scale: str = "auto",
    image_size: tuple[int, int] | None = None, seed: int = 0,
) -> Run:
    """Analyse ``dataset`` with ``model`` (a keras.Model or a path) and write a run.

    Every row of the data set is predicted; metrics describe the 'test' split
    when there is one (else 'val', else all rows). Returns the stored Run.
    """
    store = store or RunStore()
    t_start = time.perf_counter()
    say = progress if callable(progress) else (lambda msg, frac: print(msg, file=sys.stderr) if progress else None)

    if isinstance(model, (str, Path)):
        model_path = Path(model)
        fmt = model_format(model_path)
        say(f"Loading model {model_path}", 0.0)
        model = load_model(model_path, unsafe=unsafe)
    else:
        fmt = "keras"
    model_sha = file_sha256(model_path) if model_path else _weights_sha(model)
    inference = build_inference_model(model, layer=layer, scale=scale)
    k = len(dataset.classes)
    if inference.n_outputs != k and not (inference.n_outputs == 1 and k == 2):
        raise ModelError(f"The model outputs {inference.n_outputs} classes but the data set has {k} "
                         f"classes ({', '.join(dataset.classes[:5])}{', ...' if k > 5 else ''})")

    key = cache_key(model_sha=model_sha, data_fingerprint=dataset.fingerprint(), layer=inference.layer,
                    scale=inference.scale, image_size=inference.input_size or image_size,
                    projection=projection)
    if run_id is None:
        stem = Path(model_path).stem if model_path else getattr(model, "name", "model")
        if model_path and stem in ("model", "saved_model", "best", "checkpoint"):
            stem = Path(model_path).resolve().parent.name  # models/<name>/model.keras says more by its folder
        run_id = f"{_slug(stem)}-{_slug(dataset.name)}-{key[:6]}"
    valid_run_id(run_id)
    cached = store.find_cached(key)
    if cached is not None and not force and training is None:
        say(f"Reusing cached run {cached!r} (same model and data; pass force=True / --force to redo)", 1.0)
        return store.load(cached)

    t0 = time.perf_counter()
    ok_rows, outputs, features, failed = run_inference(
        inference, dataset, batch_size=batch_size, image_size=image_size, progress=progress)
    predict_s = time.perf_counter() - t0
    if len(ok_rows) == 0:
        raise ModelError(f"None of the {len(dataset)} images could be decoded "
                         f"(first reason: {failed[0]['reason'] if failed else 'unknown'})")
    probs = to_probabilities(outputs, activation=inference.output_activation, n_classes=k)
    kept = dataset.subset(ok_rows)

    notes, proj, proj_info, proj_s = [], None, None, 0.0
    if features is None:
        notes.append("No embeddings: a SavedModel loads as one opaque function in Keras 3; "
                     "save the model as .keras to get embeddings and the UMAP map.")
    elif projection:
        from core.projection import project

        say(f"Projecting {len(features):,} embeddings with UMAP", 0.9)
        t0 = time.perf_counter()
        proj, proj_info = project(features, seed=seed)
        proj_s = time.perf_counter() - t0
        if proj is None:
            notes.append(proj_info.get("reason", "projection skipped"))

    say("Writing run", 0.99)
    run = write_run(
        store, run_id, classes=dataset.classes, y_true=kept.labels, probs=probs, paths=kept.paths,
        splits=kept.splits, embeddings=features, projection=proj, images=kept.pixels,
        model={"path": str(Path(model_path).resolve()) if model_path else None, "sha256": model_sha,
               "format": fmt, "input_size": list(inference.input_size or image_size or ()),
               "channels": inference.channels, "scale": inference.scale,
               "output_activation": inference.output_activation,
               "outputs_were": "probabilities" if np.array_equal(probs, outputs) else "logits"},
        data={**dataset.describe(), "fingerprint": dataset.fingerprint()},
        layer=inference.layer, skipped=list(dataset.skipped) + failed,
        timings={"predict_s": round(predict_s, 3), "projection_s": round(proj_s, 3),
                 "total_s": round(time.perf_counter() - t_start, 3),
                 "images_per_s": round(len(ok_rows) / max(predict_s, 1e-9), 1)},
        cache_key=key, projection_info=proj_info, training=training, notes=notes,
    )
    say(f"Run {run.id!r}: accuracy {run.metrics['accuracy']:.4f} on {run.eval_split} "
        f"({run.metrics['n']:,} images), {len(failed) + len(dataset.skipped)} skipped", 1.0)
    return run


def _weights_sha(model) -> str:
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.asarray(w.numpy()).tobytes())
    return h.hexdigest()


class RunModel:
    """The model of a run, ready to classify single images the way the run did."""

    def __init__(self, run: Run, *, unsafe: bool = False):
        m = run.manifest["model"]
        path = m.get("path")
        if not path or not Path(path).exists():
            raise ModelError(f"The model of run {run.id!r} is not on disk: {path!r}")
        self.inference = build_inference_model(load_model(path, unsafe=unsafe), scale=m.get("scale", "auto"))
        self.size = tuple(m.get("input_size") or ()) or self.inference.input_size
        self.channels = self.inference.channels or m.get("channels") or 3
        self.n_classes = len(run.classes)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (K,) for one RGB/gray uint8 image of any size."""
        x = fit_to_input(pixels, size=self.size, channels=self.channels)[None]
        x = prepare_input(x, self.inference.scale)
        if self.inference.has_features:
            out, _ = self.inference.model.predict_on_batch(x)
        else:
            out = self.inference.model(x)
        return to_probabilities(np.asarray(out), activation=self.inference.output_activation,
                                n_classes=self.n_classes)[0]


def load_run_model(run: Run, *, unsafe: bool = False) -> RunModel:
    """Load the model a run was made with (safe mode) for single-image predictions."""
    return RunModel(run, unsafe=unsafe)

