"""Calibration: does a confidence of 0.9 mean right 9 times in 10? ECE, MCE, reliability, temperature scaling.

Conventions: N images, K classes. ``confidence`` is a float array (N,) (the
top-1 probability), ``correct`` a bool array (N,) (top-1 class = true class).
Bins are ``n_bins`` equal-width intervals of [0, 1], each closed on the right
``(lower, upper]`` (the first also holds 0), the convention of Guo et al.
(2017) and of ``sklearn.calibration.calibration_curve(strategy="uniform")``.

* ECE = sum over bins of |B| / N * |accuracy(B) - mean confidence(B)|
* MCE = max over non-empty bins of |accuracy(B) - mean confidence(B)|

Temperature scaling divides the log-probabilities by one number T fitted to
minimise the negative log-likelihood on held-out images; T > 1 softens an
over-confident model. The top-1 class never changes, but the order of images
by confidence can.

>>> import numpy as np
>>> conf = np.array([0.95, 0.95, 0.55, 0.55]); right = np.array([True, False, True, True])
>>> round(expected_calibration_error(conf, right, n_bins=10), 3)  # |0.5-0.95|/2 + |1-0.55|/2
0.45
>>> round(max_calibration_error(conf, right, n_bins=10), 3)
0.45
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.diagnose.findings import Card, Findings
from core.errors import UserError
from core.progress import Progress
from core.run import derived
from core.run.store import Run

_LOG_FLOOR = np.log(np.finfo(np.float32).tiny)  # log(0) of a float32 probability that underflowed


def _check(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct)
    if confidence.ndim != 1 or confidence.shape != correct.shape:
        raise UserError(f"confidence and correct must be 1-D of equal length. "
                         f"Received shapes {confidence.shape} and {correct.shape}")
    if confidence.size and (not np.isfinite(confidence).all() or confidence.min() < 0 or confidence.max() > 1):
        raise UserError("confidence must lie within [0, 1]")
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise UserError(f"n_bins must be a positive whole number. Received: n_bins={n_bins!r}")
    return confidence, correct.astype(bool)


def bin_index(confidence: np.ndarray, *, n_bins: int = 15) -> np.ndarray:
    """Bin of each confidence: int array (N,) in range(n_bins); bin b is (b/n_bins, (b+1)/n_bins]."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], np.asarray(confidence, dtype=np.float64), side="left")


def reliability_table(confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = 15) -> pd.DataFrame:
    """One row per bin: bin, lower, upper, count, mean_confidence, accuracy, gap (accuracy - confidence).

    Empty bins have count 0 and NaN means. The non-empty rows' ``accuracy`` and
    ``mean_confidence`` are ``calibration_curve(correct, confidence, n_bins=n_bins)``.
    """
    confidence, correct = _check(confidence, correct, n_bins)
    b = bin_index(confidence, n_bins=n_bins)
    count = np.bincount(b, minlength=n_bins)
    conf_sum = np.bincount(b, weights=confidence, minlength=n_bins)
    right = np.bincount(b, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, right / count, np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame({"bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:], "count": count,
                         "mean_confidence": mean_conf, "accuracy": accuracy, "gap": accuracy - mean_conf})


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = 15) -> float:
    """ECE over ``n_bins`` equal-width bins (NaN for no images). See the module docstring."""
    table = reliability_table(confidence, correct, n_bins=n_bins)
    n = table["count"].sum()
    if n == 0:
        return float("nan")
    filled = table[table["count"] > 0]
    return float((filled["count"] * filled["gap"].abs()).sum() / n)


def max_calibration_error(confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = 15) -> float:
    """MCE: the largest |accuracy - confidence| of a non-empty bin (NaN for no images)."""
    table = reliability_table(confidence, correct, n_bins=n_bins)
    filled = table[table["count"] > 0]
    return float(filled["gap"].abs().max()) if len(filled) else float("nan")


