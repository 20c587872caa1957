"""Image properties and atypicality: OpenCV measures checked against NumPy, kNN distances against brute
force, error rates in each property's tails with exact hand-computed numbers, and a run whose dark
images are wrong more often saying so."""

import cv2
import numpy as np
import pandas as pd
import pytest

from core.diagnose import duplicates  # noqa: F401  (registers the kind that shares the scan)
from core.diagnose import properties as props
from core.run import derived
from core.run.store import RunStore
from core.run.write import write_run


def test_properties_match_numpy_on_random_images():
    rng = np.random.default_rng(0)
    for shape in [(30, 50), (64, 48, 3), (300, 600, 3)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        got = props.image_properties(img)
        small = props._shrunk(img, props.PROPERTY_SIZE)  # measured at <= 256 px, long side
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY) if small.ndim == 3 else small
        assert got["brightness"] == pytest.approx(gray.mean() / 255, abs=1e-6)
        assert got["contrast"] == pytest.approx(gray.std() / 255, abs=1e-6)
        lap = cv2.Laplacian(gray, cv2.CV_32F)
        assert got["blur"] == pytest.approx(lap.var(), rel=1e-4)
        assert (got["height"], got["width"], got["size"]) == (shape[0], shape[1], shape[0] * shape[1])
        assert got["aspect"] == pytest.approx(shape[1] / shape[0])
        assert got["grayscale"] == (len(shape) == 2)
    gray_rgb = np.repeat(rng.integers(0, 256, (20, 20, 1), dtype=np.uint8), 3, axis=2)
    assert props.image_properties(gray_rgb)["grayscale"]
    sharp = (np.indices((40, 40)).sum(axis=0) % 2 * 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2)
    assert props.image_properties(blurred)["blur"] < props.image_properties(sharp)["blur"] / 100
    with pytest.raises(ValueError, match=r"expected a non-empty uint8 image .* Received: dtype=float64"):
        props.image_properties(np.zeros((4, 4)))


def _scene(rng, *, h=48, w=64, blank=False, grain=None):
    """A random-colour ground with a filled shape (or, ``blank``, a dot at its top edge) and film grain."""
    img = np.ones((h, w, 3)) * rng.uniform(0, 255, 3)
    colour = rng.uniform(0, 255, 3)
    while np.abs(colour - img[0, 0]).sum() < 150:
        colour = rng.uniform(0, 255, 3)
    if blank:
        cv2.circle(img, (int(rng.integers(0, w)), 0), 3, tuple(colour.tolist()), -1)
    else:
        r = int(rng.integers(5, 12))
        cv2.circle(img, (int(rng.integers(r, w - r)), int(rng.integers(r, h - r))), r, tuple(colour.tolist()), -1)
    grain = rng.uniform(2, 14) if grain is None else grain
    return np.clip(np.rint(img + rng.normal(0, grain, img.shape)), 0, 255).astype(np.uint8)


def test_subject_share_tells_an_empty_ground_from_a_shape_whatever_the_grain_and_colours():
    rng = np.random.default_rng(7)
    shapes = np.array([props.subject_share(_scene(rng)) for _ in range(200)])
    blanks = np.array([props.subject_share(_scene(rng, blank=True)) for _ in range(50)])
    assert blanks.max() < shapes.min()  # every nearly blank picture below every picture of a shape
    assert blanks.max() < 0.01 and np.median(shapes) > 0.05
    # grain is not a subject: the same shape under heavy grain keeps nearly the same share
    clean, grainy = (props.subject_share(_scene(np.random.default_rng(3), grain=g)) for g in (0.0, 20.0))
    assert abs(grainy - clean) < 0.02
    # colour, not gray: a red disc on a green ground of the same luminance is a subject
    iso = np.zeros((40, 40, 3), np.uint8)
    iso[:] = (0, 150, 0)
    cv2.circle(iso, (20, 20), 10, (200, 50, 0), -1)
    gray = cv2.cvtColor(iso, cv2.COLOR_RGB2GRAY)
    assert abs(int(gray[20, 20]) - int(gray[0, 0])) < 3  # the same gray level
    assert props.subject_share(iso) == pytest.approx(np.pi * 100 / 1600, abs=0.05)
    # a subject touching up to half of the border: the ground is still what the border mostly is
    touching = np.zeros((40, 40), np.uint8)
    touching[:, :18] = 200
    assert props.subject_share(touching) == pytest.approx(18 / 40, abs=0.05)
    # a textured object filling the frame (its border is the object) is not an empty picture
    texture = cv2.GaussianBlur(rng.integers(0, 256, (48, 48)).astype(np.float32), (0, 0), 2.0)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    assert props.subject_share(texture) > 0.25  # (a step raised with the border's spread gave 0.001)
    # measured together (a scan's chunk, grouped by size) as one by one
    mixed = [_scene(rng) for _ in range(5)] + [_scene(rng, h=40, w=30) for _ in range(3)] + [touching, iso]
    np.testing.assert_allclose(props.subject_shares(mixed[::-1]), [props.subject_share(m) for m in mixed[::-1]])
    # sizes: a large photo is measured shrunk, the share kept
    big = cv2.resize(_scene(np.random.default_rng(5), grain=0.0), (640, 480), interpolation=cv2.INTER_NEAREST)
    assert props.subject_share(big) == pytest.approx(props.subject_share(_scene(np.random.default_rng(5), grain=0.0)),
                                                     abs=0.02)


