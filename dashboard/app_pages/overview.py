"""Overview of the chosen run: headline metrics, counts, skipped files, notes, classes, samples,
training. Every name from the run (run, model, data set, classes, splits, notes) is shown as text."""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

from dashboard import cache, figures, ui


def metrics_ui(run) -> None:
    m = run.metrics
    cols = st.columns(5)
    cols[0].metric("Accuracy", f"{m.get('accuracy', float('nan')):.2%}")
    cols[1].metric("Macro-F1", f"{m.get('macro_f1', float('nan')):.3f}")
    cols[2].metric("Top-3 accuracy", f"{m.get('top3_accuracy', float('nan')):.2%}")
    cols[3].metric("Evaluated images", f"{m.get('n', 0):,}")
    cols[4].metric("Errors", f"{m.get('errors', 0):,}")
    st.caption(f"Metrics on the '{ui.plain(run.eval_split)}' split.")


def counts_ui(run) -> None:
    splits = run.splits
    skipped = run.skipped
    cols = st.columns(len(splits) + 2)
    cols[0].metric("Images", f"{run.n_images:,}")
    for col, (split, count) in zip(cols[1:], sorted(splits.items())):
        col.metric(ui.plain(f"{split} split"), f"{count:,}")
    cols[-1].metric("Skipped files", f"{len(skipped):,}")
    if len(skipped):
        with st.expander(f"Skipped files and why ({len(skipped):,})", expanded=len(skipped) <= 20):
            st.dataframe(skipped, hide_index=True, width="stretch",
                         column_config={"path": st.column_config.TextColumn("file"),
                                        "reason": st.column_config.TextColumn("reason")})


def notes_ui(run) -> None:
    """What the analysis noted about the run (e.g. why it has no embeddings), one line each."""
    for note in run.notes:
        st.caption(ui.plain(f"Note: {note}"))


def sample_strip(images: list[np.ndarray], *, size: int = 64, gap: int = 4) -> np.ndarray:
    """Thumbnails side by side on white, each centred in a size x size square (RGB uint8)."""
    tiles = []
    for img in images:
        rgb = np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img[:, :, :3]
        tile = np.full((size, size, 3), 255, np.uint8)
        h, w = min(rgb.shape[0], size), min(rgb.shape[1], size)
        y, x = (size - h) // 2, (size - w) // 2
        tile[y:y + h, x:x + w] = rgb[:h, :w]
        tiles += [tile, np.full((size, gap, 3), 255, np.uint8)]
    return np.hstack(tiles[:-1])


def samples_ui(run, key: str) -> None:
    classes = run.classes
    samples = cache.samples_per_class(run, key)
    limit = 20
    shown = range(len(classes)) if len(classes) <= limit else range(limit)
    if len(classes) > limit:
        start = st.number_input("First class", 0, len(classes) - 1, 0, step=limit,
                                key=ui.scoped(run, "overview-sample-start"))
        shown = range(int(start), min(int(start) + limit, len(classes)))
    cols = st.columns(5)
    for i, c in enumerate(shown):
        with cols[i % 5]:
            st.caption(ui.plain(f"{c} · {classes[c]}"))
            images = [img for img in (ui.thumbnail(run, r, size=64) for r in samples[c][:3])
                      if img is not None]
            if images:
                # one strip per class, so narrow columns (100+ classes) never wrap a sample alone
                st.image(sample_strip(images), width="stretch")
            else:
                st.caption("(no images)")


def training_ui(run) -> None:
    training = run.training
    if not training:
        st.caption("This run analysed an existing model; it was not trained here.")
        return
    recipe = training.get("recipe")
    if recipe:
        st.write("What was trained:")
        st.code(json.dumps(recipe, indent=2, default=str), language="json")
    history = run.history
    if history is not None:
        st.plotly_chart(figures.training_curves_figure(history), key="training-curves")


def render() -> None:
    run = ui.current_run()
    key = cache.run_key(run)
    st.title(ui.plain(f"Overview: {run.name}"), anchor=False)
    model, data = run.model_info, run.data_info
    st.caption(ui.plain(f"Model {model.path or '?'} · data {data.name} ({data.path or data.kind or '?'}) · "
                        f"created {run.created or '?'} · {len(run.classes)} classes"))
    metrics_ui(run)
    counts_ui(run)
    notes_ui(run)
    st.subheader("Class distribution")
    st.plotly_chart(figures.class_distribution_figure(cache.class_distribution(run, key)),
                    key="class-distribution")
    st.subheader("Sample images per class")
    samples_ui(run, key)
    st.subheader("Training")
    training_ui(run)


render()
