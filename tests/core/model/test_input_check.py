"""core.model.input_check on arrays: a model that tells classes apart by channel order or by scale,
fed through core.data.preprocess.feed, and confusion matrices that are (or are not) permutations."""

from __future__ import annotations

import numpy as np

from core.data.preprocess import Preprocessing, feed
from core.model.input_check import (
    SAMPLE_SIZE,
    candidate_preprocessings,
    check_input,
    clearly_better,
    expected_from_training,
    permutation_fit,
    sample_rows,
)

CLASSES = ["blue", "red"]


def _images(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4, 4, 3) uint8 RGB, class 0 blue-ish and class 1 red-ish, with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 90, (n, 4, 4, 3))
    images[labels == 0, ..., 2] += 160
    images[labels == 1, ..., 0] += 160
    return np.clip(images, 0, 255).astype(np.uint8), labels


def bgr_unit_model(x: np.ndarray) -> np.ndarray:
    """Trained on cv2 images / 255: its channel 0 is blue; it also expects values in 0..1."""
    blue, red = x[..., 0].mean(axis=(1, 2)), x[..., 2].mean(axis=(1, 2))
    logits = np.stack([blue - red, red - blue], axis=1) * 8
    out_of_range = np.abs(x).mean(axis=(1, 2, 3)) > 2   # saturated: always 'blue', whatever the image
    logits[out_of_range] = [2.0, 0.0]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _check(images, labels, current: Preprocessing, model=bgr_unit_model, **kwargs):
    """``check_input`` of ``model`` fed ``images`` under ``current``, with the confusion matrix it makes."""
    probs = model(feed(images, current))
    confusion = np.zeros((2, 2), np.int64)
    np.add.at(confusion, (labels, probs.argmax(axis=1)), 1)
    return check_input(model, images, labels, current=current, current_probs=probs, classes=CLASSES,
                       confusion=confusion, **kwargs)


def test_names_the_channel_order_when_rgb_was_fed_to_a_bgr_model():
    images, labels = _images()
    finding = _check(images, labels, Preprocessing("unit"))
    assert finding["suggested"] == "unit+bgr" and finding["accuracies"]["unit"] < 0.1
    assert finding["accuracies"]["unit+bgr"] == 1.0 and finding["sample"] == 200
    assert len(finding["lines"]) == 1  # the class order is judged under the suggested preprocessing: fine
    assert finding["lines"][0].startswith("Preprocessing mismatch: accuracy 0.00 with unit 0..1; 1.00 with unit "
                                          "0..1, BGR channels on 200 sampled images (was the model trained on "
                                          "cv2.imread images?). Re-run with --preprocess unit --channel-order bgr.")
    assert set(finding["accuracies"]) == {p.spec for p in candidate_preprocessings(3)}


def test_a_tie_goes_to_the_smallest_change_counting_caffes_own_bgr():
    """A model trained on cv2's BGR / 255 whose softmax only grows sharper with larger inputs: 'caffe'
    (BGR itself, unscaled) classifies as well and more confidently, yet it changes the scale and the
    channel order the model sees; 'unit+bgr' changes only the order (the CI run that trained such a
    model got 'caffe' named)."""
    def unsaturated(x):
        blue, red = x[..., 0].mean(axis=(1, 2)), x[..., 2].mean(axis=(1, 2))
        logits = np.stack([blue - red, red - blue], axis=1) * 8
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    images, labels = _images()
    finding = _check(images, labels, Preprocessing("unit"), model=unsaturated)
    assert finding["accuracies"]["caffe"] == finding["accuracies"]["unit+bgr"] == 1.0  # a tie
    assert finding["suggested"] == "unit+bgr"


def test_silent_when_the_preprocessing_is_right():
    images, labels = _images()
    finding = _check(images, labels, Preprocessing("unit", "bgr"))
    assert finding["suggested"] is None and finding["class_order"] is None and finding["lines"] == []


def test_own_preprocessing_layer_means_nothing_to_pass():
    images, labels = _images()

    def raw_model(x):  # a model that divides by 255 itself, trained on BGR
        return bgr_unit_model(x / 255.0)

    probs = raw_model(feed(images, "raw+bgr"))
    confusion = np.diag(np.bincount(labels, minlength=2))
    finding = check_input(raw_model, images, labels, current=Preprocessing("raw", "bgr"), current_probs=probs,
                          classes=CLASSES, confusion=confusion, rescaling_layer="rescaling")
    assert finding["suggested"] is None and finding["lines"] == []
    assert finding["notes"] == ["The model holds its own preprocessing layer 'rescaling': raw 0..255 pixels are fed, "
                                "no --preprocess is needed."]


