"""Per-class report of the evaluation split, the most confused class pairs beside it.

The "Download CSV" button serves ``run.per_class_csv()``: byte for byte the
file ``python -m core report`` writes.
"""

from __future__ import annotations

import streamlit as st

from core.metrics import confused_pairs
from core.store import RunCorruptError
from dashboard import cache, ui, views

WORST_SHARE = 0.1  # flag the lowest-F1 tenth of the classes (at least one)


def table_ui(run) -> None:
    try:
        table = views.flag_worst(run.per_class, share=WORST_SHARE)
    except (RunCorruptError, KeyError) as exc:  # per_class.csv missing, unreadable, or lacking a column
        ui.cannot_show("The per-class table cannot be shown", exc)
        return
    many = len(table) > 20
    if st.checkbox("Worst F1 first", value=many, key=ui.scoped(run, "per-class-worst-first")):
        table = table.sort_values(["f1", "class"], kind="stable").reset_index(drop=True)
    styled = table.style.apply(
        lambda row: ["background-color: #fde2e1" if row["worst"] else "" for _ in row], axis=1)
    pct = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(styled, hide_index=True, width="stretch", height=min(38 + 35 * len(table), 600),
                 column_config={"worst": st.column_config.CheckboxColumn("worst F1"),
                                "class": st.column_config.TextColumn("class"),
                                "precision": pct, "recall": pct, "f1": pct,
                                "cer": st.column_config.NumberColumn("CER", format="%.4f")})
    st.caption(f"Sortable: click a column header. Flagged rows: the lowest-F1 {WORST_SHARE:.0%} of "
               "classes. CER = (FP + FN) / N.")


def render() -> None:
    run = ui.current_run()
    key = cache.run_key(run)
    st.title("Per-class report")
    st.caption(f"Evaluation split: '{ui.plain(run.eval_split)}'.")
    try:
        report = run.per_class_csv()
    except RunCorruptError:  # per_class.csv missing or unreadable: table_ui says why, in one line
        report = None
    if report is not None:
        st.download_button("Download CSV", report, file_name=f"{run.id}_per_class.csv",
                           mime="text/csv", key="download-per-class")
    left, right = st.columns([7, 3])
    with left:
        table_ui(run)
    with right:
        st.subheader("Most confused pairs")
        top = st.number_input("Pairs", 1, 100, 15, key=ui.scoped(run, "pairs-top"))
        pairs = confused_pairs(cache.eval_confusion(run, key), run.classes, top=int(top))
        st.dataframe(pairs[["true", "predicted", "count", "share_of_true"]], hide_index=True,
                     width="stretch",
                     column_config={"true": st.column_config.TextColumn("true"),
                                    "predicted": st.column_config.TextColumn("predicted"),
                                    "share_of_true": st.column_config.NumberColumn(
                                        "share of true", format="%.3f")})


render()
