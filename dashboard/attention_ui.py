"""Attention maps (Grad-CAM, core.gradcam) in every gallery and in the image detail.

Importing this module registers, through the gallery's hooks:

* the transform ``attention`` ("Show attention"): a toggle above every gallery and in
  the detail that draws each thumbnail with its predicted-class map over it;
* the caption field ``attention``: while the toggle is on, one line under a thumbnail
  whose map cannot be shown, saying why in words (no positive evidence for the class,
  an image that could not be read, or a model that cannot be explained);
* the detail section ``attention``: the image, the predicted-class map and the
  true-class map side by side (computed when the toggle is on or the user asks).

Maps are computed on demand for the page shown only: the first thumbnail of a page
without a map asks ``core.gradcam.explain_rows`` for every row of that page at once
(one batched call, which stores the maps in the run as the derived kind
``attention_maps``), and the maps are kept in memory per run (``AttentionMemo``).
TensorFlow is imported only when a map must be computed: never while the toggle is off
and the detail's maps are not asked for; maps stored earlier are read without it.

Conventions: maps are float32 (H, W) in [0, 1] at the model's input size, index 0 the
predicted class and 1 the true class (``core.gradcam.WHICH``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from core import derived, gradcam, neighbours
from core.models import ModelError
from core.store import Run
from dashboard import cache, gallery, ui, views

NAME = "attention"
LABEL = "Show attention"
TOGGLE_KEY = f"gtransform-{NAME}"  # the value every gallery's and the detail's toggle share (gallery.transforms_ui)
DETAIL_PANEL_PX = 224
CONFIG = {"method": "gradcam", "layer": None}  # the derived kind's defaults: the dashboard explains with them
# What computing maps may raise for a run whose model cannot be explained or loaded: one line each.
PROBLEMS = (gradcam.GradCamUnavailable, ModelError, ValueError, OSError, ImportError)


@dataclass(frozen=True)
class RowMaps:
    """One row's maps: ``maps`` float32 (2, H, W) in [0, 1] (predicted, true), ``empty`` bool (2,)
    (no positive evidence), or ``reason`` (str) when the row has no maps."""

    maps: np.ndarray | None = None
    empty: np.ndarray | None = None
    reason: str | None = None


AttentionMemo = cache.AttentionMemo  # kept in dashboard.cache with the cached function that makes it


def toggle_on() -> bool:
    return bool(st.session_state.get(TOGGLE_KEY, False))


def page_batch(rows: np.ndarray, row: int, *, per_page: int) -> np.ndarray:
    """The rows of the gallery page of ``rows`` (display order, int (M,)) that holds ``row``,
    or just ``[row]`` when ``rows`` does not hold it.

    >>> page_batch(np.array([7, 3, 9, 4, 1]), 4, per_page=2).tolist()
    [9, 4]
    >>> page_batch(np.array([7, 3]), 5, per_page=2).tolist()
    [5]
    """
    rows = np.asarray(rows, np.int64)
    position = np.flatnonzero(rows == int(row))
    if position.size == 0:
        return np.asarray([int(row)], np.int64)
    page = int(position[0]) // per_page + 1
    return views.page_of(rows, page=page, per_page=per_page)


def _visible_batch(run: Run, row: int) -> np.ndarray:
    """The page shown of the first gallery of this script run that holds ``row`` (the thumbnails
    are drawn in order, so the page's first thumbnail asks for the whole page)."""
    per_page = int(st.session_state.get(gallery.PER_PAGE_KEY, gallery.PAGE_SIZES[0]))
    for source in st.session_state.get(gallery.SOURCES_KEY, {}).values():
        if source.run_id == run.id and np.any(source.rows == int(row)):
            return page_batch(source.rows, row, per_page=per_page)
    return _detail_batch(run, row)


def _detail_batch(run: Run, row: int) -> np.ndarray:
    """``row`` with the open detail's image and the neighbours it shows (the same
    ``neighbours.nearest`` query as ``gallery.neighbours_ui``), so that the detail's thumbnails
    cost one call rather than one each; just ``[row]`` when no detail of this run is open."""
    request = st.session_state.get(gallery.DETAIL_KEY)
    if not request or request.get("run") != run.id or run.embeddings is None:
        return np.asarray([int(row)], np.int64)
    opened = int(request["row"])
    true, pred = int(run.predictions["true"].iat[opened]), int(run.predictions["predicted"].iat[opened])
    top2 = gallery.df_value(run, opened, "top2")
    classes = {true, pred} | ({int(top2)} if top2 is not None else set())
    _, pools = cache.reference_pools(run, cache.run_key(run))
    batch = [np.asarray([int(row), opened], np.int64)]
    for cls in classes:
        near, _ = neighbours.nearest(run.embeddings, opened, pools[cls], k=gallery.NEIGHBOURS)
        batch.append(np.asarray(near, np.int64))
    return np.unique(np.concatenate(batch))


def _stored_rows(run: Run) -> np.ndarray:
    stored = derived.get(run, gradcam.KIND, CONFIG, compute=False)
    return np.asarray(stored.array("rows")) if stored is not None else np.zeros(0, np.int64)


def row_maps(run: Run, row: int, *, batch: np.ndarray | None = None) -> RowMaps | str:
    """Row ``row``'s maps, computing the missing rows of ``batch`` (default: the visible page that
    holds ``row``) in one call; or the one-line reason (str) why this run has no maps at all."""
    memo = cache.attention_memo(run, cache.run_key(run))
    with memo.lock:  # one computation per run at a time; other sessions then find the rows done
        if memo.problem is not None:
            return memo.problem
        if int(row) in memo.rows:
            return memo.rows[int(row)]
        try:
            gradcam.check_explainable(run)
            wanted = _visible_batch(run, row) if batch is None else np.asarray(batch, np.int64)
            wanted = np.union1d(wanted[[int(r) not in memo.rows for r in wanted]], [int(row)])
            explainer = None
            if not np.isin(wanted, _stored_rows(run)).all():  # TensorFlow only when something is missing
                # a toast, not a spinner: this runs inside a thumbnail's narrow column
                st.toast(f"Computing attention maps for {len(wanted):,} images...", icon=":material/visibility:")
                explainer = cache.attention_explainer(run, cache.run_key(run))
            attention = gradcam.explain_rows(run, wanted, explainer=explainer, **CONFIG)
        except PROBLEMS as exc:
            memo.problem = f"No attention maps: {views.one_line(exc)}"
            return memo.problem
        for k, r in enumerate(attention.rows):
            reason = attention.skipped.get(int(r))
            memo.rows[int(r)] = (RowMaps(reason=f"no attention map: {reason}") if reason is not None
                                 else RowMaps(maps=attention.maps[k], empty=attention.empty[k]))
        return memo.rows[int(row)]


# --------------------------------------------------------------------------- the hooks

def overlay_transform(run: Run, row: int, pixels: np.ndarray) -> np.ndarray:
    """The gallery transform: ``pixels`` with the predicted-class map over them, or unchanged when
    the row has no map or an empty one (the caption line says which)."""
    found = row_maps(run, row)
    if isinstance(found, str) or found.maps is None or bool(found.empty[0]):
        return pixels
    try:
        return gradcam.overlay(np.asarray(pixels), found.maps[0])
    except ValueError:  # pixels of a layout overlay() does not take (e.g. RGBA): shown as they are
        return pixels


def caption_line(run: Run, row: int) -> str | None:
    """While the toggle is on: why a thumbnail shows no heat (in words), else nothing."""
    if not toggle_on():
        return None
    found = row_maps(run, row)
    if isinstance(found, str):
        return found
    if found.reason is not None:
        return found.reason
    if bool(found.empty[0]):
        return f"no positive evidence for {run.classes[int(run.predictions['predicted'].iat[int(row)])]}"
    return None


def _ask() -> None:
    st.session_state[TOGGLE_KEY] = True


def detail_section(run: Run, row: int) -> None:
    """The image, the predicted-class map and the true-class map side by side."""
    st.markdown("**Attention (Grad-CAM)**")
    memo = cache.attention_memo(run, cache.run_key(run))
    if not toggle_on() and int(row) not in memo.rows and memo.problem is None:
        st.button("Show attention maps", key="attention-ask", on_click=_ask, icon=":material/visibility:",
                  help="Compute Grad-CAM maps (loads the run's model once)")
        return
    found = row_maps(run, row)
    if isinstance(found, str) or found.reason is not None:
        st.caption(ui.plain(found if isinstance(found, str) else found.reason))
        return
    img, reason = cache.thumbnail(run, cache.run_key(run), int(row), DETAIL_PANEL_PX)
    if img is None:
        st.caption(ui.plain(f"(image unavailable: {reason})"))
        return
    pred, true = int(run.predictions["predicted"].iat[int(row)]), int(run.predictions["true"].iat[int(row)])
    panels = st.columns(3)
    with panels[0], st.container(key="attention-image"):
        st.image(img, width="stretch")
        st.caption("image")
    for j, (cls, what) in enumerate(((pred, "predicted"), (true, "true"))):
        with panels[j + 1], st.container(key=f"attention-{gradcam.WHICH[j]}"):
            if bool(found.empty[j]):
                st.caption(ui.plain(f"{what} class {run.classes[cls]}: no positive evidence; nothing in this "
                                    "image speaks for this class (the map is empty)"))
                continue
            st.image(gradcam.overlay(img, found.maps[j]), width="stretch")
            st.caption(ui.plain(f"{what} class: {run.classes[cls]}"))


def register() -> None:
    """Add the toggle, the caption line and the detail section to every gallery (done at import)."""
    gallery.register_transform(NAME, LABEL, overlay_transform)
    gallery.register_caption_field(NAME, caption_line)
    gallery.register_detail_section(NAME, detail_section)


register()
