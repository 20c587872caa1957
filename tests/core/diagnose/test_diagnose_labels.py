"""Label issues: scores against cleanlab's own, suggested labels, the kNN label distribution against
scikit-learn's neighbours, and the stored kind finding planted label flips in a run."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from core.diagnose import label_issues_csv
from core.diagnose import labels as li
from core.errors import UserError
from core.run import derived
from core.run.store import RunStore
from core.run.write import write_run


def random_case(n=400, k=5, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, 0.3), n)
    labels = rng.integers(0, k, n)
    return labels, probs


@pytest.mark.parametrize("method", li.METHODS)
def test_scores_are_one_minus_cleanlabs_label_quality(method):
    from cleanlab.rank import get_label_quality_scores

    for seed in range(3):
        labels, probs = random_case(seed=seed)
        expected = 1.0 - get_label_quality_scores(labels, probs, method=method)
        np.testing.assert_allclose(li.label_issue_scores(labels, probs, method=method), expected, atol=1e-9)


def test_hand_example_scores_and_suggested_labels():
    # rows = images, columns = classes 0..2
    probs = np.array([[0.7, 0.2, 0.1],    # given 0, model agrees
                      [0.1, 0.1, 0.8],    # given 0, model says 2
                      [0.05, 0.9, 0.05]])  # given 1, model agrees; runner-up is a tie, the first wins
    labels = np.array([0, 0, 1])
    np.testing.assert_allclose(li.label_issue_scores(labels, probs), [0.3, 0.9, 0.1])
    assert li.suggested_labels(labels, probs).tolist() == [1, 2, 0]
    labels, probs = random_case(seed=4)
    assert (li.suggested_labels(labels, probs) != labels).all()  # a suggestion is never the given label


def test_flags_are_cleanlabs_find_label_issues_and_catch_planted_flips():
    from cleanlab.filter import find_label_issues

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, 800)
    logits = rng.normal(0, 1, (800, 4)); logits[np.arange(800), truth] += 5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = truth.copy(); flipped = rng.choice(800, 40, replace=False)
    given[flipped] = (truth[flipped] + 1 + rng.integers(0, 3, 40)) % 4
    flags = li.flag_label_issues(given, probs)
    np.testing.assert_array_equal(flags, find_label_issues(given, probs, n_jobs=1))
    assert flags[flipped].mean() >= 0.85 and flags.sum() < 80
    assert not li.flag_label_issues(np.array([0]), np.array([[0.9, 0.1]])).any()


@pytest.mark.parametrize("seed", range(3))
def test_knn_label_distribution_matches_sklearn_neighbours(seed):
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(300, 8)); ref_labels = rng.integers(0, 3, 300)
    query_rows = rng.choice(300, 50, replace=False)
    got = li.knn_label_distribution(reference[query_rows], reference, ref_labels, n_classes=3, k=7,
                                    query_ids=query_rows, reference_ids=np.arange(300), batch_size=16)
    nn = NearestNeighbors(n_neighbors=8, metric="cosine", algorithm="brute").fit(reference)
    _, idx = nn.kneighbors(reference[query_rows])
    for row, (q, neighbours) in enumerate(zip(query_rows, idx)):
        neighbours = [j for j in neighbours if j != q][:7]  # the image itself is not its own neighbour
        expected = np.bincount(ref_labels[neighbours], minlength=3) / 7
        np.testing.assert_allclose(got[row], expected)


def test_bad_inputs_name_what_was_received():
    labels, probs = random_case(n=10)
    with pytest.raises(ValueError, match=r"Unsupported method 'margin'. The available methods are \['self_confidence'"):
        li.label_issue_scores(labels, probs, method="margin")
    with pytest.raises(ValueError, match=r"outside range\(5\): min=0, max=7"):
        li.label_issue_scores(np.r_[labels[:-1], 7], probs)
    with pytest.raises(ValueError, match=r"Received shapes \(9,\) and \(10, 5\)"):
        li.suggested_labels(labels[:9], probs)
    with pytest.raises(ValueError, match=r"Unsupported filter_by 'x'"):
        li.flag_label_issues(labels, probs, filter_by="x")
    with pytest.raises(ValueError, match=r"weight must be within \[0, 1\]. Received: weight=1.5"):
        li.mixed_probabilities(probs, probs, weight=1.5)
    with pytest.raises(ValueError, match=r"same D. Received shapes \(2, 3\) and \(4, 2\)"):
        li.knn_label_distribution(np.ones((2, 3)), np.ones((4, 2)), np.zeros(4), n_classes=2)


def flipped_run(store, run_id, *, n=2000, fraction=0.05, seed=0, embeddings=True, splits=None):
    """A run whose test labels are partly flipped; probabilities and embeddings follow the true classes."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 5, n)
    logits = rng.normal(0, 1, (n, 5)); logits[np.arange(n), truth] += rng.uniform(2.5, 6, n)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    splits = np.where(np.arange(n) % 2 == 0, "test", "train") if splits is None else splits
    test = np.flatnonzero(splits == "test") if "test" in splits else np.arange(n)
    flipped = np.sort(rng.choice(test, int(fraction * len(test)), replace=False))
    given = truth.copy(); given[flipped] = (truth[flipped] + rng.integers(1, 5, len(flipped))) % 5
    centres = rng.normal(0, 3, (5, 16))
    emb = centres[truth] + rng.normal(0, 1, (n, 16)) if embeddings else None
    run = write_run(store, run_id, classes=["a", "b", "c", "d", "e"], y_true=given, probs=probs,
                    paths=[f"{s}/{i:05d}.png" for i, s in enumerate(splits)], splits=splits, embeddings=emb)
    return run, truth, flipped


