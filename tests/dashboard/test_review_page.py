"""Review verdicts in the dashboard (dashboard.review_ui, the Review queue page), with AppTest.

Each test gets a fresh store (its own verdicts.sqlite) with run "r": 400 synthetic images of 5
classes, about 100 in the 'test' split (the evaluation split), 80% accurate.
"""

from __future__ import annotations

import base64
import json
import time
from collections import deque

import cv2
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core import cli
from core.review.reviewed import RunReview
from core.review.verdicts import ReviewError
from core.run import derived
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run
from dashboard import gallery, review_queue, review_ui
from tests.dashboard.apptest import APP, TIMEOUT, unescape


@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    store = RunStore(tmp_path / "store")
    make_synthetic_run(store, "r", n=400, n_classes=5, seed=3, accuracy=0.8)
    monkeypatch.setenv("ARTIFACTS_DIR", str(store.root))
    return store


def open_page(page: str, *, reviewer: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if reviewer is not None:
        at.sidebar.text_input(key=review_ui.REVIEWER_KEY).input(reviewer)
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def click(at: AppTest, key: str) -> None:
    at.button(key=key).click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]


# --------------------------------------------------------------------------- pure helpers

def test_suggested_class_prefers_the_stored_suggestion_then_the_most_probable_other_class():
    rng = np.random.default_rng(0)
    for _ in range(50):
        probs = rng.dirichlet(np.ones(6))
        true = int(rng.integers(6))
        expected = int(np.argsort(-probs)[0] if np.argmax(probs) != true else np.argsort(-probs)[1])
        assert review_ui.suggested_class(true, probs) == expected
        assert review_ui.suggested_class(true, probs, stored=true) == expected  # same as given: ignored
        other = (true + 1) % 6
        assert review_ui.suggested_class(true, probs, stored=other) == other


def test_queue_order_ranked_rows_first_then_lowest_probability_of_the_given_class():
    true_prob = np.array([0.5, 0.1, 0.9, 0.3, 0.2, 0.05])
    rows = np.array([0, 1, 2, 3, 4, 5])
    assert review_ui.queue_order(rows, true_prob=true_prob).tolist() == [5, 1, 4, 3, 0, 2]
    rank = np.array([-1, -1, 1, -1, 0, -1])  # rows 4 then 2 are in the label-issues table
    assert review_ui.queue_order(rows, true_prob=true_prob, issue_rank=rank).tolist() == [4, 2, 5, 1, 3, 0]


def test_history_table_says_what_each_change_was_before(store):
    review = RunReview(store.load("r"))
    path = str(review.paths[0])
    review.mark_row(0, "ambiguous", reviewer="ann")
    review.mark_row(0, "label-wrong", label=review.run.classes[(int(review.run.predictions["true"].iat[0]) + 1) % 5],
                    note="a note", reviewer="bob")
    review.undo(path, reviewer="cid")
    table = review_ui.history_table(review.history(path))
    new = review.run.classes[(int(review.run.predictions["true"].iat[0]) + 1) % 5]
    assert table["reviewer"].tolist() == ["cid", "bob", "ann"]  # newest first
    assert table["before"].tolist() == [f"label wrong → {new}", "ambiguous", "no verdict"]
    assert table["now"].tolist() == ["ambiguous", f"label wrong → {new}", "ambiguous"]
    assert table["note"].tolist()[1] == "a note"


# --------------------------------------------------------------------------- the review queue

def queue_data(at: AppTest) -> dict:
    """What the page's queue component was given (``review_queue._queue_fragment``'s data)."""
    (component,) = [e for e in at.get("bidi_component") if e.proto.component_name.endswith("review_queue")]
    return json.loads(component.proto.json)


