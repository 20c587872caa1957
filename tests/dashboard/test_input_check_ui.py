"""The Overview shows the analysis' input check: a warning per mismatch (as plain text), else
one caption; runs made before the check show neither. The finding is read from the manifest,
without TensorFlow."""

from __future__ import annotations

import json

import pytest

from core.run.store import MANIFEST, RunStore
from core.run.synthetic import make_synthetic_run
from tests.dashboard import apptest
from tests.dashboard.apptest import artifacts_dir, unescape

LINE = ("Preprocessing mismatch: accuracy 0.03 with unit 0..1; 0.80 with unit 0..1, BGR channels on 200 sampled "
        "images (was the model trained on cv2.imread images?). Re-run with --preprocess unit --channel-order bgr.")


def _with_check(run, check: dict) -> None:
    path = run.path / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["model"]["input_check"] = check
    path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    store = RunStore(root)
    _with_check(make_synthetic_run(store, "swapped", n=200, n_classes=4, seed=0, history=False),
                {"sample": 200, "seconds": 0.3, "current": "unit", "accuracies": {"unit": 0.03, "unit+bgr": 0.8},
                 "suggested": "unit+bgr", "class_order": None, "rescaling_layer": None, "lines": [LINE]})
    _with_check(make_synthetic_run(store, "fine", n=200, n_classes=4, seed=1, history=False),
                {"sample": 150, "seconds": 0.3, "current": "unit",
                 "accuracies": {"unit": 0.9, "raw": 0.5, "symmetric": 0.9},
                 "suggested": None, "class_order": None, "rescaling_layer": "rescaling", "lines": [],
                 "notes": ["The model holds its own preprocessing layer 'rescaling': raw 0..255 pixels are fed, "
                           "no --preprocess is needed."]})
    make_synthetic_run(store, "old", n=200, n_classes=4, seed=2, history=False)
    with artifacts_dir(root):
        yield store


def test_overview_warns_of_a_mismatch(store):
    at = apptest.open_page("overview", "swapped")
    assert [unescape(w.value) for w in at.warning] == [LINE]
    assert store.load("swapped").model_info.input_warnings == [LINE]


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_overview_says_what_was_checked_when_all_is_well(store):
    at = apptest.open_page("overview", "fine")
    assert not at.warning
    shown = [unescape(c.value) for c in at.caption]
    assert "Input check: the model was fed unit; 2 other preprocessings scored no better on 150 sampled images." in shown
    assert "The model holds its own preprocessing layer 'rescaling': raw 0..255 pixels are fed, no --preprocess is " \
           "needed." in shown
    at = apptest.open_page("overview", "old")
    assert not at.warning and not any("Input check" in unescape(c.value) for c in at.caption)
