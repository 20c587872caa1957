"""Decoding limits: sizes read from headers, decompression bombs refused before decoding,
alpha composed in integer maths, uploads checked before decoding.

A "bomb" here is a real PNG, 1-bit paletted, whose header and compressed rows say
30000x30000: about 110 KB on disk, 2.7 GB once OpenCV expands it to BGR.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.data.images import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    decode_bytes,
    image_format,
    image_size,
    jpeg_size,
    max_pixels_limit,
    read_image,
    to_uint8_rgb,
    upload_problem,
)

ROOT = Path(__file__).resolve().parents[3]
BOMB_REASON = ("900,000,000 pixels (30000x30000) is over the 50,000,000-pixel limit "
               "(set CLASSIFIER_MAX_PIXELS to raise it)")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def png_bytes(width: int, height: int, *, colour_type: int = 3, bit_depth: int = 1,
              row: bytes | None = None) -> bytes:
    """A complete, decodable PNG written by hand: every row the same (``row``, default zeros),
    compressed row by row so that a 30000x30000 image costs ~110 KB and no big buffer."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row_bytes = (width * channels * bit_depth + 7) // 8
    row = b"\x00" + (row if row is not None else bytes(row_bytes))  # filter type 0 ("none")
    assert len(row) == row_bytes + 1
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([bit_depth, colour_type, 0, 0, 0])
    palette = _chunk(b"PLTE", bytes([200, 30, 30, 30, 200, 30])) if colour_type == 3 else b""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + palette + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "big.png"
    path.write_bytes(png_bytes(30000, 30000))
    return path


# --- sizes from headers ---------------------------------------------------------

WRITABLE = [  # (extension, channels, imwrite parameters): every format this OpenCV writes
    (".jpg", 3, []), (".jpg", 1, []), (".png", 4, []), (".png", 1, []), (".bmp", 3, []),
    (".bmp", 4, []), (".webp", 3, []), (".webp", 3, [cv2.IMWRITE_WEBP_QUALITY, 80]),
    (".webp", 4, [cv2.IMWRITE_WEBP_QUALITY, 80]), (".tiff", 3, []), (".tiff", 1, []),
    (".gif", 3, []), (".pgm", 1, []), (".ppm", 3, []), (".pam", 3, []), (".pfm", 3, []),
    (".ras", 3, []), (".hdr", 3, []), (".jp2", 3, []), (".avif", 3, []),
]


@pytest.mark.parametrize("ext, channels, params", WRITABLE, ids=lambda v: str(v))
def test_image_size_from_the_header_is_the_decoded_size(ext, channels, params):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (37, 53, channels), dtype=np.uint8)
    if ext in (".pfm", ".hdr"):
        img = img.astype(np.float32) / 255
    try:
        ok, buf = cv2.imencode(ext, img[:, :, 0] if channels == 1 else img, params)
    except cv2.error:
        ok = False
    if not ok:
        pytest.skip(f"this OpenCV build cannot write {ext}")
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    assert decoded.shape[:2] == (37, 53)
    assert image_format(buf) is not None
    assert image_size(buf) == (37, 53)
    assert image_size(buf.tobytes()) == (37, 53)


def test_jpeg_size_walks_past_large_segments_before_the_frame_header():
    ok, buf = cv2.imencode(".jpg", np.zeros((40, 30, 3), np.uint8))
    data = buf.tobytes()
    app = b"\xff\xe2" + (65535).to_bytes(2, "big") + bytes(65533)  # two maximal APP2 (ICC-like) segments
    padded = data[:2] + app + app + data[2:]
    assert cv2.imdecode(np.frombuffer(padded, np.uint8), cv2.IMREAD_UNCHANGED).shape == (40, 30, 3)
    assert jpeg_size(np.frombuffer(padded, np.uint8)) == (40, 30)
    assert image_size(padded) == (40, 30)


def test_unknown_or_truncated_headers_give_no_size():
    assert image_size(b"plain text, not an image") is None
    assert image_size(b"\x89PNG\r\n\x1a\n\x00\x00") is None   # PNG signature, IHDR cut off
    assert image_size(b"GIF89a junk") is None
    assert image_size(np.zeros(0, np.uint8)) is None


# --- the pixel limit -------------------------------------------------------------

def test_read_image_refuses_a_30000_pixel_square_png_from_its_header(bomb):
    assert bomb.stat().st_size < 1_000_000
    assert image_size(bomb.read_bytes()) == (30000, 30000)
    with pytest.raises(ValueError) as refused:
        read_image(bomb)
    assert str(refused.value) == f"{bomb}: {BOMB_REASON}"
    with pytest.raises(ValueError, match="upload.png: 900,000,000 pixels"):
        decode_bytes(bomb.read_bytes(), name="upload.png")


