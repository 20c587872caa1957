"""Compare two runs on the same images: metrics and per-class deltas, and the flip list.

Runs A and B are chosen on this page (``a=``/``b=`` in the URL), by default the
most recent pair of readable runs made on the same images with the same
classes (the older as A), whatever split each run put an image in. The numbers
come from ``core.analysis.compare`` (as ``python -m core compare``): the runs are
compared on the images held out by both. Deltas are B - A. A flip is a compared
image whose correctness changed: fixed by B (wrong in A, right in B) or broken
by B (right in A, wrong in B), grouped by the confusion cell of the wrong
prediction. A click on a flip (in the table or the gallery) opens the
image detail with both runs' predictions.

A broken run chosen as A or B, or runs that cannot be compared, get one line
saying why. The flip browser's state is scoped to the pair.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import streamlit as st

from core.analysis.compare import FIXED, flip_cells
from core.run.store import RunStore
from dashboard import cache, figures, gallery, state, ui, views

ALL = "all flips"
A_KEY, B_KEY = "compare-a", "compare-b"
SOURCE = "flips"
OVERLAP_SEARCH = 5  # with no two runs on the same images, the newest runs tried for images in common


def _signature(run_id: str) -> tuple | None:
    """What two comparable runs share (images, labels and classes, whatever their splits), or None for
    a run that cannot be read."""
    try:
        run = cache.load_run(cache.store_root(), run_id)
        return cache.image_signature(run, cache.run_key(run))
    except cache.RUN_ERRORS:
        return None


def default_pair(readable: list[str]) -> tuple[str, str] | None:
    """The most recent pair of ``readable`` runs (newest first) that can be compared, as (older, newer)."""
    signatures = [(run_id, _signature(run_id)) for run_id in readable]
    signatures = [(run_id, sig) for run_id, sig in signatures if sig is not None]
    while True:
        pair = views.latest_comparable_pair(signatures)
        if pair is None:
            return _overlapping_pair(readable[:OVERLAP_SEARCH])
        a, b = (cache.load_run(cache.store_root(), run_id) for run_id in pair)
        if not isinstance(cache.comparison(a, b, cache.run_key(a), cache.run_key(b)), str):
            return pair
        # same signature but not the same images: never pair the newer one with the older again
        signatures = [(r, s if r != pair[0] else (s, "apart")) for r, s in signatures]


def _overlapping_pair(newest_first: list[str]) -> tuple[str, str] | None:
    """The most recent pair of runs that can still be compared (they share some images, compared on those),
    as (older, newer); None when no two can."""
    for i, newer in enumerate(newest_first):
        for older in newest_first[i + 1:]:
            try:
                a, b = (cache.load_run(cache.store_root(), run_id) for run_id in (older, newer))
            except cache.RUN_ERRORS:
                continue
            if not isinstance(cache.comparison(a, b, cache.run_key(a), cache.run_key(b)), str):
                return older, newer
    return None


def _swap() -> None:
    st.session_state[A_KEY], st.session_state[B_KEY] = st.session_state.get(B_KEY), st.session_state.get(A_KEY)


def pair_ui() -> tuple[str, str] | None:
    """Runs A and B chosen on the page; None when the store cannot offer two."""
    pairs = ui.readable_first(RunStore(cache.store_root()).list_runs())
    ids = [summary.run_id for summary, _ in pairs]
    if len(ids) < 2:
        st.info("The store has only one run. Analyse another model on the same images to compare.")
        return None
    labels = {summary.run_id: ui.describe_run(summary, problem) for summary, problem in pairs}
    readable = [summary.run_id for summary, problem in pairs if problem is None]
    for key, param in ((A_KEY, "a"), (B_KEY, "b")):
        state.seed(key, param, lambda t: state.decode_choice(t, ids, name=param), scope=None)
    for key in (A_KEY, B_KEY):
        gone = st.session_state.get(key)
        if gone is not None and gone not in ids:
            del st.session_state[key]
            st.warning(ui.plain(f"Run '{gone}' is no longer in the store."))
    if A_KEY not in st.session_state or B_KEY not in st.session_state:
        pair = default_pair(readable)
        if pair is None:
            sidebar = st.session_state.get(ui.RUN_KEY)
            first = sidebar if sidebar in readable else (readable[0] if readable else ids[0])
            pair = (first, next((r for r in readable if r != first), next(r for r in ids if r != first)))
            st.caption("No two runs of the store can be compared (the same classes and images in common); "
                       "choose the runs to compare.")
        st.session_state.setdefault(A_KEY, pair[0])
        st.session_state.setdefault(B_KEY, pair[1])
    cols = st.columns([5, 1.2, 5], vertical_alignment="bottom")
    a_id = cols[0].selectbox("Run A", ids, key=A_KEY, format_func=labels.__getitem__, persist_state="session",
                             help="Runs that cannot be opened come last, marked broken.")
    cols[1].button("Swap", key="compare-swap", icon=":material/swap_horiz:", on_click=_swap, width="stretch",
                   help="Swap runs A and B")
    b_id = cols[2].selectbox("Run B", ids, key=B_KEY, format_func=labels.__getitem__, persist_state="session",
                             help="Deltas are B - A. Runs that cannot be opened come last, marked broken.")
    state.publish(a=a_id, b=b_id)
    if a_id == b_id:
        st.info("Choose two different runs.")
        return None
    return a_id, b_id


def metrics_ui(comparison) -> None:
    """The headline metrics of both runs on the compared images (B, with B - A)."""
    table = comparison.metrics.set_index("metric")
    cols = st.columns(4)
    for col, (name, label, fmt) in zip(cols, [
        ("accuracy", "Accuracy", "{:.2%}"), ("macro_f1", "Macro-F1", "{:.3f}"),
        ("top3_accuracy", "Top-3 accuracy", "{:.2%}"), ("errors", "Errors", "{:,}"),
    ]):
        if name not in table.index:
            continue
        va, vb = table.at[name, "a"], table.at[name, "b"]
        if name == "errors":
            va, vb = int(va), int(vb)
        delta = vb - va
        delta_text = (f"{delta:+,}" if name == "errors" else
                      f"{delta * 100:+.2f} pp" if "accuracy" in name else f"{delta:+.3f}")
        col.metric(f"{label} (B)", fmt.format(vb), delta_text,
                   delta_color="inverse" if name == "errors" else "normal")
        col.caption(f"A: {fmt.format(va)}")


def _open_flip(run_id: str, table_key: str, rows: np.ndarray) -> None:
    picked = ui.picked_row(table_key)
    if picked is not None and 0 <= picked < rows.size:
        gallery.open_detail(run_id, int(rows[picked]), source=SOURCE)


def flips_ui(a, b, flip_table) -> None:
    cells = flip_cells(flip_table, a.classes)
    n_fixed = int((flip_table["kind"] == FIXED).sum())
    n_broken = len(flip_table) - n_fixed
    st.subheader("Flips")
    st.caption(f"{views.plural(n_fixed, 'image')} fixed by B (wrong in A, right in B), {n_broken:,} broken by B "
               "(right in A, wrong in B).")
    if flip_table.empty:
        st.info("No image changed between the runs.")
        return
    left, right = st.columns([2, 3])
    with left:
        st.dataframe(ui.shown(cells[["kind", "true_label", "wrong_label", "count"]]), hide_index=True,
                     width="stretch", height=min(38 + 35 * len(cells), 320),
                     column_config={"kind": st.column_config.TextColumn("kind", width=95),
                                    "true_label": st.column_config.TextColumn("true"),
                                    "wrong_label": st.column_config.TextColumn("wrong prediction"),
                                    "count": st.column_config.NumberColumn("images", width=70)})
    with right:
        options = [ALL] + list(range(len(cells)))
        fmt = (lambda i: ALL if i == ALL else
               ui.visible(f"{cells['kind'][i]}: true {cells['true_label'][i]}, wrongly "
                          f"{cells['wrong_label'][i]} ({cells['count'][i]:,})"))
        choice = st.selectbox("Flips to browse (kind and confusion cell)", options,
                              key=ui.scoped(a, "compare-cell", other=b), format_func=fmt)
        kind = st.radio("Kind", ["both", "fixed by B", "broken by B"], horizontal=True,
                        key=ui.scoped(a, "compare-kind", other=b), disabled=choice != ALL)
    part = flip_table
    if choice != ALL:
        c = cells.iloc[int(choice)]
        part = part[(part["kind"] == c["kind"]) & (part["true"] == c["true"])
                    & (part["wrong_predicted"] == c["wrong_predicted"])]
    elif kind != "both":
        part = part[part["kind"] == kind]
    st.download_button("Download flips CSV", lambda: part.to_csv(index=False).encode(),
                       file_name=f"flips_{a.id}_vs_{b.id}.csv", mime="text/csv",
                       key="download-flips")
    rows = part["id"].to_numpy()
    table_key = ui.scoped(a, f"flips-table-{choice}-{kind}", other=b)
    st.dataframe(ui.shown(part[["kind", "path", "true_label", "predicted_a", "confidence_a", "predicted_b",
                                  "confidence_b"]]),
                 hide_index=True, width="stretch", height=240, key=table_key,
                 on_select=partial(_open_flip, b.id, table_key, rows), selection_mode=ui.ROW_PICK,
                 column_config={"kind": st.column_config.TextColumn("kind", width=95, pinned=True),
                                "path": st.column_config.TextColumn("file", width="large"),
                                "true_label": st.column_config.TextColumn("true"),
                                "predicted_a": st.column_config.TextColumn("A says"),
                                "confidence_a": st.column_config.NumberColumn("A conf.", format="%.2f", width=75),
                                "predicted_b": st.column_config.TextColumn("B says"),
                                "confidence_b": st.column_config.NumberColumn("B conf.", format="%.2f", width=75)})
    st.caption("Click a flip (a row, or an image below) to inspect it: the detail shows run B, with A's "
               "prediction beside it.")
    by_row = part.set_index("id")

    def a_to_b(_run, row: int) -> str:
        r = by_row.loc[row]
        return f"A: {r['predicted_a']} {r['confidence_a']:.2f} → B: {r['predicted_b']} {r['confidence_b']:.2f}"

    gallery.gallery_ui(b, rows, key=SOURCE, order_note="in row order", url_param="p",
                       title=f"flips, {choice if choice == ALL else fmt(choice)}",
                       fields=(gallery.CaptionField("a-to-b", a_to_b),),
                       page_key=ui.scoped(a, f"flips-page-{choice}-{kind}", other=b))


def per_class_ui(a, b, table) -> None:
    st.subheader("Per class (B - A)")
    every = st.toggle("Every column (A, B and the change for F1, precision, recall, TP, FP, FN and CER)",
                      key=ui.scoped(a, "compare-all-columns", other=b))
    columns = list(table.columns) if every else ["class", "f1_a", "f1_b", "f1_delta", "tp_delta", "fp_delta",
                                                  "fn_delta", "cer_delta"]
    left, right = st.columns([7, 3])
    with left:
        config = {"class": st.column_config.TextColumn("class", pinned=True)}
        for c in table.columns:
            if c == "class":
                continue
            metric, side = c.rsplit("_", 1)
            name = {"f1": "F1", "precision": "Prec.", "recall": "Recall"}.get(metric, metric.upper())
            label = f"{name} {'Δ' if side == 'delta' else side.upper()}"
            fmt = "%.3f" if metric in ("f1", "precision", "recall") else "%.4f" if metric == "cer" else "%d"
            if side == "delta" and metric in ("tp", "fp", "fn"):
                fmt = "%+d"
            config[c] = st.column_config.NumberColumn(label, format=fmt, width=70)
        st.dataframe(ui.shown(table[columns]), hide_index=True, width="stretch",
                     height=min(38 + 35 * len(table), 400), column_config=config)  # no empty rows under 5 classes
        st.caption("Scroll sideways for more columns; the class column stays in place. Δ = B - A.")
    with right:
        st.plotly_chart(figures.f1_delta_figure(table), key="compare-f1", config={"displayModeBar": False})


def render() -> None:
    st.title("Compare runs")
    chosen = pair_ui()
    if chosen is None:
        return
    runs = []
    for label, run_id in zip("AB", chosen):
        try:
            runs.append(cache.load_run(cache.store_root(), run_id))
        except cache.RUN_ERRORS as exc:
            ui.cannot_show(f"Run {label} '{run_id}' is broken", exc)
            return
    a, b = runs
    key_a, key_b = cache.run_key(a), cache.run_key(b)
    comparison = cache.comparison(a, b, key_a, key_b)
    if isinstance(comparison, str):
        st.error(ui.plain(comparison))
        return
    st.caption(ui.plain(f"Compared {comparison.basis}."))
    metrics_ui(comparison)
    per_class_ui(a, b, comparison.per_class)
    flips_ui(a, b, comparison.flips)


render()
