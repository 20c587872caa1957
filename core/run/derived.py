"""Derived analyses: named results computed later from a run's arrays and kept in the run.

Label issues, duplicates, calibration, error slices and attention maps are
each a *kind*: a pure ``compute(run, config, progress) -> DerivedResult``, a
version and default config, registered once with ``register``. This module
is the one way to compute, store, invalidate and read them (after FiftyOne
Brain's config -> info -> results); where the files live is the store's
business (``Run.save_derived``), and no page needs to know.

A stored result is *current* when its kind's version and its (complete)
config equal what is asked for and, for a kind that reads other stored results
(``reads``), each of those is the one it read: the folder of each input that was
current when it was computed is recorded with it (``DerivedInfo.inputs``), so
that recomputing an input (a new version of its kind, other options, or
``--force``) makes what was derived from it stale, down the chain (image scan,
image properties, error slices). A result stored before inputs were recorded is
judged by version and config alone. A run re-made with ``--force`` is a new
version folder without any derived results, so results never outlive the
arrays they came from. Reading imports neither TensorFlow nor umap.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import pkgutil
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError, first_line
from core.progress import Progress, say_function
from core.run.store import DerivedInfo, Run, valid_run_id


class DerivedError(UserError):
    """An unknown kind or a config it does not accept (the message lists what is valid)."""


@dataclass
class DerivedResult:
    """What a kind computes: named arrays, named tables and a small JSON summary.

    A kind with row inputs returns arrays whose first axis follows its ``rows`` array (the
    rows computed now); ``skipped`` (row -> reason) says which requested rows it could not do
    (kept for the caller of this request, not stored: they are tried again next time).
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DerivedKind:
    """A registered kind. ``config_type``: a frozen dataclass whose construction validates the
    options (``__post_init__``); ``row_inputs``: the rows a caller asks for are an input, and new
    rows extend the stored result; ``run_config``: the config a run asks for (the projection's
    comes from the run's own config); ``findings``: what the kind shows (cards, per-image columns,
    captions, filters; ``core.diagnose.findings``); ``libraries``: distributions whose versions
    are recorded with each result; ``unavailable``: why a run cannot have it (None: it can);
    ``ready``: the run has it in a form older than derived results (``core.run.jobs`` reads both);
    ``reads``: the kinds whose stored results it reads (see ``input_stamp``)."""

    name: str
    version: int
    compute: Callable[..., DerivedResult]
    config_type: type
    defaults: Mapping[str, object]  # the config type's defaults, as the manifest holds them
    description: str = ""
    row_inputs: bool = False
    run_config: Callable[[Run], Mapping[str, object] | None] | None = None
    findings: Callable | None = None
    libraries: tuple[str, ...] = ()
    unavailable: Callable[[Run], str | None] | None = None
    ready: Callable[[Run], bool] | None = None
    reads: tuple[str, ...] = ()

    def full_config(self, config: Mapping[str, object] | object | None) -> dict:
        """The defaults updated with ``config`` (a mapping or an instance of ``config_type``),
        validated; unknown keys are refused, listing the valid ones."""
        if isinstance(config, self.config_type):
            config = asdict(config)
        config = dict(config or {})
        unknown = sorted(set(config) - set(self.defaults))
        if unknown:
            raise DerivedError(f"Unknown option(s) {unknown} for {self.name!r}. "
                               f"Options: {sorted(self.defaults)}")
        merged = json.loads(json.dumps({**self.defaults, **config}))  # what the manifest holds
        self.typed(merged)  # validates: a bad value fails here, before anything is computed
        return merged

    def typed(self, full: Mapping[str, object]):
        """``full`` as the kind's config object (``config_type``)."""
        try:
            return self.config_type(**{k: _as_declared(self.config_type, k, v) for k, v in full.items()})
        except TypeError as exc:
            raise DerivedError(f"Bad options for {self.name!r}: {first_line(exc)}") from None

    def config_for(self, run: Run, config: Mapping[str, object] | object | None = None) -> dict:
        """``config`` completed for ``run``: the run's own config for kinds that take one."""
        if config is None and self.run_config is not None:
            config = self.run_config(run)
        return self.full_config(config)


def _as_declared(config_type: type, name: str, value):
    """JSON gives lists where a config declares tuples: back to the declared type."""
    hints = {f.name: f.type for f in fields(config_type)}
    declared = str(hints.get(name, ""))
    return tuple(value) if isinstance(value, list) and declared.startswith("tuple") else value


