"""Review verdicts in the dashboard: on every gallery tile, in the image detail, in the Review queue,
and the metrics as reviewed (``core.review`` stores and counts them; this module only draws).

Verdicts (``core.review.verdicts.VERDICTS``): model wrong, label wrong (with the right class), ambiguous,
exclude. They live in ``<store>/verdicts.sqlite``; each click is one short committed transaction, so
a verdict the page acknowledges survives a killed server, and sessions never overwrite each other
(history is append-only). Pages re-read the verdicts whenever the file's ``revision`` changes.

Registered at import (``gallery`` hooks, process-wide): a caption line with the current verdict
(``verdict``), a compact verdict selectbox under each thumbnail and a verdict form in the detail
(``review-verdict``), and the detail's history with undo (``review-history``).

The class suggested for 'label wrong' is the stored ``label_issues`` result's ``suggested_label``
when there is one and it differs from the given label, else the model's prediction when it
differs, else the most probable other class (``suggested_class``).

Reviewer names and notes are user text: shown with ``ui.plain`` or in dataframes, never as Markdown.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

from core.diagnose.causes import CAPTION_WORDS, CAUSES
from core.review.export import corrections_csv
from core.review.verdicts import MAX_NOTE, MAX_REVIEWER, VERDICTS, ReviewError, default_reviewer
from core.run.store import Run
from dashboard import cache, causes_ui, gallery, state, ui, views

REVIEWER_KEY = "reviewer-name"
AS_REVIEWED_KEY = "metrics-as-reviewed"
QUEUE_SOURCE = "review-queue"
VERDICT_NAMES = {"model-wrong": "model wrong", "label-wrong": "label wrong", "ambiguous": "ambiguous",
                 "exclude": "exclude"}
# Queue keys: single letters Streamlit does not reserve ('c' and 'r' are its own) and no arrow
# keys, which the image detail's previous/next use.
SHORTCUTS = {"model-wrong": "M", "label-wrong": "L", "ambiguous": "A", "exclude": "X", "undo": "U",
             "previous": "P", "next": "N"}
QUEUE_SETS = {"suspected": "Suspected label errors", "confident": "Confident errors", "cause": "Errors of one cause",
              "slice": "An error slice", "cell": "A confusion cell"}


# --------------------------------------------------------------------------- pure helpers

def suggested_class(true: int, probs: np.ndarray, stored: int = -1) -> int:
    """The class to preselect for 'label wrong' on an image labelled ``true``.

    ``probs``: float (K,), the model's probabilities; ``stored``: the label-issues suggestion
    (-1 for none). Returns ``stored`` when it is a class other than ``true``, else the most
    probable class other than ``true``.

    >>> suggested_class(0, np.array([0.7, 0.2, 0.1]))
    1
    >>> suggested_class(0, np.array([0.1, 0.7, 0.2]), stored=2)
    2
    >>> suggested_class(1, np.array([0.1, 0.7, 0.2]), stored=1)
    2
    """
    if stored >= 0 and stored != true:
        return int(stored)
    others = np.asarray(probs, dtype=np.float64).copy()
    others[int(true)] = -np.inf
    return int(np.argmax(others))


def verdict_text(verdict: str | None, label: str | None = None) -> str:
    """'label wrong → cat', 'exclude', or 'no verdict' (plain text)."""
    if not verdict:
        return "no verdict"
    return VERDICT_NAMES.get(verdict, verdict) + (f" → {label}" if label else "")


def queue_order(rows: np.ndarray, *, true_prob: np.ndarray, issue_rank: np.ndarray | None = None) -> np.ndarray:
    """``rows`` (int (M,)) most likely label errors first.

    ``true_prob``: float (N,), the model's probability of each row's given class; ``issue_rank``:
    int (M,), each row's position in the stored label-issues table (-1 where it has none). Rows
    with a rank come first by rank, then the others by ``true_prob`` ascending (stable).

    >>> queue_order(np.array([4, 5, 6]), true_prob=np.array([0, 0, 0, 0, .3, .1, .2])).tolist()
    [5, 6, 4]
    >>> queue_order(np.array([4, 5, 6]), true_prob=np.zeros(7), issue_rank=np.array([-1, 7, 2])).tolist()
    [6, 5, 4]
    """
    rows = np.asarray(rows, dtype=np.int64)
    prob = np.asarray(true_prob)[rows]
    if issue_rank is None:
        return rows[np.argsort(prob, kind="stable")]
    rank = np.asarray(issue_rank, dtype=np.int64)
    ranked = rank >= 0
    first = rows[ranked][np.argsort(rank[ranked], kind="stable")]
    rest = rows[~ranked][np.argsort(prob[~ranked], kind="stable")]
    return np.concatenate([first, rest])


def history_table(history: pd.DataFrame) -> pd.DataFrame:
    """One image's history (``RunReview.history(path)``, oldest first) as shown: newest first, with
    what each row changed the verdict from ('before') and to ('now')."""
    text = [x if isinstance(x, str) and x else None for x in (*history["verdict"], *history["label"])]
    now = [verdict_text(v, lab) for v, lab in zip(text[:len(history)], text[len(history):])]
    before = ["no verdict", *now[:-1]]
    table = pd.DataFrame({"time": history["time"].astype(str).str.replace("T", " ").str[:19],
                          "reviewer": history["reviewer"], "action": history["action"],
                          "before": before, "now": now, "note": history["note"].fillna("")})
    return table.iloc[::-1].reset_index(drop=True)


# --------------------------------------------------------------------------- reading the verdicts

def reviewer() -> str:
    """The name verdicts are recorded under: the sidebar's, else the OS user."""
    name = st.session_state.get(REVIEWER_KEY)
    return name.strip() if isinstance(name, str) and name.strip() else default_reviewer()


