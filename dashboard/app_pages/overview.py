"""Overview of the chosen run: headline metrics, counts, skipped files, notes, classes, samples,
training. Every name from the run (run, model, data set, classes, splits, notes) is shown as text."""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

from dashboard import cache, figures, gallery, review_ui, ui, views


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
            st.dataframe(ui.shown(skipped), hide_index=True, width="stretch",
                         column_config={"path": st.column_config.TextColumn("file"),
                                        "reason": st.column_config.TextColumn("reason")})


def notes_ui(run) -> None:
    """What the analysis noted about the run (e.g. why it has no embeddings), one line each."""
    for note in run.notes:
        st.caption(ui.plain(f"Note: {note}"))


def input_check_ui(run) -> None:
    """The analysis' check of the model's input: a warning per mismatch it found (a preprocessing
    or class order that fits the model clearly better), else one caption saying what was checked."""
    info = run.model_info
    check = info.input_check
    if not check:
        return
    for line in info.input_warnings:
        st.warning(ui.plain(line), icon=":material/warning:")
    for line in info.input_notes:
        st.caption(ui.plain(line))
    if not info.input_warnings and check.get("sample"):
        fed = check.get("current", info.scale)
        st.caption(ui.plain(f"Input check: the model was fed {fed}; {len(check.get('accuracies') or {}) - 1} other "
                            f"preprocessings scored no better on {check['sample']:,} sampled images."))


SAMPLES_PER_CLASS = 3
DISTRIBUTION_TOP = 30


def distribution_ui(run, key: str) -> None:
    distribution = cache.class_distribution(run, key)
    table, others = views.distribution_top(distribution, top=DISTRIBUTION_TOP)
    if others:
        st.caption(f"The {DISTRIBUTION_TOP} classes with most images, then the mean of the other {others:,} "
                   "classes (per class and split).")
    st.plotly_chart(figures.class_distribution_figure(table, others=others), key="class-distribution",
                    config={"displayModeBar": False})


def samples_ui(run, key: str) -> None:
    """The first images of each class, as a gallery (a click opens an image's detail)."""
    samples = cache.samples_per_class(run, key, per_class=SAMPLES_PER_CLASS)
    rows = np.concatenate([s[:SAMPLES_PER_CLASS] for s in samples]) if samples else np.zeros(0, np.int64)
    gallery.gallery_ui(run, rows, key="samples", order_note=f"the first {SAMPLES_PER_CLASS} of each class, "
                       "in class order", title="sample images per class", url_param="p")


def training_ui(run) -> None:
    training = run.training
    if not training:
        st.caption("This run analysed an existing model; it was not trained here.")
        return
    history = run.history
    summary = views.training_summary(history, training)
    cols = st.columns(5)
    planned = summary["epochs_planned"]
    run_epochs = summary["epochs_run"]
    cols[0].metric("Epochs trained", "?" if run_epochs is None else f"{run_epochs:,}")
    if planned is not None:
        cols[0].caption(f"of {planned:,} planned")
    cols[1].metric("Stopped by", str(summary["stopped_by"] or "?"))
    if not summary["stopped_by"]:
        cols[1].caption("not recorded")
    if summary["best_val_accuracy"] is not None:
        cols[2].metric("Best validation accuracy", f"{summary['best_val_accuracy']:.2%}")
        cols[2].caption(f"at epoch {summary['best_epoch']}")
    if summary["first_lr"] is not None:
        # the first value as the metric and the last one under it: '0.001 → 1.6e-05' was cut to
        # '0.001 → 1...' in a fifth of the page
        cols[3].metric("Learning rate", f"{summary['first_lr']:.2g}")
        if summary["first_lr"] != summary["last_lr"]:
            cols[3].caption(f"to {summary['last_lr']:.2g} at the end")
    if summary["seconds"] is not None:
        seconds = float(summary["seconds"])
        cols[4].metric("Training time", f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min")
    if history is not None:
        st.plotly_chart(figures.training_curves_figure(history, best_epoch=summary["best_epoch"]),
                        key="training-curves")
    recipe = training.get("recipe")
    if recipe:
        with st.expander("The full recipe (what was trained)"):
            st.code(json.dumps(recipe, indent=2, default=str), language="json")


def report_ui(run) -> None:
    """The run's error-analysis report, the bytes of ``python -m core report RUN --html FILE``, built on click."""
    from core.report.document import DEFAULT_MAX_IMAGES, report_html_bytes

    st.download_button("Download report", lambda: report_html_bytes(run), file_name=f"report_{run.id}.html",
                       mime="text/html", key="download-report", icon=":material/description:",
                       help=f"One HTML file (opens offline, prints to PDF) with every section this run has data "
                            f"for and at most {DEFAULT_MAX_IMAGES} thumbnails; the same file as "
                            f"`python -m core report {run.id} --html report.html`.")


def render() -> None:
    run = ui.current_run()
    key = cache.run_key(run)
    st.title(ui.plain(f"Overview: {run.name}"), anchor=False)
    model, data = run.model_info, run.data_info
    st.caption(ui.plain(f"Model {model.path or '?'} · data {data.name} ({data.path or data.kind or '?'}) · "
                        f"created {run.created or '?'} · {len(run.classes)} classes"))
    report_ui(run)
    input_check_ui(run)  # above the metrics: a mismatch makes them wrong
    changed = cache.data_change_line(run)
    if changed:
        st.warning(ui.plain(changed), icon=":material/warning:")
    if not review_ui.overview_metrics_ui(run):  # its toggle on: the metrics as reviewed instead
        metrics_ui(run)
    counts_ui(run)
    notes_ui(run)
    st.subheader("Class distribution")
    distribution_ui(run, key)
    st.subheader("Sample images per class")
    samples_ui(run, key)
    st.subheader("Training")
    training_ui(run)


render()
