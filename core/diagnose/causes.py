"""Error causes: for every misclassified image, is the label, the model or the image at fault?

Conventions: N images (the run's rows), K classes; for an error, ``y`` is its
*given* class and ``p`` the *predicted* one. ``D[i, c]`` is the mean cosine
distance from image i to its ``k`` nearest *reference* images of class c
(class-conditional neighbour distance), in two spaces: the model's
penultimate-layer *embeddings*, and *pixels* (the ``image_scan`` kind's grey
thumbnails, each centred and scaled to unit length, projected on 64 principal
axes: a space the model has no say in). ``log(D[i, y] / D[i, p])`` (the
*log-ratio*) is large when the image sits among images labelled p and away
from those labelled y.

Reference (labelled neighbours): the ``train`` split when the run has one,
else ``val``, else the evaluated images themselves, each without itself
(leave-one-out); at most ``max_reference`` of them, a seeded sample. The
summary says which (``reference``).

The ``label`` decision is learnt per run, from labelled data the tool is sure
of, never from constants tuned to one data set. The *calibration split* is
``val`` when the run has one that is not evaluated (else ``train``, whose
probabilities are in-sample, with neighbours leaving each image out); at most
``max_calibration`` of its images, every misclassified one kept. Its labels are
taken as right, so:

* its misclassified images are examples of the model's *own errors*;
* its correctly classified images, relabelled as the model's runner-up class,
  are *planted flips*: an image of class a labelled b that the model calls a,
  which is what a wrong label looks like.

A logistic regression (``fit_label_model``, both classes weighted equally)
learns P(wrong label) from three features (``label_features``): the model's
log-odds ``log p(p) - log p(y)``, the embedding log-ratio and the pixel
log-ratio. The share of wrong labels among the evaluated errors is expected
from the model's error rate r on the calibration split: ``(1 - r * n_evaluated
/ n_errors) / (1 - r)`` (``wrong_label_share``: the model should err on clean
images of the evaluated split as often as on those of the calibration split,
and on nearly every wrong-labelled one), and
``posterior`` moves the classifier's probability to that prior (Bayes' rule).
Where the calibration split is ``train`` (no ``val``: a folder of train/ and
test/), r is in-sample, lower than the model's rate on unseen images, and
that share only an upper bound: the smaller of it and the share the
classifier's probabilities on the evaluated errors imply (``mixture_share``,
EM on the prior) is used, and the neighbours' rule must agree (step 3).
Before both (version 4), such runs had 60.5% (Fashion-MNIST, the demo model)
and 79.7% (glyphs) of the model's own errors called ``label``, now 19.8% and
7.0%, at a recall of 0.868 and 0.749 against 0.963 and 0.977
(``bench_causes.py --no-val``, five seeds, see the README).

Each error gets exactly one cause, checked in this order:

1. ``copy``: a near copy of it in ``train`` (the ``duplicates`` kind's
   ``eval_with_train_copy`` table) carries another label than its given one:
   the data set contradicts itself.
2. ``atypical``: for every class c, ``D[i, c]`` (embeddings) exceeds the
   ``atypical_level`` (0.99) quantile of ``D[j, c]`` over the evaluated
   images j of class c that the model classifies correctly (farther from every
   class than 99% of that class's images are from it); or its size or aspect
   ratio lies outside the 0.5-99.5% range of the reference images'
   (``image_properties``): out of distribution for this model.
3. ``label``: the posterior probability of a wrong label is above 1/2. The
   model says p, and its neighbours (in embeddings and in pixels) weigh in;
   the suggested label is p. Where the classifier learnt on ``train``
   (in-sample: the model has seen those images, their errors and distances
   are not those of unseen ones), the embedding log-ratio must also reach the
   ``label_level`` quantile of the rule below: both must agree. Without a
   usable calibration split (fewer than 20
   own errors or 20 correct images there, or a leave-one-out run), the older
   rule: the embedding log-ratio is at least the ``label_level`` (0.1)
   quantile of the same ratio over correctly classified images of class p.
4. ``ambiguous`` (little information): its contrast, sharpness or share of
   the picture that differs from its border's colour (``subject``: an empty
   ground with a dot at its edge) (``image_properties``) is at most the 1st
   percentile of the reference images'.
5. ``model``: in embedding space or in pixels, its nearest images of its given
   class are at least as close as those of the predicted class
   (``D[i, y] <= D[i, p]``): the image looks like its label rather than the
   prediction, yet the model says otherwise (the analyst's "critical error").
   Asking also that no third class be nearer (``D[i, y] <= min_c D[i, c]``) was
   tried for version 6 and not kept: on rendered letters (``bench_causes.py
   --sets glyphs --seeds 0``) it took 52 of the 89 flipped errors called
   ``model`` away from it, but on a generated folder of six shapes it called
   29 of the 110 plain model errors ``ambiguous``, their pixels nearest a
   third shape (in embeddings alone it changed 4 flips and 16 own errors on
   glyphs, nothing on Fashion-MNIST).
6. ``ambiguous``: otherwise: closer to p than to y in both spaces, but not
   clearly a wrong label; the neighbours are split between the two classes,
   or the nearest class is a third one (the evidence names it).

Without embeddings, only ``copy``, property-based ``atypical`` and
``ambiguous`` (and, for the model's margin, ``ambiguous`` when the given class
is the runner-up and the margin is below the ``label_level`` quantile of the
margins of the correct predictions of p) can be decided; every other error's
cause is ``undetermined``. Without thumbnails (no ``image_scan`` result) the
classifier reads the model and the embeddings only. The summary's
``not_assessed`` line says what was missing.

Confidence (in [0, 1]): ``label`` the posterior probability of a wrong label
(for the quantile rule, the share of correct p images less clearly p than
this one); ``model`` one minus that posterior (for the rule, the share of its k
nearest reference images that carry its given label); ``ambiguous`` one minus
the gap between the shares of the two classes among its k nearest images (or,
for little information, one minus the property's percentile); ``atypical`` the
share of correct images of its nearest class nearer to it than it; ``copy``
the copy's similarity; ``undetermined`` 0.

``label_score`` (every evaluated image, s = the prediction for errors, the
runner-up otherwise) is the classifier's log-odds (without it,
``-log p(y) + log(D[i, y] / D[i, s])``), and ``label_probability`` the
probability (the posterior for errors). ``label_issues`` reads these as its
second signal, so the neighbours are searched once for both kinds.

Measured (benchmarks/bench_causes.py, ten flip seeds pooled, see the README): on
Fashion-MNIST 17.3% of the model's own errors are called ``label`` at a recall of
0.880, and the ranking's average precision among errors is only +0.006 over
cleanlab's self-confidence; on scikit-learn digits 11.2% at 0.921 (+0.019); on
rendered letters (labels right by construction, an 82% model) 6.0% at 0.678
(+0.200). A classifier trained on Fashion-MNIST's test errors themselves, with
every input this kind reads, does no better than this one (recall 0.84 at 10%),
and a blind audit (benchmarks/audit_causes.py) found about a third of the errors
that benchmark counts as the model's own to carry a wrong label in Fashion-MNIST
itself. What was tried on the dev set (the demo run's val split, ``--dev``) and not
kept (val images as reference and k were also looked at on seed 0's test errors,
with the oracle above; nothing was chosen there): HOG features instead of pixels, all
54,000 training images or the val images as reference, k-NN vote shares at k =
5, 20, 50 in both spaces, a second classifier on pixels, the classifier at prior
1/2, the prior estimated by EM, or per predicted class or class pair: none
improved recall and the own-error share at once by more than a point or two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.analysis.neighbours import nearest_reference, neighbour_inputs, unit_rows
from core.diagnose.findings import Caption, Card, Column, Filter, Findings
from core.errors import UserError, first_line
from core.progress import Progress
from core.run import derived
from core.run.store import Run

CAUSES = ("label", "model", "ambiguous", "atypical", "copy", "undetermined")
CAUSE_WORDS = {
    "label": "the given label is likely wrong",
    "model": "the model's own error: the image looks like its label",
    "ambiguous": "ambiguous: between two classes, or little information",
    "atypical": "atypical: unlike every class the model knows",
    "copy": "a near copy of a training image with another label",
    "undetermined": "undetermined: the run lacks what decides it",
}
TABLE_COLUMNS = ["row", "path", "given_label", "predicted_label", "cause", "confidence", "suggested_label",
                 "evidence", "model_confidence", "label_score"]
CSV_COLUMNS = ["path", "given_label", "predicted_label", "cause", "confidence", "suggested_label", "evidence"]
# properties whose lowest values mean little information, and how an image's value is said
LOW_INFORMATION = {"contrast": "low contrast ({:.3g}", "blur": "blurry ({:.3g}",
                   "subject": "nearly uniform (only {:.1%} of it differs from its border's colour"}
LABEL_LEVEL = 0.1  # defaults of the quantile levels (see the module docstring)
ATYPICAL_LEVEL = 0.99
_MIN_CLASS_COUNT = 20  # correct images of a class below which its quantiles are pooled over all classes
_EPS = 1e-6


# --------------------------------------------------------------------------- pure functions

def class_neighbour_distances(query: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray, *,
                              n_classes: int, k: int = 10, query_ids: np.ndarray | None = None,
                              reference_ids: np.ndarray | None = None, batch_size: int = 1024) -> np.ndarray:
    """Mean cosine distance to the ``k`` nearest reference images of each class: float64 (Nq, K).

    Parameters
    ----------
    query : float array (Nq, D); reference : float array (Nr, D) with labels (Nr,) in range(n_classes).
    query_ids, reference_ids : optional int arrays; a reference with its query's id is not its neighbour
        (leave-one-out).

    A class with fewer than ``k`` reference images uses those it has; one without any gets inf.
    Time O(Nq * Nr * D), memory O(batch_size * max class size).

    >>> ref = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> class_neighbour_distances(np.array([[1.0, 0.0]]), ref, np.array([0, 0, 1]), n_classes=2, k=1).round(3)
    array([[0., 1.]])
    """
    query, reference, reference_labels = neighbour_inputs(query, reference, reference_labels, k)
    loo = query_ids is not None and reference_ids is not None
    distances = np.full((len(query), n_classes), np.inf)
    if len(query) == 0:
        return distances
    reference = unit_rows(reference)
    members = [np.flatnonzero(reference_labels == c) for c in range(n_classes)]
    blocks = [reference[idx] for idx in members]
    for start in range(0, len(query), batch_size):
        stop = min(start + batch_size, len(query))
        block = unit_rows(query[start:stop])
        for c, idx in enumerate(members):
            kc = min(k, len(idx) - (1 if loo else 0))
            if kc < 1:
                continue
            similarity = block @ blocks[c].T  # (b, n_c)
            if loo:
                similarity[np.asarray(query_ids[start:stop])[:, None] == np.asarray(reference_ids)[idx][None, :]] = -2
            n_c = similarity.shape[1]
            best = np.partition(similarity, n_c - kc, axis=1)[:, n_c - kc:]  # values only: cheaper than indices
            distances[start:stop, c] = 1.0 - best.mean(axis=1)
    return np.maximum(distances, 0.0)


def comparable(distances: np.ndarray, given: np.ndarray, other: np.ndarray) -> np.ndarray:
    """bool (N,): both classes have reference images to measure image i against (finite distances)."""
    r = np.arange(len(given))
    return np.isfinite(distances[r, given]) & np.isfinite(distances[r, other])


def log_ratio(distances: np.ndarray, given: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``log(D[i, given] / D[i, other])``: float (N,), > 0 when the image is nearer ``other`` than ``given``;
    0 (no evidence either way) where a class has no reference image (``comparable`` is False).

    >>> log_ratio(np.array([[0.2, 0.1], [np.inf, 0.1]]), np.array([0, 0]), np.array([1, 1])).round(3).tolist()
    [0.693, 0.0]
    """
    r = np.arange(len(given))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.log((distances[r, given] + _EPS) / (distances[r, other] + _EPS))
    return np.where(comparable(distances, given, other), out, 0.0)