def reviewer_ui() -> None:
    """The reviewer name, a sidebar text input (default: the OS user name)."""
    st.session_state.setdefault(REVIEWER_KEY, default_reviewer())
    st.sidebar.text_input("Reviewer", key=REVIEWER_KEY, max_chars=MAX_REVIEWER, persist_state="session",
                          help="The name your verdicts are recorded under (default: the OS user name).")


def _review(run: Run):
    return cache.run_review(run, cache.run_key(run), cache.store_root())


# A gallery asks for each tile's verdict twice (caption and box): the verdicts file's revision is
# asked once per FRESH_S (96 tiles asked it 192 times, a third of the gallery's time), and forgotten
# at once when this server records or undoes one; another process's verdict shows within FRESH_S.
FRESH_S = 0.25
_recent: dict[tuple[str, str], tuple[float, tuple[np.ndarray, np.ndarray]]] = {}


# A verdicts file that cannot be read (damaged, locked, a newer schema) costs the pages their
# verdicts, never the page: its problem is said once above the page and asked again after FAILED_S.
FAILED_S = 5.0
_failed: dict[str, tuple[float, str]] = {}


def unavailable(exc: Exception) -> str:
    """The line every page shows when the verdicts cannot be read."""
    return f"Verdicts are unavailable: {views.one_line(exc)}"


def problem() -> str | None:
    """Why the store's verdicts cannot be read now (said above the page), or None when they can."""
    root = cache.store_root()
    failed = _failed.get(root)
    if failed is not None and time.monotonic() - failed[0] < FAILED_S:
        state.warn(failed[1])
        return failed[1]
    return None


def _fail(exc: Exception) -> str:
    line = unavailable(exc)
    _failed[cache.store_root()] = (time.monotonic(), line)
    state.warn(line)
    return line


def current(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(verdicts, new_labels) of every row: object (N,) ('' for none) and int (N,) (-1), fresh from
    the verdicts file (re-read when anyone has recorded one since); no verdicts at all, and the
    reason said above the page, when the file cannot be read."""
    root = cache.store_root()
    key = cache.run_key(run)
    now = time.monotonic()
    none = (np.full(run.n_images, "", dtype=object), np.full(run.n_images, -1, dtype=np.int64))
    if problem() is not None:
        return none
    held = _recent.get((root, key))
    if held is not None and now - held[0] < FRESH_S:
        return held[1]
    try:
        value = cache.review_rows(run, key, root, cache.review_db(root).revision())
    except ReviewError as exc:
        _fail(exc)
        return none
    _failed.pop(root, None)
    _recent[(root, key)] = (now, value)
    return value


def row_verdict(run: Run, row: int) -> tuple[str, int]:
    verdicts, new_labels = current(run)
    return str(verdicts[int(row)]), int(new_labels[int(row)])


def suggestion(run: Run, row: int) -> int:
    """The class preselected for 'label wrong' on ``row`` (see ``suggested_class``)."""
    key = cache.run_key(run)
    stored = cache.label_suggestions(run, key, cache.derived_stamp(run, "label_issues"))
    true = int(run.predictions["true"].iat[int(row)])
    return suggested_class(true, np.asarray(run.probs[int(row)]), -1 if stored is None else int(stored[int(row)]))


def _unique_key(base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... when a widget of this script run already has it (the same
    image in two galleries of one page)."""
    ctx = get_script_run_ctx()
    if ctx is None:
        return base
    taken = ctx.shared.widget_user_keys_this_run
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}-{n}"
    return key


