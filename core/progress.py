"""Progress reporting and run-name slugs shared by every long-running command.

A ``Progress`` callback receives a message and the fraction done in [0, 1];
the dashboard passes one that drives a progress bar, the CLI a tqdm bar on
stderr (``progress=True``). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

Progress = Callable[[str, float], None]

_NOT_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(text: str, *, default: str = "run") -> str:
    """``text`` made safe as a run or folder name.

    >>> slug("ResNet 18 / Caltech-101!")
    'ResNet-18-Caltech-101'
    >>> slug("..")
    'run'
    """
    return _NOT_SLUG.sub("-", str(text)).strip("-.") or default


def say_function(progress: bool | Progress) -> Progress:
    """A ``Progress`` that forwards to the callback, prints to stderr (True) or does nothing."""
    if callable(progress):
        return progress
    if progress:
        return lambda message, fraction: print(message, file=sys.stderr)
    return lambda message, fraction: None


def progress_bar(progress: bool | Progress, total: int, desc: str, *, unit: str = "img",
                 start: float = 0.0, span: float = 1.0):
    """An object with ``update(k)`` and ``close()``.

    With a callback, each update reports ``desc: done/total`` at the fraction
    ``start + span * done / total`` (so a step can fill part of a larger bar);
    with ``True``, a tqdm bar on stderr; with ``False``, nothing.
    """
    if callable(progress):
        return _CallbackBar(progress, total, desc, unit, start, span)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, file=sys.stderr,
                mininterval=0.5)


class _CallbackBar:
    def __init__(self, progress: Progress, total: int, desc: str, unit: str, start: float, span: float):
        self.progress, self.total, self.desc, self.unit = progress, total, desc, unit
        self.start, self.span, self.done = start, span, 0

    def update(self, k: int) -> None:
        self.done += k
        frac = self.start + self.span * self.done / max(self.total, 1)
        self.progress(f"{self.desc}: {self.done:,}/{self.total:,} {self.unit}s", frac)

    def close(self) -> None:
        pass
