"""Confusion matrix of the evaluation split; a clicked (or chosen) cell shows its images below.

Clicking uses a scatter layer over the heatmap (Streamlit returns no selection
for ``go.Heatmap``); the two selectboxes choose the same cell without the
mouse and are kept in sync with the last click. The chosen cell is shared
with the Embeddings page through ``st.session_state[ui.CELL_KEY]``.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import cache, figures, ui, views

CHART_KEY = "confusion-chart"
CHART_GEN_KEY = "confusion-chart-generation"
TRUE_KEY = "cell-true"
PRED_KEY = "cell-predicted"
LAST_CLICK_KEY = "confusion-last-click"
LARGE_K = 40


def display_ui(n_classes: int) -> tuple[bool, bool, int | None]:
    """View options: (row-normalised, log colour, top-N classes or None for all)."""
    cols = st.columns([2, 1, 3])
    view = cols[0].radio("Values", ["Counts", "Row-normalised"], horizontal=True, key="cm-view")
    log_color = cols[1].checkbox("Log colour scale", key="cm-log")
    top = None
    if n_classes > 12:
        with cols[2]:
            limit = st.checkbox(f"Show only the most confused classes (of {n_classes})",
                                value=n_classes > LARGE_K, key="cm-limit")
            if limit:
                top = int(st.slider("Classes shown", 5, n_classes, min(30, n_classes), key="cm-top"))
    return view == "Row-normalised", log_color, top


def chart_key() -> str:
    """The chart's widget key; a new generation clears its selection (see ``forget_click``)."""
    gen = st.session_state.get(CHART_GEN_KEY, 0)
    return CHART_KEY if gen == 0 else f"{CHART_KEY}-{gen}"


def forget_click() -> None:
    """Called when a selectbox changes: drop the chart's old selection, so that clicking
    the previously clicked cell again registers as a new click."""
    st.session_state[CHART_GEN_KEY] = st.session_state.get(CHART_GEN_KEY, 0) + 1
    st.session_state.pop(LAST_CLICK_KEY, None)


def sync_cell_state(run, cm: np.ndarray, class_order: np.ndarray) -> None:
    """Put the cell to show into the selectboxes' state before they are drawn.

    A new click on the chart wins; otherwise keep the selectboxes, else the
    cell shared by another page for this run, else the most confused cell.
    """
    chart = st.session_state.get(chart_key())
    clicked = views.selection_cell(chart.get("selection") if chart else None, class_order)
    if clicked is not None and st.session_state.get(LAST_CLICK_KEY) != clicked:
        st.session_state[LAST_CLICK_KEY] = clicked
        st.session_state[TRUE_KEY], st.session_state[PRED_KEY] = clicked
        return
    if TRUE_KEY in st.session_state and PRED_KEY in st.session_state:
        return
    shared = st.session_state.get(ui.CELL_KEY)
    if shared and shared[0] == run.id:
        st.session_state[TRUE_KEY], st.session_state[PRED_KEY] = shared[1], shared[2]
    else:
        st.session_state[TRUE_KEY], st.session_state[PRED_KEY] = views.default_cell(cm)


def cell_picker_ui(run) -> tuple[int, int]:
    k = len(run.classes)
    fmt = ui.class_label(run)
    cols = st.columns(2)
    true = cols[0].selectbox("True class", range(k), key=TRUE_KEY, format_func=fmt, on_change=forget_click)
    pred = cols[1].selectbox("Predicted class", range(k), key=PRED_KEY, format_func=fmt, on_change=forget_click)
    return int(true), int(pred)


def render() -> None:
    run = ui.current_run()
    key = cache.run_key(run)
    cm = cache.eval_confusion(run, key)
    k = len(run.classes)
    st.title("Confusion matrix")
    st.caption(f"{int(cm.sum()):,} images of the '{ui.plain(run.eval_split)}' split; rows are true "
               "classes, columns predicted. The diagonal (correct) is grey so that errors stand out. "
               "Click a cell, or choose it below, to see its images.")
    normalize, log_color, top = display_ui(k)
    order = np.arange(k) if top is None or top >= k else views.most_confused_classes(cm, top=top)
    sync_cell_state(run, cm, order)
    true, pred = int(st.session_state[TRUE_KEY]), int(st.session_state[PRED_KEY])
    fig = figures.confusion_figure(cm, run.classes, class_order=order, normalize=normalize,
                                   log_color=log_color, selected=(true, pred))
    st.plotly_chart(fig, key=chart_key(), on_select="rerun", selection_mode="points",
                    config={"displayModeBar": False})
    true, pred = cell_picker_ui(run)
    st.session_state[ui.CELL_KEY] = (run.id, true, pred)
    rows = views.cell_rows(run.predictions, cache.eval_mask(run, key), true=true, predicted=pred)
    share = cm[true, pred] / max(int(cm[true].sum()), 1)
    kind = "correct" if true == pred else "errors"
    st.subheader(ui.plain(f"True {run.classes[true]}, predicted {run.classes[pred]}"))
    st.caption(f"{rows.size:,} images ({share:.1%} of the true class), {kind}.")
    ui.gallery_ui(run, rows, key="confusion", page_key=f"confusion-page-{true}-{pred}")


render()