# --------------------------------------------------------------------------- recording (widget callbacks)

def record(run_id: str, row: int, verdict: str, *, label: int | None = None, note: str | None = None) -> bool:
    """Record ``verdict`` on ``row`` of run ``run_id`` (committed when this returns True); a refusal is
    shown as one line (a toast) and returns False."""
    try:
        run = cache.load_run(cache.store_root(), run_id)
        name = run.classes[int(label)] if label is not None else None
        _review(run).mark_row(int(row), verdict, label=name, note=note or None, reviewer=reviewer())
    except (ReviewError, *cache.RUN_ERRORS) as exc:
        again = " Try again in a moment." if "busy" in str(exc) else ""
        st.toast(ui.plain(f"Verdict not recorded: {views.one_line(exc)}{again}"), icon=":material/error:")
        return False
    _recent.clear()
    _failed.clear()
    return True


def undo(run_id: str, row: int) -> bool:
    """Undo the newest verdict in force on ``row``; a refusal is shown as one line (a toast)."""
    try:
        run = cache.load_run(cache.store_root(), run_id)
        review = _review(run)
        review.undo(str(review.paths[int(row)]), reviewer=reviewer())
    except (ReviewError, *cache.RUN_ERRORS) as exc:
        st.toast(ui.plain(f"Nothing undone: {views.one_line(exc)}"), icon=":material/error:")
        return False
    _recent.clear()
    return True


def _tile_changed(widget: str, run_id: str, row: int, suggested: int) -> None:
    choice = st.session_state.get(widget)
    if choice == "undo":
        undo(run_id, row)
    elif choice in VERDICTS:
        record(run_id, row, choice, label=suggested if choice == "label-wrong" else None)


def _detail_record(run_id: str, row: int, prefix: str) -> None:
    verdict = st.session_state.get(f"{prefix}-verdict")
    label = st.session_state.get(f"{prefix}-class") if verdict == "label-wrong" else None
    record(run_id, row, verdict, label=label, note=st.session_state.get(f"{prefix}-note"))


# --------------------------------------------------------------------------- gallery hooks

def verdict_caption(run: Run, row: int) -> str | None:
    """The caption line of an image with a verdict: 'verdict: label wrong → cat' (None without)."""
    verdict, new_label = row_verdict(run, row)
    if not verdict:
        return None
    return "verdict: " + verdict_text(verdict, run.classes[new_label] if new_label >= 0 else None)


def verdict_slot(run: Run, row: int, where: str) -> None:
    """Under a thumbnail: one compact selectbox (choosing records the verdict at once); in the
    detail: the verdict, the class for 'label wrong', a note, and a Record button."""
    verdict, new_label = row_verdict(run, row)
    if problem() is not None:  # said once above the page; no widget that could not record anything
        if where != "tile":
            st.caption(ui.plain(problem()))
        return
    suggested = suggestion(run, row)
    if where == "tile":
        options = ["", *VERDICTS] + (["undo"] if verdict else [])
        shown = new_label if verdict == "label-wrong" else suggested
        names = {"": "verdict…", "undo": "↶ undo", "label-wrong": ui.visible(f"label wrong → {run.classes[shown]}"),
                 **{v: VERDICT_NAMES[v] for v in VERDICTS if v != "label-wrong"}}
        widget = _unique_key(f"rvt-{run.id}-{row}-{verdict}-{new_label}")
        st.selectbox(ui.plain(f"Verdict on {run.predictions['path'].iat[int(row)]}"), options,
                     index=options.index(verdict), format_func=names.__getitem__, key=widget,
                     label_visibility="collapsed", on_change=_tile_changed, args=(widget, run.id, int(row), suggested))
        return
    prefix = _unique_key(f"rvd-{run.id}-{row}-{verdict}-{new_label}")
    with st.container(border=True, key=f"{prefix}-box"):
        st.markdown("**Review**")
        cols = st.columns([4, 2, 3, 1], vertical_alignment="bottom")
        chosen = cols[0].radio("Verdict", VERDICTS, index=VERDICTS.index(verdict) if verdict else None,
                               horizontal=True, format_func=VERDICT_NAMES.__getitem__, key=f"{prefix}-verdict")
        classes = list(range(len(run.classes)))
        cols[1].selectbox("Right class (label wrong)", classes, index=new_label if new_label >= 0 else suggested,
                          format_func=ui.class_label(run), key=f"{prefix}-class")
        cols[2].text_input("Note (optional)", key=f"{prefix}-note", max_chars=MAX_NOTE)
        cols[3].button("Record", key=f"{prefix}-record", type="primary", on_click=_detail_record,
                       args=(run.id, int(row), prefix), disabled=chosen is None)


