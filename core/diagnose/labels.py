"""Label issues: which images of the evaluated split probably carry a wrong label, and which one is right.

Conventions: N images, K classes; ``labels`` is an int array (N,) of the
*given* labels; ``probs`` a float array (N, K) of *out-of-sample* predicted
probabilities (from a model that did not train on these images: the test
split's, when the model was trained on the train split). In-sample
probabilities hide label errors, because the model has learnt them.

An issue score is in [0, 1], higher = the given label is more likely wrong.
Since version 4 of the kind it is, by default (``rank_by="both"``), the
probability of a wrong label from the run's label-error classifier
(``core.diagnose.causes``: the model's log-odds and the image's nearest
labelled neighbours in embedding space and in pixels, at equal priors), which
ranked planted flips better than the model's probabilities alone in 29 of 30
benchmark runs (benchmarks/bench_causes.py, see the README: average precision over
all test images, mean of ten flip seeds, +0.006 on Fashion-MNIST, +0.021 on
digits (one seed -0.0004), +0.18 on rendered letters);
ties (the plainest label errors all near 1) are broken by cleanlab's score. A
run without that classifier (no embeddings, no train or val split), or
``rank_by="model"``, gets ``1 - `` cleanlab's label quality score
(``cleanlab.rank.get_label_quality_scores``) on the model's probabilities,
optionally mixed with the label distribution of
each image's nearest neighbours in embedding space (``knn_label_distribution``):
off by default, because on Fashion-MNIST with 5% planted flips
(benchmarks/bench_label_issues.py, three flip seeds) it did not measurably rank
the flips better than the model's probabilities alone: precision at k +0.9
points with an 88.5%-accurate CNN, +0.3 at 89.8% (one seed of three worse),
-0.1 at 90.6%.
``flag_label_issues`` is cleanlab's confident-learning filter
(``cleanlab.filter.find_label_issues``): a yes/no per image that estimates how
many labels are wrong per class pair, independent of any threshold on the score.
It sees only the model's probabilities, so on its own it calls every confident
error a label error whose suggestion is the prediction (on Fashion-MNIST with
planted flips, 60% of the model's own errors). The kind's ``is_issue`` therefore
needs a second signal to agree with it (``second_signal``), read from the
run's ``causes`` result (``core.diagnose.causes``, which searches the
neighbours once for both kinds): an error's cause is ``label`` (a per-run
classifier trained on planted flips against the model's own errors of a clean
split, reading the model's log-odds and the image's nearest labelled
neighbours in embedding space and in pixels), or a near copy in ``train``
carries the suggested label. Without either signal nothing is flagged and the
summary says how many images cleanlab alone would have flagged.

>>> import numpy as np
>>> labels = np.array([0, 1, 1])
>>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.95, 0.05]])
>>> label_issue_scores(labels, probs).round(2).tolist()  # the third image looks like a 0
[0.1, 0.2, 0.95]
>>> suggested_labels(labels, probs).tolist()
[1, 0, 0]

The derived kind ``label_issues`` (registered below) scores the run's
evaluated split and stores one table, most likely wrong first.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.analysis.neighbours import nearest_reference, neighbour_inputs
from core.diagnose.findings import Caption, Card, Column, Filter, Findings
from core.errors import UserError
from core.progress import Progress
from core.run import derived
from core.run.store import Run

METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
RANK_BY = ("both", "model")
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")
TABLE_COLUMNS = ["row", "path", "split", "given_label", "suggested_label", "score", "is_issue",
                 "predicted_label", "given_prob", "suggested_prob", "neighbour_agreement", "cleanlab_flag",
                 "second_signal"]


def _check_inputs(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    if probs.ndim != 2 or labels.ndim != 1 or len(labels) != len(probs):
        raise UserError(f"labels must be (N,) and probs (N, K) with the same N. "
                         f"Received shapes {labels.shape} and {probs.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise UserError(f"labels hold values outside range({probs.shape[1]}): "
                         f"min={int(labels.min())}, max={int(labels.max())}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise UserError("probs must be finite and non-negative")
    sums = probs.sum(axis=1, keepdims=True, dtype=np.float64)
    if (sums <= 0).any():
        raise UserError(f"probs has {int((sums <= 0).sum())} all-zero rows")
    # float32 rows drift from 1 by ~1e-7; cleanlab expects exact distributions
    return labels.astype(np.int64), (probs / sums).astype(np.float64)


def label_issue_scores(labels: np.ndarray, probs: np.ndarray, *, method: str = "self_confidence") -> np.ndarray:
    """How likely each given label is wrong: float array (N,) in [0, 1], higher = more suspect.

    Parameters
    ----------
    labels : int array (N,), the given labels.
    probs : float array (N, K), out-of-sample probabilities (rows are renormalised).
    method : one of ``METHODS``, cleanlab's label quality scores:
        ``self_confidence`` = 1 - p(given label); ``normalized_margin`` weighs
        p(given) against the best other class; ``confidence_weighted_entropy``
        divides by the entropy.
    """
    if method not in METHODS:
        raise UserError(f"Unsupported method {method!r}. The available methods are {list(METHODS)}")
    labels, probs = _check_inputs(labels, probs)
    if len(labels) == 0:
        return np.zeros(0)
    from cleanlab.rank import get_label_quality_scores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quality = get_label_quality_scores(labels, probs, method=method)
    return 1.0 - np.asarray(quality, dtype=np.float64)


def flag_label_issues(labels: np.ndarray, probs: np.ndarray, *, filter_by: str = "prune_by_noise_rate"
                      ) -> np.ndarray:
    """cleanlab's confident-learning verdict: bool array (N,), True = the label is probably wrong.

    Needs at least two images; with fewer every image is unflagged.
    """
    if filter_by not in FILTERS:
        raise UserError(f"Unsupported filter_by {filter_by!r}. The available filters are {list(FILTERS)}")
    labels, probs = _check_inputs(labels, probs)
    if len(labels) < 2:
        return np.zeros(len(labels), bool)
    from cleanlab.filter import find_label_issues

    with warnings.catch_warnings():  # cleanlab warns about classes with few examples: not our reader's concern
        warnings.simplefilter("ignore")
        # n_jobs=1: its process pool costs more than it saves below ~10^6 images, and forks big parents
        return np.asarray(find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1), dtype=bool)


def suggested_labels(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The most probable class other than the given one: int array (N,).

    For an image whose label is wrong this is the model's best guess at the
    right one (its top class, or its runner-up when the top class is the
    given label).
    """
    labels, probs = _check_inputs(labels, probs)
    if probs.shape[1] < 2:
        raise UserError("suggested labels need at least 2 classes")
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -1.0
    return others.argmax(axis=1)


