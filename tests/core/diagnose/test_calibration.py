"""Calibration: ECE/MCE against a hand loop over the bins and scikit-learn's calibration_curve,
temperature scaling recovering a known temperature, and the stored derived kind."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from core.diagnose import calibration as cal
from core.run import derived
from core.run.store import RunStore
from core.run.write import write_run


def hand_bins(confidence, correct, n_bins):
    """(count, accuracy, mean confidence) per bin (lower, upper], the first bin also holding 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = []
    for b in range(n_bins):
        lower, upper = edges[b], edges[b + 1]
        members = [i for i, c in enumerate(confidence) if (lower < c <= upper) or (b == 0 and c == 0.0)]
        if members:
            out.append((len(members), float(np.mean(correct[members])), float(np.mean(confidence[members]))))
        else:
            out.append((0, None, None))
    return out


def hand_ece_mce(confidence, correct, n_bins):
    n = len(confidence)
    ece, mce = 0.0, 0.0
    for count, acc, conf in hand_bins(confidence, correct, n_bins):
        if count:
            ece += count / n * abs(acc - conf)
            mce = max(mce, abs(acc - conf))
    return ece, mce


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_bins", [1, 7, 15])
def test_ece_and_mce_match_a_direct_loop_over_the_bins(seed, n_bins):
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.1, 1.0, 300)
    # values exactly on bin edges go to the lower bin; 0 and 1 included
    confidence[:n_bins + 1] = np.linspace(0.0, 1.0, n_bins + 1)
    correct = rng.random(300) < confidence ** 2  # over-confident on purpose
    ece, mce = hand_ece_mce(confidence, correct, n_bins)
    assert cal.expected_calibration_error(confidence, correct, n_bins=n_bins) == pytest.approx(ece, abs=1e-12)
    assert cal.max_calibration_error(confidence, correct, n_bins=n_bins) == pytest.approx(mce, abs=1e-12)
    assert ece > 0.05  # the data are miscalibrated, so a bug that returns 0 cannot pass


def test_a_perfectly_calibrated_bin_has_no_gap_and_the_doc_example_holds():
    # 10 images at confidence 0.7 (one bin), 7 of them right: ECE = MCE = 0
    conf = np.full(10, 0.7); right = np.arange(10) < 7
    assert cal.expected_calibration_error(conf, right) == pytest.approx(0.0, abs=1e-12)
    conf = np.array([0.95, 0.95, 0.55, 0.55]); right = np.array([True, False, True, True])
    assert cal.expected_calibration_error(conf, right, n_bins=10) == pytest.approx(0.45)
    assert np.isnan(cal.expected_calibration_error(np.zeros(0), np.zeros(0, bool)))


@pytest.mark.parametrize("seed", range(3))
def test_reliability_table_is_sklearns_calibration_curve_on_the_same_bins(seed):
    rng = np.random.default_rng(seed)
    confidence = rng.beta(5, 1, 500)
    correct = rng.random(500) < confidence * 0.9
    table = cal.reliability_table(confidence, correct, n_bins=15)
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=15, strategy="uniform")
    filled = table[table["count"] > 0]
    np.testing.assert_allclose(filled["accuracy"], prob_true, rtol=1e-12)
    np.testing.assert_allclose(filled["mean_confidence"], prob_pred, rtol=1e-12)
    assert table["count"].sum() == 500 and len(table) == 15
    hist = cal.confidence_histograms(confidence, correct, n_bins=15)
    np.testing.assert_array_equal(hist["n_correct"] + hist["n_wrong"], table["count"])
    assert hist["n_wrong"].sum() == (~correct).sum()


def test_per_class_calibration_groups_by_predicted_class():
    # rows: probabilities over classes a, b, c; columns = classes
    probs = np.array([[0.9, 0.05, 0.05],   # predicted a, true a: right
                      [0.6, 0.3, 0.1],     # predicted a, true b: wrong
                      [0.2, 0.7, 0.1],     # predicted b, true b: right
                      [0.1, 0.1, 0.8]])    # predicted c, true a: wrong
    labels = np.array([0, 1, 1, 0])
    table = cal.per_class_calibration(probs, labels, ["a", "b", "c"], n_bins=10).set_index("class")
    assert table.loc["a", "predicted"] == 2 and table.loc["a", "accuracy"] == 0.5
    # a: 0.9 right in bin (0.8, 0.9], 0.6 wrong in bin (0.5, 0.6] -> ECE = (0.1 + 0.6) / 2, MCE = 0.6
    assert table.loc["a", "ece"] == pytest.approx(0.35) and table.loc["a", "mce"] == pytest.approx(0.6)
    assert table.loc["b", "ece"] == pytest.approx(0.3) and table.loc["c", "ece"] == pytest.approx(0.8)
    empty = cal.per_class_calibration(probs[:1], labels[:1], ["a", "b", "c"])
    assert empty.set_index("class").loc["b", "predicted"] == 0 and np.isnan(empty["ece"].iloc[1])


