"""The Diagnose page's findings as cards, and the diagnosis columns of every gallery and the Errors page.

A *card* is one finding of ``core.diagnose`` (suspected label errors, leaks,
duplicates, odd images, calibration, error slices) with the rows of the images
behind it, ordered by the finding's score (most suspicious first), and the
number of *evaluated errors it explains*: misclassified images of the
evaluation split among those rows (calibration: the mistakes made with
confidence >= ``CONFIDENT``). Cards are ranked by that number, largest first;
an error may count on several cards.

Everything here reads stored results (``derived.get(..., compute=False)``) and
imports neither TensorFlow nor umap; ``compute_ui`` runs the missing kinds with
a progress bar. N images per run; rows are row ids of ``run.predictions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import streamlit as st

from core import derived, diagnose
from core.store import Run
from dashboard import cache, gallery, state, ui, views

CONFIDENT = 0.9  # a mistake at least this confident counts on the calibration card
ATYPICAL_QUANTILE = 0.95  # the odd-images card: the evaluated images above this atypicality quantile
MAX_SLICE_CARDS = 5
MAX_PROPERTY_CARDS = 5
SKIPPED_KEY = "diagnose-skipped"  # {run scope: {kind: reason}} from the last "Compute diagnoses"


@dataclass
class Card:
    """One finding: ``rows`` (int array (M,), most suspicious first) and the evaluated errors among them."""

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


def _evaluated_errors(run: Run, rows: np.ndarray, eval_mask: np.ndarray) -> int:
    rows = np.asarray(rows, np.int64)
    if rows.size == 0:
        return 0
    correct = run.predictions["correct"].to_numpy(bool)
    return int((eval_mask[rows] & ~correct[rows]).sum())


def _unique(rows) -> np.ndarray:
    """``rows`` without repeats, first occurrence kept (the order is the finding's score order)."""
    rows = np.asarray(rows, np.int64)
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]


def label_issue_cards(run: Run, stored, eval_mask: np.ndarray) -> list[Card]:
    table = stored.table("label_issues")
    issues = table[table["is_issue"]].sort_values("score", ascending=False)
    rows = issues["row"].to_numpy(np.int64)
    return [Card("label_issues", "label_issues", "Suspected label errors", diagnose.headline("label_issues",
                 stored.summary), rows, _evaluated_errors(run, rows, eval_mask), "most likely mislabelled first")]


def _edited_text(leaks: pd.DataFrame) -> str:
    """' 12 of them edited (flipped, cropped, rotated…): ...' from the leaks' ``transform`` column."""
    if "transform" not in leaks or leaks.empty:
        return ""
    how = leaks.drop_duplicates("row")["transform"].astype(str)
    edited = how[~how.isin(["identical pixels", "re-encoded or noisy (same geometry)"])]
    if edited.empty:
        return ""
    common = edited.value_counts().head(3)
    return (f" {len(edited):,} of them edited, e.g. "
            + "; ".join(f"{text} ({count:,})" for text, count in common.items()) + ".")


def duplicate_cards(run: Run, stored, eval_mask: np.ndarray) -> list[Card]:
    s = stored.summary
    cards = []
    leaks = stored.table("eval_with_train_copy")
    leaks = leaks[~leaks["correct"] | ~leaks["labels_agree"]].sort_values("similarity", ascending=False)
    rows = _unique(leaks["row"])
    n_wrong = int((~leaks.drop_duplicates("row")["correct"]).sum())
    cards.append(Card("leaks", "duplicates", "Leaks: evaluated images with a near copy in train",
                      f"{views.plural(s.get('n_eval_with_train_copy', 0), 'image')} of "
                      f"'{s.get('eval_split', '?')}' with a copy in train; {n_wrong:,} of them misclassified; "
                      f"{views.plural(int((~leaks['labels_agree']).sum()), 'copy', 'copies')} with another label."
                      + _edited_text(stored.table("eval_with_train_copy")),
                      rows, _evaluated_errors(run, rows, eval_mask), "closest copy first"))
    pairs = stored.table("pairs").sort_values("similarity", ascending=False)
    disagree = pairs[~pairs["labels_agree"]]
    rows = _unique(np.column_stack([disagree["row_a"], disagree["row_b"]]).ravel())
    cards.append(Card("disagreeing_copies", "duplicates", "Copies whose labels disagree",
                      f"{views.plural(len(disagree), 'pair')} of (near) copies with different labels: at least "
                      "one image of each pair is mislabelled.", rows, _evaluated_errors(run, rows, eval_mask),
                      "closest pair first, the two images side by side"))
    rows = _unique(np.column_stack([pairs["row_a"], pairs["row_b"]]).ravel())
    cards.append(Card("duplicates", "duplicates", "Duplicates",
                      f"{views.plural(s.get('n_pairs', 0), 'pair')} of copies ({s.get('n_exact', 0):,} exact, "
                      f"{s.get('n_near', 0):,} near; {s.get('n_cross_split', 0):,} across splits) among "
                      f"{s.get('n_scanned', 0):,} images.", rows, _evaluated_errors(run, rows, eval_mask),
                      "closest pair first, the two images side by side",
                      notes=[str(n) for n in s.get("notes", [])]))
    return cards


