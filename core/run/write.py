"""Assemble an analysis run from arrays and write it to the store.

``write_run`` is the single place that turns predictions into the files of a
run (see ``core.run.store`` for the layout). The model pipeline (``core.run.analyze``),
training and the tests and benchmarks (with synthetic arrays) all go through it.
It imports neither TensorFlow nor umap.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Sequence
from importlib import metadata

import numpy as np
import pandas as pd

from core.errors import UserError
from core.run import metrics
from core.run.config import AnalysisConfig
from core.run.store import Run, RunStore

TOP_K = 5
_VERSIONED = ("numpy", "pandas", "scikit-learn", "pyarrow", "opencv-python-headless",
              "tensorflow-cpu", "tensorflow", "keras", "umap-learn")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def choose_eval_split(splits: np.ndarray) -> str:
    """'test' if present, else 'val', else 'all' (every row)."""
    present = set(np.unique(splits).tolist())
    for name in ("test", "val"):
        if name in present:
            return name
    return "all"


def _evaluation_notes(eval_split: str, split_counts: dict[str, int], training: dict | None) -> list[str]:
    """A sentence when the metrics are not of held-out test images: every row, training images among them,
    or a val split that training used (to stop, or to pick its best epoch).

    >>> _evaluation_notes("all", {"train": 300}, None)[0][:60]
    'No test or val split: the metrics are of all 300 images, the'
    >>> _evaluation_notes("test", {"test": 9, "train": 30}, None), _evaluation_notes("val", {"val": 9}, None)
    ([], [])
    """
    if eval_split == "all" and split_counts.get("train"):
        return [f"No test or val split: the metrics are of all {sum(split_counts.values()):,} images, the "
                f"{split_counts['train']:,} training images among them, which the model may have learnt by heart."]
    if eval_split == "val" and isinstance(training, dict):
        return ["No test split: the metrics are of the val split, which training watched (to stop early or to "
                "keep its best epoch): they flatter the model."]
    return []


def predictions_table(
    *, ids: np.ndarray, paths: Sequence[str], splits: np.ndarray, y_true: np.ndarray,
    probs: np.ndarray, classes: Sequence[str],
) -> pd.DataFrame:
    """One row per image: labels, confidence, top-k classes and probabilities."""
    k = min(TOP_K, probs.shape[1])
    top_idx, top_p = metrics.top_k(probs, k=k)
    names = pd.Categorical.from_codes  # categorical keeps 1M-row tables small
    df = pd.DataFrame({
        "id": ids.astype(np.int64),
        "path": pd.Series(paths, dtype=str),
        "split": pd.Categorical(splits),
        "true": y_true.astype(np.int32),
        "predicted": top_idx[:, 0].astype(np.int32),
        "true_label": names(y_true, categories=list(classes)),
        "predicted_label": names(top_idx[:, 0], categories=list(classes)),
        "confidence": top_p[:, 0].astype(np.float32),
        "true_prob": probs[np.arange(len(y_true)), y_true].astype(np.float32),
        "correct": y_true == top_idx[:, 0],
    })
    for j in range(1, k):
        df[f"top{j + 1}"] = top_idx[:, j].astype(np.int32)
        df[f"top{j + 1}_prob"] = top_p[:, j].astype(np.float32)
    return df


def write_run(
    store: RunStore,
    run_id: str,
    *,
    classes: Sequence[str],
    y_true: np.ndarray,
    probs: np.ndarray,
    paths: Sequence[str],
    splits: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    projection: np.ndarray | None = None,
    images: np.ndarray | None = None,
    model: dict | None = None,
    data: dict | None = None,
    layer: str | None = None,
    skipped: Sequence[dict] = (),
    timings: dict | None = None,
    config: AnalysisConfig | None = None,
    projection_info: dict | None = None,
    training: dict | None = None,
    name: str | None = None,
    notes: Sequence[str] = (),
) -> Run:
    """Compute the run's tables and write everything atomically.

    Parameters
    ----------
    classes : K class names, index = label.
    y_true : int array (N,).
    probs : float array (N, K), rows summing to 1.
    paths : N image paths relative to ``data['root']`` (or synthetic ids).
    splits : str array (N,) of 'train'/'val'/'test'/'all'; default all 'all'.
    embeddings, projection, images : optional arrays aligned with the rows.
    config : the analysis config; its key is the run's cache key (None: never reused).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float32)
    n, k = probs.shape
    if k != len(classes):
        raise UserError(f"probs has {k} columns but there are {len(classes)} classes")
    if len(y_true) != n or len(paths) != n:
        raise UserError(f"y_true ({len(y_true)}), paths ({len(paths)}) and probs ({n}) differ in length")
    splits = np.asarray(splits if splits is not None else np.full(n, "all"), dtype=str)
    for label, arr in (("embeddings", embeddings), ("projection", projection), ("images", images)):
        if arr is not None and len(arr) != n:
            raise UserError(f"{label} has {len(arr)} rows, expected {n}")

    table = predictions_table(ids=np.arange(n), paths=list(paths), splits=splits,
                              y_true=y_true, probs=probs, classes=classes)
    eval_split = choose_eval_split(splits)
    mask = np.ones(n, bool) if eval_split == "all" else splits == eval_split
    y_pred = table["predicted"].to_numpy()
    per_class = metrics.per_class_table(y_true[mask], y_pred[mask], classes)
    summary = metrics.summary(y_true[mask], y_pred[mask], probs[mask])
    split_counts = {str(s): int(c) for s, c in zip(*np.unique(splits, return_counts=True))}

    manifest = {
        "name": name or run_id,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cache_key": config.key() if config is not None else None,
        "analysis": config.to_dict() if config is not None else None,
        "model": model or {},
        "data": data or {},
        "classes": list(classes),
        "layer": layer,
        "embedding_dim": int(embeddings.shape[1]) if embeddings is not None else None,
        "eval_split": eval_split,
        "splits": split_counts,
        "metrics": summary,
        "counts": {"images": n, "classes": k, "skipped": len(skipped),
                   "errors_eval": summary["errors"]},
        "skipped": list(skipped),
        "timings": timings or {},
        "projection": projection_info,
        "training": training,
        "notes": list(notes) + _evaluation_notes(eval_split, split_counts, training),
        "versions": library_versions(),
    }
    with store.writing(run_id) as w:
        w.save_predictions(table)
        w.save_per_class(per_class)
        w.save_array("probs", probs)
        if embeddings is not None:
            w.save_array("embeddings", np.asarray(embeddings, dtype=np.float32))
        if projection is not None:
            w.save_array("projection", np.asarray(projection, dtype=np.float32))
        if images is not None:
            w.save_array("images", np.asarray(images, dtype=np.uint8))
        w.save_manifest(manifest)
    return store.load(run_id)
