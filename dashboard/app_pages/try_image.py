"""Try an image: upload a picture and get the run model's top-3 classes.

The only page that may import TensorFlow, through ``core.run.analyze`` and only
once a valid image is uploaded and the run's model file exists.

An upload is untrusted: its byte size, its format (by content) and its pixel
count (from the header) are checked before anything is decoded, and every
refusal is one ``st.error`` line. Sizes are in MB of 10^6 bytes, the unit the
uploader itself displays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from core.data.images import MAX_UPLOAD_BYTES, decode_bytes, max_pixels_limit, thumbnail, upload_problem
from core.errors import UserError
from dashboard import cache, figures, ui, views


def model_problem(run) -> str | None:
    """Why the run's model cannot be loaded (file missing), or None."""
    info = run.model_info
    path = info.path
    if info.format == "predictions":
        return (f"Run {run.id} was imported from predictions made elsewhere; it has no model here "
                "to classify new images.")
    if not path:
        return f"Run {run.id} does not record its model file, so it cannot classify new images."
    if not Path(path).exists():
        return (f"The model file of this run is missing: {path}. Restore it there (or re-run the "
                "analysis) to classify new images.")
    return None


PREVIEW_PX = 512  # the preview is scaled down to this: the browser needs no more


def render() -> None:
    run = ui.current_run()
    st.title("Try an image")
    try:
        max_pixels = max_pixels_limit()
    except ValueError as exc:  # a malformed CLASSIFIER_MAX_PIXELS
        st.error(ui.plain(str(exc)))
        return
    unavailable = model_problem(run)
    if unavailable:  # said before any upload too, not only after the user has picked a file
        st.warning(ui.plain(unavailable))
    st.caption(f"Upload a picture (JPEG, PNG, BMP or WebP, up to {MAX_UPLOAD_BYTES / 1e6:g} MB and "
               f"{max_pixels:,} pixels) to see what the run's model predicts.")
    upload = st.file_uploader("Image", type=list(views.UPLOAD_TYPES), key="try-upload",
                              max_upload_size=MAX_UPLOAD_BYTES // 1_000_000)
    if upload is None:
        return
    data = upload.getvalue()
    problem = upload_problem(data, name=upload.name, max_bytes=MAX_UPLOAD_BYTES, max_pixels=max_pixels)
    if problem:
        st.error(ui.plain(problem))
        return
    try:
        pixels = decode_bytes(data, name=upload.name, max_pixels=max_pixels)
    except ValueError:
        st.error(ui.plain(f"{upload.name}: not an image that can be decoded "
                          "(JPEG, PNG, BMP or WebP expected)."))
        return
    left, right = st.columns([1, 2])
    with left:
        preview = thumbnail(pixels, size=PREVIEW_PX) if max(pixels.shape[:2]) > PREVIEW_PX else pixels
        st.image(preview, caption=ui.plain(upload.name), width="stretch")
        st.caption(f"{pixels.shape[1]} x {pixels.shape[0]} pixels")
    problem = model_problem(run)
    if problem:
        right.error(ui.plain(problem))
        return
    try:
        model = cache.run_model(run, cache.run_key(run))
        probs = np.asarray(model.predict(pixels), dtype=np.float64)
    except (UserError, OSError) as exc:  # a model that cannot be loaded or run (core says why): keep the page
        right.error(ui.plain(f"The model could not classify this image: {exc}"))
        return
    with right:
        top = views.top_classes(probs, run.classes, k=3)
        st.subheader("Top-3 classes")
        st.dataframe(ui.shown(top), hide_index=True, width="stretch",
                     column_config={"class": st.column_config.TextColumn("class"),
                                    "probability": st.column_config.ProgressColumn(
                                        "probability", format="%.3f", min_value=0.0, max_value=1.0)})
        best = int(np.argmax(probs))
        st.plotly_chart(figures.probability_figure(probs, run.classes, true=None, predicted=best),
                        key="try-probabilities")


render()
