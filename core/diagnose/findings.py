"""What a diagnosis kind shows, declared as plain data in ``core``.

A derived kind (``core.run.derived``) may declare ``findings(run, stored) ->
Findings``: the *cards* of the Diagnose page and the report (one finding each,
with the rows of the images behind it), the *per-image columns* it adds to
the Errors table, galleries and CSVs, the *caption* lines of an image, and the
*filters* of the Errors page and the Review queue. The dashboard and the
report render these generically, so a new kind is one module of
``core/diagnose`` and its tests; neither the dashboard nor the report reads a
kind's tables.

N images per run; ``rows`` are row ids of ``run.predictions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: Filter types: ``min``, a slider "at least" over a score in [0, 1] (NaN never passes);
#: ``flag``, any / yes / no over a boolean column; ``choices``, a multiselect over a text column
#: ('' means none and is never offered).
FILTER_TYPES = ("min", "flag", "choices")


@dataclass(frozen=True)
class Card:
    """One finding: ``rows`` (int64 (M,), most suspicious first).

    ``explains``: the rows whose evaluated errors the card counts (default ``rows``; the
    calibration card counts only its confident mistakes). ``order_note`` says the order of
    ``rows`` ("most likely mislabelled first"); ``notes`` are extra lines (caveats).
    """

    key: str
    kind: str
    title: str
    text: str
    rows: np.ndarray
    order_note: str
    notes: tuple[str, ...] = ()
    explains: np.ndarray | None = None

    def explained_rows(self) -> np.ndarray:
        return np.asarray(self.rows if self.explains is None else self.explains, np.int64)


@dataclass(frozen=True)
class Column:
    """A per-image column a kind adds: ``name`` in ``Findings.columns``, ``label`` as shown."""

    name: str
    label: str
    description: str = ""


@dataclass(frozen=True)
class Caption:
    """A caption line of an image: ``template`` formatted with the image's columns
    (``str.format`` fields by column name), shown when column ``when`` is true / non-empty."""

    template: str
    when: str


@dataclass(frozen=True)
class Filter:
    """A filter over column ``column``: ``type`` one of ``FILTER_TYPES``; ``param`` its key in the
    page's address (short, unique across kinds); ``label`` as shown. A 'choices' filter over a fixed
    ``vocabulary`` (names without commas) is written in the address by name (``cause=model,label``), so
    that a link means the same on every run; free-text values go by their place among the run's."""

    column: str
    label: str
    type: str
    param: str
    vocabulary: tuple[str, ...] = ()

    def __post_init__(self):
        if self.type not in FILTER_TYPES:
            raise ValueError(f"Unknown filter type {self.type!r}. The available types are {list(FILTER_TYPES)}")


@dataclass(frozen=True)
class Findings:
    """A kind's findings for one run: ``columns`` has one line per image (N, index = row id)."""

    cards: tuple[Card, ...] = ()
    columns: pd.DataFrame | None = None
    column_specs: tuple[Column, ...] = ()
    captions: tuple[Caption, ...] = ()
    filters: tuple[Filter, ...] = field(default=())


def plural(n: int, word: str, words: str | None = None) -> str:
    """'1 image', '2 images', '1,000 images'.

    >>> plural(1, "image"), plural(2500, "class", "classes")
    ('1 image', '2,500 classes')
    """
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def unique_rows(rows) -> np.ndarray:
    """``rows`` without repeats, first occurrence kept (a finding's order is its score order).

    >>> unique_rows([4, 2, 4, 1, 2]).tolist()
    [4, 2, 1]
    """
    rows = np.asarray(rows, np.int64)
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]


def explained_errors(card: Card, correct: np.ndarray, eval_mask: np.ndarray) -> int:
    """How many misclassified images of the evaluated split the card explains (its ``explained_rows``)."""
    rows = card.explained_rows()
    if rows.size == 0:
        return 0
    return int((eval_mask[rows] & ~correct[rows]).sum())


#: Card keys that lead the ranking whatever their count, in this order: the model's own errors (the
#: image looks like its label, the model says otherwise) are the ones an analyst must act on, so the
#: confident-error view leads with them (issue 19), before larger cards of wrong labels or ambiguity.
LEADING_CARDS: tuple[str, ...] = ("causes_model",)


def rank_cards(cards, correct: np.ndarray, eval_mask: np.ndarray, kind_order=()) -> list[tuple[Card, int]]:
    """``(card, errors explained)`` pairs: ``LEADING_CARDS`` first, then most errors explained first
    (ties: ``kind_order``, then as given)."""
    order = {name: i for i, name in enumerate(kind_order)}
    lead = {key: i for i, key in enumerate(LEADING_CARDS)}
    counted = [(c, explained_errors(c, correct, eval_mask)) for c in cards]
    return sorted(counted, key=lambda pair: (lead.get(pair[0].key, len(lead)), -pair[1],
                                             order.get(pair[0].kind, len(order))))


def merged_columns(findings: dict[str, Findings], n: int) -> pd.DataFrame | None:
    """Every kind's per-image columns side by side (N lines), None when no kind has any."""
    parts = [f.columns.reset_index(drop=True) for f in findings.values() if f.columns is not None]
    if not parts:
        return None
    table = pd.concat(parts, axis=1)
    if len(table) != n:
        raise ValueError(f"Per-image columns have {len(table)} lines for a run of {n} images")
    return table


def caption_lines(findings: dict[str, Findings], row: pd.Series) -> list[str]:
    """The caption lines of one image (``row``: its line of ``merged_columns``), in kind order."""
    lines = []
    for f in findings.values():
        for caption in f.captions:
            value = row.get(caption.when)
            if value is None or (isinstance(value, float) and np.isnan(value)) or not value:
                continue
            lines.append(caption.template.format(**row.to_dict()))
    return lines
