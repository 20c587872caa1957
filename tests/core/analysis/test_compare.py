"""core.analysis.compare: two runs matched by image path, compared on the images held out by both."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.analysis import compare as C
from core.cli import main
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run
from core.run.write import write_run

CLASSES = ["a", "b", "c"]


def probs_for(pred: list[int], conf: float = 0.8) -> np.ndarray:
    p = np.full((len(pred), 3), (1 - conf) / 2, np.float32)
    p[np.arange(len(pred)), pred] = conf
    return p


def write(store, run_id, *, paths, true, pred, splits, training=None):
    return write_run(store, run_id, classes=CLASSES, y_true=np.array(true), probs=probs_for(pred),
                     paths=paths, splits=np.array(splits), training=training)


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "store")


def test_runs_on_the_same_images_with_other_splits_are_compared_on_the_images_both_hold_out(store):
    # 8 images x0..x7, true a a a b b b c c; A holds out x0..x3, B holds out x2..x5 and lists its rows reversed
    paths = [f"x{i}.png" for i in range(8)]
    true = [0, 0, 0, 1, 1, 1, 2, 2]
    pred_a = [1, 0, 1, 1, 0, 1, 2, 2]  # A wrong on x0, x2, x4
    pred_b = [1, 0, 0, 2, 1, 1, 2, 2]  # B wrong on x0, x3
    a = write(store, "a", paths=paths, true=true, pred=pred_a, splits=["test"] * 4 + ["train"] * 4)
    b = write(store, "b", paths=paths[::-1], true=true[::-1], pred=pred_b[::-1],
              splits=(["train"] * 2 + ["test"] * 4 + ["train"] * 2)[::-1])
    assert C.image_signature(a) == C.image_signature(b)
    assert C.comparison_problem(a, b) is None
    cmp = C.compare(a, b)
    # held out by both: x2, x3 (A's rows 2, 3; B's rows 5, 4)
    assert cmp.rows_a.tolist() == [2, 3] and cmp.rows_b.tolist() == [5, 4]
    assert "2 images held out by both runs" in cmp.basis and "8 images they share" in cmp.basis
    # x2: A wrong (a->b), B right: fixed; x3: A right, B wrong (b->c): broken
    assert cmp.flips[["id", "id_a", "path", "kind", "wrong_predicted"]].values.tolist() == [
        [5, 2, "x2.png", C.FIXED, 1], [4, 3, "x3.png", C.BROKEN, 2]]
    assert cmp.metric("accuracy") == (0.5, 0.5)
    assert cmp.metric("n") == (2, 2)
    f1 = cmp.per_class.set_index("class")
    assert f1.loc["a", "tp_a"] == 0 and f1.loc["a", "tp_b"] == 1 and f1.loc["b", "tp_delta"] == -1


def test_same_rows_and_splits_give_the_stored_metrics_and_per_class_table(store):
    a = make_synthetic_run(store, "small", n=400, n_classes=5, seed=0, accuracy=0.8)
    b = make_synthetic_run(store, "better", n=400, n_classes=5, seed=0, accuracy=0.9)
    cmp = C.compare(a, b)
    assert cmp.basis.startswith(f"on the {int(a.eval_mask().sum()):,} images of the evaluation split (test)")
    for name in ("accuracy", "macro_f1", "top3_accuracy", "errors"):
        assert cmp.metric(name) == pytest.approx((a.metrics[name], b.metrics[name]))
    for col in ("f1", "tp", "fp", "fn", "cer"):
        assert cmp.per_class[f"{col}_a"].to_numpy() == pytest.approx(a.per_class[col].to_numpy())
        assert cmp.per_class[f"{col}_delta"].to_numpy() == pytest.approx(
            b.per_class[col].to_numpy() - a.per_class[col].to_numpy())
    mask = a.eval_mask()
    ca, cb = a.predictions["correct"].to_numpy(), b.predictions["correct"].to_numpy()
    assert cmp.n_fixed == int((mask & ~ca & cb).sum()) and cmp.n_broken == int((mask & ca & ~cb).sum())
    assert cmp.flips["id"].tolist() == np.flatnonzero(mask & (ca != cb)).tolist()
    cells = C.flip_cells(cmp.flips, a.classes)
    assert cells["count"].sum() == len(cmp.flips) and cells["count"].is_monotonic_decreasing
    assert C.flip_cells(cmp.flips.iloc[:0], a.classes).empty


def test_runs_that_cannot_be_compared_say_why_in_one_line(store):
    paths = ["x0.png", "x1.png", "x2.png"]
    a = write(store, "a", paths=paths, true=[0, 1, 2], pred=[0, 1, 2], splits=["test"] * 3)
    other_images = write(store, "o", paths=["y0.png", "y1.png"], true=[0, 1], pred=[0, 1], splits=["test"] * 2)
    assert "share no image" in C.comparison_problem(a, other_images)
    relabelled = write(store, "r", paths=paths, true=[0, 2, 2], pred=[0, 1, 2], splits=["test"] * 3)
    assert ("The runs give 1 of the images they both hold out different true labels (e.g. 'x1.png') and neither "
            "was trained on corrections") in C.comparison_problem(a, relabelled)
    apart = write(store, "p", paths=paths, true=[0, 1, 2], pred=[0, 1, 2], splits=["train", "train", "val"])
    # all of "p" is in train or val; its evaluation split is val (x2), which A holds out too
    assert C.comparison_problem(a, apart) is None
    with pytest.raises(C.ComparisonError, match="share no image"):
        C.compare(a, other_images)
    with pytest.raises(C.ComparisonError, match="twice"):
        C.match_rows(["x", "x"], ["x"])


def test_other_classes_are_refused(store):
    a = make_synthetic_run(store, "five", n=100, n_classes=5, seed=0)
    b = make_synthetic_run(store, "four", n=100, n_classes=4, seed=0)
    assert "different classes" in C.comparison_problem(a, b)


def test_cli_compare_writes_the_three_csvs(store, capsys):
    make_synthetic_run(store, "small", n=300, n_classes=4, seed=0, accuracy=0.8)
    make_synthetic_run(store, "better", n=300, n_classes=4, seed=0, accuracy=0.9)
    out = store.root / "cmp"
    assert main(["compare", "small", "better", "--store", str(store.root), "--out", str(out)]) == 0
    cmp = C.compare(store.load("small"), store.load("better"))
    flips = pd.read_csv(out / "flips.csv")
    assert flips["id"].tolist() == cmp.flips["id"].tolist()
    assert set(flips["kind"]) <= {C.FIXED, C.BROKEN}
    metrics = pd.read_csv(out / "metrics.csv").set_index("metric")
    assert metrics.loc["accuracy", "delta"] == pytest.approx(cmp.metric("accuracy")[1] - cmp.metric("accuracy")[0])
    assert list(pd.read_csv(out / "per_class.csv")["class"]) == store.load("small").classes
    err = capsys.readouterr().err
    assert f"{cmp.n_fixed:,} images fixed by B" in err
    # runs that cannot be compared: one line, exit status 2
    make_synthetic_run(store, "four", n=300, n_classes=3, seed=0)
    assert main(["compare", "small", "four", "--store", str(store.root)]) == 2
    assert capsys.readouterr().err.strip() == ("error: The runs have different classes ('small' has 'ddd', which "
                                               "'four' lacks); compare runs of models with the same classes.")


def test_a_run_retrained_on_corrections_is_compared_on_the_corrected_labels(store):
    """Review, export, train --corrections, compare: the retrained run's labels differ from the old run's on
    the relabelled images (in train, and in test when test errors were reviewed). Compare refused them all."""
    paths = [f"x{i}.png" for i in range(6)]
    splits = ["train", "train", "test", "test", "test", "test"]
    a = write(store, "a", paths=paths, true=[0, 1, 2, 1, 0, 2], pred=[0, 1, 2, 2, 0, 1], splits=splits)
    # the review found x3 (given b, shows c) mislabelled and a train image too; B learnt on the corrections
    record = {"corrections": {"file": "c.csv", "sha256": "0" * 64, "relabelled": 2, "dropped": 0}}
    b = write(store, "b", paths=paths, true=[0, 2, 2, 2, 0, 2], pred=[0, 2, 2, 2, 0, 2], splits=splits,
              training=record)
    cmp = C.compare(a, b)
    assert cmp.basis.endswith("; true labels as corrected for B (1 of them relabelled); 1 other shared image "
                              "carries other labels in the two runs (corrections)"), cmp.basis
    # judged by B's labels: A was right on x2, x4, and on x3 (c, as corrected); wrong on x5 -> 3 of 4
    assert cmp.metric("accuracy") == pytest.approx((0.75, 1.0))
    assert cmp.flips["path"].tolist() == ["x5.png"] and cmp.flips["true_label"].tolist() == [CLASSES[2]]
    # labels differing only outside the compared images: compared on the shared labels, said so
    only_train = write(store, "t", paths=paths, true=[0, 2, 2, 1, 0, 2], pred=[0, 1, 2, 2, 0, 1], splits=splits)
    assert C.compare(a, only_train).basis.endswith("; 1 other shared image carries other labels in the two "
                                                   "runs (corrections)")
