"""Attention maps (Grad-CAM, core.analysis.gradcam; occlusion, core.analysis.occlusion) in every gallery and in the image detail.

Importing this module registers, through the gallery's hooks:

* the transform ``attention`` with its own control: one segmented control "Attention:
  Off · Grad-CAM · Occlusion" above every gallery and beside the detail's image (one
  shared value; the detail adds "Both" to compare the two methods on a Keras run).
  Grad-CAM is offered for Keras runs only; occlusion for any model (ONNX, SavedModel,
  Keras). While a method is chosen, each thumbnail is drawn with its predicted-class map;
* the caption field ``attention``: one line under a thumbnail whose map cannot be shown,
  saying why in words (no positive evidence, an image that could not be read, a model that
  cannot be explained, or a page over its occlusion time budget);
* the detail section ``attention``: the image, the predicted-class map and the true-class
  map side by side, per chosen method (two rows for "Both"), with occlusion's cost.

Maps are computed on demand for the page shown only: the first thumbnail of a page
without a map asks ``core.analysis.gradcam.explain_rows`` for every row of that page at once (one
batched call; the maps are added to the run's derived kind ``attention_maps`` or
``occlusion_maps``), and kept in memory per run and method (``AttentionMemo``).
Occlusion has a time budget per page (``PAGE_BUDGET_S``): rows left over are said so
under their thumbnails and computed on the next rerun. TensorFlow is imported only when a
Grad-CAM map (or a Keras model's occlusion map) must be computed; stored maps are read
without it.

Conventions: maps are float32 (H, W) in [0, 1] at the model's input size, index 0 the
predicted class and 1 the true class (``core.analysis.gradcam.WHICH``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import streamlit as st

from core.analysis import gradcam, neighbours
from core.errors import UserError
from core.model import formats
from core.run import derived
from core.run.store import Run
from dashboard import cache, gallery, ui, views

NAME = "attention"
LABEL = "Attention"
TOGGLE_KEY = f"gtransform-{NAME}"  # True while a method is chosen (gallery._transformed reads it)
METHOD_KEY = "attention-method"    # the method every gallery's and the detail's control share
METHOD_LABELS = {"off": "Off", "gradcam": "Grad-CAM", "occlusion": "Occlusion", "compare": "Both"}
DETAIL_PANEL_PX = 224
CONFIG = {"method": "gradcam", "layer": None}  # the derived kind's defaults: the dashboard explains with them
PAGE_BUDGET_S = 20.0  # occlusion seconds per page; the rest of the page is computed on the next rerun
DEFER_S = 2.0  # a row left over by a budgeted page stays "over the budget" this long (the rest of that script run)
# What computing maps may raise for a run whose model cannot be explained or loaded: one line each.
# UserError covers GradCamUnavailable, ModelError and the library errors translated at their
# boundaries (core.errors); a plain ValueError is a bug and keeps its traceback.
PROBLEMS = (UserError, OSError, ImportError)


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


def grad_cam_offered(run: Run) -> bool:
    """Grad-CAM needs a model with layers (the format registry says which: Keras, not ONNX or a
    SavedModel); occlusion is offered for every model. A run without a known format (synthetic)
    keeps the control, which then says why in one line."""
    fmt = formats.find(run.model_info.format)
    return fmt is None or "gradcam" in fmt.attention


def methods(run: Run, *, where: str) -> list[str]:
    """The control's options for ``run`` ("detail" adds "compare" where Grad-CAM is offered)."""
    out = ["off"] + (["gradcam"] if grad_cam_offered(run) else []) + ["occlusion"]
    return out + (["compare"] if where == "detail" and grad_cam_offered(run) else [])


def chosen(run: Run, *, where: str = "gallery") -> str:
    """The shared choice as it applies to ``run`` here: a method this run offers, or "off"."""
    value = st.session_state.get(METHOD_KEY, "off") or "off"
    if value == "compare" and where != "detail":
        value = "gradcam"
    if value not in methods(run, where=where):
        value = "occlusion" if value in ("gradcam", "compare") else "off"
    return value


def overlay_method(run: Run) -> str:
    """The method whose predicted-class map is drawn over thumbnails and the detail's image."""
    value = chosen(run)
    return "gradcam" if value == "compare" else value