def test_knn_atypicality_matches_brute_force():
    rng = np.random.default_rng(1)
    emb = rng.normal(0, 1, (60, 5)).astype(np.float32)
    labels = rng.integers(0, 3, 60)
    distance, z, pct = props.knn_atypicality(emb, labels, k=3, max_reference=1000)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for i in range(60):
        same = np.flatnonzero((labels == labels[i]) & (np.arange(60) != i))
        d = np.sort(1 - unit[same] @ unit[i])[:3]
        assert distance[i] == pytest.approx(d.mean(), abs=1e-5)
    for c in range(3):  # robust z and percentile are within the class
        d = distance[labels == c].astype(float)
        mad = 1.4826 * np.median(np.abs(d - np.median(d)))
        assert np.allclose(z[labels == c], (d - np.median(d)) / mad, atol=1e-4)
        assert pct[labels == c].min() == 0 and pct[labels == c].max() == 1
    # a sample of the class bounds the work and still finds the odd one out
    tight = np.tile([1.0, 0, 0, 0, 0], (40, 1)).astype(np.float32) + rng.normal(0, 0.05, (40, 5)).astype(np.float32)
    tight[7] = [0, 1.0, 0, 0, 0]
    _, z_small, _ = props.knn_atypicality(tight, np.zeros(40, int), k=3, max_reference=8, seed=0)
    assert np.argmax(z_small) == 7 and z_small[7] > 10
    with pytest.raises(ValueError, match=r"k must be >= 1 and max_reference >= 2. Received: k=0"):
        props.knn_atypicality(emb, labels, k=0)


def test_error_rates_in_the_tails_with_exact_numbers():
    # class 0 'shirt': 20 images, brightness 0.00..0.95; the 2 darkest and 1 other are wrong
    # class 1 'coat': 20 images, all right, brightness constant (no tail: every value ties)
    brightness = np.r_[np.arange(20) / 20, np.full(20, 0.5)]
    labels = np.r_[np.zeros(20, int), np.ones(20, int)]
    correct = np.ones(40, bool)
    correct[[0, 1, 10]] = False
    grayscale = np.r_[np.zeros(10, bool), np.ones(30, bool)]
    table = props.property_error_rates({"brightness": brightness, "grayscale": grayscale}, labels, correct,
                                       classes=["shirt", "coat"], tail=0.1, min_count=2)
    shirt = table[(table["class"] == "shirt") & (table["property"] == "brightness")].iloc[0]
    assert (shirt["n"], shirt["errors"], shirt["error_rate"]) == (20, 3, 0.15)
    assert (shirt["low_n"], shirt["low_errors"], shirt["low_rate"]) == (2, 2, 1.0)
    assert shirt["low_ratio"] == pytest.approx(1 / 0.15) and shirt["low_threshold"] == pytest.approx(0.095)
    assert (shirt["high_n"], shirt["high_errors"], shirt["high_rate"]) == (2, 0, 0.0)
    coat = table[(table["class"] == "coat") & (table["property"] == "brightness")].iloc[0]
    assert coat["low_n"] == 0 and np.isnan(coat["low_rate"]) and np.isnan(coat["high_ratio"])
    pooled = table[(table["class"] == props.ALL_CLASSES) & (table["property"] == "brightness")].iloc[0]
    assert (pooled["n"], pooled["errors"], pooled["low_n"], pooled["low_errors"]) == (40, 3, 2, 2)
    gray = table[(table["class"] == "shirt") & (table["property"] == "grayscale")].iloc[0]
    assert (gray["low_n"], gray["low_errors"], gray["high_n"], gray["high_errors"]) == (10, 2, 10, 1)
    findings = props.error_rate_findings(table, tail=0.1, min_errors=2)
    assert findings["text"].iloc[0].startswith("errors are 13.3x more frequent among the darkest 10% of each class")
    assert findings["text"].iloc[1] == ("errors are 6.7x more frequent among the darkest 10% of shirt: "
                                        "100% (2 of 2) vs 15% overall")
    assert findings["text"].iloc[2] == "errors are 2.7x more frequent among colour images: 20% (2 of 10) vs 8% overall"
    with pytest.raises(ValueError, match=r"tail must be in \(0, 0.5\). Received: tail=0.6"):
        props.property_error_rates({"brightness": brightness}, labels, correct, classes=["shirt", "coat"], tail=0.6)


