"""Untrusted images in the dashboard: uploads on "Try an image" and data files in galleries.

The run "files" reads its images from a data folder holding four small PNGs and
``cat/big.png``, a 30000x30000 PNG of about 110 KB (2.7 GB decoded): every
image is truly a cat predicted as a dog, so the confusion page's default cell
shows all five. Sizes in messages are MB of 10^6 bytes, as the uploader shows.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import core.data.images
from core.run.store import RunStore
from core.run.write import write_run
from tests.conftest import write_image
from tests.core.data.test_images import BOMB_REASON, png_bytes
from tests.dashboard import apptest
from tests.dashboard.apptest import APP, artifacts_dir, unescape

ROOT = Path(__file__).resolve().parents[2]


def make_file_run(store_root: Path, data: Path) -> None:
    names = [f"cat/{i}.png" for i in range(4)] + ["cat/big.png"]
    for i, name in enumerate(names[:4]):
        write_image(data / name, (200, 40, 40), size=(30, 40), seed=i)
    (data / "cat" / "big.png").write_bytes(png_bytes(30000, 30000))
    probs = np.tile(np.float32([0.2, 0.8]), (5, 1))
    probs[4] = [0.01, 0.99]  # the bomb first in the gallery (most confident first)
    rng = np.random.default_rng(0)
    write_run(RunStore(store_root), "files", classes=["cat", "dog"], y_true=np.zeros(5, int), probs=probs,
              paths=names, splits=np.full(5, "test"),
              embeddings=rng.normal(size=(5, 4)).astype(np.float32),
              projection=rng.normal(size=(5, 2)).astype(np.float32),
              model={"path": str(data / "missing.keras"), "sha256": "0" * 64, "format": "keras"},
              data={"name": "data", "kind": "folder", "path": str(data), "root": str(data),
                    "n_images": 5, "images_in_run": False})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    make_file_run(root, tmp_path_factory.mktemp("data"))
    with artifacts_dir(root):
        yield root


def open_page(page: str) -> AppTest:
    return apptest.open_page(page, "files")


def test_gallery_names_the_refused_image_and_reruns_decode_nothing(store, monkeypatch):
    st.cache_data.clear()
    decoded = []
    read_image = core.data.images.read_image

    def counting_read_image(path, **kwargs):
        decoded.append(Path(path).name)
        return read_image(path, **kwargs)

    monkeypatch.setattr(core.data.images, "read_image", counting_read_image)
    at = open_page("confusion")
    notes = [unescape(c.value) for c in at.caption if "image unavailable" in c.value]
    bomb = Path(RunStore(store).load("files").data_root) / "cat" / "big.png"
    assert notes == [f"(image unavailable: {bomb}: {BOMB_REASON})"]
    assert len(at.get("image")) == 4
    assert set(decoded) == {"0.png", "1.png", "2.png", "3.png", "big.png"}  # (the overview came first)
    before = len(decoded)
    at.run()                                                    # a rerun: thumbnails come from the cache
    assert not at.exception
    assert len(at.get("image")) == 4 and len(decoded) == before


def upload(name: str, data: bytes, mime: str = "image/png") -> AppTest:
    at = open_page("try_image")
    at.get("file_uploader")[0].upload(name, data, mime).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_an_upload_over_the_pixel_limit_is_refused_from_its_header(store):
    at = upload("big.png", png_bytes(30000, 30000))
    assert [unescape(e.value) for e in at.error] == [f"big.png: {BOMB_REASON}"]
    assert len(at.get("image")) == 0


def test_upload_size_is_given_in_the_unit_the_uploader_shows(store):
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    at = upload("huge.png", png + bytes(12_000_000 - len(png)))   # the uploader shows "12.0MB"
    assert [unescape(e.value) for e in at.error] == ["huge.png: 12.0 MB is larger than the 10 MB limit."]


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_an_upload_is_typed_by_its_content_not_its_name(store):
    tiff = cv2.imencode(".tiff", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    at = upload("scan.png", tiff)
    assert [unescape(e.value) for e in at.error] == [
        "scan.png: not an image that can be decoded (JPEG, PNG, BMP or WebP expected)."]
    jpeg = cv2.imencode(".jpg", np.full((900, 700, 3), 90, np.uint8))[1].tobytes()
    at = upload("photo.png", jpeg)                              # a JPEG by any name is fine
    assert "model file of this run is missing" in unescape(at.error[0].value)
    assert "700 x 900 pixels" in [c.value for c in at.caption] and len(at.get("image")) == 1


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_the_bomb_in_a_gallery_and_as_an_upload_keeps_the_server_under_1_5_gb(tmp_path):
    """The whole app in a fresh process: peak resident memory, as the issue measured it."""
    script = textwrap.dedent(f"""
        import os, resource, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from streamlit.testing.v1 import AppTest
        from tests.dashboard.test_uploads import make_file_run
        from tests.core.data.test_images import png_bytes
        make_file_run(Path({str(tmp_path / "store")!r}), Path({str(tmp_path / "data")!r}))
        os.environ["ARTIFACTS_DIR"] = {str(tmp_path / "store")!r}
        at = AppTest.from_file({APP!r}, default_timeout=120).run()
        at.switch_page("app_pages/confusion.py").run()
        print("GALLERY", not at.exception, len(at.get("image")))
        at.switch_page("app_pages/try_image.py").run()
        at.get("file_uploader")[0].upload("big.png", png_bytes(30000, 30000), "image/png").run()
        print("UPLOAD", not at.exception, len(at.error))
        print("PEAK_KB", next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:")))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    peak_mb = int(done.stdout.split("PEAK_KB")[-1]) / 1024
    assert peak_mb < 1500, f"peak RSS {peak_mb:.0f} MB"
    assert "GALLERY True 4" in done.stdout and "UPLOAD True 1" in done.stdout, done.stdout
