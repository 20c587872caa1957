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

from core.metrics import row_normalize
from dashboard.views import EmbeddingPlan

ERROR_COLOUR = "#d62728"
CORRECT_COLOUR = "#8aa5c4"
DIAGONAL_COLOUR = "#e9ecef"
HIGHLIGHT_COLOUR = "#111111"
MAX_LEGEND_CLASSES = 20


def _escape(names: Sequence[str]) -> list[str]:
    return [html.escape(str(n)) for n in names]


def tick_font_size(n_classes: int) -> int:
    """Tick label size that keeps K labels legible without overlapping: 12 px at K<=25, down to 7 px."""
    return int(np.clip(round(300 / max(n_classes, 1)), 7, 12))


def confusion_height(n_classes: int) -> int:
    """Figure height in pixels: cells of 12-48 px plus room for labels."""
    cell = float(np.clip(720 / max(n_classes, 1), 12, 48))
    return int(max(420, cell * n_classes + 170))


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
    log_color : colour on a log10 scale (empty cells stay blank).
    selected : (true, predicted) full class indices of the cell to outline.
    """
    cm = np.asarray(cm)
    k = cm.shape[0]
    if cm.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"cm must be (K, K) with K = len(class_names) = {len(class_names)}. "
                         f"Received shape {cm.shape}")
    order = np.arange(k) if class_order is None else np.asarray(class_order, dtype=np.int64)
    n = len(order)
    counts = cm[np.ix_(order, order)].astype(np.int64)
    shares = row_normalize(cm)[np.ix_(order, order)]  # share of the true class's images, all columns
    values = shares if normalize else counts.astype(np.float64)
    diagonal = order[:, None] == order[None, :]

    shown = values.copy()
    if log_color:
        with np.errstate(divide="ignore"):
            shown = np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)
    off = np.where(diagonal, np.nan, shown)
    if not log_color:
        off = np.where(off > 0, off, np.nan)  # blank empty cells: the eye goes to the errors
    diag = np.where(diagonal, 1.0, np.nan)

    finite = off[np.isfinite(off)]
    names = _escape(class_names)
    shown_names = [names[i] for i in order]
    positions = np.arange(n)
    fig = go.Figure()
    fig.add_trace(go.Heatmap(
        z=diag, x=positions, y=positions, colorscale=[[0, DIAGONAL_COLOUR], [1, DIAGONAL_COLOUR]],
        showscale=False, hoverinfo="skip", xgap=1, ygap=1,
    ))
    colorbar = {"title": "log10 " + ("share" if normalize else "count") if log_color else
                ("share of true" if normalize else "count")}
    fig.add_trace(go.Heatmap(
        z=off, x=positions, y=positions, colorscale="Reds", hoverinfo="skip", xgap=1, ygap=1,
        zmin=float(finite.min()) if log_color and finite.size else 0,
        zmax=float(finite.max()) if finite.size else 1, colorbar=colorbar,
    ))

    # Click layer: one nearly invisible square per cell, carrying the full class indices.
    jj, ii = np.meshgrid(positions, positions)
    true_idx = order[ii.ravel()]
    pred_idx = order[jj.ravel()]
    cnt = counts.ravel()
    shr = shares.ravel()
    hover = [f"true: {names[t]}<br>predicted: {names[p]}<br>images: {c:,} ({s:.1%} of {names[t]})"
             for t, p, c, s in zip(true_idx, pred_idx, cnt, shr)]
    label_cells = n <= 25
    text = None
    finite = off[np.isfinite(off)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    strength = (np.nan_to_num(off.ravel(), nan=low) - low) / max(high - low, 1e-12)
    text_colours = np.where(strength > 0.6, "#ffffff", "#333333").tolist()  # readable on dark red
    if label_cells:
        text = [(f"{s:.0%}" if s >= 0.005 else ("<1%" if c else "")) if normalize else (f"{c:,}" if c else "")
                for c, s in zip(cnt, shr)]
    fig.add_trace(go.Scatter(
        x=jj.ravel(), y=ii.ravel(), mode="markers+text" if label_cells else "markers",
        text=text, textfont={"size": tick_font_size(n), "color": text_colours},
        marker={"symbol": "square", "size": max(6, min(40, 500 // max(n, 1))), "opacity": 0.01,
                "color": "#000000"},
        customdata=np.stack([true_idx, pred_idx, cnt, shr], axis=1),
        hovertext=hover, hoverinfo="text", showlegend=False, name="cells",
    ))
    if selected is not None:
        where_t = np.flatnonzero(order == selected[0])
        where_p = np.flatnonzero(order == selected[1])
        if where_t.size and where_p.size:
            y0, x0 = int(where_t[0]), int(where_p[0])
            fig.add_shape(type="rect", x0=x0 - 0.5, x1=x0 + 0.5, y0=y0 - 0.5, y1=y0 + 0.5,
                          line={"color": HIGHLIGHT_COLOUR, "width": 3})
    font = tick_font_size(n)
    fig.update_layout(
        height=confusion_height(n), margin={"l": 10, "r": 10, "t": 30, "b": 10},
        plot_bgcolor="white", clickmode="event+select", dragmode=False,
        xaxis={"title": "Predicted class", "tickvals": positions, "ticktext": shown_names,
               "tickfont": {"size": font}, "tickangle": -90 if n > 12 else -30,
               "showgrid": False, "zeroline": False, "side": "bottom",
               "range": [-0.5, n - 0.5], "constrain": "domain"},
        yaxis={"title": "True class", "tickvals": positions, "ticktext": shown_names,
               "tickfont": {"size": font}, "autorange": "reversed", "showgrid": False,
               "zeroline": False, "scaleanchor": "x", "constrain": "domain"},
    )
    return fig


def class_distribution_figure(distribution: pd.DataFrame) -> go.Figure:
    """Grouped bars of images per class, one colour per split (columns class, split, count)."""
    classes = list(dict.fromkeys(distribution["class"].astype(str)))
    fig = go.Figure()
    for i, (split, part) in enumerate(distribution.groupby("split", sort=True, observed=True)):
        fig.add_trace(go.Bar(x=_escape(part["class"]), y=part["count"], name=html.escape(str(split)),
                             marker_color=qualitative.Set2[i % len(qualitative.Set2)]))
    n = len(classes)
    fig.update_layout(
        barmode="group" if n <= 30 else "stack",  # 100+ groups of bars are unreadable; stack them
        height=360 if n <= 30 else 420, margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"tickfont": {"size": tick_font_size(n)}, "tickangle": -90 if n > 12 else 0,
               "title": "class"},
        yaxis={"title": "images"}, legend={"title": "split", "orientation": "h", "y": 1.1},
    )
    return fig


def training_curves_figure(history: pd.DataFrame) -> go.Figure:
    """Loss and accuracy per epoch, training vs validation, side by side."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    styles = {"": ("train", "#1f77b4"), "val_": ("validation", "#ff7f0e")}
    for col, metric in ((1, "loss"), (2, "accuracy")):
        for prefix, (label, colour) in styles.items():
            name = prefix + metric
            if name in history and history[name].notna().any():
                fig.add_trace(go.Scatter(x=history["epoch"], y=history[name], mode="lines+markers",
                                         name=label, line={"color": colour}, legendgroup=label,
                                         showlegend=col == 1), row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def probability_figure(probs: np.ndarray, class_names: Sequence[str], *, true: int | None,
                       predicted: int) -> go.Figure:
    """Horizontal bars of every class's probability, most probable at the top.

    The true class is green, the predicted class (when wrong) red, the rest grey.
    """
    probs = np.asarray(probs, dtype=np.float64)
    order = np.lexsort((np.arange(probs.size), -probs))
    names = _escape(class_names)
    colours = ["#2ca02c" if i == true else ERROR_COLOUR if i == predicted else "#adb5bd" for i in order]
    fig = go.Figure(go.Bar(
        x=probs[order], y=[names[i] for i in order], orientation="h", marker_color=colours,
        hovertemplate="%{y}: %{x:.3f}<extra></extra>",
    ))
    k = probs.size
    fig.update_layout(
        height=int(max(220, min(18 * k + 80, 2200))), margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis={"range": [0, 1], "title": "probability"},
        yaxis={"autorange": "reversed", "tickfont": {"size": tick_font_size(min(k, 40))}},
    )
    return fig


def _hover_text(predictions: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    part = predictions.iloc[rows]
    path = part["path"].astype(str).map(html.escape)
    true = part["true_label"].astype(str).map(html.escape)
    pred = part["predicted_label"].astype(str).map(html.escape)
    conf = part["confidence"].map("{:.2f}".format)
    return (path + "<br>true: " + true + "<br>predicted: " + pred + " (" + conf + ")").to_numpy()


def embedding_figure(
    plan: EmbeddingPlan, xy: np.ndarray, predictions: pd.DataFrame, class_names: Sequence[str], *,
    color_by: str = "true class", highlight: np.ndarray | None = None,
) -> go.Figure:
    """The 2-D projection as a WebGL scatter (or density + overlay points) per ``plan``.

    ``color_by`` is one of "true class", "predicted class", "correct", "confidence".
    Every point carries its row id as customdata (for box/lasso selection);
    ``highlight`` rows (e.g. the chosen confusion cell) are outlined on top.
    """
    choices = ("true class", "predicted class", "correct", "confidence")
    if color_by not in choices:
        raise ValueError(f"`color_by` must be one of {choices}. Received: color_by={color_by!r}")
    fig = go.Figure()
    if plan.mode == "density":
        xc = (plan.x_edges[:-1] + plan.x_edges[1:]) / 2
        yc = (plan.y_edges[:-1] + plan.y_edges[1:]) / 2
        z = np.log10(plan.histogram.T + 1.0)  # log so that sparse regions stay visible
        z[plan.histogram.T == 0] = np.nan
        fig.add_trace(go.Heatmap(
            x=xc, y=yc, z=z, colorscale="Blues", showscale=False, name="density",
            customdata=plan.histogram.T, hovertemplate="%{customdata:,} images<extra></extra>",
        ))
    rows = plan.rows
    xy_rows = np.asarray(xy[rows])
    hover = _hover_text(predictions, rows) if rows.size else np.zeros(0, dtype=object)
    marker_size = 4 if rows.size > 5000 else 6

    def add(mask: np.ndarray, name: str, marker: dict, legend: bool = True) -> None:
        fig.add_trace(go.Scattergl(
            x=xy_rows[mask, 0], y=xy_rows[mask, 1], mode="markers", name=name,
            customdata=rows[mask], hovertext=hover[mask], hoverinfo="text",
            marker={"size": marker_size, **marker}, showlegend=legend,
        ))

    if color_by in ("true class", "predicted class"):
        labels = predictions[("true" if color_by == "true class" else "predicted")].to_numpy()[rows]
        palette = qualitative.Dark24
        if len(class_names) <= MAX_LEGEND_CLASSES:
            for c, name in enumerate(_escape(class_names)):
                add(labels == c, name, {"color": palette[c % len(palette)]})
        else:
            add(np.ones(rows.size, bool), color_by,
                {"color": labels, "colorscale": "Turbo", "cmin": 0, "cmax": len(class_names) - 1},
                legend=False)
    elif color_by == "correct":
        correct = predictions["correct"].to_numpy(bool)[rows]
        add(correct, "correct", {"color": CORRECT_COLOUR})
        add(~correct, "wrong", {"color": ERROR_COLOUR})
    else:
        conf = predictions["confidence"].to_numpy()[rows]
        add(np.ones(rows.size, bool), "confidence",
            {"color": conf, "colorscale": "Viridis", "cmin": 0, "cmax": 1,
             "colorbar": {"title": "confidence"}}, legend=False)

    if highlight is not None and len(highlight):
        hl = np.asarray(highlight, dtype=np.int64)
        fig.add_trace(go.Scattergl(
            x=np.asarray(xy[hl])[:, 0], y=np.asarray(xy[hl])[:, 1], mode="markers",
            name="chosen confusion cell", customdata=hl, hovertext=_hover_text(predictions, hl),
            hoverinfo="text",
            marker={"size": 11, "color": "rgba(0,0,0,0)", "line": {"color": HIGHLIGHT_COLOUR, "width": 2}},
        ))
    fig.update_layout(
        height=620, margin={"l": 10, "r": 10, "t": 30, "b": 10}, dragmode="lasso",
        plot_bgcolor="white", legend={"itemsizing": "constant"},
        xaxis={"showgrid": False, "zeroline": False}, yaxis={"showgrid": False, "zeroline": False},
    )
    return fig


def f1_delta_figure(comparison: pd.DataFrame, *, top: int = 40) -> go.Figure:
    """Bars of per-class F1 change (B - A), the ``top`` largest changes, sorted."""
    part = comparison.reindex(comparison["f1_delta"].abs().sort_values(ascending=False).index)[:top]
    part = part.sort_values("f1_delta")
    colours = np.where(part["f1_delta"] >= 0, "#2ca02c", ERROR_COLOUR)
    fig = go.Figure(go.Bar(x=part["f1_delta"], y=_escape(part["class"]), orientation="h",
                           marker_color=colours, hovertemplate="%{y}: %{x:+.3f}<extra></extra>"))
    fig.update_layout(height=int(max(240, 16 * len(part) + 80)),
                      margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      xaxis={"title": "F1 change (B - A)"},
                      yaxis={"tickfont": {"size": tick_font_size(len(part))}})
    return fig