def _copy_choice(widget: str) -> None:
    value = st.session_state.get(widget) or "off"
    st.session_state[METHOD_KEY] = value
    st.session_state[TOGGLE_KEY] = value != "off"


def control(run: Run, key: str) -> None:
    """The one attention control: Off · Grad-CAM · Occlusion (· Both in the detail), shared by
    every gallery and the detail."""
    where = "detail" if key == "detail" else "gallery"
    options = methods(run, where=where)
    widget = f"attention-method-{key}"
    st.session_state[widget] = chosen(run, where=where)
    st.session_state[TOGGLE_KEY] = st.session_state[widget] != "off"
    help_text = ("Grad-CAM: where the model's last convolutional map speaks for the class (Keras models). "
                 "Occlusion: how much the class probability drops when each patch is hidden (any model; "
                 f"{_passes()}, at most {PAGE_BUDGET_S:g} s per page).")
    st.segmented_control(ui.plain(LABEL), options, key=widget, format_func=METHOD_LABELS.get,
                         on_change=_copy_choice, args=(widget,), help=help_text)


def _passes() -> str:
    from core.analysis.occlusion import GRIDS, SECONDS_PER_IMAGE, passes

    return (f"{passes(*GRIDS[-1])} to {passes(*GRIDS[0])} model passes per image: the finest grid whose passes "
            f"take at most {SECONDS_PER_IMAGE:g} s per image on this server")


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


def row_maps(run: Run, row: int, *, method: str = "gradcam", batch: np.ndarray | None = None) -> RowMaps | str:
    """Row ``row``'s ``method`` maps, computing the missing rows of ``batch`` (default: the visible page
    that holds ``row``) in one call; or the one-line reason (str) why this run has no such maps."""
    memo = cache.attention_memo(run, f"{cache.run_key(run)}|{method}")
    with memo.lock:  # one computation per run and method at a time; other sessions then find the rows done
        if memo.problem is not None:
            return memo.problem
        if int(row) in memo.rows:
            return memo.rows[int(row)]
        deferred = memo.deferred.get(int(row))
        if deferred is not None and time.monotonic() - deferred[1] < DEFER_S:
            return RowMaps(reason=deferred[0])  # left over by this script run's budgeted page
        name, config = gradcam.kind_and_config(method)
        try:
            if method == "occlusion":
                from core.analysis.occlusion import check_occludable

                check_occludable(run)
            else:
                gradcam.check_explainable(run)
            wanted = _visible_batch(run, row) if batch is None else np.asarray(batch, np.int64)
            wanted = np.union1d(wanted[[int(r) not in memo.rows for r in wanted]], [int(row)])
            explainer = None
            stored = derived.get(run, name, config, compute=False)
            have = np.asarray(stored.array("rows")) if stored is not None else np.zeros(0, np.int64)
            if not np.isin(wanted, have).all():  # a model only when something is missing
                # a toast, not a spinner: this runs inside a thumbnail's narrow column
                st.toast(f"Computing {METHOD_LABELS[method]} maps for {len(wanted):,} images...",
                         icon=":material/visibility:")
                if method != "occlusion":
                    explainer = cache.attention_explainer(run, cache.run_key(run))
            options = ({"budget_s": PAGE_BUDGET_S} if method == "occlusion"
                       else {"explainer": explainer, "layer": CONFIG["layer"]})
            attention = gradcam.explain_rows(run, wanted, method=method, **options)
        except PROBLEMS as exc:
            memo.problem = f"No attention maps: {views.one_line(exc)}"
            return memo.problem
        for k, r in enumerate(attention.rows):
            reason = attention.skipped.get(int(r))
            if reason is not None and "time budget" in reason:
                # not kept as a result: the next rerun computes it (the rest of this run's thumbnails
                # of the page say so, without starting another budget each)
                memo.deferred[int(r)] = (reason, time.monotonic())
                continue
            memo.rows[int(r)] = (RowMaps(reason=f"no attention map: {reason}") if reason is not None
                                 else RowMaps(maps=attention.maps[k], empty=attention.empty[k]))
        memo.cost = attention.cost or memo.cost
        if int(row) in memo.deferred and int(row) not in memo.rows:
            return RowMaps(reason=memo.deferred[int(row)][0])
        return memo.rows[int(row)]


