"""Every data-set layout, class order, decoding of odd image formats, skips with reasons."""

import gzip

import cv2
import numpy as np
import pytest

from core.data.datasets import DatasetError, iter_batches, load_dataset, load_fashion_mnist
from core.data.images import decode_bytes, fit_to_input, read_image
from tests.conftest import write_image


def test_class_folders_sorted_and_corrupt_file_skipped_at_decode(image_tree):
    ds = load_dataset(image_tree)
    assert ds.kind == "folder" and ds.classes == ["cat", "dog", "fox"]
    assert len(ds) == 16 and set(ds.splits) == {"all"}
    batches = list(iter_batches(ds, size=(8, 8), channels=3, batch_size=4))
    decoded = np.concatenate([b.index for b in batches])
    failed = [f for b in batches for f in b.failed]
    assert len(decoded) == 15
    assert [f["path"] for f in failed] == ["dog/broken.jpg"]
    assert failed[0]["reason"].startswith("not a decodable image")  # the path is beside it, not repeated
    assert str(image_tree) not in failed[0]["reason"]
    assert all(b.images.shape[1:] == (8, 8, 3) and b.images.dtype == np.uint8 for b in batches)


def test_split_folders(tmp_path):
    for split in ("train", "val", "test"):
        for c in ("a", "b"):
            write_image(tmp_path / split / c / "0.png", (10, 10, 10))
    ds = load_dataset(tmp_path)
    assert sorted(set(ds.splits)) == ["test", "train", "val"]
    assert ds.paths[0] == "test/a/0.png" and ds.classes == ["a", "b"]


def test_flat_folder_class_names_with_underscores(tmp_path):
    for name in ("homer_simpson_12.jpg", "abraham_grampa_simpson_3.jpg", "homer_simpson_1.jpg"):
        write_image(tmp_path / name, (100, 100, 0))
    (tmp_path / "notes.txt").write_text("x")
    write_image(tmp_path / "nolabel.png", (0, 0, 0))
    ds = load_dataset(tmp_path)
    assert ds.kind == "flat"
    assert ds.classes == ["abraham_grampa_simpson", "homer_simpson"]
    assert sorted(ds.labels.tolist()) == [0, 1, 1]
    reasons = {s["path"]: s["reason"] for s in ds.skipped}
    assert reasons == {"notes.txt": "not an image file (.txt)",
                       "nolabel.png": "name is not <class>_<number>.<ext>"}


def test_csv_manifest_with_splits_and_bad_rows(tmp_path):
    write_image(tmp_path / "img" / "1.png", (1, 2, 3))
    write_image(tmp_path / "img" / "2.png", (1, 2, 3))
    (tmp_path / "m.csv").write_text(
        "path,label,split\nimg/1.png,screw,train\nimg/2.png,nut,test\nimg/missing.png,nut,test\n"
        "../escape.png,nut,test\nimg/1.png,nut,holdout\n")
    ds = load_dataset(tmp_path / "m.csv")
    assert ds.kind == "csv" and ds.classes == ["nut", "screw"]
    assert ds.splits.tolist() == ["train", "test"] and ds.labels.tolist() == [1, 0]
    reasons = [s["reason"] for s in ds.skipped]
    assert reasons == ["file not found", "outside the manifest's folder",
                       "unknown split 'holdout' (train, val, test)"]


def test_class_order_from_classes_txt_and_argument(image_tree):
    (image_tree / "classes.txt").write_text("fox\ncat\ndog\n")
    assert load_dataset(image_tree).classes == ["fox", "cat", "dog"]
    assert load_dataset(image_tree, classes=["dog", "fox", "cat", "owl"]).classes == ["dog", "fox", "cat", "owl"]
    with pytest.raises(DatasetError, match=r"classes not in the given class list: \['fox'\]"):
        load_dataset(image_tree, classes=["cat", "dog", "owl"])