def history_section(run: Run, row: int) -> None:
    """The detail's review history (who, when, before → now, note), newest first, and Undo."""
    verdict, new_label = row_verdict(run, row)
    review = _review(run)
    try:
        history = review.history(str(review.paths[int(row)])) if problem() is None else None
    except ReviewError as exc:
        _fail(exc)
        history = None
    if history is None:
        return
    if history.empty:
        st.caption("No verdict on this image yet.")
        return
    now = verdict_text(verdict, run.classes[new_label] if new_label >= 0 else None)
    with st.container(horizontal=True, vertical_alignment="center"):
        st.markdown(f"**Verdict history** · now: {ui.plain(now)}")
        st.button("Undo", key=_unique_key(f"rvh-undo-{run.id}-{row}-{len(history)}"), icon=":material/undo:",
                  on_click=undo, args=(run.id, int(row)), disabled=_nothing_to_undo(history))
    st.dataframe(ui.shown(history_table(history)), hide_index=True, width="stretch",
                 column_config={c: st.column_config.TextColumn(c) for c in ("reviewer", "before", "now", "note")})


def _nothing_to_undo(history: pd.DataFrame) -> bool:
    """True when every verdict on the image has been undone: its newest row is an undo back to no
    verdict (``ReviewDB.undo`` refuses another)."""
    return history["action"].iat[-1] == "undo" and pd.isna(history["restores"].iat[-1])


gallery.register_caption_field("verdict", verdict_caption)
gallery.register_item_slot("review-verdict", verdict_slot)
gallery.register_detail_section("review-history", history_section)


# --------------------------------------------------------------------------- metrics as reviewed

def _keep_as_reviewed(widget: str) -> None:
    st.session_state[AS_REVIEWED_KEY] = st.session_state[widget]


def _as_reviewed_toggle(where: str) -> bool:
    """The toggle of page ``where``; its value is one session value shared by both pages (kept in
    plain state, as ``gallery.transforms_ui`` does, since a page's widget state goes with the page)."""
    widget = f"{AS_REVIEWED_KEY}-{where}"
    st.session_state[widget] = bool(st.session_state.get(AS_REVIEWED_KEY, False))
    return st.toggle("Metrics as reviewed", key=widget, on_change=_keep_as_reviewed, args=(widget,),
                     help="Count the corrected labels of 'label wrong' verdicts and leave out excluded images "
                          "(the verdicts of every reviewer on these images).")


def _reviewed(run: Run):
    """The metrics as reviewed, or None (the reason said above the page) when the verdicts cannot be read."""
    root = cache.store_root()
    if problem() is not None:
        return None
    try:
        return cache.reviewed_metrics(run, cache.run_key(run), root, cache.review_db(root).revision())
    except ReviewError as exc:
        _fail(exc)
        return None


