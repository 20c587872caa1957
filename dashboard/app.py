"""Error-analysis dashboard for Keras image classifiers: ``streamlit run dashboard/app.py``.

This script is only the router: page config, navigation with sections, the
run picker in the sidebar, then the chosen page. Runs are read from the store
at $ARTIFACTS_DIR (default ``artifacts/``) through ``core.store``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from core.store import RunStore  # noqa: E402
from dashboard import cache, ui  # noqa: E402

PAGES = Path(__file__).resolve().parent / "app_pages"  # not "pages/": that name switches Streamlit to its legacy multipage mode


def page(name: str, title: str, icon: str, *, default: bool = False) -> st.Page:
    return st.Page(PAGES / f"{name}.py", title=title, icon=icon, url_path=name, default=default)


def main() -> None:
    st.set_page_config(page_title="Classifier errors", page_icon=":material/troubleshoot:",
                       layout="wide")
    runs = RunStore(cache.store_root()).list_runs()
    if not runs:
        # Every page's address leads to the start page, so a bookmark of /errors on an empty
        # store shows what to do rather than "page not found"; the menu is hidden.
        aliases = ["overview", "per_class", "confusion", "errors", "embeddings", "compare", "try_image"]
        pages = {"Start": [page("welcome", "Start", ":material/rocket_launch:", default=True)]
                 + [st.Page(PAGES / "welcome.py", title="Start", url_path=name) for name in aliases]}
    else:
        pages = {
            "Run": [page("overview", "Overview", ":material/dashboard:", default=True),
                    page("per_class", "Per-class report", ":material/table:")],
            "Errors": [page("confusion", "Confusion matrix", ":material/grid_on:"),
                       page("errors", "Errors", ":material/error:"),
                       page("embeddings", "Embeddings", ":material/scatter_plot:")],
            "Tools": [page("compare", "Compare runs", ":material/compare_arrows:"),
                      page("try_image", "Try an image", ":material/upload:"),
                      page("welcome", "Add a run", ":material/add:")],
        }
    pg = st.navigation(pages, position="sidebar" if runs else "hidden")
    if runs and st.session_state.pop(ui.SHOW_OVERVIEW_KEY, False):
        st.switch_page(pages["Run"][0])  # a run was just built on the start page
    with st.sidebar:
        if runs:
            ui.run_picker_ui(runs)
        st.caption(f"Store: {ui.plain(cache.store_root())}")
    pg.run()


main()
