"""2-D map (UMAP) of the run's embeddings: colour, filter, zoom, select, inspect.

Every point is drawn at every size. Up to ``POINT_CAP`` points in view are
markers. Beyond that the server draws every point in view into a picture
coloured like the markers would be (``mapview``), under an invisible hover
grid (counts, most common class, share of errors).

A box or lasso selects every image inside it: the rows are computed on the
server from the projection and the drawn shape (``mapview.SortedPoints``), not
from the points the browser happened to draw, and the gallery below pages
through all of them. Zoom goes through the page's own controls (zoom to the
selection, zoom out, show everything), which re-render the window at full
detail; plotly's zoom and pan tools are off because they would only stretch
the picture.

The map is a derived analysis computed after the run is usable
(``core.analysis.projection``): while it is computed the page says so and looks again
every few seconds. The view (colouring, split, classes, window, selection,
gallery page) is in the URL.
"""

from __future__ import annotations

import hashlib
from functools import partial

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.analysis import projection as core_projection
from dashboard import cache, figures, gallery, mapview, state, ui, views

POINT_CAP = 20_000
HIGHLIGHT_CAP = 5_000
CHART_KEY = "embedding-chart"
COLOUR_CHOICES = list(mapview.COLOUR_BY)
COLOUR_PARAM = {"true class": "true", "predicted class": "pred", "correct": "correct", "confidence": "conf"}
SOURCE_SELECTION = "embedding"
ORDERS = ["most wrong first", "most confident first"]  # the selection's gallery: errors first by p(given class)
ORDER_PARAMS = ["wrong", "conf"]  # their values in the URL (order=...)


# --------------------------------------------------------------------------- the map's availability

def map_status_ui(run) -> bool:
    """True when the run's map can be drawn; otherwise say why (and poll while it is computed)."""
    status = core_projection.projection_status(run)
    if status == "ready":
        return True
    if status == "computing":
        progress = core_projection.projection_progress(run) or {}
        st.info("The UMAP map of this run is being computed in the background; this page shows it as soon "
                "as it is ready.")
        fraction = progress.get("fraction")
        if isinstance(fraction, (int, float)):
            st.progress(min(max(float(fraction), 0.0), 1.0), text=ui.plain(progress.get("message") or ""))
        _poll(run.id)
    elif status == "missing":
        progress = core_projection.projection_progress(run) or {}
        if progress.get("error"):
            st.error(ui.plain(f"Computing the map failed: {progress['error']}"))
        st.info("This run's UMAP map has not been computed yet.")
        if st.button("Compute the map (in the background; about 15 s for 70,000 images)", key="compute-map",
                     type="primary"):
            core_projection.start_projection(run)
            st.rerun()
    else:
        info = run.derived_info(core_projection.KIND)
        reason = info.summary.get("reason") if info else None
        if reason is None and core_projection.projection_config(run) is None and run.embeddings is not None:
            st.info("This run was analysed without a 2-D map (`--no-projection`). Re-run the analysis without "
                    "that option to get one.")
            return False
        st.info(f"This run has no 2-D projection ({ui.plain(reason or 'no embeddings were extracted')}). Re-run "
                "the analysis with a model whose penultimate layer can be read.")
    return False


@st.fragment(run_every=3)
def _poll(run_id: str) -> None:
    """Every few seconds: rerun the page once the map is ready."""
    try:
        run = cache.load_run(cache.store_root(), run_id)
    except cache.RUN_ERRORS:
        return
    if core_projection.projection_status(run) != "computing":
        st.rerun()


# --------------------------------------------------------------------------- controls

