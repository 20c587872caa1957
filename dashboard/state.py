"""The view in the address bar: what a reload, a bookmark or a shared link restores.

Every page keeps its view in ``st.session_state`` (under run-scoped keys, see
``ui.scoped``) and mirrors it in the URL's query string, one short parameter
per item::

    run=<run id>                      every page (compare: a=<run id>&b=<run id>)
    cell=<true>,<predicted>           confusion matrix: the chosen cell (class indices)
    values=share  log=1  top=<N>      confusion matrix display
    true=<i,j,..>  pred=<i,..>  conf=<low>,<high>          errors filters
    colour=<name>  split=<name>  classes=<i,..>  view=<x0>,<x1>,<y0>,<y1>  sel=<shapes>   embeddings
    errors=1  order=conf              embeddings: the selection's gallery (errors only, most confident first)
    pair=<true>,<predicted>           per-class report: the confused pair shown
    p=<n>                             the page of the page's main gallery
    img=<row>                         the image whose detail is open

A session seeds its state from the URL the first time it draws a page, and
only from a URL this session has not written for another page or run (a
reload or a shared link is a new session); from then on the state leads and
the URL follows (``publish``, written once per run by the app). A value that
does not fit the run (a class index out of range, a malformed number) is
dropped with one warning naming it.

The codecs (``decode_*``/``encode_*``) are pure functions: they raise
``ValueError`` naming the value they were given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import streamlit as st

RUN_PARAM = "run"
_KEPT_KEY = "url-kept"  # parameters the page writes itself, kept by write_url (keep())
_PUBLISHED_KEY = "url-published"  # this run's parameters, collected by publish()
_SEEDED_PAGES_KEY = "url-seeded-pages"  # pages already drawn in this session
_WRITTEN_BY_KEY = "url-written-by"  # (page, run scope) that wrote the URL last, in this session
_WARNINGS_KEY = "url-warnings"
_PAGE_KEY = "url-page"  # the page this script run draws


# --------------------------------------------------------------------------- codecs (pure)

def decode_int(text: str, *, low: int, high: int, name: str = "value") -> int:
    """An integer in [low, high].

    >>> decode_int("3", low=0, high=9)
    3
    >>> decode_int("12", low=0, high=9, name="class")
    Traceback (most recent call last):
    ValueError: class must be an integer from 0 to 9. Received: '12'
    """
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}. Received: {text!r}")
    return value


def decode_ints(text: str, *, low: int, high: int, name: str = "value") -> list[int]:
    """Comma-separated integers in [low, high], duplicates dropped, order kept ('' -> []).

    >>> decode_ints("3,1,3", low=0, high=9)
    [3, 1]
    """
    out: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        if part:
            value = decode_int(part, low=low, high=high, name=name)
            if value not in out:
                out.append(value)
    return out


def encode_ints(values: Sequence[int]) -> str:
    return ",".join(str(int(v)) for v in values)


def decode_pair(text: str, *, high: int, name: str = "cell") -> tuple[int, int]:
    """'<i>,<j>' with both in [0, high].

    >>> decode_pair("2,5", high=9)
    (2, 5)
    >>> decode_pair("2,12", high=9)
    Traceback (most recent call last):
    ValueError: cell must be two class indices from 0 to 9, 'i,j'. Received: '2,12'
    """
    parts = str(text).split(",")
    try:
        if len(parts) != 2:
            raise ValueError(text)
        return decode_int(parts[0], low=0, high=high), decode_int(parts[1], low=0, high=high)
    except ValueError:
        raise ValueError(f"{name} must be two class indices from 0 to {high}, 'i,j'. Received: {text!r}") from None


def decode_floats(text: str, *, count: int, name: str = "value") -> tuple[float, ...]:
    """``count`` comma-separated finite numbers.

    >>> decode_floats("0.5,1", count=2)
    (0.5, 1.0)
    """
    parts = str(text).split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be {count} comma-separated numbers. Received: {text!r}")
    return values


def decode_range(text: str, *, low: float = 0.0, high: float = 1.0, name: str = "range") -> tuple[float, float]:
    """'<a>,<b>' with low <= a <= b <= high.

    >>> decode_range("0.2,0.9")
    (0.2, 0.9)
    """
    a, b = decode_floats(text, count=2, name=name)
    if not low <= a <= b <= high:
        raise ValueError(f"{name} must satisfy {low:g} <= low <= high <= {high:g}. Received: {text!r}")
    return a, b


def decode_window(text: str, *, name: str = "view") -> tuple[float, float, float, float]:
    """'<x0>,<x1>,<y0>,<y1>' with x0 < x1 and y0 < y1."""
    x0, x1, y0, y1 = decode_floats(text, count=4, name=name)
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"{name} must be x0,x1,y0,y1 with x0 < x1 and y0 < y1. Received: {text!r}")
    return x0, x1, y0, y1


def decode_choice(text: str, choices: Sequence[str], *, name: str = "value") -> str:
    """One of ``choices``.

    >>> decode_choice("b", ["a", "b"])
    'b'
    """
    if text not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}. Received: {text!r}")
    return text


def number(value: float) -> str:
    """A float as short text that reads back to 6 significant digits: 0.1 -> '0.1'."""
    return f"{float(value):.6g}"


def encode_floats(values: Sequence[float]) -> str:
    return ",".join(number(v) for v in values)


def encode_shapes(shapes: Sequence[tuple[str, tuple]]) -> str:
    """Selection shapes as text: 'b:x0,x1,y0,y1' or 'l:x,y,x,y,...', joined by '~'.

    >>> encode_shapes([("box", (0, 1, 2, 3)), ("lasso", ((0, 0), (1, 0), (0, 1)))])
    'b:0,1,2,3~l:0,0,1,0,0,1'
    """
    parts = []
    for kind, geometry in shapes:
        if kind == "box":
            parts.append("b:" + encode_floats(geometry))
        else:
            parts.append("l:" + encode_floats([v for point in geometry for v in point]))
    return "~".join(parts)


def decode_shapes(text: str, *, name: str = "sel") -> list[tuple[str, tuple]]:
    """The inverse of ``encode_shapes``.

    >>> decode_shapes("b:0,1,2,3~l:0,0,1,0,0,1")
    [('box', (0.0, 1.0, 2.0, 3.0)), ('lasso', ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)))]
    """
    shapes: list[tuple[str, tuple]] = []
    for part in filter(None, str(text).split("~")):
        kind, _, values = part.partition(":")
        if kind == "b":
            x0, x1, y0, y1 = decode_floats(values, count=4, name=name)
            shapes.append(("box", (min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1))))
        elif kind == "l":
            numbers = values.split(",")
            if len(numbers) < 6 or len(numbers) % 2:
                raise ValueError(f"{name}: a lasso needs at least 3 x,y pairs. Received: {part[:60]!r}")
            flat = decode_floats(values, count=len(numbers), name=name)
            shapes.append(("lasso", tuple(zip(flat[0::2], flat[1::2]))))
        else:
            raise ValueError(f"{name}: each shape starts with 'b:' (box) or 'l:' (lasso). Received: {part[:60]!r}")
    return shapes


def round_shapes(shapes: Sequence[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
    """``shapes`` with every number as the URL keeps it (6 significant digits), so that the state
    and a reload of its URL select exactly the same rows."""
    return decode_shapes(encode_shapes(shapes)) if shapes else []


# --------------------------------------------------------------------------- the URL

def url_value(param: str) -> str | None:
    """The URL's value of ``param`` (its last occurrence), or None."""
    try:
        values = st.query_params.get_all(param)
    except Exception:  # boundary: no script run context (a bare import); streamlit's error types vary
        return None
    return values[-1] if values else None


