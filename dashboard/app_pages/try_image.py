"""Try an image: upload a picture and get the run model's top-3 classes.

The only page that may import TensorFlow, through ``core.analyze`` and only
once a valid image is uploaded and the run's model file exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from core.images import decode_bytes
from dashboard import cache, figures, ui, views


def model_problem(run) -> str | None:
    """Why the run's model cannot be loaded (file missing), or None."""
    path = (run.manifest.get("model") or {}).get("path")
    if not path:
        return f"Run {run.id} does not record its model file, so it cannot classify new images."
    if not Path(path).exists():
        return (f"The model file of this run is missing: {path}. Restore it there (or re-run the "
                "analysis) to classify new images.")
    return None


def render() -> None:
    run = ui.current_run()
    st.title("Try an image")
    st.caption(f"Upload a picture (JPEG, PNG, BMP or WebP, up to "
               f"{views.MAX_UPLOAD_BYTES // 1024 // 1024} MB) to see what the run's model predicts.")
    upload = st.file_uploader("Image", type=list(views.UPLOAD_TYPES), key="try-upload")
    if upload is None:
        return
    data = upload.getvalue()
    problem = views.upload_problem(upload.name, len(data))
    if problem:
        st.error(ui.plain(problem))
        return
    try:
        pixels = decode_bytes(data, name=upload.name)
    except ValueError:
        st.error(ui.plain(f"{upload.name}: not an image that can be decoded "
                          "(JPEG, PNG, BMP or WebP expected)."))
        return
    left, right = st.columns([1, 2])
    with left:
        st.image(pixels, caption=ui.plain(upload.name), width="stretch")
        st.caption(f"{pixels.shape[1]} x {pixels.shape[0]} pixels")
    problem = model_problem(run)
    if problem:
        right.error(ui.plain(problem))
        return
    try:
        model = cache.run_model(run, cache.run_key(run))
        probs = np.asarray(model.predict(pixels), dtype=np.float64)
    except Exception as exc:  # a model that cannot be loaded or run: say why, keep the page
        right.error(ui.plain(f"The model could not classify this image: {exc}"))
        return
    with right:
        top = views.top_classes(probs, run.classes, k=3)
        st.subheader("Top-3 classes")
        st.dataframe(top, hide_index=True, width="stretch",
                     column_config={"class": st.column_config.TextColumn("class"),
                                    "probability": st.column_config.ProgressColumn(
                                        "probability", format="%.3f", min_value=0.0, max_value=1.0)})
        best = int(np.argmax(probs))
        st.plotly_chart(figures.probability_figure(probs, run.classes, true=None, predicted=best),
                        key="try-probabilities")


render()
