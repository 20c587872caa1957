"""Per-class report of the evaluation split, the most confused class pairs beside it.

The "Download CSV" button serves ``run.per_class_csv()``: byte for byte the
file ``python -m core report`` writes. A click on a confused pair shows its
images below (the pair is in the URL: ``pair=<true>,<predicted>``), and a
click on one of them opens its detail.
"""

from __future__ import annotations

from functools import partial

import streamlit as st

from core.run.metrics import confused_pairs
from core.run.store import RunCorruptError
from dashboard import cache, gallery, review_ui, state, ui, views

WORST_SHARE = 0.1  # flag the lowest-F1 tenth of the classes (at least one)
PAIR_KEY = "per-class-pair"


def table_ui(run) -> None:
    try:
        table = views.flag_worst(run.per_class, share=WORST_SHARE)
    except (RunCorruptError, KeyError) as exc:  # per_class.csv missing, unreadable, or lacking a column
        ui.cannot_show("The per-class table cannot be shown", exc)
        return
    many = len(table) > 20
    if st.checkbox("Worst F1 first", value=many, key=ui.scoped(run, "per-class-worst-first"),
                   persist_state="session"):
        table = table.sort_values(["f1", "class"], kind="stable").reset_index(drop=True)
    styled = ui.shown(table).style.apply(
        lambda row: ["background-color: #fde2e1" if row["worst"] else "" for _ in row], axis=1)
    # Fixed widths wide enough for each header and its sort arrow (a sorted "recall" was cut to "re").
    number = {"width": 84}
    pct = partial(st.column_config.NumberColumn, format="%.3f", **number)
    st.dataframe(styled, hide_index=True, width="stretch", height=min(38 + 35 * len(table), 600),
                 column_config={"worst": st.column_config.CheckboxColumn("worst F1", width=80),
                                "class": st.column_config.TextColumn("class", pinned=True),
                                "precision": pct("precision"), "recall": pct("recall"), "f1": pct("F1"),
                                "support": st.column_config.NumberColumn("support", **number),
                                "tp": st.column_config.NumberColumn("TP", **number),
                                "fp": st.column_config.NumberColumn("FP", **number),
                                "fn": st.column_config.NumberColumn("FN", **number),
                                "tn": st.column_config.NumberColumn("TN", **number),
                                "cer": st.column_config.NumberColumn("CER", format="%.4f", **number)})
    st.caption(f"Sortable: click a column header. Flagged rows: the lowest-F1 {WORST_SHARE:.0%} of "
               "classes, and any tied with the last of them. CER = (FP + FN) / N.")


def _pick_pair(pair_key: str, table_key: str, pairs: list[tuple[int, int]]) -> None:
    """The pairs table's selection changed: show the selected pair."""
    picked = ui.picked_row(table_key)
    if picked is not None and 0 <= picked < len(pairs):
        st.session_state[pair_key] = pairs[picked]


def pairs_ui(run, key: str) -> tuple[int, int] | None:
    st.subheader("Most confused pairs")
    top = st.columns([1, 5])[0].number_input("Pairs", 1, 100, 15, key=ui.scoped(run, "pairs-top"),
                                             persist_state="session")
    cm = cache.eval_confusion(run, key)
    pairs = confused_pairs(cm, run.classes, top=int(top))
    index = list(zip(pairs["true_index"].astype(int), pairs["predicted_index"].astype(int)))
    pair_key = ui.scoped(run, PAIR_KEY)
    k = len(run.classes)
    state.seed(pair_key, "pair", lambda t: state.decode_pair(t, high=k - 1, name="pair"), scope=ui.run_scope(run))
    if pair_key not in st.session_state and index:
        st.session_state[pair_key] = index[0]
    table_key = ui.scoped(run, f"pairs-table-{int(top)}")
    st.dataframe(ui.shown(pairs[["true", "predicted", "count", "share_of_true"]]), hide_index=True, width=640,
                 height=min(38 + 35 * len(pairs), 320), key=table_key, on_select=partial(_pick_pair, pair_key, table_key, index),
                 selection_mode=ui.ROW_PICK,
                 column_config={"true": st.column_config.TextColumn("true"),
                                "predicted": st.column_config.TextColumn("predicted"),
                                "count": st.column_config.NumberColumn("images", width=80),
                                "share_of_true": st.column_config.NumberColumn(
                                    "share of true", format="%.3f", width=110)})
    st.caption("Click a pair to see its images below.")
    pair = st.session_state.get(pair_key)
    return tuple(pair) if pair else None


def render() -> None:
    run = ui.current_run()
    key = cache.run_key(run)
    st.title("Per-class report")
    st.caption(f"Evaluation split: '{ui.plain(run.eval_split)}'.")
    if not review_ui.per_class_as_reviewed_ui(run):  # its toggle on: the table and CSV as reviewed instead
        try:
            report = run.per_class_csv()
        except RunCorruptError:  # per_class.csv missing or unreadable: table_ui says why, in one line
            report = None
        if report is not None:
            st.download_button("Download CSV", report, file_name=f"{run.id}_per_class.csv",
                               mime="text/csv", key="download-per-class")
        table_ui(run)
    pair = pairs_ui(run, key)
    if pair is None:
        return
    true, pred = pair
    state.publish(pair=f"{true},{pred}")
    rows = views.cell_rows(run.predictions, cache.eval_mask(run, key), true=true, predicted=pred)
    st.subheader(ui.plain(f"True {run.classes[true]}, predicted {run.classes[pred]}"), anchor=False)
    st.caption(f"{views.plural(rows.size, 'image')} of the '{ui.plain(run.eval_split)}' split.")
    gallery.gallery_ui(run, rows, key="pair", url_param="p",
                       title=f"true {run.classes[true]}, predicted {run.classes[pred]}",
                       page_key=ui.scoped(run, f"pair-page-{true}-{pred}"))


render()