@pytest.fixture
def dark_run(tmp_path):
    """400 images of 2 classes in images.npy; the darkest tenth of class 'shirt' is mostly wrong."""
    rng = np.random.default_rng(2)
    n = 400
    y = np.arange(n) % 2
    level = rng.uniform(40, 220, n)
    images = np.clip(level[:, None, None] + rng.normal(0, 30, (n, 16, 16)), 0, 255).astype(np.uint8)
    brightness = images.reshape(n, -1).mean(axis=1)
    dark_shirts = np.flatnonzero((y == 0) & (brightness <= np.quantile(brightness[y == 0], 0.1)))
    wrong = np.zeros(n, bool)
    wrong[dark_shirts[:-3]] = True  # 17 of the 20 darkest shirts
    wrong[rng.choice(np.flatnonzero(y == 0), 8, replace=False)] = True
    predicted = np.where(wrong, 1 - y, y)
    probs = np.full((n, 2), 0.2, np.float32)
    probs[np.arange(n), predicted] = 0.8
    emb = rng.normal(0, 1, (n, 6)).astype(np.float32)
    return write_run(RunStore(tmp_path), "dark", classes=["shirt", "coat"], y_true=y, probs=probs,
                     paths=[f"test/{i}" for i in range(n)], splits=np.full(n, "test"), embeddings=emb, images=images,
                     data={"name": "arrays", "kind": "synthetic", "path": None, "root": None, "images_in_run": True})


def test_the_kind_says_errors_are_frequent_among_the_darkest_shirts(dark_run):
    stored = derived.get(dark_run, "image_properties")
    findings = stored.table("findings")
    top = findings[findings["class"] == "shirt"].iloc[0]
    assert (top["class"], top["property"], top["side"]) == ("shirt", "brightness", "low")
    assert top["text"].startswith("errors are ") and "darkest 10% of shirt" in top["text"]
    assert top["ratio"] > 3 and stored.summary["top_finding"] == top["text"]
    table = stored.table("properties")
    images = np.asarray(dark_run._pixels)
    assert np.allclose(table["brightness"], images.reshape(len(images), -1).mean(axis=1) / 255, atol=1e-6)
    assert table["atypicality"].notna().all() and len(stored.array("atypicality")) == dark_run.n_images
    # the pixels were decoded once, by the shared scan, which a second kind reads back
    assert derived.status(dark_run, "image_scan") == "current"
    scan_folder = dark_run.derived_info("image_scan").folder
    derived.get(dark_run, "duplicates")
    assert dark_run.derived_info("image_scan").folder == scan_folder


def test_a_run_without_pixels_or_embeddings_still_gets_what_it_can(tmp_path):
    n = 60
    y = np.arange(n) % 2
    probs = np.eye(2, dtype=np.float32)[y]
    run = write_run(RunStore(tmp_path), "bare", classes=["a", "b"], y_true=y, probs=probs,
                    paths=[f"{i}" for i in range(n)], embeddings=np.random.default_rng(0).normal(size=(n, 4)))
    stored = derived.get(run, "image_properties")
    assert any("No image properties" in note and "no pixels" in note for note in stored.summary["notes"])
    assert stored.table("properties")["atypicality"].notna().all()
    assert stored.table("properties")["brightness"].isna().all()
    with pytest.raises(ValueError, match=r"Run 'bare' has neither image files .* nor images.npy"):
        derived.get(run, "image_scan")
    with pytest.raises(ValueError, match=r"thumb_size must be a whole number of pixels in 8..256. Received: "
                                         r"thumb_size=4"):
        derived.get(run, "image_scan", {"thumb_size": 4})


