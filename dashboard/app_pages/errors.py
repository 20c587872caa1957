"""Every misclassified image of the evaluation split, most confident first.

Filters: true class, predicted class, confidence range (in the URL). A click on
a table row or a thumbnail opens the image detail (probabilities, nearest
neighbours of the true and of the predicted class); the filtered list
downloads as CSV.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import cache, causes_ui, diagnose_ui, gallery, state, ui, views

TABLE_ROWS = 5_000  # rows sent to the browser table; the CSV has them all
SOURCE = "errors"


def filters_ui(run) -> tuple[list[int], list[int], tuple[float, float]]:
    k = len(run.classes)
    scope = ui.run_scope(run)
    true_key, pred_key, conf_key = (ui.scoped(run, name) for name in ("errors-true", "errors-pred", "errors-conf"))
    state.seed(true_key, "true", lambda t: state.decode_ints(t, low=0, high=k - 1, name="true"), scope=scope)
    state.seed(pred_key, "pred", lambda t: state.decode_ints(t, low=0, high=k - 1, name="pred"), scope=scope)
    state.seed(conf_key, "conf", lambda t: state.decode_range(t, name="conf"), scope=scope)
    if conf_key not in st.session_state:
        st.session_state[conf_key] = (0.0, 1.0)
    fmt = ui.class_label(run)
    cols = st.columns([2, 2, 2])
    keep = {"persist_state": "session"}  # the filters outlive a visit to another page
    true = cols[0].multiselect("True class", range(k), key=true_key, format_func=fmt, placeholder="every class",
                               **keep)
    pred = cols[1].multiselect("Predicted class", range(k), key=pred_key, format_func=fmt,
                               placeholder="every class", **keep)
    low, high = cols[2].slider("Confidence", 0.0, 1.0, step=0.01, key=conf_key, **keep)
    state.publish(true=state.encode_ints(true), pred=state.encode_ints(pred),
                  conf=None if (low, high) == (0.0, 1.0) else state.encode_floats((low, high)))
    return list(true), list(pred), (float(low), float(high))


def _open_selected(run_id: str, table_key: str, rows: np.ndarray) -> None:
    """The table's row selection changed: open the detail of the selected row."""
    picked = ui.picked_row(table_key)
    if picked is not None and 0 <= picked < rows.size:
        gallery.open_detail(run_id, int(rows[picked]), source=SOURCE)


def table_ui(run, rows: np.ndarray, *, filters_id: str) -> None:
    shown = rows[:TABLE_ROWS]
    table = views.export_table(run.predictions, shown)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table = diagnose_ui.with_finding_columns(run, table, shown)  # label issue, copy in train, slice
    table_key = ui.scoped(run, f"errors-table-{filters_id}")
    # the diagnoses' scores (cause confidence, label issue) with three decimals, as the model's confidence: in the
    # grid's own format a cause confidence of 0.99996 showed as an empty cell (seen on a 120-class run)
    scores = {c: st.column_config.NumberColumn(c, format="%.3f") for c in table.columns
              if c not in ("confidence", "true_prob") and pd.api.types.is_float_dtype(table[c])}
    st.dataframe(ui.shown(table), hide_index=True, width="stretch", height=300, key=table_key,
                 on_select=partial(_open_selected, run.id, table_key, shown), selection_mode=ui.ROW_PICK,
                 column_config={**scores, "rank": st.column_config.NumberColumn("rank", width=60, pinned=True),
                                "id": st.column_config.NumberColumn("id", width=80),
                                "path": st.column_config.TextColumn("file", width="medium"),
                                "split": st.column_config.TextColumn("split", width=70),
                                "true_label": st.column_config.TextColumn("true"),
                                "predicted_label": st.column_config.TextColumn("predicted"),
                                "confidence": st.column_config.NumberColumn("confidence", format="%.3f",
                                                                            width=100),
                                "true_prob": st.column_config.NumberColumn("p(true)", format="%.3f", width=90)})
    note = "Click a row to inspect its image."
    if rows.size > TABLE_ROWS:
        note += f" The table shows the first {TABLE_ROWS:,} of {rows.size:,}; the CSV has all."
    st.caption(note)


def render() -> None:
    run = ui.current_run()
    key = cache.run_key(run)
    st.title("Errors")
    true, pred, conf = filters_ui(run)
    rows = views.filter_errors(run.predictions, cache.eval_mask(run, key), true_classes=true,
                               predicted_classes=pred, confidence_range=conf)
    rows = diagnose_ui.errors_filters_ui(run, rows)  # label-issue score, copy in train, slice (if diagnosed)
    order, title = "most confident mistake first", "errors, most confident first"
    if causes_ui.stored(run) is not None and st.toggle("Model errors first", value=True,
                                                       key=ui.scoped(run, "errors-model-first"),
                                                       help="Errors whose cause is 'model' (the image looks like "
                                                            "its label, the model is wrong) lead, each part most "
                                                            "confident first."):
        rows, _ = causes_ui.model_errors_first(run, rows)
        order = "the model's own errors first, each part most confident first"
        title = "errors, the model's own first"
    st.caption(f"{views.plural(rows.size, 'misclassified image')} of the '{ui.plain(run.eval_split)}' split "
               f"match, {order}.")

    def csv() -> bytes:  # built only when the button is clicked: 100k rows take ~0.4 s
        return views.errors_csv(run, rows, min_confidence=conf[0])

    st.download_button("Download CSV", csv, file_name=f"{run.id}_errors.csv", mime="text/csv",
                       key="download-errors")
    if rows.size == 0:
        st.info("No misclassified image matches these filters.")
        return
    filters_id = (f"{true}-{pred}-{conf}" + diagnose_ui.errors_filters_id(run)
                  + ("-model-first" if st.session_state.get(ui.scoped(run, "errors-model-first")) else ""))
    table_ui(run, rows, filters_id=filters_id)
    gallery.gallery_ui(run, rows, key=SOURCE, order_note=order, url_param="p",
                       title=title,
                       page_key=ui.scoped(run, f"errors-page-{filters_id}"))


render()
