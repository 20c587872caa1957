"""Error causes: for every misclassified image, is the label, the model or the image at fault?

Conventions: N images (the run's rows), K classes; for an error, ``y`` is its
*given* class and ``p`` the *predicted* one. Distances are cosine distances
between penultimate-layer embeddings. ``D[i, c]`` is the mean distance from
image i to its ``k`` nearest *reference* images of class c (class-conditional
neighbour distance); ``log(D[i, y] / D[i, p])`` (the *log-ratio*) is large
when the image sits among images labelled p and away from those labelled y.

Reference (labelled neighbours): the ``train`` split when the run has one,
else ``val``, else the evaluated images themselves, each without itself
(leave-one-out); at most ``max_reference`` of them, a seeded sample. The
summary says which (``reference``).

Thresholds come from the run's own data, never from constants tuned to one
data set: the images of the evaluated split that the model classifies
correctly (their labels agree with the model, so they show how a genuine
member of a class looks) give, per class, the quantiles below. Each error gets
exactly one cause, checked in this order:

1. ``copy``: a near copy of it in ``train`` (the ``duplicates`` kind's
   ``eval_with_train_copy`` table) carries another label than its given one:
   the data set contradicts itself.
2. ``atypical``: for every class c, ``D[i, c]`` exceeds the ``atypical_level``
   (0.99) quantile of ``D[j, c]`` over correct images j of class c (farther
   from every class than 99% of that class's images are from it); or its size
   or aspect ratio lies outside the 0.5-99.5% range of the reference images'
   (``image_properties``): out of distribution for this model.
3. ``label``: the log-ratio is at least the ``label_level`` (0.1) quantile of
   ``log(D[j, y] / D[j, p])`` over correct images j of class p: the image is
   as clearly p rather than y as 90% of the images the model rightly calls p.
   The model says p too, so two signals agree; the suggested label is p.
4. ``ambiguous`` (little information): its contrast or sharpness
   (``image_properties``) is below the 1st percentile of the reference images'.
5. ``model``: ``D[i, y] <= D[i, p]``: its nearest images of its given class
   are at least as close as those of the predicted class; the image looks like
   its label, yet the model says otherwise (the analyst's "critical error").
6. ``ambiguous``: otherwise: closer to p than to y, but not as clearly as a
   genuine p; the neighbours are split between the two classes.

Without embeddings, only ``copy``, property-based ``atypical`` and
``ambiguous`` (and, for the model's margin, ``ambiguous`` when the given class
is the runner-up and the margin is below the ``label_level`` quantile of the
margins of the correct predictions of p) can be decided; every other error's
cause is ``undetermined`` and the summary's ``not_assessed`` line says so.

Confidence (in [0, 1]): ``label`` the share of correct p images less clearly p
than this one; ``model`` the share of its k nearest reference images that carry
its given label; ``ambiguous`` one minus the gap
between the shares of the two classes among its k nearest images (or, for
little information, one minus the property's percentile); ``atypical`` the
share of correct images of its nearest class nearer to it than it; ``copy``
the copy's similarity; ``undetermined`` 0.

``label_score`` (every evaluated image) ranks likely wrong labels:
``-log p(y) + log(D[i, y] / D[i, s])`` with s the suggested class (the model's
self-confidence and the neighbour log-ratio, both as log-likelihood ratios).
Among errors it ranks planted flips only slightly better than cleanlab's
self-confidence (average precision +0.002 on Fashion-MNIST, +0.004 on digits,
benchmarks/bench_causes.py), so ``label_issues`` keeps cleanlab's ranking.

The rules and levels were chosen on the demo run's val split with planted flips
(``bench_causes.py --dev``), never on the benchmark's test sets. Their limit:
the neighbours live in the model's own embedding space, where most of its own
errors sit among the class it predicts; on Fashion-MNIST about a fifth of the
model's own errors still look like label errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core import derived
from core.diagnose.findings import Caption, Card, Column, Filter, Findings
from core.errors import UserError
from core.neighbours import neighbour_inputs, unit_rows
from core.progress import Progress
from core.store import Run

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


def nearest_reference(query: np.ndarray, reference: np.ndarray, *, k: int = 10, query_ids: np.ndarray | None = None,
                      reference_ids: np.ndarray | None = None, batch_size: int = 1024
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest reference images of any class: indices int64 (Nq, k') into ``reference``
    and cosine distances (Nq, k'), nearest first; k' = min(k, available)."""
    query, reference, _ = neighbour_inputs(query, reference, np.zeros(len(reference), np.int64), k)
    loo = query_ids is not None and reference_ids is not None
    k_all = max(min(k, len(reference) - (1 if loo else 0)), 0)
    nearest = np.zeros((len(query), k_all), np.int64)
    nearest_distance = np.zeros((len(query), k_all))
    if len(query) == 0 or k_all == 0:
        return nearest, nearest_distance
    reference = unit_rows(reference)
    for start in range(0, len(query), batch_size):
        stop = min(start + batch_size, len(query))
        similarity = unit_rows(query[start:stop]) @ reference.T
        if loo:
            similarity[np.asarray(query_ids[start:stop])[:, None] == np.asarray(reference_ids)[None, :]] = -2
        top = np.argpartition(-similarity, k_all - 1, axis=1)[:, :k_all]
        top_sim = np.take_along_axis(similarity, top, axis=1)
        order = np.argsort(-top_sim, axis=1, kind="stable")
        nearest[start:stop] = np.take_along_axis(top, order, axis=1)
        nearest_distance[start:stop] = np.maximum(1.0 - np.take_along_axis(top_sim, order, axis=1), 0.0)
    return nearest, nearest_distance