_REGISTRY: dict[str, DerivedKind] = {}

#: Modules that register kinds besides those of ``DIAGNOSES_PACKAGE`` (each of which is imported):
#: a new diagnosis is a module of that package, found without being listed anywhere.
KIND_MODULES: tuple[str, ...] = ("core.analysis.projection", "core.analysis.gradcam", "core.analysis.occlusion")
DIAGNOSES_PACKAGE = "core.diagnose"


@dataclass(frozen=True)
class NoOptions:
    """The config of a kind that takes no options."""


def register(name: str, *, version: int, config: type = NoOptions, row_inputs: bool = False,
             run_config: Callable[[Run], Mapping[str, object] | None] | None = None,
             findings: Callable | None = None, libraries: tuple[str, ...] = (),
             unavailable: Callable[[Run], str | None] | None = None, ready: Callable[[Run], bool] | None = None,
             reads: tuple[str, ...] = (), description: str = "") -> Callable:
    """Decorator registering ``compute`` as kind ``name``: the one way a kind comes to exist.

    ``compute(run, config, progress) -> DerivedResult``, where ``config`` is an instance of
    ``config``: a frozen dataclass whose defaults are the kind's defaults and whose construction
    validates the options (``NoOptions`` for a kind without any). With ``row_inputs=True``:
    ``compute(run, config, progress, *, rows, previous)`` gets the rows not stored yet (None:
    the kind's default choice) and the stored result it extends (or None).
    ``reads``: the kinds whose stored results ``compute`` reads, if any (their default config):
    recomputing one of them makes this kind's result stale.
    Bump ``version`` whenever the computation changes: stored results of an
    older version are then recomputed on the next request.
    """
    valid_run_id(name)
    if not is_dataclass(config) or not config.__dataclass_params__.frozen:
        raise TypeError(f"{name!r}: config must be a frozen dataclass. Received: {config!r}")
    defaults = asdict(config())

    def decorate(compute: Callable[..., DerivedResult]):
        _REGISTRY[name] = DerivedKind(name=name, version=version, compute=compute, config_type=config,
                                      defaults=json.loads(json.dumps(defaults)),
                                      description=description, row_inputs=row_inputs,
                                      run_config=run_config, findings=findings, libraries=tuple(libraries),
                                      unavailable=unavailable, ready=ready, reads=tuple(reads))
        return compute
    return decorate


def load_kinds() -> None:
    """Import every module that registers kinds: ``KIND_MODULES`` and each module of ``core.diagnose``.

    The modules are found by name (as plugins are), so this registry depends on none of them.
    Light: none of them imports TensorFlow or umap at import time.
    """
    spec = importlib.util.find_spec(DIAGNOSES_PACKAGE)
    found = [f"{DIAGNOSES_PACKAGE}.{m.name}" for m in pkgutil.iter_modules(spec.submodule_search_locations or [])]
    for module in (*KIND_MODULES, *found):
        importlib.import_module(module)


def kinds() -> dict[str, DerivedKind]:
    load_kinds()
    return dict(_REGISTRY)


def kind(name: str) -> DerivedKind:
    if name not in _REGISTRY:
        load_kinds()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DerivedError(f"Unknown derived analysis {name!r}. Available: {sorted(_REGISTRY)}") from None


class StoredDerived:
    """A derived result as stored in a run: summary and tables read on use, arrays memory-mapped.

    ``skipped``: the rows of this request that could not be computed (row-input kinds).
    """

    def __init__(self, run: Run, info: DerivedInfo, skipped: dict[int, str] | None = None):
        self.run, self.info = run, info
        self.folder: Path = run.derived_folder(info.name)
        self.skipped = dict(skipped or {})

    def __repr__(self) -> str:
        return f"StoredDerived({self.info.name!r}, run={self.run.id!r}, files={list(self.info.files)})"

    @property
    def summary(self) -> dict:
        return self.info.summary

    @property
    def config(self):
        """The config it was computed with, as the kind's config object."""
        return kind(self.info.name).typed(self.info.config)

    def has(self, file: str) -> bool:
        return file in self.info.files

    def array(self, name: str) -> np.ndarray:
        return self._file(f"{name}.npy", lambda f: np.load(f, mmap_mode="r", allow_pickle=False))

    def table(self, name: str) -> pd.DataFrame:
        return self._file(f"{name}.parquet", pd.read_parquet)

    def _file(self, file: str, read):
        if file not in self.info.files:
            raise DerivedError(f"{self.info.name!r} of run {self.run.id!r} has no {file}. "
                               f"It has: {list(self.info.files)}")
        return read(self.folder / file)