def finding_rows(properties: pd.DataFrame, error_rates: pd.DataFrame, finding: pd.Series) -> np.ndarray:
    """The rows of one property finding (its class, or every class, and its tail of the property).

    ``properties``: the ``image_properties`` table of every image; ``error_rates``: its per-class
    thresholds. Rows of the evaluated split (``finding``'s group), most extreme value first.
    """
    prop, side = finding["property"], finding["side"]
    rates = error_rates[(error_rates["property"] == prop) & (error_rates["class"] != "(all classes)")]
    if finding["class"] != "(all classes)":
        rates = rates[rates["class"] == finding["class"]]
    threshold = dict(zip(rates["class"], rates[f"{side}_threshold"]))
    per_row = properties["true_label"].map(threshold).to_numpy(float)
    value = properties[prop].to_numpy(float)
    inside = (value <= per_row) if side == "low" else (value >= per_row)
    inside &= ~np.isnan(per_row)
    picked = properties[inside]
    picked = picked.sort_values(prop, ascending=side == "low")
    return picked["row"].to_numpy(np.int64)


def odd_image_cards(run: Run, stored, eval_mask: np.ndarray) -> list[Card]:
    props = stored.table("properties")
    evaluated = props[eval_mask[props["row"].to_numpy(np.int64)]]
    cards = []
    findings = stored.table("findings")
    atypical = evaluated["atypicality"].to_numpy(float)
    # the property findings name atypical groups themselves when errors concentrate there
    if np.isfinite(atypical).any() and not (findings["property"] == "atypicality").any():
        cut = float(np.nanquantile(atypical, ATYPICAL_QUANTILE))
        odd = evaluated[atypical >= cut].sort_values("atypicality", ascending=False)
        rows = odd["row"].to_numpy(np.int64)
        wrong = _evaluated_errors(run, rows, eval_mask)
        base = float((~evaluated["correct"]).mean()) if len(evaluated) else 0.0
        cards.append(Card("atypical", "image_properties", "Odd images: the most atypical",
                          f"The {1 - ATYPICAL_QUANTILE:.0%} most atypical evaluated images (far from their "
                          f"class's neighbours in embedding space): {wrong:,} of {rows.size:,} misclassified "
                          f"({wrong / max(rows.size, 1):.0%}, against {base:.0%} overall).",
                          rows, wrong, "most atypical first"))
    rates = stored.table("error_rates")
    for i, finding in findings.head(MAX_PROPERTY_CARDS).iterrows():
        rows = finding_rows(evaluated, rates, finding)
        cards.append(Card(f"property-{i}", "image_properties",
                          f"Odd images: {finding['property']}, "
                          + ("every class" if finding["class"] == "(all classes)" else str(finding["class"])),
                          str(finding["text"]),
                          rows, _evaluated_errors(run, rows, eval_mask),
                          f"{'lowest' if finding['side'] == 'low' else 'highest'} {finding['property']} first"))
    return cards


def calibration_card(run: Run, stored, eval_mask: np.ndarray) -> list[Card]:
    errors = stored.table("confident_errors").sort_values("rank")
    rows = errors["row"].to_numpy(np.int64)
    confident = errors["confidence"].to_numpy(float) >= CONFIDENT
    s = stored.summary
    return [Card("calibration", "calibration", "Calibration",
                 f"ECE {s['ece']:.4f}, MCE {s['mce']:.4f} on '{s['split']}'; {int(confident.sum()):,} mistakes "
                 f"made with confidence ≥ {CONFIDENT:.0%}.",
                 rows, _evaluated_errors(run, rows[confident], eval_mask),
                 "most confident mistake first (after temperature scaling)")]