def test_class_order_from_a_permuted_confusion_matrix():
    names = ["a", "b", "c", "d"]
    # rows true, columns predicted: outputs 0 and 2 swapped, one class well predicted
    confusion = np.array([[2, 0, 40, 0], [0, 45, 0, 1], [38, 1, 3, 0], [0, 2, 0, 44]])
    order, diagonal, permuted = permutation_fit(confusion)
    assert order.tolist() == [2, 1, 0, 3] and permuted > diagonal + 0.4
    images, labels = _images(10)
    finding = check_input(lambda x: np.full((len(x), 4), 0.25), np.zeros((0, 4, 4, 3), np.uint8),
                          np.zeros(0, np.int64), current=Preprocessing("unit"), current_probs=np.zeros((0, 4)),
                          classes=names, confusion=confusion, class_source="sorted alphabetically")
    assert finding["class_order"] == ["c", "b", "a", "d"]
    assert finding["lines"] == [f"Class order mismatch: accuracy {diagonal:.2f} with the class order sorted "
                                f"alphabetically; {permuted:.2f} if the model's outputs are in the order c,b,a,d. "
                                "If that is the order the model was trained with, pass --classes c,b,a,d (or a "
                                "classes.txt beside the model)."]
    # a good model's matrix is its own best permutation: nothing said
    _, d, p = permutation_fit(np.array([[40, 5], [6, 39]]))
    assert d == p
    # a weak model's real confusion (classes 0 and 1 often mistaken for each other) is not an order problem
    weak = np.array([[25, 55, 20], [50, 30, 20], [10, 10, 80]])
    _, d, p = permutation_fit(weak)
    assert p - d >= 0.10 and p < 1.5 * d
    finding = check_input(lambda x: x, np.zeros((0, 4, 4, 3), np.uint8), np.zeros(0, np.int64),
                          current=Preprocessing("unit"), current_probs=np.zeros((0, 3)), classes=["a", "b", "c"],
                          confusion=weak)
    assert finding["class_order"] is None and finding["lines"] == []


def test_clearly_better_needs_gain_and_significance():
    rng = np.random.default_rng(1)
    a = rng.random(512) < 0.5
    assert not clearly_better(a, a)
    b = a.copy()
    b[np.flatnonzero(~a)[:40]] = True   # +40/512 = 7.8 points: below the 10-point gain
    assert not clearly_better(b, a)
    b[np.flatnonzero(~b)[:30]] = True   # +70/512 = 13.7 points, all wins
    assert clearly_better(b, a)
    assert not clearly_better(np.ones(5, bool), np.zeros(5, bool))  # 5 wins: z = 2.2 < 3


def test_sample_is_seeded_and_bounded():
    rows = np.arange(10_000)
    s1, s2 = sample_rows(rows), sample_rows(rows)
    assert len(s1) == SAMPLE_SIZE and np.array_equal(s1, s2) and np.all(np.diff(s1) > 0)


def test_history_and_expected_accuracy():
    assert expected_from_training({"history": {"val_accuracy": [0.5, 0.93]}}) == (0.93, "val_accuracy of the last "
                                                                                       "epoch")
    assert expected_from_training({"test_accuracy": 0.9, "history": {}}) == (0.9, "test accuracy after training")
    assert expected_from_training({"loss": [1.0]}) is None and expected_from_training(None) is None
    images, labels = _images()
    finding = _check(images, labels, Preprocessing("unit", "bgr"), expected_accuracy=(0.99, "val_accuracy"),
                     run_accuracy=0.6)
    assert finding["lines"] == ["Accuracy 0.60 here but 0.99 in training (val_accuracy): the images, their "
                                "preprocessing or the class order may differ from training; see --preprocess, "
                                "--channel-order and --classes."]


def test_a_model_that_answers_one_class_is_no_evidence():
    """An untrained model answers a constant whose class depends on the input's range or order; the
    option that happens to make it answer the commonest class is not a finding."""
    images, _ = _images(200)
    labels = np.r_[np.zeros(60, np.int64), np.ones(140, np.int64)]   # 30 % / 70 %

    def constant(x):  # class 0 for RGB input, class 1 once the channels are reversed
        red_first = x[..., 0].mean() > x[..., 2].mean()
        return np.tile([0.9, 0.1] if red_first else [0.1, 0.9], (len(x), 1))

    images[..., 0] = 200
    images[..., 2] = 10
    probs = constant(feed(images, "unit"))
    finding = check_input(constant, images, labels, current=Preprocessing("unit"), current_probs=probs,
                          classes=CLASSES, confusion=np.array([[60, 0], [140, 0]]))
    assert finding["accuracies"]["unit"] == 0.3 and finding["accuracies"]["unit+bgr"] == 0.7
    assert finding["suggested"] is None and finding["lines"] == []


