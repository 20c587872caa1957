"""The Diagnose page's cards, and the diagnosis columns, captions and filters of every gallery and the
Errors page, rendered generically from what each derived kind declares (``core.diagnose.findings``).

A *card* is one finding (suspected label errors, leaks, duplicates, odd images,
calibration, error slices, or any kind added later) with the rows of the images
behind it, ordered by the finding's score (most suspicious first), and the
number of *evaluated errors it explains*: misclassified images of the
evaluation split among its ``explained_rows``. Cards are ranked by that
number, largest first; an error may count on several cards. Nothing here names
a kind's tables: a new kind's cards, columns, captions and filters appear
without a change to this module.

Everything here reads stored results (never computes them) and imports neither
TensorFlow nor umap; ``compute_ui`` runs the missing kinds with a progress bar.
N images per run; rows are row ids of ``run.predictions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import streamlit as st

from core import diagnose
from core.diagnose import findings as finding_data
from core.diagnose.calibration import CONFIDENT  # noqa: F401 - the Diagnose page's caption quotes it
from core.errors import UserError
from core.run import derived
from core.run.store import Run
from dashboard import cache, gallery, state, ui

SKIPPED_KEY = "diagnose-skipped"  # {run scope: {kind: reason}} from the last "Compute diagnoses"
FLAG_CHOICES = ("any", "yes", "no")


@dataclass
class Card:
    """One finding as the page shows it: ``rows`` (int array (M,), most suspicious first) and the
    evaluated errors it explains."""

    key: str
    kind: str
    title: str
    text: str
    rows: np.ndarray
    explains: int
    order_note: str
    notes: list[str] = field(default_factory=list)


def stored_findings(run: Run) -> dict[str, derived.StoredDerived | None]:
    """Every kind of ``diagnose.DIAGNOSES``: its current stored result, or None (never computes)."""
    diagnose.load_kinds()
    return {name: derived.get(run, name, compute=False) for name in diagnose.DIAGNOSES}


def declared(run: Run) -> dict[str, finding_data.Findings]:
    """``{kind: Findings}`` of every kind with a current stored result that declares findings."""
    return derived.all_findings(run)


def build_cards(run: Run, found: dict, eval_mask: np.ndarray) -> list[Card]:
    """Every card of ``found`` (``{kind: Findings}``, or ``{kind: StoredDerived | None}`` as
    ``stored_findings`` gives), ranked by the evaluated errors each explains (ties: kind order)."""
    found = _as_findings(run, found)
    cards = [c for f in found.values() for c in f.cards]
    correct = run.predictions["correct"].to_numpy(bool)
    return _shown(finding_data.rank_cards(cards, correct, eval_mask, kind_order=diagnose.DIAGNOSES))


def _shown(ranked) -> list[Card]:
    return [Card(c.key, c.kind, c.title, c.text, np.asarray(c.rows, np.int64), n, c.order_note, list(c.notes))
            for c, n in ranked]


def _as_findings(run: Run, found: dict) -> dict[str, finding_data.Findings]:
    out = {}
    for name, value in found.items():
        if isinstance(value, derived.StoredDerived):
            k = derived.kind(name)
            value = k.findings(run, value) if k.findings is not None else None
        if value is not None:
            out[name] = value
    return out


# --------------------------------------------------------------------------- per-row columns

def rows_table(run: Run) -> pd.DataFrame | None:
    """``row_findings`` of the stored diagnoses (cached until one is stored again), or None."""
    return cache.diagnose_rows(run, cache.run_key(run), cache.diagnoses_stamp(run))


def cards(run: Run) -> list[Card]:
    """``build_cards`` of the stored diagnoses (cached until one is stored again)."""
    return _shown(cache.diagnose_cards(run, cache.run_key(run), cache.diagnoses_stamp(run)))


def row_findings(run: Run, found: dict) -> pd.DataFrame | None:
    """Every kind's per-image columns side by side, one line per image (N), or None when none is stored."""
    return finding_data.merged_columns(_as_findings(run, found), run.n_images)


def _specs(run: Run) -> dict[str, finding_data.Findings]:
    """``{kind: Findings}`` of the stored diagnoses (cached until one is stored again)."""
    return cache.diagnose_declared(run, cache.run_key(run), cache.diagnoses_stamp(run))


def caption_text(run: Run, row: int) -> str | None:
    """The diagnosis caption of one image: 'label issue 0.93 → suggested Shirt · copy in train'."""
    try:
        table = rows_table(run)
        found = _specs(run)
    except (UserError, OSError):  # a finding that cannot be read: no caption, the gallery still works
        return None
    if table is None:
        return None
    return " · ".join(finding_data.caption_lines(found, table.iloc[int(row)])) or None


gallery.register_caption_field("diagnose", caption_text)


# --------------------------------------------------------------------------- filters

def _decode_min(param: str):
    def decode(text: str) -> float:
        (value,) = state.decode_floats(text, count=1, name=param)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{param} must be a number from 0 to 1. Received: {text!r}")
        return value
    return decode


def _decode_choices(param: str, values: list[str]):
    def decode(text: str) -> list[str]:
        if not values:
            raise ValueError(f"{param}: this run has nothing to choose from. Received: {text!r}")
        return [values[i] for i in state.decode_ints(text, low=0, high=len(values) - 1, name=param)]
    return decode