def test_queue_sends_its_rows_in_order_and_a_window_of_images_ahead(store):
    hostile = "**eve** <b>x</b> :smile: http://e.example"
    at = open_page("review", reviewer=hostile)
    run = store.load("r")
    df = run.predictions
    errors = df.index[run.eval_mask() & ~df["correct"].to_numpy(bool)].to_numpy()
    expected = errors[np.argsort(df["true_prob"].to_numpy()[errors], kind="stable")]  # no label issues stored
    data = queue_data(at)
    assert data["rows"] == expected.tolist() and data["total"] == len(expected)
    assert data["start"] == 0 and data["codes"] == [""] * len(expected)
    assert data["reviewer"] == hostile  # as its characters: the page sets it with textContent
    items = data["items"]
    # the next images (for N) and the next ones without a verdict (where a verdict moves on to)
    assert [i["row"] for i in items] == expected[:1 + review_queue.WINDOW].tolist()
    assert all(i["src"].startswith("data:image/png;base64,") for i in items)
    first = items[0]
    assert (first["file"], first["true"], first["pred"]) == (df["path"].iat[expected[0]], int(df["true"].iat[expected[0]]),
                                                             int(df["predicted"].iat[expected[0]]))
    # a verdict recorded elsewhere shows in the codes, and the queue starts at the first image without one
    RunReview(run).mark_row(int(expected[0]), "exclude", reviewer="bob")
    time.sleep(review_ui.FRESH_S + 0.05)  # another process's verdict shows within FRESH_S
    at.run()
    data = queue_data(at)
    assert data["codes"][0] == "exclude" and data["start"] == 1


def test_queue_images_keep_their_colours():
    class ColourRun:  # what _image_url reads of a run: a stored RGB image
        def image_file(self, row):
            return None

        def image(self, row):
            img = np.zeros((8, 8, 3), np.uint8)
            img[..., 0] = 200  # red
            return img

    src, why = review_queue._image_url(ColourRun(), "colour-test", 0)
    assert why is None
    png = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(cv2.cvtColor(png, cv2.COLOR_BGR2RGB), ColourRun().image(0)), "red and blue swapped"


def test_queue_sends_what_the_page_keeps_once_then_only_what_changed(store):
    """A verdict's rerun answers with the acknowledgement and the codes, not again the queue's rows,
    classes and the images the page already holds (issue 24: acknowledged <= 500 ms); when the page
    asks for images (its position's state), the window is sent again in full."""
    at = open_page("review")
    first = queue_data(at)
    assert first["rows"] and first["classes"] and len(first["items"]) > review_queue.WINDOW
    at.run()
    again = queue_data(at)
    assert "rows" not in again and "classes" not in again and again["items"] == []
    assert again["codes"] == first["codes"] and again["total"] == first["total"]
    session = at.session_state[review_queue._SESSION]
    session["resend"] = True  # what the position's callback does
    at.session_state[review_queue._SESSION] = session
    at.run()
    asked = queue_data(at)
    assert [i["row"] for i in asked["items"]] == [i["row"] for i in first["items"]] and "rows" not in asked


def test_page_actions_are_recorded_in_order_once_and_refusals_say_why(store):
    run = store.load("r")
    review = RunReview(run)
    df = run.predictions
    rows = np.flatnonzero(run.eval_mask() & ~df["correct"].to_numpy(bool))[:6]
    a, b, c = (int(r) for r in rows[:3])
    other = (int(df["true"].iat[b]) + 1) % 5
    acked, failed = deque(maxlen=50), {}
    actions = [{"id": "1", "kind": "mark", "row": a, "verdict": "model-wrong", "note": "<b>n</b>"},
               {"id": "2", "kind": "mark", "row": b, "verdict": "label-wrong", "label": other},
               {"id": "3", "kind": "mark", "row": c, "verdict": "ambiguous"},
               {"id": "4", "kind": "undo", "row": a},
               {"id": "5", "kind": "mark", "row": 10**6, "verdict": "exclude"},
               {"id": "6", "kind": "mark", "row": c, "verdict": "label-wrong", "label": int(df["true"].iat[c])},
               {"id": "7", "kind": "mark", "row": c, "verdict": "label-wrong", "label": 99},
               {"id": "8", "kind": "drop table", "row": c},
               {"id": "9", "kind": "mark", "row": True, "verdict": "exclude"}]
    written = review_queue.record_actions(review, rows, actions, reviewer="ann", acked=acked, failed=failed)
    assert [(v.action, v.verdict) for v in written] == [("mark", "model-wrong"), ("mark", "label-wrong"),
                                                        ("mark", "ambiguous"), ("undo", None)]
    assert list(acked) == ["1", "2", "3", "4"]
    assert sorted(failed) == ["5", "6", "7", "8", "9"]
    assert all("\n" not in m and m for m in failed.values())
    assert "not in this queue" in failed["5"] and "already labelled" in failed["6"] and "99" in failed["7"]
    assert "Unknown action 'drop table'" in failed["8"]
    table = review.verdicts().set_index("row")
    assert sorted(table.index) == [b, c]
    assert table.at[b, "new_label"] == run.classes[other] and table.at[c, "verdict"] == "ambiguous"
    # the same payload again (the page re-sends what it has not seen acknowledged): nothing new
    assert review_queue.record_actions(review, rows, actions, reviewer="ann", acked=acked, failed=failed) == []
    assert len(review.history()) == 4
    # a retry from a new session (the server restarted): already in force, acknowledged without a row
    retry = [{"id": "2", "kind": "mark", "row": b, "verdict": "label-wrong", "label": other, "sent": 2}]
    fresh = deque()
    assert review_queue.record_actions(review, rows, retry, reviewer="ann", acked=fresh, failed={}) == []
    assert list(fresh) == ["2"] and len(review.history()) == 4
    # U with nothing in the page: the reviewer's most recent verdict in force (c), not another's
    review.mark_row(int(rows[3]), "exclude", reviewer="bob")
    undo = [{"id": "10", "kind": "undo-last", "row": None}]
    assert len(review_queue.record_actions(review, rows, undo, reviewer="ann", acked=acked, failed=failed)) == 1
    assert sorted(review.verdicts()["row"]) == [b, int(rows[3])]
    nobody = {}
    review_queue.record_actions(review, rows, [{"id": "11", "kind": "undo-last"}], reviewer="zed",
                                acked=deque(), failed=nobody)
    assert "'zed' has no verdict in force" in nobody["11"]