def knn_label_distribution(query: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray, *,
                           n_classes: int, k: int = 10, query_ids: np.ndarray | None = None,
                           reference_ids: np.ndarray | None = None, batch_size: int = 2048) -> np.ndarray:
    """Share of each class among the ``k`` nearest reference images (cosine): float array (Nq, K).

    Parameters
    ----------
    query : float array (Nq, D) embeddings to describe.
    reference : float array (Nr, D) embeddings with known labels ``reference_labels`` (Nr,).
    query_ids, reference_ids : optional int arrays; a reference with the same id
        as its query (the image itself) is not its own neighbour.
    batch_size : queries per block; memory is O(batch_size * Nr), time O(Nq * Nr * D).
    """
    query, reference, reference_labels = neighbour_inputs(query, reference, reference_labels, k)
    out = np.zeros((len(query), n_classes), dtype=np.float64)
    nearest, _ = nearest_reference(query, reference, k=k, query_ids=query_ids, reference_ids=reference_ids,
                                   batch_size=batch_size)
    k_eff = nearest.shape[1]
    if k_eff < 1:
        return out
    votes = reference_labels[nearest]  # (Nq, k)
    np.add.at(out, (np.repeat(np.arange(len(query)), k_eff), votes.ravel()), 1.0 / k_eff)
    return out


def mixed_probabilities(probs: np.ndarray, neighbour_distribution: np.ndarray, *, weight: float) -> np.ndarray:
    """``(1 - weight) * probs + weight * neighbour_distribution``: float array (N, K)."""
    if not 0.0 <= weight <= 1.0:
        raise UserError(f"weight must be within [0, 1]. Received: weight={weight}")
    return (1.0 - weight) * np.asarray(probs, dtype=np.float64) + weight * neighbour_distribution


