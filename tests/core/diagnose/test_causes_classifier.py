"""The label-error classifier of ``core.diagnose.causes``: its logistic regression against scikit-learn's,
the wrong-label share (EM), the pixel features' principal axes against an SVD, a run with a val split
and thumbnails (planted flips called label, planted model errors called model), and the Diagnose
ranking that leads with the model's errors."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from core.diagnose import causes as ca
from core.diagnose.findings import Card, rank_cards
from core.errors import UserError
from core.run import derived
from core.run.store import RunStore
from core.run.write import write_run

CLASSES = ["ant", "bee", "cat", "dog"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_model_matches_sklearns_balanced_logistic_regression(seed):
    rng = np.random.default_rng(seed)
    flips = rng.normal([1.0, 0.5, 2.0], [1.0, 2.0, 0.5], (300, 3))
    errors = rng.normal([-0.5, 0.0, 1.0], [1.0, 1.0, 1.0], (40, 3))
    model = ca.fit_label_model(flips, errors, l2=1e-3)
    x = np.vstack([flips, errors])
    t = np.r_[np.ones(300), np.zeros(40)]
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    # sklearn's penalty 1/(2C)|w|^2 against the summed weighted loss: C = 1 / (l2 * n)
    ref = LogisticRegression(class_weight="balanced", C=1 / (1e-3 * len(x)), tol=1e-10, max_iter=10000).fit(z, t)
    np.testing.assert_allclose(model.coef, ref.coef_[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.probability(x), ref.predict_proba(z)[:, 1], atol=1e-5)


def test_label_model_needs_both_classes():
    with pytest.raises(UserError, match="Received 5 flips and 0 errors"):
        ca.fit_label_model(np.ones((5, 2)), np.ones((0, 2)))


def test_wrong_label_share_and_posterior():
    # 10,000 evaluated images, 400 of them wrongly labelled (the model errs on each), the model errs on 5%
    # of the 9,600 right ones: 480 + 400 errors, 400 / 880 wrong labels
    assert ca.wrong_label_share(880, 10000, 0.05) == pytest.approx(400 / 880)
    assert ca.wrong_label_share(400, 10000, 0.05) == 0.01  # more own errors expected than seen: the floor
    assert ca.wrong_label_share(0, 10, 0.05) == 0.5
    rng = np.random.default_rng(0)
    truth = rng.random(20000) < 0.3  # 30% wrong labels
    score = np.where(truth, rng.normal(1.0, 1, truth.size), rng.normal(-1.0, 1, truth.size))
    balanced = 1 / (1 + np.exp(-2.0 * score))  # the exact posterior at prior 1/2 for these two normals
    exact = 0.3 * np.exp(-(score - 1) ** 2 / 2) / (0.3 * np.exp(-(score - 1) ** 2 / 2)
                                                  + 0.7 * np.exp(-(score + 1) ** 2 / 2))
    np.testing.assert_allclose(ca.posterior(balanced, 0.3), exact, atol=1e-9)


def test_principal_axes_span_the_svds():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(500, 40)) * np.linspace(5, 0.1, 40)
    data -= data.mean(axis=0)
    axes = ca._principal_axes(data, 5, seed=0)
    exact = np.linalg.svd(data, full_matrices=False)[2][:5].T
    # a randomised range finder: the axes agree with the exact ones to a few hundredths
    np.testing.assert_allclose(np.abs(axes.T @ exact), np.eye(5), atol=0.05)
    np.testing.assert_allclose(np.linalg.norm(axes, axis=0), 1.0, atol=1e-9)


def val_run(store, *, n_train=150, n_val=80, n_test=80, pixels=True, seed=0, train_errors=0.0):
    """4 classes; a clean train and val split and a test split with 10% flipped labels (the model says
    the true class) and 8% model errors (predicted two classes away at 0.9, the image like its true
    class). Embeddings around one centre per true class, pixels one template per true class plus noise.
    Val has its own model errors (labels right). Returns run, truth, flipped rows, test model-error rows."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    truth = np.concatenate([np.repeat(np.arange(k), n) for n in sizes.values()])
    splits = np.concatenate([np.full(k * n, s) for s, n in sizes.items()])
    test, val = np.flatnonzero(splits == "test"), np.flatnonzero(splits == "val")
    given = truth.copy()
    flipped = np.sort(rng.choice(test, int(0.1 * len(test)), replace=False))
    given[flipped] = (truth[flipped] + 1) % k
    others = np.setdiff1d(test, flipped)
    model_errors = np.sort(rng.choice(others, int(0.08 * len(others)), replace=False))
    val_errors = np.sort(rng.choice(val, int(0.1 * len(val)), replace=False))
    train = np.flatnonzero(splits == "train")
    train_wrong = np.sort(rng.choice(train, int(train_errors * len(train)), replace=False))
    predicted = truth.copy()
    wrong = np.r_[model_errors, val_errors, train_wrong]
    predicted[wrong] = (truth[wrong] + 2) % k
    probs = np.full((len(truth), k), 0.02)
    probs[np.arange(len(truth)), predicted] = rng.uniform(0.6, 1.0, len(truth))
    probs[wrong, predicted[wrong]] = 0.9
    probs[wrong, truth[wrong]] = 0.1
    probs /= probs.sum(axis=1, keepdims=True)
    centres = rng.normal(0, 1, (k, 16)) * 2
    emb = (centres[truth] + rng.normal(0, 1, (len(truth), 16))).astype(np.float32)
    templates = rng.integers(0, 256, (k, 12, 12))
    images = np.clip(templates[truth] + rng.normal(0, 40, (len(truth), 12, 12)), 0, 255).astype(np.uint8)
    run = write_run(store, "v", classes=CLASSES, y_true=given, probs=probs,
                    paths=[f"{s}/{i:05d}.png" for i, s in enumerate(splits)], splits=splits, embeddings=emb,
                    images=images if pixels else None,
                    data={"name": "planted", "root": None, "images_in_run": pixels})
    return run, truth, flipped, model_errors


