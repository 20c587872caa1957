"""Rows whose model outputs are not finite: recorded as skipped, never stored as a run of NaN.

Format-neutral: it looks at what any model (Keras, ONNX, Ray's actors) returned, after prediction.
A model whose outputs are NaN or infinite for some images gives a run without those images, each
recorded in the run's ``skipped`` list with the reason; a model whose outputs are not finite for
every image stops the analysis in one line naming how many images and the first file.
"""

from __future__ import annotations

import numpy as np

from core.model.load import ModelError


def drop_non_finite(ok_rows: np.ndarray, outputs: np.ndarray, features: np.ndarray | None,
                    failed: list[dict], paths) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[dict]]:
    """``(ok_rows, outputs, features, failed)`` without the rows whose outputs (N, K) or features
    (N, D) hold NaN or inf; each of those is added to ``failed`` ({'path', 'reason'}). ``paths`` are
    the data set's paths, indexed by ``ok_rows``. Raises ModelError when no row is left.

    >>> rows, out, feats, failed = drop_non_finite(np.array([0, 1]), np.array([[0.2, 0.8], [np.nan, 1.0]]),
    ...                                            None, [], ["a.png", "b.png"])
    >>> rows.tolist(), failed
    ([0], [{'path': 'b.png', 'reason': "the model's outputs are not finite (NaN or inf)"}])
    """
    ok_rows = np.asarray(ok_rows)
    outputs = np.asarray(outputs)
    if len(ok_rows) == 0:
        return ok_rows, outputs, features, failed
    bad_out = ~np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1)
    bad_feat = (~np.isfinite(np.asarray(features).reshape(len(features), -1)).all(axis=1)
                if features is not None else np.zeros(len(outputs), bool))
    bad = bad_out | bad_feat
    if not bad.any():
        return ok_rows, outputs, features, failed
    first = str(paths[int(ok_rows[np.flatnonzero(bad)[0]])])
    if bad.all():
        what = "outputs" if bad_out.all() else "outputs or features"
        raise ModelError(f"The model's {what} are not finite (NaN or inf) for all {len(ok_rows):,} images "
                         f"(first: {first}); check the model file and its input scale (--scale)")
    reasons = np.where(bad_out, "the model's outputs are not finite (NaN or inf)",
                       "the model's features (embedding) are not finite (NaN or inf)")
    failed = list(failed) + [{"path": str(paths[int(r)]), "reason": str(reason)}
                             for r, reason in zip(ok_rows[bad], reasons[bad])]
    keep = ~bad
    return ok_rows[keep], outputs[keep], None if features is None else features[keep], failed