class Thresholds:
    """Per-class quantiles from the images the model classifies correctly (their labels agree with it).

    ``correct_labels`` (M,), ``correct_distances`` (M, K) of those images. ``pair(p, y)``: the
    ``level`` quantile of ``log(D[j, y] / D[j, p])`` over correct images j of class p; ``far(c)``:
    the ``atypical_level`` quantile of ``D[j, c]`` over correct images of class c. A class with
    fewer than ``_MIN_CLASS_COUNT`` correct images uses every correct image's values.
    """

    def __init__(self, correct_labels: np.ndarray, correct_distances: np.ndarray, *, level: float,
                 atypical_level: float):
        self.labels = np.asarray(correct_labels, np.int64)
        self.distances = np.asarray(correct_distances, np.float64)
        self.level, self.atypical_level = float(level), float(atypical_level)
        self.n_classes = self.distances.shape[1] if self.distances.ndim == 2 else 0
        self._pair: dict[tuple[int, int], np.ndarray] = {}

    @property
    def usable(self) -> bool:
        return len(self.labels) >= _MIN_CLASS_COUNT

    def _own(self, p: int) -> np.ndarray:
        mask = self.labels == p
        return mask if mask.sum() >= _MIN_CLASS_COUNT else np.ones(len(self.labels), bool)

    def pair_values(self, p: int, y: int) -> np.ndarray:
        """Sorted ``log(D[j, y] / D[j, own class])`` of the correct images of class p (or of all)."""
        key = (p, y)
        if key not in self._pair:
            mask = self._own(p)
            own = self.labels[mask]
            values = log_ratio(self.distances[mask], np.full(len(own), y), own)
            keep = (own != y) & comparable(self.distances[mask], np.full(len(own), y), own)
            self._pair[key] = np.sort(values[keep])
        return self._pair[key]

    def pair(self, p: int, y: int) -> float:
        values = self.pair_values(p, y)
        return float(np.quantile(values, self.level)) if len(values) else np.inf

    def share_below(self, p: int, y: int, value: float) -> float:
        """Share of correct images of class p whose log-ratio against y is below ``value``."""
        values = self.pair_values(p, y)
        return float(np.searchsorted(values, value, side="left") / len(values)) if len(values) else 0.0

    def far(self) -> np.ndarray:
        """(K,) distance beyond which an image is farther from class c than ``atypical_level`` of its images."""
        out = np.full(self.n_classes, np.inf)
        for c in range(self.n_classes):
            values = self.distances[self._own(c), c]
            values = values[np.isfinite(values)]
            if len(values):
                out[c] = np.quantile(values, self.atypical_level)
        return out

    def share_nearer(self, c: int, value: float) -> float:
        values = np.sort(self.distances[self._own(c), c])
        return float(np.searchsorted(values, value, side="left") / len(values)) if len(values) else 0.0