def test_the_kind_ranks_planted_flips_first_and_stores_aligned_arrays(tmp_path):
    run, truth, flipped = flipped_run(RunStore(tmp_path), "r")
    stored = derived.get(run, "label_issues")
    table = stored.table("label_issues")
    test = np.flatnonzero(run.eval_mask())
    assert list(table.columns) == li.TABLE_COLUMNS and len(table) == len(test) == 1000
    assert sorted(table["row"]) == test.tolist() and table["score"].is_monotonic_decreasing
    k = len(flipped)
    top = table["row"].to_numpy()[:k]
    assert np.isin(top, flipped).mean() >= 0.8  # precision at k
    found = table[table["row"].isin(flipped)].head(k)
    names = np.array(run.classes)
    assert (found["suggested_label"].to_numpy() == names[truth[found["row"].to_numpy()]]).mean() >= 0.9
    score, suggested = stored.array("score"), stored.array("suggested")
    assert np.isnan(score[run.predictions["split"].to_numpy() == "train"]).all()
    np.testing.assert_allclose(score[table["row"].to_numpy()], table["score"].to_numpy(), rtol=1e-6)
    assert (names[suggested[table["row"].to_numpy()]] == table["suggested_label"].to_numpy()).all()
    assert stored.summary["n_scored"] == 1000 and stored.summary["n_issues"] == int(table["is_issue"].sum())
    assert stored.summary["top_pairs"] and stored.summary["notes"] == []
    csv = label_issues_csv(run)
    assert list(csv.columns) == ["path", "given_label", "suggested_label", "score"]
    assert csv["path"].tolist() == table["path"].tolist()
    assert len(label_issues_csv(run, issues_only=True)) == stored.summary["n_issues"]


def test_the_ranking_reads_the_label_error_classifier_and_says_when_it_cannot(tmp_path):
    store = RunStore(tmp_path)
    run, truth, flipped = flipped_run(store, "r")
    rows = np.flatnonzero(run.eval_mask())
    read = {}
    for rank_by in ("both", "model"):  # one stored result per kind: read each before computing the other
        stored = derived.get(run, "label_issues", {"rank_by": rank_by})
        read[rank_by] = (np.array(stored.array("score")[rows]), stored.summary["ranked_by"],
                         stored.table("label_issues").set_index("row").loc[rows, "is_issue"])
    log_odds = derived.get(run, "causes").array("label_score")[rows].astype(np.float64)
    np.testing.assert_allclose(read["both"][0], 1 / (1 + np.exp(-log_odds)), rtol=1e-5)
    given = run.predictions["true"].to_numpy()[rows]
    np.testing.assert_allclose(read["model"][0], li.label_issue_scores(given, run.probs[rows]), rtol=1e-5)
    assert read["both"][1] == "both" and read["model"][1] == "model"
    assert read["both"][2].equals(read["model"][2])  # the ranking changes, the flag does not
    noemb, _, _ = flipped_run(store, "noemb", embeddings=False)
    summary = derived.get(noemb, "label_issues").summary
    assert summary["ranked_by"] == "model"
    assert any(n.startswith("Ranked by the model's probabilities alone (cleanlab's self_confidence)")
               for n in summary["notes"])
    with pytest.raises(UserError, match="unsupported rank_by 'pixels'"):
        derived.get(run, "label_issues", {"rank_by": "pixels"})


def test_neighbours_come_from_the_training_images_and_are_mixed_in(tmp_path):
    run, truth, flipped = flipped_run(RunStore(tmp_path), "r")
    stored = derived.get(run, "label_issues", {"knn_weight": 0.5, "k": 5})
    table = stored.table("label_issues")
    emb = np.asarray(run.embeddings)
    train = np.flatnonzero(~run.eval_mask())
    expected = li.knn_label_distribution(emb[table["row"].to_numpy()], emb[train],
                                         run.predictions["true"].to_numpy()[train], n_classes=5, k=5)
    given = run.predictions["true"].to_numpy()[table["row"].to_numpy()]
    np.testing.assert_allclose(table["neighbour_agreement"], expected[np.arange(len(table)), given])
    assert stored.summary["knn_weight"] == 0.5 and stored.summary["n_reference"] == len(train)
    assert np.isin(table["row"].to_numpy()[:len(flipped)], flipped).mean() >= 0.8


def test_without_embeddings_or_training_images_the_model_alone_scores_and_says_why(tmp_path):
    store = RunStore(tmp_path)
    run, _, _ = flipped_run(store, "noemb", embeddings=False)
    stored = derived.get(run, "label_issues", {"knn_weight": 0.5})
    assert stored.summary["knn_weight"] == 0.0 and "no embeddings" in stored.summary["notes"][0]
    assert stored.table("label_issues")["neighbour_agreement"].isna().all()
    run, _, _ = flipped_run(store, "all", splits=np.full(2000, "all"))
    notes = derived.get(run, "label_issues", {"knn_weight": 0.5}).summary["notes"]
    assert any("every image" in n for n in notes) and any("no images outside" in n for n in notes)


def test_bad_options_are_refused_before_anything_is_computed(tmp_path, monkeypatch):
    run, _, _ = flipped_run(RunStore(tmp_path), "opts")
    monkeypatch.setattr(li, "label_issue_scores", lambda *a, **k: pytest.fail("computed despite a bad option"))
    for options, message in (({"knn_weight": 1.5}, r"knn_weight must be a number within \[0, 1\]. Received: 1.5"),
                             ({"k": 0}, "k must be an integer of at least 1. Received: 0"),
                             ({"method": "vibes"}, "unsupported method 'vibes'"),
                             ({"filter_by": "x"}, "unsupported filter_by 'x'")):
        with pytest.raises(UserError, match=message):
            derived.get(run, "label_issues", options)