def slice_cards(run: Run, stored, eval_mask: np.ndarray) -> list[Card]:
    slices = stored.table("slices")
    members = stored.table("members")
    cards = []
    for _, s in slices.head(MAX_SLICE_CARDS).iterrows():
        mine = members[members["slice_id"] == s["slice_id"]].sort_values("distance")
        rows = mine["row"].to_numpy(np.int64)
        cards.append(Card(f"slice-{int(s['slice_id'])}", "error_slices", f"Error slice: {s['name']}",
                          f"{int(s['n']):,} images, error rate {s['error_rate']:.0%} against "
                          f"{s['expected_rate']:.0%} expected ({s['lift']:.1f}x); "
                          f"{s['excess_errors']:.0f} errors more than expected.",
                          rows, _evaluated_errors(run, rows, eval_mask), "closest to the slice's centre first"))
    return cards


BUILDERS = {"label_issues": label_issue_cards, "calibration": calibration_card, "duplicates": duplicate_cards,
            "image_properties": odd_image_cards, "error_slices": slice_cards}


def build_cards(run: Run, findings: dict, eval_mask: np.ndarray) -> list[Card]:
    """Every card of the stored ``findings``, ranked by the evaluated errors each explains (ties: kind order)."""
    cards = []
    for name, build in BUILDERS.items():
        if findings.get(name) is not None:
            cards.extend(build(run, findings[name], eval_mask))
    order = {name: i for i, name in enumerate(diagnose.DIAGNOSES)}
    return sorted(cards, key=lambda c: (-c.explains, order.get(c.kind, 99)))


# --------------------------------------------------------------------------- per-row columns

def rows_table(run: Run) -> pd.DataFrame | None:
    """``row_findings`` of the stored diagnoses (cached until one is stored again), or None."""
    return cache.diagnose_rows(run, cache.run_key(run), cache.diagnoses_stamp(run))


def cards(run: Run) -> list[Card]:
    """``build_cards`` of the stored diagnoses (cached until one is stored again)."""
    return cache.diagnose_cards(run, cache.run_key(run), cache.diagnoses_stamp(run))


def row_findings(run: Run, findings: dict) -> pd.DataFrame:
    """One row per image (N): ``label_issue`` score (NaN if unscored), ``suggested`` class, ``is_issue``,
    ``train_copy`` (an evaluated image with a near copy in train), ``train_copy_how`` (how that copy
    differs, in words: 'flipped left-right, cropped to 90%'; '' for none) and ``slice`` name ('' for none)."""
    n = len(run.predictions)
    out = pd.DataFrame({"label_issue": np.full(n, np.nan), "suggested": np.full(n, "", dtype=object),
                        "is_issue": np.zeros(n, bool), "train_copy": np.zeros(n, bool),
                        "train_copy_how": np.full(n, "", dtype=object), "slice": np.full(n, "", dtype=object)})
    if findings.get("label_issues") is not None:
        t = findings["label_issues"].table("label_issues")
        rows = t["row"].to_numpy(np.int64)
        out.loc[rows, "label_issue"] = t["score"].to_numpy(float)
        out.loc[rows, "suggested"] = t["suggested_label"].astype(str).to_numpy()
        out.loc[rows, "is_issue"] = t["is_issue"].to_numpy(bool)
    if findings.get("duplicates") is not None:
        t = findings["duplicates"].table("eval_with_train_copy")
        out.loc[t["row"].to_numpy(np.int64), "train_copy"] = True
        if "transform" in t:  # duplicates v2: how the copy differs ("flipped left-right, cropped to 90%")
            out.loc[t["row"].to_numpy(np.int64), "train_copy_how"] = t["transform"].astype(str).to_numpy()
    if findings.get("error_slices") is not None:
        s = findings["error_slices"]
        names = dict(zip(s.table("slices")["slice_id"], s.table("slices")["name"].astype(str)))
        members = s.table("members")
        out.loc[members["row"].to_numpy(np.int64), "slice"] = members["slice_id"].map(names).fillna("").to_numpy()
    return out


def caption_text(run: Run, row: int) -> str | None:
    """The diagnosis caption of one image: 'label issue 0.93 → suggested Shirt · copy in train'."""
    try:
        table = rows_table(run)
    except (OSError, ValueError, LookupError):
        return None
    if table is None:
        return None
    r = table.iloc[int(row)]
    parts = []
    if r["is_issue"]:
        parts.append(f"label issue {r['label_issue']:.2f} → suggested {r['suggested']}")
    if r["train_copy"]:
        how = str(r.get("train_copy_how", "") or "")
        parts.append(f"copy in train ({how})" if how and how != "identical pixels" else "copy in train")
    return " · ".join(parts) or None