def overconfident(n, k, *, temperature, seed):
    """Labels drawn from softmax(z) and logits z * temperature: the true temperature is known."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return z * temperature, labels


def test_fit_temperature_recovers_the_true_temperature_from_logits_or_probabilities():
    logits, labels = overconfident(6000, 5, temperature=2.5, seed=0)
    t_logits = cal.fit_temperature(logits, labels)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    t_probs = cal.fit_temperature(probs, labels)  # 'auto' sees probabilities and takes their log
    assert t_logits == pytest.approx(2.5, rel=0.1)
    assert t_probs == pytest.approx(t_logits, rel=1e-3)
    # it is the minimum of the likelihood: a grid around it does no better
    best = cal.negative_log_likelihood(logits, labels, temperature=t_logits)
    for t in (t_logits * 0.9, t_logits * 1.1, 1.0):
        assert cal.negative_log_likelihood(logits, labels, temperature=t) > best
    scaled = cal.apply_temperature(probs, t_probs)
    np.testing.assert_allclose(scaled.sum(1), 1.0, rtol=1e-9)
    np.testing.assert_array_equal(scaled.argmax(1), probs.argmax(1))  # the top class never changes
    np.testing.assert_allclose(cal.apply_temperature(probs, 1.0), probs, rtol=1e-9)
    conf_before = probs.max(1); correct = probs.argmax(1) == labels
    assert (cal.expected_calibration_error(scaled.max(1), correct)
            < cal.expected_calibration_error(conf_before, correct) / 3)


def test_bad_inputs_say_what_was_received():
    with pytest.raises(ValueError, match=r"equal length. Received shapes \(3,\) and \(2,\)"):
        cal.expected_calibration_error(np.ones(3) / 2, np.ones(2, bool))
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        cal.expected_calibration_error(np.array([0.5, 1.5]), np.ones(2, bool))
    with pytest.raises(ValueError, match=r"n_bins must be a positive whole number. Received: n_bins=0"):
        cal.max_calibration_error(np.ones(2) / 2, np.ones(2, bool), n_bins=0)
    with pytest.raises(ValueError, match=r"Unsupported inputs 'softmax'. The available choices are"):
        cal.fit_temperature(np.ones((2, 2)) / 2, np.array([0, 1]), inputs="softmax")
    with pytest.raises(ValueError, match=r"outside range\(2\)"):
        cal.fit_temperature(np.ones((2, 2)) / 2, np.array([0, 2]))
    with pytest.raises(ValueError, match=r"temperature must be positive. Received: 0"):
        cal.apply_temperature(np.ones((2, 2)) / 2, 0)


def write_overconfident_run(store, run_id, *, with_val: bool):
    logits, labels = overconfident(1500, 4, temperature=3.0, seed=1)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    splits = np.array(["train"] * 500 + (["val"] if with_val else ["train"]) * 500 + ["test"] * 500)
    return write_run(store, run_id, classes=["a", "b", "c", "d"], y_true=labels, probs=probs,
                     paths=[f"img/{i:04d}.png" for i in range(1500)], splits=splits)


@pytest.mark.parametrize("with_val", [True, False])
def test_calibration_kind_fits_on_val_or_half_the_test_split_and_says_so(tmp_path, with_val):
    run = write_overconfident_run(RunStore(tmp_path), "r", with_val=with_val)
    stored = derived.get(run, "calibration")
    s = stored.summary
    test = np.flatnonzero(run.eval_mask())
    conf = run.predictions["confidence"].to_numpy().astype(np.float64)
    correct = run.predictions["correct"].to_numpy()
    assert s["ece"] == pytest.approx(cal.expected_calibration_error(conf[test], correct[test]), abs=1e-12)
    assert s["mce"] == pytest.approx(cal.max_calibration_error(conf[test], correct[test]), abs=1e-12)
    if with_val:
        assert s["fit_on"].startswith("fitted on the 'val' split (500 images)")
        assert (s["n_fit"], s["n_held_out"]) == (500, 500)
        assert s["ece_before"] == pytest.approx(s["ece"])
    else:
        assert s["fit_on"].startswith("no validation split: fitted on a random half of 'test' (250 images)")
        assert (s["n_fit"], s["n_held_out"]) == (250, 250)
    assert s["temperature"] == pytest.approx(3.0, rel=0.3)
    assert s["ece_after"] < s["ece_before"] / 2 and s["nll_after"] < s["nll_before"]
    # tables: reliability and histograms raw and scaled, per class, confident errors ranked by scaled confidence
    rel = stored.table("reliability")
    assert set(rel["probabilities"]) == {"raw", "scaled"}
    assert rel.groupby("probabilities")["count"].sum().tolist() == [500, 500]
    assert stored.table("confidence_histogram")["n_wrong"].sum() == 2 * (~correct[test]).sum()
    assert list(stored.table("per_class")["class"]) == ["a", "b", "c", "d"]
    errors = stored.table("confident_errors")
    assert sorted(errors["row"]) == sorted(test[~correct[test]].tolist())
    assert errors["scaled_confidence"].is_monotonic_decreasing
    assert sorted(errors["rank_raw"]) == list(range(1, len(errors) + 1))
    scaled = stored.array("scaled_confidence")
    assert scaled.shape == (1500,) and (scaled[test] < conf[test] + 1e-6).all()  # T > 1 softens every row


def test_calibration_refuses_a_run_with_too_few_images(tmp_path):
    run = write_run(RunStore(tmp_path), "one", classes=["a", "b"], y_true=np.array([0]),
                    probs=np.array([[0.8, 0.2]]), paths=["x.png"], splits=np.array(["test"]))
    with pytest.raises(ValueError, match=r"calibration needs at least 2 evaluated images; run 'one' has 1"):
        derived.get(run, "calibration")
