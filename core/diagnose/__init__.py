"""Diagnoses: why each error happens (label issues, calibration, duplicates, odd images, slices).

Each diagnosis is a derived kind (``core.derived``) registered by a module of
this package; ``DIAGNOSES`` lists the kinds that ``python -m core diagnose``
computes, in order. ``run_diagnoses`` computes (or reads back) every one of
them for a run; ``write_findings`` writes each stored table as a CSV.
Importing this package imports neither TensorFlow nor umap; the modules
import their heavy libraries (cleanlab, scipy) inside the functions that use them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from core import derived
from core.errors import UserError, first_line
from core.progress import Progress, say_function
from core.store import ReadOnlyStoreError, Run

DIAGNOSES: tuple[str, ...] = (
    "calibration",
    "image_scan",
    "duplicates",  # before label_issues and causes: a copy with another label is one of their signals
    "image_properties",
    "label_issues",
    "error_slices",
    "causes",  # last: it reads the duplicates and image properties computed before it
)


def load_kinds() -> None:
    """Register every kind (``core.derived.load_kinds``: this package's modules among them)."""
    derived.load_kinds()


class DiagnosisResults(dict):
    """``{kind name: StoredDerived}`` of the kinds computed, plus ``skipped``: ``{name: reason}``."""

    def __init__(self, results: dict, skipped: dict[str, str]):
        super().__init__(results)
        self.skipped = dict(skipped)


# What a kind raises for a run it cannot handle (no embeddings, no images, a file it cannot read): a
# recorded skip. Anything else is a bug and stops the batch with its traceback.
_SKIPPABLE = (UserError, OSError)


def run_diagnoses(run: Run, *, progress: bool | Progress = False, kinds: tuple[str, ...] | None = None,
                  force: bool = False) -> DiagnosisResults:
    """Every kind of ``kinds`` (default ``DIAGNOSES``) for ``run``: read if stored and current, else computed.

    One kind that fails on this run (a ``ValueError``, ``LookupError``,
    ``RuntimeError`` or ``OSError``) is skipped with its reason in
    ``result.skipped``; the others still run. ``progress`` receives the
    whole batch as one 0..1 fraction that never decreases.
    """
    load_kinds()
    kinds = tuple(DIAGNOSES if kinds is None else kinds)
    for name in kinds:
        derived.kind(name)  # an unknown name fails before anything is computed, listing the valid ones
    say = say_function(progress)
    results, skipped = {}, {}
    done = [0.0]  # the batch's fraction never runs backwards, whatever a kind reports
    for i, name in enumerate(kinds):
        def step(message: str, fraction: float, i: int = i) -> None:
            done[0] = max(done[0], (i + min(max(fraction, 0.0), 1.0)) / len(kinds))
            say(message, done[0])

        step(f"{name}: starting", 0.0)
        try:
            results[name] = derived.get(run, name, force=force, progress=step)
        except ReadOnlyStoreError:
            raise  # the same for every kind: one line, not one per kind
        except _SKIPPABLE as exc:
            skipped[name] = first_line(exc)
        step(f"{name}: {'skipped' if name in skipped else 'done'}", 1.0)
    return DiagnosisResults(results, skipped)


def write_findings(results: DiagnosisResults, out: str | Path) -> list[Path]:
    """One CSV per stored table, ``<kind>.<table>.csv``, and ``summary.json`` with each kind's summary.

    Returns the files written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, stored in results.items():
        for file in stored.info.files:
            if file.endswith(".parquet"):
                table = file[: -len(".parquet")]
                target = out / f"{name}.{table}.csv"
                stored.table(table).to_csv(target, index=False)
                written.append(target)
    summary = {"run": next((s.run.id for s in results.values()), None),
               "kinds": {name: {"version": s.info.version, "config": s.info.config, "summary": s.summary}
                         for name, s in results.items()},
               "skipped": results.skipped}
    target = out / "summary.json"
    target.write_text(json.dumps(summary, indent=2, default=str))
    written.append(target)
    return written


def _label_issues_headline(s: dict) -> str:
    line = (f"{s['n_issues']:,} of {s['n_scored']:,} images of '{s['split']}' probably mislabelled "
            f"({s['issue_rate']:.1%})")
    if "n_cleanlab_flags" in s:
        line += f", confirmed by a second signal of {s['n_cleanlab_flags']:,} cleanlab flags"
    if s.get("top_pairs"):
        top = s["top_pairs"][0]
        line += f"; most often given '{top['given']}' where '{top['suggested']}' is likelier ({top['count']:,})"
    return line


def _calibration_headline(s: dict) -> str:
    return (f"ECE {s['ece']:.4f}, MCE {s['mce']:.4f} on '{s['split']}'; temperature {s['temperature']:.3f} "
            f"({s['fit_on']}): ECE {s['ece_before']:.4f} -> {s['ece_after']:.4f}")


def _causes_headline(s: dict) -> str:
    mix = ", ".join(f"{n:,} {c}" for c, n in s["counts"].items() if n)
    line = f"{s['n_errors']:,} errors of '{s['split']}': {mix or 'none'}"
    if s.get("reference"):
        line += f" (neighbours: {s['reference_words']}{' left out one by one' if s['reference'] == 'leave-one-out' else ''})"
    return line + (f". {s['not_assessed_line']}" if s.get("not_assessed_line") else "")


HEADLINES: dict[str, Callable[[dict], str]] = {
    "causes": _causes_headline,
    "label_issues": _label_issues_headline,
    "calibration": _calibration_headline,
}


def headline(name: str, summary: dict) -> str:
    """One line saying what kind ``name`` found (its scalar summary values for kinds without a headline)."""
    if name in HEADLINES:
        try:
            return HEADLINES[name](summary)
        except (KeyError, TypeError, ValueError):
            pass  # a summary of another version: fall back to the generic line
    scalars = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()
               if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return ", ".join(scalars[:8]) or "done"


@contextmanager
def stderr_progress(desc: str) -> Iterator[Progress]:
    """A ``Progress`` on stderr: on a terminal one tqdm bar by fraction with the latest message beside
    it (redrawn at most 5 times a second); elsewhere (a log, a pipe) one line per step, where the
    part of the message before its first ':' changes, so that a log is not filled with redraws."""
    if not sys.stderr.isatty():
        last = [None]

        def line(message: str, fraction: float) -> None:
            step = message.split(":", 1)[0]
            if step != last[0]:
                last[0] = step
                print(f"{desc}: {100 * min(max(fraction, 0.0), 1.0):3.0f}% {message}", file=sys.stderr, flush=True)

        yield line
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=1000, desc=desc, file=sys.stderr, mininterval=0.2,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")

    def update(message: str, fraction: float) -> None:
        bar.set_postfix_str(message, refresh=False)  # drawn by the next update, at most every 0.2 s
        target = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        if target > bar.n:
            bar.update(target - bar.n)

    try:
        yield update
    finally:
        bar.refresh()
        bar.close()


def label_issues_csv(run: Run, *, issues_only: bool = False, force: bool = False,
                     progress: bool | Progress = False) -> pd.DataFrame:
    """``python -m core label-issues``: path, given_label, suggested_label, score; most likely wrong first.

    ``issues_only`` keeps the images cleanlab's confident learning flags.
    """
    load_kinds()
    table = derived.get(run, "label_issues", force=force, progress=progress).table("label_issues")
    if issues_only:
        table = table[table["is_issue"]]
    return table[["path", "given_label", "suggested_label", "score"]].reset_index(drop=True)