# --------------------------------------------------------------------------- the derived kind

def label_issue_findings(run: Run, stored) -> Findings:
    """The 'Suspected label errors' card, per-image ``label_issue`` score / ``suggested`` class /
    ``is_issue`` columns, their caption line and the Errors page's minimum-score filter."""
    from core.diagnose import headline

    table = stored.table("label_issues")
    issues = table[table["is_issue"]].sort_values("score", ascending=False, kind="stable")
    rows = issues["row"].to_numpy(np.int64)
    n = run.n_images
    columns = pd.DataFrame({"label_issue": np.full(n, np.nan), "suggested": np.full(n, "", dtype=object),
                            "is_issue": np.zeros(n, bool)})
    at = table["row"].to_numpy(np.int64)
    columns.loc[at, "label_issue"] = table["score"].to_numpy(float)
    columns.loc[at, "suggested"] = table["suggested_label"].astype(str).to_numpy()
    columns.loc[at, "is_issue"] = table["is_issue"].to_numpy(bool)
    return Findings(
        cards=(Card("label_issues", "label_issues", "Suspected label errors",
                    headline("label_issues", stored.summary), rows, "most likely mislabelled first"),),
        columns=columns,
        column_specs=(Column("label_issue", "label issue", "1 - the model's probability of the given label"),
                      Column("suggested", "suggested", "the likelier label")),
        captions=(Caption("label issue {label_issue:.2f} → suggested {suggested}", when="is_issue"),),
        filters=(Filter("label_issue", "Label-issue score at least", "min", "issue"),))


@dataclass(frozen=True)
class LabelIssuesConfig:
    """``rank_by`` (``RANK_BY``): "both", the label-error classifier of the run's ``causes`` (the model's
    log-odds and the neighbours in embeddings and pixels), when the run has one, else "model";
    "model", cleanlab's ``method`` score on the probabilities alone.
    ``method`` (``METHODS``) and ``filter_by`` (``FILTERS``): cleanlab's score and flag;
    ``knn_weight`` in [0, 1] mixes in the label distribution of the ``k`` nearest images outside the
    evaluated split (at most ``max_reference``, sampled with ``seed``)."""

    method: str = "self_confidence"
    rank_by: str = "both"
    filter_by: str = "prune_by_noise_rate"
    knn_weight: float = 0.0
    k: int = 10
    max_reference: int = 20000
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"label_issues: unsupported method {self.method!r}. The available methods are "
                            f"{list(METHODS)}")
        if self.rank_by not in RANK_BY:
            raise UserError(f"label_issues: unsupported rank_by {self.rank_by!r}. Choose one of {list(RANK_BY)}")
        if self.filter_by not in FILTERS:
            raise UserError(f"label_issues: unsupported filter_by {self.filter_by!r}. The available filters are "
                            f"{list(FILTERS)}")
        if isinstance(self.knn_weight, bool) or not isinstance(self.knn_weight, (int, float)) \
                or not 0.0 <= self.knn_weight <= 1.0:
            raise UserError(f"label_issues: knn_weight must be a number within [0, 1]. Received: {self.knn_weight!r}")
        for name in ("k", "max_reference"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"label_issues: {name} must be an integer of at least 1. Received: {value!r}")


@derived.register("label_issues", version=4, config=LabelIssuesConfig, findings=label_issue_findings,
                  libraries=("cleanlab",), description="images whose given label is probably wrong",
                  reads=("causes",))
