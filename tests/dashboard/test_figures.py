"""Figure builders: what they draw, checked on the figure objects (no browser)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboard import figures, views

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


def test_confusion_figure_normalised_and_log_scale():
    _, off = heatmaps(figures.confusion_figure(CM, NAMES, normalize=True))
    assert np.asarray(off.z, float)[2, 1] == pytest.approx(3 / 7)
    _, log = heatmaps(figures.confusion_figure(CM, NAMES, log_color=True))
    assert np.asarray(log.z, float)[2, 1] == pytest.approx(np.log10(3))


def test_confusion_figure_subset_keeps_full_indices_and_escapes_names():
    fig = figures.confusion_figure(CM, NAMES, class_order=[0, 2], selected=(2, 0))
    layer = next(t for t in fig.data if t.type == "scatter")
    assert [tuple(c[:2]) for c in layer.customdata] == [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert list(fig.layout.yaxis.ticktext) == ["cat", "&lt;b&gt;fox&lt;/b&gt;"]
    (outline,) = fig.layout.shapes
    assert (outline.x0, outline.y0) == (-0.5, 0.5)  # predicted 0 at x=0, true 2 at y=1


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


@pytest.mark.parametrize("color_by", ["true class", "predicted class", "correct", "confidence"])
def test_embedding_figure_points_carry_their_row_ids(color_by):
    df = predictions(300)
    xy = np.random.default_rng(1).normal(size=(300, 2))
    plan = views.plan_embedding(xy, np.arange(300), cap=1000)
    fig = figures.embedding_figure(plan, xy, df, NAMES, color_by=color_by, highlight=np.array([5, 6]))
    points = [t for t in fig.data if t.name != "chosen confusion cell"]
    ids = np.sort(np.concatenate([np.asarray(t.customdata) for t in points]))
    assert ids.tolist() == list(range(300))
    assert list(fig.data[-1].customdata) == [5, 6]


def test_embedding_figure_density_mode_ships_only_the_overlay():
    df = predictions(5000)
    xy = np.random.default_rng(1).normal(size=(5000, 2))
    errors = np.flatnonzero(~df["correct"].to_numpy())
    plan = views.plan_embedding(xy, np.arange(5000), cap=1000, overlay=errors, bins=40)
    fig = figures.embedding_figure(plan, xy, df, NAMES, color_by="correct")
    assert fig.data[0].type == "heatmap"
    shipped = sum(len(t.customdata) for t in fig.data[1:])
    assert shipped == min(1000, errors.size)
    with pytest.raises(ValueError, match="color_by"):
        figures.embedding_figure(plan, xy, df, NAMES, color_by="size")


def test_probability_figure_sorts_and_colours():
    fig = figures.probability_figure(np.array([0.2, 0.7, 0.1]), NAMES, true=0, predicted=1)
    bar = fig.data[0]
    assert list(bar.y) == ["dog", "cat", "&lt;b&gt;fox&lt;/b&gt;"]
    assert list(bar.marker.color)[:2] == [figures.ERROR_COLOUR, "#2ca02c"]


def test_training_curves_and_distribution_and_f1_delta():
    history = pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.5], "accuracy": [0.5, 0.7],
                            "val_loss": [1.1, 0.6], "val_accuracy": [0.4, 0.6]})
    assert len(figures.training_curves_figure(history).data) == 4
    dist = views.class_distribution(predictions(30).assign(split="test"), NAMES)
    assert len(figures.class_distribution_figure(dist).data) == 1
    table = pd.DataFrame({"class": ["a", "b", "c"], "f1_delta": [0.1, -0.3, 0.0]})
    assert list(figures.f1_delta_figure(table, top=2).data[0].y) == ["b", "a"]
