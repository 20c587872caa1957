"""Plotly figures of the dashboard: plain functions, arrays/DataFrames in, ``go.Figure`` out.

Conventions: K classes; a confusion matrix ``cm`` is (K, K) with rows = true
classes and columns = predicted classes. In the confusion figure displayed
position ``(i, j)`` is drawn at ``x=j`` (predicted), ``y=i`` (true, first row
at the top) and every cell carries ``customdata = [true, predicted, count,
row share]`` with *full* class indices, so a click maps back to the cell even
when only a subset of classes is shown (see ``views.cell_from_point``).
Names coming from user data are HTML-escaped before they reach hover text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from core.run.metrics import row_normalize
from dashboard import mapview
from dashboard.mapview import MapPlan
from dashboard.views import share_label, top_k_with_true

ERROR_COLOUR = mapview.ERROR_COLOUR
CORRECT_COLOUR = mapview.CORRECT_COLOUR
DIAGONAL_COLOUR = "#e9ecef"
HIGHLIGHT_COLOUR = "#111111"
MAX_LEGEND_CLASSES = 20
RING_RASTER_PX = (1200, 560)  # the outline picture, about the plot area on screen (620 px high): rings stay round and crisp


def tick_font_size(n_classes: int) -> int:
    """Tick label size that keeps K labels legible: 12 px at K<=25, down to 9 px (beyond 40
    classes the axes thin their labels and show them all once zoomed)."""
    return int(np.clip(round(300 / max(n_classes, 1)), 9, 12))


def confusion_height(n_classes: int) -> int:
    """Figure height in pixels: cells of 8-48 px plus room for the labels."""
    cell = float(np.clip(720 / max(n_classes, 1), 8, 48))
    return int(max(420, cell * n_classes + 190))


LABEL_CHARS = 32  # a class name longer than this is cut on axes and legends: one 160-character name
# squeezed the confusion matrix to 90x60 px and pushed a map's legend off the page


def _short(name: object, limit: int = LABEL_CHARS) -> str:
    """``name`` cut to ``limit`` characters with an ellipsis.

    >>> _short("Shirt"), _short("x" * 40, 8)
    ('Shirt', 'xxxxxxx…')
    """
    text = str(name)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _labels(names: Sequence[str]) -> list[str]:
    """Names for axes and legends: cut to ``LABEL_CHARS`` (``_short``), escaped (plotly reads a few HTML
    tags in labels), and made unique (a category axis merges equal names) with ' (i)' where needed.

    >>> _labels(["<b>", "a" * 40, "a" * 40 + "b"])
    ['&lt;b&gt;', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa…', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa… (2)']
    """
    out, seen = [], set()
    for i, name in enumerate(names):
        label = html.escape(_short(name))
        label = label if label not in seen else f"{label} ({i})"
        seen.add(label)
        out.append(label)
    return out


# Reds from light but visible to dark: the lowest value (one image) never looks empty.
CELL_COLOURS = [[0.0, "#fcbba1"], [0.25, "#fc9272"], [0.5, "#fb6a4a"], [0.75, "#de2d26"], [1.0, "#67000d"]]
LARGE_MATRIX = 40  # beyond this many classes: WebGL click layer, zoomable, labels thinned by plotly


def _log_ticks(low: float, high: float, *, share: bool) -> tuple[list[float], list[str]]:
    """Colour bar ticks at powers of ten (and 2x, 5x) between log10 values ``low`` and ``high``,
    labelled in real units (images, or percent of the true class)."""
    values = []
    for exponent in range(int(np.floor(low)) - 1, int(np.ceil(high)) + 1):
        for mantissa in (1, 2, 5):
            v = mantissa * 10.0 ** exponent
            if low - 1e-9 <= np.log10(v) <= high + 1e-9:
                values.append(v)
    if not values:
        values = [10 ** low]
    labels = [(f"{v * 100:.3g}%" if share else f"{v:,.0f}") for v in values]
    return [float(np.log10(v)) for v in values], labels


def confusion_figure(
    cm: np.ndarray, class_names: Sequence[str], *, class_order: Sequence[int] | None = None,
    normalize: bool = False, log_color: bool = False, selected: tuple[int, int] | None = None,
) -> go.Figure:
    """Heatmap of ``cm`` with the diagonal in grey so that errors stand out, and a click layer.

    Parameters
    ----------
    cm : int array (K, K), rows true, columns predicted.
    class_names : K names.
    class_order : class indices to show, in display order (default all K).
    normalize : colour and label cells by share of the true class's images.
    log_color : colour on a log10 scale; the colour bar reads in images (or percent).
    selected : (true, predicted) full class indices of the cell to outline (None: no outline; a
        large matrix's clicked cell is shown by plotly's selection style instead).

    The axes are category axes of the shown names (displayed position i is category i),
    so that beyond ``LARGE_MATRIX`` classes plotly thins the labels to what fits and shows
    every label once the user zooms in (drag a box; double-click to zoom out). Every
    cell's click point carries ``customdata = [true, predicted, count, share]``.
    """
    cm = np.asarray(cm)
    k = cm.shape[0]
    if cm.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"cm must be (K, K) with K = len(class_names) = {len(class_names)}. "
                         f"Received shape {cm.shape}")
    order = np.arange(k) if class_order is None else np.asarray(class_order, dtype=np.int64)
    n = len(order)
    large = n > LARGE_MATRIX
    counts = cm[np.ix_(order, order)].astype(np.int64)
    shares = row_normalize(cm)[np.ix_(order, order)]  # share of the true class's images, all columns
    values = shares if normalize else counts.astype(np.float64)
    diagonal = order[:, None] == order[None, :]

    off = np.where(diagonal | (counts == 0), np.nan, values)  # blank empty cells: the eye goes to the errors
    if log_color:
        with np.errstate(divide="ignore", invalid="ignore"):
            off = np.log10(off)
    diag = np.where(diagonal, 1.0, np.nan)

    finite = off[np.isfinite(off)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high <= low:
        high = low + 1e-9
    shown_names = [_labels(class_names)[i] for i in order]
    fig = go.Figure()
    fig.add_trace(go.Heatmap(
        z=diag, x=shown_names, y=shown_names, colorscale=[[0, DIAGONAL_COLOUR], [1, DIAGONAL_COLOUR]],
        showscale=False, hoverinfo="skip", xgap=1 if n <= 60 else 0, ygap=1 if n <= 60 else 0,
    ))
    what = "% of the true class" if normalize else "images"
    colorbar: dict = {"title": {"text": what + (" (log)" if log_color else ""), "side": "right"}}
    if log_color:
        tickvals, ticktext = _log_ticks(low, high, share=normalize)
        colorbar.update(tickvals=tickvals, ticktext=ticktext)
    elif normalize:
        colorbar.update(tickformat=".0%")
    elif high - low <= 10:  # a few images at most: whole numbers (plotly's own ticks read 1.5, 2.5)
        colorbar.update(tick0=0, dtick=1, tickformat="d")
    fig.add_trace(go.Heatmap(
        z=off, x=shown_names, y=shown_names, colorscale=CELL_COLOURS, hoverinfo="skip",
        xgap=1 if n <= 60 else 0, ygap=1 if n <= 60 else 0, zmin=low, zmax=high, colorbar=colorbar,
    ))

    # Click layer: one nearly invisible square per cell, carrying the full class indices.
    jj, ii = np.meshgrid(np.arange(n), np.arange(n))
    true_idx, pred_idx = order[ii.ravel()], order[jj.ravel()]
    cnt, shr = counts.ravel(), shares.ravel()
    names = np.asarray(shown_names, dtype=object)
    # hover from a template over the point's categories and customdata, not K*K strings (which plotly
    # validates one by one and the browser has to download)
    customdata = np.stack([true_idx, pred_idx, cnt, shr], axis=1)
    hover = ("true: %{y}<br>predicted: %{x}<br>"
             "images: %{customdata[2]:,} (%{customdata[3]:.1%} of the true class)<extra></extra>")
    label_cells = n <= 25
    strength = (np.nan_to_num(off.ravel(), nan=low) - low) / max(high - low, 1e-12)
    text_colours = np.where(strength > 0.6, "#ffffff", "#333333").tolist()  # readable on dark red
    text = None
    if label_cells:
        text = [share_label(c, s) if normalize else (f"{c:,}" if c else "") for c, s in zip(cnt, shr)]
    layer = go.Scattergl if large else go.Scatter
    # A large matrix marks the clicked cell with plotly's own selection style, in the browser: the
    # figure then need not change (and be drawn again) on a click (see ``selected``).
    selection_style = ({"selected": {"marker": {"opacity": 1.0, "color": HIGHLIGHT_COLOUR}},
                        "unselected": {"marker": {"opacity": 0.01}}} if large else {})
    fig.add_trace(layer(
        x=names[jj.ravel()], y=names[ii.ravel()], mode="markers+text" if label_cells else "markers",
        text=text, textfont={"size": tick_font_size(n), "color": text_colours} if label_cells else None,
        marker={"symbol": "square", "size": max(6, min(40, 500 // max(n, 1))), "opacity": 0.01,
                "color": "#000000"},
        customdata=customdata, hovertemplate=hover, showlegend=False, name="cells", **selection_style,
    ))
    if selected is not None:
        where_t = np.flatnonzero(order == selected[0])
        where_p = np.flatnonzero(order == selected[1])
        if where_t.size and where_p.size:
            y0, x0 = int(where_t[0]), int(where_p[0])
            fig.add_shape(type="rect", x0=x0 - 0.5, x1=x0 + 0.5, y0=y0 - 0.5, y1=y0 + 0.5,
                          line={"color": HIGHLIGHT_COLOUR, "width": 3 if n <= 60 else 2})
    font = tick_font_size(n)
    axis = {"type": "category", "categoryorder": "array", "categoryarray": shown_names,
            "tickfont": {"size": font}, "showgrid": False, "zeroline": False,
            "range": [-0.5, n - 0.5], "automargin": True}
    if not large:  # every label fits: show them all
        axis.update(tickmode="array", tickvals=shown_names, ticktext=shown_names)
    fig.update_layout(
        height=confusion_height(n), margin={"l": 10, "r": 10, "t": 30, "b": 10},
        plot_bgcolor="white", clickmode="event+select", dragmode="zoom" if large else False,
        uirevision="confusion",  # a rerun that moves the outline keeps the user's zoom
        xaxis={**axis, "title": "Predicted class", "tickangle": -90 if n > 12 else -30, "side": "bottom"},
        yaxis={**axis, "title": "True class", "range": [n - 0.5, -0.5]},
    )
    return fig


def class_distribution_figure(distribution: pd.DataFrame, *, others: int = 0) -> go.Figure:
    """Horizontal stacked bars of images per class, one colour per split (columns class, split,
    count), classes in the table's order from the top; ``others`` names how many classes the
    last row ('others (M classes)') sums."""
    classes = list(dict.fromkeys(distribution["class"].astype(str)))
    names = _labels(classes)
    fig = go.Figure()
    for i, (split, part) in enumerate(distribution.groupby("split", sort=True, observed=True)):
        counts = part.set_index(part["class"].astype(str))["count"].reindex(classes).fillna(0)
        fig.add_trace(go.Bar(y=names, x=counts.to_numpy(), name=html.escape(str(split)), orientation="h",
                             marker_color=qualitative.Set2[i % len(qualitative.Set2)],
                             hovertemplate="%{y}: %{x:,} images<extra>" + html.escape(str(split)) + "</extra>"))
    n = len(classes)
    fig.update_layout(
        barmode="stack", height=int(max(220, 22 * n + 90)), margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis={"autorange": "reversed", "tickfont": {"size": 12}, "automargin": True, "type": "category"},
        xaxis={"title": "images"}, legend={"title": "split", "orientation": "h", "y": 1.02, "yanchor": "bottom"},
    )
    return fig


def training_curves_figure(history: pd.DataFrame, *, best_epoch: int | None = None) -> go.Figure:
    """Loss and accuracy per epoch, training vs validation, and the learning rate (log scale)
    when the history has it; ``best_epoch`` (the weights kept) marked with a dotted line."""
    has_lr = "learning_rate" in history and history["learning_rate"].notna().any()
    titles = ("loss", "accuracy") + (("learning rate",) if has_lr else ())
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    styles = {"": ("train", "#1f77b4"), "val_": ("validation", "#ff7f0e")}
    for col, metric in ((1, "loss"), (2, "accuracy")):
        for prefix, (label, colour) in styles.items():
            name = prefix + metric
            if name in history and history[name].notna().any():
                fig.add_trace(go.Scatter(x=history["epoch"], y=history[name], mode="lines+markers",
                                         name=label, line={"color": colour}, legendgroup=label,
                                         showlegend=col == 1), row=1, col=col)
    if has_lr:
        fig.add_trace(go.Scatter(x=history["epoch"], y=history["learning_rate"], mode="lines+markers",
                                 name="learning rate", line={"color": "#2ca02c", "shape": "hv"},
                                 showlegend=False), row=1, col=3)
        fig.update_yaxes(type="log", row=1, col=3, exponentformat="power")
    if best_epoch is not None:
        for col in range(1, len(titles) + 1):
            fig.add_vline(x=best_epoch, line={"dash": "dot", "color": "#555555", "width": 1}, row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def probability_figure(probs: np.ndarray, class_names: Sequence[str], *, true: int | None,
                       predicted: int, k: int = 10) -> go.Figure:
    """Horizontal bars of the ``k`` most probable classes, most probable at the top, the true class
    always among them (``views.top_k_with_true``).

    The true class is green, the predicted class (when wrong) red, the rest grey; a true class
    outside the top k is labelled with its rank.
    """
    probs = np.asarray(probs, dtype=np.float64)
    order = top_k_with_true(probs, true=true, k=k)
    rank = np.empty(probs.size, np.int64)
    rank[np.lexsort((np.arange(probs.size), -probs))] = np.arange(1, probs.size + 1)
    names = _labels(class_names)
    labels = [names[i] + (f" (rank {rank[i]})" if rank[i] > k else "") for i in order]
    colours = ["#2ca02c" if i == true else ERROR_COLOUR if i == predicted else "#adb5bd" for i in order]
    fig = go.Figure(go.Bar(
        x=probs[order], y=labels, orientation="h", marker_color=colours,
        text=[f"{p:.3f}" for p in probs[order]], textposition="outside", cliponaxis=False,
        hovertemplate="%{y}: %{x:.4f}<extra></extra>",
    ))
    fig.update_layout(
        height=int(26 * len(order) + 60), margin={"l": 10, "r": 30, "t": 10, "b": 10},
        xaxis={"range": [0, 1.08], "title": "probability"},
        yaxis={"autorange": "reversed", "type": "category", "tickfont": {"size": 12}, "automargin": True},
    )
    return fig


def _hover_text(predictions: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    part = predictions.iloc[rows]
    path = part["path"].astype(str).map(html.escape)
    true = part["true_label"].astype(str).map(html.escape)
    pred = part["predicted_label"].astype(str).map(html.escape)
    conf = part["confidence"].map("{:.2f}".format)
    return (path + "<br>true: " + true + "<br>predicted: " + pred + " (" + conf + ")").to_numpy()


def _hover_grid(g, window, names) -> go.Heatmap:
    """The picture's hover text as a transparent heatmap over the window: one cell of the grid
    ``g`` (``mapview.GridSummary``) per heatmap cell, empty cells without hover.

    A heatmap is drawn as one image, where the same cells as invisible SVG markers cost the
    browser a DOM node each: at 1,000,000 points (about 1,700 non-empty cells) the Embeddings
    page drew in 0.45 s without them against 0.72 s with them (median of 7, headless Chromium).
    """
    x0, x1, y0, y1 = window
    size = g.width * g.height
    z = np.full(size, np.nan)
    z[g.cell] = g.count
    text = np.full(size, "", dtype=object)
    text[g.cell] = [f"{c:,} images here<br>most: {names[t]} ({s:.0%})<br>errors: {e:.0%}"
                    for c, t, s, e in zip(g.count, g.top_group, g.top_share, g.error_share)]
    return go.Heatmap(
        x=x0 + (np.arange(g.width) + 0.5) * (x1 - x0) / g.width,
        y=y1 - (np.arange(g.height) + 0.5) * (y1 - y0) / g.height,
        z=z.reshape(g.height, g.width), text=text.reshape(g.height, g.width), hoverinfo="text",
        hoverongaps=False, name="grid", showscale=False, zsmooth=False,
        colorscale=[[0.0, "rgba(0,0,0,0)"], [1.0, "rgba(0,0,0,0)"]])


def _add_picture(fig: go.Figure, uri: str, window: mapview.Window) -> None:
    """Stretch the picture ``uri`` over ``window``, drawn over the pictures added before it.

    plotly.js keys layout images by their placement (xref, x, sizex, yref, y, sizey: its d3 data
    join), so pictures stacked on exactly the same window were drawn as one: only the first (the
    correct points), never the errors' layer over it. Each later picture's left edge moves by a
    billionth of the window's width: another key, the same pixels.
    """
    x0, x1, y0, y1 = window
    nudge = len(fig.layout.images) * (x1 - x0) * 1e-9
    fig.add_layout_image(source=uri, xref="x", yref="y", x=x0 - nudge, y=y1, sizex=x1 - x0 + nudge, sizey=y1 - y0,
                         sizing="stretch", layer="below", opacity=1.0)


def embedding_figure(plan: MapPlan, xy: np.ndarray, predictions: pd.DataFrame, class_names: Sequence[str], *,
                     highlight: np.ndarray | None = None, shapes: Sequence = ()) -> go.Figure:
    """The 2-D projection of ``plan``'s window: every visible point either as a WebGL marker
    (``plan.mode == "points"``) or in the server-side picture(s) ``plan.images`` drawn under
    an invisible hover grid (``"raster"``); both coloured per ``plan.color_by``.

    Points carry their row id as customdata; grid cells carry -1.
    ``highlight`` rows (the chosen confusion cell) are outlined on top; ``shapes`` (the
    selection, ``mapview`` shapes) are drawn as dashed outlines. The axes are fixed to the
    window: zoom goes through the page's controls, which re-render the window in full.
    """
    fig = go.Figure()
    x0, x1, y0, y1 = plan.window
    k = len(class_names)
    names = _labels(class_names)
    colour_rgb = mapview.class_palette(k)
    for uri in plan.images:
        _add_picture(fig, uri, plan.window)
    if plan.mode == "raster" and plan.grid is not None:
        fig.add_trace(_hover_grid(plan.grid, plan.window, names))
        # an invisible point: plotly offers box and lasso only over a trace that can be selected
        fig.add_trace(go.Scatter(x=[x0], y=[y0], mode="markers", name="selectable", showlegend=False,
                                 hoverinfo="skip", customdata=[-1], marker={"size": 1, "opacity": 0}))
    rows = plan.rows if plan.mode == "points" else np.zeros(0, np.int64)
    xy_rows = np.asarray(xy[rows]) if rows.size else np.zeros((0, 2))
    hover = _hover_text(predictions, rows) if rows.size else np.zeros(0, dtype=object)
    size = 5 if rows.size > 5000 else 7

    def add(mask: np.ndarray, name: str, marker: dict, legend: bool = True) -> None:
        fig.add_trace(go.Scattergl(
            x=xy_rows[mask, 0], y=xy_rows[mask, 1], mode="markers", name=name,
            customdata=rows[mask], hovertext=hover[mask], hoverinfo="text",
            marker={"size": size, **marker}, showlegend=legend,
        ))

    def legend_only(name: str, colour: str) -> None:
        fig.add_trace(go.Scattergl(x=[None], y=[None], mode="markers", name=name,
                                   marker={"size": 9, "color": colour}, hoverinfo="skip"))

    if plan.color_by in ("true class", "predicted class"):
        if plan.mode == "points":
            labels = predictions["true" if plan.color_by == "true class" else "predicted"].to_numpy()[rows]
            if k <= MAX_LEGEND_CLASSES:
                for c, name in enumerate(names):
                    add(labels == c, name, {"color": mapview.rgb_to_hex(colour_rgb[c])})
            else:
                add(np.ones(rows.size, bool), plan.color_by,
                    {"color": [mapview.rgb_to_hex(c) for c in colour_rgb[labels]]}, legend=False)
        elif k <= MAX_LEGEND_CLASSES:
            for c, name in enumerate(names):
                legend_only(name, mapview.rgb_to_hex(colour_rgb[c]))
    elif plan.color_by == "correct":
        if plan.mode == "points":
            correct = predictions["correct"].to_numpy(bool)[rows]
            add(correct, "correct", {"color": CORRECT_COLOUR})
            add(~correct, "wrong", {"color": ERROR_COLOUR})
        else:
            legend_only("correct", CORRECT_COLOUR)
            legend_only("wrong", ERROR_COLOUR)
    else:
        bar = {"colorbar": {"title": "confidence"}, "colorscale": "Viridis", "cmin": 0, "cmax": 1}
        if plan.mode == "points":
            add(np.ones(rows.size, bool), "confidence",
                {"color": predictions["confidence"].to_numpy()[rows], **bar}, legend=False)
        else:  # the colour bar of the picture, on an invisible point
            fig.add_trace(go.Scattergl(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                                       marker={"color": [0.0], "showscale": True, **bar}))

    if highlight is not None and len(highlight) and plan.mode == "raster":
        # in picture mode the outlines are a picture too, over the points' pictures: thousands of
        # outlined markers (a diagonal cell of the 1,000,000-point map: about 1,500) cost the browser
        # seconds as SVG; a legend entry says what the rings are (no hover per ring: the grid's stays)
        hl = np.asarray(highlight, dtype=np.int64)
        rings = mapview.ring_raster(np.asarray(xy[hl]), plan.window, mapview.hex_to_rgb(HIGHLIGHT_COLOUR),
                                    width=RING_RASTER_PX[0], height=RING_RASTER_PX[1])
        _add_picture(fig, mapview.png_data_uri(rings), plan.window)
        fig.add_trace(go.Scattergl(x=[None], y=[None], mode="markers", name="chosen confusion cell",
                                   hoverinfo="skip", marker={"size": 11, "color": "rgba(0,0,0,0)",
                                                             "line": {"color": HIGHLIGHT_COLOUR, "width": 2}}))
    elif highlight is not None and len(highlight):
        hl = np.asarray(highlight, dtype=np.int64)
        fig.add_trace(go.Scattergl(
            x=np.asarray(xy[hl])[:, 0], y=np.asarray(xy[hl])[:, 1], mode="markers",
            name="chosen confusion cell", customdata=hl, hovertext=_hover_text(predictions, hl),
            hoverinfo="text",
            marker={"size": 11, "color": "rgba(0,0,0,0)", "line": {"color": HIGHLIGHT_COLOUR, "width": 2}},
        ))
    for kind, geometry in shapes:
        if kind == "box":
            fig.add_shape(type="rect", x0=geometry[0], x1=geometry[1], y0=geometry[2], y1=geometry[3],
                          line={"color": HIGHLIGHT_COLOUR, "width": 1.5, "dash": "dash"})
        else:
            path = "M " + " L ".join(f"{x:.6g},{y:.6g}" for x, y in geometry) + " Z"
            fig.add_shape(type="path", path=path, line={"color": HIGHLIGHT_COLOUR, "width": 1.5, "dash": "dash"})
    fig.update_layout(
        height=620, margin={"l": 10, "r": 10, "t": 30, "b": 10}, dragmode="lasso",
        plot_bgcolor="white", legend={"itemsizing": "constant"}, clickmode="event+select",
        xaxis={"showgrid": False, "zeroline": False, "range": [x0, x1], "fixedrange": True},
        yaxis={"showgrid": False, "zeroline": False, "range": [y0, y1], "fixedrange": True},
    )
    return fig


def f1_delta_figure(comparison: pd.DataFrame, *, top: int = 40) -> go.Figure:
    """Bars of per-class F1 change (B - A), the ``top`` largest changes, sorted."""
    part = comparison.reindex(comparison["f1_delta"].abs().sort_values(ascending=False).index)[:top]
    part = part.sort_values("f1_delta")
    colours = np.where(part["f1_delta"] >= 0, "#2ca02c", ERROR_COLOUR)
    fig = go.Figure(go.Bar(x=part["f1_delta"], y=_labels(part["class"]), orientation="h",
                           marker_color=colours, hovertemplate="%{y}: %{x:+.3f}<extra></extra>"))
    fig.update_layout(height=int(max(240, 16 * len(part) + 80)),
                      margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      xaxis={"title": "F1 change (B - A)"},
                      yaxis={"tickfont": {"size": tick_font_size(len(part))}})
    return fig


# --------------------------------------------------------------------------- calibration (Diagnose page)

CALIBRATION_SERIES = {"raw": ("before scaling", "#636efa"), "scaled": ("after temperature scaling", "#ef553b")}


def reliability_figure(reliability: pd.DataFrame) -> go.Figure:
    """Reliability diagram: accuracy against mean confidence per confidence bin, one line per
    ``probabilities`` value ('raw', 'scaled'), the diagonal marking perfect calibration.

    ``reliability``: the ``calibration`` kind's table, one line per (probabilities, bin) with
    ``mean_confidence``, ``accuracy`` and ``count`` (empty bins have NaN and are not drawn).
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line={"color": "#adb5bd", "dash": "dash"}, hoverinfo="skip"))
    for series, part in reliability.groupby("probabilities", sort=False):
        part = part[part["count"] > 0].sort_values("mean_confidence")
        name, colour = CALIBRATION_SERIES.get(str(series), (html.escape(str(series)), None))
        fig.add_trace(go.Scatter(x=part["mean_confidence"], y=part["accuracy"], mode="lines+markers", name=name,
                                 line={"color": colour}, customdata=part["count"],
                                 hovertemplate="confidence %{x:.3f}<br>accuracy %{y:.3f}<br>"
                                               "%{customdata:,} images<extra></extra>"))
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      title={"text": "Reliability diagram", "font": {"size": 14}},
                      xaxis={"title": "mean confidence", "range": [0, 1]},
                      yaxis={"title": "accuracy", "range": [0, 1.02]}, legend={"orientation": "h", "y": -0.25})
    return fig


