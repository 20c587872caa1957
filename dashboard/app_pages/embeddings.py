"""2-D projection (UMAP) of the run's embeddings: colour, filter, zoom, select.

At most ``POINT_CAP`` points reach the browser per rerun. Beyond that the
visible rows are binned server-side into a density image and only errors, the
chosen confusion cell and the current selection are drawn as points (sampled
with a fixed seed when still too many); zooming (axis ranges) or filtering
by class below the cap brings every point back.
"""

from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st

from dashboard import cache, figures, ui, views

POINT_CAP = 20_000
OVERLAY_CAP = 5_000  # fewer points over the density image, so that the density stays visible
CHART_KEY = "embedding-chart"
COLOUR_CHOICES = ["true class", "predicted class", "correct", "confidence"]


def controls_ui(run, key: str, xy: np.ndarray) -> dict:
    k = len(run.classes)
    splits = cache.split_names(run, key)
    cols = st.columns([3, 2, 3])
    # the colouring is a preference kept across runs; filters, zoom and selection are the run's
    color_by = cols[0].radio("Colour by", COLOUR_CHOICES, horizontal=True, key="emb-colour")
    split = cols[1].selectbox("Split", ["all", *splits], key=ui.scoped(run, "emb-split"))
    classes = cols[2].multiselect("True classes", range(k), key=ui.scoped(run, "emb-classes"),
                                  format_func=ui.class_label(run), placeholder="every class")
    with st.expander("Zoom (axis ranges)"):
        lo, hi = np.floor(xy.min(axis=0)), np.ceil(xy.max(axis=0))
        zx, zy = st.columns(2)
        x_range = zx.slider("x", float(lo[0]), float(hi[0]), (float(lo[0]), float(hi[0])),
                            key=ui.scoped(run, "emb-x"))
        y_range = zy.slider("y", float(lo[1]), float(hi[1]), (float(lo[1]), float(hi[1])),
                            key=ui.scoped(run, "emb-y"))
    return {"color_by": color_by, "split": split, "classes": classes, "x_range": x_range,
            "y_range": y_range}


def highlight_rows(run, key: str) -> tuple[np.ndarray | None, str]:
    shared = st.session_state.get(ui.scoped(run, ui.CELL_KEY))
    if not shared:
        return None, ""
    true, pred = shared
    label = f"true {run.classes[true]}, predicted {run.classes[pred]}"
    if not st.checkbox(ui.plain(f"Highlight the confusion cell chosen on the confusion page ({label})"),
                       value=True, key=ui.scoped(run, "emb-highlight")):
        return None, label
    return views.cell_rows(run.predictions, cache.eval_mask(run, key), true=true, predicted=pred), label


def render() -> None:
    run = ui.current_run()
    key = cache.run_key(run)
    st.title("Embeddings")
    xy = cache.projection(run, key)
    if xy is None:
        st.info("This run has no 2-D projection (no embeddings were extracted). Re-run the analysis "
                "with a model whose penultimate layer can be read.")
        return
    method = run.projection_info.get("method") or "UMAP"
    st.caption(ui.plain(f"{method} projection of the penultimate-layer features. Box or lasso select "
                        "points to see their images below."))
    chosen = controls_ui(run, key, xy)
    df = run.predictions
    previous = st.session_state.get(ui.scoped(run, CHART_KEY))
    selected = views.rows_from_selection(previous.get("selection") if previous else None)
    plan = cache.embedding_plan(
        run, key, chosen["split"], tuple(int(c) for c in chosen["classes"]),
        tuple(chosen["x_range"]), tuple(chosen["y_range"]), hashlib.sha1(selected.tobytes()).hexdigest(),
        selected, POINT_CAP, OVERLAY_CAP)
    highlight, _ = highlight_rows(run, key)
    if highlight is not None:  # only the chosen cell's rows that pass the filters
        passing = views.filter_mask(df.iloc[highlight], split=chosen["split"], classes=chosen["classes"])
        highlight = highlight[views.visible_rows(xy[highlight], passing, x_range=chosen["x_range"],
                                                 y_range=chosen["y_range"])]
    if plan.mode == "density":
        note = (f"{plan.n_visible:,} points: showing their density, with {plan.rows.size:,} errors "
                "and selected images as points")
        note += " (a fixed random sample)." if plan.sampled else "."
        st.caption(note + f" Zoom or filter to {POINT_CAP:,} points or fewer to see every point.")
    else:
        st.caption(f"{plan.n_visible:,} points.")
    fig = figures.embedding_figure(plan, xy, df, run.classes, color_by=chosen["color_by"],
                                   highlight=highlight)
    event = st.plotly_chart(fig, key=ui.scoped(run, CHART_KEY), on_select="rerun",
                            selection_mode=("box", "lasso"))
    selected = views.rows_from_selection((event or {}).get("selection"))
    st.subheader("Selected images")
    if selected.size == 0:
        st.caption("Select points with the box or lasso tool to see their images here.")
        return
    conf = df["confidence"].to_numpy()[selected]
    selected = selected[np.argsort(-conf, kind="stable")]
    ui.gallery_ui(run, selected, key="embedding",
                  page_key=ui.scoped(run, f"embedding-page-{hashlib.sha1(selected.tobytes()).hexdigest()}"))


render()
