"""Issue 22 items 7 and 8 (corrections): files that leave nothing to train on, or one class; a file
far longer than the data set; the CSV formula guard with leading white space.

The data set is conftest's image tree: 15 PNGs (cat, dog, fox x 5) and a corrupt dog/broken.jpg.
"""

from __future__ import annotations

import time

import pandas as pd
import pytest

from core.cli import main
from core.datasets import load_dataset
from core.review.corrections import apply_corrections_file
from core.review.export import spreadsheet_safe
from core.review.verdicts import ReviewError

HEADER = "path,given_label,new_label,verdict,note,reviewer,time\n"


def _write(tmp_path, rows: list[str]):
    file = tmp_path / "corrections.csv"
    file.write_text(HEADER + "".join(r + "\n" for r in rows))
    return file


def _all_paths(image_tree) -> list[str]:
    return list(load_dataset(image_tree).paths)


def test_corrections_that_exclude_every_image_are_refused_in_one_line(tmp_path, image_tree):
    file = _write(tmp_path, [f"{p},,,exclude,,ann," for p in _all_paths(image_tree)])
    with pytest.raises(ReviewError) as err:
        apply_corrections_file(load_dataset(image_tree), file)
    assert str(err.value) == (f"{file.resolve()}: the corrections exclude all 16 images of data set 'images': "
                              "nothing is left to train on")


def test_relabelling_everything_into_one_class_is_refused(tmp_path, image_tree):
    rows = [f"{p},,cat,label-wrong,,ann," for p in _all_paths(image_tree) if not p.startswith("cat/")]
    with pytest.raises(ReviewError, match=r"every remaining image \(16\) is labelled 'cat'; a classifier needs "
                                          "images of at least two classes"):
        apply_corrections_file(load_dataset(image_tree), _write(tmp_path, rows))
    # excluding the other classes comes to the same
    rows = [f"{p},,,exclude,,ann," for p in _all_paths(image_tree) if not p.startswith("dog/")]
    with pytest.raises(ReviewError, match=r"every remaining image \(6\) is labelled 'dog'"):
        apply_corrections_file(load_dataset(image_tree), _write(tmp_path, rows))


def test_the_train_command_says_it_in_one_line_before_decoding_anything(tmp_path, image_tree, capsys):
    file = _write(tmp_path, [f"{p},,,exclude,,ann," for p in _all_paths(image_tree)])
    code = main(["train", "--data", str(image_tree), "--recipe", "mlp", "--corrections", str(file), "--store", str(tmp_path / "s"),
                 "--out", str(tmp_path / "model"), "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "nothing is left to train on" in err[-1], err
    assert sum(line.startswith("error:") for line in err) == 1


def test_a_corrections_file_longer_than_the_data_set_is_refused_at_once(tmp_path, image_tree):
    """A 1,000,000-row file took 35 s (75 s on this machine under load) to be refused."""
    file = tmp_path / "million.csv"
    with open(file, "w") as fh:
        fh.write(HEADER)
        fh.writelines(f"cat/img{i:07d}.png,cat,,exclude,,ann,\n" for i in range(1_000_000))
    t0 = time.perf_counter()
    with pytest.raises(ReviewError, match=r"million.csv:18: more corrections than the data set has images \(16\)"):
        apply_corrections_file(load_dataset(image_tree), file)
    assert time.perf_counter() - t0 < 20


def test_the_formula_guard_sees_through_leading_spaces_and_invisible_characters():
    notes = [" =HYPERLINK(\"http://x\")", "\xa0=1+1", "\u200b@SUM(1)", "\ufeff+1", "\u202e=1", "  plain", "a = b"]
    safe = spreadsheet_safe(pd.DataFrame({"note": notes, "reviewer": ["\xa0-x"] * len(notes)}))
    assert safe["note"].tolist() == ["'" + n for n in notes[:5]] + notes[5:]
    assert set(safe["reviewer"]) == {"'\xa0-x"}
