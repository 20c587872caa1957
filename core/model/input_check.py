"""Is the model fed what it learnt from? Preprocessing and class-order checks after predicting.

A model evaluated on another input than its training pipeline made (BGR
images read with ``cv2.imread``, ``resnet.preprocess_input``'s caffe mode, a
torchvision ``Normalize``), or scored against a label order other than its
own, gives a run whose accuracy, errors and maps are all wrong, silently. After
predicting, ``check_input`` takes a small seeded sample of the evaluated split
(``SAMPLE_SIZE`` images at most), feeds it under each other plausible
preprocessing (the five value modes, times both channel orders for colour
images: at most 9 extra passes over the sample, i.e. at most
``9 * SAMPLE_SIZE`` = 4,608 predictions whatever the data set's size) and
compares accuracies; the class order is judged from the confusion matrix
(``permutation_fit``), which costs no prediction at all, and named when the
best permutation of the classes explains at least 10 points and 1.5 times as
many images as the order used, on at least 20 images per class.

A finding is *clear* only when the better option beats the current one by at
least ``MIN_GAIN`` (10 points) on the sample, beats always answering the
sample's commonest class by as much, and the difference is beyond chance:
among the images on which the two disagree in correctness, the better option
must win by at least ``MIN_Z`` (3) standard deviations (McNemar's test).
Options the best one does not beat that way (or within one point of it) are
as good on the sample, and among them the one named is the one with the fewest
options to pass (``--preprocess``, ``--channel-order``), then the one that
changes least what the model sees (mode, channel order), then the one with the
lowest cross-entropy: a model that is nearly scale-invariant (ReLU networks)
scores the same on 0..1 and -1..1 input but is only more confident, not more
right, on the larger one. Options that give the same numbers (keras' 'tf' and
'symmetric', 'torch' and 'imagenet') are evaluated once.

When training's accuracy is known (``--history``, or a run trained here) and
the run's is within ``MIN_GAIN`` of it, no mismatch is claimed for an option
that would beat training by ``MIN_GAIN``: the preprocessing used reproduces
training, and a model that does better on input it never saw (an
under-trained BatchNormalization's running statistics can) is said in a note.

The result is a plain dict (JSON) stored in the run's manifest
(``model.input_check``) so that the Overview reads it without TensorFlow; its
``lines`` (warnings) and ``notes`` are what ``analyze`` prints and the Overview shows.
"""

from __future__ import annotations

import math
import time

import numpy as np

from core.data.preprocess import MODES, SAME_AS, Preprocessing, feed

SAMPLE_SIZE = 512
MIN_GAIN = 0.10
MIN_Z = 3.0
TIE = 0.01
# A class order is named only when the permuted matrix explains 1.5 times as many images as the
# diagonal: a weak model's real confusions (shirt <-> T-shirt) also gain a little from a swap.
ORDER_RATIO = 1.5
# ... and only on at least this many images per class (the best of K! orders fits small samples by chance).
MIN_PER_CLASS = 20
_CANDIDATE_MODES = tuple(m for m in MODES if m not in SAME_AS)  # raw, unit, symmetric, imagenet, caffe


def candidate_preprocessings(channels: int) -> list[Preprocessing]:
    """Every distinct preprocessing worth trying for a model taking ``channels`` channels.

    >>> [p.spec for p in candidate_preprocessings(1)]
    ['raw', 'unit', 'symmetric']
    >>> len(candidate_preprocessings(3))
    10
    """
    if channels != 3:
        return [Preprocessing(m) for m in ("raw", "unit", "symmetric")]
    return [Preprocessing(m, order) for order in ("rgb", "bgr") for m in _CANDIDATE_MODES]


def sample_rows(eval_rows: np.ndarray, *, size: int = SAMPLE_SIZE, seed: int = 0) -> np.ndarray:
    """A seeded sample of at most ``size`` of ``eval_rows``, in increasing order.

    >>> sample_rows(np.arange(10), size=20).tolist() == list(range(10))
    True
    >>> len(sample_rows(np.arange(1000), size=5))
    5
    """
    eval_rows = np.asarray(eval_rows, np.int64)
    if len(eval_rows) <= size:
        return np.sort(eval_rows)
    return np.sort(np.random.default_rng(seed).choice(eval_rows, size=size, replace=False))


def _z(better_correct: np.ndarray, other_correct: np.ndarray) -> float:
    """The sign test's z of ``better_correct`` over ``other_correct`` on the images they disagree on."""
    wins = int((better_correct & ~other_correct).sum())
    losses = int((~better_correct & other_correct).sum())
    return 0.0 if wins + losses == 0 else (wins - losses) / math.sqrt(wins + losses)


