"""One image gallery and one image detail, used by every page.

``gallery_ui`` draws a paged grid of thumbnails with one-line captions (the full
text on hover); a click on a thumbnail opens the image detail at once in the
browser (``dashboard.detail``: no script run; the page has each image's detail).
Its "Full detail…" opens the server's *image detail* below, a dialog with the
image large, its true and predicted class and confidence, its top classes (the
true class always among them), its nearest neighbours in embedding space from
the true and the predicted class, each with its label, prediction and distance,
and what only the server can draw: the registered transforms' controls and
detail sections (attention maps computed on demand, the verdict history with
its Undo, the error cause). Previous/next (buttons, or the arrow keys) walk
through the rows of the gallery that opened it. Tables, confused pairs, flips
and the review queue open that dialog directly through ``open_detail``.

The detail is drawn by the app after the page (``detail_ui_if_open``), so a page
only registers where its images come from: every gallery registers its rows as
a *source* under its key for this script run. The open detail is kept in
``st.session_state[DETAIL_KEY]`` and in the URL (``img=<row>``), so a reload
reopens it (a gallery's page reopens its own detail in the browser).

Extension points, for features that must reach every gallery without editing
the pages (all process-wide, registered once at import by the feature's module):

* ``register_caption_field(name, text)``: ``text(run, row) -> str | None``, one
  more caption line under each thumbnail and one more line in the detail
  (a page can also pass ``fields=`` for its own gallery only);
* ``register_transform(name, label, apply)``: a toggle above every gallery and
  in the detail; when on, each image is drawn as ``apply(run, row, pixels)``
  (e.g. an attention overlay);
* ``register_item_slot(name, render)``: ``render(run, row, where)`` draws widgets
  under each thumbnail (``where="tile"``) and in the detail (``where="detail"``),
  e.g. verdict buttons for a review;
* ``register_detail_section(name, render)``: ``render(run, row)`` adds a section
  at the end of the detail.

Text from user data reaches Markdown only through ``ui.plain``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import streamlit as st

from core.analysis import neighbours
from core.run.store import Run
from dashboard import cache, figures, state, ui, views
from dashboard.state import DETAIL_KEY, IMG_PARAM, close_detail  # noqa: F401 - part of this module's API

THUMB_PX = 112
DETAIL_PX = 320
NEIGHBOUR_PX = 96
NEIGHBOURS = 5
PAGE_SIZES = (24, 48, 96)
COLUMNS = 8
SOURCES_KEY = "gallery-sources"  # {source key: Source}, rebuilt on every full script run
PER_PAGE_KEY = "gallery-per-page"  # a preference kept across runs and pages
_CSS_KEY = "gallery-css-drawn"

# A thumbnail's tile holds the image and its caption; an invisible button covers the whole tile so that a
# click (or Enter on the focused tile) opens the detail. Captions stay on one line, cut with an
# ellipsis; the button's tooltip holds the full text.
CSS = """<style>
div[class*="st-key-gtile-"] { position: relative; gap: 0.15rem; border-radius: 6px; }
div[class*="st-key-gtile-"]:hover, div[class*="st-key-gtile-"]:focus-within {
  outline: 2px solid rgba(28, 131, 225, 0.85); outline-offset: 2px; }
div[class*="st-key-gtile-"] div[class*="st-key-gopen-"] {
  position: absolute !important; inset: 0 !important; z-index: 3; margin: 0 !important;
  width: 100% !important; height: 100% !important; }
div[class*="st-key-gopen-"] .stButton, div[class*="st-key-gopen-"] .stButton > div:has(.stTooltipIcon),
div[class*="st-key-gopen-"] .stTooltipIcon, div[class*="st-key-gopen-"] .stTooltipHoverTarget {
  display: block; width: 100% !important; height: 100% !important; }
div[class*="st-key-gopen-"] .stTooltipHoverTarget > button {
  width: 100%; height: 100% !important; opacity: 0; cursor: zoom-in; }