def current_page() -> str:
    """The page this script run draws (its URL path), as the app set it in ``start_run``."""
    return str(st.session_state.get(_PAGE_KEY, ""))


def may_seed(scope: str | None) -> bool:
    """True while the session may take the current page's state from the URL: the first time it
    draws the page, from a URL that it has not written itself for another page or run."""
    page = current_page()
    if page in st.session_state.get(_SEEDED_PAGES_KEY, set()):
        return False
    written = st.session_state.get(_WRITTEN_BY_KEY)
    return written is None or written == (page, scope)


def seed(key: str, param: str, decode: Callable[[str], object], *, scope: str | None,
         transform: Callable[[object], object] | None = None) -> bool:
    """Put the URL's value of ``param``, decoded, into ``st.session_state[key]`` before its widget is
    drawn, when the session may seed the page (``may_seed``) and ``key`` holds nothing yet.
    A value that cannot be decoded is dropped with a warning. Returns True when it seeded."""
    text = url_value(param)
    if text is None or key in st.session_state or not may_seed(scope):
        return False
    try:
        value = decode(text)
    except ValueError as exc:
        warn(f"Address parameter '{param}' ignored: {exc}")
        return False
    st.session_state[key] = transform(value) if transform else value
    return True


def publish(**params: str | None) -> None:
    """Parameters this page shows now (None or '' leaves one out); the app writes them, with the
    run, to the URL once the page is drawn (``write_url``)."""
    collected = st.session_state.setdefault(_PUBLISHED_KEY, {})
    for name, value in params.items():
        if value is None or value == "":
            collected.pop(name, None)
        else:
            collected[name] = str(value)