def clearly_better(better_correct: np.ndarray, current_correct: np.ndarray) -> bool:
    """Whether per-image correctness ``better_correct`` beats ``current_correct`` by MIN_GAIN and MIN_Z.

    >>> clearly_better(np.ones(100, bool), np.r_[np.ones(50), np.zeros(50)].astype(bool))
    True
    >>> clearly_better(np.r_[np.ones(55), np.zeros(45)].astype(bool), np.r_[np.ones(50), np.zeros(50)].astype(bool))
    False
    """
    better_correct, current_correct = np.asarray(better_correct, bool), np.asarray(current_correct, bool)
    n = len(better_correct)
    if n == 0:
        return False
    gain = better_correct.mean() - current_correct.mean()
    return bool(gain >= MIN_GAIN and _z(better_correct, current_correct) >= MIN_Z)


def permutation_fit(confusion: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The label order that best explains a confusion matrix (rows true, columns predicted).

    Returns ``(order, diagonal_accuracy, permuted_accuracy)``: ``order[j]`` is
    the true class that the model's output ``j`` stands for, chosen to maximise
    the images on the matched cells (Hungarian assignment).

    >>> c = np.array([[0, 9, 1], [8, 0, 2], [0, 1, 9]])   # classes 0 and 1 swapped
    >>> order, acc, permuted = permutation_fit(c)
    >>> order.tolist(), round(acc, 3), round(permuted, 3)
    ([1, 0, 2], 0.3, 0.867)
    """
    from scipy.optimize import linear_sum_assignment

    c = np.asarray(confusion, dtype=np.float64)
    total = c.sum()
    if total == 0:
        return np.arange(len(c)), 0.0, 0.0
    true_idx, pred_idx = linear_sum_assignment(-c)
    order = np.empty(len(c), np.int64)
    order[pred_idx] = true_idx
    return order, float(np.trace(c) / total), float(c[true_idx, pred_idx].sum() / total)


def _seen_order(p: Preprocessing) -> str:
    """The channel order the model is fed: 'caffe' mode turns RGB into BGR itself."""
    if p.mode != "caffe":
        return p.channel_order
    return "bgr" if p.channel_order == "rgb" else "rgb"


def _flags(current: Preprocessing, spec: str) -> int:
    """How many of the two options (``--preprocess``, ``--channel-order``) differ from ``current``: ties
    go first to the fewest options to pass. A model trained on RGB through ``resnet.preprocess_input``
    on pictures whose colour tells nothing classifies as well under 'caffe+bgr' (it then sees RGB, as
    under 'unit') as under 'caffe': the README's 'caffe', one option, is named, not both."""
    other = Preprocessing.parse(spec)
    return int(other.mode != current.mode) + int(other.channel_order != current.channel_order)


def _changes(current: Preprocessing, spec: str) -> int:
    """How many of (mode, channel order the model sees) differ from ``current``: ties go to the
    smallest change (a model trained on cv2's BGR / 255 fits 'unit+bgr', one change from 'unit', and
    often 'caffe' as well, whose unscaled inputs saturate it: two changes)."""
    other = Preprocessing.parse(spec)
    return int(other.mode != current.mode) + int(_seen_order(other) != _seen_order(current))


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    return float(-np.log(p).mean())


def check_input(
    predict_probs, pixels: np.ndarray, labels: np.ndarray, *, current: Preprocessing, current_probs: np.ndarray,
    classes: list[str], confusion: np.ndarray, rescaling_layer: str | None = None, class_source: str = "",
    expected_accuracy: tuple[float, str] | None = None, run_accuracy: float | None = None,
) -> dict:
    """Compare the current preprocessing with the others on a sample; judge the class order.

    predict_probs : callable, fed float32 (n, H, W, C) -> probabilities (n, K).
    pixels        : uint8 (n, H, W, C), the sample's decoded images.
    labels        : int (n,), their labels in the run's class order.
    current       : the resolved preprocessing the run used; ``current_probs`` (n, K) its probabilities.
    confusion     : (K, K) of the whole evaluated split (rows true, columns predicted).
    expected_accuracy : (accuracy, where from) known from training, or None.

    Returns a JSON-able dict: ``sample`` size, ``seconds``, ``accuracies`` {spec: acc},
    ``current``, ``suggested`` (a spec or None), ``class_order`` (names or None),
    ``lines``, the warnings to show (empty when all is well), and ``notes``, sentences
    that are no warning (the model rescales its own input: nothing to pass).
    """
    t0 = time.perf_counter()
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    current = current.canonical()
    current_correct = current_probs.argmax(axis=1) == labels
    accuracies = {current.spec: float(current_correct.mean()) if n else float("nan")}
    losses = {current.spec: _nll(current_probs, labels) if n else float("nan")}
    correct = {current.spec: current_correct}
    sample_probs = {current.spec: current_probs}
    if n:
        for candidate in candidate_preprocessings(pixels.shape[-1]):
            if candidate == current:
                continue
            probs = np.asarray(predict_probs(feed(pixels, candidate)), np.float64)
            if not np.all(np.isfinite(probs)):
                continue  # a preprocessing the model overflows on is no candidate
            correct[candidate.spec] = probs.argmax(axis=1) == labels
            accuracies[candidate.spec] = float(correct[candidate.spec].mean())
            losses[candidate.spec] = _nll(probs, labels)
            sample_probs[candidate.spec] = probs
    # A better option must make the model classify: beat always answering the sample's commonest class
    # (an untrained or collapsed model only changes which constant it answers).
    majority = float(np.bincount(labels).max() / n) if n else 1.0
    best_acc = max(accuracies.values()) if n else float("nan")
    # Options the best does not beat significantly (z < MIN_Z on the images they disagree on) are as
    # good on this sample: among them, the smallest change wins (a cv2 BGR / 255 model also classifies
    # under 'caffe', whose unscaled inputs may even win a few images: 'unit+bgr' is what it learnt).
    top = max(accuracies, key=accuracies.get) if n else current.spec
    contenders = [s for s, a in accuracies.items() if a >= best_acc - TIE or _z(correct[top], correct[s]) < MIN_Z]
    best = min(contenders, key=lambda s: (_flags(current, s), _changes(current, s), losses[s])) if n else current.spec
    suggested = (best if best != current.spec and accuracies[best] >= majority + MIN_GAIN
                 and clearly_better(correct[best], current_correct) else None)
    notes: list[str] = []
    if suggested is not None and _as_in_training(expected_accuracy, run_accuracy, accuracies[suggested]):
        # The run reproduces training and the other option would beat it by far: the model does better on
        # input it was not trained on (an under-trained BatchNormalization's running statistics can), which
        # is no sign that the user fed it otherwise.
        notes.append(_kept_note(expected_accuracy, run_accuracy, current, suggested, accuracies[suggested], n))
        suggested = None

    lines: list[str] = []
    if suggested is not None:
        p = Preprocessing.parse(suggested)
        hint = " (was the model trained on cv2.imread images?)" if p.channel_order != current.channel_order else ""
        alias = {v: k for k, v in SAME_AS.items()}.get(p.mode)
        also = f" (keras.applications' '{alias}' mode gives the same numbers)" if alias else ""
        other = (f"; {Preprocessing.parse(top).describe()} scores {accuracies[top]:.2f}, as good within chance, "
                 "but changes more" if accuracies[top] > accuracies[suggested] else "")
        lines.append(f"Preprocessing mismatch: accuracy {accuracies[current.spec]:.2f} with {current.describe()}; "
                     f"{accuracies[suggested]:.2f} with {p.describe()} on {n} sampled images{hint}{other}. "
                     f"Re-run with {p.options()}{also}.")
        if rescaling_layer:
            lines.append(f"The model holds its own preprocessing layer {rescaling_layer!r}: it expects raw 0..255 "
                         "pixels with no --preprocess.")
    if suggested is None and rescaling_layer and current.mode == "raw":
        notes.append(f"The model holds its own preprocessing layer {rescaling_layer!r}: raw 0..255 pixels are fed, "
                     "no --preprocess is needed.")

    # Class order: from the sample under the suggested preprocessing, else from the whole split.
    if suggested is not None:
        k = len(classes)
        pred = sample_probs[suggested].argmax(axis=1)
        matrix = np.zeros((k, k), np.int64)
        np.add.at(matrix, (labels, np.minimum(pred, k - 1)), 1)
    else:
        matrix = np.asarray(confusion)
    order, diagonal, permuted = permutation_fit(matrix)
    counts = matrix.sum(axis=1)
    class_order = None
    if (matrix.sum() >= MIN_PER_CLASS * len(matrix) and permuted - diagonal >= MIN_GAIN
            and permuted >= ORDER_RATIO * diagonal and permuted >= counts.max() / counts.sum() + MIN_GAIN
            and not np.array_equal(order, np.arange(len(order)))):
        class_order = [classes[i] for i in order]
        shown = ",".join(class_order) if len(class_order) <= 20 else ",".join(class_order[:20]) + ",..."
        lines.append(f"Class order mismatch: accuracy {diagonal:.2f} with the class order {class_source or 'used'}; "
                     f"{permuted:.2f} if the model's outputs are in the order {shown}. If that is the order the "
                     "model was trained with, pass --classes "
                     + (f"{shown} (or a classes.txt beside the model)." if len(class_order) <= 20 else
                        f"FILE with all {len(class_order)} names in that order (they are in the run's manifest, "
                        "model.input_check.class_order), or a classes.txt beside the model."))
    if expected_accuracy is not None and run_accuracy is not None and suggested is None and class_order is None:
        expected, source = expected_accuracy
        if expected - run_accuracy >= MIN_GAIN:
            lines.append(f"Accuracy {run_accuracy:.2f} here but {expected:.2f} in training ({source}): the images, "
                         "their preprocessing or the class order may differ from training; see --preprocess, "
                         "--channel-order and --classes.")
    return {"sample": int(n), "seconds": round(time.perf_counter() - t0, 2), "current": current.spec,
            "accuracies": {s: round(a, 4) for s, a in accuracies.items()}, "suggested": suggested,
            "class_order": class_order, "rescaling_layer": rescaling_layer, "lines": lines, "notes": notes}


def _kept_note(expected_accuracy: tuple[float, str], run_accuracy: float, current: Preprocessing, other: str,
               other_accuracy: float, n: int) -> str:
    expected, source = expected_accuracy
    return (f"Accuracy {run_accuracy:.2f} here matches {expected:.2f} in training ({source}), so "
            f"{current.describe()} is kept, though the model scores {other_accuracy:.2f} with "
            f"{Preprocessing.parse(other).describe()} on {n} sampled images: better than in training, "
            "on input it was not trained on.")


def judged_with_training(finding: dict | None, expected_accuracy: tuple[float, str] | None,
                         run_accuracy: float | None) -> dict | None:
    """A stored finding judged again once training's accuracy is known (a run reused from the cache was
    checked without it): the mismatch dropped as ``check_input`` drops it (``_as_in_training``), or None
    when nothing changes. No model is run: the finding holds every option's accuracy on the sample."""
    if not isinstance(finding, dict) or not finding.get("suggested") or finding.get("class_order"):
        return None
    suggested, accuracies = str(finding["suggested"]), finding.get("accuracies") or {}
    other = accuracies.get(suggested)
    if not isinstance(other, (int, float)) or not _as_in_training(expected_accuracy, run_accuracy, float(other)):
        return None
    current = Preprocessing.parse(str(finding.get("current", "unit")))
    note = _kept_note(expected_accuracy, run_accuracy, current, suggested, float(other), int(finding.get("sample", 0)))
    lines = [line for line in finding.get("lines") or [] if not str(line).startswith("Preprocessing mismatch")
             and not (finding.get("rescaling_layer") and str(line).startswith("The model holds its own"))]
    return {**finding, "suggested": None, "lines": lines, "notes": [*(finding.get("notes") or []), note]}


def _as_in_training(expected_accuracy: tuple[float, str] | None, run_accuracy: float | None,
                    other_accuracy: float) -> bool:
    """Whether the run's accuracy is within ``MIN_GAIN`` of training's while ``other_accuracy`` exceeds
    training's by ``MIN_GAIN`` or more: the preprocessing used reproduces training.

    >>> _as_in_training((0.48, "val_accuracy"), 0.47, 0.73), _as_in_training((0.9, "val_accuracy"), 0.47, 0.88)
    (True, False)
    """
    if expected_accuracy is None or run_accuracy is None:
        return False
    expected = expected_accuracy[0]
    return abs(expected - run_accuracy) < MIN_GAIN and other_accuracy - expected >= MIN_GAIN


def expected_from_training(training: dict | None) -> tuple[float, str] | None:
    """(accuracy, where from) recorded by training: its test accuracy, else the last val_accuracy.

    Accepts a run's ``training`` record or a Keras ``History.history`` dict
    (``{'val_accuracy': [...], ...}``) as users save it to ``history.json``.

    >>> expected_from_training({"val_accuracy": [0.5, 0.9]})
    (0.9, 'val_accuracy of the last epoch')
    """
    if not isinstance(training, dict):
        return None
    if isinstance(training.get("test_accuracy"), (int, float)):
        return float(training["test_accuracy"]), "test accuracy after training"
    history = training.get("history") if isinstance(training.get("history"), dict) else training
    for key in ("val_accuracy", "val_acc", "val_sparse_categorical_accuracy", "val_categorical_accuracy"):
        values = history.get(key)
        if isinstance(values, (int, float)):
            return float(values), key
        if isinstance(values, list) and values and isinstance(values[-1], (int, float)):
            return float(values[-1]), f"{key} of the last epoch"
    return None
