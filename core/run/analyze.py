"""The analysis pipeline: one pass of a Keras or ONNX model over a data set, written as a run.

``analyze`` decodes images in a thread pool while the model runs (one call
gives both class probabilities and penultimate-layer features), computes the
tables and writes the run atomically; the run is usable from then on. The
UMAP map of the features follows as the run's derived 'projection'
(``core.analysis.projection.ensure_projection``), in this process or in a background
one. The same model on the same data reuses the cached run unless ``force=True``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from core.data.datasets import ImageDataset, iter_batches
from core.data.images import fit_to_input
from core.data.preprocess import PREPROCESS_CHOICES, RESIZE_METHODS, Preprocessing, feed
from core.model import formats
from core.model.input_check import SAMPLE_SIZE, check_input, expected_from_training, sample_rows
from core.model.load import InferenceModel, ModelError, build_inference_model, load_model
from core.progress import Progress, progress_bar, say_function, slug
from core.run import jobs, metrics
from core.run.config import AnalysisConfig, ProjectionConfig
from core.run.finite import drop_non_finite
from core.run.store import Run, RunConflictError, RunCorruptError, RunSchemaError, RunStore, valid_run_id
from core.run.write import write_run


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
    image_size: tuple[int, int] | None = None, progress: bool | Progress = True, resize: str = "area",
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
    # prediction fills the first 86% of a caller's bar; the input check (88%), writing and the map follow
    bar = progress_bar(progress, len(dataset), "Predicting", unit="image", span=0.86)
    try:
        for batch in iter_batches(dataset, size=size, channels=channels, batch_size=batch_size, resize=resize):
            failed += batch.failed
            if len(batch.index):
                x = feed(batch.images, inference.preprocessing)
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


def analysis_config(
    *, model_sha256: str, dataset: ImageDataset, layer: str | None = None, scale: str = "auto",
    channel_order: str = "rgb", image_size: tuple[int, int] | None = None, projection: bool = True,
    seed: int = 0, resize: str = "area",
) -> AnalysisConfig:
    """The config that determines a run of this model on this data set (no model needed).

    ``scale`` is the preprocessing mode (``--preprocess``), ``channel_order``
    'rgb' or 'bgr'; both are checked here, before any model is loaded.
    """
    if scale not in PREPROCESS_CHOICES:
        raise ModelError(f"--preprocess must be one of {list(PREPROCESS_CHOICES)}. Received: {scale!r}")
    Preprocessing(scale, channel_order)  # an unknown channel order is refused in one line
    if resize not in RESIZE_METHODS:
        raise ModelError(f"--resize must be one of {list(RESIZE_METHODS)}. Received: {resize!r}")
    return AnalysisConfig(
        model_sha256=model_sha256, data_fingerprint=dataset.fingerprint(), layer=layer, scale=scale,
        channel_order=channel_order, image_size=tuple(image_size) if image_size else None,
        projection=ProjectionConfig(seed=seed) if projection else None, resize=resize,
    )


def default_run_id(model_name: str, dataset: ImageDataset, config: AnalysisConfig) -> str:
    """``<model>-<data>-<first 6 digits of the config key>``."""
    return f"{slug(model_name)}-{slug(dataset.name)}-{config.key()[:6]}"


def reuse_or_refuse(store: RunStore, run_id: str, config: AnalysisConfig, *, named: bool,
                    force: bool, say: Progress, unsafe: bool = False) -> Run | None:
    """The stored run to reuse for ``config``, or None when it must be computed.

    A run named ``run_id`` made from another config is never replaced silently:
    RunConflictError unless ``force``. A run made from the same config under
    another name is copied to the requested name (hard links, no recompute).
    """
    key = config.key()
    link = store.root / run_id
    if link.exists() or link.is_symlink():
        try:
            existing = store.load(run_id)
            problem = None
        except (RunCorruptError, RunSchemaError) as exc:
            existing, problem = None, str(exc).splitlines()[0]
        if existing is not None and existing.cache_key == key and not force:
            say(f"Reusing run {run_id!r} (same model, data and options; --force recomputes it)", 1.0)
            return _with_opt_in(existing, unsafe)
        if not force:
            if problem is not None:
                why = f"cannot be read ({problem})"
            elif existing.config is None:
                why = "was made by an older version that did not record its config"
            else:
                why = "was made from another config (" + "; ".join(config.differences(existing.config)[:3]) + ")"
            raise RunConflictError(f"Run {run_id!r} already exists and {why}: pass --force to replace it, "
                                   "or choose another --name")
        return None
    if force:
        return None
    cached = store.find_cached(key)
    if cached is None:
        return None
    if named:
        say(f"Copying cached run {cached!r} as {run_id!r} (same model, data and options)", 1.0)
        return _with_opt_in(store.copy_run(cached, run_id), unsafe)
    say(f"Reusing cached run {cached!r} (same model, data and options; --force recomputes it)", 1.0)
    return _with_opt_in(store.load(cached), unsafe)


def _with_opt_in(run: Run, unsafe: bool) -> Run:
    """A reused run records the unsafe-load opt-in given now (results do not depend on it)."""
    if unsafe and not run.model_info.unsafe_load:
        run.record_unsafe_opt_in()
    return run


def analyze(
    model, dataset: ImageDataset, *, store: RunStore | None = None, run_id: str | None = None,
    layer: str | None = None, batch_size: int = 128, force: bool = False,
    training: dict | None = None, model_path: str | Path | None = None, unsafe: bool = False,
    projection: bool = True, progress: bool | Progress = True, scale: str = "auto",
    channel_order: str = "rgb", input_check: bool = True,
    expected_accuracy: tuple[float, str] | None = None,
    class_source: str = "", image_size: tuple[int, int] | None = None, seed: int = 0, background_projection: bool = False,
    engine: str = "local", ray_address: str | None = None, ray_cpus: int | None = None,
    ray_actors: int | None = None, resize: str = "area",
) -> Run:
    """Analyse ``dataset`` with ``model`` (a keras.Model, a loaded ONNX model or a path) and write a run.

    Every row of the data set is predicted; metrics describe the 'test' split
    when there is one (else 'val', else all rows). The run's config (model
    hash, data fingerprint, options, projection seed) is formed first: a run
    of the same config is reused without loading the model (no TensorFlow),
    unless ``force`` or ``training`` is given. Returns the stored Run.

    The UMAP map is added after the run is written: before this returns, or
    with ``background_projection`` by a background process while the run is
    already usable (``core.analysis.projection.projection_status`` says 'computing').

    ``scale`` is the preprocessing mode (``--preprocess``: 'auto', 'raw',
    'unit', 'symmetric', 'imagenet', 'caffe', 'tf', 'torch') and
    ``channel_order`` 'rgb' or 'bgr' (``core.data.preprocess``); both are part of
    the run's config, as is ``resize``, how pictures are resized to the model's
    input (``core.data.preprocess.RESIZE_METHODS``). With ``input_check`` (default) a seeded sample of at most
    ``core.model.input_check.SAMPLE_SIZE`` images is fed under the other
    preprocessings and the class order is judged from the confusion matrix;
    the finding is kept in the manifest (``model.input_check``, its ``lines``
    the sentences to show). ``expected_accuracy`` (accuracy, where from), e.g.
    from a Keras history.json, is compared with too; ``class_source`` says
    where the class order came from, for those sentences.

    ``engine='ray'`` decodes and predicts with Ray Data (``core.run.ray_engine``):
    on a new local Ray with ``ray_cpus`` CPUs, or on the cluster at
    ``ray_address``, with ``ray_actors`` model copies. It writes the same run as
    the local engine and is no part of the run's config. A model given as an
    object (not a Keras/SavedModel path) runs on the local engine.
    """
    from core.run.ray_engine import engine_options  # imports no Ray

    ray_options = engine_options(engine, address=ray_address, num_cpus=ray_cpus, actors=ray_actors)
    store = store or RunStore()
    t_start = time.perf_counter()
    say = say_function(progress)

    if isinstance(model, (str, Path)):
        model_path = Path(model)
        fmt = formats.detect(model_path)
        model_sha = fmt.hash(model_path)
    else:
        fmt = formats.of_model(model)
        file = getattr(model, "path", None)  # an ONNX model knows its file (a Keras layer's 'path' is a name)
        model_path = model_path or (file if isinstance(file, Path) else None)
        model_sha = fmt.hash(Path(model_path)) if model_path else _weights_sha(model)
    config = analysis_config(model_sha256=model_sha, dataset=dataset, layer=layer, scale=scale,
                             channel_order=channel_order, image_size=image_size, projection=projection,
                             resize=resize,
                             seed=seed)
    if ray_options is not None and not (isinstance(model, (str, Path)) and fmt.ray):
        given = f"this {fmt.description}" if isinstance(model, (str, Path)) else "a model given in memory"
        ray_formats = [f.description for f in formats.all_formats().values() if f.ray]
        say(f"--engine ray takes a model file of these formats: {', '.join(ray_formats)}; {given} runs on "
            "the local engine", 0.0)
        ray_options = None
    named = run_id is not None
    if run_id is None:
        stem = Path(model_path).stem if model_path else getattr(model, "name", "model")
        if model_path and stem in ("model", "saved_model", "best", "checkpoint"):
            stem = Path(model_path).resolve().parent.name  # models/<name>/model.keras says more by its folder
        run_id = default_run_id(stem, dataset, config)
    valid_run_id(run_id)
    reused = reuse_or_refuse(store, run_id, config, named=named, force=force or training is not None,
                             say=say, unsafe=unsafe)
    if reused is not None and expected_accuracy is not None:  # checked, when made, without it
        from core.model.input_check import judged_with_training

        judged = judged_with_training(reused.model_info.input_check, expected_accuracy, reused.accuracy)
        if judged is not None:
            reused.record_input_check(judged)
    if reused is None:
        with store.reserve(run_id):  # a second writer of this name is refused now, not after its work
            reused = _compute_run(model, dataset, store=store, run_id=run_id, config=config, fmt=fmt,
                                  model_path=model_path, unsafe=unsafe, batch_size=batch_size,
                                  training=training, progress=progress, say=say, t_start=t_start,
                                  ray_options=ray_options, check_input=input_check,
                                  expected_accuracy=expected_accuracy, class_source=class_source)
    # the map, a derived kind like any other (core.analysis.projection), named rather than imported;
    # progress from 0.92, the map's share of an analysis
    return jobs.ensure(reused, "projection", background=background_projection, progress=progress, start_at=0.92)


def _compute_run(model, dataset: ImageDataset, *, store: RunStore, run_id: str, config: AnalysisConfig,
                 fmt: formats.ModelFormat, model_path, unsafe: bool, batch_size: int, training: dict | None,
                 progress: bool | Progress, say: Progress, t_start: float, ray_options=None,
                 check_input: bool = True, expected_accuracy: tuple[float, str] | None = None,
                 class_source: str = "") -> Run:
    if isinstance(model, (str, Path)):
        say(f"Loading model {model_path}", 0.0)
        model = load_model(model_path, unsafe=unsafe)
    inference = build_inference_model(model, layer=config.layer, preprocessing=config.preprocessing)
    k = len(dataset.classes)
    if inference.n_outputs != k and not (inference.n_outputs == 1 and k == 2):
        raise ModelError(f"The model outputs {inference.n_outputs} classes but the data set has {k} "
                         f"classes ({', '.join(dataset.classes[:5])}{', ...' if k > 5 else ''})")
    image_size = config.image_size
    if image_size and inference.input_size and tuple(image_size) != tuple(inference.input_size):
        (h, w), (mh, mw) = image_size, inference.input_size
        raise ModelError(f"--image-size {h}x{w} does not apply: the model takes {mh}x{mw} images (only a model "
                         "that accepts any size is given one)")
    t0 = time.perf_counter()
    if ray_options is not None:  # the model loaded above tells the manifest what it is; Ray's actors predict
        from core.run.ray_engine import run_inference_ray

        ok_rows, outputs, features, failed = run_inference_ray(
            model_path, dataset, layer=config.layer, scale=inference.preprocessing.spec, image_size=image_size,
            resize=config.resize,
            batch_size=batch_size, unsafe=unsafe, expected_sha256=config.model_sha256, options=ray_options,
            progress=progress)
    else:
        ok_rows, outputs, features, failed = run_inference(
            inference, dataset, batch_size=batch_size, image_size=image_size, progress=progress,
            resize=config.resize)
    predict_s = time.perf_counter() - t0
    ok_rows, outputs, features, failed = drop_non_finite(ok_rows, outputs, features, failed, dataset.paths)
    if len(ok_rows) == 0:
        raise ModelError(f"None of the {len(dataset)} images could be decoded "
                         f"(first reason: {failed[0]['reason'] if failed else 'unknown'})")
    probs = to_probabilities(outputs, activation=inference.output_activation, n_classes=k)
    kept = dataset.subset(ok_rows)
    finding = None
    if check_input:
        say("Checking the preprocessing and class order on a sample", 0.88)
        finding = input_check_of(inference, kept, probs, image_size=image_size, class_source=class_source,
                                 resize=config.resize,
                                 expected=expected_accuracy or expected_from_training(training))

    notes = list(inference.notes)
    if features is None:
        notes.append("No embeddings: a SavedModel loads as one opaque function in Keras 3; "
                     "save the model as .keras to get embeddings and the UMAP map.")

    say("Writing run", 0.9)
    run = write_run(
        store, run_id, classes=dataset.classes, y_true=kept.labels, probs=probs, paths=kept.paths,
        splits=kept.splits, embeddings=features, images=kept.pixels,
        model={"path": str(Path(model_path).resolve()) if model_path else None,
               "sha256": config.model_sha256, "format": fmt.name, "unsafe_load": bool(unsafe),
               "input_size": list(inference.input_size or image_size or ()),
               "channels": inference.channels, "scale": inference.preprocessing.mode,
               "channel_order": inference.preprocessing.channel_order, "resize": config.resize,
               "rescaling_layer": inference.rescaling_layer,
               "input_check": finding,
               "output_activation": inference.output_activation,
               "outputs_were": "probabilities" if np.array_equal(probs, outputs) else "logits"},
        data={**dataset.describe(), "fingerprint": config.data_fingerprint},
        layer=inference.layer, skipped=list(dataset.skipped) + failed,
        timings={"predict_s": round(predict_s, 3), "engine": "local" if ray_options is None else "ray",
                 **({"input_check_s": finding.pop("seconds")} if finding else {}),
                 "total_s": round(time.perf_counter() - t_start, 3),
                 "images_per_s": round(len(ok_rows) / max(predict_s, 1e-9), 1)},
        config=config, training=training, notes=notes,
    )
    say(f"Run {run.id!r}: accuracy {run.metrics['accuracy']:.4f} on {run.eval_split} "
        f"({run.metrics['n']:,} images), {len(failed) + len(dataset.skipped)} skipped", 0.92)
    return run


def input_check_of(inference: InferenceModel, kept: ImageDataset, probs: np.ndarray, *,
                   image_size: tuple[int, int] | None = None, class_source: str = "",
                   expected: tuple[float, str] | None = None, sample_size: int = SAMPLE_SIZE,
                   resize: str = "area") -> dict:
    """``core.model.input_check.check_input`` for a run being made: a seeded sample of the evaluated split
    (``kept``'s rows, ``probs`` their probabilities) decoded again and fed under each other
    preprocessing; the class order judged from the split's confusion matrix."""
    from core.run.write import choose_eval_split

    k = probs.shape[1]
    split = choose_eval_split(kept.splits)
    eval_rows = np.flatnonzero(kept.splits == split) if split != "all" else np.arange(len(kept))
    labels, predicted = kept.labels[eval_rows], probs[eval_rows].argmax(axis=1)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    rows = sample_rows(eval_rows, size=sample_size)
    size = inference.input_size or image_size
    decoded, pixels = [], []
    for batch in iter_batches(kept.subset(rows), size=size, channels=inference.channels or 3, batch_size=256,
                              resize=resize):
        decoded.append(rows[batch.index])
        pixels.append(batch.images)
    decoded_rows = np.concatenate(decoded) if decoded else np.zeros(0, np.int64)
    pixels = np.concatenate(pixels) if pixels else np.zeros((0, *size, inference.channels or 3), np.uint8)

    def predict_probs(x: np.ndarray) -> np.ndarray:
        outs = [np.asarray(inference.outputs(x[i:i + 128])) for i in range(0, len(x), 128)]
        return to_probabilities(np.concatenate(outs), activation=inference.output_activation, n_classes=k)

    run_accuracy = float((labels == predicted).mean()) if len(labels) else None
    return check_input(predict_probs, pixels, kept.labels[decoded_rows], current=inference.preprocessing,
                       current_probs=probs[decoded_rows], classes=list(kept.classes), confusion=confusion,
                       rescaling_layer=inference.rescaling_layer, class_source=class_source,
                       expected_accuracy=expected, run_accuracy=run_accuracy)


def _weights_sha(model) -> str:
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.asarray(w.numpy()).tobytes())
    return h.hexdigest()


