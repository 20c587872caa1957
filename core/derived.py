"""Derived analyses: named results computed later from a run's arrays and kept in the run.

Label issues, duplicates, calibration, error slices and attention maps are
each a *kind*: a pure ``compute(run, config, progress) -> DerivedResult``, a
version and default config, registered once with ``register``. This module
is the one way to compute, store, invalidate and read them (after FiftyOne
Brain's config -> info -> results); where the files live is the store's
business (``Run.save_derived``), and no page needs to know.

A stored result is *current* when its kind's version and its (complete)
config equal what is asked for; a run re-made with ``--force`` is a new
version folder without any derived results, so results never outlive the
arrays they came from. Reading imports neither TensorFlow nor umap.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.progress import Progress, say_function
from core.store import DerivedInfo, Run, valid_run_id


class DerivedError(ValueError):
    """An unknown kind or a config it does not accept (the message lists what is valid)."""


@dataclass
class DerivedResult:
    """What a kind computes: named arrays, named tables and a small JSON summary."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DerivedKind:
    name: str
    version: int
    compute: Callable[[Run, dict, Progress], DerivedResult]
    defaults: Mapping[str, object]
    description: str = ""

    def full_config(self, config: Mapping[str, object] | None) -> dict:
        """The defaults updated with ``config``; unknown keys are refused."""
        config = dict(config or {})
        unknown = sorted(set(config) - set(self.defaults))
        if unknown:
            raise DerivedError(f"Unknown option(s) {unknown} for {self.name!r}. "
                               f"Options: {sorted(self.defaults)}")
        merged = {**self.defaults, **config}
        return json.loads(json.dumps(merged))  # what the manifest will hold, so comparisons match


_REGISTRY: dict[str, DerivedKind] = {}


def register(name: str, *, version: int, defaults: Mapping[str, object] | None = None,
             description: str = "") -> Callable:
    """Decorator registering ``compute(run, config, progress) -> DerivedResult`` as kind ``name``.

    Bump ``version`` whenever the computation changes: stored results of an
    older version are then recomputed on the next request.
    """
    valid_run_id(name)

    def decorate(compute: Callable[[Run, dict, Progress], DerivedResult]):
        _REGISTRY[name] = DerivedKind(name=name, version=version, compute=compute,
                                      defaults=dict(defaults or {}), description=description)
        return compute
    return decorate


def kinds() -> dict[str, DerivedKind]:
    return dict(_REGISTRY)


def kind(name: str) -> DerivedKind:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DerivedError(f"Unknown derived analysis {name!r}. Available: {sorted(_REGISTRY)}") from None


class StoredDerived:
    """A derived result as stored in a run: summary and tables read on use, arrays memory-mapped."""

    def __init__(self, run: Run, info: DerivedInfo):
        self.run, self.info = run, info
        self.folder: Path = run.derived_folder(info.name)

    def __repr__(self) -> str:
        return f"StoredDerived({self.info.name!r}, run={self.run.id!r}, files={list(self.info.files)})"

    @property
    def summary(self) -> dict:
        return self.info.summary

    def array(self, name: str) -> np.ndarray:
        return self._file(f"{name}.npy", lambda f: np.load(f, mmap_mode="r", allow_pickle=False))

    def table(self, name: str) -> pd.DataFrame:
        return self._file(f"{name}.parquet", pd.read_parquet)

    def _file(self, file: str, read):
        if file not in self.info.files:
            raise DerivedError(f"{self.info.name!r} of run {self.run.id!r} has no {file}. "
                               f"It has: {list(self.info.files)}")
        return read(self.folder / file)


def status(run: Run, name: str, config: Mapping[str, object] | None = None) -> str:
    """'current', 'stale' (another version or config) or 'missing'."""
    k = kind(name)
    info = run.derived_info(name)
    if info is None:
        return "missing"
    return "current" if info.version == k.version and info.config == k.full_config(config) else "stale"


def get(run: Run, name: str, config: Mapping[str, object] | None = None, *, compute: bool = True,
        force: bool = False, progress: bool | Progress = False) -> StoredDerived | None:
    """The current result of kind ``name`` for ``run``: stored, or computed and stored now.

    With ``compute=False`` a missing or stale result gives None instead.
    """
    k = kind(name)
    full = k.full_config(config)
    if not force and status(run, name, config) == "current":
        return StoredDerived(run, run.derived_info(name))
    if not compute:
        return None
    from core.store import check_writable

    check_writable(run.path, f"derived analysis {name!r} of run {run.id!r}")  # before, not after, computing
    say = say_function(progress)
    t0 = time.perf_counter()
    result = k.compute(run, full, say)
    if not isinstance(result, DerivedResult):
        raise TypeError(f"{name!r} must return a DerivedResult, not {type(result).__name__}")
    info = run.save_derived(name, version=k.version, config=full, arrays=result.arrays,
                            tables=result.tables, summary=result.summary,
                            seconds=time.perf_counter() - t0)
    return StoredDerived(run, info)


def delete(run: Run, name: str) -> None:
    run.delete_derived(name)