def per_class_calibration(probs: np.ndarray, labels: np.ndarray, class_names: list[str], *,
                          n_bins: int = 15) -> pd.DataFrame:
    """ECE and MCE of the images *predicted* as each class (top-1 confidence against correctness).

    "When the model says shirt at 90%, is it right 90% of the time?" Columns:
    class, predicted (count), accuracy, mean_confidence, ece, mce; NaN for a
    class never predicted. ``probs`` (N, K), ``labels`` (N,).
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] != len(class_names) or len(labels) != len(probs):
        raise UserError(f"probs must be (N, {len(class_names)}) and labels (N,). "
                         f"Received shapes {probs.shape} and {labels.shape}")
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1).astype(np.float64)
    correct = predicted == labels
    rows = []
    for c, name in enumerate(class_names):
        mask = predicted == c
        rows.append({"class": name, "predicted": int(mask.sum()),
                     "accuracy": float(correct[mask].mean()) if mask.any() else np.nan,
                     "mean_confidence": float(confidence[mask].mean()) if mask.any() else np.nan,
                     "ece": expected_calibration_error(confidence[mask], correct[mask], n_bins=n_bins),
                     "mce": max_calibration_error(confidence[mask], correct[mask], n_bins=n_bins)})
    return pd.DataFrame(rows)


def confidence_histograms(confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = 15) -> pd.DataFrame:
    """Counts of right and wrong predictions per confidence bin: bin, lower, upper, n_correct, n_wrong."""
    confidence, correct = _check(confidence, correct, n_bins)
    b = bin_index(confidence, n_bins=n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame({"bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:],
                         "n_correct": np.bincount(b[correct], minlength=n_bins),
                         "n_wrong": np.bincount(b[~correct], minlength=n_bins)})


# --------------------------------------------------------------------------- temperature scaling

def _log_probs(logits_or_probs: np.ndarray, inputs: str) -> np.ndarray:
    x = np.asarray(logits_or_probs, dtype=np.float64)
    if x.ndim != 2:
        raise UserError(f"expected an (N, K) array. Received shape {x.shape}")
    if inputs not in ("auto", "probs", "logits"):
        raise UserError(f"Unsupported inputs {inputs!r}. The available choices are ['auto', 'probs', 'logits']")
    if inputs == "auto":
        inputs = "probs" if x.size and x.min() >= 0 and np.allclose(x.sum(axis=1), 1.0, atol=1e-3) else "logits"
    if not np.isfinite(x).all():
        raise UserError("logits or probabilities must be finite")
    if inputs == "logits":
        return x
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(x), _LOG_FLOOR)  # logits up to a per-row constant, which softmax ignores


def _scaled_log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def negative_log_likelihood(logits_or_probs: np.ndarray, labels: np.ndarray, *, temperature: float = 1.0,
                            inputs: str = "auto") -> float:
    """Mean -log p(true class) after dividing the logits by ``temperature``."""
    logits = _log_probs(logits_or_probs, inputs)
    labels = np.asarray(labels, dtype=np.int64)
    return float(-_scaled_log_softmax(logits, temperature)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits_or_probs: np.ndarray, labels: np.ndarray, *, inputs: str = "auto",
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T minimising the negative log-likelihood of ``labels``.

    Parameters
    ----------
    logits_or_probs : float array (N, K), logits or probabilities (``inputs``
        'auto' treats non-negative rows summing to 1 as probabilities and
        takes their log).
    labels : int array (N,), the true classes.
    bounds : the range searched (on log T, a one-dimensional bounded search).
    """
    logits = _log_probs(logits_or_probs, inputs)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(logits),):
        raise UserError(f"labels must be ({len(logits)},). Received shape {labels.shape}")
    if len(labels) == 0:
        raise UserError("fit_temperature needs at least one image")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise UserError(f"labels hold values outside range({logits.shape[1]})")
    from scipy.optimize import minimize_scalar

    picked = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-_scaled_log_softmax(logits, np.exp(log_t))[picked, labels].mean())

    found = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                            options={"xatol": 1e-4})
    return float(np.exp(found.x))


def apply_temperature(logits_or_probs: np.ndarray, temperature: float, *, inputs: str = "auto") -> np.ndarray:
    """Probabilities (N, K) after temperature scaling."""
    if not temperature > 0:
        raise UserError(f"temperature must be positive. Received: {temperature}")
    return np.exp(_scaled_log_softmax(_log_probs(logits_or_probs, inputs), temperature))


