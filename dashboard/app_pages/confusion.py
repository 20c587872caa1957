"""Confusion matrix of the evaluation split; a clicked (or chosen) cell shows its images below.

Clicking uses a scatter layer over the heatmap (Streamlit returns no selection
for ``go.Heatmap``); the two selectboxes choose the same cell without the
mouse and are kept in sync with the last click. The chosen cell is shared
with the Embeddings page through ``st.session_state[ui.scoped(run, ui.CELL_KEY)]``.
Every key of the page's state is scoped to the run (see ``ui.scoped``); the
cell, the display options and the gallery page are in the URL (``state``).

The matrix, the pickers and the cell's images are one ``st.fragment``: choosing a cell reruns
only them (not the sidebar and the page's options), then brings the images into view.

Beyond ``LARGE_K`` classes the page opens on the ``DEFAULT_TOP`` classes involved
in most errors and says so; the full matrix is a WebGL layer whose labels
plotly thins to what fits, all of them readable once zoomed (drag a box).
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import cache, figures, gallery, scroll, state, ui, views

CHART_KEY = "confusion-chart"
CHART_GEN_KEY = "confusion-chart-generation"
TRUE_KEY = "cell-true"
PRED_KEY = "cell-predicted"
LAST_CLICK_KEY = "confusion-last-click"
SCROLLS_KEY = "confusion-scrolls"  # requests to bring the cell's images into view
LARGE_K = 40
DEFAULT_TOP = 30
VALUES = ["Counts", "Row-normalised"]
# plotly waits this long after a click in select mode before it reports it (a second click would
# make it a double-click: zoom out). Its default, 300 ms, was a third of the target for a click to
# show its images; a double-click is still two clicks within 150 ms.
DOUBLE_CLICK_MS = 150

# In the browser, at the click itself: bring the cell's section into view before the server has
# answered, so the new images are drawn where the user already looks (the server's own scroll,
# ``scroll.scroll_to``, ran about a second after the images on a loaded machine).
SCROLL_ON_CLICK_JS = r"""
export default function (component) {
  const { data } = component;
  if (!data) return;
  window.__confusionScroll = data;
  if (window.__confusionScrollHooked) return;  // one listener per page, reading the latest data
  window.__confusionScrollHooked = true;
  let down = null, timer = null;
  document.addEventListener("mousedown", (e) => {  // (plotly covers the page for the mouseup)
    const cfg = window.__confusionScroll;
    const onMatrix = cfg && e.target.closest && e.target.closest("[class*='" + cfg.chart + "'] .nsewdrag");
    down = onMatrix ? [e.clientX, e.clientY] : null;
  }, true);
  document.addEventListener("mouseup", (e) => {
    const cfg = window.__confusionScroll, at = down;
    down = null;
    if (!cfg || !at) return;  // not pressed on the matrix
    if (Math.abs(e.clientX - at[0]) + Math.abs(e.clientY - at[1]) > 4) return;  // a drag (zoom box)
    if (timer) { clearTimeout(timer); timer = null; return; }  // the second click of a double-click
    timer = setTimeout(() => {  // after plotly has taken the click as a selection
      timer = null;
      const target = document.querySelector(".st-key-" + CSS.escape(cfg.target));
      if (!target) return;
      target.style.scrollMarginTop = "4rem";  // below Streamlit's header
      target.scrollIntoView({ block: "start", behavior: "instant" });
    }, cfg.delay);
  }, true);
}
"""
_scroll_on_click = st.components.v2.component("classifier_confusion_scroll_on_click", js=SCROLL_ON_CLICK_JS)


def display_ui(run) -> tuple[bool, bool, int | None]:
    """View options: (row-normalised, log colour, top-N classes or None for all). Counts or
    shares and the colour scale are preferences kept across runs; the class limit is the run's."""
    n_classes = len(run.classes)
    scope = ui.run_scope(run)
    state.seed("cm-view", "values", lambda t: VALUES[1] if state.decode_choice(t, ["share", "count"]) == "share"
               else VALUES[0], scope=scope)
    state.seed("cm-log", "log", lambda t: state.decode_choice(t, ["0", "1"]) == "1", scope=scope)
    limit_key, top_key = ui.scoped(run, "cm-limit"), ui.scoped(run, "cm-top")
    if n_classes > 12:
        if state.seed(top_key, "top", lambda t: state.decode_int(t, low=5, high=n_classes, name="top"),
                      scope=scope):
            st.session_state[limit_key] = st.session_state[top_key] < n_classes
    cols = st.columns([2, 1, 3])
    view = cols[0].radio("Values", VALUES, horizontal=True, key="cm-view", persist_state="session")
    log_color = cols[1].checkbox("Log colour scale", key="cm-log", persist_state="session")
    top = None
    if n_classes > 12:
        with cols[2]:
            if limit_key not in st.session_state:
                st.session_state[limit_key] = n_classes > LARGE_K
            limit = st.checkbox(f"Show only the most confused classes (of {n_classes})", key=limit_key,
                                persist_state="session")
            if limit:
                if top_key not in st.session_state:
                    st.session_state[top_key] = min(DEFAULT_TOP, n_classes)
                top = int(st.slider("Classes shown", 5, n_classes, key=top_key, persist_state="session"))
    state.publish(values="share" if view == VALUES[1] else None, log="1" if log_color else None,
                  top=str(top) if top is not None else (str(n_classes) if n_classes > LARGE_K else None))
    return view == VALUES[1], log_color, top


