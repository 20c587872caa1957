"""Error slices: a planted group of confusions (dark shirts taken for T-shirts) is found, named from its
confusion and its property, saved as a filter that works on another run of the same images, and
compared across runs; errors spread evenly give no slice."""

import json

import numpy as np
import pytest

from core.diagnose import slices as sl
from core.errors import UserError
from core.run import derived
from core.run.store import RunStore
from core.run.write import write_run

CLASSES = ["shirt", "t-shirt", "coat"]


def test_margins_match_sorting():
    probs = np.random.default_rng(0).dirichlet(np.ones(5), 50)
    top = np.sort(probs, axis=1)[:, ::-1]
    assert np.allclose(sl.margins(probs), top[:, 0] - top[:, 1])


def _planted(n=900, seed=0, spread=False):
    """Embeddings of 3 classes; 60 shirts sit apart and 70% of them are called t-shirt (or, with
    ``spread``, the same number of errors is scattered over all shirts)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centres = np.eye(3, 8) * 6
    x = centres[y] + rng.normal(0, 1, (n, 8))
    odd = np.flatnonzero(y == 0)[:60]
    x[odd] = np.eye(1, 8, 5) * 6 + rng.normal(0, 0.7, (60, 8))
    predicted = y.copy()
    wrong = rng.choice(np.flatnonzero(y == 0), 42, replace=False) if spread else odd[:42]
    predicted[wrong] = 1
    other = rng.choice(np.flatnonzero(y != 0), 30, replace=False)  # background noise
    predicted[other] = (y[other] + 1) % 3
    return x, y, predicted, odd


def test_a_planted_group_of_confusions_is_the_first_slice():
    x, y, predicted, odd = _planted()
    slices, member, distance = sl.find_error_slices(x, y, predicted, np.ones(len(y)), classes=CLASSES)
    first = slices.iloc[0]
    assert first["name"].startswith("shirt -> t-shirt, ") and first["top_pairs"].startswith("shirt -> t-shirt (100%)")
    rows = np.flatnonzero(member == 0)
    assert len(set(rows) & set(odd)) >= 0.8 * len(odd) and set(rows) <= set(odd)  # its images, nothing else
    assert first["errors"] == (predicted[rows] != y[rows]).sum() and first["n"] == len(rows)
    shirt_rate = (predicted[y == 0] != 0).mean()
    assert first["expected_rate"] == pytest.approx(shirt_rate) and first["error_rate"] > 2 * shirt_rate
    assert np.isnan(distance[member == -1]).all() and (distance[rows] >= 0).all()


def test_errors_spread_evenly_make_no_slice():
    x, y, predicted, _ = _planted(spread=True)
    slices, member, _ = sl.find_error_slices(x, y, predicted, np.ones(len(y)), classes=CLASSES)
    assert len(slices) == 0 and (member == -1).all()


def test_standout_properties_rank_within_each_class():
    rng = np.random.default_rng(1)
    labels = np.arange(200) % 2
    brightness = rng.uniform(0, 1, 200) + labels * 10  # class 1 is much brighter: ranks are within the class
    members = np.flatnonzero(labels == 1)[np.argsort(brightness[labels == 1])[:20]]  # the darkest of class 1
    out = sl.standout_properties({"brightness": brightness, "blur": rng.uniform(0, 1, 200)}, labels, members)
    assert out[0][:2] == ("brightness", "low") and out[0][2] < 0.15
    assert all(p != "blur" for p, _, _ in out)


def _run(store, run_id, x, y, predicted, images, *, order=None):
    n = len(y)
    order = np.arange(n) if order is None else order
    probs = np.full((n, 3), 0.05, np.float32)
    probs[np.arange(n), predicted] = 0.9
    return write_run(store, run_id, classes=CLASSES, y_true=y[order], probs=probs[order],
                     paths=[f"test/{i:04d}.png" for i in order], splits=np.full(n, "test"), embeddings=x[order],
                     images=images[order],
                     data={"name": "arrays", "kind": "synthetic", "path": None, "root": None, "images_in_run": True})


@pytest.fixture
def planted_runs(tmp_path):
    x, y, predicted, odd = _planted()
    rng = np.random.default_rng(3)
    images = rng.integers(60, 230, (len(y), 12, 12)).astype(np.uint8)
    images[odd] -= 55  # the odd shirts are darker (same contrast and sharpness)
    store = RunStore(tmp_path / "store")
    run = _run(store, "a", x, y, predicted, images)
    fixed = predicted.copy()
    fixed[odd] = 0  # a better model gets the odd shirts right
    broken = predicted.copy()
    broken[odd] = 1
    shuffle = np.random.default_rng(4).permutation(len(y))  # same images, other row order
    return run, _run(store, "b", x, y, fixed, images, order=shuffle), _run(store, "c", x, y, broken, images), odd


def test_the_kind_names_the_slice_from_its_confusion_and_property(planted_runs):
    run, _, _, odd = planted_runs
    stored = derived.get(run, "error_slices")
    first = stored.table("slices").iloc[0]
    assert first["name"].startswith("shirt -> t-shirt, dark, ") and "error rate " in first["name"]
    assert first["properties"].startswith("brightness low")
    rows = sl.slice_rows(run, 0)
    assert set(rows) <= set(odd) and np.array_equal(rows, np.flatnonzero(stored.array("slice") == 0))
    members = stored.table("members")
    assert members.loc[members["slice_id"] == 0, "row"].sort_values().tolist() == rows.tolist()
    assert stored.summary["n_slices"] == len(stored.table("slices")) and stored.summary["space"] == "embeddings"
    with pytest.raises(UserError, match=r"Run 'a' has no slice 99. Slices: \[0"):
        sl.slice_rows(run, 99)


def test_a_saved_filter_selects_the_same_images_in_another_run(planted_runs, tmp_path):
    run, other, _, _ = planted_runs
    rule = sl.slice_filter(run, 0, name="dark shirts")
    file = sl.save_filter(rule, sl.filters_folder(run))
    assert file.parent == run.location.parent / ".filters" and file.name == "dark-shirts.json"
    loaded = sl.load_filters(sl.filters_folder(run))["dark shirts"]
    assert json.loads(file.read_text()) == loaded == rule
    rows_a, rows_b = sl.slice_rows(run, 0), sl.filter_rows(other, loaded)
    paths = lambda r, rows: sorted(r.predictions["path"].iloc[rows])  # noqa: E731
    assert paths(run, rows_a) == paths(other, rows_b) and not np.array_equal(rows_a, rows_b)
    by_rows = {**rule, "rule": {"type": "rows", "rows": rows_a.tolist()}}
    assert np.array_equal(sl.filter_rows(run, by_rows), rows_a)
    with pytest.raises(ValueError, match=r"Filter 'dark shirts' lists rows of another run; it cannot apply to 'b'"):
        sl.filter_rows(other, by_rows)
    with pytest.raises(ValueError, match=r"Not a filter \(expected format"):
        sl.filter_rows(run, {"paths": []})
    with pytest.raises(ValueError, match=r"Unknown filter rule type 'sql'. Types: \['paths', 'rows'\]"):
        sl.filter_rows(run, {**rule, "rule": {"type": "sql"}})


def test_comparison_says_which_slices_got_better_or_worse(planted_runs, tmp_path):
    run, better, worse, _ = planted_runs
    table = sl.compare_slices(run, better).set_index("slice_id")
    first = table.loc[0]
    assert first["verdict"] == "better" and first["n_matched"] == first["n"]
    assert first["error_rate_b"] == 0 and first["fixed"] == round(first["error_rate_a"] * first["n"])
    assert first["broken"] == 0 and first["p_value"] < 0.05
    slice_worse = sl.compare_slices(run, worse).set_index("slice_id").loc[0]
    assert slice_worse["verdict"] == "worse" and slice_worse["broken"] > 0 and slice_worse["fixed"] == 0
    same = sl.compare_slices(run, run)
    assert (same["verdict"] == "unchanged").all() and (same["change"] == 0).all()
    stranger = write_run(RunStore(tmp_path / "other"), "x", classes=CLASSES, y_true=np.zeros(3, int),
                         probs=np.full((3, 3), 1 / 3, np.float32), paths=["p", "q", "r"])
    with pytest.raises(ValueError, match=r"Runs 'a' and 'x' share no image paths"):
        sl.compare_slices(run, stranger)


def test_a_run_without_embeddings_or_map_is_refused_in_one_line(tmp_path):
    run = write_run(RunStore(tmp_path), "flat", classes=CLASSES, y_true=np.zeros(3, int),
                    probs=np.full((3, 3), 1 / 3, np.float32), paths=["p", "q", "r"])
    with pytest.raises(ValueError, match=r"Run 'flat' has neither embeddings nor a projection"):
        derived.get(run, "error_slices")
    assert derived.get(run, "error_slices", compute=False) is None
    with pytest.raises(UserError, match=r"Run 'flat' has no current error slices: compute them with python -m "
                                          r"core diagnose flat"):
        sl.slice_rows(run, 0, compute=False)