def _decode_names(param: str, vocabulary: tuple[str, ...], values: list[str]):
    """Names from ``vocabulary`` (comma-separated), each present among this run's ``values``.

    >>> _decode_names("cause", ("label", "model", "copy"), ["label", "model"])("model,label")
    ['model', 'label']
    >>> _decode_names("cause", ("label", "model", "copy"), ["label", "model"])("2")
    Traceback (most recent call last):
    ValueError: cause must be names from label, model, copy. Received: '2'
    """
    def decode(text: str) -> list[str]:
        names = [t.strip() for t in str(text).split(",") if t.strip()]
        if not names or any(n not in vocabulary for n in names):
            raise ValueError(f"{param} must be names from {', '.join(vocabulary)}. Received: {text!r}")
        absent = [n for n in names if n not in values]
        if absent:
            raise ValueError(f"{param}: no error of this run has {', '.join(absent)}. Received: {text!r}")
        return names
    return decode


def _filter_key(run: Run, f: finding_data.Filter) -> str:
    return ui.scoped(run, f"errors-filter-{f.param}")


def _filters(run: Run) -> list[finding_data.Filter]:
    return [flt for f in _specs(run).values() for flt in f.filters]


def errors_filters_ui(run: Run, rows: np.ndarray) -> np.ndarray:
    """The Errors page's diagnosis filters (each kind's declared ``Filter``) applied to ``rows``;
    nothing when no finding is stored. Their values are in the URL under each filter's ``param``."""
    table = rows_table(run)
    filters = _filters(run) if table is not None else []
    if not filters:
        return rows
    scope = ui.run_scope(run)
    keep_state = {"persist_state": "session"}  # like the class and confidence filters
    cols = st.columns(min(len(filters), 4))
    sub = table.iloc[rows]
    keep = np.ones(rows.size, bool)
    published = {}
    for i, f in enumerate(filters):
        key, col = _filter_key(run, f), cols[i % len(cols)]
        values = table[f.column]  # options from every image, so that the address means the same on each page
        if f.type == "min":
            state.seed(key, f.param, _decode_min(f.param), scope=scope)
            st.session_state.setdefault(key, 0.0)
            low = col.slider(f.label, 0.0, 1.0, step=0.05, key=key, **keep_state)
            published[f.param] = state.number(low) if low > 0 else None
            if low > 0:
                keep &= sub[f.column].to_numpy(float) >= low
        elif f.type == "flag":
            state.seed(key, f.param, lambda t, p=f.param: state.decode_choice(t, ["yes", "no"], name=p), scope=scope)
            st.session_state.setdefault(key, FLAG_CHOICES[0])
            choice = col.selectbox(f.label, FLAG_CHOICES, key=key, **keep_state)
            published[f.param] = None if choice == "any" else choice
            if choice != "any":
                keep &= sub[f.column].to_numpy(bool) == (choice == "yes")
        else:  # choices: by name from a fixed vocabulary, else by their place in the sorted values (free text)
            options = sorted(str(v) for v in values.unique() if isinstance(v, str) and v)
            if f.vocabulary:
                options = [v for v in f.vocabulary if v in options]  # the vocabulary's order: label, model, ...
            decode = (_decode_names(f.param, f.vocabulary, options) if f.vocabulary
                      else _decode_choices(f.param, options))
            state.seed(key, f.param, decode, scope=scope)
            picked = col.multiselect(f.label, options, key=key, placeholder="every image", **keep_state)
            if f.vocabulary:
                published[f.param] = ",".join(p for p in picked if p in options) or None
            else:
                published[f.param] = state.encode_ints([options.index(p) for p in picked if p in options])
            if picked:
                keep &= sub[f.column].isin(picked).to_numpy()
    state.publish(**published)
    return rows[keep]


def errors_filters_id(run: Run) -> str:
    """The diagnosis filters' values as text ('' when unset), so that the Errors page's table and gallery
    start afresh when they change."""
    try:
        filters = _filters(run) if rows_table(run) is not None else []
    except (UserError, OSError):
        return ""
    values = [st.session_state.get(_filter_key(run, f)) for f in filters]
    if all(v in (None, 0.0, "any", []) for v in values):
        return ""
    return f"-{values}"


def with_finding_columns(run: Run, table: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """``table`` (one line per row of ``rows``) with every declared per-image column (by its label),
    when findings are stored."""
    extra = rows_table(run)
    if extra is None:
        return table
    sub = extra.iloc[rows]
    table = table.copy()
    for f in _specs(run).values():
        for spec in f.column_specs:
            table[spec.label] = sub[spec.name].to_numpy()
    return table


# --------------------------------------------------------------------------- computing

def compute_ui(run: Run, missing: list[str]) -> None:
    """A 'Compute diagnoses' button; a click runs the missing kinds with a progress bar in the page."""
    if not st.button("Compute diagnoses", type="primary", key="diagnose-compute",
                     help="Runs " + ", ".join(missing) + " on this run and stores the results in it."):
        return
    bar = st.progress(0.0, text="Starting…")

    def update(message: str, fraction: float) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=ui.plain(message))

    results = diagnose.run_diagnoses(run, progress=update, kinds=tuple(missing))
    st.session_state.setdefault(SKIPPED_KEY, {})[ui.run_scope(run)] = dict(results.skipped)
    cache.diagnose_rows.clear()
    cache.diagnose_cards.clear()
    cache.diagnose_declared.clear()
    bar.empty()
    st.rerun()


def skipped_reasons(run: Run) -> dict[str, str]:
    return dict(st.session_state.get(SKIPPED_KEY, {}).get(ui.run_scope(run), {}))