def test_with_a_val_split_and_thumbnails_the_classifier_decides_label_and_model(tmp_path):
    run, truth, flipped, model_errors = val_run(RunStore(tmp_path))
    first = ca.get_causes(run)
    assert "neighbours in pixels" in first.summary["not_assessed_line"] and not first.summary["pixels"]
    derived.get(run, "image_scan")
    stored = ca.get_causes(run)  # recomputed: the thumbnails appeared
    s = stored.summary
    assert s["pixels"] and "neighbours in pixels" not in s["not_assessed_line"]
    lc = s["label_classifier"]
    assert lc["source"] == "val" and lc["n_errors"] == 32 and lc["n_flips"] == 4 * 80 - 32
    assert set(lc["weights"]) == set(ca.FEATURE_NAMES) and lc["own_error_rate"] == pytest.approx(32 / 320)
    n_err = int((run.eval_mask() & ~run.predictions["correct"].to_numpy()).sum())
    assert lc["wrong_label_share"] == pytest.approx(ca.wrong_label_share(n_err, 320, 0.1))
    by_row = stored.table("causes").set_index("row")
    assert (by_row.loc[flipped, "cause"] == "label").mean() >= 0.9
    assert (by_row.loc[model_errors, "cause"] == "label").mean() <= 0.1
    assert (by_row.loc[model_errors, "cause"] == "model").mean() >= 0.8
    labelled = flipped[by_row.loc[flipped, "cause"].to_numpy() == "label"]
    names = np.array(CLASSES, dtype=object)
    assert (by_row.loc[labelled, "suggested_label"].to_numpy() == names[truth[labelled]]).all()
    assert "probability of a wrong label" in by_row.loc[labelled[0], "evidence"]
    assert all(ca.IN_SAMPLE_NOTE not in card.notes for card in ca.causes_findings(run, stored).cards)
    assert "by pixels" in by_row.loc[labelled[0], "evidence"]
    assert "in embedding space" in by_row.loc[model_errors[0], "evidence"]
    probability = stored.array("label_probability")
    assert np.isfinite(probability[run.eval_mask()]).all() and np.isnan(probability[~run.eval_mask()]).all()
    # label_issues reads the same result: its second signal is the label cause, no second neighbour search
    issues = derived.get(run, "label_issues").table("label_issues").set_index("row")
    errors = by_row.index.to_numpy()
    flagged = issues.loc[errors, "second_signal"].to_numpy()
    assert (flagged == (by_row["cause"] == "label").to_numpy()).all()


