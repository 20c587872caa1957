"""Error causes in the dashboard, beyond what the generic findings rendering draws.

``core.diagnose.causes`` decides one cause per misclassified image; its cards,
per-image columns, caption line and Errors-page filter are declared as
findings and drawn generically. This module adds what is specific to causes:
the image detail's section (the cause, its evidence and the neighbours that
decided it, as thumbnails with their labels), the cause mix per confused pair
on the Diagnose page, and the rows of the Review queue's "errors by cause" set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.diagnose.causes import CAPTION_WORDS, CAUSES, pair_mix_lines
from core.run.store import Run
from dashboard import cache, gallery, ui

NAME = "causes"
NEIGHBOUR_PX = 72


def stored(run: Run):
    """(causes table indexed by row, neighbours table, summary), or None when not stored."""
    return cache.stored_causes(run, cache.run_key(run), cache.derived_stamp(run, "causes"))


def cause_rows(run: Run, cause: str) -> np.ndarray | None:
    """The errors of ``cause``, most confident cause first; None when causes are not stored."""
    if cause not in CAUSES:
        raise ValueError(f"Unknown cause {cause!r}. The causes are {list(CAUSES)}")
    found = stored(run)
    if found is None:
        return None
    table = found[0]
    part = table[table["cause"] == cause].sort_values(["confidence", "row"], ascending=[False, True], kind="stable")
    return part["row"].to_numpy(np.int64)


def model_errors_first(run: Run, rows: np.ndarray) -> tuple[np.ndarray, bool]:
    """``rows`` with the ``model`` errors first (their order kept), and whether causes were stored."""
    found = stored(run)
    if found is None or rows.size == 0:
        return rows, False
    causes = found[0]["cause"].reindex(rows).to_numpy(dtype=object)
    is_model = causes == "model"
    return np.concatenate([rows[is_model], rows[~is_model]]), True


def pair_mix_table(summary: dict) -> pd.DataFrame:
    """One line per confused pair (given → predicted), a column per cause found, most errors first."""
    pairs = summary.get("pair_mix", [])
    present = [c for c in CAUSES if any(p.get(c) for p in pairs)]
    return pd.DataFrame([{"given → predicted": f"{p['given']} → {p['predicted']}", "errors": p["total"],
                          **{c: p.get(c, 0) for c in present}} for p in pairs])


def pair_mix_ui(run: Run) -> None:
    """The Diagnose page's 'cause mix per confused pair' (when causes are stored)."""
    found = stored(run)
    if found is None or not found[2].get("pair_mix"):
        return
    summary = found[2]
    with st.container(border=True, key="diagnose-cause-mix"):
        st.subheader("Causes per confused pair", anchor=False)
        st.caption("  \n".join(ui.plain(line) for line in pair_mix_lines(summary, limit=3)))
        st.dataframe(ui.shown(pair_mix_table(summary)), hide_index=True, width="stretch")
        if summary.get("not_assessed_line"):
            st.caption(ui.plain(summary["not_assessed_line"]))


def detail_section(run: Run, row: int) -> None:
    """The image detail: its cause in words, the evidence and the neighbours that decided it."""
    found = stored(run)
    if found is None:
        return
    table, neighbours, summary = found
    if row not in table.index:
        return
    line = table.loc[row]
    st.markdown(f"**Cause: {ui.plain(CAPTION_WORDS[line['cause']])}** (confidence {line['confidence']:.2f})")
    st.caption(ui.plain(line["evidence"]))
    near = neighbours[neighbours["row"] == row]
    spaces = near["space"] if "space" in near.columns else pd.Series("embedding", index=near.index)
    where = summary.get("reference_words") or "images"
    for space, words in (("embedding", "in the model's embedding space"), ("pixels", "pixel by pixel")):
        part = near[spaces == space].sort_values("rank")
        if part.empty:
            continue
        st.caption(ui.plain(f"Its {len(part)} nearest {where} {words}:"))
        cells = st.columns(len(part))
        for cell, (_, n) in zip(cells, part.iterrows()):
            with cell, st.container(key=f"cause-near-{space}-{int(n['rank'])}"):
                gallery.image_ui(run, int(n["neighbour_row"]), size=NEIGHBOUR_PX)
                st.caption(ui.plain(str(n["neighbour_label"])) + "  \n" + f"cosine distance {float(n['distance']):.2f}")


gallery.register_detail_section(NAME, detail_section)