def chart_key(run) -> str:
    """The chart's widget key; a new generation clears its selection (see ``forget_click``)."""
    gen = st.session_state.get(ui.scoped(run, CHART_GEN_KEY), 0)
    return ui.scoped(run, CHART_KEY if gen == 0 else f"{CHART_KEY}-{gen}")


def forget_click(gen_key: str, last_click_key: str) -> None:
    """Called when a selectbox changes: drop the chart's old selection, so that clicking
    the previously clicked cell again registers as a new click."""
    st.session_state[gen_key] = st.session_state.get(gen_key, 0) + 1
    st.session_state.pop(last_click_key, None)


def _scroll_to_cell(run) -> None:
    """Ask the page to bring the cell's images into view (``scroll.scroll_to``, once per request)."""
    key = ui.scoped(run, SCROLLS_KEY)
    st.session_state[key] = st.session_state.get(key, 0) + 1


def sync_cell_state(run, cm: np.ndarray, class_order: np.ndarray) -> None:
    """Put the cell to show into the selectboxes' state before they are drawn.

    A new click on the chart wins; otherwise keep the selectboxes, else the cell in the
    URL, else the cell shared by another page for this run, else the most confused cell.
    """
    true_key, pred_key, last_click = (ui.scoped(run, k) for k in (TRUE_KEY, PRED_KEY, LAST_CLICK_KEY))
    chart = st.session_state.get(chart_key(run))
    clicked = views.selection_cell(chart.get("selection") if chart else None, class_order)
    if clicked is not None and st.session_state.get(last_click) != clicked:
        st.session_state[last_click] = clicked
        st.session_state[true_key], st.session_state[pred_key] = clicked
        _scroll_to_cell(run)  # even to the cell already shown: the click asks for its images
        return
    if true_key in st.session_state and pred_key in st.session_state:
        return
    k = len(run.classes)
    cell_key = ui.scoped(run, "cell-from-url")
    if state.seed(cell_key, "cell", lambda t: state.decode_pair(t, high=k - 1), scope=ui.run_scope(run)):
        st.session_state[true_key], st.session_state[pred_key] = st.session_state.pop(cell_key)
        return
    shared = st.session_state.get(ui.scoped(run, ui.CELL_KEY))
    if not shared:  # the most confused cell of the classes shown, so that it is on screen
        t, p = views.default_cell(cm[np.ix_(class_order, class_order)])
        shared = (int(class_order[t]), int(class_order[p]))
    st.session_state[true_key], st.session_state[pred_key] = shared


def cell_picker_ui(run) -> tuple[int, int]:
    k = len(run.classes)
    fmt = ui.class_label(run)
    cols = st.columns(2)
    forget = {"on_change": forget_click, "persist_state": "session",
              "args": (ui.scoped(run, CHART_GEN_KEY), ui.scoped(run, LAST_CLICK_KEY))}
    true = cols[0].selectbox("True class", range(k), key=ui.scoped(run, TRUE_KEY), format_func=fmt, **forget)
    pred = cols[1].selectbox("Predicted class", range(k), key=ui.scoped(run, PRED_KEY), format_func=fmt,
                             **forget)
    return int(true), int(pred)


def subset_note(cm: np.ndarray, order: np.ndarray) -> str:
    """How the shown classes were chosen and how many of the errors they hold."""
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    total = int(off.sum())
    inside = int(off[np.ix_(order, order)].sum())
    share = inside / total if total else 0.0
    return (f"Showing {len(order)} classes: those of the largest confusions, then those in the most errors (as "
            f"true or as predicted class), in class order: {inside:,} of the {total:,} errors ({share:.0%}) are "
            "between them. "
            "Untick the box for the full matrix.")