def overview_metrics_ui(run: Run) -> bool:
    """The Overview's toggle; when on, draws the headline metrics as reviewed and returns True (the
    page then skips its own), else returns False."""
    if not _as_reviewed_toggle("overview"):
        return False
    result = _reviewed(run)
    if result is None:
        return False  # the page's own metrics, with the given labels
    s = result.summary
    cols = st.columns(5)
    cols[0].metric("Accuracy as reviewed", f"{s['accuracy']:.2%}",
                   delta=f"{(s['accuracy'] - s['given_accuracy']) * 100:+.2f} points vs given labels")
    cols[1].metric("Macro-F1", f"{s.get('macro_f1', float('nan')):.3f}")
    cols[2].metric("Top-3 accuracy", f"{s.get('top3_accuracy', float('nan')):.2%}")
    cols[3].metric("Evaluated images", f"{s['n']:,}", delta=f"-{s['excluded']:,} excluded" if s["excluded"] else None,
                   delta_color="off")
    cols[4].metric("Errors", f"{s.get('errors', 0):,}")
    st.caption(ui.plain(f"Metrics on the '{run.eval_split}' split as reviewed: {s['relabelled']:,} labels corrected, "
                        f"{s['excluded']:,} images excluded (accuracy with the given labels "
                        f"{s['given_accuracy']:.2%} on {s['given_n']:,} images)."))
    return True


def per_class_as_reviewed_ui(run: Run) -> bool:
    """The Per-class page's toggle; when on, draws the per-class table as reviewed with its CSV
    (``<run>_per_class_reviewed.csv``, a ``labels`` column saying 'reviewed': the file
    ``python -m core review metrics --out`` writes) and returns True, else returns False."""
    if not _as_reviewed_toggle("per-class"):
        return False
    result = _reviewed(run)
    if result is None:
        return False
    s = result.summary
    st.download_button("Download CSV (labels as reviewed)", result.per_class.to_csv(index=False).encode("utf-8"),
                       file_name=f"{run.id}_per_class_reviewed.csv", mime="text/csv",
                       key="download-per-class-reviewed")
    st.dataframe(ui.shown(result.per_class), hide_index=True, width="stretch",
                 column_config={"class": st.column_config.TextColumn("class", pinned=True)})
    st.caption(f"Labels as reviewed: {s['relabelled']:,} corrected, {s['excluded']:,} images excluded; "
               f"accuracy {s['accuracy']:.2%} (given labels: {s['given_accuracy']:.2%}).")
    return True


# --------------------------------------------------------------------------- the review queue

def queue_rows(run: Run, *, which: str, min_confidence: float = 0.9, slice_id: int | None = None,
               cell: tuple[int, int] | None = None, cause: str = "model") -> tuple[np.ndarray, str]:
    """The rows of one queue set of the evaluation split, most likely label errors first, and a
    line saying how they were chosen and ordered."""
    key = cache.run_key(run)
    df = run.predictions
    issues = cache.label_issues(run, key, cache.derived_stamp(run, "label_issues"))
    mask = cache.eval_mask(run, key)
    errors = mask & ~df["correct"].to_numpy(bool)
    if which == "suspected" and issues is not None:
        rows = issues.loc[issues["is_issue"].to_numpy(bool), "row"].to_numpy(np.int64)
        return rows, "images the stored label-issues analysis flags, most likely wrong label first"
    if which == "suspected":
        rows, how = np.flatnonzero(errors), "errors (no label-issues analysis stored)"
    elif which == "confident":
        rows = np.flatnonzero(errors & (df["confidence"].to_numpy() >= min_confidence))
        rows = rows[np.argsort(-df["confidence"].to_numpy()[rows], kind="stable")]
        rows, with_causes = causes_ui.model_errors_first(run, rows)
        how = f"errors with confidence ≥ {min_confidence:.2f}"
        if with_causes:  # the analyst's errors lead: the image looks like its label, the model is wrong
            return rows, f"{how}; the model's own errors first, then the others, most confident first"
    elif which == "cause":
        rows = causes_ui.cause_rows(run, cause)
        if rows is None:
            return np.zeros(0, np.int64), "errors by cause (no causes stored: run diagnose)"
        return rows, f"errors whose cause is '{cause}', most confident cause first"
    elif which == "slice":
        from core.diagnose.slices import slice_rows

        rows, how = slice_rows(run, int(slice_id), compute=False), f"slice {slice_id}"
    elif which == "cell":
        true, pred = cell
        rows = views.cell_rows(df, mask, true=true, predicted=pred)
        how = f"true {run.classes[true]}, predicted {run.classes[pred]}"
    else:
        raise ValueError(f"Unknown queue {which!r}. Queues: {list(QUEUE_SETS)}")
    rank = None
    if issues is not None:
        rank = pd.Index(issues["row"].to_numpy(np.int64)).get_indexer(rows)
    order = "label-issue rank" if issues is not None else "probability of the given class, lowest"
    return queue_order(rows, true_prob=df["true_prob"].to_numpy(), issue_rank=rank), f"{how}; by {order} first"


