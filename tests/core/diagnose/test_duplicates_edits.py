"""Duplicates, the parts added for edits: the tone fit, the other mirror of a pair, the bound calibrated on
the data set's own edited copies, and a shift whose padding replicates the edge the object touches."""

import cv2
import numpy as np

from core.data.datasets import load_fashion_mnist
from core.diagnose import duplicates as dup
from core.diagnose.properties import canvas_thumbnail
from tests.core.diagnose.test_duplicates import _scan, smooth_edged, textured


def test_tone_fit_is_the_least_squares_fit_also_for_a_flat_image():
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 255, 700).astype(np.float32)
    t = (5 + 0.7 * q + 0.2 * q * q / 255 + rng.normal(0, 3, 700)).astype(np.float32)
    x = np.stack([np.ones_like(q), q, q * q / 255], axis=1).astype(np.float64)
    coef = np.linalg.lstsq(x, t.astype(np.float64), rcond=None)[0]
    residual, got = dup._fit(t, q)
    assert np.allclose(got, coef, atol=1e-4)
    assert abs(residual - np.sqrt(np.mean((t - x @ coef) ** 2))) < 1e-4
    flat_residual, _ = dup._fit(np.arange(100, dtype=np.float32), np.full(100, 7, np.float32))
    assert abs(flat_residual - np.arange(100).std()) < 1e-3  # nothing to fit: what is left is t's spread


def test_a_pair_that_also_matches_mirrored_is_registered_both_ways_and_the_better_kept():
    base = smooth_edged(textured(21))
    rotated = cv2.warpAffine(base, cv2.getRotationMatrix2D((14, 14), 4, 1.0), (28, 28))
    thumbs, sizes, _ = _scan([base, rotated])
    cent, _ = dup.centroids(thumbs, sizes, np.arange(2))
    one = np.array([1]), np.array([0])
    mirrored_only = dup.verify_pairs(thumbs, sizes, *one, np.array([3]), cent)  # variant 3: mirrored left-right
    both = dup.verify_pairs(thumbs, sizes, *one, np.array([3]), cent,
                            alternative=(np.array([1]), np.array([0]), np.array([0])))
    assert not dup.accepted(mirrored_only)[0]  # the mirror was the wrong guess: the copy is lost
    assert both["flip"].iloc[0] == "" and dup.accepted(both)[0]
    assert 3 < abs(both["rotation"].iloc[0]) < 5


def test_the_detail_bound_is_measured_on_the_data_sets_own_edited_copies():
    images = [textured(i) for i in range(60)]
    thumbs, sizes, _ = _scan(images)
    bound, n = dup.calibrate_detail(thumbs, sizes, np.arange(60), sample=60, seed=3)
    assert n >= 50 and 0.5 < bound < 1.0
    assert bound == dup.calibrate_detail(thumbs, sizes, np.arange(60), sample=60, seed=3)[0]  # seeded
    assert dup.calibrate_detail(thumbs, sizes, np.arange(10), sample=60)[0] is None  # too few to say


def test_the_cheap_look_bound_follows_what_the_data_sets_own_copies_leave():
    textured_set = _scan([textured(i) for i in range(60)])
    smooth_set = _scan([cv2.GaussianBlur(textured(i), (0, 0), 2.0) for i in range(60)])
    detail, sharp_bound, n = dup.calibrate(*textured_set[:2], np.arange(60), sample=60, seed=3)
    assert detail == dup.calibrate_detail(*textured_set[:2], np.arange(60), sample=60, seed=3)[0] and n >= 50
    smooth_bound = dup.calibrate(*smooth_set[:2], np.arange(60), sample=60, seed=3)[1]
    assert dup.QUICK_FLOOR <= smooth_bound < sharp_bound <= dup.MAX_QUICK  # smooth copies leave less
    assert dup.calibrate(*textured_set[:2], np.arange(10), sample=60)[1:] == (dup.MAX_QUICK, 10)  # too few: default
    # a copy within the bound is measured and kept; a pair the bound refuses keeps no measures
    img = textured(7)
    ok, checked = _pair_verdicts([img, np.clip(img.astype(int) + 6, 0, 255).astype(np.uint8)], [(0, 1, 0)])
    assert ok[0] and checked["quick"].iloc[0] < dup.QUICK_FLOOR
    thumbs, sizes, _ = _scan([img, np.clip(img + np.random.default_rng(1).normal(0, 12, img.shape), 0, 255)
                              .astype(np.uint8)])
    cent, _ = dup.centroids(thumbs, sizes, np.arange(2))
    loose = dup.verify_pairs(thumbs, sizes, np.array([1]), np.array([0]), np.array([0]), cent)
    tight = dup.verify_pairs(thumbs, sizes, np.array([1]), np.array([0]), np.array([0]), cent,
                             max_quick=float(loose["quick"].iloc[0]) - 0.01)
    assert np.isfinite(loose["residual"].iloc[0]) and np.isinf(tight["residual"].iloc[0])


