"""Tables handed to people: the ranked error list (the per-class report is the run's CSV).

Both the CLI (``python -m core errors``) and the dashboard's export use these,
so the two give the same file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import UserError
from core.run.store import Run

ERROR_COLUMNS = ["rank", "id", "path", "split", "true_label", "predicted_label", "confidence",
                 "true_prob", "margin", "top2_label", "top2_prob", "top3_label", "top3_prob"]


def errors_table(run: Run, *, min_confidence: float = 0.0, split: str | None = None) -> pd.DataFrame:
    """Misclassified images, most confident first, with the margin to the runner-up.

    ``split`` defaults to the run's evaluation split; 'all' takes every row.
    Read from the predictions table alone (its top-k columns), so that a
    million-row run needs no pass over the probabilities.
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise UserError(f"min_confidence must be within [0, 1]. Received: min_confidence={min_confidence}")
    preds = run.predictions
    split = split or run.eval_split
    split_column = preds["split"]  # categorical: compare and index it, never expand all N rows
    if split == "all":
        in_split = np.ones(len(preds), bool)
    else:
        known = sorted(str(s) for s in split_column.unique())
        if split not in known:
            raise UserError(f"Unknown split {split!r}. The run has: {known + ['all']}")
        in_split = (split_column == split).to_numpy()
    confidence = preds["confidence"].to_numpy()
    wrong = np.flatnonzero(in_split & ~preds["correct"].to_numpy() & (confidence >= min_confidence))
    # most confident first; ties keep row order (as metrics.ranked_errors does)
    rows = wrong[np.lexsort((wrong, -confidence[wrong]))]
    names = np.asarray(run.classes, dtype=object)
    runner_up = preds["top2_prob"].to_numpy()[rows] if "top2_prob" in preds else np.zeros(len(rows))
    out = pd.DataFrame({
        "rank": np.arange(1, len(rows) + 1),
        "id": preds["id"].to_numpy()[rows],
        "path": preds["path"].iloc[rows].astype(str).to_numpy(),
        "split": split_column.iloc[rows].astype(str).to_numpy(),
        "true_label": names[preds["true"].to_numpy()[rows]],
        "predicted_label": names[preds["predicted"].to_numpy()[rows]],
        "confidence": confidence[rows],
        "true_prob": preds["true_prob"].to_numpy()[rows],
        "margin": confidence[rows] - runner_up,
    })
    for j in (2, 3):
        if f"top{j}" in preds:
            out[f"top{j}_label"] = names[preds[f"top{j}"].to_numpy()[rows]]
            out[f"top{j}_prob"] = preds[f"top{j}_prob"].to_numpy()[rows]
    return out
