"""Issue 22 item 6: numbers that leaked through the checks.

- a probability of -0.00099 was accepted (within the sum tolerance) though README says non-negative;
- a ragged CSV row (fewer fields than the header) was reported as "has nan", one with more fields
  was silently cut (the first) or refused as "not a readable CSV (Error tokenizing data...)";
- a NaN embedding row made atypicality NaN for every image of its class;
- numpy RuntimeWarnings printed before one-line errors.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from core.cli import main
from core.diagnose.properties import knn_atypicality
from core.run.importer import PredictionsError, check_probabilities
from core.run.store import RunStore


def _import(tmp_path, image_tree, text: str, capsys) -> tuple[int, list[str]]:
    file = tmp_path / "p.csv"
    file.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning (or any other) fails the test
        code = main(["import", "--data", str(image_tree), "--predictions", str(file), "--store",
                     str(tmp_path / "s"), "--no-projection"])
    captured = capsys.readouterr()
    assert "Warning" not in captured.err, captured.err
    return code, captured.err.strip().splitlines()


@pytest.mark.parametrize("body, expected", [
    ("cat/cat_0.png,-0.00099,0.50099,0.5\n",
     "error: p.csv: line 2 ('cat/cat_0.png') has -0.00099 in column 'cat'; rows must be probabilities"),
    ("cat/cat_0.png,0.2,0.8\n", "error: p.csv: line 2 has 3 fields but the header has 4 (a ragged row)"),
    ("cat/cat_0.png,0.2,0.3,0.5\ndog/dog_0.png,0.2,0.3,0.5,0.0\n",
     "error: p.csv: line 3 has 5 fields but the header has 4 (a ragged row)"),
    ("cat/cat_0.png,0.2,0.3,0.5,0.0\n", "error: p.csv: line 2 has 5 fields but the header has 4 (a ragged row)"),
    ("cat/cat_0.png,0.2,0.3,\n", "error: p.csv: line 2 ('cat/cat_0.png') has nan in column 'fox'"),
    ("cat/cat_0.png,inf,-inf,0.5\n", "error: p.csv: line 2 ('cat/cat_0.png') has inf in column 'cat'"),
])
def test_bad_numbers_in_a_predictions_csv_give_one_line(tmp_path, capsys, image_tree, body, expected):
    code, err = _import(tmp_path, image_tree, "path,cat,dog,fox\n" + body, capsys)
    assert code == 2 and err[-1].startswith(expected), err
    assert sum(line.startswith("error:") for line in err) == 1
    assert not (tmp_path / "s").exists() or not RunStore(tmp_path / "s").list_runs()


def test_a_negative_probability_is_refused_whatever_its_size():
    rows = np.array([[0.5, 0.5], [1.0 + 1e-7, -1e-7]])
    with pytest.raises(PredictionsError, match=r"row 1 \('b'\) has -1e-07 in column 'y'"):
        check_probabilities(rows, paths=["a", "b"], classes=["x", "y"], file="p")


def test_nan_embedding_rows_leave_only_themselves_without_atypicality():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(40, 8)).astype(np.float32)
    labels = np.repeat([0, 1], 20)
    clean_d, clean_z, _ = knn_atypicality(np.delete(e, [3, 25], axis=0), np.delete(labels, [3, 25]), k=3)
    e[3, 2] = np.nan
    e[25] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        d, z, p = knn_atypicality(e, labels, k=3)
    assert np.isnan(d[[3, 25]]).all() and np.isnan(z[[3, 25]]).all() and np.isnan(p[[3, 25]]).all()
    others = np.setdiff1d(np.arange(40), [3, 25])
    assert np.isfinite(d[others]).all() and np.isfinite(z[others]).all()
    # the other rows are as if the bad rows were not there at all
    np.testing.assert_allclose(d[others], clean_d, rtol=1e-5)
    np.testing.assert_allclose(z[others], clean_z, rtol=1e-4, atol=1e-5)