def confidence_histogram_figure(histogram: pd.DataFrame, *, probabilities: str = "raw") -> go.Figure:
    """Histograms of the confidence of right and of wrong predictions, one above the other on a
    shared confidence axis, each on its own count scale (stacked on one scale, a few hundred wrong
    predictions under tens of thousands of right ones were a line too thin to see).

    ``histogram``: the ``calibration`` kind's table with ``lower``, ``upper``, ``n_correct``,
    ``n_wrong`` per bin and ``probabilities`` ('raw' or 'scaled'); ``probabilities`` picks one.
    """
    part = histogram[histogram["probabilities"] == probabilities].sort_values("lower")
    centre = (part["lower"] + part["upper"]) / 2
    width = (part["upper"] - part["lower"]) * 0.95
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    fig.add_trace(go.Bar(x=centre, y=part["n_correct"], width=width, name="right", marker_color=CORRECT_COLOUR,
                         hovertemplate="confidence ≈ %{x:.2f}<br>%{y:,} right<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=centre, y=part["n_wrong"], width=width, name="wrong", marker_color=ERROR_COLOUR,
                         hovertemplate="confidence ≈ %{x:.2f}<br>%{y:,} wrong<extra></extra>"), row=2, col=1)
    label = CALIBRATION_SERIES.get(probabilities, (probabilities, None))[0]
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      title={"text": f"Right and wrong, {html.escape(label)}", "font": {"size": 14}},
                      legend={"orientation": "h", "y": -0.25}, bargap=0)
    fig.update_xaxes(range=[0, 1])
    fig.update_xaxes(title="confidence", row=2, col=1)
    fig.update_yaxes(title="right", row=1, col=1)
    fig.update_yaxes(title="wrong", row=2, col=1)
    return fig
