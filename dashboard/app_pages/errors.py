"""Every misclassified image of the evaluation split, most confident first, with a detail view.

Filters: true class, predicted class, confidence range. The detail view shows
the image, every class's probability and, when the run has embeddings, the
nearest training images of the true and of the predicted class ("why
confused"). The filtered list downloads as CSV.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import cache, figures, ui, views

TABLE_ROWS = 5_000  # rows sent to the browser table; the CSV has them all
NEIGHBOURS = 6


def filters_ui(run) -> tuple[list[int], list[int], tuple[float, float]]:
    k = len(run.classes)
    fmt = ui.class_label(run)
    cols = st.columns([2, 2, 2])
    true = cols[0].multiselect("True class", range(k), key=ui.scoped(run, "errors-true"), format_func=fmt,
                               placeholder="every class")
    pred = cols[1].multiselect("Predicted class", range(k), key=ui.scoped(run, "errors-pred"),
                               format_func=fmt, placeholder="every class")
    low, high = cols[2].slider("Confidence", 0.0, 1.0, (0.0, 1.0), step=0.01,
                               key=ui.scoped(run, "errors-conf"))
    return list(true), list(pred), (float(low), float(high))


def table_ui(run, rows: np.ndarray) -> None:
    table = views.export_table(run.predictions, rows[:TABLE_ROWS])
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    st.dataframe(table, hide_index=True, width="stretch", height=300,
                 column_config={"confidence": st.column_config.NumberColumn(format="%.3f"),
                                "true_prob": st.column_config.NumberColumn("p(true)", format="%.3f")})
    if rows.size > TABLE_ROWS:
        st.caption(f"The table shows the first {TABLE_ROWS:,} of {rows.size:,}; the CSV has all.")


def neighbours_ui(run, key: str, row: int, cls: int, title: str) -> None:
    st.caption(ui.plain(title))
    candidates = cache.train_rows_by_class(run, key)[cls]
    near = views.nearest_rows(run.embeddings, row, candidates, k=NEIGHBOURS)
    if near.size == 0:
        st.caption("(no training images of this class)")
        return
    cols = st.columns(3)
    for i, r in enumerate(near):
        with cols[i % 3]:
            ui.image_ui(run, r, size=96)
            st.caption(ui.plain(run.predictions["path"].iat[int(r)]))


def detail_ui(run, key: str, rows: np.ndarray) -> None:
    st.subheader("Image detail")
    limit = min(rows.size, 1000)
    labels = {int(r): f"#{i + 1} · {run.predictions['path'].iat[int(r)]}"
              for i, r in enumerate(rows[:limit])}
    row = st.selectbox("Error to inspect (rank · file)", list(labels), key=ui.scoped(run, "errors-detail"),
                       format_func=labels.__getitem__)
    if row is None:
        return
    r = run.predictions.iloc[int(row)]
    left, right = st.columns([1, 2])
    with left:
        ui.image_ui(run, int(row), size=256, width="content")
        st.caption("  \n".join(ui.plain(line) for line in ui.item_caption(run, int(row))))
    with right:
        st.plotly_chart(figures.probability_figure(np.asarray(run.probs[int(row)]), run.classes,
                                                   true=int(r["true"]), predicted=int(r["predicted"])),
                        key="errors-probabilities")
    st.markdown("**Why confused:** the nearest training images in embedding space")
    train = cache.train_rows_by_class(run, key)
    if run.embeddings is None or not any(len(t) for t in train):
        st.caption("This run has no embeddings of training images (split 'train'), so there are "
                   "no neighbours to show.")
        return
    a, b = st.columns(2)
    with a:
        neighbours_ui(run, key, int(row), int(r["true"]), f"true class: {r['true_label']}")
    with b:
        neighbours_ui(run, key, int(row), int(r["predicted"]), f"predicted class: {r['predicted_label']}")


def render() -> None:
    run = ui.current_run()
    key = cache.run_key(run)
    st.title("Errors")
    true, pred, conf = filters_ui(run)
    rows = views.filter_errors(run.predictions, cache.eval_mask(run, key), true_classes=true,
                               predicted_classes=pred, confidence_range=conf)
    st.caption(f"{rows.size:,} misclassified images of the '{ui.plain(run.eval_split)}' split match, "
               "most confident mistake first.")
    def csv() -> bytes:  # built only when the button is clicked: 100k rows take ~0.4 s
        return views.errors_csv(run, rows, min_confidence=conf[0])

    st.download_button("Download CSV", csv, file_name=f"{run.id}_errors.csv", mime="text/csv",
                       key="download-errors")
    if rows.size == 0:
        st.info("No misclassified image matches these filters.")
        return
    table_ui(run, rows)
    tab_gallery, tab_detail = st.tabs(["Gallery", "Image detail"])
    with tab_gallery:
        ui.gallery_ui(run, rows, key="errors", order_note="most confident mistake first",
                      page_key=ui.scoped(run, f"errors-page-{true}-{pred}-{conf}"))
    with tab_detail:
        detail_ui(run, key, rows)


render()