def input_stamp(run: Run, name: str) -> dict[str, str]:
    """The stored results kind ``name`` reads now: {input kind: its folder if current (its own inputs
    included), else ""}. A folder is unique to one computation."""
    stamp = {}
    for source in kind(name).reads:
        info = run.derived_info(source)
        stamp[source] = info.folder if info is not None and status(run, source) == "current" else ""
    return stamp


def status(run: Run, name: str, config: Mapping[str, object] | object | None = None) -> str:
    """'current', 'stale' (another version, config or input: see the module docstring) or 'missing'."""
    k = kind(name)
    info = run.derived_info(name)
    if info is None:
        return "missing"
    if info.version != k.version or info.config != k.config_for(run, config):
        return "stale"
    return "current" if info.inputs is None or info.inputs == input_stamp(run, name) else "stale"


def get(run: Run, name: str, config: Mapping[str, object] | object | None = None, *, rows=None,
        compute: bool = True, force: bool = False, progress: bool | Progress = False) -> StoredDerived | None:
    """The current result of kind ``name`` for ``run``: stored, or computed and stored now.

    ``rows`` (row-input kinds only): the rows wanted; those not stored yet are computed and
    added to the stored result (the others are kept, not recomputed). With ``compute=False``
    a missing or stale result (or one lacking some of ``rows``) gives None instead.
    """
    k = kind(name)
    full = k.config_for(run, config)
    if rows is not None and not k.row_inputs:
        raise DerivedError(f"{name!r} takes no rows: it is computed for the whole run")
    current = not force and status(run, name, full) == "current"
    stored = StoredDerived(run, run.derived_info(name)) if current else None
    wanted = None if rows is None else np.unique(np.asarray(rows, np.int64))
    if stored is not None:
        if wanted is None or np.isin(wanted, stored.array("rows")).all():
            return stored
    if not compute:
        return None
    from core.run.store import check_writable

    check_writable(run.path, f"derived analysis {name!r} of run {run.id!r}")  # before, not after, computing
    say = say_function(progress)
    t0 = time.perf_counter()
    typed = k.typed(full)
    if k.row_inputs:
        missing = wanted if stored is None or wanted is None else np.setdiff1d(wanted, stored.array("rows"))
        result = k.compute(run, typed, say, rows=missing, previous=stored)
    else:
        result = k.compute(run, typed, say)
    if not isinstance(result, DerivedResult):
        raise TypeError(f"{name!r} must return a DerivedResult, not {type(result).__name__}")
    arrays = result.arrays
    if k.row_inputs and stored is not None:
        arrays = _extended(name, stored, arrays)
    info = run.save_derived(name, version=k.version, config=full, arrays=arrays,
                            tables=result.tables, summary=result.summary,
                            seconds=time.perf_counter() - t0, versions=library_versions(k),
                            inputs=input_stamp(run, name) if k.reads else None)
    return StoredDerived(run, info, skipped=result.skipped)


def _extended(name: str, stored: StoredDerived, new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The stored row-aligned arrays followed by the new ones (same names, same trailing shapes)."""
    out = {}
    for key, arr in new.items():
        if not stored.has(f"{key}.npy"):
            raise TypeError(f"{name!r} returned array {key!r}, which its stored result lacks")
        old = np.asarray(stored.array(key))
        out[key] = np.concatenate([old, np.asarray(arr, old.dtype)]) if len(arr) else old
    return out


def library_versions(k: DerivedKind) -> dict[str, str]:
    """Versions of Python, numpy, pandas and the kind's own libraries (read without importing them)."""
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "pandas", *k.libraries):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def findings(run: Run, name: str):
    """``Findings`` of kind ``name`` from its current stored result, or None (nothing is computed)."""
    k = kind(name)
    if k.findings is None:
        return None
    stored = get(run, name, compute=False)
    return None if stored is None else k.findings(run, stored)


def all_findings(run: Run) -> dict:
    """``{kind name: Findings}`` of every kind that declares findings and has a current result."""
    out = {}
    for name, k in kinds().items():
        if k.findings is not None:
            f = findings(run, name)
            if f is not None:
                out[name] = f
    return out


def delete(run: Run, name: str) -> None:
    run.delete_derived(name)