def test_without_val_the_in_sample_error_rate_only_bounds_the_wrong_label_share(tmp_path):
    # train/ and test/ only: the classifier learns on train, where the model errs on 4% (images it learnt from)
    # against 8% of the right-labelled test images; the share from the train rate (an upper bound) is far above
    # the true one, the share the classifier's own probabilities imply is used where lower
    run, truth, flipped, model_errors = val_run(RunStore(tmp_path), n_train=300, n_val=0, n_test=150,
                                                train_errors=0.04)
    derived.get(run, "image_scan")
    stored = ca.get_causes(run)
    lc = stored.summary["label_classifier"]
    assert lc["source"] == "train" and lc["in_sample"]
    n_err = int((run.eval_mask() & ~run.predictions["correct"].to_numpy()).sum())
    true_share = len(flipped) / n_err
    assert lc["upper_bound"] == pytest.approx(ca.wrong_label_share(n_err, 600, lc["own_error_rate"]))
    assert lc["upper_bound"] - true_share > 0.2  # the in-sample rate's share is far off here
    assert abs(lc["wrong_label_share"] - true_share) < abs(lc["upper_bound"] - true_share) / 2
    by_row = stored.table("causes").set_index("row")
    # in-sample, the neighbours' rule must agree too: it lets 90% of images like the predicted class through
    assert (by_row.loc[flipped, "cause"] == "label").mean() >= 0.75
    assert (by_row.loc[model_errors, "cause"] == "label").mean() <= 0.1
    evidence = by_row.loc[flipped[by_row.loc[flipped, "cause"].to_numpy() == "label"][0], "evidence"]
    assert "images it learnt from" in evidence and "of the images the model rightly calls" in evidence
    cards = ca.causes_findings(run, stored).cards
    said = {card.key.removeprefix("causes_") for card in cards if ca.IN_SAMPLE_NOTE in card.notes}
    assert said == {"label", "model"}  # the Diagnose page says why on the cards it bears on
    assert ca.mixture_share(np.r_[np.full(300, 0.99), np.full(700, 0.01)]) == pytest.approx(0.3, abs=0.01)


def test_ranking_leads_with_the_model_errors_whatever_their_count():
    correct = np.zeros(10, bool)
    mask = np.ones(10, bool)
    big = Card("causes_ambiguous", "causes", "Ambiguous", "", np.arange(6), "")
    other = Card("label_issues", "label_issues", "Labels", "", np.arange(3), "")
    model = Card("causes_model", "causes", "Model", "", np.array([8, 9]), "")
    ranked = rank_cards([big, other, model], correct, mask, kind_order=("label_issues", "causes"))
    assert [c.key for c, _ in ranked] == ["causes_model", "causes_ambiguous", "label_issues"]
    assert [n for _, n in ranked] == [2, 6, 3]


def test_the_neighbours_table_holds_both_spaces_when_there_are_thumbnails(tmp_path):
    run, *_ = val_run(RunStore(tmp_path), n_train=60, n_val=60, n_test=40)
    derived.get(run, "image_scan")
    stored = ca.get_causes(run)
    nb = stored.table("neighbours")
    errors = stored.table("causes")["row"]
    assert set(nb["space"]) == {"embedding", "pixels"}
    assert (nb.groupby(["row", "space"]).size() == 10).all() and set(nb["row"]) == set(errors)
    assert (run.predictions["split"].to_numpy()[nb["neighbour_row"]] == "train").all()