def queue_set_ui(run: Run) -> tuple[np.ndarray, str, str]:
    """The queue's set (and its options); returns (rows, how they were chosen, the set's identity)."""
    key = cache.run_key(run)
    slices = cache.stored_slices(run, key, cache.derived_stamp(run, "error_slices"))
    choices = [c for c in QUEUE_SETS if c != "slice" or (slices is not None and len(slices))]
    cols = st.columns([2, 3])
    which = cols[0].selectbox("Images to review", choices, format_func=QUEUE_SETS.__getitem__,
                              key=ui.scoped(run, "review-set"))
    options: dict = {}
    with cols[1]:
        if which == "confident":
            options["min_confidence"] = st.slider("Minimum confidence", 0.0, 1.0, 0.9, 0.05,
                                                  key=ui.scoped(run, "review-min-confidence"))
        elif which == "cause":
            options["cause"] = st.selectbox("Cause", sorted(CAUSES, key=lambda c: c != "model"),  # model first
                                            format_func=CAPTION_WORDS.__getitem__,
                                            key=ui.scoped(run, "review-cause"))
        elif which == "slice":
            names = dict(zip(slices["slice_id"].astype(int), map(ui.visible, slices["name"].astype(str))))
            options["slice_id"] = st.selectbox("Slice", list(names), format_func=names.__getitem__,
                                               key=ui.scoped(run, "review-slice"))
        elif which == "cell":
            cm = cache.eval_confusion(run, key).copy()
            np.fill_diagonal(cm, -1)
            worst = np.unravel_index(int(np.argmax(cm)), cm.shape)
            k = list(range(len(run.classes)))
            pair = st.columns(2)
            true = pair[0].selectbox("True class", k, index=int(worst[0]), format_func=ui.class_label(run),
                                     key=ui.scoped(run, "review-true"))
            pred = pair[1].selectbox("Predicted class", k, index=int(worst[1]), format_func=ui.class_label(run),
                                     key=ui.scoped(run, "review-pred"))
            options["cell"] = (int(true), int(pred))
    rows, how = queue_rows(run, which=which, **options)
    identity = f"{which}:{sorted(options.items())}"
    return rows, how, identity


def _first_unreviewed(rows: np.ndarray, verdicts: np.ndarray, start: int = 0) -> int:
    """The position of the first row at or after ``start`` without a verdict (else ``start``,
    clipped to the queue)."""
    todo = np.flatnonzero(verdicts[rows[start:]] == "")
    return start + int(todo[0]) if todo.size else min(start, max(rows.size - 1, 0))


@st.fragment
def export_ui(run: Run) -> None:
    """The verdicts in force on the run's images, and their CSV: the file ``python -m core review
    export`` writes. A fragment with its own refresh: the queue's verdicts rerun only the queue's
    fragment, so this table says when it was read and is read again on its button."""
    try:
        review = _review(run) if problem() is None else None
        table = review.corrections() if review is not None else None
    except ReviewError as exc:
        table = None
        _fail(exc)
    if table is None:
        st.caption(ui.plain(problem() or "Verdicts are unavailable."))
        return
    # the file is made on the click (the queue's verdicts rerun only their fragment, so a table read
    # now may be older than the verdicts the page shows as saved)
    st.download_button("Export verdicts (CSV, every verdict in force when clicked)",
                       lambda: corrections_csv(review.corrections()), file_name=f"{run.id}_corrections.csv",
                       mime="text/csv", key="review-export", icon=":material/download:")
    left, right = st.columns([4, 1], vertical_alignment="center")
    left.caption(f"{len(table):,} verdict(s) in force, read at {time.strftime('%H:%M:%S')}; verdicts given "
                 "above since then appear on refresh (the export always has them).")
    right.button("Refresh", key="review-verdicts-refresh", icon=":material/refresh:")  # reruns this fragment
    if len(table):
        st.dataframe(ui.shown(table), hide_index=True, width="stretch",
                     column_config={c: st.column_config.TextColumn(c) for c in table.columns})
