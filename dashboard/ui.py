"""Widgets shared by several pages: the run picker, the current run and the image gallery.

Text that comes from user data (file names, class names) goes through
``plain`` before it reaches a Markdown-rendering element, so it is shown as
text, never interpreted as Markdown or HTML.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import streamlit as st

from core.store import Run, RunSchemaError, RunStore, RunSummary
from dashboard import cache, views

RUN_KEY = "run_id"
CELL_KEY = "confusion_cell"  # (run id, true, predicted) chosen on the confusion page
SHOW_OVERVIEW_KEY = "show_overview"  # set by the start page once it has built a run
THUMB_PX = 112
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=&\"'])")


def plain(text: object) -> str:
    """``text`` with every Markdown/HTML special character backslash-escaped."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", str(text)).replace("\n", " ")


def describe_run(summary: RunSummary) -> str:
    date = summary.created[:16].replace("T", " ")
    acc = f"{summary.accuracy:.1%}" if summary.accuracy == summary.accuracy else "n/a"
    return f"{summary.name} · {summary.model} · {summary.data} · {date} · acc {acc}"


def run_picker_ui(runs: Sequence[RunSummary]) -> str | None:
    """Sidebar selectbox of the store's runs (newest first); returns the chosen run id."""
    ids = [r.run_id for r in runs]
    if not ids:
        return None
    if st.session_state.get(RUN_KEY) not in ids:
        st.session_state[RUN_KEY] = ids[0]
    labels = {r.run_id: describe_run(r) for r in runs}
    return st.sidebar.selectbox("Run", ids, key=RUN_KEY, format_func=labels.__getitem__,
                                help="Runs in the store: name · model · data set · date · accuracy")


def current_run() -> Run:
    """The run chosen in the sidebar; stops the page with a message when there is none."""
    run_id = st.session_state.get(RUN_KEY)
    if not run_id:
        st.info("No run chosen. Pick one in the sidebar, or build one from the start page.")
        st.stop()
    try:
        return cache.load_run(cache.store_root(), run_id)
    except RunSchemaError as exc:
        st.error(str(exc))
        st.stop()
    except (LookupError, OSError, ValueError) as exc:
        st.error(f"Cannot read run {run_id!r}: {exc}")
        st.stop()


def other_runs(exclude: str) -> list[RunSummary]:
    return [r for r in RunStore(cache.store_root()).list_runs() if r.run_id != exclude]


def thumbnail(run: Run, row: int, *, size: int = THUMB_PX) -> np.ndarray | None:
    """The image of ``row`` scaled to about ``size`` px on its long side (crisp when enlarged),
    or None when it cannot be shown (``cache.thumbnail`` gives the reason). Cached."""
    return cache.thumbnail(run, cache.run_key(run), int(row), size)[0]


def item_caption(run: Run, row: int) -> list[str]:
    """Caption lines of a gallery image: true class, predicted class + confidence, top-3, file."""
    df = run.predictions
    r = df.iloc[int(row)]
    top = [f"{r['predicted_label']} {r['confidence']:.2f}"]
    for j in (2, 3):
        if f"top{j}" in df.columns:
            top.append(f"{run.classes[int(r[f'top{j}'])]} {r[f'top{j}_prob']:.2f}")
    return [
        f"true: {r['true_label']}",
        f"predicted: {r['predicted_label']} ({r['confidence']:.2f})",
        "top-3: " + ", ".join(top),
        str(r["path"]),
    ]


def gallery_ui(run: Run, rows: np.ndarray, *, key: str, page_key: str | None = None,
               per_page: int = 24, columns: int = 6, order_note: str = "most confident first",
               extra_caption: Callable[[int], str] | None = None) -> np.ndarray:
    """A paged grid of thumbnails with captions; loads only the current page's images.

    The grid is a container with key ``gallery-<key>`` (CSS class
    ``st-key-gallery-<key>``), each image in a container ``<key>-item-<i>``.
    ``page_key`` (default ``<key>-page``) keys the page selector: give it the
    selection's identity so that a new selection starts at page 1.
    ``extra_caption(row)`` adds a line under the standard caption.
    Returns the rows shown.
    """
    rows = np.asarray(rows, dtype=np.int64)
    with st.container(key=f"gallery-{key}"):
        if rows.size == 0:
            st.info("No images to show.")
            return rows
        pages = views.page_count(rows.size, per_page)
        page = st.pagination(pages, key=page_key or f"{key}-page") if pages > 1 else 1
        shown = views.page_of(rows, page=page, per_page=per_page)
        start = (min(max(page, 1), pages) - 1) * per_page
        st.caption(f"Images {start + 1:,}-{start + shown.size:,} of {rows.size:,}, {order_note}.")
        for i, row in enumerate(shown):
            if i % columns == 0:  # one st.columns per line keeps lines aligned and items in order
                cols = st.columns(columns)
            with cols[i % columns], st.container(key=f"{key}-item-{i}"):
                img, reason = cache.thumbnail(run, cache.run_key(run), int(row), THUMB_PX)
                if img is None:
                    st.caption(f"(image unavailable: {plain(reason)})")
                else:
                    st.image(img, width="stretch")
                lines = item_caption(run, row)
                if extra_caption is not None:
                    lines.append(extra_caption(int(row)))
                st.caption("  \n".join(plain(line) for line in lines))
    return shown


def class_label(run: Run):
    """format_func for class-index widgets: 'index · name'."""
    classes = run.classes
    return lambda i: f"{i} · {classes[i]}"
