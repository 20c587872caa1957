"""Tables handed to people: the ranked error list (the per-class report is the run's CSV).

Both the CLI (``python -m core errors``) and the dashboard's export use these,
so the two give the same file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core import metrics
from core.store import Run

ERROR_COLUMNS = ["rank", "id", "path", "split", "true_label", "predicted_label", "confidence",
                 "true_prob", "margin", "top2_label", "top2_prob", "top3_label", "top3_prob"]


def errors_table(run: Run, *, min_confidence: float = 0.0, split: str | None = None) -> pd.DataFrame:
    """Misclassified images, most confident first, with the margin to the runner-up.

    ``split`` defaults to the run's evaluation split; 'all' takes every row.
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be within [0, 1]. Received: min_confidence={min_confidence}")
    preds = run.predictions
    split = split or run.eval_split
    if split == "all":
        rows = np.arange(len(preds))
    else:
        known = sorted(preds["split"].astype(str).unique())
        if split not in known:
            raise ValueError(f"Unknown split {split!r}. The run has: {known + ['all']}")
        rows = np.flatnonzero(preds["split"].to_numpy() == split)
    ranked = metrics.ranked_errors(preds["true"].to_numpy()[rows], np.asarray(run.probs[rows]),
                                   min_confidence=min_confidence)
    sel = preds.iloc[rows[ranked["index"].to_numpy()]]
    names = np.asarray(run.classes, dtype=object)
    out = pd.DataFrame({
        "rank": np.arange(1, len(ranked) + 1),
        "id": sel["id"].to_numpy(),
        "path": sel["path"].astype(str).to_numpy(),
        "split": sel["split"].astype(str).to_numpy(),
        "true_label": names[ranked["true"].to_numpy()],
        "predicted_label": names[ranked["predicted"].to_numpy()],
        "confidence": ranked["confidence"].to_numpy(),
        "true_prob": ranked["true_prob"].to_numpy(),
        "margin": ranked["margin"].to_numpy(),
    })
    for j in (2, 3):
        if f"top{j}" in sel:
            out[f"top{j}_label"] = names[sel[f"top{j}"].to_numpy()]
            out[f"top{j}_prob"] = sel[f"top{j}_prob"].to_numpy()
    return out