gallery.register_caption_field("diagnose", caption_text)


COPY_CHOICES = ("any", "has a copy in train", "no copy in train")
COPY_PARAM = {"has a copy in train": "yes", "no copy in train": "no"}


def _decode_score(text: str) -> float:
    """The URL's minimum label-issue score: one number in [0, 1]."""
    (value,) = state.decode_floats(text, count=1, name="issue")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"issue must be a number from 0 to 1. Received: {text!r}")
    return value


def _decode_slices(text: str, slices: list[str]) -> list[str]:
    """The URL's error slices: indices into the run's sorted slice names."""
    if not slices:
        raise ValueError(f"slice: this run has no error slices. Received: {text!r}")
    return [slices[i] for i in state.decode_ints(text, low=0, high=len(slices) - 1, name="slice")]


def errors_filters_ui(run: Run, rows: np.ndarray) -> np.ndarray:
    """The Errors page's diagnosis filters (label-issue score, copy in train, slice) applied to ``rows``;
    nothing when no finding is stored. Their values are in the URL (issue, copy, slice)."""
    table = rows_table(run)
    if table is None:
        return rows
    scope = ui.run_scope(run)
    score_key, copy_key, slice_key = (ui.scoped(run, name) for name in
                                      ("errors-label-issue", "errors-train-copy", "errors-slice"))
    slices = sorted(s for s in table["slice"].unique() if s)
    by_param = {param: choice for choice, param in COPY_PARAM.items()}
    state.seed(score_key, "issue", _decode_score, scope=scope)
    state.seed(copy_key, "copy", lambda t: by_param[state.decode_choice(t, list(by_param), name="copy")],
               scope=scope)
    # slices by their place in the sorted list of names (names are free text)
    state.seed(slice_key, "slice", lambda t: _decode_slices(t, slices), scope=scope)
    if score_key not in st.session_state:
        st.session_state[score_key] = 0.0
    if copy_key not in st.session_state:
        st.session_state[copy_key] = COPY_CHOICES[0]
    keep_state = {"persist_state": "session"}  # like the class and confidence filters
    cols = st.columns([2, 2, 2])
    low = cols[0].slider("Label-issue score at least", 0.0, 1.0, step=0.05, key=score_key, **keep_state)
    copy = cols[1].selectbox("Copy in train", COPY_CHOICES, key=copy_key, **keep_state)
    picked = cols[2].multiselect("Error slice", slices, key=slice_key, placeholder="every image", **keep_state)
    state.publish(issue=state.number(low) if low > 0 else None, copy=COPY_PARAM.get(copy),
                  slice=state.encode_ints([slices.index(p) for p in picked if p in slices]))
    sub = table.iloc[rows]
    keep = np.ones(rows.size, bool)
    if low > 0:
        keep &= sub["label_issue"].to_numpy(float) >= low
    if copy != "any":
        keep &= sub["train_copy"].to_numpy(bool) == (copy == "has a copy in train")
    if picked:
        keep &= sub["slice"].isin(picked).to_numpy()
    return rows[keep]


def errors_filters_id(run: Run) -> str:
    """The diagnosis filters' values as text ('' when unset), so that the Errors page's table and gallery
    start afresh when they change."""
    values = [st.session_state.get(ui.scoped(run, name)) for name in
              ("errors-label-issue", "errors-train-copy", "errors-slice")]
    if values[0] in (None, 0.0) and values[1] in (None, "any") and not values[2]:
        return ""
    return f"-{values}"


def with_finding_columns(run: Run, table: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """``table`` (one line per row of ``rows``) with the label-issue score, suggested class, copy in
    train and slice columns, when findings are stored."""
    extra = rows_table(run)
    if extra is None:
        return table
    sub = extra.iloc[rows]
    table = table.copy()
    table["label issue"] = sub["label_issue"].to_numpy()
    table["suggested"] = sub["suggested"].to_numpy()
    table["copy in train"] = sub["train_copy"].to_numpy()
    if "train_copy_how" in sub:
        table["copy edit"] = sub["train_copy_how"].to_numpy()
    table["slice"] = sub["slice"].to_numpy()
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
    bar.empty()
    st.rerun()


def skipped_reasons(run: Run) -> dict[str, str]:
    return dict(st.session_state.get(SKIPPED_KEY, {}).get(ui.run_scope(run), {}))