def _percentile_of(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    ref = np.sort(reference[np.isfinite(reference)])
    if len(ref) == 0:
        return np.full(len(values), np.nan)
    return np.searchsorted(ref, values, side="right") / len(ref)


def thumbnail_features(thumbnails: np.ndarray, rows: np.ndarray, *, fit_rows: np.ndarray, dims: int = 64,
                       seed: int = 0) -> np.ndarray:
    """Model-independent features of ``rows``: float32 (N, d), d = min(dims, pixels), zeros on other rows.

    Each grey thumbnail (N, S, S) is centred on its own mean and scaled to unit length (so that
    brightness and contrast do not decide), then projected on the ``dims`` principal axes of at most
    2,000 of ``fit_rows`` (a seeded sample): cosine neighbours in that space are the images that look
    alike pixel by pixel, whatever the model thinks of them.
    """
    def normalised(at: np.ndarray) -> np.ndarray:
        flat = np.asarray(thumbnails[at], np.float32).reshape(len(at), -1)
        return unit_rows(flat - flat.mean(axis=1, keepdims=True))

    fit_rows = np.sort(np.asarray(fit_rows, np.int64))
    if len(fit_rows) > 2000:
        fit_rows = np.sort(np.random.default_rng(seed).choice(fit_rows, 2000, replace=False))
    sample = normalised(fit_rows).astype(np.float64)
    centre = sample.mean(axis=0)
    axes = _principal_axes(sample - centre, min(dims, sample.shape[1]), seed=seed).astype(np.float32)
    rows = np.unique(np.asarray(rows, np.int64))
    out = np.zeros((len(thumbnails), axes.shape[1]), np.float32)
    for start in range(0, len(rows), 8192):
        part = rows[start:start + 8192]
        out[part] = (normalised(part) - centre.astype(np.float32)) @ axes
    return out


def _principal_axes(centred: np.ndarray, dims: int, *, seed: int, power: int = 3) -> np.ndarray:
    """The ``dims`` leading principal axes (D, dims) of ``centred`` (n, D), by a randomised range finder
    (Halko, Martinsson and Tropp, 2011): a full SVD or eigendecomposition of 1,024 pixels takes seconds
    on two cores, this a fraction of one."""
    rng = np.random.default_rng(seed)
    basis = centred @ rng.standard_normal((centred.shape[1], min(dims + 10, centred.shape[1])))
    for _ in range(power):
        basis, _ = np.linalg.qr(centred @ (centred.T @ np.linalg.qr(basis)[0]))
    basis, _ = np.linalg.qr(basis)
    _, _, vt = np.linalg.svd(basis.T @ centred, full_matrices=False)
    return vt[:dims].T


FEATURE_NAMES = ("model log-odds", "embedding log-ratio", "pixel log-ratio")


def label_features(probs: np.ndarray, given: np.ndarray, suggested: np.ndarray, embedding_distances: np.ndarray,
                   pixel_distances: np.ndarray | None) -> np.ndarray:
    """What the label-error classifier reads: float (M, 2 or 3), one line per image, columns ``FEATURE_NAMES``.

    ``log p(s) - log p(y)`` (the model's self-confidence against the given label y, s the suggested
    class), ``log(D[i, y] / D[i, s])`` in embedding space and, when there are thumbnails, the same in
    pixel space (the signal that does not come from the model).
    """
    r = np.arange(len(given))
    probs = np.asarray(probs, np.float64)
    columns = [np.log(np.maximum(probs[r, suggested], 1e-9)) - np.log(np.maximum(probs[r, given], 1e-9)),
               log_ratio(embedding_distances, given, suggested)]
    if pixel_distances is not None:
        columns.append(log_ratio(pixel_distances, given, suggested))
    return np.column_stack(columns)


@dataclass(frozen=True)
class LabelModel:
    """A per-run logistic regression: P(wrong label | features), trained on planted flips against the
    model's own errors of a labelled split (see ``fit_label_model``), both classes weighted equally."""

    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    n_flips: int
    n_errors: int

    def log_odds(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        return np.clip(z @ self.coef + self.intercept, -50.0, 50.0)

    def probability(self, features: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.log_odds(features)))


def fit_label_model(flip_features: np.ndarray, error_features: np.ndarray, *, l2: float = 1e-3,
                    iterations: int = 50) -> LabelModel:
    """Logistic regression of planted flips (1) against the model's own errors (0), classes balanced.

    ``flip_features`` (F, d): correctly classified labelled images whose label was replaced by the
    model's runner-up class (an image of class a labelled b that the model calls a: what a wrong label
    looks like); ``error_features`` (E, d): that split's misclassified images (labels assumed right).
    Features are standardised; Newton's method (IRLS) with a small ridge ``l2`` on the weights.
    Hand-written (d + 1 parameters): importing scikit-learn costs ~5 s on a 2-core machine, a quarter
    of this kind's time budget.

    >>> rng = np.random.default_rng(0)
    >>> m = fit_label_model(rng.normal(2, 1, (200, 1)), rng.normal(-2, 1, (50, 1)))
    >>> bool(m.probability(np.array([[3.0]]))[0] > 0.9), bool(m.probability(np.array([[-3.0]]))[0] < 0.1)
    (True, True)
    """
    x = np.vstack([flip_features, error_features]).astype(np.float64)
    t = np.r_[np.ones(len(flip_features)), np.zeros(len(error_features))]
    if min(len(flip_features), len(error_features)) < 1:
        raise UserError(f"the label-error classifier needs flips and errors. Received {len(flip_features)} "
                        f"flips and {len(error_features)} errors")
    weight = np.where(t == 1, 0.5 / t.mean(), 0.5 / (1 - t.mean()))
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    design = np.column_stack([(x - mean) / scale, np.ones(len(x))])
    beta = np.zeros(design.shape[1])
    ridge = np.diag(np.r_[np.full(design.shape[1] - 1, l2 * len(x)), 0.0])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ beta, -50, 50)))
        gradient = design.T @ (weight * (p - t)) + ridge @ beta
        hessian = (design * (weight * p * (1 - p))[:, None]).T @ design + ridge + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return LabelModel(coef=beta[:-1], intercept=float(beta[-1]), mean=mean, scale=scale,
                      n_flips=int(len(flip_features)), n_errors=int(len(error_features)))


def wrong_label_share(n_errors: int, n_evaluated: int, own_error_rate: float) -> float:
    """The expected share of wrong labels among ``n_errors`` misclassified images of ``n_evaluated``, when
    the model errs on ``own_error_rate`` r of images with right labels (measured on a clean labelled split).

    With W wrong labels, the model errs on r (N - W) of the N - W right ones and, nearly always, on the W
    wrong ones (it would have to predict the wrong label itself): E = r (N - W) + W, so
    W / E = (1 - r N / E) / (1 - r), kept within [0.01, 0.99]. (Version 3 of the kind used 1 - r N / E,
    which counts the wrong-labelled images among those the model could err on by itself and so
    underestimates W: 0.555 against a true 0.613 on the benchmark's development set, 0.596 now.)

    >>> round(wrong_label_share(1651, 10000, 0.0687), 3)
    0.627
    """
    if n_errors < 1:
        return 0.5
    r = float(np.clip(own_error_rate, 0.0, 0.99))
    return float(np.clip((1.0 - r * n_evaluated / n_errors) / (1.0 - r), 0.01, 0.99))


