"""Duplicates: exact and near copies (re-encoded, resized, shifted by 1-2 px with noise) found within and
across splits from real files, look-alikes (same silhouette, other texture) left alone, leaks into the
evaluated split called out, and bad input refused in one line."""

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from core.cli import main
from core.diagnose import duplicates as dup
from core.diagnose.properties import canvas_thumbnail, pixel_digest
from core.run import derived
from core.run.store import RunStore
from core.run.write import write_run


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
    assert stored.summary["n_second_sources"] == 0
    # features are reported beside the pixels' verdict, not instead of it
    assert pairs[("train/a/6.png", "test/a/twice.png")]["embedding_cosine"] < -0.9
    assert pairs[("train/a/5.png", "test/a/jpeg.jpg")]["embedding_cosine"] > 0.9


def test_a_test_copy_matched_to_a_second_training_image_keeps_only_its_best_fit(folder_run, monkeypatch):
    run, _ = folder_run
    paths = run.predictions["path"].astype(str).tolist()
    copy, source, other = (paths.index(p) for p in ("test/a/jpeg.jpg", "train/a/5.png", "train/a/8.png"))
    real = dup.find_duplicates

    def with_a_second_source(*args, **kwargs):
        found = real(*args, **kwargs)
        fit = found[(found["a"] == min(copy, source)) & (found["b"] == max(copy, source))].iloc[0]
        extra = {**fit.to_dict(), "a": min(copy, other), "b": max(copy, other),
                 "residual": fit["allowed"] * 0.95}  # accepted too, but a worse fit than its source
        return pd.concat([found, pd.DataFrame([extra])], ignore_index=True)

    monkeypatch.setattr(dup, "find_duplicates", with_a_second_source)
    stored = derived.get(run, "duplicates")
    pairs = _pairs(stored.table("pairs"))
    assert ("train/a/5.png", "test/a/jpeg.jpg") in pairs and ("train/a/8.png", "test/a/jpeg.jpg") not in pairs
    assert stored.summary["n_second_sources"] == 1
    assert any("a copy has one source" in note for note in stored.summary["notes"])


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
    assert skipped["reason"].iloc[0] == "file not found"  # the path is in its own column, not repeated


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
    with pytest.raises(ValueError,
                       match=r"duplicates: neighbours must be a number in \[1, 100\]. Received: neighbours=0"):
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
    return dup.accepted(checked)


