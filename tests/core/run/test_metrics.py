"""Metrics against hand-checked numbers and against scikit-learn on random cases."""

import numpy as np
import pytest
from sklearn.metrics import classification_report, top_k_accuracy_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from core.run import metrics


def test_per_class_table_hand_checked_three_classes():
    # rows: true class, columns: predicted
    #            a  b  c
    #   true a [ 3, 1, 0 ]
    #   true b [ 0, 2, 2 ]
    #   true c [ 1, 0, 1 ]     N = 10
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0, 2])
    cm = metrics.confusion_matrix(y_true, y_pred, n_classes=3)
    assert cm.tolist() == [[3, 1, 0], [0, 2, 2], [1, 0, 1]]
    table = metrics.per_class_table(y_true, y_pred, ["a", "b", "c"]).set_index("class")
    # a: TP 3, FP 1 (the c predicted a), FN 1, TN 10-3-1-1 = 5, CER (1+1)/10
    assert table.loc["a", ["tp", "fp", "fn", "tn"]].tolist() == [3, 1, 1, 5]
    assert table.loc["b", ["tp", "fp", "fn", "tn"]].tolist() == [2, 1, 2, 5]
    assert table.loc["c", ["tp", "fp", "fn", "tn"]].tolist() == [1, 2, 1, 6]
    assert table["cer"].tolist() == pytest.approx([0.2, 0.3, 0.3])
    assert table.loc["a", "precision"] == pytest.approx(3 / 4)
    assert table.loc["c", "precision"] == pytest.approx(1 / 3)
    assert table.loc["b", "recall"] == pytest.approx(2 / 4)
    assert table["support"].tolist() == [4, 4, 2]
    assert table.loc["c", "f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))


@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_sklearn_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 12))
    n = int(rng.integers(1, 300))
    y_true = rng.integers(0, k, n)
    # some classes never predicted, some never true: the zero_division paths
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, max(1, k - 1), n))
    probs = rng.dirichlet(np.ones(k), n)
    names = [f"c{i}" for i in range(k)]
    table = metrics.per_class_table(y_true, y_pred, names)
    report = classification_report(y_true, y_pred, labels=np.arange(k), target_names=names,
                                   output_dict=True, zero_division=0)
    for row in table.itertuples():
        ref = report[row._1]
        assert row.precision == pytest.approx(ref["precision"])
        assert row.recall == pytest.approx(ref["recall"])
        assert row.f1 == pytest.approx(ref["f1-score"])
        assert row.support == ref["support"]
    assert (table.tp + table.fp + table.fn + table.tn == n).all()
    assert metrics.confusion_matrix(y_true, y_pred, n_classes=k).tolist() == \
        sk_confusion_matrix(y_true, y_pred, labels=np.arange(k)).tolist()
    s = metrics.summary(y_true, y_pred, probs)
    assert s["accuracy"] == pytest.approx(report["accuracy"] if "accuracy" in report else (y_true == y_pred).mean())
    assert s["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"])
    for kk in (1, 3):
        # sklearn refuses y_true with only two distinct labels against a (N, K>2) score
        if kk < k and len(np.unique(y_true)) > 2:
            assert metrics.top_k_accuracy(y_true, probs, k=kk) == pytest.approx(
                top_k_accuracy_score(y_true, probs, k=kk, labels=np.arange(k)))


def test_top_k_orders_best_first():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    idx, p = metrics.top_k(probs, k=2)
    assert idx.tolist() == [[1, 2], [0, 2]]
    assert p.ravel().tolist() == pytest.approx([0.6, 0.3, 0.5, 0.3])


def test_ranked_errors_most_confident_first_with_margin():
    y_true = np.array([0, 1, 2, 0])
    probs = np.array([
        [0.9, 0.05, 0.05],   # right
        [0.7, 0.2, 0.1],     # wrong at 0.7, margin 0.5
        [0.1, 0.88, 0.02],   # wrong at 0.88, margin 0.78
        [0.3, 0.4, 0.3],     # wrong at 0.4, margin 0.1
    ])
    errs = metrics.ranked_errors(y_true, probs)
    assert errs["index"].tolist() == [2, 1, 3]
    assert errs["predicted"].tolist() == [1, 0, 1]
    assert errs["margin"].tolist() == pytest.approx([0.78, 0.5, 0.1])
    assert errs["true_prob"].tolist() == pytest.approx([0.02, 0.2, 0.3])
    assert metrics.ranked_errors(y_true, probs, min_confidence=0.75)["index"].tolist() == [2]


def test_confused_pairs_largest_first():
    cm = np.array([[5, 3, 0], [1, 4, 0], [0, 3, 2]])
    pairs = metrics.confused_pairs(cm, ["a", "b", "c"], top=2)
    assert pairs[["true", "predicted", "count"]].values.tolist() == [["a", "b", 3], ["c", "b", 3]]
    assert pairs["share_of_true"].tolist() == pytest.approx([3 / 8, 3 / 5])


def test_labels_out_of_range_are_refused_with_values():
    with pytest.raises(ValueError, match=r"y_pred holds labels outside range\(3\): min=0, max=3"):
        metrics.confusion_matrix(np.array([0, 1]), np.array([0, 3]), n_classes=3)


def test_softmax_and_probability_detection():
    logits = np.array([[2.0, 1.0, -1.0]])
    p = metrics.softmax(logits)
    assert p.sum() == pytest.approx(1.0)
    assert metrics.looks_like_probabilities(p)
    assert not metrics.looks_like_probabilities(logits)


def test_options_are_keyword_only():
    y = np.array([0, 1])
    with pytest.raises(TypeError):
        metrics.confusion_matrix(y, y, 2)
    with pytest.raises(TypeError):
        metrics.top_k(np.eye(2), 1)
    assert metrics.confusion_matrix(y, y, n_classes=2).tolist() == [[1, 0], [0, 1]]
