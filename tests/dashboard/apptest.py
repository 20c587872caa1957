"""Set-up shared by the dashboard's AppTest tests: the app's file, a store handed to the app through
$ARTIFACTS_DIR, and a page opened the way a user does (the sidebar's run picker) or the way an
address does (its query parameters)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
TIMEOUT = 60


@contextmanager
def artifacts_dir(path: str | os.PathLike) -> Iterator[None]:
    """$ARTIFACTS_DIR is ``path`` inside the block; after it, what it was before (or unset)."""
    old = os.environ.get("ARTIFACTS_DIR")
    os.environ["ARTIFACTS_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ARTIFACTS_DIR", None)
        else:
            os.environ["ARTIFACTS_DIR"] = old


def unescape(markdown: str) -> str:
    """The text a Markdown source renders as (``ui.plain`` backslash-escapes user text and puts
    invisible word joiners where autolinks and shortcodes would start)."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u2060", "")


def open_page(page: str, run_id: str, *, timeout: float = TIMEOUT) -> AppTest:
    """The app opened, run ``run_id`` chosen in the sidebar's picker, then ``page``; no exception."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    at.sidebar.selectbox(key="run_id").set_value(run_id)
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert not at.exception, (page, run_id, [e.value for e in at.exception])
    return at


def open_address(page: str, *, timeout: float = TIMEOUT, **params: str) -> AppTest:
    """A fresh session on ``/<page>?<params>`` (what a reload or a shared link does); no exception."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.query_params.update(params)
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert not at.exception, (page, params, [e.value for e in at.exception])
    return at