def test_errors_name_the_offending_path(tmp_path):
    with pytest.raises(DatasetError, match="Data path does not exist: '.*nowhere'"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DatasetError, match="Unknown data layout for file"):
        load_dataset(tmp_path / "data.txt")
    (tmp_path / "tree" / "cat").mkdir(parents=True)
    write_image(tmp_path / "tree" / "dog" / "1.png", (0, 0, 0))
    with pytest.raises(DatasetError, match="Class folder has no images: '.*cat'"):
        load_dataset(tmp_path / "tree")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="Unknown layout: '.*empty' has no class folders"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.md").write_text("x")
    with pytest.raises(DatasetError, match="No usable images in '.*junk'.*readme.md: not an image"):
        load_dataset(tmp_path / "junk")
    with pytest.raises(DatasetError, match="Unknown built-in data set 'mnist'"):
        load_dataset(builtin="mnist")


def _idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_idx_files_in_env_dir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    ds = load_fashion_mnist()
    assert len(ds) == 10 and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.splits.tolist().count("test") == 4 and ds.pixels.shape == (10, 28, 28)
    assert ds.labels[6:].tolist() == [0, 1, 2, 3]
    b = next(iter_batches(ds, size=(28, 28), channels=1, batch_size=16))
    assert b.images.shape == (10, 28, 28, 1) and (b.images[..., 0] == ds.pixels).all()


def test_truncated_idx_is_refused(tmp_path, monkeypatch):
    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1])))
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 1, 0])))
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match="Truncated IDX file"):
        load_fashion_mnist()


def test_digits_builtin_needs_nothing():
    ds = load_dataset("digits")
    assert len(ds) == 1797 and ds.pixels.max() == 255
    assert 350 <= (ds.splits == "test").sum() <= 370


# --- decoding -----------------------------------------------------------------