class RunModel:
    """The model of a run, ready to classify single images the way the run did.

    A model that can run arbitrary code (a SavedModel, a Lambda layer) is
    loaded only when this process's operator allows it (``core.model.trust``: the
    caller's ``unsafe`` from a command-line flag, or the file's current hash in
    ``CLASSIFIER_TRUSTED_MODELS``); the run's manifest, which anyone who can write
    to the store can edit, never switches it on. Refusals name no command-line
    flag: the dashboard, which uses this class, has none.
    """

    def __init__(self, run: Run, *, unsafe: bool = False):
        from core.model.load import UnsafeModelError
        from core.model.trust import ENV_TRUSTED, unsafe_load_allowed

        m = run.manifest["model"]
        path = m.get("path")
        if not path or not Path(path).exists():
            raise ModelError(f"The model of run {run.id!r} is not on disk: {path!r}")
        allowed = unsafe_load_allowed(path, opt_in=unsafe, store_root=Path(run.location).parent)
        try:
            model = load_model(path, unsafe=allowed)
        except UnsafeModelError as exc:
            raise ModelError(f"This run's model is not loaded: {exc.reason}; if you trust the file {path!r}, "
                             f"list its SHA-256 in the file named by {ENV_TRUSTED} (outside the store) and "
                             "restart.") from None
        # The layer the run's features came from, when it asked for one (an ONNX model may have no
        # Gemm/MatMul to find features at otherwise).
        layer = run.config.layer if run.config is not None else None
        self.inference = build_inference_model(model, layer=layer, preprocessing=run_preprocessing(run))
        self.size = tuple(m.get("input_size") or ()) or self.inference.input_size
        self.channels = self.inference.channels or m.get("channels") or 3
        self.resize = run.model_info.resize
        self.n_classes = len(run.classes)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (K,) for one RGB/gray uint8 image of any size."""
        return self.predict_batch(fit_to_input(pixels, size=self.size, channels=self.channels,
                                               resize=self.resize)[None])[0]

    def predict_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (n, K) for uint8 (n, H, W, C) images already at the model's input size
        (``core.data.images.fit_to_input``), fed as the analysis fed them."""
        out = self.inference.outputs(feed(np.asarray(pixels), self.inference.preprocessing))
        return to_probabilities(np.asarray(out), activation=self.inference.output_activation,
                                n_classes=self.n_classes)


def run_preprocessing(run: Run) -> Preprocessing:
    """What the run fed its model (the manifest's resolved mode and channel order; runs made before
    channel orders existed were fed RGB)."""
    m = run.manifest.get("model") or {}
    return Preprocessing(m.get("scale") or "auto", m.get("channel_order") or "rgb")


def load_run_model(run: Run, *, unsafe: bool = False) -> RunModel:
    """Load the model a run was made with for single-image predictions: in Keras safe mode,
    unless this process's operator allows more (``unsafe`` or ``core.model.trust``; see RunModel)."""
    return RunModel(run, unsafe=unsafe)

