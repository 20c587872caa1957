"""Duplicates: exact and near copies (re-encoded, resized, shifted by 1-2 px with noise) found within and
across splits from real files, look-alikes (same silhouette, other texture) left alone, leaks into the
evaluated split called out, and bad input refused in one line."""

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from core import derived
from core.cli import main
from core.diagnose import duplicates as dup
from core.diagnose.properties import canvas_thumbnail, pixel_digest
from core.runs import write_run
from core.store import RunStore


def textured(shape_seed: int, texture_seed: int | None = None, size: int = 28) -> np.ndarray:
    """A gray object on black (like Fashion-MNIST): an ellipse from ``shape_seed`` filled with a smooth
    random texture from ``texture_seed`` (same shape seed, other texture: a look-alike)."""
    rng = np.random.default_rng(shape_seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size / 2 + rng.uniform(-2, 2, 2)
    ry, rx = rng.uniform(7, 11, 2)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    tex_rng = np.random.default_rng(10_000 + (shape_seed if texture_seed is None else texture_seed))
    tex = cv2.GaussianBlur(tex_rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 1.0)
    tex = (tex - tex.min()) / (tex.max() - tex.min()) * 180 + 60
    img = np.zeros((size, size), np.uint8)
    img[mask] = tex[mask].astype(np.uint8)
    return img


def shifted(img: np.ndarray, dy: int, dx: int, *, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    out = cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), img.shape[::-1], borderValue=0)
    if noise:
        out = np.clip(out + np.random.default_rng(seed).normal(0, noise, out.shape), 0, 255).astype(np.uint8)
    return out


def jpeg(img: np.ndarray, quality: int = 90) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)


@pytest.fixture
def folder_run(tmp_path):
    """train/{a,b}/ 16 originals each, test/{a,b}/ 6 others, and planted copies of train images in test.

    Returns (run, planted) with planted = {name: (train path, test path, kind)}.
    """
    root = tmp_path / "data"
    rows = []  # (path, split, label, pixels or None for a file copy)

    def put(path, img, label):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / path), img)
        rows.append((path, path.split("/")[0], label))

    for c, label in enumerate("ab"):
        for i in range(16):
            put(f"train/{label}/{i}.png", textured(100 * c + i), c)
        for i in range(6):
            put(f"test/{label}/{i}.png", textured(500 + 100 * c + i), c)
    source = textured(3)  # train/a/3.png
    planted = {}
    shutil.copy(root / "train/a/3.png", root / "test/a/copy.png")  # the same file
    rows.append(("test/a/copy.png", "test", 0))
    planted["file copy"] = ("train/a/3.png", "test/a/copy.png", "exact")
    put("test/a/resaved.png", textured(4), 0)  # identical pixels, another file
    planted["png re-save"] = ("train/a/4.png", "test/a/resaved.png", "exact")
    put("test/a/jpeg.jpg", jpeg(textured(5)), 0)
    planted["jpeg"] = ("train/a/5.png", "test/a/jpeg.jpg", "near")
    put("test/a/twice.png", cv2.resize(textured(6), (56, 56), interpolation=cv2.INTER_CUBIC), 0)
    planted["resized 2x"] = ("train/a/6.png", "test/a/twice.png", "near")
    put("test/a/shift1.png", shifted(textured(7), 1, -1, noise=5, seed=1), 0)
    planted["shift 1px + noise"] = ("train/a/7.png", "test/a/shift1.png", "near")
    put("test/b/shift2.png", shifted(textured(101), -2, 2, noise=5, seed=2), 1)
    planted["shift 2px + noise"] = ("train/b/1.png", "test/b/shift2.png", "near")
    put("test/b/relabelled.png", shifted(source, 0, 1, noise=4, seed=3), 1)  # a copy of an 'a' filed under 'b'
    planted["other label"] = ("train/a/3.png", "test/b/relabelled.png", "near")
    put("test/a/lookalike.png", textured(8, texture_seed=999), 0)  # train/a/8.png's outline, other texture
    put("val/a/0.png", textured(9), 0)  # a val copy of a training image: within-data-set, not a test leak
    planted["val copy"] = ("train/a/9.png", "val/a/0.png", "exact")
    rows.append(("test/a/missing.png", "test", 0))  # listed but never written
    paths = [r[0] for r in rows]
    y = np.array([r[2] for r in rows])
    n = len(rows)
    rng = np.random.default_rng(0)
    predicted = y.copy()
    predicted[paths.index("test/b/relabelled.png")] = 0  # the model answers the training copy's label
    predicted[paths.index("test/a/jpeg.jpg")] = 1  # an error with a near copy in train
    probs = np.full((n, 2), 0.1, np.float32)
    probs[np.arange(n), predicted] = 0.9
    embeddings = rng.normal(0, 1, (n, 8)).astype(np.float32)
    for src, dst, _ in planted.values():
        embeddings[paths.index(dst)] = embeddings[paths.index(src)] + rng.normal(0, 0.05, 8)
    embeddings[paths.index("test/a/twice.png")] = -embeddings[paths.index("train/a/6.png")]  # features disagree
    run = write_run(RunStore(tmp_path / "store"), "folder", classes=["a", "b"], y_true=y, probs=probs, paths=paths,
                    splits=np.array([r[1] for r in rows]), embeddings=embeddings,
                    data={"name": "tiny", "kind": "folder", "path": str(root), "root": str(root),
                          "images_in_run": False})
    return run, planted


