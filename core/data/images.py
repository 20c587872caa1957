"""Image decoding with OpenCV: one function turns any supported file into RGB uint8.

Handled: JPEG, PNG, BMP, WebP (and TIFF); 8- and 16-bit; grayscale, BGR and
BGRA. Alpha is dropped, as ``cv2.imread``, PIL's ``convert("RGB")`` (Keras'
``load_img``, torchvision's loader) and ``tf.io.decode_image(channels=3)`` drop
it: the model gets the colours a training pipeline fed it, not a picture over
some background. 16-bit is scaled to 8-bit, and OpenCV's BGR order is
converted to RGB exactly once, here. A file is decoded whole at its own
size; only pictures for the eye (the dashboard's thumbnails) may be decoded at
reduced scale (``min_size``).

Decompression bombs: a small file can describe a huge picture (a 30000x30000
PNG is under 1 MB and 2.7 GB decoded). Every decode first reads the size from
the file's header (``image_size``: JPEG, PNG, BMP, WebP, TIFF, GIF, PNM/PAM/PFM,
Sun raster, Radiance HDR, JPEG 2000, AVIF) and refuses more than ``max_pixels``
(default 50,000,000, or ``$CLASSIFIER_MAX_PIXELS``). For anything whose header is
not understood here, OpenCV's own cap applies: ``OPENCV_IO_MAX_IMAGE_PIXELS``
is set to the same limit below while cv2 is imported (OpenCV reads it once,
when the library loads, so this holds when this module imports cv2 first).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.data.preprocess import RESIZE_METHODS
from core.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "CLASSIFIER_MAX_PIXELS"
UPLOAD_FORMATS = ("JPEG", "PNG", "BMP", "WebP")
MAX_UPLOAD_BYTES = 10_000_000  # "10 MB" as Streamlit's uploader counts (10^6 bytes per MB)


def max_pixels_limit() -> int:
    """The pixel limit for one image: ``$CLASSIFIER_MAX_PIXELS``, else 50,000,000.

    >>> max_pixels_limit() > 0
    True
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace(",", "").replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{MAX_PIXELS_ENV} must be a positive whole number of pixels. "
                         f"Received: {MAX_PIXELS_ENV}={raw!r}")
    return value


def _opencv_cap() -> str:
    try:
        return str(max_pixels_limit())
    except ValueError:  # reported when an image is read; OpenCV gets the default meanwhile
        return str(DEFAULT_MAX_PIXELS)


# OpenCV reads its cap once, when it loads: set it for that moment only (unless the user set
# it), so that child processes still derive theirs from their own CLASSIFIER_MAX_PIXELS.
_OPENCV_CAP_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"
_cap_given = _OPENCV_CAP_ENV in os.environ
os.environ.setdefault(_OPENCV_CAP_ENV, _opencv_cap())
try:
    import cv2  # noqa: E402
finally:
    if not _cap_given:
        del os.environ[_OPENCV_CAP_ENV]


def _strips(img: np.ndarray, pixels: int = 1 << 20):
    """Row slices of about ``pixels`` pixels each: full-size temporaries would double the peak memory."""
    step = max(1, pixels // max(img.shape[1], 1))
    return (slice(top, top + step) for top in range(0, img.shape[0], step))


def to_uint8_rgb(img: np.ndarray) -> np.ndarray:
    """Convert an OpenCV-decoded array (BGR/BGRA/gray, 8/16-bit) to RGB uint8 or gray 2-D."""
    if img.dtype == np.uint16:
        wide, img = img, np.empty(img.shape, np.uint8)
        for rows in _strips(wide):
            img[rows] = wide[rows] // 257
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return img
    return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- sizes from headers

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# EXIF orientation ignored, as IMREAD_UNCHANGED (the full decode) ignores it
_REDUCED = {f: flag | cv2.IMREAD_IGNORE_ORIENTATION for f, flag in
            ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8))}
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def _bytes_view(data: bytes | bytearray | memoryview | np.ndarray) -> memoryview:
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    return memoryview(data).cast("B")