# --------------------------------------------------------------------------- the derived kind

def _fit_and_held_out_rows(run: Run, eval_rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Rows to fit the temperature on, rows to judge it on, and a sentence saying which."""
    splits = run.predictions["split"]
    if run.eval_split not in ("val", "all") and "val" in run.splits:
        val = np.flatnonzero((splits == "val").to_numpy())
        return val, eval_rows, f"fitted on the 'val' split ({len(val):,} images), evaluated on '{run.eval_split}'"
    if len(eval_rows) < 2:
        raise UserError(f"calibration needs at least 2 evaluated images; run {run.id!r} has {len(eval_rows)}")
    shuffled = np.random.default_rng(seed).permutation(eval_rows)
    half = len(shuffled) // 2
    fit, held = np.sort(shuffled[:half]), np.sort(shuffled[half:])
    return fit, held, (f"no validation split: fitted on a random half of '{run.eval_split}' ({len(fit):,} images), "
                       f"evaluated on the other half ({len(held):,})")


@dataclass(frozen=True)
class CalibrationConfig:
    """``n_bins`` equal-width confidence bins; ``seed`` picks the half that fits the temperature
    when the run has no validation split."""

    n_bins: int = 15
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.n_bins, int) or self.n_bins < 2:
            raise UserError(f"calibration: n_bins must be an integer of at least 2. Received: {self.n_bins!r}")


#: A mistake at least this confident counts on the calibration card.
CONFIDENT = 0.9


def calibration_findings(run: Run, stored) -> Findings:
    """The calibration card: the most confident mistakes first; it explains those made with
    confidence >= ``CONFIDENT``."""
    errors = stored.table("confident_errors").sort_values("rank")
    rows = errors["row"].to_numpy(np.int64)
    confident = errors["confidence"].to_numpy(float) >= CONFIDENT
    s = stored.summary
    return Findings(cards=(Card("calibration", "calibration", "Calibration",
                                f"ECE {s['ece']:.4f}, MCE {s['mce']:.4f} on '{s['split']}'; "
                                f"{int(confident.sum()):,} mistakes made with confidence ≥ {CONFIDENT:.0%}.",
                                rows, "most confident mistake first (after temperature scaling)",
                                explains=rows[confident]),))


@derived.register("calibration", version=1, config=CalibrationConfig, findings=calibration_findings,
                  description="ECE/MCE, reliability, confidence histograms, temperature scaling")
def compute_calibration(run: Run, config: CalibrationConfig, progress: Progress) -> derived.DerivedResult:
    """Calibration of the evaluated split, before and after temperature scaling.

    Summary: ``ece``, ``mce`` (evaluated split, raw probabilities), ``temperature``,
    ``fit_on`` (which images fitted it), and on the held-out images
    ``ece_before/after``, ``mce_before/after``, ``nll_before/after``.
    Tables (``probabilities`` = 'raw' or 'scaled', on every evaluated image):
    ``reliability``, ``confidence_histogram``, ``per_class`` and
    ``confident_errors`` (the evaluated split's errors ranked by scaled confidence).
    Array ``scaled_confidence`` float32 (N,): every row's top-1 probability after scaling.
    """
    n_bins = config.n_bins
    preds = run.predictions
    labels = preds["true"].to_numpy().astype(np.int64)
    eval_rows = np.flatnonzero(run.eval_mask())
    progress("calibration: fitting the temperature", 0.1)
    fit_rows, held_rows, fit_on = _fit_and_held_out_rows(run, eval_rows, config.seed)
    probs = run.probs
    temperature = fit_temperature(probs[fit_rows], labels[fit_rows], inputs="probs")
    progress("calibration: scaling", 0.5)
    scaled_conf = np.empty(run.n_images, dtype=np.float32)
    for start in range(0, run.n_images, 65536):  # bounded memory for many classes
        block = apply_temperature(probs[start:start + 65536], temperature, inputs="probs")
        scaled_conf[start:start + len(block)] = block.max(axis=1)
    raw_conf = preds["confidence"].to_numpy().astype(np.float64)
    correct = preds["correct"].to_numpy()

    def scores(rows: np.ndarray, conf: np.ndarray) -> tuple[float, float]:
        return (expected_calibration_error(conf[rows], correct[rows], n_bins=n_bins),
                max_calibration_error(conf[rows], correct[rows], n_bins=n_bins))

    ece, mce = scores(eval_rows, raw_conf)
    ece_before, mce_before = scores(held_rows, raw_conf)
    ece_after, mce_after = scores(held_rows, scaled_conf.astype(np.float64))
    held_probs = probs[held_rows]
    nll_before = negative_log_likelihood(held_probs, labels[held_rows], inputs="probs")
    nll_after = negative_log_likelihood(held_probs, labels[held_rows], temperature=temperature, inputs="probs")

    progress("calibration: tables", 0.8)
    reliability, histograms = [], []
    for name, conf in (("raw", raw_conf), ("scaled", scaled_conf.astype(np.float64))):
        reliability.append(reliability_table(conf[eval_rows], correct[eval_rows], n_bins=n_bins)
                           .assign(probabilities=name))
        histograms.append(confidence_histograms(conf[eval_rows], correct[eval_rows], n_bins=n_bins)
                          .assign(probabilities=name))
    eval_probs = np.asarray(probs[eval_rows])
    per_class = per_class_calibration(eval_probs, labels[eval_rows], run.classes, n_bins=n_bins)
    scaled_per_class = per_class_calibration(apply_temperature(eval_probs, temperature, inputs="probs"),
                                             labels[eval_rows], run.classes, n_bins=n_bins)
    per_class = per_class.merge(scaled_per_class[["class", "mean_confidence", "ece", "mce"]], on="class",
                                suffixes=("", "_scaled"))
    progress("calibration: done", 1.0)
    return derived.DerivedResult(
        arrays={"scaled_confidence": scaled_conf},
        tables={"reliability": pd.concat(reliability, ignore_index=True),
                "confidence_histogram": pd.concat(histograms, ignore_index=True),
                "per_class": per_class,
                "confident_errors": _confident_errors(run, eval_rows, raw_conf, scaled_conf, correct)},
        summary={
            "split": run.eval_split, "n_bins": n_bins, "n_evaluated": int(len(eval_rows)),
            "ece": ece, "mce": mce, "temperature": temperature, "fit_on": fit_on,
            "n_fit": int(len(fit_rows)), "n_held_out": int(len(held_rows)),
            "ece_before": ece_before, "ece_after": ece_after, "mce_before": mce_before, "mce_after": mce_after,
            "nll_before": nll_before, "nll_after": nll_after,
            "accuracy": float(correct[eval_rows].mean()) if len(eval_rows) else float("nan"),
            "mean_confidence": float(raw_conf[eval_rows].mean()) if len(eval_rows) else float("nan"),
        },
    )


def _confident_errors(run: Run, eval_rows: np.ndarray, raw_conf: np.ndarray, scaled_conf: np.ndarray,
                      correct: np.ndarray) -> pd.DataFrame:
    """The evaluated split's errors, most confident first under the scaled probabilities."""
    preds = run.predictions
    wrong = eval_rows[~correct[eval_rows]]
    order = np.lexsort((wrong, -scaled_conf[wrong]))
    rows = wrong[order]
    raw_rank = np.empty(len(wrong), dtype=np.int64)
    raw_rank[np.lexsort((wrong, -raw_conf[wrong]))] = np.arange(1, len(wrong) + 1)
    names = np.asarray(run.classes, dtype=object)
    return pd.DataFrame({
        "rank": np.arange(1, len(rows) + 1), "rank_raw": raw_rank[order], "row": rows.astype(np.int64),
        "path": preds["path"].iloc[rows].astype(str).to_numpy(),
        "true_label": names[preds["true"].to_numpy()[rows]],
        "predicted_label": names[preds["predicted"].to_numpy()[rows]],
        "confidence": raw_conf[rows], "scaled_confidence": scaled_conf[rows].astype(np.float64),
    })