def _pairs(table: pd.DataFrame) -> dict[tuple[str, str], dict]:
    return {(r["path_a"], r["path_b"]): r for r in table.to_dict("records")}


def test_planted_copies_are_found_with_kind_splits_and_labels(folder_run):
    run, planted = folder_run
    stored = derived.get(run, "duplicates")
    pairs = _pairs(stored.table("pairs"))
    for what, (src, dst, kind) in planted.items():
        assert (src, dst) in pairs, f"missed the {what}"
        rec = pairs[(src, dst)]
        assert rec["kind"] == kind, what
        assert rec["split_a"] == "train" and rec["split_b"] == dst.split("/")[0]
        assert rec["labels_agree"] == (what != "other label"), what
        assert 0 < rec["similarity"] <= 1 and rec["residual"] <= rec["allowed"] or kind == "exact", what
        assert rec["transform"], what
    assert ("train/a/3.png", "test/b/relabelled.png") in pairs and ("test/a/copy.png", "test/b/relabelled.png") in pairs
    # the one-pixel shift is measured exactly: the copy is the original moved down 1 and left 1
    shift = pairs[("train/a/7.png", "test/a/shift1.png")]
    assert abs(shift["shift_y"] - 1) < 0.3 and abs(shift["shift_x"] + 1) < 0.3, (shift["shift_y"], shift["shift_x"])
    assert pairs[("train/a/3.png", "test/a/copy.png")]["transform"] == "identical pixels"
    # the look-alike (same outline, other texture) and every unrelated image are left alone
    assert not any("lookalike" in a or "lookalike" in b for a, b in pairs)
    expected = {(s, d) for s, d, _ in planted.values()} | {("train/a/3.png", "test/b/relabelled.png"),
                                                           ("test/a/copy.png", "test/b/relabelled.png")}
    assert set(pairs) == expected
    assert stored.summary["n_label_disagreements"] == 2 and stored.summary["n_exact"] == 3
    # features are reported beside the pixels' verdict, not instead of it
    assert pairs[("train/a/6.png", "test/a/twice.png")]["embedding_cosine"] < -0.9
    assert pairs[("train/a/5.png", "test/a/jpeg.jpg")]["embedding_cosine"] > 0.9


def test_test_errors_with_a_training_copy_come_first(folder_run):
    run, _ = folder_run
    stored = derived.get(run, "duplicates")
    leaks = stored.table("eval_with_train_copy")
    # every test image with a training copy, once, wrong ones first
    assert sorted(leaks["path"]) == sorted(["test/a/copy.png", "test/a/resaved.png", "test/a/jpeg.jpg",
                                            "test/a/twice.png", "test/a/shift1.png", "test/b/shift2.png",
                                            "test/b/relabelled.png"])
    assert leaks["correct"].tolist() == [False, False] + [True] * 5
    relabelled = leaks.set_index("path").loc["test/b/relabelled.png"]
    assert relabelled["copy_path"] == "train/a/3.png" and not relabelled["labels_agree"]
    assert relabelled["predicted_is_copy_label"]  # it answered the label its training twin carries
    assert stored.summary["n_eval_errors_with_train_copy"] == 2
    # per-row arrays: groups of copies and how many pairs each row is in
    paths = list(run.predictions["path"])
    group, copies = stored.array("group"), stored.array("copies")
    assert group[paths.index("train/a/3.png")] == group[paths.index("test/b/relabelled.png")] >= 0
    assert copies[paths.index("train/a/3.png")] == 2 and group[paths.index("test/a/lookalike.png")] == -1