def test_the_sessions_copy_of_the_verdicts_follows_its_writes_and_is_read_again_after_anothers(store):
    run = store.load("r")
    review = RunReview(run)
    df = run.predictions
    rows = np.flatnonzero(run.eval_mask() & ~df["correct"].to_numpy(bool))[:6]
    other = (int(df["true"].iat[rows[1]]) + 1) % 5
    session: dict = {}
    review_queue._codes(session, run)
    actions = [{"id": "1", "kind": "mark", "row": int(rows[0]), "verdict": "exclude"},
               {"id": "2", "kind": "mark", "row": int(rows[1]), "verdict": "label-wrong", "label": other},
               {"id": "3", "kind": "mark", "row": int(rows[0]), "verdict": "ambiguous"},
               {"id": "4", "kind": "undo", "row": int(rows[0])}]
    written = review_queue.record_actions(review, rows, actions, reviewer="ann", acked=deque(), failed={})
    review_queue._patch_codes(session, run, written)
    assert session["codes"][1] == review.db.revision()  # patched in place, not read again
    verdicts, labels = review_queue._codes(session, run)
    expected = review.row_arrays()
    assert verdicts.tolist() == expected[0].tolist() and labels.tolist() == expected[1].tolist()
    assert verdicts[rows[0]] == "exclude" and labels[rows[1]] == other  # the undo restored 'exclude'
    # another reviewer writes in between: the copy is dropped and read again
    review.mark_row(int(rows[2]), "model-wrong", reviewer="bob")
    more = [{"id": "5", "kind": "mark", "row": int(rows[3]), "verdict": "exclude"}]
    review_queue._patch_codes(session, run, review_queue.record_actions(review, rows, more, reviewer="ann",
                                                                        acked=deque(), failed={}))
    assert "codes" not in session
    verdicts, labels = review_queue._codes(session, run)
    assert verdicts.tolist() == review.row_arrays()[0].tolist()


def test_the_export_is_made_on_the_click_and_is_the_cli_file(store, served):
    at = open_page("review")
    run = store.load("r")
    rows = queue_data(at)["rows"]
    RunReview(run).mark_row(rows[0], "exclude", reviewer="ann")  # after the page was drawn
    out = store.root.parent / "cli.csv"
    assert cli.main(["review", "export", "--store", str(store.root), "--run", "r", "--out", str(out)]) == 0
    assert served["review-export"]() == out.read_bytes()
    assert b"exclude" in out.read_bytes()