def smooth_edged(img: np.ndarray) -> np.ndarray:
    """``img`` drawn anti-aliased, as photos and Fashion-MNIST are: rendered at 4x and brought back."""
    big = cv2.resize(img, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
    return cv2.resize(cv2.GaussianBlur(big, (0, 0), 2.0), img.shape[::-1], interpolation=cv2.INTER_AREA)


def test_registration_recovers_shift_flip_and_rotation_and_rejects_look_alikes():
    # (a hard-edged ellipse, not anti-aliased, turned by 4° changes by up to 200 gray levels along a few boundary
    # pixels, more than a quarter pixel of misregistration and the smoothed template's resampling allow: that
    # copy is refused; an anti-aliased one, as photos and Fashion-MNIST are, passes)
    base = smooth_edged(textured(11))
    rotated = cv2.warpAffine(base, cv2.getRotationMatrix2D((14, 14), 4, 1.0), (28, 28))
    images = [base, shifted(base, 2, -1), shifted(base, -1, 2, noise=6, seed=4), base[:, ::-1].copy(), rotated,
              smooth_edged(textured(11, texture_seed=5)), smooth_edged(textured(12))]
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


def nearly_blank(rng: np.random.Generator, h: int = 48, w: int = 64) -> np.ndarray:
    """A colour picture of one light tone with film-grain noise and, at most, a small dot touching a border or a
    thin line along one: its subject sits where the comparison leaves a band out (the frame's edges)."""
    img = np.ones((h, w, 3)) * rng.uniform(180, 250, 3)
    kind, side = rng.integers(3), rng.integers(4)
    colour = tuple(float(v) for v in rng.uniform(0, 150, 3))
    if kind == 0:
        along = int(rng.integers(0, w if side < 2 else h))
        inset = int(rng.integers(0, 3))
        y, x = [(inset, along), (h - 1 - inset, along), (along, inset), (along, w - 1 - inset)][side]
        cv2.circle(img, (x, y), int(rng.integers(2, 5)), colour, -1)
    elif kind == 1:
        t = int(rng.integers(1, 3))
        region = [np.s_[:t], np.s_[-t:], np.s_[:, :t], np.s_[:, -t:]][side]
        img[region] = colour
    img += rng.normal(0, rng.uniform(0.5, 3), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def test_nearly_blank_pictures_are_not_called_copies_of_each_other_and_a_note_says_why():
    # every picture differs (a dot or a line somewhere on the border, or nothing), yet the compared area (the frame
    # less its edges) is blank in all of them: a blank picture of one gray would pass as a copy of any of them, so
    # the comparison tells nothing; textured objects and their shifted copies beside them are still found
    rng = np.random.default_rng(2026)
    blanks = [nearly_blank(rng) for _ in range(80)]
    objects = [cv2.cvtColor(smooth_edged(textured(s)), cv2.COLOR_GRAY2RGB) for s in range(6)]
    copies = [cv2.cvtColor(shifted(smooth_edged(textured(s)), 1, -2, noise=3, seed=s), cv2.COLOR_GRAY2RGB)
              for s in range(6)]
    thumbs, sizes, digests = _scan(blanks + objects + copies)
    pairs = dup.find_duplicates(thumbs, sizes, digests, np.ones(len(thumbs), bool))
    near = set(zip(pairs["a"][pairs["kind"] == "near"], pairs["b"][pairs["kind"] == "near"]))
    assert {(80 + i, 86 + i) for i in range(6)} <= near
    assert [pair for pair in near if min(pair) < 80] == []
    assert pairs.attrs["n_flat"] > 0  # candidates the rest of the measures would have passed


def _many_pairs(tmp_path):
    """Thumbnails of 60 textured objects and their shifted, noisy copies, memory-mapped from a .npy file as the
    image scan keeps them, and 480 candidate pairs: every copy with its original and with 7 other objects."""
    originals = [textured(s) for s in range(60)]
    copies = [shifted(img, 1, -2, noise=4, seed=i) for i, img in enumerate(originals)]
    thumbs, sizes, _ = _scan(originals + copies)
    np.save(tmp_path / "thumbnails.npy", thumbs)
    mapped = np.load(tmp_path / "thumbnails.npy", mmap_mode="r", allow_pickle=False)
    cent, _ = dup.centroids(thumbs, sizes, np.arange(len(thumbs)))
    query = np.repeat(np.arange(60, 120), 8)
    match = (np.arange(60)[:, None] + np.arange(8)[None, :]) % 60
    return mapped, sizes, cent, query, match.ravel(), np.zeros(len(query), np.int64)


def test_worker_processes_give_the_verdicts_threads_give(tmp_path, monkeypatch):
    mapped, sizes, cent, query, match, variant = _many_pairs(tmp_path)
    monkeypatch.setattr(dup, "VERIFY_CHUNK", 64)
    monkeypatch.setattr(dup, "PROCESS_MIN", 128)
    used, real = [], dup._verify_in_processes
    monkeypatch.setattr(dup, "_verify_in_processes", lambda *a: used.append(real(*a)) or used[-1])
    said = []
    in_processes = dup.verify_pairs(mapped, sizes, query, match, variant, cent, workers=2,
                                    progress=lambda m, f: said.append((m, f)))
    assert len(used) == 1 and len(used[0]) == len(query) // 64 + 1  # 8 chunks of 64 and one of 32, in workers
    in_threads = dup.verify_pairs(mapped, sizes, query, match, variant, cent, workers=0)
    assert len(used) == 1
    pd.testing.assert_frame_equal(in_processes, in_threads)
    copies = dup.accepted(in_processes)
    assert set(zip(in_processes["a"][copies], in_processes["b"][copies])) == {(i, i + 60) for i in range(60)}
    assert said[-1] == ("duplicates: verified 480/480 candidate pairs", 1.0)


def test_worker_processes_that_cannot_start_leave_the_work_to_threads_and_say_so(tmp_path, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    mapped, sizes, cent, query, match, variant = _many_pairs(tmp_path)
    monkeypatch.setattr(dup, "PROCESS_MIN", 128)

    def broken(*args):
        raise BrokenProcessPool("A task has failed to un-serialize")

    monkeypatch.setattr(dup, "_verify_in_processes", broken)
    said = []
    got = dup.verify_pairs(mapped, sizes, query, match, variant, cent, workers=2,
                           progress=lambda m, f: said.append(m))
    assert said[0] == ("duplicates: worker processes failed (BrokenProcessPool: A task has failed to "
                       "un-serialize); verifying in threads")
    pd.testing.assert_frame_equal(got, dup.verify_pairs(mapped, sizes, query, match, variant, cent, workers=0))


def test_a_copy_keeps_one_source_unless_its_sources_are_copies_of_each_other():
    rank = np.array([0, 0, 0, 0, 1, 1, 1])  # rows 0-3 in train, 4-6 in test
    # test 4 fits train 0 (0.3) better than train 1 (0.7), and 0 and 1 are not paired: 4-1 goes;
    # test 5 fits train 2 and train 3, which are copies of each other: both stay;
    # train 0 has two test copies (4 and 6): a source may have many copies, both stay; 0-4 exact stays
    a = np.array([0, 1, 2, 3, 2, 0, 0])
    b = np.array([4, 4, 5, 5, 3, 6, 4])
    near = np.array([True, True, True, True, True, True, False])
    ratio = np.array([0.3, 0.7, 0.5, 0.2, 0.4, 0.9, 0.0])
    assert dup.one_source(a, b, near, ratio, rank).tolist() == [True, False, True, True, True, True, True]
    # the same pairs listed the other way round and in another order: the same verdicts
    order = np.array([6, 3, 1, 5, 0, 2, 4])
    assert dup.one_source(b[order], a[order], near[order], ratio[order], rank).tolist() == \
        [True, True, False, True, True, True, True]
    # within one split nothing is dropped: no direction to tell a copy from its source
    assert dup.one_source(a, b, near, ratio, np.zeros(7, np.int64)).all()


def test_docstring_examples_hold():
    import doctest

    from core.diagnose import duplicates as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- planted edits, real files

EDITS = ("byte copy", "png re-encode", "jpeg q60", "flip left-right", "flip upside down", "crop", "rotate", "scale",
         "shift", "blur", "noise", "gamma", "brightness/contrast")


def edited(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``img`` made the way people and pipelines make them (seeded)."""
    h, w = img.shape[:2]
    if kind in ("byte copy", "png re-encode", "jpeg q60"):
        return img
    if kind == "flip left-right":
        return img[:, ::-1].copy()
    if kind == "flip upside down":
        return img[::-1].copy()
    if kind == "crop":  # to 85-92% of the side, at a random place, resized back
        f = rng.uniform(0.85, 0.92)
        ch, cw = round(h * f), round(w * f)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return cv2.resize(img[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "rotate":
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(3, 5) * rng.choice([-1, 1])), 1.0)
        return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    if kind == "scale":
        f = float(rng.choice([0.7, 1.5]))
        return cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    if kind == "shift":
        step = max(1, round(w / 14))
        dy, dx = (int(v) for v in rng.choice([-step, step], 2))
        return cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REPLICATE)
    if kind == "blur":
        return cv2.GaussianBlur(img, (0, 0), 0.8 * w / 28)
    if kind == "noise":
        return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    if kind == "gamma":
        return (255 * (img / 255.0) ** float(rng.choice([0.8, 1.25]))).astype(np.uint8)
    if kind == "brightness/contrast":
        return np.clip(img * rng.uniform(0.7, 0.85) + rng.uniform(10, 40), 0, 255).astype(np.uint8)
    if kind == "grayscale":
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    raise ValueError(kind)


def planted_folder(tmp_path, train: list, test: list, label_of: list, lookalikes: list, kinds, per_kind: int,
                   seed: int):
    """train/ and test/ as files, ``per_kind`` copies of training images per kind in test/, and the
    look-alikes ((train index, image)) in test/. Returns (run, {(train path, copy path): kind}, look-alike pairs)."""
    root = tmp_path / "data"
    rng = np.random.default_rng(seed)
    paths, labels, splits = [], [], []

    def put(rel, img, label, ext=".png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        params = [cv2.IMWRITE_JPEG_QUALITY, 60] if ext == ".jpg" else []
        assert cv2.imwrite(str(root / (rel + ext)), img, params)
        paths.append(rel + ext), labels.append(label), splits.append(rel.split("/")[0])

    for i, img in enumerate(train):
        put(f"train/c{label_of[i]}/{i:04d}", img, label_of[i])
    for i, img in enumerate(test):
        put(f"test/c{label_of[len(train) + i]}/{i:04d}", img, label_of[len(train) + i])
    copies = {}
    for j, src in enumerate(rng.choice(len(train), per_kind * len(kinds), replace=False)):
        kind = kinds[j // per_kind]
        rel = f"test/c{label_of[src]}/copy{j:03d}"
        if kind == "byte copy":
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / paths[src], root / (rel + ".png"))
            paths.append(rel + ".png"), labels.append(label_of[src]), splits.append("test")
        else:
            put(rel, edited(train[src], kind, rng), label_of[src], ".jpg" if kind == "jpeg q60" else ".png")
        copies[(paths[src], paths[-1])] = kind
    looks = []
    for j, (src, img) in enumerate(lookalikes):
        put(f"test/c{label_of[src]}/look{j:03d}", img, label_of[src])
        looks.append((paths[src], paths[-1]))
    classes = sorted(set(labels))
    y = np.array([classes.index(v) for v in labels])
    probs = np.eye(len(classes), dtype=np.float32)[y]
    run = write_run(RunStore(tmp_path / "store"), "planted", classes=[f"c{c}" for c in classes], y_true=y,
                    probs=probs, paths=paths, splits=np.array(splits),
                    data={"name": "planted", "kind": "folder", "path": str(root), "root": str(root),
                          "images_in_run": False})
    return run, copies, looks


def _found(run):
    table = derived.get(run, "duplicates").table("pairs")
    return {(a, b): t for a, b, t in zip(table["path_a"], table["path_b"], table["transform"])}


@pytest.mark.slow
def test_fashion_mnist_copies_made_13_ways_are_found_and_the_closest_look_alikes_are_not(tmp_path):
    from core.data.datasets import load_fashion_mnist

    ds = load_fashion_mnist()
    rng = np.random.default_rng(7)
    pool = rng.permutation(np.flatnonzero(ds.splits == "train"))
    base, outside = pool[:400], pool[400:6400]
    train, test = base[:300], base[300:]
    looks = []
    for src in rng.choice(len(train), 8, replace=False):  # the same class's closest image, pixel by pixel
        same = outside[ds.labels[outside] == ds.labels[train[src]]]
        d = ((ds.pixels[same].reshape(len(same), -1).astype(np.float32)
              - ds.pixels[train[src]].reshape(-1).astype(np.float32)) ** 2).sum(axis=1)
        looks.append((int(src), ds.pixels[same[d.argmin()]]))
    run, copies, lookalike_pairs = planted_folder(tmp_path, list(ds.pixels[train]), list(ds.pixels[test]),
                                                  list(ds.labels[base]), looks, EDITS, 2, seed=7)
    found = _found(run)
    missed = [kind for pair, kind in copies.items() if pair not in found]
    assert len(missed) <= 2 and len(set(missed)) == len(missed), missed  # >= 24 of 26, every kind at least once
    assert sum(pair in found for pair in lookalike_pairs) <= 1
    flips = {found[p] for p, k in copies.items() if k == "flip left-right" and p in found}
    assert flips and all(t.startswith("flipped left-right") for t in flips)
    assert all(found[p].startswith("flipped upside down") for p, k in copies.items() if k == "flip upside down"
               and p in found)
    assert all("cropped to" in found[p] for p, k in copies.items() if k == "crop" and p in found)
    assert all(found[p] == "identical pixels" for p, k in copies.items() if k in ("byte copy", "png re-encode"))
    cross = {p for p in found if p[0].startswith("train/") and p[1].startswith("test/")}
    others = cross - set(copies) - set(lookalike_pairs)
    assert len(others) <= 1, sorted(others)


def scene(rng: np.random.Generator, layout: list | None = None, size: int = 96) -> tuple[np.ndarray, list]:
    """A colour scene of 4-6 shapes on a gradient with a fine texture; with ``layout``, a sibling scene
    (one shape moved 3-6 px and recoloured, another texture): a look-alike."""
    if layout is None:
        layout = [(rng.uniform(0, size, 2), rng.uniform(8, 24, 2), rng.uniform(0, 180), rng.uniform(0, 255, 3))
                  for _ in range(int(rng.integers(4, 7)))]
    else:
        k = int(rng.integers(len(layout)))
        c, r, a, col = layout[k]
        layout = layout[:k] + [(c + rng.choice([-1, 1], 2) * rng.uniform(3, 6, 2), r, a,
                                np.clip(col + rng.normal(0, 40, 3), 0, 255))] + layout[k + 1:]
    t = np.linspace(0, 1, size)[:, None, None]
    img = (np.array([40, 90, 160]) * (1 - t) + np.array([200, 170, 60]) * t) * np.ones((size, size, 3))
    img = img.astype(np.float32)
    for c, r, a, col in layout:
        cv2.ellipse(img, (int(c[0]), int(c[1])), (int(r[0]), int(r[1])), float(a), 0, 360, col.tolist(), -1,
                    cv2.LINE_AA)
    texture = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 1.2)
    return np.clip(img + 12 * texture[:, :, None] / texture.std(), 0, 255).astype(np.uint8), layout


@pytest.mark.slow
def test_colour_copies_at_96_px_including_grayscale_are_found_and_sibling_scenes_are_not(tmp_path):
    rng = np.random.default_rng(11)
    scenes = [scene(rng) for _ in range(140)]
    images = [s[0] for s in scenes]
    looks = [(int(i), scene(rng, scenes[i][1])[0]) for i in rng.choice(100, 6, replace=False)]
    run, copies, lookalike_pairs = planted_folder(tmp_path, images[:100], images[100:], [i % 5 for i in range(140)],
                                                  looks, EDITS + ("grayscale",), 1, seed=11)
    found = _found(run)
    missed = [kind for pair, kind in copies.items() if pair not in found]
    assert len(missed) <= 2, missed  # >= 12 of 14
    assert sum(pair in found for pair in lookalike_pairs) <= 1
    gray = [p for p, k in copies.items() if k == "grayscale"]
    assert all("converted to grayscale" in found[p] for p in gray if p in found)
    cross = {p for p in found if p[0].startswith("train/") and p[1].startswith("test/")}
    assert len(cross - set(copies) - set(lookalike_pairs)) <= 1


def test_the_verifications_hand_made_arithmetic_agrees_with_numpy():
    """``_fit``, ``_percentiles`` and ``describe_transform`` replace numpy.linalg / np.percentile calls for speed:
    the same numbers as the library routines on random input (and on a flat one for the fit)."""
    rng = np.random.default_rng(11)
    for n in (50, 700, 1024):
        q = rng.uniform(0, 255, n).astype(np.float32)
        t = (0.7 * q + 0.001 * q * q + 12 + rng.normal(0, 3, n)).astype(np.float32)
        x = np.stack([np.ones(n), q, q.astype(np.float64) ** 2 / 255.0], axis=1)
        coef = np.linalg.lstsq(x, t.astype(np.float64), rcond=None)[0]
        residual, got = dup._fit(t, q)
        assert np.allclose(got, coef, rtol=1e-5, atol=1e-6)  # normal equations: a little less exact than QR
        assert residual == pytest.approx(np.sqrt(np.mean((t - x @ coef) ** 2)), rel=1e-6)
        for ps in ((1, 99), (0, 50, 100), (37.5,)):
            assert np.allclose(dup._percentiles(q, ps), np.percentile(q, ps), rtol=0, atol=1e-4)
    flat = np.full(300, 9.0, np.float32)
    assert dup._fit(rng.uniform(0, 255, 300).astype(np.float32), flat)[1].shape == (3,)
    assert dup._percentiles(np.float32([4.0]), (1, 99)) == [4.0, 4.0]
    for flip, mirror in (("", np.eye(2)), ("h", np.diag([-1.0, 1.0])), ("v", np.diag([1.0, -1.0]))):
        for _ in range(20):
            g = np.eye(3)
            g[:2, :2] = rng.normal(0, 0.3, (2, 2)) + np.eye(2) @ mirror
            g[:2, 2] = rng.normal(0, 3, 2)
            got = dup.describe_transform(g, flip, (28, 32))
            linear = g[:2, :2] @ mirror
            sv = np.linalg.svd(linear, compute_uv=False)
            centre = np.array([15.5, 13.5, 1.0])
            assert got["anisotropy"] == pytest.approx(sv[0] / sv[1], rel=1e-9)
            assert got["scale"] == pytest.approx(np.sqrt(abs(np.linalg.det(linear))), rel=1e-9)
            assert got["rotation"] == pytest.approx(np.degrees(np.arctan2(linear[1, 0] - linear[0, 1],
                                                                         linear[0, 0] + linear[1, 1])))
            assert (got["shift_x"], got["shift_y"]) == pytest.approx(tuple((g @ centre)[:2] - centre[:2]))
            assert got["proper"] == (np.linalg.det(linear) > 0)


def _painted(gray: np.ndarray, background, foreground) -> np.ndarray:
    """RGB uint8: ``gray`` (0..255) as a blend of two colours, so that its luminance is a straight line of
    ``gray``: the gray structure any two paintings share is the same up to a tone curve."""
    m = gray.astype(np.float64)[..., None] / 255.0
    return np.clip(np.array(background) * (1 - m) + np.array(foreground) * m, 0, 255).astype(np.uint8)


def test_a_recoloured_look_alike_is_no_copy_and_an_edited_colour_copy_still_is(tmp_path):
    """Plain shapes drawn apart in random colours passed as copies (the gray structure matched after a tone
    curve): 2,099 pairs in a user's six-shape folder. A colour channel that rises with brightness in one
    picture and falls in the other cannot come from a brightness, contrast or gamma edit."""
    from core.diagnose import properties  # noqa: F401  (registers the image scan)

    root = tmp_path / "data"
    paths, labels, splits = [], [], []

    def put(rel, img, label):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / rel), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(rel), labels.append(label), splits.append(rel.split("/")[0])

    shapes = [cv2.resize(smooth_edged(textured(s)), (56, 56), interpolation=cv2.INTER_CUBIC) for s in range(8)]
    for i, g in enumerate(shapes):  # light green on maroon: red rises with brightness
        put(f"train/c{i % 2}/{i}.png", _painted(g, (128, 10, 10), (150, 230, 150)), i % 2)
    for i, g in enumerate(shapes[:4]):  # teal on dark red: red falls as brightness rises; the same gray shapes
        put(f"test/c{i % 2}/recoloured{i}.png", _painted(g, (140, 10, 10), (10, 160, 170)), i % 2)
    for i, g in enumerate(shapes[4:], start=4):  # the training picture, brighter and with a gamma: a copy
        edit = np.clip(255 * (_painted(g, (128, 10, 10), (150, 230, 150)) / 255.0) ** 0.8 + 12, 0, 255)
        put(f"test/c{i % 2}/edited{i}.png", edit.astype(np.uint8), i % 2)
    y = np.array(labels)
    run = write_run(RunStore(tmp_path / "store"), "colours", classes=["c0", "c1"], y_true=y,
                    probs=np.eye(2, dtype=np.float32)[y], paths=paths, splits=np.array(splits),
                    data={"name": "colours", "kind": "folder", "path": str(root), "root": str(root),
                          "images_in_run": False})
    stored = derived.get(run, "duplicates")
    found = {(a, b) for a, b in zip(stored.table("pairs")["path_a"], stored.table("pairs")["path_b"])}
    assert {(f"train/c{i % 2}/{i}.png", f"test/c{i % 2}/edited{i}.png") for i in range(4, 8)} <= found
    assert [pair for pair in found if "recoloured" in pair[1]] == []
    note = next(n for n in stored.summary["notes"] if "recoloured" in n)
    assert int(note.split()[0]) >= 4  # they passed every gray measure: the colour check is what refused them