def controls_ui(run, key: str) -> dict:
    k = len(run.classes)
    scope = ui.run_scope(run)
    splits = cache.split_names(run, key)
    split_key, classes_key = ui.scoped(run, "emb-split"), ui.scoped(run, "emb-classes")
    by_param = {v: c for c, v in COLOUR_PARAM.items()}
    state.seed("emb-colour", "colour", lambda t: by_param[state.decode_choice(t, list(by_param), name="colour")],
               scope=scope)
    state.seed(split_key, "split", lambda t: state.decode_choice(t, ["all", *splits], name="split"), scope=scope)
    # the evaluation split by default: on 'all' the training images (nearly all correct) bury the errors
    default_split = run.eval_split if run.eval_split in splits else "all"
    st.session_state.setdefault(split_key, default_split)
    state.seed(classes_key, "classes", lambda t: state.decode_ints(t, low=0, high=k - 1, name="classes"),
               scope=scope)
    cols = st.columns([3, 2, 3])
    # the colouring is a preference kept across runs; filters, window and selection are the run's
    color_by = cols[0].radio("Colour by", COLOUR_CHOICES, horizontal=True, key="emb-colour",
                             persist_state="session")
    split = cols[1].selectbox("Split", ["all", *splits], key=split_key, persist_state="session")
    classes = cols[2].multiselect("True classes", range(k), key=classes_key, format_func=ui.class_label(run),
                                  placeholder="every class", persist_state="session")
    state.publish(colour=COLOUR_PARAM[color_by] if color_by != COLOUR_CHOICES[0] else None,
                  split=split if split != default_split else None, classes=state.encode_ints(classes))
    return {"color_by": color_by, "split": split, "classes": tuple(int(c) for c in classes)}


def _set(key: str, value) -> None:
    st.session_state[key] = value


def window_ui(run, full: mapview.Window, shapes: list) -> mapview.Window:
    """The window in view: the run's own state, seeded from the URL, with zoom buttons."""
    view_key, shapes_key = ui.scoped(run, "emb-view"), ui.scoped(run, "emb-shapes")
    state.seed(view_key, "view", lambda t: state.decode_window(t), scope=ui.run_scope(run))
    window = tuple(st.session_state.get(view_key) or full)
    bounds = mapview.shapes_bounds(shapes)
    cols = st.columns([2.2, 1.5, 2.2, 2.1, 3], vertical_alignment="center")
    cols[0].button("Zoom to selection", key="emb-zoom-selection", icon=":material/zoom_in:",
                   disabled=bounds is None, on_click=_set,
                   args=(view_key, mapview.padded(bounds) if bounds else None))
    cols[1].button("Zoom out", key="emb-zoom-out", icon=":material/zoom_out:", disabled=window == full,
                   on_click=_set, args=(view_key, mapview.zoom_window(window, factor=2.0)))
    cols[2].button("Show everything", key="emb-zoom-reset", icon=":material/fit_screen:", disabled=window == full,
                   on_click=_set, args=(view_key, None))
    cols[3].button("Clear selection", key="emb-clear", icon=":material/deselect:", disabled=not shapes,
                   on_click=_set, args=(shapes_key, []))
    if window != full:
        x0, x1, y0, y1 = window
        cols[4].caption(ui.plain(f"Zoomed: x {x0:.3g} to {x1:.3g}, y {y0:.3g} to {y1:.3g}."))
    state.publish(view=None if window == full else state.encode_floats(window))
    return window


def _on_map_event(chart_key: str, shapes_key: str) -> None:
    """A selection event of the map: keep the drawn boxes and lassos (in data units, rounded as the
    URL keeps them); an empty event (a double-click) clears the selection. A click selects no point
    in lasso mode (plotly clears the selection), so clicks are not used."""
    event = st.session_state.get(chart_key) or {}
    st.session_state[shapes_key] = state.round_shapes(mapview.shapes_from_selection(event.get("selection")))


def highlight_rows(run, key: str) -> np.ndarray | None:
    shared = st.session_state.get(ui.scoped(run, ui.CELL_KEY))
    if not shared:
        return None
    true, pred = shared
    label = f"true {run.classes[true]}, predicted {run.classes[pred]}"
    if not st.checkbox(ui.plain(f"Highlight the confusion cell chosen on the confusion page ({label})"),
                       value=True, key=ui.scoped(run, "emb-highlight")):
        return None
    return views.cell_rows(run.predictions, cache.eval_mask(run, key), true=true, predicted=pred)


