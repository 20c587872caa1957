"""Compare two runs on the same images: metrics and per-class deltas, and the flip list.

Run A is the run chosen in the sidebar, run B is chosen here. Deltas are B - A.
A flip is an image of A's evaluation split whose correctness changed: fixed by B
(wrong in A, right in B) or broken by B (right in A, wrong in B), grouped by
the confusion cell of the wrong prediction.

Run B is never a broken run by default (readable runs are listed first); a
broken run chosen as B, or runs that cannot be compared, get one line saying why.
The page's state is scoped to run A, and the flip browser's to the pair.
"""

from __future__ import annotations

import streamlit as st

from core.store import RunCorruptError
from dashboard import cache, figures, ui, views

ALL = "all flips"


def run_b_ui(run_a) -> str | None:
    """The run B chosen (None: none can be); the first readable other run by default."""
    others = ui.other_runs(run_a.id)
    if not others:
        st.info("The store has only one run. Analyse another model on the same images to compare.")
        return None
    ids = [summary.run_id for summary, _ in others]
    labels = {summary.run_id: ui.describe_run(summary, problem) for summary, problem in others}
    readable = [summary.run_id for summary, problem in others if problem is None]
    key = ui.scoped(run_a, "compare-run-b")
    gone = st.session_state.get(key)
    if gone is not None and gone not in ids:
        del st.session_state[key]
        st.warning(ui.plain(f"Run '{gone}' is no longer in the store"
                            + (f"; comparing with '{readable[0]}'." if readable else ".")))
    b_id = st.selectbox("Run B", ids, index=0 if readable else None, key=key, format_func=labels.__getitem__,
                        placeholder="Choose a run", help="Runs that cannot be opened come last, marked broken.")
    if b_id is None:
        st.info("No other run of the store can be opened; the list says which are broken.")
    return b_id


def metrics_ui(a, b) -> None:
    cols = st.columns(4)
    for col, (name, label, fmt) in zip(cols, [
        ("accuracy", "Accuracy", "{:.2%}"), ("macro_f1", "Macro-F1", "{:.3f}"),
        ("top3_accuracy", "Top-3 accuracy", "{:.2%}"), ("errors", "Errors", "{:,}"),
    ]):
        va, vb = a.metrics.get(name), b.metrics.get(name)
        if va is None or vb is None:
            continue
        delta = vb - va
        delta_text = (f"{delta:+,}" if name == "errors" else
                      f"{delta * 100:+.2f} pp" if "accuracy" in name else f"{delta:+.3f}")
        col.metric(f"{label} (B)", fmt.format(vb), delta_text,
                   delta_color="inverse" if name == "errors" else "normal")
        col.caption(f"A: {fmt.format(va)}")


def flips_ui(a, b, flip_table) -> None:
    cells = views.flip_cells(flip_table, a.classes)
    n_fixed = int((flip_table["kind"] == "fixed by B").sum())
    n_broken = int((flip_table["kind"] == "broken by B").sum())
    st.subheader("Flips")
    st.caption(f"{n_fixed:,} images fixed by B (wrong in A, right in B), {n_broken:,} broken by B "
               "(right in A, wrong in B).")
    if flip_table.empty:
        st.info("No image changed between the runs.")
        return
    left, right = st.columns([2, 3])
    with left:
        st.dataframe(cells[["kind", "true_label", "wrong_label", "count"]], hide_index=True,
                     width="stretch", height=320,
                     column_config={"true_label": st.column_config.TextColumn("true"),
                                    "wrong_label": st.column_config.TextColumn("wrong prediction")})
    with right:
        options = [ALL] + list(range(len(cells)))
        fmt = (lambda i: ALL if i == ALL else
               f"{cells['kind'][i]}: true {cells['true_label'][i]}, wrongly "
               f"{cells['wrong_label'][i]} ({cells['count'][i]:,})")
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
    by_row = part.set_index("id")

    def a_to_b(row: int) -> str:
        r = by_row.loc[row]
        return (f"{r['kind']}: A said {r['predicted_a']} ({r['confidence_a']:.2f}), "
                f"B says {r['predicted_b']} ({r['confidence_b']:.2f})")

    st.caption("Captions show run B's prediction, then A's and B's side by side.")
    ui.gallery_ui(b, part["id"].to_numpy(), key="flips", order_note="in row order", extra_caption=a_to_b,
                  page_key=ui.scoped(a, f"flips-page-{choice}-{kind}", other=b))


def per_class_ui(a, b) -> None:
    st.subheader("Per class (B - A)")
    try:
        table = views.per_class_comparison(a.per_class, b.per_class)
    except (RunCorruptError, KeyError) as exc:  # a per_class.csv missing, unreadable or lacking a column
        ui.cannot_show("The per-class comparison cannot be shown", exc)
        return
    left, right = st.columns([3, 2])
    with left:
        st.dataframe(table, hide_index=True, width="stretch", height=400,
                     column_config={"class": st.column_config.TextColumn("class"),
                                    **{c: st.column_config.NumberColumn(format="%.3f")
                                       for c in table.columns if c.startswith("f1")},
                                    **{c: st.column_config.NumberColumn(format="%.4f")
                                       for c in table.columns if c.startswith("cer")}})
    with right:
        st.plotly_chart(figures.f1_delta_figure(table), key="compare-f1")



def render() -> None:
    a = ui.current_run()
    st.title("Compare runs")
    st.caption(ui.plain(f"Run A (from the sidebar): {a.id}."))
    b_id = run_b_ui(a)
    if b_id is None:
        return
    try:
        b = cache.load_run(cache.store_root(), b_id)
    except cache.RUN_ERRORS as exc:
        ui.cannot_show(f"Run B '{b_id}' is broken", exc)
        return
    key_a, key_b = cache.run_key(a), cache.run_key(b)
    problem = cache.comparison_problem(a, b, key_a, key_b)
    if problem:
        st.error(ui.plain(problem))
        return
    metrics_ui(a, b)
    per_class_ui(a, b)
    flips_ui(a, b, cache.flips(a, b, key_a, key_b))


render()