def mixture_share(balanced_probability: np.ndarray, *, iterations: int = 500, tol: float = 1e-6) -> float:
    """The share of wrong labels among errors that the classifier's own probabilities imply (EM on the prior):
    the fixed point of ``pi = mean(posterior(q, pi))``, within [0.01, 0.99].

    Used where the calibration split is ``train``: its error rate is in-sample (the model has seen those
    images), lower than on unseen images of right label, so ``wrong_label_share`` from it overstates the wrong
    labels (a folder with train/ and test/ only: 0.74 against a true 0.29); it is an upper bound there.

    >>> q = np.r_[np.full(30, 0.9), np.full(70, 0.1)]
    >>> round(mixture_share(q), 2)
    0.25
    """
    q = np.clip(np.asarray(balanced_probability, np.float64), 1e-12, 1 - 1e-12)
    if len(q) == 0:
        return 0.5
    pi = 0.5
    for _ in range(iterations):
        pi, before = float(posterior(q, pi).mean()), pi
        if abs(pi - before) < tol:
            break
    return float(np.clip(pi, 0.01, 0.99))


def posterior(balanced_probability: np.ndarray, prior: float) -> np.ndarray:
    """P(wrong label) at ``prior`` from a classifier trained with both classes weighted equally (prior 1/2).

    >>> posterior(np.array([0.5, 0.9]), 0.25).round(3).tolist()
    [0.25, 0.75]
    """
    q = np.clip(np.asarray(balanced_probability, np.float64), 1e-12, 1 - 1e-12)
    return prior * q / (prior * q + (1 - prior) * (1 - q))


# --------------------------------------------------------------------------- the derived kind

def reference_rows(run: Run, *, max_reference: int, seed: int) -> tuple[np.ndarray, str]:
    """The rows neighbours come from and what they are: ('train' | 'val' | 'leave-one-out')."""
    if max_reference < 1:
        raise UserError(f"max_reference must be at least 1. Received: {max_reference}")
    splits = run.predictions["split"].astype(str).to_numpy()
    rows, source = np.flatnonzero(run.eval_mask()), "leave-one-out"
    if run.eval_split != "all":
        for name in ("train", "val"):
            if name != run.eval_split and (splits == name).any():
                rows, source = np.flatnonzero(splits == name), name
                break
    if len(rows) > max_reference:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_reference, replace=False))
    return rows, source


def reference_words(source: str) -> str:
    return {"train": "training images", "val": "validation images"}.get(source, "other evaluated images")


def calibration_rows(run: Run, reference: str, *, max_rows: int, seed: int) -> tuple[np.ndarray, str | None]:
    """Labelled rows to train the label-error classifier on, and their split: ``val`` when the run has
    one that is neither evaluated nor the reference, else the reference split itself (``train`` or
    ``val``; neighbours then leave each image out); none for leave-one-out runs. Every misclassified
    row of that split is kept, the correctly classified ones are a seeded sample up to ``max_rows``."""
    if reference == "leave-one-out":
        return np.zeros(0, np.int64), None
    splits = run.predictions["split"].astype(str).to_numpy()
    source = "val" if reference != "val" and run.eval_split != "val" and (splits == "val").any() else reference
    rows = np.flatnonzero(splits == source)
    given = run.predictions["true"].to_numpy()[rows]
    wrong = run.predictions["predicted"].to_numpy()[rows] != given
    right = rows[~wrong]
    room = max(max_rows - int(wrong.sum()), 0)
    if len(right) > room:
        right = np.random.default_rng(seed).choice(right, room, replace=False)
    return np.sort(np.r_[rows[wrong], right]).astype(np.int64), source


def neighbour_evidence(run: Run, *, k: int, max_reference: int, seed: int, nearest_for: np.ndarray | None = None,
                       extra_rows: np.ndarray | None = None, pixels: np.ndarray | None = None,
                       progress: Progress | None = None) -> dict | None:
    """Class-conditional neighbour distances of the evaluated rows (and ``extra_rows``), or None without
    embeddings.

    Keys: ``rows`` (evaluated rows, then ``extra_rows``, M), ``distances`` (M, K), ``reference``
    (``train``, ``val`` or ``leave-one-out``), ``n_reference``, ``ref_rows``; with ``pixels`` (N, d:
    ``thumbnail_features``) also ``pixel_distances`` (M, K); with ``nearest_for`` (run rows) also
    ``nearest`` (len, k) run rows of their k nearest reference images and ``nearest_distance``, and
    with ``pixels`` ``pixel_nearest``. A reference image is never its own neighbour.
    """
    if run.embeddings is None:
        return None
    rows = np.flatnonzero(run.eval_mask())
    if extra_rows is not None and len(extra_rows):
        rows = np.r_[rows, np.asarray(extra_rows, np.int64)]
    ref, source = reference_rows(run, max_reference=max_reference, seed=seed)
    given = run.predictions["true"].to_numpy().astype(np.int64)
    loo = np.isin(rows, ref).any()
    ids = {"query_ids": rows, "reference_ids": ref} if loo else {}
    if progress:
        progress(f"causes: nearest {reference_words(source)} in embedding space", 0.1)
    spaces = {"": run.embeddings} if pixels is None else {"": run.embeddings, "pixel_": pixels}
    out = {"rows": rows, "reference": source, "n_reference": int(len(ref)), "ref_rows": ref}
    for prefix, features in spaces.items():
        reference = np.asarray(features[ref], np.float32)
        out[prefix + "distances"] = class_neighbour_distances(np.asarray(features[rows]), reference, given[ref],
                                                              n_classes=len(run.classes), k=k, **ids)
        if nearest_for is not None:
            near_ids = ({"query_ids": nearest_for, "reference_ids": ref} if np.isin(nearest_for, ref).any() else {})
            nearest, nearest_distance = nearest_reference(np.asarray(features[nearest_for]), reference, k=k,
                                                          **near_ids)
            out[prefix + "nearest"], out[prefix + "nearest_distance"] = ref[nearest], nearest_distance
        if progress and prefix == "":
            progress(f"causes: nearest {reference_words(source)} in pixels", 0.4)
    return out


def _thumbnails(run: Run) -> tuple[np.ndarray, np.ndarray] | None:
    """The stored ``image_scan`` thumbnails (N, S, S) and readable mask (N,), or None (never scanned here)."""
    return _read(run, "image_scan", lambda stored: (stored.array("thumbnails"),
                                                     np.asarray(stored.array("readable")).astype(bool)))


def _read(run: Run, name: str, read):
    """``read(stored)`` of the current stored result of kind ``name``, or None when there is none (never
    computed here: causes stay fast). A stored result that cannot be read is a one-line error naming it
    and the command that recomputes it, never taken for a missing one (which would silently drop a cause)."""
    stored = derived.get(run, name, compute=False)
    if stored is None:
        return None
    try:
        return read(stored)
    except (OSError, ValueError) as exc:  # boundary: numpy and pyarrow read the stored files
        raise UserError(f"The stored {name!r} result of run {run.id!r} cannot be read ({first_line(exc)}). "
                        f"Recompute it: python -m core diagnose {run.id} --only {name} --force") from None


def _current(run: Run, name: str) -> bool:
    return derived.status(run, name) == "current"