def url_position(param: str, rows) -> int | None:
    """Where the row the URL's ``param`` names (``img=<row>``) stands in ``rows``, or None when it
    names none of them."""
    text = url_value(param)
    if text is None or not text.isdigit():
        return None
    found = np.flatnonzero(np.asarray(rows) == int(text))
    return int(found[0]) if found.size else None


def keep(*names: str) -> None:
    """Parameters the page itself writes into the address (``img``: the detail open in the browser;
    ``qimg``: the review queue's image): ``write_url`` keeps their current values instead of
    dropping them, for this run of the page."""
    st.session_state.setdefault(_KEPT_KEY, set()).update(names)


def start_run(page: str) -> None:
    """Forget the parameters published by the previous run; ``page`` is the page drawn now."""
    st.session_state[_PUBLISHED_KEY] = {}
    st.session_state[_KEPT_KEY] = set()
    st.session_state[_PAGE_KEY] = page


def warn(line: str) -> None:
    """Say once, above the page, that something the address asked for could not be shown."""
    lines = st.session_state.setdefault(_WARNINGS_KEY, [])
    if line not in lines:
        lines.append(line)


def warnings() -> list[str]:
    """The warnings about URL values dropped since the last call (one line each)."""
    return st.session_state.pop(_WARNINGS_KEY, [])


def write_url(*, scope: str | None, run_id: str | None) -> None:
    """Make the URL's query string exactly ``run`` plus what the page published, and remember that
    this session has drawn the current page and wrote the URL for it."""
    params = {}
    if run_id is not None:
        params[RUN_PARAM] = run_id
    params.update(st.session_state.get(_PUBLISHED_KEY, {}))
    for name in sorted(st.session_state.get(_KEPT_KEY, ())):
        value = url_value(name)
        if name not in params and value is not None:
            params[name] = value
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)
    page = current_page()
    st.session_state.setdefault(_SEEDED_PAGES_KEY, set()).add(page)
    st.session_state[_WRITTEN_BY_KEY] = (page, scope)


def forget_page_params() -> None:
    """Drop every parameter but the run from the URL and the published set (another run was chosen,
    so the old run's cell, filters and selection mean nothing)."""
    st.session_state[_PUBLISHED_KEY] = {}
    st.session_state[_WRITTEN_BY_KEY] = ("", None)


# --------------------------------------------------------------------------- the image detail

DETAIL_KEY = "image-detail"  # {"source": str, "run": str, "row": int} while the detail is open
IMG_PARAM = "img"


def close_detail() -> None:
    """Close the image detail (its session state and its ``img`` in the address)."""
    st.session_state.pop(DETAIL_KEY, None)
    publish(**{IMG_PARAM: None})