def _uint(view: memoryview, start: int, length: int, order: str = "big") -> int:
    """The unsigned integer of ``length`` bytes at ``start``; ValueError past the end."""
    if start < 0 or start + length > len(view):
        raise ValueError("header ends early")
    return int.from_bytes(view[start:start + length], order)


def image_format(data: bytes | np.ndarray) -> str | None:
    """The format an encoded image's first bytes announce ('PNG', 'JPEG', ...), or None.

    These are the signatures OpenCV itself goes by; the file name plays no part.

    >>> image_format(b"\\x89PNG\\r\\n\\x1a\\n...."), image_format(b"GIF89a..."), image_format(b"hello")
    ('PNG', 'GIF', None)
    """
    head = bytes(_bytes_view(data)[:16])
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"1234567" and head[2:3].isspace():
        return "PNM"
    if head[:2] in (b"PF", b"Pf") and head[2:3].isspace():
        return "PFM"
    if head[:4] == b"\x59\xa6\x6a\x95":
        return "Sun raster"
    if head.startswith((b"#?RADIANCE", b"#?RGBE")):
        return "HDR"
    if head.startswith(_JP2_SIGNATURE) or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG 2000"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"mif1", b"msf1"):
        return "AVIF"
    return None


def jpeg_size(buf: bytes | np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, or None if ``buf`` is not a readable JPEG.

    Walks the marker segments (however large the EXIF or ICC ones before it) to
    the first start-of-frame.
    """
    view = _bytes_view(buf)
    if bytes(view[:2]) != b"\xff\xd8":
        return None
    i = 2
    try:
        while i + 9 < len(view):
            if view[i] != 0xFF:
                return None
            marker = view[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            if marker in _SOF_MARKERS:
                return _uint(view, i + 5, 2), _uint(view, i + 7, 2)
            if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before it
                return None
            i += 2 + _uint(view, i + 2, 2)
    except ValueError:
        return None
    return None


def _png_size(view: memoryview) -> tuple[int, int]:
    if bytes(view[12:16]) != b"IHDR":
        raise ValueError("no IHDR chunk")
    return _uint(view, 20, 4), _uint(view, 16, 4)


def _bmp_size(view: memoryview) -> tuple[int, int]:
    if _uint(view, 14, 4, "little") == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return _uint(view, 20, 2, "little"), _uint(view, 18, 2, "little")
    width, height = _uint(view, 18, 4, "little"), _uint(view, 22, 4, "little")
    # signed 32-bit; a negative height means rows stored top-down
    return abs(height - (1 << 32) if height >> 31 else height), abs(width - (1 << 32) if width >> 31 else width)


def _webp_size(view: memoryview) -> tuple[int, int]:
    chunk, data = bytes(view[12:16]), 20
    if chunk == b"VP8X":  # extended: the canvas size, 24 bits each, minus one
        return _uint(view, data + 7, 3, "little") + 1, _uint(view, data + 4, 3, "little") + 1
    if chunk == b"VP8L":  # lossless: 14 bits each, minus one
        bits = _uint(view, data + 1, 4, "little")
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8 " and bytes(view[data + 3:data + 6]) == b"\x9d\x01\x2a":  # lossy key frame
        return _uint(view, data + 8, 2, "little") & 0x3FFF, _uint(view, data + 6, 2, "little") & 0x3FFF
    raise ValueError(f"unknown WebP chunk {chunk!r}")


def _tiff_size(view: memoryview) -> tuple[int, int]:
    """ImageWidth (256) and ImageLength (257) of the first directory, classic or BigTIFF."""
    order = "little" if bytes(view[:2]) == b"II" else "big"
    big = _uint(view, 2, 2, order) == 43
    ifd = _uint(view, 8, 8, order) if big else _uint(view, 4, 4, order)
    count = _uint(view, ifd, 8 if big else 2, order)
    first, entry = (ifd + 8, 20) if big else (ifd + 2, 12)
    value_at = 12 if big else 8
    sizes = {}
    for k in range(min(count, 4096)):
        at = first + k * entry
        tag, kind = _uint(view, at, 2, order), _uint(view, at + 2, 2, order)
        if tag in (256, 257):
            width = {3: 2, 4: 4, 16: 8}.get(kind)  # SHORT, LONG, LONG8
            if width is None:
                raise ValueError(f"TIFF size tag of type {kind}")
            sizes[tag] = _uint(view, at + value_at, width, order)
            if len(sizes) == 2:
                return sizes[257], sizes[256]
    raise ValueError("no TIFF size tags")


def _gif_size(view: memoryview) -> tuple[int, int]:
    _uint(view, 10, 3)  # the whole logical screen descriptor is there
    return _uint(view, 8, 2, "little"), _uint(view, 6, 2, "little")


def _pnm_size(view: memoryview) -> tuple[int, int]:
    """PBM/PGM/PPM (P1-P6) and PFM: width and height after the magic; PAM (P7): WIDTH/HEIGHT lines."""
    text = bytes(view[:4096])
    if text[:2] == b"P7":
        fields = {}
        for line in text.splitlines()[1:]:
            parts = line.split(b"#", 1)[0].split()
            if parts[:1] == [b"ENDHDR"]:
                break
            if len(parts) >= 2:
                fields[parts[0]] = parts[1]
        return int(fields[b"HEIGHT"]), int(fields[b"WIDTH"])
    tokens: list[bytes] = []
    for line in text[2:].splitlines():
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 2:
            return int(tokens[1]), int(tokens[0])
    raise ValueError("no PNM size")


def _sun_raster_size(view: memoryview) -> tuple[int, int]:
    return _uint(view, 8, 4), _uint(view, 4, 4)


def _hdr_size(view: memoryview) -> tuple[int, int]:
    """Radiance: header lines, an empty line, then e.g. '-Y 480 +X 640'."""
    text = bytes(view[:65536])
    end = text.find(b"\n\n")
    if end < 0:
        raise ValueError("no HDR resolution line")
    axis1, n1, axis2, n2 = text[end + 2:].split(b"\n", 1)[0].split()[:4]
    if axis1[1:] == b"Y" and axis2[1:] == b"X":
        return int(n1), int(n2)
    return int(n2), int(n1)


def _boxes(view: memoryview, start: int, end: int):
    """(type, payload start, payload end) of the ISO base media boxes in view[start:end]."""
    i = start
    while i + 8 <= end:
        size, kind, header = _uint(view, i, 4), bytes(view[i + 4:i + 8]), 8
        if size == 1:
            size, header = _uint(view, i + 8, 8), 16
        elif size == 0:
            size = end - i
        if size < header:
            return
        yield kind, i + header, min(i + size, end)
        i += size


def _j2k_codestream_size(view: memoryview, at: int) -> tuple[int, int]:
    """Image area of a JPEG 2000 codestream's SIZ segment: (Ysiz - YOsiz, Xsiz - XOsiz)."""
    if bytes(view[at:at + 4]) != b"\xff\x4f\xff\x51":
        raise ValueError("no SIZ segment")
    x, y = _uint(view, at + 8, 4), _uint(view, at + 12, 4)
    x0, y0 = _uint(view, at + 16, 4), _uint(view, at + 20, 4)
    return y - y0, x - x0


def _jpeg2000_size(view: memoryview) -> tuple[int, int]:
    if bytes(view[:4]) == b"\xff\x4f\xff\x51":
        return _j2k_codestream_size(view, 0)
    for kind, start, _ in _boxes(view, 0, len(view)):
        if kind == b"jp2c":  # the codestream OpenJPEG decodes
            return _j2k_codestream_size(view, start)
    raise ValueError("no JPEG 2000 codestream")


def _avif_size(view: memoryview) -> tuple[int, int]:
    """The largest 'ispe' (image spatial extents) property in meta/iprp/ipco."""
    best = None
    for kind, start, end in _boxes(view, 0, len(view)):
        if kind != b"meta":
            continue
        for kind2, start2, end2 in _boxes(view, start + 4, end):  # meta is a full box
            if kind2 != b"iprp":
                continue
            for kind3, start3, end3 in _boxes(view, start2, end2):
                if kind3 != b"ipco":
                    continue
                for kind4, start4, _ in _boxes(view, start3, end3):
                    if kind4 == b"ispe":
                        size = _uint(view, start4 + 8, 4), _uint(view, start4 + 4, 4)
                        if best is None or size[0] * size[1] > best[0] * best[1]:
                            best = size
    if best is None:
        raise ValueError("no AVIF ispe property")
    return best


_SIZE_READERS = {
    "PNG": _png_size, "BMP": _bmp_size, "WebP": _webp_size, "TIFF": _tiff_size, "GIF": _gif_size,
    "PNM": _pnm_size, "PFM": _pnm_size, "Sun raster": _sun_raster_size, "HDR": _hdr_size,
    "JPEG 2000": _jpeg2000_size, "AVIF": _avif_size,
}


def image_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(height, width) read from an encoded image's header, without decoding it.

    None when the format is not one of those ``image_format`` names or its header
    cannot be read (a truncated file). A 1x1 PNG's header claiming 30000x20000:

    >>> import zlib
    >>> ihdr = b"IHDR" + (30000).to_bytes(4, "big") + (20000).to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    >>> png = b"\\x89PNG\\r\\n\\x1a\\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
    >>> image_size(png)
    (20000, 30000)
    """
    kind = image_format(data)
    if kind is None:
        return None
    view = _bytes_view(data)
    if kind == "JPEG":
        return jpeg_size(view)
    try:
        return _SIZE_READERS[kind](view)
    except (ValueError, KeyError, IndexError):
        return None


def pixel_problem(size: tuple[int, int] | None, *, name: str, max_pixels: int | None = None) -> str | None:
    """Why an image of ``size`` = (height, width) is refused (over the pixel limit), or None.

    >>> pixel_problem((30000, 30000), name="big.png", max_pixels=50_000_000)
    'big.png: 900,000,000 pixels (30000x30000) is over the 50,000,000-pixel limit (set CLASSIFIER_MAX_PIXELS to raise it)'
    """
    limit = max_pixels_limit() if max_pixels is None else max_pixels
    if size is None or size[0] * size[1] <= limit:
        return None
    height, width = size
    return (f"{name}: {height * width:,} pixels ({width}x{height}) is over the {limit:,}-pixel "
            f"limit (set {MAX_PIXELS_ENV} to raise it)")


# --------------------------------------------------------------------------- decoding

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
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decode an encoded image (file contents) to RGB uint8 (H, W, 3) or gray (H, W).

    The size is read from the header first: more than ``max_pixels`` (default
    ``max_pixels_limit()``) raises ValueError before anything is decoded.
    With ``min_size`` = (height, width), a large JPEG is decoded at 1/2, 1/4 or
    1/8 scale by libjpeg's DCT scaling (as PIL's ``draft`` does) when that still
    leaves at least ``min_size`` pixels: nearly the same picture at a fraction of
    the cost for a later downscale, for display only. Its pixels differ from a
    full decode's (a 358-px JPEG of stripes at 32 px by up to 94 levels), so
    nothing that feeds a model asks for it. Raises ValueError naming ``name`` when OpenCV
    cannot decode it.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buf.size == 0:
        raise UserError(f"{name}: empty file")
    limit = max_pixels_limit() if max_pixels is None else max_pixels
    size = image_size(buf)
    problem = pixel_problem(size, name=name, max_pixels=limit)
    if problem:
        raise UserError(problem)
    factor = _reduction(size, min_size) if min_size and image_format(buf) == "JPEG" else 1
    try:
        img = cv2.imdecode(buf, _REDUCED[factor] if factor > 1 else cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV's own size cap (OPENCV_IO_MAX_IMAGE_PIXELS), a broken header
        reason = str(exc).strip().splitlines()[-1]
        raise UserError(f"{name}: not a decodable image (OpenCV: {reason})") from None
    if img is None or img.size == 0:
        raise UserError(f"{name}: not a decodable image (JPEG, PNG, BMP, WebP or TIFF)")
    problem = pixel_problem(img.shape[:2] if factor == 1 else None, name=name, max_pixels=limit)
    if problem:  # a header this module read differently from the decoder
        raise UserError(problem)
    return to_uint8_rgb(img)


def read_image(
    path: str | Path, *, min_size: tuple[int, int] | None = None, max_pixels: int | None = None,
) -> np.ndarray:
    """Read a file to RGB uint8 (H, W, 3) or gray (H, W). Raises ValueError with the reason.

    ``min_size`` allows a cheaper reduced-scale JPEG decode and ``max_pixels``
    sets the pixel limit (see ``decode_bytes``).
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # unlike cv2.imread, handles any file name
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_bytes(data, name=str(path), min_size=min_size, max_pixels=max_pixels)


def _megabytes(size: int, limit: int) -> str:
    """``size`` bytes in MB (10^6 bytes, as the uploader shows), with enough decimals to differ from ``limit``."""
    for decimals in range(1, 7):
        text = f"{size / 1e6:.{decimals}f}"
        if float(text) != limit / 1e6:
            break
    return f"{text} MB"


def upload_problem(
    data: bytes, *, name: str, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int | None = None,
    formats: tuple[str, ...] = UPLOAD_FORMATS,
) -> str | None:
    """Why an uploaded file is refused before decoding, in one line naming it, or None.

    Checked in order, from what costs nothing: the byte size (in MB of 10^6
    bytes, the unit Streamlit's uploader displays), the format by content
    (one of ``formats``, whatever the name says), then the pixel count read
    from the header (at most ``max_pixels``, default ``max_pixels_limit()``).

    >>> upload_problem(b"x" * 12_000_000, name="big.png")
    'big.png: 12.0 MB is larger than the 10 MB limit.'
    >>> upload_problem(b"these are not pixels", name="notes.png")
    'notes.png: not an image that can be decoded (JPEG, PNG, BMP or WebP expected).'
    """
    if len(data) > max_bytes:
        return f"{name}: {_megabytes(len(data), max_bytes)} is larger than the {max_bytes / 1e6:g} MB limit."
    expected = ", ".join(formats[:-1]) + " or " + formats[-1] if len(formats) > 1 else formats[0]
    if image_format(data) not in formats:
        return f"{name}: not an image that can be decoded ({expected} expected)."
    size = image_size(data)
    if size is None or size[0] * size[1] == 0:
        return f"{name}: not an image that can be decoded (its {image_format(data)} header is unreadable)."
    return pixel_problem(size, name=name, max_pixels=max_pixels)


def thumbnail(img: np.ndarray, *, size: int) -> np.ndarray:
    """``img`` scaled to about ``size`` px on its long side (INTER_AREA down, nearest up: crisp when enlarged)."""
    h, w = img.shape[:2]
    scale = size / max(h, w)
    if abs(scale - 1) > 0.05:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))),
                         interpolation=interpolation)
    return img