def _train_copies(run: Run) -> pd.DataFrame | None:
    """Evaluated images with a near copy in train whose label differs from theirs: ``row``,
    ``copy_row``, ``copy_path``, ``copy_label``, ``similarity`` (the most similar copy per row) and
    ``edit`` (the duplicates' ``transform`` in words, "" for identical pixels or an older result);
    None without a current duplicates result. Reads the ``duplicates`` kind's
    ``eval_with_train_copy`` table by its row columns only (the train copy's row is ``copy_row``,
    or ``row_train``), and takes labels and paths from the run."""
    table = _read(run, "duplicates", lambda stored: stored.table("eval_with_train_copy"))
    if table is None:
        return None
    copy_column = next((c for c in ("copy_row", "row_train") if c in table.columns), None)
    if copy_column is None or "row" not in table.columns or "similarity" not in table.columns:
        raise UserError(f"The duplicates result of run {run.id!r} has no train-copy rows "
                        f"(columns {list(table.columns)}): recompute it with `duplicates --force`")
    preds = run.predictions
    true = preds["true"].to_numpy()
    names = np.asarray(run.classes, dtype=object)
    rows = table["row"].to_numpy(np.int64)
    copies = table[copy_column].to_numpy(np.int64)
    edit = (table["transform"].astype(str).to_numpy() if "transform" in table.columns
            else np.full(len(table), "", object))
    out = pd.DataFrame({"row": rows, "copy_row": copies, "copy_path": preds["path"].astype(str).to_numpy()[copies],
                        "copy_label": names[true[copies]], "similarity": table["similarity"].to_numpy(np.float64),
                        "edit": np.where(np.isin(edit, ["identical pixels", "nan", "None"]), "", edit)})
    out = out[true[rows] != true[copies]]
    return out.sort_values(["row", "similarity"], ascending=[True, False], kind="stable").drop_duplicates("row")


def _properties(run: Run) -> pd.DataFrame | None:
    table = _read(run, "image_properties", lambda stored: stored.table("properties"))
    if table is None:
        return None
    table = table.set_index("row")
    if not table[["contrast", "blur"]].notna().any().any():
        return None
    return table


def inputs_available(run: Run) -> dict[str, bool]:
    """Which inputs causes would use now: embeddings, duplicates, image properties, thumbnails (image scan)."""
    return {"embeddings": run.embeddings is not None, "duplicates": _current(run, "duplicates"),
            "image_properties": _current(run, "image_properties"), "image_scan": _current(run, "image_scan")}


CARD_TITLES = {
    "model": "Model errors: the image looks like its label",
    "label": "Wrong labels: the model and the neighbours agree on another class",
    "copy": "Copies of training images that carry another label",
    "ambiguous": "Ambiguous images: between two classes, or little information",
    "atypical": "Atypical images: unlike every class the model knows",
    "undetermined": "Errors whose cause the run cannot tell",
}
CAPTION_WORDS = {"label": "label error", "model": "model error", "ambiguous": "ambiguous", "atypical": "atypical",
                 "copy": "copy of a training image", "undetermined": "cause undetermined"}


def pair_mix_lines(summary: dict, *, limit: int = 10) -> list[str]:
    """'Shirt → T-shirt/top: 41 label, 12 model, 30 ambiguous' for the most frequent confused pairs."""
    lines = []
    for pair in summary.get("pair_mix", [])[:limit]:
        mix = ", ".join(f"{pair[c]:,} {c}" for c in CAUSES if pair.get(c))
        lines.append(f"{pair['given']} → {pair['predicted']}: {mix}")
    return lines


IN_SAMPLE_NOTE = ("The run has no val split: the label-error classifier learnt on train, whose images the model has "
                  "seen, so the neighbours must agree too and fewer wrong labels are found (recall 0.75-0.87 on "
                  "bench_causes.py --no-val). A val split held out of training lets more be found.")


def causes_findings(run: Run, stored) -> Findings:
    """One card per cause found (the model's errors first, then by count), the per-image columns
    ``cause``, ``cause_confidence``, ``cause_suggested``, ``cause_evidence``, a caption line
    ("model error: 7 of its 10 nearest training images are Shirt, ...") and a choice filter on the cause."""
    table = stored.table("causes")
    summary = stored.summary
    n = run.n_images
    at = table["row"].to_numpy(np.int64)
    columns = pd.DataFrame({"cause": np.full(n, "", dtype=object), "cause_confidence": np.full(n, np.nan),
                            "cause_suggested": np.full(n, "", dtype=object),
                            "cause_evidence": np.full(n, "", dtype=object),
                            "cause_words": np.full(n, "", dtype=object)})
    columns.loc[at, "cause"] = table["cause"].astype(str).to_numpy()
    columns.loc[at, "cause_confidence"] = table["confidence"].to_numpy(float)
    columns.loc[at, "cause_suggested"] = table["suggested_label"].astype(str).to_numpy()
    columns.loc[at, "cause_evidence"] = table["evidence"].astype(str).to_numpy()
    columns.loc[at, "cause_words"] = table["cause"].map(CAPTION_WORDS).astype(str).to_numpy()
    in_sample = (summary.get("label_classifier") or {}).get("in_sample")
    notes = tuple(x for x in [summary.get("not_assessed_line", "")] if x)
    where = summary.get("reference_words")
    neighbours_note = ((f"Neighbours: {where}" + (" (each image left out of its own)"
                                                  if summary.get("reference") == "leave-one-out" else "") + ".")
                       if where else "")
    cards = []
    counts = summary.get("counts", {})
    for cause in sorted((c for c in CAUSES if counts.get(c)), key=lambda c: (c != "model", -counts[c])):
        part = table[table["cause"] == cause].sort_values(["confidence", "row"], ascending=[False, True],
                                                          kind="stable")
        text = (f"{len(part):,} of {summary['n_errors']:,} errors of '{summary['split']}': {CAUSE_WORDS[cause]}. "
                f"{neighbours_note}").strip()
        said = notes + ((IN_SAMPLE_NOTE,) if in_sample and cause in ("label", "model") else ())
        cards.append(Card(f"causes_{cause}", "causes", CARD_TITLES[cause], text, part["row"].to_numpy(np.int64),
                          "most confident cause first", notes=said))
    return Findings(
        cards=tuple(cards), columns=columns,
        column_specs=(Column("cause", "cause", "why the model gets this image wrong (see core.diagnose.causes)"),
                      Column("cause_confidence", "cause confidence", "how clearly the evidence decides the cause"),
                      Column("cause_suggested", "suggested label (cause)", "the likely right label, for 'label'"),
                      Column("cause_evidence", "evidence", "what decided the cause")),
        captions=(Caption("{cause_words}: {cause_evidence}", when="cause"),),
        filters=(Filter("cause", "Cause of the error", "choices", "cause", vocabulary=CAUSES),))