def test_the_verdicts_table_says_when_it_was_read_and_its_refresh_reads_them_again(store):
    at = open_page("review")
    run = store.load("r")
    assert any("0 verdict(s) in force" in c.value for c in at.caption)
    rows = queue_data(at)["rows"]
    RunReview(run).mark_row(rows[0], "exclude", reviewer="ann")  # as the queue's fragment does
    click(at, "review-verdicts-refresh")
    assert any("1 verdict(s) in force" in c.value for c in at.caption)
    assert "exclude" in at.dataframe[0].value.astype(str).to_numpy().ravel().tolist()


def test_queue_follows_stored_label_issues_and_preselects_their_suggestion(store):
    # a run with wrong labels (its synthetic errors are the model's own: label issues must not flag those)
    make_synthetic_run(store, "r", n=400, n_classes=5, seed=3, accuracy=0.8, label_noise=0.1)
    run = store.load("r")
    from core.diagnose import labels  # noqa: F401 - registers the kind

    issues = derived.get(run, "label_issues").table("label_issues")
    flagged = issues.loc[issues["is_issue"], ["row", "suggested_label"]]
    assert len(flagged) >= 2, "the synthetic run should have suspected label errors"
    at = open_page("review")
    data = queue_data(at)
    assert data["rows"] == flagged["row"].astype(int).tolist()
    assert run.classes[data["items"][0]["suggested"]] == flagged["suggested_label"].iat[0]
    # another set: a confusion cell, in label-issue order
    at.selectbox(key=next(s.key for s in at.selectbox if s.key.endswith(":review-set"))).set_value("cell")
    at.run()
    assert not at.exception
    df = run.predictions
    mask = run.eval_mask()
    counts = pd.crosstab(df["true"][mask], df["predicted"][mask]).reindex(index=range(5), columns=range(5),
                                                                          fill_value=0).to_numpy().copy()
    np.fill_diagonal(counts, -1)
    true, pred = np.unravel_index(int(np.argmax(counts)), counts.shape)  # the default cell: the most confused
    cell = np.flatnonzero(mask & (df["true"] == true).to_numpy() & (df["predicted"] == pred).to_numpy())
    position = {int(r): i for i, r in enumerate(issues["row"])}
    expected = sorted(cell, key=lambda r: position[int(r)])  # every evaluated image has a label-issue rank
    caption = next(unescape(c.value) for c in at.caption if "label-issue rank" in unescape(c.value))
    assert caption.startswith(f"{len(cell)} image")
    assert queue_data(at)["rows"] == [int(r) for r in expected]


# --------------------------------------------------------------------------- galleries and the detail

@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_a_tile_records_its_verdict_and_its_caption_shows_it(store):
    at = open_page("overview")
    run = store.load("r")
    tiles = [s for s in at.selectbox if (s.key or "").startswith("rvt-r-")]
    assert tiles, "every thumbnail has its verdict box"
    row = int(tiles[0].key.split("-")[2])
    tiles[0].set_value("exclude")
    at.run()
    assert not at.exception
    assert RunReview(run).verdicts()[["row", "verdict"]].values.tolist() == [[row, "exclude"]]
    assert "verdict: exclude" in [line for c in at.caption for line in unescape(c.value).splitlines()]
    # the box now shows the verdict, and 'undo' takes it back
    box = next(s for s in at.selectbox if (s.key or "").startswith(f"rvt-r-{row}-"))
    assert box.value == "exclude"
    box.set_value("undo")
    at.run()
    assert RunReview(run).verdicts().empty


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_detail_records_a_verdict_with_a_note_shows_the_history_as_text_and_undoes(store):
    at = open_page("review", reviewer="ann")
    run = store.load("r")
    at.session_state[gallery.DETAIL_KEY] = {"source": review_ui.QUEUE_SOURCE, "run": "r",
                                            "row": queue_data(at)["rows"][0]}
    at.run()
    form = next(r for r in at.radio if (r.key or "").startswith("rvd-"))
    prefix = form.key.removesuffix("-verdict")
    assert form.value is None and at.button(key=f"{prefix}-record").disabled  # nothing preselected
    form.set_value("ambiguous")
    at.run()
    note = "<script>alert(1)</script> **not bold**"
    at.text_input(key=f"{prefix}-note").input(note)
    click(at, f"{prefix}-record")
    verdicts = RunReview(run).verdicts()
    assert verdicts[["verdict", "note", "reviewer"]].values.tolist() == [["ambiguous", note, "ann"]]
    history = next(d.value for d in at.dataframe if "before" in d.value.columns)
    assert history[["reviewer", "before", "now", "note"]].values.tolist() == [["ann", "no verdict", "ambiguous",
                                                                               note]]
    undo = next(b for b in at.button if (b.key or "").startswith("rvh-undo-"))
    undo.click()
    at.run()
    assert RunReview(run).verdicts().empty
    assert len(RunReview(run).history()) == 2  # nothing is lost: the undo is a row of its own