def fit_to_input(img: np.ndarray, *, size: tuple[int, int], channels: int, resize: str = "area") -> np.ndarray:
    """Resize to ``size`` = (height, width) by ``resize`` (``RESIZE_METHODS``) and convert to ``channels`` (1 or 3).

    Returns uint8 (height, width, channels). 'area' shrinks with INTER_AREA (no aliasing) and enlarges with
    INTER_LINEAR.

    >>> stripes = np.tile(np.array([0, 0, 255, 0], np.uint8), (4, 2))   # a thin bar every 4 pixels
    >>> [int(fit_to_input(stripes, size=(2, 2), channels=1, resize=r)[0, 0, 0]) for r in ("area", "linear", "nearest")]
    [64, 128, 255]
    """
    if resize not in RESIZE_METHODS:
        raise UserError(f"--resize must be one of {list(RESIZE_METHODS)}. Received: {resize!r}")
    h, w = size
    if img.shape[0] != h or img.shape[1] != w:
        shrink = img.shape[0] > h or img.shape[1] > w
        flag = {"area": cv2.INTER_AREA if shrink else cv2.INTER_LINEAR, "linear": cv2.INTER_LINEAR,
                "nearest": cv2.INTER_NEAREST_EXACT}[resize]
        img = cv2.resize(img, (w, h), interpolation=flag)
    if channels == 1:
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        return img[:, :, None]
    if channels == 3:
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        return img
    raise UserError(f"channels must be 1 or 3. Received: channels={channels}")


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of an RGB or gray uint8 image (for thumbnails in the browser)."""
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("could not encode image as PNG")
    return buf.tobytes()