def test_bgr_to_rgb_once(tmp_path):
    bgr = np.zeros((4, 4, 3), np.uint8); bgr[..., 2] = 255       # pure red in OpenCV's order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = read_image(tmp_path / "red.png")
    assert rgb[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp"])
def test_formats_decode(tmp_path, ext):
    img = np.full((6, 5, 3), (30, 60, 90), np.uint8)
    assert cv2.imwrite(str(tmp_path / f"x{ext}"), img)
    out = read_image(tmp_path / f"x{ext}")
    assert out.shape == (6, 5, 3)
    assert np.abs(out[2, 2].astype(int) - [90, 60, 30]).max() <= 3


def test_grayscale_alpha_and_16_bit(tmp_path):
    cv2.imwrite(str(tmp_path / "g.png"), np.full((3, 3), 77, np.uint8))
    assert read_image(tmp_path / "g.png").shape == (3, 3)
    bgra = np.zeros((2, 2, 4), np.uint8); bgra[..., 0] = 255; bgra[0, 0, 3] = 255  # one opaque blue pixel
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    rgba = read_image(tmp_path / "a.png")
    assert rgba[0, 0].tolist() == [0, 0, 255]          # opaque: its colour
    assert rgba[1, 1].tolist() == [0, 0, 255]          # transparent: its colour too, as cv2.imread reads it
    cv2.imwrite(str(tmp_path / "w.png"), np.full((2, 2, 3), 65535, np.uint16))
    wide = read_image(tmp_path / "w.png")
    assert wide.dtype == np.uint8 and wide.max() == 255


def test_fit_to_input_channels_and_size():
    rgb = np.zeros((10, 20, 3), np.uint8); rgb[..., 1] = 200
    gray = fit_to_input(rgb, size=(5, 5), channels=1)
    assert gray.shape == (5, 5, 1) and 100 < gray.mean() < 130
    assert fit_to_input(np.zeros((3, 3), np.uint8), size=(6, 4), channels=3).shape == (6, 4, 3)
    with pytest.raises(ValueError, match="channels must be 1 or 3. Received: channels=4"):
        fit_to_input(rgb, size=(5, 5), channels=4)


def test_undecodable_bytes_name_the_file():
    with pytest.raises(ValueError, match="upload.png: not a decodable image"):
        decode_bytes(b"GIF89a junk", name="upload.png")
    with pytest.raises(ValueError, match="x.jpg: empty file"):
        decode_bytes(b"", name="x.jpg")


def test_large_jpeg_decodes_at_reduced_scale_with_the_same_picture(tmp_path):
    from core.data.images import jpeg_size

    rng = np.random.default_rng(1)
    big = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (0, 0), 8)
    cv2.imwrite(str(tmp_path / "big.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert jpeg_size(np.fromfile(tmp_path / "big.jpg", np.uint8)) == (480, 640)
    assert jpeg_size(np.frombuffer(b"\x89PNG....", np.uint8)) is None
    reduced = read_image(tmp_path / "big.jpg", min_size=(60, 60))
    assert reduced.shape == (60, 80, 3)                 # 1/8 scale still covers 60x60
    full = read_image(tmp_path / "big.jpg")
    assert full.shape == (480, 640, 3)
    a = fit_to_input(reduced, size=(60, 60), channels=3).astype(int)
    b = fit_to_input(full, size=(60, 60), channels=3).astype(int)
    assert np.abs(a - b).mean() < 3                     # the same picture at the model's size
    assert read_image(tmp_path / "big.jpg", min_size=(300, 300)).shape == (480, 640, 3)


def test_model_input_is_the_full_decode_resized_not_the_reduced_jpeg(tmp_path):
    """A user's pipeline decodes a JPEG whole and then resizes it: a 1/8-scale DCT decode gave a 358-px
    picture of stripes another 32x32 input (up to 94 levels apart) and flipped predictions."""
    x = np.arange(358)
    stripes = np.tile(((x // 3) % 2 * 255).astype(np.uint8)[None, :, None], (358, 1, 3))
    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "s.jpg"), stripes, [cv2.IMWRITE_JPEG_QUALITY, 90])
    (tmp_path / "b").mkdir()
    cv2.imwrite(str(tmp_path / "b" / "t.png"), stripes)
    batch = next(iter_batches(load_dataset(tmp_path), size=(32, 32), channels=3, workers=1))
    full = cv2.cvtColor(cv2.imread(str(tmp_path / "a" / "s.jpg")), cv2.COLOR_BGR2RGB)
    expected = cv2.resize(full, (32, 32), interpolation=cv2.INTER_AREA)
    assert np.array_equal(batch.images[0], expected)
    reduced = fit_to_input(read_image(tmp_path / "a" / "s.jpg", min_size=(32, 32)), size=(32, 32), channels=3)
    assert np.abs(reduced.astype(int) - expected).max() > 10   # what the reduced decode would have fed


# --- decompression bombs and symbolic links -------------------------------------

def test_a_30000_pixel_square_png_in_a_folder_is_skipped_with_the_reason(image_tree):
    from tests.core.data.test_images import BOMB_REASON, png_bytes

    (image_tree / "cat" / "big.png").write_bytes(png_bytes(30000, 30000))  # ~110 KB, 2.7 GB decoded
    ds = load_dataset(image_tree)
    assert "cat/big.png" in ds.paths
    batches = list(iter_batches(ds, size=(8, 8), channels=3, batch_size=4, workers=2))
    failed = {f["path"]: f["reason"] for b in batches for f in b.failed}
    assert failed == {"cat/big.png": BOMB_REASON,
                      "dog/broken.jpg": failed["dog/broken.jpg"]}
    assert sum(len(b.index) for b in batches) == 15              # every other image decoded
    (image_tree / "cat" / "big.png").write_bytes(png_bytes(100, 100))
    small = list(iter_batches(ds, size=(8, 8), channels=3, batch_size=4, max_pixels=9_999))
    assert any(f["path"] == "cat/big.png" and "10,000 pixels (100x100) is over the 9,999-pixel limit"
               in f["reason"] for b in small for f in b.failed)


@pytest.fixture
def outside(tmp_path):
    """A folder next to the data set with an image and a sub-folder of images in it."""
    out = tmp_path / "outside"
    write_image(out / "secret.png", (9, 9, 9))
    write_image(out / "private" / "a.png", (9, 9, 9))
    return out


@pytest.mark.parametrize("layout", ["folder", "split folders", "flat"])
def test_symbolic_links_out_of_the_root_are_skipped_in_every_layout(tmp_path, outside, layout):
    root = tmp_path / "data"
    base = root / "train" if layout == "split folders" else root
    if layout == "flat":
        write_image(root / "cat_1.png", (200, 40, 40))
        links = {"cat_2.png": outside / "secret.png", "dog_1.png": outside / "secret.png",
                 "dog_2.png": root / "cat_1.png"}                # the last one stays inside
        expected_paths = ["cat_1.png", "dog_2.png"]
        for name, target in links.items():
            (root / name).symlink_to(target)
        dir_link = root / "private"
    else:
        write_image(base / "cat" / "1.png", (200, 40, 40))
        write_image(base / "cat" / "deep" / "2.png", (200, 40, 40))
        (base / "cat" / "secret.png").symlink_to(outside / "secret.png")       # file link out
        (base / "cat" / "private").symlink_to(outside / "private")             # folder link out
        (base / "cat" / "again.png").symlink_to(base / "cat" / "1.png")       # file link in
        (base / "cat" / "deeper").symlink_to(base / "cat" / "deep")           # folder link in
        (base / "cat" / "loop").symlink_to(base / "cat")                      # back up the tree
        prefix = "train/" if layout == "split folders" else ""
        expected_paths = [f"{prefix}cat/{p}" for p in ("1.png", "again.png", "deep/2.png", "deeper/2.png")]
        dir_link = base / "dog"                                              # a class folder link out
        if layout == "split folders":
            (root / "test").symlink_to(outside)                              # a split folder link out
    dir_link.symlink_to(outside / "private")
    ds = load_dataset(root)
    assert sorted(ds.paths) == expected_paths
    reasons = {s["path"]: s["reason"] for s in ds.skipped}
    out_of_root = "symbolic link pointing outside the data set root"
    if layout == "flat":
        assert reasons == {"cat_2.png": out_of_root, "dog_1.png": out_of_root, "private": out_of_root}
    else:
        expected = {"cat/secret.png": out_of_root, "cat/private": out_of_root,
                    "cat/loop": "symbolic link loop", "dog": out_of_root}
        if layout == "split folders":
            expected = {f"train/{k}": v for k, v in expected.items()} | {"test": out_of_root}
        assert reasons == expected
    assert all((root / p).resolve().is_relative_to(root.resolve()) for p in ds.paths)


def test_a_data_root_reached_through_a_link_keeps_its_own_links(tmp_path, outside):
    real = tmp_path / "real"
    write_image(real / "cat" / "1.png", (200, 40, 40))
    (real / "cat" / "2.png").symlink_to(real / "cat" / "1.png")
    (real / "cat" / "3.png").symlink_to(outside / "secret.png")
    (tmp_path / "alias").symlink_to(real)
    ds = load_dataset(tmp_path / "alias")
    assert ds.paths == ["cat/1.png", "cat/2.png"]
    assert ds.skipped == [{"path": "cat/3.png", "reason": "symbolic link pointing outside the data set root"}]


def test_csv_manifest_refuses_a_link_out_of_its_folder(tmp_path, outside):
    root = tmp_path / "data"
    write_image(root / "1.png", (1, 2, 3))
    (root / "2.png").symlink_to(outside / "secret.png")
    (root / "m.csv").write_text("path,label\n1.png,a\n2.png,b\n")
    ds = load_dataset(root / "m.csv")
    assert ds.paths == ["1.png"]
    assert ds.skipped == [{"path": "2.png", "reason": "outside the manifest's folder"}]