def test_a_shift_that_replicates_the_edge_an_object_touches_is_a_candidate_among_fashion_mnist():
    """1,500 Fashion-MNIST training images and 30 of them shifted by 3 px (padding replicating the edge, which
    garments touch: the centroid moves by a pixel or two). Searched with one neighbour per image, the moved
    windows of both frames find 30 of 30 (those of the re-centred frame alone: 26; none: 22; seed 5); at least
    28 must be candidates."""
    ds = load_fashion_mnist()
    rng = np.random.default_rng(5)
    base = rng.choice(np.flatnonzero(ds.splits == "train"), 1500, replace=False)
    images = [ds.pixels[i] for i in base]
    truth = []
    for src in rng.choice(1500, 30, replace=False):
        dy, dx = (int(v) for v in rng.choice([-3, 3], 2))
        moved = cv2.warpAffine(images[src], np.float32([[1, 0, dx], [0, 1, dy]]), (28, 28),
                               borderMode=cv2.BORDER_REPLICATE)
        truth.append((int(src), len(images)))
        images.append(moved)
    scanned = [canvas_thumbnail(im, size=32) for im in images]
    thumbs, sizes = np.stack([t for t, _ in scanned]), np.array([hw for _, hw in scanned], np.int16)
    found = dup.candidate_pairs(thumbs, sizes, np.arange(len(images)), neighbours=1)
    pairs = {(min(a, b), max(a, b)) for a, b in zip(found["query"].tolist(), found["match"].tolist())}
    hits = sum(pair in pairs for pair in truth)
    assert hits >= 28, f"{hits} of 30 shifted copies are candidates"


def _pair_verdicts(images, pairs):
    """``accepted`` and the verification's rows for the (a, b, variant) pairs of ``images`` (thumbnails as the
    scan makes them; b is the query)."""
    thumbs, sizes, _ = _scan(images)
    cent, _ = dup.centroids(thumbs, sizes, np.arange(len(images)))
    b, a, v = (np.array([p[i] for p in pairs]) for i in (1, 0, 2))
    checked = dup.verify_pairs(thumbs, sizes, b, a, v, cent)
    return dup.accepted(checked), checked


def test_a_copy_resaved_as_jpeg_is_recognised_by_reencoding_its_twin():
    img = smooth_edged(textured(41))
    saved = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_GRAYSCALE)
    other = smooth_edged(textured(41, texture_seed=7))  # the same outline, another texture
    assert dup.reencoded(img.astype(np.float32), saved.astype(np.float32)) < 0.5  # either way round
    assert dup.reencoded(saved.astype(np.float32), img.astype(np.float32)) < 0.5
    assert dup.reencoded(img.astype(np.float32), other.astype(np.float32)) > 5
    ok, checked = _pair_verdicts([img, saved, other], [(0, 1, 0), (0, 2, 0)])
    assert ok.tolist() == [True, False]
    assert checked["reencoded"].iloc[0] <= dup.REENCODED_MAX


def test_a_crop_resized_back_is_judged_in_the_coarser_frame_whichever_image_ecc_starts_from():
    """A crop to 85% resized back, compared with its original resampled as the crop was (in the crop's frame):
    a few gray levels left, not the 5-12 of the crop resampled twice; the same whichever is the template."""
    img = smooth_edged(textured(43))
    crop = cv2.resize(img[2:26, 1:25], (28, 28), interpolation=cv2.INTER_LINEAR)  # 24 of 28 px: 86%
    ok, checked = _pair_verdicts([img, crop], [(0, 1, 1), (1, 0, 1), (0, 1, 0)])
    assert ok.all(), checked[["residual", "allowed", "scale"]]
    assert (checked["residual"] < 3).all()
    assert np.allclose(checked["scale"], 28 / 24, atol=0.03)