def compute_label_issues(run: Run, config: LabelIssuesConfig, progress: Progress) -> derived.DerivedResult:
    """Score every image of the evaluated split; the table is sorted most likely wrong first.

    Arrays (aligned with the run's rows, N): ``score`` float32 (NaN outside
    the evaluated split), ``suggested`` int32 (-1 outside). Table
    ``label_issues``: ``TABLE_COLUMNS``, one row per evaluated image.

    Options: ``method`` (see ``label_issue_scores``), ``filter_by`` (see
    ``flag_label_issues``), ``knn_weight`` (0 = the model alone; w mixes in the
    label distribution of the ``k`` nearest images outside the evaluated split,
    at most ``max_reference`` of them, sampled with ``seed``).
    """
    preds = run.predictions
    rows = np.flatnonzero(run.eval_mask())
    labels = preds["true"].to_numpy()[rows].astype(np.int64)
    probs = np.asarray(run.probs[rows], dtype=np.float64)
    n_classes = len(run.classes)
    if n_classes < 2:
        raise UserError(f"label issues need at least 2 classes; run {run.id!r} has {run.classes}")
    notes = []
    if run.eval_split == "all":
        notes.append("The evaluated split is every image: labels the model trained on look right to it, "
                     "so their issues are under-reported (analyse a held-out test split).")
    neighbour, n_reference = None, 0
    weight = float(config.knn_weight)
    if weight > 0:
        reference = np.flatnonzero(~run.eval_mask())
        if run.embeddings is None:
            notes.append("The run has no embeddings: scored on the model's probabilities alone.")
        elif len(reference) == 0:
            notes.append("There are no images outside the evaluated split to take neighbours from: "
                         "scored on the model's probabilities alone.")
        else:
            progress("label issues: nearest training images in embedding space", 0.1)
            neighbour, n_reference = _neighbour_distribution(run, rows, reference, config)
        if neighbour is None:
            weight = 0.0
    used = mixed_probabilities(probs, neighbour, weight=weight) if neighbour is not None else probs
    progress("label issues: cleanlab scores", 0.5)
    score = cleanlab_score = label_issue_scores(labels, used, method=config.method)
    suggested = suggested_labels(labels, used)
    progress("label issues: confident learning", 0.7)
    cleanlab_flag = flag_label_issues(labels, used, filter_by=config.filter_by)
    progress("label issues: second signal (neighbours, copies)", 0.8)
    agrees, signal_notes = second_signal(run, rows, labels, probs.argmax(axis=1), suggested, config)
    notes.extend(signal_notes)
    ranked_by = "model"
    if config.rank_by == "both" and weight == 0:
        both, why = classifier_scores(run, rows)
        if both is not None:
            score, ranked_by = both, "both"
        else:
            notes.append(f"Ranked by the model's probabilities alone (cleanlab's {config.method}): {why}.")
    is_issue = cleanlab_flag & agrees
    # ties (the classifier's probability saturates at 1 for the plainest label errors) broken by cleanlab's
    order = np.lexsort((rows, -cleanlab_score, -score))
    names = np.asarray(run.classes, dtype=object)
    r = np.arange(len(rows))
    table = pd.DataFrame({
        "row": rows[order].astype(np.int64),
        "path": preds["path"].iloc[rows[order]].astype(str).to_numpy(),
        "split": preds["split"].iloc[rows[order]].astype(str).to_numpy(),
        "given_label": names[labels[order]],
        "suggested_label": names[suggested[order]],
        "score": score[order],
        "is_issue": is_issue[order],
        "predicted_label": names[probs.argmax(axis=1)[order]],
        "given_prob": probs[r, labels][order],
        "suggested_prob": probs[r, suggested][order],
        "neighbour_agreement": (neighbour[r, labels][order] if neighbour is not None
                                else np.full(len(rows), np.nan)),
        "cleanlab_flag": cleanlab_flag[order],
        "second_signal": agrees[order],
    })
    full_score = np.full(run.n_images, np.nan, dtype=np.float32)
    full_score[rows] = score
    full_suggested = np.full(run.n_images, -1, dtype=np.int32)
    full_suggested[rows] = suggested
    flagged = table[table["is_issue"]]
    pairs = (flagged.groupby(["given_label", "suggested_label"], observed=True).size()
             .sort_values(ascending=False).head(10))
    progress("label issues: done", 1.0)
    return derived.DerivedResult(
        arrays={"score": full_score, "suggested": full_suggested},
        tables={"label_issues": table},
        summary={
            "split": run.eval_split, "n_scored": int(len(rows)), "n_issues": int(is_issue.sum()),
            "issue_rate": float(is_issue.mean()) if len(rows) else 0.0,
            "n_cleanlab_flags": int(cleanlab_flag.sum()),
            "method": config.method, "ranked_by": ranked_by, "knn_weight": weight, "n_reference": n_reference,
            "top_pairs": [{"given": g, "suggested": s, "count": int(c)} for (g, s), c in pairs.items()],
            "notes": notes,
        },
    )