def test_an_undecodable_file_is_a_recorded_skip(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    cv2.imwrite(str(root / "a" / "ok.png"), np.full((10, 10), 90, np.uint8))
    (root / "a" / "broken.png").write_bytes(b"not a png")
    run = write_run(RunStore(tmp_path / "store"), "files", classes=["a"], y_true=np.zeros(2, int),
                    probs=np.ones((2, 1), np.float32), paths=["a/ok.png", "a/broken.png"],
                    data={"name": "d", "kind": "folder", "path": str(root), "root": str(root), "images_in_run": False})
    scan = derived.get(run, "image_scan")
    skipped = scan.table("skipped")
    assert skipped["path"].tolist() == ["a/broken.png"] and "not a decodable image" in skipped["reason"].iloc[0]
    assert scan.array("readable").tolist() == [True, False]
    table = derived.get(run, "image_properties").table("properties")
    assert table["brightness"].iloc[0] == pytest.approx(90 / 255) and pd.isna(table["brightness"].iloc[1])


def _hostile_folder(tmp_path, n: int = 40):
    """A folder run of ``n`` (at least 18) images, some of them hostile: an undecodable file, a missing one, a link
    that leads out of the data root, a path with ``..``, an empty file."""
    root, outside = tmp_path / "data", tmp_path / "outside.png"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(3)
    cv2.imwrite(str(outside), np.full((12, 12), 7, np.uint8))
    paths = []
    for i in range(n):
        paths.append(f"a/{i:03d}.png")
        cv2.imwrite(str(root / paths[-1]), rng.integers(0, 256, (20 + i % 5, 30, 3), dtype=np.uint8))
    (root / "a" / "005.png").write_bytes(b"not a png")
    (root / "a" / "007.png").unlink()
    (root / "a" / "011.png").unlink()
    (root / "a" / "011.png").symlink_to(outside)
    paths[13] = "../outside.png"
    (root / "a" / "017.png").write_bytes(b"")
    run = write_run(RunStore(tmp_path / "store"), "hostile", classes=["a"], y_true=np.zeros(n, int),
                    probs=np.ones((n, 1), np.float32), paths=paths,
                    data={"name": "d", "kind": "folder", "path": str(root), "root": str(root), "images_in_run": False})
    return run


def test_the_scan_in_worker_processes_equals_the_threads_one_and_skips_the_same_files(tmp_path, monkeypatch):
    run = _hostile_folder(tmp_path)
    threads = props.scan_images(run, workers=2)
    monkeypatch.setattr(props, "SCAN_PROCESS_MIN", 8)
    monkeypatch.setattr(props, "SCAN_PROCESS_CHUNK", 6)  # 7 tasks, in order
    used, real = [], props.in_processes
    monkeypatch.setattr(props, "in_processes", lambda *a, **k: used.append(1) or real(*a, **k))
    workers = props.scan_images(run, workers=2)
    assert used == [1]
    for name in ("thumbnails", "content_size", "digest", "readable"):
        assert np.array_equal(getattr(workers, name), getattr(threads, name)), name
    pd.testing.assert_frame_equal(workers.properties, threads.properties)
    pd.testing.assert_frame_equal(workers.skipped, threads.skipped)
    reasons = dict(zip(workers.skipped["row"], workers.skipped["reason"]))
    assert sorted(reasons) == [5, 7, 11, 13, 17]
    assert "not a decodable image" in reasons[5] and reasons[7].startswith("file not found")
    assert "outside the data set root" in reasons[11] and "outside the data set root" in reasons[13]
    assert "empty file" in reasons[17]
    assert workers.readable.sum() == 35 and (workers.content_size[workers.readable] > 0).all()


def test_a_scan_whose_worker_processes_cannot_start_reads_in_threads(tmp_path, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    run = _hostile_folder(tmp_path, n=20)
    expected = props.scan_images(run, workers=2)
    monkeypatch.setattr(props, "SCAN_PROCESS_MIN", 8)

    def broken(*args, **kwargs):
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")
        yield  # a generator, as the real one

    monkeypatch.setattr(props, "in_processes", broken)
    got = props.scan_images(run, workers=2)
    assert np.array_equal(got.thumbnails, expected.thumbnails)
    pd.testing.assert_frame_equal(got.skipped, expected.skipped)


def test_a_data_root_that_may_not_be_read_skips_every_row_with_the_reason(tmp_path):
    import shutil

    run = _hostile_folder(tmp_path, n=20)
    shutil.rmtree(tmp_path / "data")
    scan = props.scan_images(run)
    assert scan.readable.sum() == 0 and len(scan.skipped) == 20
    assert scan.skipped["reason"].str.contains("Refusing to read images: the run's data root").all()
