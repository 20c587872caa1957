"""Error causes: neighbour distances against scikit-learn's, the kind's causes on a run with planted
label flips and planted model errors, runs without embeddings or a train split, copies, label issues
that need a second signal, the findings and the CLI."""

import re
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.neighbors import NearestNeighbors

from core.analysis.neighbours import nearest_reference
from core.cli import main
from core.diagnose import causes as ca
from core.diagnose import run_diagnoses
from core.errors import UserError
from core.run import derived
from core.run.store import RunStore
from core.run.write import write_run

CLASSES = ["ant", "bee", "cat", "dog"]


def planted_run(store, run_id="r", *, n_train=300, n_test=200, embeddings=True, splits_kind="train-test",
                images=None, seed=0):
    """4 classes; embeddings around one centre per *true* class. Test images: 10% flipped to the next
    class (the model predicts their true class: label errors); 8% of the others predicted two classes
    away at 0.9 though they sit among their own class (model errors). Returns run, truth, flipped rows,
    model-error rows."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    truth = np.concatenate([np.repeat(np.arange(k), n_train), np.repeat(np.arange(k), n_test)])
    splits = np.array(["train"] * (k * n_train) + ["test"] * (k * n_test))
    if splits_kind == "all":
        splits[:] = "all"
    test = np.flatnonzero(splits != "train") if splits_kind != "all" else np.arange(len(truth))
    test = test[len(test) // 2:] if splits_kind == "all" else test
    given = truth.copy()
    flipped = np.sort(rng.choice(test, int(0.1 * len(test)), replace=False))
    given[flipped] = (truth[flipped] + 1) % k
    others = np.setdiff1d(test, flipped)
    model_errors = np.sort(rng.choice(others, int(0.08 * len(others)), replace=False))
    predicted = truth.copy()
    predicted[model_errors] = (truth[model_errors] + 2) % k
    probs = np.full((len(truth), k), 0.02)
    probs[np.arange(len(truth)), predicted] = 1.0
    probs[model_errors, predicted[model_errors]] = 0.9
    probs[model_errors, truth[model_errors]] = 0.1
    probs /= probs.sum(axis=1, keepdims=True)
    centres = rng.normal(0, 1, (k, 16)) * 3
    emb = (centres[truth] + rng.normal(0, 1, (len(truth), 16))).astype(np.float32) if embeddings else None
    run = write_run(store, run_id, classes=CLASSES, y_true=given, probs=probs,
                    paths=[f"{s}/{i:05d}.png" for i, s in enumerate(splits)], splits=splits, embeddings=emb,
                    images=images, data={"name": "planted", "root": None, "images_in_run": images is not None})
    return run, truth, flipped, model_errors


@pytest.mark.parametrize("seed", [0, 1])
def test_class_distances_and_nearest_match_sklearn_neighbours(seed):
    rng = np.random.default_rng(seed)
    query, reference = rng.normal(size=(30, 6)), rng.normal(size=(80, 6))
    labels = rng.integers(0, 3, 80)
    distances = ca.class_neighbour_distances(query, reference, labels, n_classes=4, k=5)
    for c in range(3):
        nn = NearestNeighbors(n_neighbors=5, metric="cosine").fit(reference[labels == c])
        expected, _ = nn.kneighbors(query)
        np.testing.assert_allclose(distances[:, c], expected.mean(axis=1), atol=1e-5)
    assert np.isinf(distances[:, 3]).all()  # a class without reference images
    nearest, near_distance = nearest_reference(query, reference, k=5)
    expected_d, expected_i = NearestNeighbors(n_neighbors=5, metric="cosine").fit(reference).kneighbors(query)
    np.testing.assert_allclose(near_distance, expected_d, atol=1e-5)
    assert (nearest == expected_i).mean() > 0.98  # ties aside
    # leave-one-out: the query itself (same id) is never its own neighbour
    ids = np.arange(80)
    loo = ca.class_neighbour_distances(reference, reference, labels, n_classes=3, k=3, query_ids=ids,
                                       reference_ids=ids)
    for c in range(3):
        members = np.flatnonzero(labels == c)
        d, _ = NearestNeighbors(n_neighbors=4, metric="cosine").fit(reference[members]).kneighbors(reference)
        own = labels == c
        np.testing.assert_allclose(loo[own, c], d[own, 1:].mean(axis=1), atol=1e-5)
        np.testing.assert_allclose(loo[~own, c], d[~own, :3].mean(axis=1), atol=1e-5)
    near_loo, _ = nearest_reference(reference, reference, k=3, query_ids=ids, reference_ids=ids)
    assert not (near_loo == ids[:, None]).any()


def test_bad_inputs_name_what_was_received(tmp_path):
    with pytest.raises(ValueError, match=r"Received shapes \(3, 2\) and \(4, 5\)"):
        ca.class_neighbour_distances(np.zeros((3, 2)), np.zeros((4, 5)), np.zeros(4, int), n_classes=2)
    with pytest.raises(ValueError, match="k must be at least 1. Received: k=0"):
        nearest_reference(np.zeros((3, 2)), np.zeros((4, 2)), k=0)
    run, *_ = planted_run(RunStore(tmp_path), n_train=20, n_test=10)
    with pytest.raises(UserError, match="label_level must be a number within \\(0, 1\\). Received: 1.5"):
        derived.get(run, "causes", {"label_level": 1.5})
    with pytest.raises(UserError, match="k must be an integer of at least 1. Received: 0"):
        derived.get(run, "causes", {"k": 0})


def test_planted_flips_are_label_errors_and_planted_model_errors_are_the_models(tmp_path):
    run, truth, flipped, model_errors = planted_run(RunStore(tmp_path))
    stored = derived.get(run, "causes")
    table = stored.table("causes")
    preds = run.predictions
    errors = np.flatnonzero(run.eval_mask() & ~preds["correct"].to_numpy())
    assert list(table.columns) == ca.TABLE_COLUMNS
    assert sorted(table["row"]) == errors.tolist() and table["cause"].isin(ca.CAUSES).all()  # one cause each
    assert table["model_confidence"].is_monotonic_decreasing  # the model's most confident errors first
    by_row = table.set_index("row")
    flip_causes = by_row.loc[flipped, "cause"]
    assert (flip_causes == "label").mean() >= 0.9
    names = np.array(CLASSES, dtype=object)
    labelled = flipped[flip_causes.to_numpy() == "label"]
    assert (by_row.loc[labelled, "suggested_label"].to_numpy() == names[truth[labelled]]).all()
    own = by_row.loc[model_errors, "cause"]
    assert (own == "label").mean() <= 0.1 and (own == "model").mean() >= 0.8
    assert (by_row.loc[by_row["cause"] != "label", "suggested_label"] == "").all()
    assert by_row["confidence"].between(0, 1).all() and by_row["evidence"].str.len().gt(20).all()
    sample = by_row.loc[model_errors[0], "evidence"]
    assert "nearest training images" in sample and "the model says" in sample
    # the words agree with the figures: "closer than" where the given class is nearer at three decimals
    for text in by_row.loc[by_row["cause"] == "model", "evidence"]:
        dy, dp = map(float, re.search(r"\(mean distance ([\d.]+) vs ([\d.]+)\)", text).groups())
        assert ("are closer than its nearest" in text) == (dy < dp), text
    # arrays aligned with the run's rows
    cause = stored.array("cause")
    assert (cause[errors] >= 0).all() and (np.delete(cause, errors) == -1).all()
    assert np.array(ca.CAUSES)[cause[table["row"]]].tolist() == table["cause"].tolist()
    assert np.isfinite(stored.array("label_score")[run.eval_mask()]).all()
    s = stored.summary
    assert s["reference"] == "train" and s["n_errors"] == len(errors) and sum(s["counts"].values()) == len(errors)
    assert "copy" in s["not_assessed_line"] and "embeddings" not in s["not_assessed_line"]
    mix = ca.pair_mix_lines(s)
    assert mix and " → " in mix[0] and "label" in " ".join(mix)
    # neighbours: the k nearest training images of every error
    nb = stored.table("neighbours")
    assert set(nb["row"]) == set(errors) and (nb.groupby("row").size() == 10).all()
    assert (preds["split"].to_numpy()[nb["neighbour_row"]] == "train").all()
    # the ranking: label_score puts the flips above the model's own errors
    from sklearn.metrics import roc_auc_score

    is_flip = np.isin(table["row"], flipped)
    assert roc_auc_score(is_flip, table["label_score"]) > 0.95


def test_a_class_without_reference_images_leaves_its_errors_undetermined_and_says_so(tmp_path):
    """A class no training image carries (a new class in test, or a small class sampled out) has infinite
    neighbour distances: its errors are not decided by neighbours, and nothing infinite reaches the
    label-error classifier (it used to, as NaN weights and a RuntimeWarning)."""
    run, truth, flipped, model_errors = planted_run(RunStore(tmp_path / "probe"))
    given = run.predictions["true"].to_numpy().copy()
    splits = run.predictions["split"].astype(str).to_numpy().copy()
    dog = CLASSES.index("dog")
    splits[(splits == "train") & (given == dog)] = "unused"  # no training image of dog
    run = write_run(RunStore(tmp_path / "store"), "r", classes=CLASSES, y_true=given, probs=run.probs,
                    paths=run.predictions["path"].tolist(), splits=splits, embeddings=np.asarray(run.embeddings),
                    data={"name": "planted", "root": None, "images_in_run": False})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        stored = derived.get(run, "causes")
    table = stored.table("causes").set_index("row")
    involves_dog = (table["given_label"] == "dog") | (table["predicted_label"] == "dog")
    assert involves_dog.any() and (~involves_dog).any()
    undetermined = table.loc[involves_dog & (table["cause"] == "undetermined"), "evidence"]
    assert len(undetermined) and undetermined.str.contains("no training images of").all()
    assert table.loc[involves_dog, "cause"].isin(["undetermined", "ambiguous", "copy"]).all()
    assert (table.loc[~involves_dog, "cause"] != "undetermined").all()
    assert "has no training image to compare with (dog)" in stored.summary["not_assessed_line"]
    weights = stored.summary["label_classifier"].get("weights", {})
    assert all(np.isfinite(w) for w in weights.values())
    assert np.isfinite(stored.array("label_score")[run.eval_mask()]).all()


def test_findings_one_card_per_cause_columns_caption_and_filter(tmp_path):
    run, *_ = planted_run(RunStore(tmp_path))
    stored = derived.get(run, "causes")
    findings = derived.findings(run, "causes")
    table = stored.table("causes")
    counts = table["cause"].value_counts()
    assert [c.key for c in findings.cards][0] == "causes_model"  # the analyst's errors lead
    assert {c.key: len(c.rows) for c in findings.cards} == {f"causes_{k}": v for k, v in counts.items()}
    for card in findings.cards:
        assert set(table.loc[table["row"].isin(card.rows), "cause"]) == {card.key.removeprefix("causes_")}
    cols = findings.columns
    assert len(cols) == run.n_images and (cols.loc[table["row"], "cause"].to_numpy() == table["cause"]).all()
    assert (cols.drop(index=table["row"])["cause"] == "").all()
    row = cols.loc[int(table["row"].iloc[0])]
    line = findings.captions[0].template.format(**row.to_dict())
    assert line.startswith(ca.CAPTION_WORDS[table["cause"].iloc[0]] + ": ") and table["evidence"].iloc[0] in line
    assert findings.filters[0].type == "choices" and findings.filters[0].column == "cause"


def test_without_embeddings_causes_come_from_what_the_run_has_and_one_line_says_what_not(tmp_path):
    run, *_ = planted_run(RunStore(tmp_path), embeddings=False)
    stored = derived.get(run, "causes")
    table = stored.table("causes")
    assert len(table) == stored.summary["n_errors"] > 0
    assert set(table["cause"]) <= {"ambiguous", "undetermined"}
    line = stored.summary["not_assessed_line"]
    assert "\n" not in line and "no embeddings" in line and line.startswith("Not assessed:")
    assert stored.table("neighbours").empty and stored.summary["reference"] is None


def test_without_a_train_split_neighbours_are_the_other_evaluated_images(tmp_path):
    run, truth, flipped, _ = planted_run(RunStore(tmp_path), splits_kind="all")
    stored = derived.get(run, "causes")
    assert stored.summary["reference"] == "leave-one-out"
    nb = stored.table("neighbours")
    assert not (nb["row"] == nb["neighbour_row"]).any()
    by_row = stored.table("causes").set_index("row")
    assert (by_row.loc[flipped, "cause"] == "label").mean() >= 0.8
    assert "other evaluated images" in by_row.loc[flipped[0], "evidence"]


def test_a_train_copy_with_another_label_is_a_copy(tmp_path):
    n_train, n_test = 60, 40
    _, truth, flipped, _ = planted_run(RunStore(tmp_path / "probe"), n_train=n_train, n_test=n_test)
    row = int(flipped[0])  # a flipped test image the model gets "wrong" (it says the true class)
    source = int(np.flatnonzero(truth[:4 * n_train] == truth[row])[0])  # a train image of its true class
    images = np.random.default_rng(3).integers(0, 256, (4 * (n_train + n_test), 24, 24), dtype=np.uint8)
    images[row] = images[source]  # pixel for pixel: the train image's label differs from the given one
    run, *_ = planted_run(RunStore(tmp_path / "store"), n_train=n_train, n_test=n_test, images=images)
    assert not run.predictions["correct"].iloc[row]
    results = run_diagnoses(run, kinds=("duplicates", "causes"))
    assert not results.skipped
    by_row = results["causes"].table("causes").set_index("row")
    assert by_row.loc[row, "cause"] == "copy" and by_row.loc[row, "confidence"] > 0.9
    evidence = by_row.loc[row, "evidence"]
    assert f"train/{source:05d}.png" in evidence and "the model repeats it" in evidence
    assert (by_row.drop(index=row)["cause"] != "copy").all()
    assert "copy" not in results["causes"].summary["not_assessed_line"]
    assert "edited" not in evidence  # identical pixels


def test_an_edited_train_copy_says_how_it_was_edited(tmp_path):
    n_train, n_test = 60, 40
    _, truth, flipped, _ = planted_run(RunStore(tmp_path / "probe"), n_train=n_train, n_test=n_test)
    row = int(flipped[0])
    source = int(np.flatnonzero(truth[:4 * n_train] == truth[row])[0])
    rng = np.random.default_rng(3)
    smooth = [cv2.GaussianBlur(rng.integers(0, 256, (32, 32)).astype(np.float32), (0, 0), 2.0)
              for _ in range(4 * (n_train + n_test))]
    images = np.stack([cv2.normalize(im, None, 0, 255, cv2.NORM_MINMAX) for im in smooth]).astype(np.uint8)
    images[row] = images[source][:, ::-1]  # the training image mirrored
    run, *_ = planted_run(RunStore(tmp_path / "store"), n_train=n_train, n_test=n_test, images=images)
    results = run_diagnoses(run, kinds=("duplicates", "causes"))
    assert not results.skipped
    by_row = results["causes"].table("causes").set_index("row")
    assert by_row.loc[row, "cause"] == "copy"
    assert "edited: flipped left-right" in by_row.loc[row, "evidence"]


def test_causes_are_recomputed_when_duplicates_appear(tmp_path):
    run, *_ = planted_run(RunStore(tmp_path), n_train=40, n_test=30,
                          images=np.random.default_rng(0).integers(0, 256, (280, 16, 16), dtype=np.uint8))
    first = ca.get_causes(run)
    assert first.summary["inputs"]["duplicates"] is False
    assert ca.get_causes(run).info == run.derived_info("causes")  # current: read back, not recomputed
    derived.get(run, "duplicates")
    again = ca.get_causes(run)
    assert again.summary["inputs"]["duplicates"] is True and "copy" not in again.summary["not_assessed_line"]
    # duplicates computed again (a new version of the kind finds other pairs): causes, and label issues, which
    # read causes, are stale until recomputed from it
    derived.get(run, "label_issues")
    assert derived.status(run, "causes") == derived.status(run, "label_issues") == "current"
    derived.get(run, "duplicates", force=True)
    assert derived.status(run, "causes") == derived.status(run, "label_issues") == "stale"
    derived.get(run, "label_issues")
    assert derived.status(run, "causes") == derived.status(run, "label_issues") == "current"


def test_a_new_image_scan_makes_every_result_read_from_it_stale_down_the_chain(tmp_path):
    # the thumbnails feed image properties (then error slices), duplicates and causes (then label issues): a
    # scan computed again, as after an upgrade of its kind, must not leave those reading the old one "current"
    run, *_ = planted_run(RunStore(tmp_path), n_train=40, n_test=30,
                          images=np.random.default_rng(0).integers(0, 256, (280, 16, 16), dtype=np.uint8))
    chain = ("image_properties", "error_slices", "duplicates", "causes", "label_issues")
    results = run_diagnoses(run, kinds=chain)
    assert not results.skipped
    assert [derived.status(run, k) for k in ("image_scan", *chain)] == ["current"] * 6
    derived.get(run, "image_scan", force=True)
    assert [derived.status(run, k) for k in chain] == ["stale"] * 5
    run_diagnoses(run, kinds=chain)
    assert [derived.status(run, k) for k in chain] == ["current"] * 5
    scan = run.derived_info("image_scan").folder
    assert run.derived_info("duplicates").inputs == {"image_scan": scan}
    assert run.derived_info("causes").inputs["image_scan"] == scan


def test_a_nearly_blank_picture_the_model_gets_wrong_is_ambiguous_for_little_information(tmp_path):
    # an empty ground with a dot at its edge, under film grain: its contrast and sharpness are ordinary (the grain),
    # so only the share of the picture that differs from its border's colour tells it holds nothing to classify
    from tests.core.diagnose.test_properties import _scene

    rng = np.random.default_rng(4)
    n_train, n_test = 60, 40
    images = np.stack([_scene(rng) for _ in range(4 * (n_train + n_test))])
    run, truth, flipped, model_errors = planted_run(RunStore(tmp_path / "probe"), n_train=n_train, n_test=n_test)
    blank = model_errors[:6]
    images[blank] = np.stack([_scene(rng, blank=True, grain=8.0) for _ in blank])  # grain of middling strength
    run, *_ = planted_run(RunStore(tmp_path / "store"), n_train=n_train, n_test=n_test, images=images)
    results = run_diagnoses(run, kinds=("image_properties", "causes"))
    assert not results.skipped
    table = results["causes"].table("causes").set_index("row")
    assert (table.loc[blank, "cause"] == "ambiguous").all()
    assert table.loc[blank, "evidence"].str.startswith("nearly uniform (only ").all()
    others = table.drop(index=blank)
    assert others["evidence"].str.contains("nearly uniform").sum() <= 1  # the 1st percentile of the references
    assert (others.loc[np.intersect1d(others.index, model_errors), "cause"] == "model").mean() > 0.8


def test_an_ambiguous_error_nearest_a_third_class_names_it(tmp_path):
    # model errors moved among a third class in embeddings (neither their label nor the prediction): those called
    # ambiguous say which class they sit among, not only that they are between the two
    run, truth, flipped, model_errors = planted_run(RunStore(tmp_path / "probe"), n_train=80, n_test=60)
    emb = np.asarray(run.embeddings).copy()
    train = np.flatnonzero(run.predictions["split"].to_numpy() == "train")
    moved = model_errors[: len(model_errors) // 2]
    rng = np.random.default_rng(1)
    for row in moved:  # predicted is truth + 2
        third = (truth[row] + 1) % len(CLASSES)
        emb[row] = emb[train[truth[train] == third]].mean(axis=0) + rng.normal(0, 0.3, emb.shape[1])
    run = write_run(RunStore(tmp_path / "store"), "r", classes=CLASSES, y_true=run.predictions["true"].to_numpy(),
                    probs=run.probs, paths=run.predictions["path"].tolist(),
                    splits=run.predictions["split"].to_numpy(), embeddings=emb.astype(np.float32))
    table = ca.get_causes(run).table("causes").set_index("row")
    among = table.loc[moved][table.loc[moved, "cause"] == "ambiguous"]
    assert len(among) >= len(moved) // 2
    for row, evidence in among["evidence"].items():
        assert f": nearest a third class, {CLASSES[(truth[row] + 1) % len(CLASSES)]} (" in evidence
    kept = np.setdiff1d(model_errors, moved)
    assert (table.loc[kept, "cause"] == "model").mean() > 0.8  # those among their own class are the model's


def test_a_damaged_stored_input_is_an_error_naming_it_not_a_dropped_cause(tmp_path):
    run, *_ = planted_run(RunStore(tmp_path), n_train=40, n_test=30,
                          images=np.random.default_rng(0).integers(0, 256, (280, 16, 16), dtype=np.uint8))
    stored = derived.get(run, "duplicates")
    (stored.folder / "eval_with_train_copy.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(UserError, match=r"stored 'duplicates' result of run 'r' cannot be read.*--only duplicates"):
        ca.get_causes(run, force=True)
    assert ca.inputs_available(run)["duplicates"] is True  # listed as there: the error above says what is wrong


def test_label_issues_need_a_second_signal(tmp_path):
    run, truth, flipped, model_errors = planted_run(RunStore(tmp_path))
    table = derived.get(run, "label_issues").table("label_issues").set_index("row")
    # cleanlab alone flags the confident model errors too; the second signal removes them
    assert table.loc[model_errors, "cleanlab_flag"].mean() > 0.5
    assert table.loc[model_errors, "is_issue"].mean() <= 0.1
    assert table.loc[flipped, "is_issue"].mean() >= 0.85
    assert (table["is_issue"] <= table["cleanlab_flag"]).all()
    run, *_ = planted_run(RunStore(tmp_path / "noemb"), embeddings=False)
    stored = derived.get(run, "label_issues")
    assert not stored.table("label_issues")["is_issue"].any() and stored.summary["n_cleanlab_flags"] > 0
    assert any("No second signal" in n for n in stored.summary["notes"])


def test_cli_writes_the_csv_most_confident_errors_first(tmp_path, capsys):
    store = RunStore(tmp_path / "store")
    run, *_ = planted_run(store, "syn")
    out = tmp_path / "causes.csv"
    assert main(["causes", "syn", "--store", str(store.root), "--out", str(out)]) == 0
    csv = pd.read_csv(out, keep_default_na=False)
    assert list(csv.columns) == ca.CSV_COLUMNS
    assert len(csv) == int((run.eval_mask() & ~run.predictions["correct"].to_numpy()).sum())
    assert (csv.loc[csv["cause"] != "label", "suggested_label"] == "").all()
    err = capsys.readouterr().err
    assert "errors of 'test'" in err and "Not assessed: copy" in err
    assert main(["causes", "nope", "--store", str(store.root)]) == 2
    assert "nope" in capsys.readouterr().err


def test_reading_stored_causes_imports_neither_tensorflow_nor_umap(tmp_path):
    store = RunStore(tmp_path)
    planted_run(store, "syn", n_train=30, n_test=20)
    code = ("import sys; from core.run.store import RunStore; from core.diagnose.causes import causes_csv; "
            f"t = causes_csv(RunStore({str(tmp_path)!r}).load('syn')); "
            "assert len(t) > 0; print('tensorflow' in sys.modules, 'umap' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