# Fashion-MNIST training images: look-alike dresses (another neckline, straps, another hem) that the half-pixel
# allowance of the previous version accepted as copies; and 334, 4849: one photo in two colours (a twin).
LOOK_ALIKES = ((32985, 58509), (11742, 32985), (37839, 23108), (19907, 17424), (17875, 59892), (2265, 37351))


def test_fashion_mnist_look_alikes_are_refused_and_shifted_noisy_copies_of_them_are_not():
    """(Rotated copies of these dresses are a weak spot: turned by 3°, their sharp vertical edges leave more than
    a quarter pixel and the smoothed template's resampling allow, and 5 of 6 are refused; over the development
    sets' mixed classes 78 of 80 rotated copies pass.)"""
    ds = load_fashion_mnist()
    rng = np.random.default_rng(3)
    for a, b in LOOK_ALIKES:
        img = ds.pixels[a]
        moved = cv2.warpAffine(img, np.float32([[1, 0, 1], [0, 1, -1]]), (28, 28), borderMode=cv2.BORDER_REPLICATE)
        noisy = np.clip(moved + rng.normal(0, 4, moved.shape), 0, 255).astype(np.uint8)
        ok, checked = _pair_verdicts([img, ds.pixels[b], noisy], [(0, 1, 0), (0, 2, 0)])
        assert ok.tolist() == [False, True], (a, b, checked[["residual", "allowed", "structure"]])


def test_a_pair_far_from_a_copy_is_refused_before_its_measures_are_taken():
    img = smooth_edged(textured(45))
    noise = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)
    ok, checked = _pair_verdicts([img, noise, smooth_edged(textured(46))], [(0, 1, 0), (0, 2, 0)])
    assert not ok.any()
    far, other = checked.iloc[0], checked.iloc[1]
    assert far["start"] > dup.MAX_START and far["ecc"] == 0 and np.isinf(far["residual"])  # no ECC run at all
    assert other["ecc"] == 1 and other["quick"] > dup.MAX_QUICK and np.isinf(other["residual"])  # ECC, no measures


def test_ecc_leaves_out_the_moving_images_padded_edges_when_asked():
    """A garment shifted 3 px, padded black: from the exact start, ECC counting the padding drifts (a quarter to
    half a pixel on these), leaving it out keeps the start."""
    ds = load_fashion_mnist()
    exact = np.float32([[1, 0, 3], [0, 1, 3]])
    for i in (0, 5):
        img = ds.pixels[i].astype(np.float32)
        moved = cv2.warpAffine(img, exact, (28, 28), borderMode=cv2.BORDER_CONSTANT)
        assert np.abs(dup.ecc(img, moved, exact)[1] - exact).max() > 0.2
        assert np.abs(dup.ecc(img, moved, exact, masked=True)[1] - exact).max() < 0.02


def test_shifted_copies_padded_black_are_accepted_from_either_frames_variant():
    """40 Fashion-MNIST training images shifted 3 px down and right, padded black, verified from the re-centred
    frame's variant 0 and from the unaligned frame's window moved that way: 39 and 38 of 40 pass (before a near
    miss was registered again with the padding left out: 35 from variant 0); at least 37 must."""
    ds = load_fashion_mnist()
    rng = np.random.default_rng(0)
    unaligned_down_right = dup._ALIGNED_VARIANTS + dup.UNALIGNED.index((1.0, dup.SHIFT_STEP, dup.SHIFT_STEP))
    assert dup.unaligned(unaligned_down_right) and not dup.unaligned(0)
    chosen = rng.choice(60000, 40, replace=False)
    for variant in (0, unaligned_down_right):
        passed = 0
        for i in chosen:
            moved = cv2.warpAffine(ds.pixels[i], np.float32([[1, 0, 3], [0, 1, 3]]), (28, 28),
                                   borderMode=cv2.BORDER_CONSTANT)
            ok, _ = _pair_verdicts([ds.pixels[i], moved], [(0, 1, variant)])
            passed += int(ok[0])
        assert passed >= 37, f"variant {variant}: {passed} of 40"