def test_unreadable_rows_are_skipped_with_their_reason(folder_run):
    run, _ = folder_run
    derived.get(run, "duplicates")
    skipped = derived.get(run, "image_scan").table("skipped")
    assert skipped["path"].tolist() == ["test/a/missing.png"]
    assert "file not found" in skipped["reason"].iloc[0] and "missing.png" in skipped["reason"].iloc[0]


def test_the_cell_index_finds_the_same_pairs_as_the_exact_search(folder_run, monkeypatch):
    run, _ = folder_run
    exact = set(_pairs(derived.get(run, "duplicates").table("pairs")))
    monkeypatch.setattr(dup, "_SMALL", 10)  # k-means cells even for these ~70 images
    assert set(_pairs(derived.get(run, "duplicates", force=True).table("pairs"))) == exact


def test_min_embedding_cosine_drops_near_pairs_whose_features_disagree(folder_run):
    run, _ = folder_run
    pairs = _pairs(derived.get(run, "duplicates", {"min_embedding_cosine": 0.5}).table("pairs"))
    assert ("train/a/6.png", "test/a/twice.png") not in pairs
    assert ("train/a/5.png", "test/a/jpeg.jpg") in pairs and ("train/a/3.png", "test/a/copy.png") in pairs


def test_cli_writes_the_csv_and_refuses_bad_input_in_one_line(folder_run, tmp_path, capsys):
    run, planted = folder_run
    out = tmp_path / "dups.csv"
    store = str(run.location.parent)
    assert main(["duplicates", "folder", "--store", store, "--out", str(out)]) == 0
    csv = pd.read_csv(out)
    assert list(csv.columns[:7]) == ["path_a", "path_b", "split_a", "split_b", "similarity", "kind", "labels_agree"]
    assert len(csv) == len(planted) + 1  # and the test-test pair of the two copies of train/a/3.png, last
    assert csv["split_a"].ne(csv["split_b"]).tolist() == [True] * len(planted) + [False]
    assert main(["duplicates", "folder", "--store", store, "--cross-split", "--out", str(out)]) == 0
    assert pd.read_csv(out)["split_a"].ne(pd.read_csv(out)["split_b"]).all()
    capsys.readouterr()
    assert main(["duplicates", "nope", "--store", store]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "'nope'" in err[0]
    assert "transform" in csv.columns and csv["transform"].notna().all()
    with pytest.raises(ValueError, match=r"duplicates: neighbours must be a number in \[1, 100\]. Received: neighbours=0"):
        derived.get(run, "duplicates", {"neighbours": 0})
    with pytest.raises(ValueError, match=r"duplicates: min_embedding_cosine must be None or a number in \[-1, 1\]. "
                                         r"Received: 'high'"):
        derived.get(run, "duplicates", {"min_embedding_cosine": "high"})


def test_paths_outside_the_data_root_are_not_read(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    cv2.imwrite(str(root / "in.png"), textured(1))
    cv2.imwrite(str(tmp_path / "secret.png"), textured(1))  # identical pixels, outside the root
    run = write_run(RunStore(tmp_path / "store"), "r", classes=["a"], y_true=np.zeros(2, int),
                    probs=np.ones((2, 1), np.float32), paths=["in.png", "../secret.png"],
                    data={"name": "d", "kind": "folder", "path": str(root), "root": str(root), "images_in_run": False})
    stored = derived.get(run, "duplicates")
    assert stored.summary["n_pairs"] == 0
    reason = derived.get(run, "image_scan").table("skipped").set_index("path").loc["../secret.png", "reason"]
    assert "outside the data set root" in reason


# --------------------------------------------------------------------------- pure functions

def _scan(images):
    thumbs, sizes, digests = [], [], []
    for img in images:
        t, hw = canvas_thumbnail(img, size=32)
        thumbs.append(t), sizes.append(hw), digests.append(pixel_digest(img))
    return np.stack(thumbs), np.array(sizes, np.int16), np.array(digests, np.uint64)


def _verify(images, pairs):
    """find_duplicates' verification of the given (a, b) pairs, from the thumbnails of ``images``."""
    thumbs, sizes, _ = _scan(images)
    cent, _ = dup.centroids(thumbs, sizes, np.arange(len(images)))
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    variant = np.array([p[2] if len(p) > 2 else 0 for p in pairs])
    return dup.verify_pairs(thumbs, sizes, b, a, variant, cent)


def _accepted(checked):
    return (dup.plausible(checked) & (checked["residual"] <= checked["allowed"])
            & (checked["structure"] <= dup.MAX_STRUCTURE) & (checked["peak"] <= dup.MAX_PEAK)).to_numpy()


def test_registration_recovers_shift_flip_and_rotation_and_rejects_look_alikes():
    base = textured(11)
    rotated = cv2.warpAffine(base, cv2.getRotationMatrix2D((14, 14), 4, 1.0), (28, 28))
    images = [base, shifted(base, 2, -1), shifted(base, -1, 2, noise=6, seed=4), base[:, ::-1].copy(), rotated,
              textured(11, texture_seed=5), textured(12)]
    # query b's variant: 0 as it is, 3 mirrored left-right
    r = _verify(images, [(0, 1), (0, 2), (0, 3, 3), (0, 4), (0, 5), (0, 6)])
    assert (abs(r["shift_y"].iloc[0] - 2) < 0.3) and (abs(r["shift_x"].iloc[0] + 1) < 0.3)
    assert r["residual"].iloc[0] < 1.0  # a pure shift: the same pixels
    assert r["flip"].iloc[2] == "h" and r["residual"].iloc[2] < 1.0
    assert 3 < abs(r["rotation"].iloc[3]) < 5
    assert _accepted(r).tolist() == [True, True, True, True, False, False]
    assert dup.transform_text(r.iloc[2].to_dict()) == "flipped left-right"
    assert dup.transform_text(r.iloc[3].to_dict()).startswith("rotated 4°")


def test_exact_groups_are_listed_as_a_bounded_star():
    blank = np.zeros((20, 20), np.uint8)
    images = [blank] * 40 + [textured(i) for i in range(5)]
    thumbs, sizes, digests = _scan(images)
    pairs = dup.find_duplicates(thumbs, sizes, digests, np.ones(45, bool))
    exact = pairs[pairs["kind"] == "exact"]
    assert len(exact) == 39 and set(exact["a"]) == {0} and set(exact["b"]) == set(range(1, 40))  # not 780 pairs
    assert dup.exact_groups(digests, np.ones(45, bool)).tolist() == [0] * 40 + [-1] * 5
    assert (pairs["kind"] == "near").sum() == 0
    with pytest.raises(ValueError, match=r"max_ratio must be a number in \[0, 10\]. Received: max_ratio=20"):
        dup.find_duplicates(thumbs, sizes, digests, np.ones(45, bool), max_ratio=20)


def test_canvas_thumbnail_keeps_small_images_and_halves_a_doubled_one_onto_the_same_grid():
    img = textured(3)
    thumb, hw = canvas_thumbnail(img, size=32)
    assert hw == (28, 28) and np.array_equal(thumb[:28, :28], img) and not thumb[28:].any()
    doubled = cv2.resize(img, (56, 56), interpolation=cv2.INTER_NEAREST)
    thumb2, hw2 = canvas_thumbnail(doubled, size=32)
    assert hw2 == (28, 28) and np.array_equal(thumb2[:28, :28], img)  # a box average of 2x2 equal pixels
    assert canvas_thumbnail(np.zeros((100, 40), np.uint8), size=32)[1] == (25, 10)


def test_a_one_pixel_shift_of_a_larger_picture_is_matched_at_half_a_thumbnail_pixel():
    big = cv2.resize(textured(21), (64, 64), interpolation=cv2.INTER_CUBIC)
    r = _verify([big, shifted(big, 1, -1, noise=4, seed=7)], [(0, 1)])  # 32 px thumbnails: a half-pixel shift
    assert _accepted(r).tolist() == [True]
    assert abs(r["shift_y"].iloc[0] - 0.5) < 0.2 and abs(r["shift_x"].iloc[0] + 0.5) < 0.2


def test_docstring_examples_hold():
    import doctest

    from core.diagnose import duplicates as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
