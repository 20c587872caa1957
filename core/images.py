"""Image decoding with OpenCV: one function turns any supported file into RGB uint8.

Handled: JPEG, PNG, BMP, WebP (and TIFF); 8- and 16-bit; grayscale, BGR and
BGRA. Alpha is composited over white, 16-bit is scaled to 8-bit, and OpenCV's
BGR order is converted to RGB exactly once, here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def to_uint8_rgb(img: np.ndarray) -> np.ndarray:
    """Convert an OpenCV-decoded array (BGR/BGRA/gray, 8/16-bit) to RGB uint8 or gray 2-D."""
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return img
    if img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        bgr = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        img = np.rint(bgr).astype(np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, or None if ``buf`` is not a readable JPEG."""
    data = buf[:65536].tobytes()
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF_MARKERS:
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
        i += 2 + length
    return None


def _reduction(src: tuple[int, int] | None, need: tuple[int, int] | None) -> int:
    """Largest of 8, 4, 2 by which a JPEG can be shrunk while decoding and still cover ``need``."""
    if src is None or need is None:
        return 1
    for factor in (8, 4, 2):
        if src[0] // factor >= need[0] and src[1] // factor >= need[1]:
            return factor
    return 1


def decode_bytes(
    data: bytes | np.ndarray, *, name: str = "<bytes>", min_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode an encoded image (file contents) to RGB uint8 (H, W, 3) or gray (H, W).

    With ``min_size`` = (height, width), a large JPEG is decoded at 1/2, 1/4 or
    1/8 scale by libjpeg's DCT scaling (as PIL's ``draft`` does) when that still
    leaves at least ``min_size`` pixels: the same picture at a fraction of the
    cost for a later downscale. Raises ValueError naming ``name`` when OpenCV
    cannot decode it.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buf.size == 0:
        raise ValueError(f"{name}: empty file")
    factor = _reduction(jpeg_size(buf), min_size) if min_size else 1
    img = cv2.imdecode(buf, _REDUCED[factor] if factor > 1 else cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ValueError(f"{name}: not a decodable image (JPEG, PNG, BMP, WebP or TIFF)")
    return to_uint8_rgb(img)


def read_image(path: str | Path, *, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a file to RGB uint8 (H, W, 3) or gray (H, W). Raises ValueError with the reason.

    ``min_size`` allows a cheaper reduced-scale JPEG decode (see ``decode_bytes``).
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # unlike cv2.imread, handles any file name
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_bytes(data, name=str(path), min_size=min_size)


def fit_to_input(img: np.ndarray, *, size: tuple[int, int], channels: int) -> np.ndarray:
    """Resize to ``size`` = (height, width) and convert to ``channels`` (1 or 3).

    Returns uint8 (height, width, channels). Shrinking uses INTER_AREA (no
    aliasing), enlarging INTER_LINEAR.
    """
    h, w = size
    if img.shape[0] != h or img.shape[1] != w:
        shrink = img.shape[0] > h or img.shape[1] > w
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if channels == 1:
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        return img[:, :, None]
    if channels == 3:
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        return img
    raise ValueError(f"channels must be 1 or 3. Received: channels={channels}")


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of an RGB or gray uint8 image (for thumbnails in the browser)."""
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("could not encode image as PNG")
    return buf.tobytes()
