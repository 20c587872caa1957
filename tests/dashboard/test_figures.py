"""Figure builders: what they draw, checked on the figure objects (no browser)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboard import figures, mapview, views

# rows = true, columns = predicted
CM = np.array([[5, 2, 0],
               [1, 7, 0],
               [0, 3, 4]])
NAMES = ["cat", "dog", "<b>fox</b>"]


def heatmaps(fig):
    return [t for t in fig.data if t.type == "heatmap"]


def test_confusion_figure_greys_the_diagonal_and_colours_only_errors():
    diag, off = heatmaps(figures.confusion_figure(CM, NAMES))
    assert np.isnan(np.asarray(off.z, float).diagonal()).all()
    assert np.asarray(off.z, float)[0, 1] == 2 and np.isnan(np.asarray(off.z, float)[0, 2])
    assert np.nansum(np.asarray(diag.z, float)) == 3  # the three diagonal cells, in grey
    # the lightest colour of the scale is visible on white: a cell of one image never looks empty
    assert off.colorscale[0][1] != "#ffffff" and off.zmin == 1


def test_confusion_figure_normalised_and_log_scale():
    fig = figures.confusion_figure(CM, NAMES, normalize=True)
    _, off = heatmaps(fig)
    assert np.asarray(off.z, float)[2, 1] == pytest.approx(3 / 7)
    layer = next(t for t in fig.data if t.type == "scatter")
    assert list(layer.text) == ["71%", "29%", "", "12%", "88%", "", "", "43%", "57%"]  # rows: 7, 8, 7 images
    log_fig = figures.confusion_figure(CM, NAMES, log_color=True)
    _, log = heatmaps(log_fig)
    assert np.asarray(log.z, float)[2, 1] == pytest.approx(np.log10(3))
    # the colour bar reads in images, at powers of ten and their doubles and fives, not "log10 count"
    bar = log.colorbar
    assert list(bar.ticktext) == ["1", "2"] and list(bar.tickvals) == pytest.approx([0.0, np.log10(2)])
    assert "log10" not in bar.title.text


def test_row_normalised_labels_never_read_zero_for_images_that_are_there():
    cm = np.array([[995, 5], [4, 996]])
    fig = figures.confusion_figure(cm, ["a", "b"], normalize=True)
    layer = next(t for t in fig.data if t.type == "scatter")
    assert list(layer.text) == [">99%", "<1%", "<1%", ">99%"]


def test_confusion_figure_subset_keeps_full_indices_and_escapes_names():
    fig = figures.confusion_figure(CM, NAMES, class_order=[0, 2], selected=(2, 0))
    layer = next(t for t in fig.data if t.type == "scatter")
    assert [tuple(c[:2]) for c in layer.customdata] == [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert list(fig.layout.yaxis.ticktext) == ["cat", "&lt;b&gt;fox&lt;/b&gt;"]
    (outline,) = fig.layout.shapes
    assert (outline.x0, outline.y0) == (-0.5, 0.5)  # predicted 0 at x=0, true 2 at y=1


def test_a_colour_bar_of_a_few_images_has_whole_number_ticks():
    cm = np.array([[9, 1, 0], [3, 9, 0], [0, 2, 9]])
    bar = figures.confusion_figure(cm, ["a", "b", "c"]).data[1].colorbar
    assert (bar.dtick, bar.tickformat) == (1, "d")
    many = figures.confusion_figure(cm * 100, ["a", "b", "c"]).data[1].colorbar
    assert many.dtick is None  # plotly's own ticks are whole numbers on a range of hundreds


def test_a_very_long_class_name_is_cut_on_every_axis():
    """One 160-character class name squeezed the confusion matrix to 90x60 px (seen in a browser)."""
    long = "L" * 150 + " the end"
    names = ["cat", long, long + " again"]
    cm = np.array([[5, 1, 0], [2, 6, 1], [0, 1, 7]])
    fig = figures.confusion_figure(cm, names)
    ticks = list(fig.layout.yaxis.ticktext)
    assert ticks[0] == "cat" and all(len(t) <= figures.LABEL_CHARS + 4 for t in ticks) and len(set(ticks)) == 3
    assert ticks[1].endswith("…")
    distribution = pd.DataFrame({"class": names, "split": ["test"] * 3, "count": [3, 4, 5]})
    bars = figures.class_distribution_figure(distribution).data[0]
    assert max(map(len, bars.y)) <= figures.LABEL_CHARS + 4
    probability = figures.probability_figure(np.array([0.2, 0.5, 0.3]), names, true=0, predicted=1)
    assert max(map(len, probability.data[0].y)) <= figures.LABEL_CHARS + 4
    delta = figures.f1_delta_figure(pd.DataFrame({"class": names, "f1_delta": [0.1, -0.2, 0.05]}))
    assert max(map(len, delta.data[0].y)) <= figures.LABEL_CHARS + 4


def test_a_large_matrix_is_a_zoomable_webgl_layer_with_thinned_labels():
    k = 120
    cm = np.eye(k, dtype=int) * 50 + np.roll(np.eye(k, dtype=int), 1, axis=1)
    fig = figures.confusion_figure(cm, [f"class_{i:03d}" for i in range(k)])
    layer = fig.data[-1]
    assert layer.type == "scattergl" and len(layer.customdata) == k * k
    assert fig.layout.dragmode == "zoom" and fig.layout.uirevision == "confusion"
    assert fig.layout.xaxis.tickvals is None  # plotly thins the labels to what fits, all shown when zoomed
    assert fig.layout.xaxis.type == "category" and list(fig.layout.xaxis.categoryarray)[:2] == [
        "class_000", "class_001"]
    assert fig.layout.height <= 1200 and fig.layout.xaxis.tickfont.size >= 9
    assert layer.hovertemplate.startswith("true: %{y}<br>predicted: %{x}")
    assert layer.selected.marker.opacity == 1.0  # the clicked cell, marked in the browser


def test_confusion_figure_grows_with_the_number_of_classes():
    small = figures.confusion_figure(np.eye(10, dtype=int), [str(i) for i in range(10)])
    large = figures.confusion_figure(np.eye(120, dtype=int), [str(i) for i in range(120)])
    assert large.layout.height > small.layout.height
    assert large.layout.xaxis.tickfont.size < small.layout.xaxis.tickfont.size


def test_confusion_figure_rejects_mismatched_names():
    with pytest.raises(ValueError, match="Received shape"):
        figures.confusion_figure(CM, ["a", "b"])


def predictions(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.8, true, (true + 1) % 3)
    return pd.DataFrame({
        "path": [f"p{i}" for i in range(n)], "true": true, "predicted": pred,
        "true_label": pd.Categorical.from_codes(true, categories=NAMES),
        "predicted_label": pd.Categorical.from_codes(pred, categories=NAMES),
        "confidence": rng.random(n), "correct": true == pred,
    })


def plan(df: pd.DataFrame, xy: np.ndarray, *, color_by: str, cap: int):
    return mapview.plan_map(xy, np.ones(len(df), bool), mapview.full_window(xy), color_by=color_by,
                            true=df["true"].to_numpy(), predicted=df["predicted"].to_numpy(),
                            correct=df["correct"].to_numpy(), confidence=df["confidence"].to_numpy(),
                            n_classes=3, cap=cap)


@pytest.mark.parametrize("color_by", ["true class", "predicted class", "correct", "confidence"])
def test_embedding_figure_points_carry_their_row_ids(color_by):
    df = predictions(300)
    xy = np.random.default_rng(1).normal(size=(300, 2))
    fig = figures.embedding_figure(plan(df, xy, color_by=color_by, cap=1000), xy, df, NAMES,
                                   highlight=np.array([5, 6]))
    points = [t for t in fig.data if t.name != "chosen confusion cell" and t.x is not None and len(t.x)
              and t.x[0] is not None]
    ids = np.sort(np.concatenate([np.asarray(t.customdata) for t in points]))
    assert ids.tolist() == list(range(300))
    assert list(fig.data[-1].customdata) == [5, 6]
    assert fig.layout.xaxis.fixedrange and fig.layout.dragmode == "lasso"


@pytest.mark.parametrize("color_by", ["true class", "correct", "confidence"])
def test_embedding_figure_beyond_the_cap_draws_every_point_in_pictures(color_by):
    df = predictions(5000)
    xy = np.random.default_rng(1).normal(size=(5000, 2))
    p = plan(df, xy, color_by=color_by, cap=1000)
    fig = figures.embedding_figure(p, xy, df, NAMES)
    assert p.mode == "raster" and p.n_visible == 5000
    assert len(fig.layout.images) == (2 if color_by == "correct" else 1)  # errors on their own layer
    assert all(img.source.startswith("data:image/png;base64,") for img in fig.layout.images)
    grid = next(t for t in fig.data if t.name == "grid")  # hover text on a transparent heatmap
    z, text = np.asarray(grid.z, float), np.asarray(grid.text, object)
    assert z.shape == text.shape and np.nansum(z) == 5000
    assert (np.isfinite(z) == (text != "")).all()  # hover text exactly on the non-empty cells
    assert sum(int(h.split(" images here")[0].replace(",", "")) for h in text[text != ""]) == 5000
    assert any(t.type == "scatter" and t.name == "selectable" for t in fig.data)  # keeps box and lasso on
    with pytest.raises(ValueError, match="color_by"):
        plan(df, xy, color_by="size", cap=1000)


def test_embedding_figure_outlines_the_selection_shapes():
    df = predictions(50)
    xy = np.random.default_rng(1).normal(size=(50, 2))
    fig = figures.embedding_figure(plan(df, xy, color_by="correct", cap=100), xy, df, NAMES,
                                   shapes=[("box", (0, 1, 0, 1)), ("lasso", ((0, 0), (1, 0), (0, 1)))])
    kinds = [s.type for s in fig.layout.shapes]
    assert kinds == ["rect", "path"] and fig.layout.shapes[1].path == "M 0,0 L 1,0 L 0,1 Z"


def test_probability_figure_sorts_and_colours():
    fig = figures.probability_figure(np.array([0.2, 0.7, 0.1]), NAMES, true=0, predicted=1)
    bar = fig.data[0]
    assert list(bar.y) == ["dog", "cat", "&lt;b&gt;fox&lt;/b&gt;"]
    assert list(bar.marker.color)[:2] == [figures.ERROR_COLOUR, "#2ca02c"]


def test_probability_figure_shows_ten_bars_at_most_with_the_true_class():
    probs = np.linspace(1.0, 2.0, 120)[::-1]
    probs /= probs.sum()
    names = [f"c{i}" for i in range(120)]
    fig = figures.probability_figure(probs, names, true=77, predicted=0)
    bar = fig.data[0]
    assert len(bar.y) == 10 and bar.y[-1] == "c77 (rank 78)" and list(bar.y[:9]) == names[:9]
    assert fig.layout.height < 400


def test_training_curves_and_distribution_and_f1_delta():
    history = pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.5], "accuracy": [0.5, 0.7],
                            "val_loss": [1.1, 0.6], "val_accuracy": [0.4, 0.6]})
    assert len(figures.training_curves_figure(history).data) == 4
    with_lr = figures.training_curves_figure(history.assign(learning_rate=[1e-3, 1e-4]), best_epoch=2)
    assert len(with_lr.data) == 5 and with_lr.data[-1].name == "learning rate"
    assert with_lr.layout.yaxis3.type == "log" and len(with_lr.layout.shapes) == 3  # the best epoch, marked
    dist = views.class_distribution(predictions(30).assign(split="test"), NAMES)
    bars = figures.class_distribution_figure(dist)
    assert len(bars.data) == 1 and bars.data[0].orientation == "h"
    table = pd.DataFrame({"class": ["a", "b", "c"], "f1_delta": [0.1, -0.3, 0.0]})
    assert list(figures.f1_delta_figure(table, top=2).data[0].y) == ["b", "a"]


def test_embedding_figure_in_picture_mode_draws_the_chosen_cell_as_rings_on_a_picture():
    df = predictions(5000)
    xy = np.random.default_rng(1).normal(size=(5000, 2))
    p = plan(df, xy, color_by="correct", cap=1000)
    chosen = np.arange(0, 1500)
    fig = figures.embedding_figure(p, xy, df, NAMES, highlight=chosen)
    assert len(fig.layout.images) == 3  # correct, errors, then the rings over them
    legend = [t for t in fig.data if t.name == "chosen confusion cell"]
    assert len(legend) == 1 and list(legend[0].x) == [None]  # a legend entry, not 1,500 markers
    import base64

    import cv2
    png = base64.b64decode(fig.layout.images[-1].source.split(",", 1)[1])
    rings = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert rings.shape[:2] == figures.RING_RASTER_PX[::-1]
    # a ring around each chosen point: the pixel 5 to the right of its centre is drawn, the centre is not
    w, h = figures.RING_RASTER_PX
    x0, x1, y0, y1 = p.window
    col = np.minimum(((xy[chosen[:1], 0] - x0) / (x1 - x0) * w).astype(int), w - 1)[0]
    row = np.minimum(((y1 - xy[chosen[:1], 1]) / (y1 - y0) * h).astype(int), h - 1)[0]
    if 5 <= col < w - 5:
        assert rings[row, col + 5, 3] == 255
    # in points mode the chosen rows stay markers with their hover text
    small = figures.embedding_figure(plan(df, xy, color_by="correct", cap=10_000), xy, df, NAMES, highlight=chosen)
    assert list(small.data[-1].customdata) == chosen.tolist() and len(small.layout.images) == 0


def test_embedding_figure_pictures_have_distinct_placements_so_plotly_draws_each():
    """plotly.js keys layout images by (xref, x, sizex, yref, y, sizey): pictures with one key are
    drawn as one, which hid the errors' layer (and the outlines) under the correct points."""
    df = predictions(5000)
    xy = np.random.default_rng(1).normal(size=(5000, 2))
    p = plan(df, xy, color_by="correct", cap=1000)
    fig = figures.embedding_figure(p, xy, df, NAMES, highlight=np.arange(40))
    keys = {(im.xref, im.x, im.sizex, im.yref, im.y, im.sizey) for im in fig.layout.images}
    assert len(fig.layout.images) == 3 and len(keys) == 3
    x0, x1, _, _ = p.window
    for im in fig.layout.images:  # each still covers the window (to a billionth of its width)
        assert abs(im.x - x0) < (x1 - x0) * 1e-8 and abs(im.x + im.sizex - x1) < (x1 - x0) * 1e-8