def log_ratio(distances: np.ndarray, given: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``log(D[i, given] / D[i, other])``: float (N,), > 0 when the image is nearer ``other`` than ``given``."""
    r = np.arange(len(given))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.log((distances[r, given] + _EPS) / (distances[r, other] + _EPS))
    return np.where(np.isnan(out), 0.0, out)  # inf / inf: neither class has reference images


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
            values = values[own != y]
            self._pair[key] = np.sort(values[np.isfinite(values)])
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


def neighbour_evidence(run: Run, *, k: int, max_reference: int, seed: int, nearest_for: np.ndarray | None = None,
                       progress: Progress | None = None) -> dict | None:
    """Class-conditional neighbour distances of the evaluated rows, or None without embeddings.

    Keys: ``rows`` (evaluated rows, M), ``distances`` (M, K), ``reference`` (``train``, ``val`` or
    ``leave-one-out``), ``n_reference``, ``ref_rows``; with ``nearest_for`` (run rows) also
    ``nearest`` (len, k) run rows of their k nearest reference images and ``nearest_distance``.
    """
    if run.embeddings is None:
        return None
    rows = np.flatnonzero(run.eval_mask())
    ref, source = reference_rows(run, max_reference=max_reference, seed=seed)
    embeddings = run.embeddings
    given = run.predictions["true"].to_numpy().astype(np.int64)
    loo = source == "leave-one-out"
    if progress:
        progress(f"causes: nearest {reference_words(source)} in embedding space", 0.1)
    reference = np.asarray(embeddings[ref], np.float32)
    distances = class_neighbour_distances(np.asarray(embeddings[rows]), reference, given[ref],
                                          n_classes=len(run.classes), k=k,
                                          query_ids=rows if loo else None, reference_ids=ref if loo else None)
    out = {"rows": rows, "distances": distances, "reference": source, "n_reference": int(len(ref)), "ref_rows": ref}
    if nearest_for is not None:
        nearest, nearest_distance = nearest_reference(np.asarray(embeddings[nearest_for]), reference, k=k,
                                                      query_ids=nearest_for if loo else None,
                                                      reference_ids=ref if loo else None)
        out["nearest"], out["nearest_distance"] = ref[nearest], nearest_distance
    return out


def _stored(run: Run, name: str):
    """A current stored result of kind ``name``, or None (never computed here: causes stay fast)."""
    try:
        return derived.get(run, name, compute=False)
    except (derived.DerivedError, OSError, ValueError):  # boundary: numpy/pyarrow read the stored files
        return None


def _train_copies(run: Run) -> pd.DataFrame | None:
    """Evaluated images with a near copy in train whose label differs from theirs: ``row``,
    ``copy_row``, ``copy_path``, ``copy_label``, ``similarity`` (the most similar copy per row);
    None without a current duplicates result. Reads the ``duplicates`` kind's
    ``eval_with_train_copy`` table by its row columns only (the train copy's row is ``copy_row``,
    or ``row_train``), and takes labels and paths from the run."""
    stored = _stored(run, "duplicates")
    if stored is None:
        return None
    table = stored.table("eval_with_train_copy")
    copy_column = next((c for c in ("copy_row", "row_train") if c in table.columns), None)
    if copy_column is None or "row" not in table.columns or "similarity" not in table.columns:
        raise UserError(f"The duplicates result of run {run.id!r} has no train-copy rows "
                        f"(columns {list(table.columns)}): recompute it with `duplicates --force`")
    preds = run.predictions
    true = preds["true"].to_numpy()
    names = np.asarray(run.classes, dtype=object)
    rows = table["row"].to_numpy(np.int64)
    copies = table[copy_column].to_numpy(np.int64)
    out = pd.DataFrame({"row": rows, "copy_row": copies, "copy_path": preds["path"].astype(str).to_numpy()[copies],
                        "copy_label": names[true[copies]], "similarity": table["similarity"].to_numpy(np.float64)})
    out = out[true[rows] != true[copies]]
    return out.sort_values(["row", "similarity"], ascending=[True, False], kind="stable").drop_duplicates("row")


def _properties(run: Run) -> pd.DataFrame | None:
    stored = _stored(run, "image_properties")
    if stored is None:
        return None
    table = stored.table("properties").set_index("row")
    if not table[["contrast", "blur"]].notna().any().any():
        return None
    return table


def inputs_available(run: Run) -> dict[str, bool]:
    """Which inputs causes would use now: embeddings, duplicates, image properties."""
    return {"embeddings": run.embeddings is not None, "duplicates": _stored(run, "duplicates") is not None,
            "image_properties": _stored(run, "image_properties") is not None}


def causes_run_config(run: Run) -> dict:
    """The config a run asks for: the defaults, and the stored results causes read (``inputs``), so that
    a stored result becomes stale, and is recomputed, when duplicates or image properties appear or go."""
    return {"inputs": ",".join(name for name, there in inputs_available(run).items() if there)}


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
        cards.append(Card(f"causes_{cause}", "causes", CARD_TITLES[cause], text, part["row"].to_numpy(np.int64),
                          "most confident cause first", notes=notes))
    return Findings(
        cards=tuple(cards), columns=columns,
        column_specs=(Column("cause", "cause", "why the model gets this image wrong (see core.diagnose.causes)"),
                      Column("cause_confidence", "cause confidence", "how clearly the evidence decides the cause"),
                      Column("cause_suggested", "suggested label (cause)", "the likely right label, for 'label'"),
                      Column("cause_evidence", "evidence", "what decided the cause")),
        captions=(Caption("{cause_words}: {cause_evidence}", when="cause"),),
        filters=(Filter("cause", "Cause of the error", "choices", "cause"),))


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
    seed: int = 0
    inputs: str = ""  # what the run had when computed (``causes_run_config``): a change makes the result stale

    def __post_init__(self):
        for name in ("k", "max_reference"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"causes: {name} must be an integer of at least 1. Received: {value!r}")
        for name in ("label_level", "atypical_level", "property_level"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < value < 1.0:
                raise UserError(f"causes: {name} must be a number within (0, 1). Received: {value!r}")


@derived.register("causes", version=2, config=CausesConfig, findings=causes_findings, run_config=causes_run_config,
                  description="a cause for every misclassified image, with its evidence")
def compute_causes(run: Run, config: CausesConfig, progress: Progress) -> derived.DerivedResult:
    """One cause per misclassified image of the evaluated split (see the module docstring).

    Arrays (N,): ``cause`` int8 (index into ``CAUSES``, -1 for images that are not evaluated
    errors), ``confidence`` float32, ``suggested`` int32 (-1 unless ``label``), ``label_score``
    float32 (every evaluated image, NaN elsewhere). Tables: ``causes`` (``TABLE_COLUMNS``, one row
    per error, the model's most confident errors first) and ``neighbours`` (``row``, ``rank``,
    ``neighbour_row``, ``neighbour_label``, ``distance``: the k nearest reference images of each error).

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

    evidence = neighbour_evidence(run, k=k, max_reference=config.max_reference, seed=config.seed,
                                  nearest_for=err_rows, progress=progress)
    copies = _train_copies(run)
    props = _properties(run)
    not_assessed = []
    if evidence is None:
        not_assessed.append("label, model, ambiguous and atypical by neighbours (the run has no embeddings)")
    if copies is None:
        not_assessed.append("copy (no duplicates result: run `diagnose` or `duplicates` first)")
    if props is None:
        not_assessed.append("little information and property outliers (no image_properties result)")
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
                sentence[j] = (f"a near copy in train ({c['copy_path']}, similarity {float(c['similarity']):.2f}) "
                               f"is labelled {c['copy_label']}, not {names[ey[j]]}; {repeat}")

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
        for prop, word in (("contrast", "low contrast"), ("blur", "blurry")):
            values = mine[prop].to_numpy(np.float64, na_value=np.nan)
            pct = _percentile_of(ref_props[prop].to_numpy(np.float64, na_value=np.nan), values)
            hit = (pct <= level) & ~low_info
            low_words[hit] = [f"{word} ({v:.3g}, lowest {max(q, 1e-4):.1%} of the reference images)"
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
    neighbour_tables = []
    thresholds_summary = {}
    if evidence is not None:
        distances = evidence["distances"]
        label_score = label_score + log_ratio(distances, given, suggested_class)
        correct = ~wrong
        thresholds = Thresholds(given[correct], distances[correct], level=config.label_level,
                                atypical_level=config.atypical_level)
        if not thresholds.usable:
            not_assessed.append(f"label, model and atypical by neighbours (fewer than {_MIN_CLASS_COUNT} "
                                "correctly classified images to derive thresholds from)")
        where = reference_words(evidence["reference"])
        ref_given = given_all
        near_rows, near_dist = evidence["nearest"], evidence["nearest_distance"]
        votes = np.zeros((n_err, n_classes))
        for j in range(n_err):
            votes[j] = np.bincount(ref_given[near_rows[j]], minlength=n_classes)
        n_near = np.full(n_err, near_rows.shape[1])
        d_err = distances[err_local]
        lr = log_ratio(d_err, ey, ep)
        if thresholds.usable:
            far = thresholds.far()
            thresholds_summary = {"far": {str(names[c]): float(far[c]) for c in range(n_classes)},
                                  "label_level": thresholds.level}
            for j in range(n_err):
                if cause[j]:
                    continue
                y, p = int(ey[j]), int(ep[j])
                split = (f"{int(votes[j, p])} of its {n_near[j]} nearest {where} are {names[p]}, "
                         f"{int(votes[j, y])} {names[y]}")
                if np.all(d_err[j] > far):
                    nearest_class = int(np.argmin(d_err[j] / np.where(far > 0, far, 1)))
                    cause[j] = "atypical"
                    confidence[j] = thresholds.share_nearer(nearest_class, d_err[j, nearest_class])
                    sentence[j] = (f"farther from every class than {thresholds.atypical_level:.0%} of the correctly "
                                   f"classified images are from their own (nearest: {names[nearest_class]}, "
                                   f"distance {d_err[j, nearest_class]:.3f}); {says[j]}")
                elif lr[j] >= thresholds.pair(p, y):
                    cause[j], suggested[j] = "label", p
                    confidence[j] = thresholds.share_below(p, y, lr[j])
                    sentence[j] = (f"{split}; it is as clearly {names[p]} rather than {names[y]} as "
                                   f"{confidence[j]:.0%} of the images the model rightly calls {names[p]}; {says[j]}")
                elif low_info[j]:
                    cause[j], confidence[j] = "ambiguous", info_conf[j]
                    sentence[j] = f"{low_words[j]}; {says[j]}"
                elif lr[j] <= 0:
                    cause[j] = "model"
                    confidence[j] = votes[j, y] / max(n_near[j], 1)
                    sentence[j] = (f"{split}; its nearest {names[y]} images are as close as its nearest "
                                   f"{names[p]} ones ({d_err[j, y]:.3f} vs {d_err[j, p]:.3f}), yet {says[j]}")
                else:
                    cause[j] = "ambiguous"
                    confidence[j] = 1.0 - abs(votes[j, p] - votes[j, y]) / max(n_near[j], 1)
                    sentence[j] = (f"{split}: between the two classes ({d_err[j, y]:.3f} to {names[y]}, "
                                   f"{d_err[j, p]:.3f} to {names[p]}); {says[j]}")
        if n_err:
            ranks = np.tile(np.arange(1, near_rows.shape[1] + 1), n_err)
            flat = near_rows.ravel()
            neighbour_tables.append(pd.DataFrame({
                "row": np.repeat(err_rows, near_rows.shape[1]), "rank": ranks.astype(np.int16),
                "neighbour_row": flat, "neighbour_label": names[ref_given[flat]],
                "distance": near_dist.ravel().astype(np.float32)}))

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
                sentence[j] = f"no embeddings to compare it with labelled images; {says[j]}"

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
                                "distance": np.zeros(0, np.float32)}))
    n = run.n_images
    full_cause = np.full(n, -1, np.int8)
    full_cause[err_rows] = [CAUSES.index(c) for c in cause]
    full_conf = np.full(n, np.nan, np.float32)
    full_conf[err_rows] = confidence
    full_suggested = np.full(n, -1, np.int32)
    full_suggested[err_rows] = suggested
    full_score = np.full(n, np.nan, np.float32)
    full_score[evaluated] = label_score
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
        arrays={"cause": full_cause, "confidence": full_conf, "suggested": full_suggested, "label_score": full_score},
        tables={"causes": table, "neighbours": neighbours},
        summary={
            "split": run.eval_split, "n_errors": int(n_err), "counts": counts,
            "reference": evidence["reference"] if evidence else None,
            "reference_words": reference_words(evidence["reference"]) if evidence else None,
            "n_reference": evidence["n_reference"] if evidence else 0,
            "inputs": inputs_available(run), "not_assessed": not_assessed,
            "not_assessed_line": ("Not assessed: " + "; ".join(not_assessed) + ".") if not_assessed else "",
            "pair_mix": pair_mix, "thresholds": thresholds_summary,
        },
    )


def get_causes(run: Run, *, force: bool = False, progress: bool | Progress = False) -> derived.StoredDerived:
    """The stored causes of ``run`` (recomputed when an input they read has appeared or gone since)."""
    return derived.get(run, "causes", force=force, progress=progress)


def causes_csv(run: Run, *, force: bool = False, progress: bool | Progress = False) -> pd.DataFrame:
    """``python -m core causes``: ``CSV_COLUMNS``, one row per error, the most confident errors first."""
    return get_causes(run, force=force, progress=progress).table("causes")[CSV_COLUMNS].reset_index(drop=True)