def _brightness_images(n: int = 200, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4, 4, 3) uint8 grey-ish pictures, class 1 bright and class 0 dark: colour tells nothing."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    base = np.where(labels == 1, 190, 50)[:, None, None, None]
    return np.clip(base + rng.integers(-40, 41, (n, 4, 4, 3)), 0, 255).astype(np.uint8), labels


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_a_colour_blind_caffe_model_is_told_caffe_not_caffe_with_bgr():
    """Trained through resnet.preprocess_input on RGB ('caffe': mean-subtracted, unscaled); it reads
    brightness only, so 'caffe+bgr' scores the same. The README's one option is named, not two."""
    def caffe_model(x):  # dark below -30 after the mean is taken away; anything in -30..30 (scaled input): bright
        m = x.mean(axis=(1, 2, 3))
        dark = m < -30
        return _softmax(np.stack([dark, ~dark], axis=1) * 4.0)

    images, labels = _brightness_images()
    finding = _check(images, labels, Preprocessing("unit"), model=caffe_model)
    assert finding["accuracies"]["caffe"] == finding["accuracies"]["caffe+bgr"] == 1.0
    assert finding["suggested"] == "caffe", finding
    assert finding["lines"][0].endswith("Re-run with --preprocess caffe.")


def test_no_mismatch_when_the_run_reproduces_training():
    """An under-trained model (think BatchNormalization's running statistics) that scores 0.5 on the 0..1
    input it was trained on, as in training, and better on unscaled input: the preprocessing is right."""
    def odd_model(x):
        m = x.mean(axis=(1, 2, 3))
        return _softmax(np.stack([-(m - 120), m - 120], axis=1) / 10)  # 0..1 input: always 'blue'

    images, labels = _brightness_images()
    current = Preprocessing("unit")
    unit_accuracy = float((odd_model(feed(images, current)).argmax(axis=1) == labels).mean())
    without = _check(images, labels, current, model=odd_model)
    assert without["suggested"] == "raw" and without["lines"][0].startswith("Preprocessing mismatch")
    finding = _check(images, labels, current, model=odd_model,
                     expected_accuracy=(unit_accuracy + 0.02, "val_accuracy"), run_accuracy=unit_accuracy)
    assert finding["suggested"] is None and finding["lines"] == []
    assert finding["notes"][0].startswith(f"Accuracy {unit_accuracy:.2f} here matches {unit_accuracy + 0.02:.2f} in "
                                          "training (val_accuracy), so unit 0..1 is kept, though the model scores 1.00")
    # training reached far more than the run: the mismatch stands
    far = _check(images, labels, current, model=odd_model, expected_accuracy=(0.95, "val_accuracy"),
                 run_accuracy=unit_accuracy)
    assert far["suggested"] == "raw"


def test_a_stored_finding_is_judged_again_with_trainings_accuracy():
    """A run reused from the cache was checked without --history: the history given later drops the claim."""
    from core.model.input_check import judged_with_training

    finding = {"sample": 255, "current": "unit", "suggested": "imagenet", "class_order": None,
               "accuracies": {"unit": 0.47, "imagenet": 0.73}, "rescaling_layer": None, "notes": [],
               "lines": ["Preprocessing mismatch: accuracy 0.47 with unit 0..1; 0.73 with ..."]}
    judged = judged_with_training(finding, (0.48, "val_accuracy of the last epoch"), 0.47)
    assert judged["suggested"] is None and judged["lines"] == []
    assert judged["notes"] == ["Accuracy 0.47 here matches 0.48 in training (val_accuracy of the last epoch), so "
                               "unit 0..1 is kept, though the model scores 0.73 with torchvision ImageNet "
                               "normalisation on 255 sampled images: better than in training, on input it was not "
                               "trained on."]
    assert judged_with_training(finding, (0.90, "val_accuracy"), 0.47) is None   # training did far better
    assert judged_with_training(finding, None, 0.47) is None
    assert judged_with_training({**finding, "suggested": None}, (0.48, "v"), 0.47) is None