def test_pixel_limit_from_the_environment_and_the_keyword(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    path.write_bytes(png_bytes(300, 20))                        # 6,000 pixels
    assert read_image(path).shape == (20, 300, 3)
    with pytest.raises(ValueError, match=r"6,000 pixels \(300x20\) is over the 5,000-pixel limit"):
        read_image(path, max_pixels=5000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "5000")
    assert max_pixels_limit() == 5000
    with pytest.raises(ValueError, match="over the 5,000-pixel limit"):
        read_image(path)
    assert read_image(path, max_pixels=6000).shape == (20, 300, 3)  # the keyword wins
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match="CLASSIFIER_MAX_PIXELS must be a positive whole number of "
                                         "pixels. Received: CLASSIFIER_MAX_PIXELS='lots'"):
        max_pixels_limit()
    monkeypatch.delenv(MAX_PIXELS_ENV)
    assert max_pixels_limit() == DEFAULT_MAX_PIXELS == 50_000_000


def _peak_rss_mb(code: str, **env: str) -> float:
    """Run ``code`` in a fresh Python and return its peak resident memory in MB.

    Read from /proc/self/status (VmHWM): ``ru_maxrss`` would also count the forking parent's
    resident size, which Linux carries across fork + exec (the whole pytest process).
    """
    script = textwrap.dedent(code) + textwrap.dedent("""
        import resource
        print("PEAK_KB", next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:")))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split("PEAK_KB")[-1]) / 1024


def test_refusing_the_bomb_stays_far_below_1_5_gb(bomb):
    peak = _peak_rss_mb(f"""
        from core.data.images import read_image
        try:
            read_image({str(bomb)!r}, min_size=(64, 64))
        except ValueError as exc:
            print(exc)
        else:
            raise SystemExit("decoded the bomb")
    """)
    assert peak < 1500, f"peak RSS {peak:.0f} MB"


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_a_large_rgba_png_allowed_by_a_raised_limit_decodes_under_1_5_gb(tmp_path):
    """12000x12000 RGBA (144 Mpx): 576 MB decoded, 432 MB once the alpha channel is dropped."""
    path = tmp_path / "rgba.png"
    path.write_bytes(png_bytes(12000, 12000, colour_type=6, bit_depth=8,
                               row=bytes([250, 10, 10, 128]) * 12000))
    peak = _peak_rss_mb(f"""
        from core.data.images import read_image
        img = read_image({str(path)!r})
        assert img.shape == (12000, 12000, 3), img.shape
        assert img[0, 0].tolist() == [250, 10, 10], img[0, 0].tolist()
    """, **{MAX_PIXELS_ENV: "200000000"})
    assert peak < 1500, f"peak RSS {peak:.0f} MB"


# --- alpha and 16-bit ------------------------------------------------------------

def test_alpha_is_dropped_as_cv2_imread_and_pil_convert_rgb_drop_it(tmp_path):
    """Keras' load_img, torchvision's loader (PIL convert("RGB")) and cv2.imread feed a model the colours
    under the alpha channel: so does this tool (it once composed them over white, and a model trained on
    those colours then saw another picture)."""
    rng = np.random.default_rng(3)
    bgra = rng.integers(0, 256, (61, 47, 4), dtype=np.uint8)
    bgra[0, :4, 3] = [0, 255, 1, 254]
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), bgra)
    expected = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(read_image(path), expected) and np.array_equal(expected, bgra[:, :, 2::-1])
    assert np.array_equal(to_uint8_rgb(bgra.astype(np.uint16) * 257), expected)   # the same picture in 16 bits


# --- uploads ---------------------------------------------------------------------

def test_upload_problem_checks_bytes_content_and_pixels_before_decoding(bomb):
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    assert upload_problem(png, name="ok.png") is None
    assert upload_problem(png, name="ok.jpg") is None              # the content decides, not the name
    # MB as the uploader shows them: 10^6 bytes
    assert (upload_problem(png + bytes(12_000_000 - len(png)), name="big.png")
            == "big.png: 12.0 MB is larger than the 10 MB limit.")
    assert (upload_problem(bytes(10_040_000), name="edge.png")
            == "edge.png: 10.04 MB is larger than the 10 MB limit.")
    assert upload_problem(b"GIF89a" + bytes(100), name="anim.png") == (
        "anim.png: not an image that can be decoded (JPEG, PNG, BMP or WebP expected).")
    tiff = cv2.imencode(".tiff", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    assert "not an image that can be decoded" in upload_problem(tiff, name="scan.webp")
    assert upload_problem(bomb.read_bytes(), name="big.png") == f"big.png: {BOMB_REASON}"
    assert upload_problem(png[:20], name="cut.png") == (
        "cut.png: not an image that can be decoded (its PNG header is unreadable).")
