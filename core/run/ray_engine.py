"""The Ray Data engine: decode and predict a data set on a Ray cluster, one model per actor.

``run_inference_ray(model_path, dataset, ...)`` returns what the local engine's
``core.run.analyze.run_inference`` returns, ``(ok_rows, outputs, features, failed)``
for the same N rows: the row positions that decoded (n_ok,), the raw model
outputs (n_ok, K), the features (n_ok, D) or None, and the rows that failed
with their reasons, in row order. The analysis written from them is the same
run as the local engine's; which engine made it is no part of the run's config.

How it runs: the data set becomes a Ray Dataset of ``(row, path)`` blocks of
``batch_size`` rows (the local engine's batches); ``map_batches`` sends each
block to an actor of a pool. Each actor (``BatchPredictor``) loads its own
copy of the model once, from bytes the driver read and put in Ray's object
store (so workers need not see the model file), and decodes its batch with
``core.data.datasets.iter_batches``, the local engine's decoder, so skip reasons
are the same words. Image files are read by the actors: every node must see
the data set root at the path the driver sees. Pixel data sets (Fashion-MNIST,
digits) travel through the object store instead.

Ray is optional (``pip install -r requirements-ray.txt``) and imported only
inside these functions. A local Ray (``ray.init()`` on this machine) binds to
127.0.0.1, starts no dashboard and sends no usage statistics.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import UserError

ENGINES = ("local", "ray")
RAY_INSTALL_HINT = "pip install -r requirements-ray.txt"
# Set before Ray starts: no usage statistics, and (local Ray) loopback addresses only. Ray takes
# its node address from this flag: with it off, every server of a local Ray binds to 127.0.0.1.
_NO_USAGE_STATS = {"RAY_USAGE_STATS_ENABLED": "0"}
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayEngineError(UserError, RuntimeError):
    """Ray is missing, cannot start, or a Ray worker failed (the message says which)."""


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    """Where and how wide the Ray engine runs.

    ``address``: an existing cluster ('HEAD_IP:PORT', or 'auto' for the one this machine joined);
    None starts a local Ray on this machine with ``num_cpus`` CPUs (default: all).
    ``actors``: size of the actor pool (default: one per ``cpus_per_actor`` CPUs
    of the cluster); each actor holds one copy of the model.
    """

    address: str | None = None
    num_cpus: int | None = None
    actors: int | None = None
    cpus_per_actor: int = 1

    def __post_init__(self):
        if self.address is not None and not str(self.address).strip():
            raise UserError(f"--ray-address must name a cluster (HOST:PORT or auto). Received: {self.address!r}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise UserError(f"--ray-cpus must be at least 1. Received: {self.num_cpus}")
        if self.num_cpus is not None and self.address is not None:
            raise UserError(f"--ray-cpus sizes a local Ray only; the cluster at --ray-address {self.address!r} "
                             f"has its own CPUs. Received: --ray-cpus {self.num_cpus}")
        if self.actors is not None and self.actors < 1:
            raise UserError(f"--ray-actors must be at least 1. Received: {self.actors}")
        if self.cpus_per_actor < 1:
            raise UserError(f"cpus_per_actor must be at least 1. Received: {self.cpus_per_actor}")


def ray_available() -> bool:
    """Whether Ray Data can be imported, looked up without importing Ray (``find_spec('ray.data')``
    would import the ``ray`` package to search it)."""
    spec = importlib.util.find_spec("ray")
    return spec is not None and any((Path(folder) / "data" / "__init__.py").is_file()
                                    for folder in spec.submodule_search_locations or ())


def engine_options(engine: str, *, address: str | None = None, num_cpus: int | None = None,
                   actors: int | None = None) -> RayOptions | None:
    """Check an engine choice: None for 'local', the RayOptions for 'ray'.

    Raises ValueError for an unknown engine or Ray options given to the local
    engine, RayEngineError (with the install command) when Ray is not installed.
    Imports nothing heavy: a cached run stays free of Ray.
    """
    if engine not in ENGINES:
        raise UserError(f"Unknown engine {engine!r}. Available: {list(ENGINES)}")
    if engine == "local":
        given = [name for name, value in (("--ray-address", address), ("--ray-cpus", num_cpus),
                                          ("--ray-actors", actors)) if value is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise UserError(f"{', '.join(given)} {verb} only with --engine ray. Received: --engine {engine}")
        return None
    options = RayOptions(address=address, num_cpus=num_cpus, actors=actors)
    if not ray_available():
        raise RayEngineError(f"--engine ray needs Ray Data, which is not installed: {RAY_INSTALL_HINT}")
    return options


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayEngineError(f"--engine ray needs Ray Data, which is not installed ({exc}): "
                             f"{RAY_INSTALL_HINT}") from None
    return ray


def init_ray(*, address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to Ray: the cluster at ``address``, else a new local Ray with ``num_cpus`` CPUs.

    A Ray already initialised in this process is used as it is. Returns True
    when this call started the connection (the caller then shuts it down).
    A local Ray listens on 127.0.0.1 only; no dashboard; no usage statistics.
    """
    os.environ.update(_NO_USAGE_STATS)  # kept: any later Ray of this process stays quiet too
    ray = _import_ray()
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address is not None:
        _check_reachable(address)
    try:
        if address is None:
            with _loopback_only():  # 'local': a new Ray, even where ray.init() would join one running here
                ray.init(address="local", num_cpus=num_cpus, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:  # boundary: ray.init's own error types
        where = f"the Ray cluster at {address!r}" if address else "a local Ray"
        raise RayEngineError(f"Cannot start {where}: {_first_line(exc)}") from None
    return True


PROBE_TIMEOUT_S = 10.0


def _check_reachable(address: str) -> None:
    """Refuse in one line a HOST:PORT (or ray://HOST:PORT) where nothing accepts a connection: Ray
    itself retries such an address for ever, printing warnings ('auto' is left to Ray)."""
    text = str(address).strip()
    if text == "auto":
        return
    hostport = text.split("://", 1)[1] if "://" in text else text
    host, sep, port = hostport.rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise RayEngineError(f"--ray-address must be HOST:PORT (e.g. 10.0.0.5:6379), ray://HOST:PORT or auto. "
                             f"Received: {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__ if not isinstance(exc, TimeoutError) else \
            f"no answer within {PROBE_TIMEOUT_S:g} s"
        raise RayEngineError(f"Cannot reach the Ray cluster at {address!r}: {reason} (is its head node running? "
                             "'ray start --head' prints the address to give)") from None


@contextmanager
def _loopback_only():
    """Ray's own switch for a machine that is no cluster node (its default on macOS and Windows):
    the node's address is 127.0.0.1, so every Ray server binds there. Ray reads it from the
    environment at import (hence the constant too) and passes it to the processes it starts; it
    is restored afterwards, so that this process can still join a real cluster later."""
    from ray._private import ray_constants

    previous_env, previous_flag = os.environ.get(_LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous_flag
        if previous_env is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = previous_env


def read_model_files(path: str | Path) -> dict[str, bytes]:
    """The bytes of a model file, or of every file of a SavedModel folder, by relative path.

    ``{'tiny.keras': b'PK...'}`` or ``{'saved/saved_model.pb': ..., 'saved/variables/...': ...}``:
    written back below one folder they hash (``core.model.load.file_sha256``) as the original.
    """
    p = Path(path)
    if p.is_dir():
        return {f"{p.name}/{f.relative_to(p).as_posix()}": f.read_bytes()
                for f in sorted(p.rglob("*")) if f.is_file()}
    return {p.name: p.read_bytes()}


def _write_model_files(files: dict[str, bytes], folder: Path) -> Path:
    """Write ``read_model_files``' output below ``folder``; returns the model's path there."""
    top = None
    for rel, data in files.items():
        target = (folder / rel).resolve()
        if not target.is_relative_to(folder.resolve()):  # names come from the driver, still checked
            raise RayEngineError(f"Model file name leaves the model folder: {rel!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        top = rel.split("/", 1)[0]
    if top is None:
        raise RayEngineError("No model files were shipped to the Ray worker")
    return folder / top


class BatchPredictor:
    """One actor of the pool: holds a model and turns a block of rows into model outputs.

    ``__init__`` loads the model (``core.model.load.load_model`` +
    ``build_inference_model``) from ``model_files`` (``read_model_files``),
    checking its hash against ``sha256``; ``threads`` (the actor's CPUs) sizes
    TensorFlow's thread pools and the decoding threads (None: TensorFlow as it is,
    one decoding thread). ``__call__`` takes a block
    ``{'row': (n,) int64, 'path': (n,) str}``, decodes it as the local engine
    does (from ``root`` / path, or from ``pixels[row]`` for pixel data sets) and
    returns ``{'row', 'ok' (n,) bool, 'reason' (n,) str, 'outputs' (n, K) float32,
    'features' (n, D) float32 (models with features only)}``; rows that did not
    decode have ``ok`` False, their reason, and zeros.
    """

    def __init__(self, *, model_files: dict[str, bytes], sha256: str | None, layer: str | None,
                 scale: str,  # a core.data.preprocess spec: 'unit', 'caffe', 'unit+bgr', ...
                 image_size: tuple[int, int] | None, unsafe: bool, root: str | None,
                 pixels: np.ndarray | None, max_pixels: int, threads: int | None = None, resize: str = "area"):
        if threads is not None:
            _limit_tensorflow_threads(threads)
        model_files, pixels = _fetched(model_files), _fetched(pixels)
        from core.model.load import ModelError, build_inference_model, file_sha256, load_model

        folder = Path(tempfile.mkdtemp(prefix="ray-model-"))
        try:
            path = _write_model_files(model_files, folder)
            if sha256 is not None and file_sha256(path) != sha256:
                raise ModelError(f"The model file {path.name!r} changed after it was hashed for this run; "
                                 "run the analysis again")
            model = load_model(path, unsafe=unsafe)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the model is in memory now
        self.inference = build_inference_model(model, layer=layer, scale=scale)
        self.size = self.inference.input_size or (tuple(image_size) if image_size else None)
        if self.size is None:
            raise ModelError("The model accepts any image size: pass --image-size HxW")
        self.channels = self.inference.channels or 3
        self.resize = resize
        if self.channels not in (1, 3):
            raise ModelError(f"Model expects {self.channels} input channels; only 1 (grayscale) or 3 (RGB) "
                             "are supported")
        self.n_features = int(self.inference.model.outputs[1].shape[-1]) if self.inference.has_features else 0
        self.root = Path(root) if root is not None else None
        self.pixels, self.max_pixels, self.threads = pixels, max_pixels, threads or 1

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from core.data.datasets import ImageDataset, iter_batches
        from core.data.preprocess import feed

        rows = np.asarray(block["row"], dtype=np.int64)
        n = len(rows)
        part = ImageDataset(name="block", kind="block", classes=[], paths=[str(p) for p in block["path"]],
                            labels=np.zeros(n, np.int64), splits=np.full(n, "all"), root=self.root,
                            pixels=self.pixels[rows] if self.pixels is not None else None)
        ok = np.zeros(n, bool)
        reason = [""] * n
        outputs = np.zeros((n, self.inference.n_outputs), np.float32)
        features = np.zeros((n, self.n_features), np.float32)
        for batch in iter_batches(part, size=self.size, channels=self.channels, batch_size=max(n, 1),
                                  workers=self.threads, prefetch=1, max_pixels=self.max_pixels,
                                  resize=self.resize):
            failed_at = np.setdiff1d(np.arange(n), batch.index)  # iter_batches lists failures in row order
            for j, failure in zip(failed_at, batch.failed):
                reason[j] = failure["reason"]
            if len(batch.index):
                x = feed(batch.images, self.inference.preprocessing)
                if self.inference.has_features:
                    out, feat = self.inference.model.predict_on_batch(x)
                    features[batch.index] = np.asarray(feat, dtype=np.float32)
                else:
                    out = self.inference.model(x)
                outputs[batch.index] = np.asarray(out, dtype=np.float32).reshape(len(batch.index), -1)
                ok[batch.index] = True
        result = {"row": rows, "ok": ok, "reason": np.array(reason, dtype=str), "outputs": outputs}
        if self.inference.has_features:
            result["features"] = features
        return result


def _fetched(value):
    """``value``, or what it refers to when it is a Ray object reference (Ray Data passes the
    constructor's arguments as they are, so large ones are put in the object store once)."""
    if type(value).__name__ == "ObjectRef":
        import ray

        return ray.get(value)
    return value


def _limit_tensorflow_threads(threads: int) -> None:
    """One actor per CPU: TensorFlow's own pools sized to the machine would make N actors fight."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already running in this process (an in-process call)
        pass


def run_inference_ray(
    model_path: str | Path, dataset, *, layer: str | None = None, scale: str = "auto",
    image_size: tuple[int, int] | None = None, batch_size: int = 128, unsafe: bool = False,
    expected_sha256: str | None = None, options: RayOptions | None = None, progress=True, resize: str = "area",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[dict]]:
    """Run the model at ``model_path`` once over every row of ``dataset`` on Ray.

    Returns ``(ok_rows, outputs, features, failed)`` as
    ``core.run.analyze.run_inference`` does: ok_rows (n_ok,) int64 row positions in
    increasing order, outputs (n_ok, K) float32, features (n_ok, D) float32 or
    None, failed ``[{'path', 'reason'}]`` in row order. ``expected_sha256`` (the
    run's model hash) is checked by every actor against the bytes it received.
    Connects with ``init_ray`` (and shuts down a Ray it started).
    """
    from core.data.images import max_pixels_limit
    from core.progress import progress_bar

    options = options or RayOptions()
    if batch_size < 1:
        raise UserError(f"batch_size must be positive. Received: {batch_size}")
    max_pixels = max_pixels_limit()  # a bad CLASSIFIER_MAX_PIXELS stops here, not in every actor
    model_files = read_model_files(model_path)
    started = init_ray(address=options.address, num_cpus=options.num_cpus)
    ray = _import_ray()
    try:
        blocks = _row_blocks(dataset, batch_size)
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        actors = options.actors or max(1, cluster_cpus // options.cpus_per_actor)
        actors = max(1, min(actors, len(blocks)))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours below counts images
        predictor_args = dict(
            model_files=ray.put(model_files), sha256=expected_sha256, layer=layer, scale=scale,
            image_size=tuple(image_size) if image_size else None, unsafe=unsafe,
            root=str(dataset.root.resolve()) if dataset.pixels is None else None,
            pixels=ray.put(dataset.pixels) if dataset.pixels is not None else None,
            max_pixels=max_pixels, threads=options.cpus_per_actor, resize=resize,
        )
        predicted = ray.data.from_arrow(blocks).map_batches(
            BatchPredictor, fn_constructor_kwargs=predictor_args, batch_size=None, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=options.cpus_per_actor)
        parts = []
        ray_data_log = logging.getLogger("ray.data")
        log_level = ray_data_log.level
        ray_data_log.setLevel(logging.CRITICAL)  # a worker's error reaches the caller as one line, below
        bar = progress_bar(progress, len(dataset), f"Predicting on Ray ({actors} actor{'s' * (actors > 1)})",
                           unit="image", span=0.86)
        try:
            for part in predicted.iter_batches(batch_size=None, batch_format="numpy"):
                parts.append(part)
                bar.update(len(part["row"]))
        except Exception as exc:  # boundary: Ray wraps a worker's error in its own types
            raise _user_error(exc) from None
        finally:
            bar.close()
            ray_data_log.setLevel(log_level)
    finally:
        if started:
            ray.shutdown()
    return _assemble(parts, dataset)


def _row_blocks(dataset, batch_size: int) -> list:
    """The rows as Arrow tables of ``batch_size`` rows: Ray Data gives one table to one actor call."""
    import pyarrow as pa

    n = len(dataset)
    return [pa.table({"row": np.arange(start, min(start + batch_size, n), dtype=np.int64),
                      "path": pa.array(dataset.paths[start:start + batch_size], type=pa.string())})
            for start in range(0, n, batch_size)]


def _assemble(parts: list[dict], dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[dict]]:
    """Blocks as they arrived (any order) to the local engine's row-ordered 4-tuple."""
    if not parts:
        raise RayEngineError("Ray returned no results")
    rows = np.concatenate([p["row"] for p in parts])
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    if not np.array_equal(rows, np.arange(len(dataset))):
        raise RayEngineError(f"Ray returned {len(rows):,} rows for {len(dataset):,} images "
                             "(some lost or repeated); run again")
    ok = np.concatenate([p["ok"] for p in parts])[order]
    reasons = np.concatenate([p["reason"] for p in parts])[order]
    outputs = np.concatenate([p["outputs"] for p in parts])[order].astype(np.float32, copy=False)
    features = (np.concatenate([p["features"] for p in parts])[order].astype(np.float32, copy=False)
                if "features" in parts[0] else None)
    failed = [{"path": dataset.paths[r], "reason": str(reasons[r])} for r in np.flatnonzero(~ok)]
    if not ok.any():
        return np.zeros(0, np.int64), outputs[:0], None, failed
    return rows[ok], outputs[ok], features[ok] if features is not None else None, failed


def _user_error(exc: BaseException) -> Exception:
    """The error a Ray worker raised, unwrapped from Ray's exception types, as one line.

    Our own errors (a model or data set the worker could not use) keep their
    type, so the CLI reports them as it would from the local engine. Ray keeps
    the worker's exception object for a failed call, but only its traceback's
    text for a failed actor start, so the text is read too.
    """
    from core.data.datasets import DatasetError
    from core.model.load import ModelError

    seen, stack = set(), [exc]
    while stack:
        current = stack.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (ModelError, DatasetError)):
            kind = ModelError if isinstance(current, ModelError) else DatasetError
            return kind(_worker_error_line(current)[1])
        stack += [getattr(current, "cause", None), current.__cause__, current.__context__]
    name, message = _worker_error_line(exc)
    if name.endswith(("ModelError", "UnsafeModelError")):
        return ModelError(message)
    if name.endswith("DatasetError"):
        return DatasetError(message)
    if "No module named 'core'" in message:
        return RayEngineError("Ray workers cannot import this project ('core'): install this repository and "
                              "its requirements at the same path on every node of the cluster")
    return RayEngineError(f"Ray worker failed: {name + ': ' if name else ''}{message}")


_ERROR_LINE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*(?:Error|Exception)): (?P<message>.+)$")


def _worker_error_line(exc: BaseException) -> tuple[str, str]:
    """``(exception class, message)`` from the last 'SomeError: message' line of a worker's
    traceback, else ``('', first line)``."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in reversed(lines):
        match = _ERROR_LINE.match(line)
        if match:
            return match["name"], match["message"][:500]
    return "", (lines[0][:500] if lines else type(exc).__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