@dataclass(frozen=True)
class CausesConfig:
    """``k`` neighbours; ``max_reference`` (a seeded sample of at most that many reference images);
    ``label_level``, ``atypical_level`` (quantile levels, see the module docstring);
    ``property_level`` (the low-information percentile); ``seed``."""

    k: int = 10
    max_reference: int = 20000
    label_level: float = LABEL_LEVEL
    atypical_level: float = ATYPICAL_LEVEL
    property_level: float = 0.01
    max_calibration: int = 3000
    seed: int = 0

    def __post_init__(self):
        for name in ("k", "max_reference", "max_calibration"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"causes: {name} must be an integer of at least 1. Received: {value!r}")
        for name in ("label_level", "atypical_level", "property_level"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < value < 1.0:
                raise UserError(f"causes: {name} must be a number within (0, 1). Received: {value!r}")


@derived.register("causes", version=7, config=CausesConfig, findings=causes_findings,
                  reads=("duplicates", "image_properties", "image_scan"),
                  description="a cause for every misclassified image, with its evidence")
def compute_causes(run: Run, config: CausesConfig, progress: Progress) -> derived.DerivedResult:
    """One cause per misclassified image of the evaluated split (see the module docstring).

    Arrays (N,): ``cause`` int8 (index into ``CAUSES``, -1 for images that are not evaluated
    errors), ``confidence`` float32, ``suggested`` int32 (-1 unless ``label``), ``label_score``
    float32 (every evaluated image, NaN elsewhere). Tables: ``causes`` (``TABLE_COLUMNS``, one row
    per error, the model's most confident errors first) and ``neighbours`` (``row``, ``rank``,
    ``neighbour_row``, ``neighbour_label``, ``distance``, ``space``: the k nearest reference images of
    each error in ``embedding`` space and, with thumbnails, in ``pixels``).

    Options: ``k`` neighbours, ``max_reference`` (a seeded sample of at most that many reference
    images), ``label_level`` and ``atypical_level`` (quantile levels, see above),
    ``property_level`` (the low-information percentile), ``seed``.
    """
    k = config.k
    preds = run.predictions
    names = np.asarray(run.classes, dtype=object)
    n_classes = len(names)
    if n_classes < 2:
        raise UserError(f"causes need at least 2 classes; run {run.id!r} has {run.classes}")
    given_all = preds["true"].to_numpy().astype(np.int64)
    pred_all = preds["predicted"].to_numpy().astype(np.int64)
    probs_all = run.probs
    evaluated = np.flatnonzero(run.eval_mask())
    given, pred = given_all[evaluated], pred_all[evaluated]
    probs = np.asarray(probs_all[evaluated], dtype=np.float64)
    r = np.arange(len(evaluated))
    suggested_class = np.where(pred != given, pred, np.argsort(-probs, axis=1)[:, 1] if n_classes > 1 else pred)
    wrong = pred != given
    err_local = np.flatnonzero(wrong)
    err_rows = evaluated[err_local]

    cal_rows, cal_source = np.zeros(0, np.int64), None
    if run.embeddings is not None:
        _, ref_source = reference_rows(run, max_reference=config.max_reference, seed=config.seed)
        cal_rows, cal_source = calibration_rows(run, ref_source, max_rows=config.max_calibration, seed=config.seed)
    thumbs = _thumbnails(run) if run.embeddings is not None else None
    pixels = None
    if thumbs is not None:
        ref_rows, _ = reference_rows(run, max_reference=config.max_reference, seed=config.seed)
        fit_rows = ref_rows[thumbs[1][ref_rows]]
        pixels = thumbnail_features(thumbs[0], np.r_[evaluated, cal_rows, ref_rows],
                                    fit_rows=fit_rows if len(fit_rows) >= 100 else np.flatnonzero(thumbs[1]),
                                    seed=config.seed)
    evidence = neighbour_evidence(run, k=k, max_reference=config.max_reference, seed=config.seed,
                                  nearest_for=err_rows, extra_rows=cal_rows, pixels=pixels, progress=progress)
    copies = _train_copies(run)
    props = _properties(run)
    not_assessed = []
    if evidence is None:
        not_assessed.append("label, model, ambiguous and atypical by neighbours (the run has no embeddings)")
    if copies is None:
        not_assessed.append("copy (no duplicates result: run `diagnose` or `duplicates` first)")
    if props is None:
        not_assessed.append("little information and property outliers (no image_properties result)")
    if evidence is not None and pixels is None:
        not_assessed.append("neighbours in pixels (no image_scan result: run `diagnose` or `image-properties` "
                            "first); the label-error classifier reads the model and its embedding space only")
    progress("causes: deciding", 0.7)

    n_err = len(err_rows)
    cause = np.full(n_err, "", dtype=object)
    confidence = np.zeros(n_err)
    suggested = np.full(n_err, -1, np.int64)
    sentence = np.full(n_err, "", dtype=object)
    p_pred = probs[err_local, pred[err_local]] if n_err else np.zeros(0)
    says = [f"the model says {names[p]} at {c:.2f}" for p, c in zip(pred[err_local], p_pred)]
    ey, ep = given[err_local], pred[err_local]

    # 1. copy
    if copies is not None and len(copies):
        by_row = copies.drop_duplicates("row").set_index("row")
        for j, row in enumerate(err_rows):
            if row in by_row.index:
                c = by_row.loc[row]
                cause[j], confidence[j] = "copy", float(np.clip(c["similarity"], 0, 1))
                repeat = "the model repeats it" if c["copy_label"] == names[ep[j]] else says[j]
                edited = f", edited: {c['edit']}" if c.get("edit") else ""
                sentence[j] = (f"a near copy in train ({c['copy_path']}{edited}, similarity "
                               f"{float(c['similarity']):.2f}) is labelled {c['copy_label']}, not {names[ey[j]]}; "
                               f"{repeat}")

    # properties: outliers (atypical) and little information (ambiguous)
    low_info = np.zeros(n_err, bool)
    odd_shape = np.zeros(n_err, bool)
    low_words = np.full(n_err, "", dtype=object)
    shape_words = np.full(n_err, "", dtype=object)
    info_conf = np.zeros(n_err)
    if props is not None and n_err:
        ref_rows, _ = reference_rows(run, max_reference=10 ** 9, seed=0)
        ref_props = props.reindex(ref_rows)
        mine = props.reindex(err_rows)
        level = config.property_level
        for prop, word in LOW_INFORMATION.items():
            if prop not in mine or prop not in ref_props:
                continue
            values = mine[prop].to_numpy(np.float64, na_value=np.nan)
            pct = _percentile_of(ref_props[prop].to_numpy(np.float64, na_value=np.nan), values)
            hit = (pct <= level) & ~low_info
            low_words[hit] = [f"{word.format(v)}, " + (f"lowest {max(q, 0.001):.1%} of the reference images)"
                                                        if q > 0 else "below every reference image)")
                              for v, q in zip(values[hit], pct[hit])]
            info_conf[hit] = 1.0 - pct[hit]
            low_info |= hit
        for prop in ("size", "aspect"):
            ref_values = ref_props[prop].to_numpy(np.float64, na_value=np.nan)
            ref_values = ref_values[np.isfinite(ref_values)]
            if len(ref_values) == 0:
                continue
            lo, hi = np.quantile(ref_values, [0.005, 0.995])
            values = mine[prop].to_numpy(np.float64, na_value=np.nan)
            hit = ((values < lo) | (values > hi)) & ~odd_shape
            shape_words[hit] = [f"its {prop} {v:.3g} is outside the 99% range of the reference images "
                                f"({lo:.3g}-{hi:.3g})" for v in values[hit]]
            odd_shape |= hit

    free = cause == ""
    hit = free & odd_shape
    cause[hit], confidence[hit] = "atypical", 0.99
    sentence[hit] = [f"{w}; {s}" for w, s in zip(shape_words[hit], np.asarray(says, dtype=object)[hit])]

    label_score = -np.log(np.maximum(probs[r, given], 1e-12))
    label_probability = np.full(len(evaluated), np.nan)
    neighbour_tables = []
    thresholds_summary = {}
    classifier_summary = {}
    if evidence is not None:
        n_eval = len(evaluated)
        distances = evidence["distances"][:n_eval]
        pixel_all = evidence.get("pixel_distances")
        pixel_distances = pixel_all[:n_eval] if pixel_all is not None else None
        label_score = label_score + log_ratio(distances, given, suggested_class)
        correct = ~wrong
        thresholds = Thresholds(given[correct], distances[correct], level=config.label_level,
                                atypical_level=config.atypical_level)
        if not thresholds.usable:
            not_assessed.append(f"label, model and atypical by neighbours (fewer than {_MIN_CLASS_COUNT} "
                                "correctly classified images to derive thresholds from)")
        label_model, error_posterior = None, np.zeros(n_err)
        if cal_source is not None:
            label_model, classifier_summary = _label_model(run, evidence, cal_rows, cal_source, n_eval,
                                                           seed=config.seed)
            if label_model is None:
                not_assessed.append(classifier_summary.pop("reason"))
        if label_model is not None:
            features = label_features(probs, given, suggested_class, distances, pixel_distances)
            label_score = label_model.log_odds(features)
            label_probability = label_model.probability(features)
            prior = wrong_label_share(n_err, len(evaluated), classifier_summary["own_error_rate"])
            if classifier_summary["in_sample"]:  # the rate is in-sample: the share from it is an upper bound
                classifier_summary["upper_bound"] = prior
                prior = min(prior, mixture_share(label_probability[err_local]))
            label_probability[err_local] = error_posterior = posterior(label_probability[err_local], prior)
            classifier_summary["wrong_label_share"] = prior
        where = reference_words(evidence["reference"])
        ref_given = given_all
        near_rows, near_dist = evidence["nearest"], evidence["nearest_distance"]
        votes = np.zeros((n_err, n_classes))
        pixel_votes = np.zeros((n_err, n_classes))
        for j in range(n_err):
            votes[j] = np.bincount(ref_given[near_rows[j]], minlength=n_classes)
            if pixel_distances is not None:
                pixel_votes[j] = np.bincount(ref_given[evidence["pixel_nearest"][j]], minlength=n_classes)
        n_near = np.full(n_err, near_rows.shape[1])
        d_err = distances[err_local]
        lr = log_ratio(d_err, ey, ep)
        pixel_lr = log_ratio(pixel_distances[err_local], ey, ep) if pixel_distances is not None else None
        measurable = comparable(d_err, ey, ep)  # else left to the rules without neighbours below
        if not measurable.all():
            missing = sorted({str(names[c]) for j in np.flatnonzero(~measurable) for c in (ey[j], ep[j])
                              if not np.isfinite(d_err[j, c])})
            not_assessed.append(f"neighbours of {int((~measurable).sum()):,} error(s) whose given or predicted class "
                                f"has no {reference_words(evidence['reference'])[:-1]} to compare with "
                                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
        if thresholds.usable:
            far = thresholds.far()
            thresholds_summary = {"far": {str(names[c]): float(far[c]) for c in range(n_classes)},
                                  "label_level": thresholds.level}
            in_sample = label_model is not None and classifier_summary.get("in_sample", False)
            trained = (f"a classifier trained on {label_model.n_flips:,} {cal_source} images given a wrong label "
                       f"and the model's {label_model.n_errors:,} errors on {cal_source}; the model errs on "
                       f"{classifier_summary['own_error_rate']:.1%} of {cal_source}"
                       + (", images it learnt from, so on more of unseen ones: from the classifier's scores"
                          if in_sample else ", so")
                       + f" about {1 - classifier_summary['wrong_label_share']:.0%} of these errors are its own"
                       ) if label_model else ""
            for j in range(n_err):
                if cause[j] or not measurable[j]:
                    continue
                y, p = int(ey[j]), int(ep[j])
                split = (f"{int(votes[j, p])} of its {n_near[j]} nearest {where} are {names[p]}, "
                         f"{int(votes[j, y])} {names[y]}")
                if pixel_lr is not None:
                    split += (f" (by pixels {int(pixel_votes[j, p])} {names[p]}, "
                              f"{int(pixel_votes[j, y])} {names[y]})")
                # like its label rather than the prediction, in either space (step 5 of the module docstring)
                in_embeddings = lr[j] <= 0
                in_pixels = pixel_lr is not None and pixel_lr[j] <= 0
                looks_like_label = in_embeddings or in_pixels
                if np.all(d_err[j] > far):
                    nearest_class = int(np.argmin(d_err[j] / np.where(far > 0, far, 1)))
                    cause[j] = "atypical"
                    confidence[j] = thresholds.share_nearer(nearest_class, d_err[j, nearest_class])
                    sentence[j] = (f"farther from every class than {thresholds.atypical_level:.0%} of the correctly "
                                   f"classified images are from their own (nearest: {names[nearest_class]}, "
                                   f"distance {d_err[j, nearest_class]:.3f}); {says[j]}")
                elif label_model is not None and error_posterior[j] > 0.5 and (
                        not in_sample or lr[j] >= thresholds.pair(p, y)):
                    cause[j], suggested[j], confidence[j] = "label", p, error_posterior[j]
                    sentence[j] = (f"{split}; {says[j]}; probability of a wrong label {error_posterior[j]:.2f} "
                                   f"({trained})")
                    if in_sample:
                        sentence[j] += (f"; and it is as clearly {names[p]} rather than {names[y]} as "
                                        f"{thresholds.share_below(p, y, lr[j]):.0%} of the images the model rightly "
                                        f"calls {names[p]}")
                elif label_model is None and lr[j] >= thresholds.pair(p, y):
                    cause[j], suggested[j] = "label", p
                    confidence[j] = thresholds.share_below(p, y, lr[j])
                    sentence[j] = (f"{split}; it is as clearly {names[p]} rather than {names[y]} as "
                                   f"{confidence[j]:.0%} of the images the model rightly calls {names[p]}; {says[j]}")
                elif low_info[j]:
                    cause[j], confidence[j] = "ambiguous", info_conf[j]
                    sentence[j] = f"{low_words[j]}; {says[j]}"
                elif looks_like_label:
                    cause[j] = "model"
                    confidence[j] = (1.0 - error_posterior[j] if label_model is not None
                                     else votes[j, y] / max(n_near[j], 1))
                    space = ("in embedding space and in pixels" if in_embeddings and in_pixels
                             else "in embedding space" if in_embeddings else "in pixels")
                    dy, dp = ((d_err[j, y], d_err[j, p]) if in_embeddings else
                              (pixel_distances[err_local[j], y], pixel_distances[err_local[j], p]))
                    near = "closer than" if dy < dp - 5e-4 else "as close as"  # equal at the shown decimals
                    sentence[j] = (f"{split}; {space} its nearest {names[y]} images are {near} its nearest "
                                   f"{names[p]} ones (mean distance {dy:.3f} vs {dp:.3f}), yet {says[j]}")
                else:
                    cause[j] = "ambiguous"
                    confidence[j] = 1.0 - abs(votes[j, p] - votes[j, y]) / max(n_near[j], 1)
                    third = int(np.argmin(d_err[j]))
                    among = ("between the two classes (" if third in (y, p) else
                             f"nearest a third class, {names[third]} ({d_err[j, third]:.3f}; ")
                    sentence[j] = (f"{split}: {among}{d_err[j, y]:.3f} to {names[y]}, "
                                   f"{d_err[j, p]:.3f} to {names[p]}); {says[j]}")
        spaces = [("embedding", near_rows, near_dist)]
        if pixel_distances is not None:
            spaces.append(("pixels", evidence["pixel_nearest"], evidence["pixel_nearest_distance"]))
        for space, found_rows, found_dist in spaces if n_err else ():
            ranks = np.tile(np.arange(1, found_rows.shape[1] + 1), n_err)
            flat = found_rows.ravel()
            neighbour_tables.append(pd.DataFrame({
                "row": np.repeat(err_rows, found_rows.shape[1]), "rank": ranks.astype(np.int16),
                "neighbour_row": flat, "neighbour_label": names[ref_given[flat]],
                "distance": found_dist.ravel().astype(np.float32), "space": space}))

    # without neighbours: the model's margin, little information; the rest undetermined
    if n_err and (cause == "").any():
        margin_all = np.sort(probs, axis=1)
        correct_margin = (margin_all[:, -1] - margin_all[:, -2])[~wrong]
        correct_pred = pred[~wrong]
        for j in np.flatnonzero(cause == ""):
            y, p = int(ey[j]), int(ep[j])
            runner_up = int(np.argsort(-probs[err_local[j]])[1])
            margin = p_pred[j] - probs[err_local[j], y]
            ref_m = correct_margin[correct_pred == p]
            if len(ref_m) < _MIN_CLASS_COUNT:
                ref_m = correct_margin
            low_margin = runner_up == y and len(ref_m) and margin < np.quantile(ref_m, config.label_level)
            if low_info[j]:
                cause[j], confidence[j], sentence[j] = "ambiguous", info_conf[j], f"{low_words[j]}; {says[j]}"
            elif low_margin:
                cause[j] = "ambiguous"
                confidence[j] = 1.0 - float(np.mean(ref_m <= margin))
                sentence[j] = (f"the model hesitates between {names[p]} ({p_pred[j]:.2f}) and {names[y]} "
                               f"({probs[err_local[j], y]:.2f}), a smaller margin than "
                               f"{confidence[j]:.0%} of its correct calls of {names[p]}")
            else:
                cause[j], confidence[j] = "undetermined", 0.0
                lacking = ("no embeddings to compare it with labelled images" if evidence is None else
                           f"no {reference_words(evidence['reference'])} of {names[y]} or {names[p]} to compare "
                           "it with")
                sentence[j] = f"{lacking}; {says[j]}"

    order = np.lexsort((err_rows, -p_pred))  # the model's most confident errors first
    paths = preds["path"].astype(str).to_numpy()
    table = pd.DataFrame({
        "row": err_rows[order].astype(np.int64), "path": paths[err_rows[order]],
        "given_label": names[ey[order]] if n_err else np.array([], object),
        "predicted_label": names[ep[order]] if n_err else np.array([], object),
        "cause": cause[order].astype(str), "confidence": np.clip(confidence[order], 0, 1).astype(np.float32),
        "suggested_label": np.where(suggested[order] >= 0, names[np.maximum(suggested[order], 0)], ""),
        "evidence": sentence[order].astype(str), "model_confidence": p_pred[order].astype(np.float32),
        "label_score": label_score[err_local][order].astype(np.float32),
    }, columns=TABLE_COLUMNS)
    neighbours = (pd.concat(neighbour_tables, ignore_index=True) if neighbour_tables else
                  pd.DataFrame({"row": np.zeros(0, np.int64), "rank": np.zeros(0, np.int16),
                                "neighbour_row": np.zeros(0, np.int64), "neighbour_label": np.zeros(0, object),
                                "distance": np.zeros(0, np.float32), "space": np.zeros(0, object)}))
    n = run.n_images
    full_cause = np.full(n, -1, np.int8)
    full_cause[err_rows] = [CAUSES.index(c) for c in cause]
    full_conf = np.full(n, np.nan, np.float32)
    full_conf[err_rows] = confidence
    full_suggested = np.full(n, -1, np.int32)
    full_suggested[err_rows] = suggested
    full_score = np.full(n, np.nan, np.float32)
    full_score[evaluated] = label_score
    full_probability = np.full(n, np.nan, np.float32)
    full_probability[evaluated] = label_probability
    counts = {c: int((cause == c).sum()) for c in CAUSES}
    pairs = (table.groupby(["given_label", "predicted_label", "cause"], observed=True).size()
             .unstack("cause", fill_value=0)) if n_err else pd.DataFrame()
    pair_mix = []
    if len(pairs):
        pairs = pairs.assign(total=pairs.sum(axis=1)).sort_values("total", ascending=False).head(20)
        for (g, p), line in pairs.iterrows():
            pair_mix.append({"given": g, "predicted": p, "total": int(line["total"]),
                             **{c: int(line.get(c, 0)) for c in CAUSES}})
    progress("causes: done", 1.0)
    return derived.DerivedResult(
        arrays={"cause": full_cause, "confidence": full_conf, "suggested": full_suggested, "label_score": full_score,
                "label_probability": full_probability},
        tables={"causes": table, "neighbours": neighbours},
        summary={
            "split": run.eval_split, "n_errors": int(n_err), "counts": counts,
            "reference": evidence["reference"] if evidence else None,
            "reference_words": reference_words(evidence["reference"]) if evidence else None,
            "n_reference": evidence["n_reference"] if evidence else 0,
            "inputs": inputs_available(run), "not_assessed": not_assessed,
            "not_assessed_line": ("Not assessed: " + "; ".join(not_assessed) + ".") if not_assessed else "",
            "pair_mix": pair_mix, "thresholds": thresholds_summary, "label_classifier": classifier_summary,
            "pixels": evidence is not None and "pixel_distances" in evidence,
        },
    )


def _label_model(run: Run, evidence: dict, cal_rows: np.ndarray, source: str, n_eval: int, *, seed: int
                 ) -> tuple[LabelModel | None, dict]:
    """Train the label-error classifier on the calibration rows (``calibration_rows``): their correctly
    classified images relabelled as the model's runner-up class (planted flips: the image is what the
    model says, its label is not) against their misclassified images (the model's own errors, the
    labels of a clean split being right). Returns (None, {"reason": ...}) with too few of either."""
    given = run.predictions["true"].to_numpy().astype(np.int64)[cal_rows]
    probs = np.asarray(run.probs[cal_rows], np.float64)
    pred = probs.argmax(axis=1)
    distances = evidence["distances"][n_eval:]
    pixel = evidence.get("pixel_distances")
    pixel = pixel[n_eval:] if pixel is not None else None
    right = pred == given
    runner_up = probs.copy()
    runner_up[np.arange(len(given)), given] = -1.0
    runner_up = runner_up.argmax(axis=1)
    n_flips, n_errors = int(right.sum()), int((~right).sum())
    if min(n_flips, n_errors) < _MIN_CLASS_COUNT:
        return None, {"reason": f"the label-error classifier (the {source} split has {n_flips} correctly and "
                                f"{n_errors} wrongly classified images, fewer than {_MIN_CLASS_COUNT}); label "
                                "errors are decided by the neighbours' quantile rule"}
    flips = label_features(probs[right], runner_up[right], given[right], distances[right],
                           pixel[right] if pixel is not None else None)
    errors = label_features(probs[~right], given[~right], pred[~right], distances[~right],
                            pixel[~right] if pixel is not None else None)
    model = fit_label_model(flips, errors)
    names = FEATURE_NAMES[:flips.shape[1]]
    in_split = run.predictions["split"].astype(str).to_numpy() == source
    own_error_rate = float((~run.predictions["correct"].to_numpy(bool)[in_split]).mean())
    return model, {"source": source, "n_flips": n_flips, "n_errors": n_errors, "own_error_rate": own_error_rate,
                   "in_sample": source == "train",
                   "weights": {name: float(w / sc) for name, w, sc in zip(names, model.coef, model.scale)}}


def get_causes(run: Run, *, force: bool = False, progress: bool | Progress = False) -> derived.StoredDerived:
    """The stored causes of ``run`` (recomputed when an input they read has appeared or gone since)."""
    return derived.get(run, "causes", force=force, progress=progress)


def causes_csv(run: Run, *, force: bool = False, progress: bool | Progress = False) -> pd.DataFrame:
    """``python -m core causes``: ``CSV_COLUMNS``, one row per error, the most confident errors first."""
    return get_causes(run, force=force, progress=progress).table("causes")[CSV_COLUMNS].reset_index(drop=True)