def _neighbour_distribution(run: Run, rows: np.ndarray, reference: np.ndarray, config: dict
                            ) -> tuple[np.ndarray, int]:
    """kNN label distribution (len(rows), K) of the evaluated rows among the images outside the evaluated
    split (the training images), and how many of those were used.

    Neighbours come from outside the evaluated split because its own labels are
    the ones under suspicion: in the benchmark, neighbours taken from the noisy
    test split itself made the ranking worse. At most ``max_reference`` of them
    (a seeded sample) bound the cost by len(rows) * max_reference * D.
    """
    cap = int(config.max_reference)
    if cap < 1:
        raise UserError(f"max_reference must be at least 1. Received: {cap}")
    if len(reference) > cap:
        reference = np.sort(np.random.default_rng(int(config.seed)).choice(reference, cap, replace=False))
    embeddings = run.embeddings
    given = run.predictions["true"].to_numpy()
    distribution = knn_label_distribution(embeddings[rows], embeddings[reference], given[reference],
                                          n_classes=len(run.classes), k=int(config.k))
    return distribution, int(len(reference))


def classifier_scores(run: Run, rows: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The label-error classifier's probability of a wrong label for ``rows`` (float (M,) in [0, 1], at
    equal priors: a ranking, the same for errors and correct images), read from the run's ``causes``
    (``label_score``, its log-odds); (None, why) when the run has no such classifier."""
    from core.diagnose import causes

    stored = causes.get_causes(run)
    trained = stored.summary.get("label_classifier") or {}
    if "weights" not in trained:
        lines = [line for line in stored.summary.get("not_assessed", []) if "classifier" in line]
        return None, (lines[0] if lines else "the run has no labelled split to train the label-error "
                      "classifier on (no embeddings, or no train or val split)")
    log_odds = np.asarray(stored.array("label_score")[rows], np.float64)
    if not np.isfinite(log_odds).all():
        return None, "the label-error classifier left some images unscored"
    return (1.0 / (1.0 + np.exp(-np.clip(log_odds, -50, 50)))).astype(np.float64), ""


def second_signal(run: Run, rows: np.ndarray, labels: np.ndarray, predicted: np.ndarray, suggested: np.ndarray,
                  config: dict) -> tuple[np.ndarray, list[str]]:
    """Whether a signal independent of the model's probabilities agrees that ``suggested`` is the right
    class of each evaluated row: bool (M,), and notes on what was (not) available.

    Read from the run's ``causes`` result (computed now if needed, so that the neighbour distances are
    computed once for both kinds): an error agrees when its cause is ``label`` (the per-run label-error
    classifier, which reads the neighbours in embedding space and in pixels, or the neighbours'
    quantile rule without it, ``core.diagnose.causes``), a correctly classified image when that
    classifier's probability of a wrong label, with its runner-up as the suggestion, is above 1/2.
    A near copy in ``train`` labelled with the suggested class also agrees.
    """
    from core.diagnose import causes

    notes = []
    stored = causes.get_causes(run)
    cause = stored.array("cause")[rows]
    probability = stored.array("label_probability")[rows].astype(np.float64)
    stored_suggested = stored.array("suggested")[rows]
    wrong = predicted != labels
    label_index = causes.CAUSES.index("label")
    agrees = wrong & (cause == label_index) & (stored_suggested == suggested)
    agrees |= ~wrong & (np.nan_to_num(probability, nan=0.0) > 0.5)
    copies = causes._train_copies(run)
    if copies is not None and len(copies):
        names = np.asarray(run.classes, dtype=object)
        copy_label = copies.drop_duplicates("row").set_index("row")["copy_label"]
        at = pd.Series(np.arange(len(rows)), index=rows)
        common = copy_label.index.intersection(at.index)
        hit = at.loc[common].to_numpy()
        agrees[hit] |= copy_label.loc[common].to_numpy() == names[suggested[hit]]
    if run.embeddings is None and copies is None:
        notes.append("No second signal (no embeddings, no duplicates result): nothing is flagged, since the "
                     "model's probabilities alone restate its prediction.")
    return agrees, notes
