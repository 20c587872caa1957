"""Error-analysis dashboard for Keras image classifiers: ``streamlit run dashboard/app.py``.

This script is only the router: page config, navigation with sections, the
run picker in the sidebar (or the run the address names), the chosen page, the
image detail the page opened (``gallery``), then the view written to the
address (``state``). Runs are read from the store at $ARTIFACTS_DIR (default
``artifacts/``) through ``core.run.store``.

Nothing the browser loads comes from outside the server: the page icon is an
emoji (a material-symbol favicon would be fetched from fonts.gstatic.com) and
the menu's material icons come from the font Streamlit serves itself.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

from core.quiet import quiet_start  # noqa: E402

quiet_start()  # before anything imports TensorFlow ("Try an image" loads the run's model)
import streamlit as st  # noqa: E402

from core.run.store import RunSchemaError, RunStore  # noqa: E402
from dashboard import (  # noqa: E402
    attention_ui,  # noqa: E402,F401 - registers the attention toggle and detail section
    cache,
    causes_ui,  # noqa: E402,F401 - registers the error cause's section of the image detail
    detail,  # noqa: E402,F401 - registers the image detail that runs in the browser
    diagnose_ui,  # noqa: E402,F401 - registers the diagnosis caption line of every gallery
    gallery,
    review_ui,  # noqa: E402,F401 - registers the verdict caption, slot and history of every gallery
    state,
    ui,
)

PAGES = Path(__file__).resolve().parent / "app_pages"  # not "pages/": that name switches Streamlit to its legacy multipage mode
PAGE_ICON = "🔎"
# What a page may raise on a run whose files are damaged in a way the checks at opening cannot
# see (a value of the wrong type, a file that vanished): shown as one line, never a traceback.
PAGE_ERRORS = (RunSchemaError, LookupError, ValueError, TypeError, OSError)  # boundary: the page's top level
log = logging.getLogger(__name__)


def page(name: str, title: str, icon: str, *, default: bool = False) -> st.Page:
    return st.Page(PAGES / f"{name}.py", title=title, icon=icon, url_path=name, default=default)


def run_pages() -> dict[str, list[st.Page]]:
    overview = page("overview", "Overview", ":material/dashboard:")

    def open_overview() -> None:
        st.switch_page(overview)

    # The root address opens /overview, so that the Overview has an address of its own (a
    # default page answers only at "/", and a bookmarked /overview said "page not found").
    home = st.Page(open_overview, title="Overview", url_path="home", default=True, visibility="hidden")
    return {
        "Run": [home, overview, page("per_class", "Per-class report", ":material/table:")],
        "Errors": [page("confusion", "Confusion matrix", ":material/grid_on:"),
                   page("errors", "Errors", ":material/error:"),
                   page("embeddings", "Embeddings", ":material/scatter_plot:"),
                   page("diagnose", "Diagnose", ":material/troubleshoot:"),
                   page("review", "Review queue", ":material/rate_review:")],
        "Tools": [page("compare", "Compare runs", ":material/compare_arrows:"),
                  page("try_image", "Try an image", ":material/upload:"),
                  page("welcome", "Add a run", ":material/add:")],
    }


def start_pages() -> dict[str, list[st.Page]]:
    # Every page's address leads to the start page, so a bookmark of /errors on an empty
    # store shows what to do rather than "page not found"; the menu is hidden.
    aliases = ["overview", "per_class", "confusion", "errors", "embeddings", "diagnose", "review", "compare",
               "try_image"]
    return {"Start": [page("welcome", "Start", ":material/rocket_launch:", default=True)]
            + [st.Page(PAGES / "welcome.py", title="Start", url_path=name) for name in aliases]}


def run_page(pg: st.Page) -> None:
    """Run the chosen page, then the image detail it opened; a run's data that cannot be used
    stops the page with one line. The URL is written from the view however the page ends."""
    notices = st.container()  # above the page: what the address asked for that could not be shown
    state.start_run(pg.url_path)
    gallery.start_run()
    stamp = ui.run_stamp_now()
    try:
        pg.run()
        gallery.restore_detail_from_url(st.session_state.get(ui.SCOPE_KEY))
        gallery.detail_ui_if_open()
        st.session_state.pop(ui.REDRAWN_KEY, None)
    except PAGE_ERRORS as exc:
        ui.redraw_if_replaced(stamp)  # the run was re-made while the page read it: draw the new one
        log.warning("Page %r stopped on run %r", pg.title, st.session_state.get(ui.RUN_KEY), exc_info=True)
        run_id = st.session_state.get(ui.RUN_KEY)
        what = f"This page cannot show run '{run_id}'" if run_id else "This page cannot be shown"
        ui.cannot_show(what, exc)
    finally:
        for line in state.warnings():
            notices.warning(ui.plain(line))
        state.write_url(scope=st.session_state.get(ui.SCOPE_KEY), run_id=st.session_state.get(ui.RUN_KEY))


def main() -> None:
    st.set_page_config(page_title="Classifier errors", page_icon=PAGE_ICON, layout="wide")
    runs = RunStore(cache.store_root()).list_runs()
    pages = run_pages() if runs else start_pages()
    pg = st.navigation(pages, position="sidebar" if runs else "hidden")
    if runs and st.session_state.pop(ui.SHOW_OVERVIEW_KEY, False):
        st.switch_page(pages["Run"][1])  # a run was just built on the start page
    if runs:
        ui.run_from_url([r.run_id for r in runs])
    with st.sidebar:
        if runs:
            ui.run_picker_ui(runs)
            review_ui.reviewer_ui()
        st.caption(f"Store: {ui.plain(cache.store_root())}")
    if runs and ui.unknown_run_ui(runs):
        return
    notice = st.session_state.get(ui.GONE_KEY) if runs else None
    if notice:
        st.warning(ui.plain(notice))
    run_page(pg)


main()
