"""Widgets shared by several pages: the run picker, the current run, run-scoped state keys.

Text that comes from user data (file, class and run names, reasons, notes) goes
through ``plain`` before it reaches a Markdown-rendering element (``st.title``,
``st.caption``, ``st.error``, widget labels...), so it is shown as its literal
characters: never emphasis, a link, an emoji or HTML. Widget *options*
(``format_func`` results) and dataframes are not Markdown and take raw text.

State that belongs to a run (the chosen confusion cell, filters, gallery pages,
chart selections) is kept under keys made by ``scoped(run, name)``, which name
the run and its written version. Every widget of such state is therefore a new
widget for another run, and ``enter_run_scope`` drops the state of the run
shown before when the run changes (switched in the picker, deleted or re-made).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import streamlit as st

from core.run.store import Run, RunStore, RunSummary
from dashboard import cache, state, views

RUN_KEY = "run_id"
CELL_KEY = "confusion-cell"  # scoped: (true, predicted) chosen on the confusion page
SHOW_OVERVIEW_KEY = "show_overview"  # set by the start page once it has built a run
GONE_KEY = "run-gone-notice"  # one line: the run shown was deleted, another is shown instead
SCOPE_KEY = "run-scope"  # the scope of the run whose state the session holds
SCOPED_PREFIX = "run:"
UNKNOWN_KEY = "run-unknown"  # the run the address named that the store does not have
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=&\"'])")
_WORD_JOINER = "\u2060"  # invisible and unbreakable: splits what the autolinker and shortcodes look for
_LINK_STARTS = re.compile(r"([:@])(?=\S)|(?i:(?=www\\\.))")


# Characters that change how the text around them is shown without being seen: C0/C1 controls,
# bidi embeddings, overrides and isolates (U+202E shows "\u202eevil\u202c txt.exe" as "live txt.exe"),
# marks and zero-width spaces. ``visible`` writes each as <U+XXXX>.
_HIDDEN = re.compile("[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u061c\u200b\u200e\u200f"
                     "\u202a-\u202e\u2066-\u2069\ufeff\ufff9-\ufffb]")


def visible(text: object) -> str:
    """``text`` with every invisible control or bidi character written as ``<U+XXXX>``: for widget
    options and table cells, which are not Markdown (``plain`` does this too).

    >>> visible("\u202eevil\u202c txt.exe")
    '<U+202E>evil<U+202C> txt.exe'
    """
    return _HIDDEN.sub(lambda m: f"<U+{ord(m.group()):04X}>", str(text))


def shown(table):
    """A copy of the DataFrame ``table`` whose text cells are ``visible`` (for ``st.dataframe``)."""
    out = table.copy()
    for column in out.columns:
        if out[column].dtype == object or str(out[column].dtype) in ("string", "str"):
            values = out[column]
            out[column] = values.where(values.isna(), values.astype(str).str.replace(_HIDDEN, lambda m: (
                f"<U+{ord(m.group()):04X}>"), regex=True))
    return out


def plain(text: object) -> str:
    """``text`` as Markdown that shows exactly its characters, on one line.

    Every Markdown/HTML special character is backslash-escaped. That alone does
    not stop GitHub-style autolinks (``http://x.y``, ``www.x.y``, ``a@b.c``) or
    Streamlit's ``:emoji:``/``:material/icon:`` shortcodes, which act on the
    text after escapes are undone, so an invisible word joiner (U+2060) follows
    every ``:`` and ``@`` that a non-space follows, and precedes every ``www.``.

    >>> plain("**y** http://e.example")
    '\\\\*\\\\*y\\\\*\\\\* http\\\\:\\u2060//e\\\\.example'
    """
    escaped = _MARKDOWN_PUNCTUATION.sub(r"\\\1", visible(" ".join(str(text).splitlines())))
    return _LINK_STARTS.sub(lambda m: (m.group(1) or "") + _WORD_JOINER, escaped)


def describe_run(summary: RunSummary, problem: str | None = None) -> str:
    """The picker's line for a run (plain text: options are not Markdown)."""
    if problem:
        return visible(f"⚠ {summary.name} · broken")
    date = summary.created[:16].replace("T", " ")
    acc = f"{summary.accuracy:.1%}" if summary.accuracy == summary.accuracy else "n/a"
    return visible(f"{summary.name} · {summary.model} · {summary.data} · {date} · acc {acc}")


def readable_first(runs: Sequence[RunSummary]) -> list[tuple[RunSummary, str | None]]:
    """``runs`` with the reason each cannot be opened (None if it can), readable ones first,
    each group in the store's order (newest first)."""
    root = cache.store_root()
    pairs = [(r, cache.run_problem(root, r)) for r in runs]
    return [p for p in pairs if p[1] is None] + [p for p in pairs if p[1] is not None]


def _forget_gone_notice() -> None:
    """Another run was picked: the notices and the old run's view in the address go."""
    st.session_state.pop(GONE_KEY, None)
    st.session_state.pop(UNKNOWN_KEY, None)
    state.forget_page_params()
    state.close_detail()


def run_from_url(ids: Sequence[str]) -> None:
    """At the session's first run, choose the run the address names (``?run=<id>``); an id the
    store lacks is kept in ``UNKNOWN_KEY`` for ``unknown_run_ui``."""
    if RUN_KEY in st.session_state or UNKNOWN_KEY in st.session_state:
        return
    wanted = state.url_value(state.RUN_PARAM)
    if not wanted:
        return
    if wanted in ids:
        st.session_state[RUN_KEY] = wanted
    else:
        st.session_state[UNKNOWN_KEY] = wanted


def _choose_run(run_id: str) -> None:
    st.session_state[RUN_KEY] = run_id
    _forget_gone_notice()


def unknown_run_ui(runs: Sequence[RunSummary]) -> bool:
    """When the address named a run the store does not have: say so, list the runs to open
    instead and return True (the page is not drawn); False otherwise."""
    wanted = st.session_state.get(UNKNOWN_KEY)
    if not wanted:
        return False
    st.error(plain(f"The address names run '{wanted}', which is not in the store {cache.store_root()}."))
    st.write("Open one of its runs instead:")
    for i, (summary, problem) in enumerate(readable_first(runs)):
        st.button(plain(describe_run(summary, problem)), key=f"open-run-{i}", on_click=_choose_run,
                  args=(summary.run_id,), icon=":material/arrow_forward:", disabled=problem is not None)
    return True


def run_picker_ui(runs: Sequence[RunSummary]) -> str | None:
    """Sidebar selectbox of the store's runs, readable ones first (newest first), broken ones
    last as "⚠ name · broken"; returns the chosen run id.

    The first readable run is chosen at start. When the chosen run has left the store, the
    first run is chosen instead and ``GONE_KEY`` says so until another run is picked.
    """
    pairs = readable_first(runs)
    ids = [r.run_id for r, _ in pairs]
    if not ids:
        return None
    chosen = st.session_state.get(RUN_KEY)
    if chosen not in ids:
        if chosen is not None:
            st.session_state[GONE_KEY] = f"Run '{chosen}' is no longer in the store; showing '{ids[0]}'."
        st.session_state[RUN_KEY] = ids[0]
    labels = {r.run_id: describe_run(r, problem) for r, problem in pairs}
    return st.sidebar.selectbox("Run", ids, key=RUN_KEY, format_func=labels.__getitem__,
                                on_change=_forget_gone_notice,
                                help="Runs in the store: name · model · data set · date · accuracy. "
                                     "Runs that cannot be opened come last, marked broken.")


def run_scope(run: Run) -> str:
    """The run and its written version: '<id>.<uid>'."""
    return f"{run.id}.{run.uid}"


def scoped(run: Run, name: str, *, other: Run | None = None) -> str:
    """The session-state (and widget) key of state ``name`` that belongs to ``run`` (and to
    ``other``, for state that belongs to a pair of runs): 'run:<id>.<uid>:<name>[:<id>.<uid>]'."""
    key = f"{SCOPED_PREFIX}{run_scope(run)}:{name}"
    return key if other is None else f"{key}:{run_scope(other)}"


def enter_run_scope(run: Run | None) -> None:
    """Make ``run`` (None: no readable run) the run the session's state belongs to; when it
    changes, drop every scoped key of the run shown before."""
    scope = None if run is None else run_scope(run)
    if SCOPE_KEY in st.session_state and st.session_state[SCOPE_KEY] == scope:
        return
    keep = f"{SCOPED_PREFIX}{scope}:"
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith(SCOPED_PREFIX) and not key.startswith(keep):
            del st.session_state[key]
    st.session_state[SCOPE_KEY] = scope


REDRAWN_KEY = "run-redrawn"  # how many times in a row a page was redrawn because its run was re-made


def run_stamp_now() -> str:
    """The chosen run's ``cache.run_stamp`` now ("" without a chosen run)."""
    run_id = st.session_state.get(RUN_KEY)
    return cache.run_stamp(cache.store_root(), run_id) if run_id else ""


def redraw_if_replaced(stamp: str) -> None:
    """When the chosen run was re-made (its link now names another version) since ``stamp`` was
    taken, the files the page was reading went with the old version: draw the page again, on the
    new version, instead of saying the run is broken (at most 3 times in a row)."""
    if stamp == run_stamp_now() or st.session_state.get(REDRAWN_KEY, 0) >= 3:
        return
    st.session_state[REDRAWN_KEY] = st.session_state.get(REDRAWN_KEY, 0) + 1
    st.rerun()


def current_run() -> Run:
    """The run chosen in the sidebar; stops the page with one line when there is none or it
    cannot be opened (the reason, naming the file at fault)."""
    run_id = st.session_state.get(RUN_KEY)
    if not run_id:
        st.info("No run chosen. Pick one in the sidebar, or build one from the start page.")
        st.stop()
    stamp = run_stamp_now()
    try:
        run = cache.load_run(cache.store_root(), run_id)
    except cache.RUN_ERRORS as exc:
        redraw_if_replaced(stamp)
        enter_run_scope(None)
        st.error(plain(f"Run '{run_id}' is broken: {views.one_line(exc)}"))
        st.stop()
    enter_run_scope(run)
    return run


def other_runs(exclude: str) -> list[tuple[RunSummary, str | None]]:
    """Every run but ``exclude`` with the reason it cannot be opened (None if it can),
    readable ones first."""
    return [p for p in readable_first(RunStore(cache.store_root()).list_runs()) if p[0].run_id != exclude]


def cannot_show(what: str, exc: BaseException | str) -> None:
    """One ``st.error`` line, as text: ``what`` cannot be shown, and why."""
    st.error(plain(f"{what}: {views.one_line(exc)}"))


def class_label(run: Run):
    """format_func for class-index widgets: 'index · name'."""
    classes = run.classes
    return lambda i: visible(f"{i} · {classes[i]}")


# A click anywhere on a table row picks it: the tables take single cells as well as rows (a click on
# a cell selects that cell, not its row, in st.dataframe), and the callbacks read either.
ROW_PICK = ("single-row", "single-cell")


def picked_row(table_key: str) -> int | None:
    """The table row picked in ``st.dataframe(key=table_key, selection_mode=ROW_PICK)``: the selected
    row, else the row of the selected cell (positions in the table as shown), else None."""
    selection = (st.session_state.get(table_key) or {}).get("selection") or {}
    rows = selection.get("rows") or []
    if rows:
        return int(rows[0])
    cells = selection.get("cells") or []
    return int(cells[0][0]) if cells else None
