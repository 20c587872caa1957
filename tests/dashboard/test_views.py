"""Pure data-selection functions of the dashboard (no Streamlit server).

Rows are image row ids; a confusion cell is (true, predicted); rows of a
confusion matrix are true classes, columns predicted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboard import views


def tiny_predictions() -> pd.DataFrame:
    """6 images, 3 classes (a, b, c).

    row: true -> predicted (confidence), split
    0: a -> b (0.60) test     3: b -> b (0.90) test
    1: a -> b (0.90) test     4: c -> a (0.70) train
    2: a -> a (0.80) test     5: a -> b (0.75) train
    """
    names = ["a", "b", "c"]
    true = np.array([0, 0, 0, 1, 2, 0])
    pred = np.array([1, 1, 0, 1, 0, 1])
    return pd.DataFrame({
        "id": np.arange(6), "path": [f"img{i}.png" for i in range(6)],
        "split": pd.Categorical(["test"] * 4 + ["train"] * 2),
        "true": true, "predicted": pred,
        "true_label": pd.Categorical.from_codes(true, categories=names),
        "predicted_label": pd.Categorical.from_codes(pred, categories=names),
        "confidence": np.array([0.6, 0.9, 0.8, 0.9, 0.7, 0.75], np.float32),
        "true_prob": np.array([0.3, 0.05, 0.8, 0.9, 0.1, 0.2], np.float32),
        "correct": true == pred,
    })


TEST = np.array([True, True, True, True, False, False])


def test_cell_rows_are_the_pair_in_the_mask_most_confident_first():
    df = tiny_predictions()
    assert views.cell_rows(df, TEST, true=0, predicted=1).tolist() == [1, 0]
    assert views.cell_rows(df, np.ones(6, bool), true=0, predicted=1).tolist() == [1, 5, 0]
    assert views.cell_rows(df, TEST, true=2, predicted=0).tolist() == []  # row 4 is train


def test_cell_from_point_prefers_customdata_then_maps_positions_through_the_shown_classes():
    order = [4, 7, 9]  # displayed position -> class index
    assert views.cell_from_point({"customdata": [3, 5, 10, 0.5], "x": 0, "y": 0}, order) == (3, 5)
    assert views.cell_from_point({"x": 2, "y": 1}, order) == (7, 9)  # x = predicted, y = true
    assert views.cell_from_point({"x": 2.0000001, "y": 0.0}, order) == (4, 9)
    assert views.cell_from_point({"x": 3, "y": 0}, order) is None
    assert views.cell_from_point({}, order) is None


def test_selection_cell_takes_the_first_usable_point():
    sel = {"points": [{"x": 9, "y": 9}, {"x": 0, "y": 1}]}
    assert views.selection_cell(sel, [0, 1, 2]) == (1, 0)
    assert views.selection_cell({"points": []}, [0, 1]) is None
    assert views.selection_cell(None, [0, 1]) is None


def test_cell_mapping_round_trips_through_the_confusion_figure():
    from dashboard.figures import confusion_figure

    cm = np.arange(16).reshape(4, 4)
    order = [1, 3]
    fig = confusion_figure(cm, list("wxyz"), class_order=order)
    layer = next(t for t in fig.data if t.type == "scatter")
    names = list("wxyz")
    for x, y, custom in zip(layer.x, layer.y, layer.customdata):
        # a click reports the cell's customdata (and its categories: predicted on x, true on y)
        point = {"customdata": list(custom), "x": x, "y": y}
        assert views.cell_from_point(point, order) == (int(custom[0]), int(custom[1]))
        assert (names[int(custom[0])], names[int(custom[1])]) == (y, x)
        assert cm[int(custom[0]), int(custom[1])] == custom[2]
    assert views.cell_from_point({"x": 1, "y": 0}, order) == (1, 3)  # positions, when no customdata


def test_most_confused_classes_and_default_cell():
    # class 2 is in most errors (5 as true, 1 as predicted); then 0 (4), then 1 (2)
    cm = np.array([[9, 3, 1, 0],
                   [0, 9, 0, 0],
                   [0, 5, 9, 0],
                   [0, 0, 0, 9]])
    assert views.most_confused_classes(cm, top=2).tolist() == [1, 2]
    assert views.most_confused_classes(cm, top=3).tolist() == [0, 1, 2]
    assert views.default_cell(cm) == (2, 1)
    assert views.default_cell(np.eye(3, dtype=int)) == (0, 0)
    with pytest.raises(ValueError, match="Received: top=0"):
        views.most_confused_classes(cm, top=0)
    # the largest cell's two classes come first, even when a class confused a little with many is in more
    # errors (a 120-class run's default view left out two of its three largest cells)
    many = np.eye(6, dtype=int) * 20
    many[0, 1:] = 2
    many[4, 5] = 6
    assert views.most_confused_classes(many, top=2).tolist() == [4, 5]
    assert views.most_confused_classes(many, top=3).tolist() == [0, 4, 5]
    assert views.most_confused_classes(np.eye(3, dtype=int), top=2).tolist() == [0, 1]  # no error at all
    assert views.most_confused_classes(many, top=9).tolist() == list(range(6))


def test_paging():
    items = np.arange(50)
    assert views.page_count(50, 24) == 3
    assert views.page_count(0, 24) == 1
    assert views.page_of(items, page=3, per_page=24).tolist() == [48, 49]
    assert views.page_of(items, page=99, per_page=24).tolist() == [48, 49]
    assert views.page_of(items, page=0, per_page=24).tolist() == list(range(24))
    with pytest.raises(ValueError, match="per_page=0"):
        views.page_count(5, 0)


def test_filter_errors():
    df = tiny_predictions()
    assert views.filter_errors(df, TEST).tolist() == [1, 0]
    assert views.filter_errors(df, np.ones(6, bool)).tolist() == [1, 5, 4, 0]
    assert views.filter_errors(df, np.ones(6, bool), true_classes=[2]).tolist() == [4]
    assert views.filter_errors(df, np.ones(6, bool), predicted_classes=[1],
                               confidence_range=(0.7, 0.8)).tolist() == [5]
    assert views.filter_errors(df, np.ones(6, bool), confidence_range=(0.6, 0.6)).tolist() == [0]
    with pytest.raises(ValueError, match="confidence_range"):
        views.filter_errors(df, TEST, confidence_range=(0.9, 0.1))


def test_export_table_columns_and_rows():
    out = views.export_table(tiny_predictions(), np.array([1, 0]))
    assert list(out.columns) == views.EXPORT_COLUMNS
    assert out["path"].tolist() == ["img1.png", "img0.png"]
    assert out["true_label"].tolist() == ["a", "a"]
    assert out["predicted_label"].tolist() == ["b", "b"]


def test_top_classes_orders_by_probability_then_index():
    out = views.top_classes(np.array([0.1, 0.4, 0.4, 0.1]), list("wxyz"), k=3)
    assert out["class"].tolist() == ["x", "y", "w"]
    assert out["probability"].tolist() == pytest.approx([0.4, 0.4, 0.1])
    assert len(views.top_classes(np.array([0.7, 0.3]), ["a", "b"], k=3)) == 2


def test_flag_worst():
    table = pd.DataFrame({"class": list("abcdefghij"), "f1": np.linspace(0.9, 0.0, 10)})
    assert views.flag_worst(table, share=0.2)["worst"].tolist() == [False] * 8 + [True] * 2
    assert views.flag_worst(table.iloc[:3], share=0.1)["worst"].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="share=0"):
        views.flag_worst(table, share=0)
    # classes tied at the cut are all flagged (three at F1 0: the first by order was 'the weakest class')
    tied = pd.DataFrame({"class": list("abcdefghij"), "f1": [0.9, 0, 0.5, 0, 0, 0.8, 0.7, 0.6, 0.9, 0.9]})
    assert views.flag_worst(tied, share=0.1)["worst"].tolist() == [False, True, False, True, True] + [False] * 5


def test_class_distribution_lists_every_class_per_split():
    out = views.class_distribution(tiny_predictions(), list("abc"))
    assert out.values.tolist() == [["a", "test", 3], ["b", "test", 1], ["c", "test", 0],
                                   ["a", "train", 1], ["b", "train", 0], ["c", "train", 1]]


def test_filter_mask_by_split_and_true_class():
    df = pd.DataFrame({"split": pd.Categorical(["train", "test", "test", "val"]), "true": [0, 1, 2, 1]})
    assert views.filter_mask(df).tolist() == [True, True, True, True]
    assert views.filter_mask(df, split="test").tolist() == [False, True, True, False]
    assert views.filter_mask(df, split="test", classes=[1]).tolist() == [False, True, False, False]
    assert views.filter_mask(df, classes=[1]).tolist() == [False, True, False, True]


def test_top_k_with_true_keeps_the_true_class_in_the_last_place_when_it_ranks_lower():
    probs = np.array([0.05, 0.4, 0.3, 0.2, 0.05])  # ties between class 0 and class 4
    assert views.top_k_with_true(probs, true=1, k=3).tolist() == [1, 2, 3]
    assert views.top_k_with_true(probs, true=4, k=3).tolist() == [1, 2, 4]
    assert views.top_k_with_true(probs, true=None, k=10).tolist() == [1, 2, 3, 0, 4]
    with pytest.raises(ValueError, match="Received: k=0"):
        views.top_k_with_true(probs, true=0, k=0)


def test_share_label_never_says_zero_for_images_that_are_there():
    # 5 of 1,000 rounds to 0% and 995 of 1,000 to 100%: neither may be shown
    assert views.share_label(5, 0.005) == "<1%"
    assert views.share_label(4, 0.004) == "<1%"
    assert views.share_label(0, 0.0) == ""
    assert views.share_label(995, 0.995) == ">99%"
    assert views.share_label(1000, 1.0) == "100%"
    assert views.share_label(15, 0.015) == "2%"
    assert views.plural(1, "image") == "1 image" and views.plural(0, "image") == "0 images"


def test_distribution_top_keeps_the_largest_classes_and_sums_the_others():
    names = [f"c{i}" for i in range(5)]
    true = np.repeat(np.arange(5), [5, 1, 4, 2, 3])
    df = pd.DataFrame({"true": true, "split": pd.Categorical(np.where(np.arange(15) % 3, "train", "test"))})
    dist = views.class_distribution(df, names)
    table, others = views.distribution_top(dist, top=2)
    assert others == 3
    assert list(dict.fromkeys(table["class"])) == ["c0", "c2", "others (3 classes, mean per class)"]
    assert table.groupby("class", sort=False)["count"].sum().tolist() == [5, 4, 2]  # (3 + 2 + 1) / 3
    whole, none = views.distribution_top(dist, top=10)
    assert none == 0 and whole["count"].sum() == 15


def test_training_summary_reads_the_stop_reason_best_epoch_and_learning_rates():
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_accuracy": [0.5, 0.8, 0.7, 0.79],
                            "learning_rate": [1e-3, 1e-3, 5e-4, 1e-4]})
    s = views.training_summary(history, {"recipe": {"epochs": 60}, "stopped_by": "early stopping",
                                         "seconds": 12.5})
    assert (s["epochs_run"], s["epochs_planned"], s["stopped_by"]) == (4, 60, "early stopping")
    assert (s["best_epoch"], s["best_val_accuracy"]) == (2, 0.8)
    assert (s["first_lr"], s["last_lr"], s["seconds"]) == (1e-3, 1e-4, 12.5)
    bare = views.training_summary(None, {"epochs": 3})
    assert bare["epochs_run"] == 3 and bare["best_epoch"] is None and bare["stopped_by"] is None


def test_latest_comparable_pair_prefers_the_newest_run_with_a_partner():
    # newest first: d has no partner, c pairs with a (older) before b pairs with a
    sigs = [("d", "x"), ("c", "y"), ("b", "z"), ("a", "y")]
    assert views.latest_comparable_pair(sigs) == ("a", "c")
    assert views.latest_comparable_pair([("b", 1), ("a", 2)]) is None
    assert views.latest_comparable_pair([]) is None