def render() -> None:
    run = ui.current_run()
    key = cache.run_key(run)
    cm = cache.eval_confusion(run, key)
    k = len(run.classes)
    st.title("Confusion matrix")
    st.caption(f"{int(cm.sum()):,} images of the '{ui.plain(run.eval_split)}' split; rows are true "
               "classes, columns predicted. The diagonal (correct) is grey so that errors stand out. "
               "Click a cell, or choose it below, to see its images.")
    normalize, log_color, top = display_ui(run)
    order = np.arange(k) if top is None or top >= k else views.most_confused_classes(cm, top=top)
    if len(order) < k:
        st.caption(subset_note(cm, order))
    elif k > LARGE_K:
        st.caption(f"All {k} classes: labels are thinned to what fits; drag a box over the matrix to zoom "
                   "in and read every label, double-click to zoom out.")
    _cell_fragment(normalize, log_color, top)


def _in_fragment_rerun() -> bool:
    """Whether this script run reruns only a fragment (a click on the matrix, a picker)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return bool(ctx is not None and ctx.fragment_ids_this_run)


@st.fragment
def _cell_fragment(normalize: bool, log_color: bool, top: int | None) -> None:
    """The matrix, the cell pickers and the cell's images: a click on a cell or a picker reruns only
    this (not the sidebar, the page's title and options), and the images are brought into view.

    A fragment's rerun does not reach the app's end, so it writes the address itself, and asks the
    app to run when a thumbnail opened the image detail (the app draws the detail after the page).
    """
    run = ui.current_run()  # the run as of now (cached): a run re-made meanwhile is the new one
    key = cache.run_key(run)
    cm = cache.eval_confusion(run, key)
    k = len(run.classes)
    order = np.arange(k) if top is None or top >= k else views.most_confused_classes(cm, top=top)
    sync_cell_state(run, cm, order)
    true, pred = int(st.session_state[ui.scoped(run, TRUE_KEY)]), int(st.session_state[ui.scoped(run, PRED_KEY)])
    # A large matrix's clicked cell is marked by plotly itself: the figure stays the same, so the
    # browser does not draw 14,400 cells again on every click. A cell chosen otherwise is outlined.
    clicked = st.session_state.get(ui.scoped(run, LAST_CLICK_KEY)) == (true, pred)
    outline = None if len(order) > LARGE_K and clicked else (true, pred)
    fig = figures.confusion_figure(cm, run.classes, class_order=order, normalize=normalize,
                                   log_color=log_color, selected=outline)
    st.plotly_chart(fig, key=chart_key(run), on_select="rerun", selection_mode="points",
                    config={"displayModeBar": len(order) > LARGE_K, "displaylogo": False,
                            "doubleClickDelay": DOUBLE_CLICK_MS,
                            "modeBarButtonsToRemove": ["select2d", "lasso2d", "toImage"]})
    _scroll_on_click(key="confusion-scroll-on-click", data={"chart": CHART_KEY, "target": "confusion-cell",
                                                                  "delay": DOUBLE_CLICK_MS + 50}, height=0)
    true, pred = cell_picker_ui(run)
    st.session_state[ui.scoped(run, ui.CELL_KEY)] = (true, pred)
    state.publish(cell=f"{true},{pred}")
    rows = views.cell_rows(run.predictions, cache.eval_mask(run, key), true=true, predicted=pred)
    share = cm[true, pred] / max(int(cm[true].sum()), 1)
    kind = "correct" if true == pred else "errors"
    with st.container(key="confusion-cell"):
        st.subheader(ui.plain(f"True {run.classes[true]}, predicted {run.classes[pred]}"), anchor=False)
        st.caption(f"{views.plural(rows.size, 'image')} ({share:.1%} of the true class), {kind}.")
        gallery.gallery_ui(run, rows, key="confusion", url_param="p",
                           title=f"true {run.classes[true]}, predicted {run.classes[pred]}",
                           page_key=ui.scoped(run, f"confusion-page-{true}-{pred}"))
    # a cell chosen now (a click on the matrix, or the pickers) brings its images into view; the
    # page as opened (or a rerun for anything else) stays where it is
    shown_key = ui.scoped(run, "confusion-shown-cell")
    if st.session_state.get(shown_key, (true, pred)) != (true, pred):
        _scroll_to_cell(run)
    st.session_state[shown_key] = (true, pred)
    scroll.scroll_to("confusion-cell", str(st.session_state.get(ui.scoped(run, SCROLLS_KEY), "")))
    detail, seen_key = st.session_state.get(state.DETAIL_KEY), ui.scoped(run, "confusion-detail-seen")
    opened = detail is not None and detail != st.session_state.get(seen_key)
    st.session_state[seen_key] = detail
    if _in_fragment_rerun():
        if opened:  # a thumbnail's click: the app draws the detail
            st.rerun(scope="app")
        state.write_url(scope=st.session_state.get(ui.SCOPE_KEY), run_id=st.session_state.get(ui.RUN_KEY))

render()
