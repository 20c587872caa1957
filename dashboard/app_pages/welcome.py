"""Start page: build the demo run from the page, or the command that analyses your own model."""

from __future__ import annotations

import importlib.util

import streamlit as st

from core.errors import UserError
from core.run.store import RunStore
from dashboard import cache, ui

ANALYZE_COMMAND = "python -m core analyze --model PATH --data PATH"
DEMO_COMMAND = "python -m core demo"


def build_demo_ui() -> None:
    if importlib.util.find_spec("core.demo") is None:
        st.write("Build the demo run (a small model trained on a built-in data set) with:")
        st.code(DEMO_COMMAND, language="bash")
        return
    st.write("Analyse Fashion-MNIST's 70,000 images with the small model shipped for the demo (about half a "
             "minute on a CPU; where the data set on disk differs from the one it was trained on, a model is "
             "trained first, a few minutes). The UMAP map follows in the background.")
    if not st.button("Build the demo run", key="build-demo", type="primary"):
        return
    from core.demo import run_demo  # runs TensorFlow: imported only when asked

    bar = st.progress(0.0, text="Starting...")

    def progress(message: str, fraction: float) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=message)

    try:
        # the map is computed by a background process: the run opens as soon as it is written
        run = run_demo(store=RunStore(cache.store_root()), progress=progress, background_projection=True)
    except (UserError, OSError) as exc:  # shown in the page: the user can still use the CLI (a bug shows its traceback)
        ui.cannot_show("Building the demo failed", exc)
        st.code(DEMO_COMMAND, language="bash")
        return
    st.session_state[ui.RUN_KEY] = run.id
    st.session_state[ui.SHOW_OVERVIEW_KEY] = True
    st.rerun()


def render() -> None:
    st.title("Classifier error analysis")
    runs = RunStore(cache.store_root()).list_runs()
    if not runs:
        st.info(ui.plain(f"The run store {cache.store_root()} has no runs yet."))
    demo = st.container()  # filled last: building the demo blocks the script, the rest stays drawn
    st.subheader("Analyse your own model")
    st.write("Point the analysis at a Keras model and a folder of images (one sub-folder per class):")
    st.code(ANALYZE_COMMAND, language="bash")
    st.caption("Runs are written to $ARTIFACTS_DIR (default: artifacts/); reload this page afterwards.")
    with demo:
        st.subheader("Try the demo")
        build_demo_ui()


render()
