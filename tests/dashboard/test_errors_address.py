"""The Errors page's diagnosis filters (label-issue score, copy in train, error slice) live in the
address like its class and confidence filters: a reload or a shared link shows the same rows."""

from __future__ import annotations

import pytest

from core import diagnose
from core.run.store import RunStore
from dashboard import ui
from tests.dashboard.apptest import artifacts_dir, open_address, open_page, unescape
from tests.dashboard.test_diagnose_page import planted_run, sliced_run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """'sliced' has error slices (and every other finding); 'computed' has findings but no slice."""
    root = tmp_path_factory.mktemp("errors-address-store")
    store = RunStore(root)
    planted_run(store, "computed")
    diagnose.run_diagnoses(store.load("computed"))
    sliced_run(store, "sliced")
    diagnose.run_diagnoses(store.load("sliced"))
    with artifacts_dir(root):
        yield store


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_the_diagnosis_filters_are_in_the_address_and_a_fresh_session_restores_them(store):
    run = store.load("sliced")
    score, copy, slices = (ui.scoped(run, name) for name in
                           ("errors-filter-issue", "errors-filter-copy", "errors-filter-slice"))
    at = open_page("errors", "sliced")
    assert not {"issue", "copy", "slice"} & set(dict(at.query_params))  # unset filters stay out
    at.selectbox(key=copy).set_value("no").run()
    at.slider(key=score).set_value(0.3).run()
    names = sorted(at.multiselect(key=slices).options)
    assert names
    at.multiselect(key=slices).set_value([names[-1]]).run()
    assert not at.exception, [e.value for e in at.exception]
    address = dict(at.query_params)
    assert (address["copy"], address["issue"], address["slice"]) == ("no", "0.3", str(len(names) - 1))
    rows = at.dataframe[0].value["id"].tolist()
    assert rows  # the filters leave some errors, so that the comparison below means something

    again = open_address("errors", **address)
    assert again.selectbox(key=copy).value == "no"
    assert again.slider(key=score).value == pytest.approx(0.3)
    assert again.multiselect(key=slices).value == [names[-1]]
    assert again.dataframe[0].value["id"].tolist() == rows
    assert dict(again.query_params) == address


@pytest.mark.parametrize("run_id, param, value, why", [
    ("computed", "issue", "2", "issue must be a number from 0 to 1. Received: '2'"),
    ("computed", "copy", "maybe", "copy must be one of ['yes', 'no']. Received: 'maybe'"),
    ("computed", "slice", "0", "slice: this run has nothing to choose from. Received: '0'"),
    ("sliced", "slice", "99", "slice must be"),
])
def test_a_diagnosis_filter_that_does_not_fit_is_dropped_with_one_warning(store, run_id, param, value, why):
    at = open_address("errors", run=run_id, **{param: value})
    warnings = [unescape(w.value) for w in at.warning]
    assert len(warnings) == 1 and warnings[0].startswith(f"Address parameter '{param}' ignored: {why}")
    assert param not in dict(at.query_params)