# --------------------------------------------------------------------------- metrics as reviewed

@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_metrics_as_reviewed_on_overview_and_per_class_csv_is_the_cli_file(store, served):
    run = store.load("r")
    review = RunReview(run)
    df = run.predictions
    test_rows = np.flatnonzero(run.eval_mask())
    wrong = [int(r) for r in test_rows if not df["correct"].iat[r]][:4]
    for row in wrong[:3]:  # relabel three errors to what the model says: accuracy goes up
        review.mark_row(row, "label-wrong", label=df["predicted_label"].iat[row], reviewer="t")
    review.mark_row(wrong[3], "exclude", reviewer="t")
    expected = review.reviewed_metrics()
    at = open_page("overview")
    at.toggle(key=f"{review_ui.AS_REVIEWED_KEY}-overview").set_value(True)
    at.run()
    metric = next(m for m in at.metric if m.label == "Accuracy as reviewed")
    assert metric.value == f"{expected.summary['accuracy']:.2%}"
    assert expected.summary["accuracy"] > expected.summary["given_accuracy"]
    assert next(m for m in at.metric if m.label == "Evaluated images").value == f"{len(test_rows) - 1:,}"
    at.switch_page("app_pages/per_class.py")
    at.run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.toggle(key=f"{review_ui.AS_REVIEWED_KEY}-per-class").value  # the same toggle, kept across pages
    out = store.root.parent / "reviewed.csv"
    assert cli.main(["review", "metrics", "--store", str(store.root), "--run", "r", "--out", str(out)]) == 0
    assert served["download-per-class-reviewed"] == out.read_bytes()
    table = pd.read_csv(out)
    assert set(table["labels"]) == {"reviewed"}
    assert "download-per-class" not in served  # the given labels' CSV is not offered beside it


def test_an_unwritable_verdicts_file_leaves_the_actions_pending(store, monkeypatch):
    run = store.load("r")
    review = RunReview(run)
    rows = np.flatnonzero(run.eval_mask() & ~run.predictions["correct"].to_numpy(bool))[:3]

    def broken(**_):
        raise ReviewError(f"{review.db.path}: disk I/O error")

    monkeypatch.setattr(review.db, "mark", broken)
    acked, failed = deque(), {}
    actions = [{"id": "1", "kind": "mark", "row": int(rows[0]), "verdict": "exclude"}]
    with pytest.raises(review_queue.StoreUnavailable, match="disk I/O error"):
        review_queue.record_actions(review, rows, actions, reviewer="ann", acked=acked, failed=failed)
    assert not acked and not failed  # neither saved nor refused: still pending in the page


def test_the_review_position_in_the_address_opens_the_queue_there(store):
    at = open_page("review")
    data = queue_data(at)
    row = data["rows"][5]
    again = AppTest.from_file(APP, default_timeout=TIMEOUT)  # a reload of a link holding qimg=<row>
    again.query_params.update({"run": "r", review_queue.QUEUE_IMG_PARAM: str(row)})
    again.switch_page("app_pages/review.py")
    again.run()
    assert not again.exception, [e.value for e in again.exception]
    data = queue_data(again)
    assert data["start"] == 5 and row in [item["row"] for item in data["items"]]  # its image is sent
    assert again.query_params[review_queue.QUEUE_IMG_PARAM] == str(row)  # kept in the address
    gone = AppTest.from_file(APP, default_timeout=TIMEOUT)  # a row the queue does not hold: its first image
    gone.query_params.update({"run": "r", review_queue.QUEUE_IMG_PARAM: "999999"})
    gone.switch_page("app_pages/review.py")
    gone.run()
    assert queue_data(gone)["start"] == 0