div[class*="st-key-gtile-"] [data-testid="stCaptionContainer"] p,
div[class*="st-key-gnear-"] [data-testid="stCaptionContainer"] p {
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; margin: 0; line-height: 1.3; }
div[class*="st-key-gtile-"] img { image-rendering: pixelated; }
div[class*="st-key-detail-image"] img, div[class*="st-key-gnear-"] img { image-rendering: pixelated; }
</style>"""


# --------------------------------------------------------------------------- extension points

@dataclass(frozen=True)
class CaptionField:
    """One more caption line: ``text(run, row)`` (None or '' adds nothing for that row)."""

    name: str
    text: Callable[[Run, int], str | None]


@dataclass(frozen=True)
class ImageTransform:
    """A toggle that draws each image as ``apply(run, row, pixels)`` (uint8, (H, W) or (H, W, C))."""

    name: str
    label: str
    apply: Callable[[Run, int, np.ndarray], np.ndarray]
    default: bool = False
    control: Callable[[Run, str], None] | None = None  # draws its own widget instead of the toggle


@dataclass(frozen=True)
class ItemSlot:
    """Widgets drawn per image: ``render(run, row, where)``, where is "tile" or "detail"."""

    name: str
    render: Callable[[Run, int, str], None]


_CAPTION_FIELDS: dict[str, CaptionField] = {}
_TRANSFORMS: dict[str, ImageTransform] = {}
_ITEM_SLOTS: dict[str, ItemSlot] = {}
_DETAIL_SECTIONS: dict[str, Callable[[Run, int], None]] = {}
_PAGE_DETAIL: list[Callable[..., None]] = []  # at most one: the browser detail (dashboard.detail)


def register_caption_field(name: str, text: Callable[[Run, int], str | None]) -> None:
    """Add a caption line to every gallery and detail (registering a name again replaces it)."""
    _CAPTION_FIELDS[name] = CaptionField(name, text)


def register_transform(name: str, label: str, apply: Callable[[Run, int, np.ndarray], np.ndarray], *,
                       default: bool = False, control: Callable[[Run, str], None] | None = None) -> None:
    """Offer a per-image transform as a toggle above every gallery and in the detail, or as the
    widget ``control(run, key)`` draws there (it keeps ``gtransform-<name>`` true while applied)."""
    _TRANSFORMS[name] = ImageTransform(name, label, apply, default, control)


def register_item_slot(name: str, render: Callable[[Run, int, str], None]) -> None:
    """Draw ``render(run, row, where)`` under every thumbnail ("tile") and in the detail ("detail")."""
    _ITEM_SLOTS[name] = ItemSlot(name, render)


def register_detail_section(name: str, render: Callable[[Run, int], None]) -> None:
    """Add ``render(run, row)`` as a section at the end of the image detail."""
    _DETAIL_SECTIONS[name] = render


def register_page_detail(render: Callable[..., None]) -> None:
    """Draw ``render(run, rows, key=, start=, count=, title=, fields=)`` after every gallery: the
    image detail that runs in the browser (``dashboard.detail`` registers it; without it a click on a
    tile opens the server's dialog)."""
    _PAGE_DETAIL[:] = [render]


def unregister(name: str) -> None:
    """Remove whatever was registered under ``name`` (for tests and feature switches)."""
    for registry in (_CAPTION_FIELDS, _TRANSFORMS, _ITEM_SLOTS, _DETAIL_SECTIONS):
        registry.pop(name, None)


# --------------------------------------------------------------------------- captions

def caption_lines(run: Run, row: int) -> list[str]:
    """The two caption lines of a thumbnail, the prediction first so that a narrow tile keeps it:
    '→ predicted 0.93' for an error, '✓ predicted 0.93' when correct, then 'true: class'
    (plain text; each line is cut with an ellipsis, the tile's tooltip has the full text)."""
    r = run.predictions.iloc[int(row)]
    mark = "✓" if bool(r["correct"]) else "→"
    return [f"{mark} {r['predicted_label']} {r['confidence']:.2f}", f"true: {r['true_label']}"]


def compact_caption(run: Run, row: int) -> str:
    """``caption_lines`` on one line: '→ predicted 0.93 · true: class'."""
    return " · ".join(caption_lines(run, row))


def full_caption(run: Run, row: int) -> list[str]:
    """Every caption line of an image: true class, predicted class + confidence, top-3, file."""
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


def _field_lines(run: Run, row: int, fields: Sequence[CaptionField]) -> list[str]:
    lines = []
    for f in [*fields, *_CAPTION_FIELDS.values()]:
        text = f.text(run, int(row))
        if text:
            lines.append(str(text))
    return lines


# --------------------------------------------------------------------------- sources and the open detail

@dataclass(frozen=True)
class Source:
    """Where an open detail's previous/next go: the rows of one gallery (or table) of one run."""

    run_id: str
    rows: np.ndarray
    title: str
    fields: tuple[CaptionField, ...] = field(default_factory=tuple)
    browser: bool = False  # a gallery's: its page opens the detail itself (``dashboard.detail``)


def start_run() -> None:
    """Forget the sources of the previous script run (called by the app before the page)."""
    st.session_state[SOURCES_KEY] = {}
    st.session_state.pop(_CSS_KEY, None)


def register_source(run: Run, key: str, rows: np.ndarray, *, title: str,
                    fields: Sequence[CaptionField] = (), browser: bool = False) -> None:
    """Make ``rows`` of ``run`` the sequence a detail opened from ``key`` walks through (``browser``: a
    gallery whose page opens the detail itself, also from the address)."""
    st.session_state.setdefault(SOURCES_KEY, {})[key] = Source(run.id, np.asarray(rows, np.int64), title,
                                                              tuple(fields), browser)


def open_detail(run_id: str, row: int, *, source: str) -> None:
    """Open the detail of ``row`` of run ``run_id`` (a widget callback, or before the app draws it)."""
    st.session_state[DETAIL_KEY] = {"source": source, "run": run_id, "row": int(row)}


def _step(delta: int) -> None:
    """Previous (-1) or next (+1) image of the open detail's source (a button callback)."""
    request = st.session_state.get(DETAIL_KEY)
    if not request:
        return
    source = st.session_state.get(SOURCES_KEY, {}).get(request["source"])
    if source is None:
        return
    position = np.flatnonzero(source.rows == request["row"])
    if position.size:
        nxt = int(position[0]) + delta
        if 0 <= nxt < source.rows.size:
            st.session_state[DETAIL_KEY] = {**request, "row": int(source.rows[nxt])}


def restore_detail_from_url(scope: str | None) -> None:
    """Reopen the detail named in the URL (``img=<row>``) the first time the session draws the page,
    from the first of the page's sources that holds that row; a row none holds is dropped with a
    warning."""
    text = state.url_value(IMG_PARAM)
    if text is None or DETAIL_KEY in st.session_state or not state.may_seed(scope):
        return
    sources = st.session_state.get(SOURCES_KEY, {})
    try:
        row = state.decode_int(text, low=0, high=2**62, name=IMG_PARAM)
    except ValueError as exc:
        state.warn(f"Address parameter '{IMG_PARAM}' ignored: {exc}")
        return
    for key, source in sources.items():
        if np.any(source.rows == row):
            if not source.browser:  # a gallery's page opens it from the address itself
                open_detail(source.run_id, row, source=key)
            return
    state.warn(f"Address parameter '{IMG_PARAM}' ignored: image {row} is not among the images this page shows.")


def detail_ui_if_open() -> None:
    """Draw the open image detail, if any (the app calls this after the page)."""
    request = st.session_state.get(DETAIL_KEY)
    if not request:
        return
    if request["source"] not in st.session_state.get(SOURCES_KEY, {}):
        close_detail()  # the page that opened it is gone (another page, run or filter)
        return
    state.publish(**{IMG_PARAM: str(request["row"])})
    _detail_dialog()


def _on_dismiss() -> None:
    close_detail()


@st.dialog("Image detail", width="large", on_dismiss=_on_dismiss)
def _detail_dialog() -> None:
    request = st.session_state.get(DETAIL_KEY)
    if not request:
        return
    source = st.session_state.get(SOURCES_KEY, {}).get(request["source"])
    try:
        run = cache.load_run(cache.store_root(), request["run"])
    except cache.RUN_ERRORS as exc:
        ui.cannot_show(f"Run '{request['run']}' cannot be shown", exc)
        return
    rows = source.rows if source is not None else np.asarray([request["row"]])
    row = int(request["row"])
    position = np.flatnonzero(rows == row)
    at = int(position[0]) if position.size else 0
    with st.container(horizontal=True, vertical_alignment="center", key="detail-nav"):
        st.button("Previous", key="detail-prev", icon=":material/arrow_back:", on_click=_step, args=(-1,),
                  disabled=at == 0, shortcut="Left", help="Previous image (left arrow key)")
        st.button("Next", key="detail-next", icon=":material/arrow_forward:", on_click=_step, args=(1,),
                  disabled=at >= rows.size - 1, shortcut="Right", help="Next image (right arrow key)")
        title = source.title if source is not None else ""
        st.caption(ui.plain(f"Image {at + 1:,} of {rows.size:,}" + (f" · {title}" if title else "")))
    image_detail_ui(run, row, fields=source.fields if source is not None else ())
    st.query_params[IMG_PARAM] = str(row)  # in the dialog's own reruns too (they skip the app)


# --------------------------------------------------------------------------- the detail's content

def _transformed(run: Run, row: int, img: np.ndarray) -> np.ndarray:
    for t in _TRANSFORMS.values():
        if st.session_state.get(f"gtransform-{t.name}", t.default):
            img = t.apply(run, int(row), img)
    return img


def _copy_state(source: str, target: str) -> None:
    st.session_state[target] = st.session_state[source]


def transforms_ui(run: Run, *, key: str) -> None:
    """One toggle (or the transform's own control) per registered transform; every gallery's and the
    detail's widget share one value."""
    for t in _TRANSFORMS.values():
        if t.control is not None:
            t.control(run, key)
            continue
        shared, widget = f"gtransform-{t.name}", f"gtransform-{t.name}-{key}"
        st.session_state.setdefault(shared, t.default)
        st.session_state[widget] = st.session_state[shared]
        st.toggle(ui.plain(t.label), key=widget, on_change=_copy_state, args=(widget, shared))


def image_ui(run: Run, row: int, *, size: int, width: int | str = "stretch") -> None:
    """Row ``row``'s image at about ``size`` px (transforms applied), or one caption saying why it
    cannot be shown."""
    img, reason = cache.thumbnail(run, cache.run_key(run), int(row), size)
    if img is None:
        st.caption(f"(image unavailable: {ui.plain(reason)})")
        return
    st.image(_transformed(run, row, img), width=width, alt=str(run.predictions["path"].iat[int(row)]))


def image_detail_ui(run: Run, row: int, *, fields: Sequence[CaptionField] = ()) -> None:
    """The detail of one image: large image and its caption lines, top classes, neighbours from the
    true and the predicted class, then the registered slots and sections."""
    df = run.predictions
    r = df.iloc[int(row)]
    true, pred = int(r["true"]), int(r["predicted"])
    left, right = st.columns([2, 3])
    with left:
        with st.container(key="detail-image"):
            image_ui(run, row, size=DETAIL_PX, width="stretch")
        if _TRANSFORMS:
            transforms_ui(run, key="detail")
    with right:
        verdict = "correct" if true == pred else "wrong"
        st.markdown(f"**{ui.plain(r['true_label'])}** → **{ui.plain(r['predicted_label'])}** "
                    f"({verdict}, confidence {r['confidence']:.3f})")
        lines = [f"file: {r['path']}", f"split: {r['split']} · row {int(row):,}",
                 f"p(true class) = {r['true_prob']:.3f}", *_field_lines(run, row, fields)]
        st.caption("  \n".join(ui.plain(line) for line in lines))
        st.plotly_chart(figures.probability_figure(np.asarray(run.probs[int(row)]), run.classes, true=true,
                                                   predicted=pred, k=10),
                        key=f"detail-probabilities-{run.id}-{row}", config={"displayModeBar": False})
    for slot in _ITEM_SLOTS.values():
        slot.render(run, int(row), "detail")
    neighbours_ui(run, int(row), true=true, pred=pred)
    for render in _DETAIL_SECTIONS.values():
        render(run, int(row))


def neighbours_ui(run: Run, row: int, *, true: int, pred: int) -> None:
    """'Why confused': the nearest images of the true and of the predicted class in embedding space,
    from the training images when the run has them, else from the evaluated images themselves."""
    embeddings = run.embeddings
    if embeddings is None:
        st.caption("No neighbours: this run has no embeddings.")
        return
    kind, pools = cache.reference_pools(run, cache.run_key(run))
    st.markdown(f"**Why confused:** the nearest {kind} images in embedding space")
    second = pred if pred != true else None
    if second is None:  # a correct image: its class and the runner-up class
        top2 = df_value(run, row, "top2")
        second = int(top2) if top2 is not None and int(top2) != true else None
    columns = st.columns(2 if second is not None else 1)
    for col, cls, what in zip(columns, (true, second), ("true class", "predicted class" if pred != true
                                                        else "runner-up class")):
        if cls is None:
            continue
        with col:
            st.caption(ui.plain(f"{what}: {run.classes[cls]}"))
            near, dist = neighbours.nearest(embeddings, row, pools[cls], k=NEIGHBOURS)
            if near.size == 0:
                st.caption(ui.plain(f"(no other {kind} images of {run.classes[cls]})"))
                continue
            cells = st.columns(NEIGHBOURS)
            for i, (n_row, d) in enumerate(zip(near, dist)):
                with cells[i], st.container(key=f"gnear-{cls}-{i}"):
                    image_ui(run, int(n_row), size=NEIGHBOUR_PX)
                    st.caption("  \n".join(ui.plain(line) for line in caption_lines(run, int(n_row)))
                               + "  \n" + f"distance {d:.2f}")


def df_value(run: Run, row: int, column: str):
    """``run.predictions[column]`` at ``row``, or None when the run lacks the column."""
    df = run.predictions
    return df[column].iat[int(row)] if column in df.columns else None


# --------------------------------------------------------------------------- the gallery

def _css() -> None:
    st.html(CSS)


def _set_page(widget_key: str, page_key: str) -> None:
    st.session_state[page_key] = st.session_state[widget_key]


def _pager(pages: int, page: int, *, page_key: str, where: str) -> None:
    """A page selector showing ``page``; a click sets ``st.session_state[page_key]`` (the gallery's
    page, plain state). Its key names the page shown, so the selectors above and below the grid
    start from the same page without writing into a widget's state."""
    widget_key = f"{page_key}-{where}-{page}"
    st.pagination(pages, default=page, key=widget_key, on_change=_set_page, args=(widget_key, page_key),
                  max_visible_pages=9)


def gallery_ui(run: Run, rows: np.ndarray, *, key: str, order_note: str = "most confident first",
               title: str = "", fields: Sequence[CaptionField] = (), url_param: str | None = None,
               page_key: str | None = None) -> np.ndarray:
    """A paged grid of thumbnails with one-line captions; a click opens the image detail.

    Parameters
    ----------
    run : the run the rows belong to.
    rows : row ids in display order (int array (M,)); the detail's previous/next follow it.
    key : the gallery's name: its grid is the container ``gallery-<key>`` (CSS class
        ``st-key-gallery-<key>``), item i the container ``<key>-item-<i>``.
    order_note : how ``rows`` are ordered, for the caption above the grid.
    title : names the rows in the detail ('Confusion cell: true a, predicted b').
    fields : caption lines for this gallery only (after the standard line).
    url_param : the URL parameter that keeps the page number (the page's main gallery).
    page_key : the page selector's state key (default ``scoped(run, '<key>-page')``): give it
        the selection's identity so that a new selection starts at page 1.

    Returns the rows shown on the current page.
    """
    rows = np.asarray(rows, dtype=np.int64)
    fields = tuple(fields)
    register_source(run, key, rows, title=title, fields=fields, browser=True)
    _css()
    with st.container(key=f"gallery-{key}"):
        if rows.size == 0:
            st.info("No images to show.")
            return rows
        if _TRANSFORMS:
            transforms_ui(run, key=key)
        per_page = int(st.session_state.get(PER_PAGE_KEY, PAGE_SIZES[0]))
        pages = views.page_count(rows.size, per_page)
        page_key = page_key or ui.scoped(run, f"{key}-page")
        if url_param:
            state.seed(page_key, url_param, lambda t: state.decode_int(t, low=1, high=pages, name=url_param),
                       scope=ui.run_scope(run))
        page = min(max(int(st.session_state.get(page_key, 1)), 1), pages)
        top_row = st.columns([4, 1], vertical_alignment="center")
        with top_row[0]:
            if pages > 1:
                _pager(pages, page, page_key=page_key, where="top")
        with top_row[1]:
            st.selectbox("Per page", PAGE_SIZES, key=PER_PAGE_KEY, label_visibility="collapsed",
                         format_func=lambda n: f"{n} per page", persist_state="session")
        shown = views.page_of(rows, page=page, per_page=per_page)
        start = (min(max(page, 1), pages) - 1) * per_page
        span = f"Image {start + 1:,}" if shown.size == 1 else f"Images {start + 1:,}–{start + shown.size:,}"
        st.caption(ui.plain(f"{span} of {rows.size:,}, {order_note}. Click an image to inspect it."))
        lines = [[*caption_lines(run, int(row)), *_field_lines(run, int(row), fields)] for row in shown]
        for i, row in enumerate(shown):
            if i % COLUMNS == 0:  # one st.columns per line keeps lines aligned and items in order
                cols = st.columns(COLUMNS)
                # every caption of the line as tall as its longest, so that the widgets under the
                # tiles (the verdict boxes) line up whichever images have an extra caption line
                tall = max(len(x) for x in lines[i:i + COLUMNS])
            with cols[i % COLUMNS], st.container(key=f"{key}-item-{i}"):
                _tile(run, int(row), key=key, i=i, lines=lines[i], tall=tall)
        if pages > 1:
            _pager(pages, page, page_key=page_key, where="bottom")
        for render in _PAGE_DETAIL:
            render(run, rows, key=key, start=start, count=int(shown.size), title=title, fields=fields)
        if url_param:
            state.publish(**{url_param: str(page) if page > 1 else None})
    return shown


def _tile(run: Run, row: int, *, key: str, i: int, lines: list[str], tall: int) -> None:
    """One thumbnail: its image, its caption ``lines`` padded to ``tall`` lines, and the invisible
    button over the whole tile (a click opens the detail in the browser, ``dashboard.detail``; the
    button's own script run opens the server's dialog where the page has not got the detail)."""
    with st.container(key=f"gtile-{key}-{i}"):
        image_ui(run, row, size=THUMB_PX)
        # padded with blank lines (U+2800: a no-break space is stripped, this is not)
        st.caption("  \n".join([*(ui.plain(line) for line in lines), *["\u2800"] * (tall - len(lines))]))
        full = full_caption(run, row) + lines[2:]
        st.button(ui.plain(f"Open {run.predictions['path'].iat[row]}"), key=f"gopen-{key}-{i}",
                  help="  \n".join(ui.plain(line) for line in full),
                  on_click=open_detail, args=(run.id, row), kwargs={"source": key}, type="tertiary", wrap=True)
    for slot in _ITEM_SLOTS.values():
        slot.render(run, row, "tile")