def svg_traces(fig: go.Figure) -> go.Figure:
    """``fig`` with its WebGL scatter traces drawn as SVG scatter traces instead.

    In picture mode the traces are only the hover grid (about 1,700 invisible cells), the
    legend entries and at most ``HIGHLIGHT_CAP`` outlined points: SVG draws them faster than
    WebGL starts, which costs most of a redraw where the browser renders WebGL in software
    (headless Chromium without a GPU: plotly.newPlot of the 1,000,000-point run's figure,
    median of 5 alternated draws, 1.19 s with scattergl against 0.46 s with scatter). Box and
    lasso selections work the same on both; the points mode (up to ``POINT_CAP`` markers)
    keeps WebGL.
    """
    traces = [go.Scatter({k: v for k, v in t.to_plotly_json().items() if k != "type"})
              if t.type == "scattergl" else t for t in fig.data]
    return go.Figure(data=traces, layout=fig.layout)


def selection_order_ui(run, n_wrong: int) -> tuple[bool, str]:
    """The selection's gallery options: (errors only, order), kept in the URL (``errors=1``,
    ``order=conf``; the defaults, all images most wrong first, leave them out)."""
    scope = ui.run_scope(run)
    errors_key, order_key = ui.scoped(run, "emb-errors-only"), ui.scoped(run, "emb-order")
    state.seed(errors_key, "errors", lambda t: state.decode_choice(t, ["0", "1"], name="errors") == "1",
               scope=scope)
    state.seed(order_key, "order", lambda t: ORDERS[ORDER_PARAMS.index(state.decode_choice(
        t, ORDER_PARAMS, name="order"))], scope=scope)
    st.session_state.setdefault(order_key, ORDERS[0])
    cols = st.columns([2, 3], vertical_alignment="center")
    errors_only = cols[0].toggle(f"Errors only ({n_wrong:,})", key=errors_key)
    order = cols[1].segmented_control("Order", ORDERS, key=order_key, label_visibility="collapsed") or ORDERS[0]
    state.publish(errors="1" if errors_only else None,
                  order=ORDER_PARAMS[ORDERS.index(order)] if order != ORDERS[0] else None)
    return bool(errors_only), order


FIGURE_KEY = "emb-figure"  # this session's last map figure and what it was built from


def map_figure(run, plan: mapview.MapPlan, xy: np.ndarray, highlight: np.ndarray | None, shapes: list,
               shapes_text: str) -> go.Figure:
    """The map's figure (``figures.embedding_figure``, SVG traces in picture mode), the one this
    session drew last when nothing it shows has changed: coming back to the page, or a rerun for
    the gallery below, does not build it again (at 1,000,000 points building it was most of the
    page's own time: 30-45 ms of about 60 on a quiet machine, several times that when it is busy).

    ``plan`` is the object ``cache.map_plan`` keeps for this run, filters, window and colouring (the
    same object while those are unchanged; held here, so its id is not reused)."""
    marks = None if highlight is None else hashlib.sha1(np.ascontiguousarray(highlight, np.int64)).hexdigest()
    wanted = (run.id, cache.run_key(run), id(plan), marks, shapes_text)
    held = st.session_state.get(FIGURE_KEY)
    if held is not None and held[0] == wanted and held[1] is plan:
        return held[2]
    fig = figures.embedding_figure(plan, xy, run.predictions, run.classes, highlight=highlight, shapes=shapes)
    if plan.mode == "raster":
        fig = svg_traces(fig)
    st.session_state[FIGURE_KEY] = (wanted, plan, fig)
    return fig


# --------------------------------------------------------------------------- the page