# --------------------------------------------------------------------------- the hooks

def overlay_transform(run: Run, row: int, pixels: np.ndarray) -> np.ndarray:
    """The gallery transform: ``pixels`` with the chosen method's predicted-class map over them, or
    unchanged when the row has no map or an empty one (the caption line says which)."""
    method = overlay_method(run)
    if method == "off":
        return pixels
    found = row_maps(run, row, method=method)
    if isinstance(found, str) or found.maps is None or bool(found.empty[0]):
        return pixels
    try:
        return gradcam.overlay(np.asarray(pixels), found.maps[0])
    except ValueError:  # pixels of a layout overlay() does not take (e.g. RGBA): shown as they are
        return pixels


def caption_line(run: Run, row: int) -> str | None:
    """While a method is chosen: why a thumbnail shows no heat (in words), else nothing."""
    method = overlay_method(run)
    if not toggle_on() or method == "off":
        return None
    found = row_maps(run, row, method=method)
    if isinstance(found, str):
        return found
    if found.reason is not None:
        return found.reason
    if bool(found.empty[0]):
        return f"no positive evidence for {run.classes[int(run.predictions['predicted'].iat[int(row)])]}"
    return None


def detail_section(run: Run, row: int) -> None:
    """The image, the predicted-class map and the true-class map side by side, per chosen method."""
    value = chosen(run, where="detail")
    if value == "off":
        st.markdown("**Attention**")
        st.caption(ui.plain(_off_hint(run)))
        return
    for method in (("gradcam", "occlusion") if value == "compare" else (value,)):
        _method_row(run, row, method)


def _off_hint(run: Run) -> str:
    offered = " or ".join(METHOD_LABELS[m] for m in methods(run, where="gallery") if m != "off")
    return f"Choose {offered} under the image to see what the model looks at."


def _method_row(run: Run, row: int, method: str) -> None:
    st.markdown(f"**Attention ({METHOD_LABELS[method]})**")
    found = row_maps(run, row, method=method)
    if isinstance(found, str) or found.reason is not None:
        st.caption(ui.plain(found if isinstance(found, str) else found.reason))
        return
    memo = cache.attention_memo(run, f"{cache.run_key(run)}|{method}")
    if method == "occlusion":
        cost = memo.cost or _stored_cost(run)
        if cost:
            per = cost.get("seconds_per_image")
            grid = f" ({cost['grid']}x{cost['grid']} cells)" if cost.get("grid") else ""
            st.caption(ui.plain(f"occlusion: {cost['passes_per_image']} model passes per image{grid}"
                                + (f", {per:.2f} s per image on this server" if per else "")
                                + "; red: hiding it lowers the class probability most"))
    img, reason = cache.thumbnail(run, cache.run_key(run), int(row), DETAIL_PANEL_PX)
    if img is None:
        st.caption(ui.plain(f"(image unavailable: {reason})"))
        return
    pred, true = int(run.predictions["predicted"].iat[int(row)]), int(run.predictions["true"].iat[int(row)])
    panels = st.columns(3)
    with panels[0], st.container(key=f"attention-{method}-image"):
        st.image(img, width="stretch")
        st.caption("image")
    for j, (cls, what) in enumerate(((pred, "predicted"), (true, "true"))):
        with panels[j + 1], st.container(key=f"attention-{method}-{gradcam.WHICH[j]}"):
            if bool(found.empty[j]):
                st.caption(ui.plain(f"{what} class {run.classes[cls]}: no positive evidence; nothing in this "
                                    "image speaks for this class (the map is empty)"))
                continue
            st.image(gradcam.overlay(img, found.maps[j]), width="stretch")
            st.caption(ui.plain(f"{what} class: {run.classes[cls]}"))


def _stored_cost(run: Run) -> dict:
    from core.analysis.occlusion import KIND

    stored = derived.get(run, KIND, compute=False)
    summary = stored.summary if stored is not None else {}
    return {k: summary[k] for k in ("passes_per_image", "seconds_per_image", "grid") if k in summary}


def register() -> None:
    """Add the control, the caption line and the detail section to every gallery (done at import)."""
    gallery.register_transform(NAME, LABEL, overlay_transform, control=control)
    gallery.register_caption_field(NAME, caption_line)
    gallery.register_detail_section(NAME, detail_section)


register()
