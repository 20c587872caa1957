"""Review queue: one image at a time from a chosen set (suspected label errors, confident errors, an
error slice, a confusion cell), most likely label errors first, with a key for each verdict and for
previous/next; the progress (reviewed / total) and the reviewer name; the export of every verdict
in force on the run's images (the file ``python -m core review export`` writes)."""

from __future__ import annotations

import streamlit as st

from dashboard import review_queue, review_ui, ui


def render() -> None:
    run = ui.current_run()
    st.title("Review queue", anchor=False)
    rows, how, identity = review_ui.queue_set_ui(run)
    review_queue.queue_component(run, rows, how=how, identity=identity)
    st.subheader("Verdicts on this run's images", anchor=False)
    review_ui.export_ui(run)


render()