def render() -> None:
    run = ui.current_run()
    key = cache.run_key(run)
    st.title("Embeddings")
    if not map_status_ui(run):
        return
    stamp = cache.projection_stamp(run)
    xy = cache.projection(run, key, stamp)
    if xy is None:  # the status said ready but the array is not readable (yet)
        st.info("The map is not readable yet; reload the page in a moment.")
        return
    method = run.projection_info.get("method") or "UMAP"
    st.caption(ui.plain(f"{method} projection of the penultimate-layer features. Draw a lasso (or pick the box "
                        "tool) to select every image inside it: they appear below, a click on one opens it."))
    chosen = controls_ui(run, key)
    shapes_key = ui.scoped(run, "emb-shapes")
    state.seed(shapes_key, "sel", lambda t: state.decode_shapes(t), scope=ui.run_scope(run))
    shapes = list(st.session_state.get(shapes_key) or [])
    full = cache.full_window(run, key, stamp)
    window = window_ui(run, full, shapes)
    plan = cache.map_plan(run, key, stamp, chosen["split"], chosen["classes"], window, chosen["color_by"],
                          POINT_CAP)
    shapes_text = state.encode_shapes(shapes)
    selected = (cache.selection_rows(run, key, stamp, chosen["split"], chosen["classes"], shapes_text)
                if shapes else np.zeros(0, np.int64))
    highlight = highlight_rows(run, key)
    if highlight is not None:  # the chosen cell's rows that pass the filters and are in view
        passing = cache.map_filter(run, key, chosen["split"], chosen["classes"])[highlight]
        highlight = highlight[passing]
        highlight = highlight[mapview.rows_in_window(xy[highlight], np.ones(highlight.size, bool), window)]
        if highlight.size > HIGHLIGHT_CAP:
            st.caption(f"The chosen cell has {highlight.size:,} images in view; the first {HIGHLIGHT_CAP:,} "
                       "(most confident) are outlined.")
            highlight = highlight[:HIGHLIGHT_CAP]
    what = {"true class": "true class", "predicted class": "predicted class", "correct": "correctness",
            "confidence": "confidence"}[chosen["color_by"]]
    if plan.mode == "raster":
        st.caption(f"{plan.n_visible:,} points in view, more than the {POINT_CAP:,} drawn one by one: every point "
                   f"is drawn into a picture, each pixel in the mean colour of its points' {what}"
                   + (" (errors drawn over the correct ones)" if chosen["color_by"] == "correct" else "")
                   + ". Hover for counts; select a region and zoom to it to see each point.")
    else:
        st.caption(f"{views.plural(plan.n_visible, 'point')} in view, coloured by {what}.")
    fig = map_figure(run, plan, xy, highlight, shapes, shapes_text)
    chart_key = ui.scoped(run, CHART_KEY)
    st.plotly_chart(fig, key=chart_key, selection_mode=("box", "lasso"),
                    on_select=partial(_on_map_event, chart_key, shapes_key),
                    config={"displaylogo": False, "scrollZoom": False,
                            "modeBarButtonsToRemove": ["zoom2d", "pan2d", "zoomIn2d", "zoomOut2d", "autoScale2d",
                                                       "resetScale2d"]})
    state.publish(sel=shapes_text or None)
    st.subheader("Selected images")
    if not shapes:
        st.caption("Draw a box or a lasso on the map to see every image inside it here.")
        return
    df = run.predictions
    correct = df["correct"].to_numpy(bool)
    n_wrong = int((~correct[selected]).sum())
    errors_only, order = selection_order_ui(run, n_wrong)
    in_view = int(mapview.rows_in_window(xy[selected], np.ones(selected.size, bool), window).size)
    st.caption(f"{views.plural(selected.size, 'image')} inside the selection, {n_wrong:,} of them wrong"
               + (f" ({in_view:,} in view)" if in_view != selected.size else "") + ".")
    if errors_only:
        selected = selected[~correct[selected]]
    if order == ORDERS[0]:
        selected = views.most_wrong_first(selected, correct=correct, true_prob=df["true_prob"].to_numpy())
    digest = hashlib.sha1(shapes_text.encode()).hexdigest()[:12]
    gallery.gallery_ui(run, selected, key=SOURCE_SELECTION, url_param="p", title="the map's selection",
                       order_note=order, page_key=ui.scoped(
                           run, f"embedding-page-{digest}-{chosen['split']}-{chosen['classes']}-{errors_only}-{order}"))


render()
