"""Issue 22 item 8: a run re-made while a page reads it. The old version's folder goes at once, so a
page that had opened it met "probs.npy: missing" and showed "This page cannot show run ..." (21 of
69 page draws while another process re-made the run every 0.5 s). Now the page is drawn again, on
the new version, without a word.

The re-making is made to fall exactly inside the page: the first call of
``cache.class_distribution`` (the Overview's first read after it opened the run) re-makes the run,
then reads the old Run object's probabilities.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run
from dashboard import cache
from tests.dashboard.apptest import artifacts_dir, open_page, unescape


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_a_run_re_made_under_an_open_page_is_drawn_again_not_called_broken(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "store")
    make_synthetic_run(store, "syn", n=90, n_classes=3, seed=0)
    make_synthetic_run(store, "other", n=90, n_classes=3, seed=1)
    original = cache.class_distribution
    calls = []

    def re_made_meanwhile(run, key):
        calls.append(run.uid)
        if len(calls) == 1:
            make_synthetic_run(RunStore(store.root), "syn", n=120, n_classes=3, seed=5)
            np.load(run.path / "probs.npy", allow_pickle=False)  # a file of the old version: gone
        return original(run, key)

    with artifacts_dir(store.root):
        at = open_page("overview", "syn")
        monkeypatch.setattr(cache, "class_distribution", re_made_meanwhile)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [unescape(e.value) for e in at.error] == []
    assert not any("no longer in the store" in unescape(w.value) for w in at.warning)
    assert len(calls) == 2 and calls[0] != calls[1], (calls, [m.value[:80] for m in at.markdown][:5], [s.value for s in at.subheader])
    assert at.sidebar.selectbox(key="run_id").value == "syn"
    assert store.load("syn").n_images == 120
