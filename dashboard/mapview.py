"""The embedding map at any size: which rows a box or lasso holds, and a picture of every point.

Pure functions on arrays (numpy only, no Streamlit), so that what the map
selects and draws can be tested without a browser.

Conventions: ``xy`` is the (N, 2) projection of N images, rows = row ids of
``run.predictions``. A *window* is ``(x0, x1, y0, y1)`` in projection units,
inclusive. A *shape* is a selection drawn on the map: ``("box", (x0, x1, y0,
y1))`` or ``("lasso", ((x, y), ...))``, a polygon whose last vertex joins the
first. Raster images are (H, W, 4) RGBA uint8 with row 0 at the *top* (largest
y), as an image is drawn.

Selections are computed here from the shapes, over every row, never from the
points the browser happened to draw: a lasso around 4,000 images returns 4,000
rows even when the map shows them as a picture. Points are sorted by y once
(``SortedPoints``); a polygon then costs one contiguous slice per edge
(the rows whose y lies within the edge's span: the even-odd ray-cast rule of
PNPOLY), linear in the rows near its edges rather than in N x edges.
matplotlib's ``Path.contains_points`` does the same per point but is not a
dependency of this project.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Window = tuple[float, float, float, float]
Shape = tuple[str, tuple]
SHAPE_KINDS = ("box", "lasso")


# --------------------------------------------------------------------------- selection

class SortedPoints:
    """The projection's points sorted by y, for fast box and polygon queries.

    >>> pts = SortedPoints(np.array([[0.0, 0.0], [2.0, 2.0], [0.5, 0.5]]))
    >>> pts.in_box((0.0, 1.0, 0.0, 1.0)).tolist()
    [0, 2]
    >>> pts.in_polygon([(-1, -1), (1, -1), (1, 1), (-1, 1)]).tolist()
    [0, 2]
    """

    def __init__(self, xy: np.ndarray):
        xy = np.asarray(xy)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"`xy` must have shape (N, 2). Received shape {xy.shape}")
        self.n = len(xy)
        self.order = np.argsort(xy[:, 1], kind="stable")
        self.ys = np.ascontiguousarray(xy[self.order, 1], dtype=np.float64)
        self.xs = np.ascontiguousarray(xy[self.order, 0], dtype=np.float64)

    def _mask_in_box(self, box: Sequence[float]) -> np.ndarray:
        x0, x1, y0, y1 = (float(v) for v in box)
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
        lo, hi = np.searchsorted(self.ys, y0, "left"), np.searchsorted(self.ys, y1, "right")
        inside = np.zeros(self.n, bool)
        xs = self.xs[lo:hi]
        inside[lo:hi] = (xs >= x0) & (xs <= x1)
        return inside

    def _mask_in_polygon(self, polygon: Sequence[Sequence[float]]) -> np.ndarray:
        vertices = np.asarray(polygon, dtype=np.float64)
        if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) < 3:
            raise ValueError(f"a polygon needs at least 3 (x, y) vertices. Received {len(vertices)}")
        inside = np.zeros(self.n, bool)
        nxt = np.roll(vertices, -1, axis=0)
        for (xa, ya), (xb, yb) in zip(vertices, nxt):
            if ya == yb:
                continue  # a horizontal edge never crosses a horizontal ray
            # rows with min(ya, yb) <= y < max(ya, yb): the edge crosses their rightward ray ...
            lo = np.searchsorted(self.ys, min(ya, yb), "left")
            hi = np.searchsorted(self.ys, max(ya, yb), "left")
            if lo == hi:
                continue
            ys = self.ys[lo:hi]
            crossing_x = xa + (ys - ya) * (xb - xa) / (yb - ya)
            inside[lo:hi] ^= self.xs[lo:hi] < crossing_x  # ... when the row lies left of the crossing
        return inside

    def in_box(self, box: Sequence[float]) -> np.ndarray:
        """Sorted row ids with x0 <= x <= x1 and y0 <= y <= y1 (``box`` = (x0, x1, y0, y1), any order)."""
        return np.sort(self.order[self._mask_in_box(box)])

    def in_polygon(self, polygon: Sequence[Sequence[float]]) -> np.ndarray:
        """Sorted row ids inside ``polygon`` (even-odd rule; a point on the left or bottom edge is in,
        on the right or top edge out, as in PNPOLY)."""
        return np.sort(self.order[self._mask_in_polygon(polygon)])

    def in_shapes(self, shapes: Sequence[Shape]) -> np.ndarray:
        """Sorted row ids inside any of ``shapes`` (the union of boxes and lassos)."""
        inside = np.zeros(self.n, bool)
        for kind, geometry in shapes:
            if kind == "box":
                inside |= self._mask_in_box(geometry)
            elif kind == "lasso":
                inside |= self._mask_in_polygon(geometry)
            else:
                raise ValueError(f"Unknown shape kind {kind!r}. The kinds are {SHAPE_KINDS}")
        return np.sort(self.order[inside])


def points_in_polygon(xy: np.ndarray, polygon: Sequence[Sequence[float]]) -> np.ndarray:
    """Boolean (N,) mask of the rows of ``xy`` inside ``polygon``: the textbook PNPOLY loop over
    edges (N x edges work), the reference that ``SortedPoints.in_polygon`` is tested against.

    >>> points_in_polygon(np.array([[0.5, 0.5], [2.0, 0.5]]), [(0, 0), (1, 0), (1, 1), (0, 1)]).tolist()
    [True, False]
    """
    x, y = np.asarray(xy, np.float64)[:, 0], np.asarray(xy, np.float64)[:, 1]
    vertices = np.asarray(polygon, np.float64)
    inside = np.zeros(len(x), bool)
    j = len(vertices) - 1
    for i in range(len(vertices)):
        (xi, yi), (xj, yj) = vertices[i], vertices[j]
        with np.errstate(divide="ignore", invalid="ignore"):
            crosses = ((yi > y) != (yj > y)) & (x < (xj - xi) * (y - yi) / (yj - yi) + xi)
        inside ^= crosses
        j = i
    return inside


def shapes_from_selection(selection: dict | None) -> list[Shape]:
    """The boxes and lassos of a Streamlit plotly selection state, in data coordinates.

    Streamlit reports ``box`` as ``[{"x": [x0, x1], "y": [y0, y1]}]`` and ``lasso`` as
    ``[{"x": [...], "y": [...]}]`` (the polygon's vertices); anything malformed is skipped.

    >>> shapes_from_selection({"box": [{"x": [1, 0], "y": [0, 2]}], "lasso": []})
    [('box', (0.0, 1.0, 0.0, 2.0))]
    """
    shapes: list[Shape] = []
    for box in (selection or {}).get("box") or []:
        xs, ys = box.get("x") or [], box.get("y") or []
        if len(xs) == 2 and len(ys) == 2:
            shapes.append(("box", (float(min(xs)), float(max(xs)), float(min(ys)), float(max(ys)))))
    for lasso in (selection or {}).get("lasso") or []:
        xs, ys = lasso.get("x") or [], lasso.get("y") or []
        if len(xs) == len(ys) and len(xs) >= 3:
            shapes.append(("lasso", tuple((float(a), float(b)) for a, b in zip(xs, ys))))
    return shapes


def shapes_bounds(shapes: Sequence[Shape]) -> Window | None:
    """The window that just holds every shape, or None without shapes."""
    xs, ys = [], []
    for kind, geometry in shapes:
        if kind == "box":
            xs += [geometry[0], geometry[1]]
            ys += [geometry[2], geometry[3]]
        else:
            xs += [p[0] for p in geometry]
            ys += [p[1] for p in geometry]
    if not xs:
        return None
    return float(min(xs)), float(max(xs)), float(min(ys)), float(max(ys))


# --------------------------------------------------------------------------- windows

def full_window(xy: np.ndarray, *, pad: float = 0.03) -> Window:
    """The extent of every point, widened by ``pad`` of its size on each side (never empty).

    >>> full_window(np.array([[0.0, 0.0], [10.0, 20.0]]), pad=0.1)
    (-1.0, 11.0, -2.0, 22.0)
    """
    xy = np.asarray(xy)
    if xy.size == 0:
        return -1.0, 1.0, -1.0, 1.0
    lo, hi = np.nanmin(xy, axis=0).astype(float), np.nanmax(xy, axis=0).astype(float)
    span = np.maximum(hi - lo, 1e-9)
    lo, hi = lo - pad * span, hi + pad * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def zoom_window(window: Window, *, factor: float, limit: Window | None = None) -> Window:
    """``window`` scaled by ``factor`` about its centre (2: twice as wide), kept inside ``limit``.

    >>> zoom_window((0.0, 2.0, 0.0, 2.0), factor=2.0)
    (-1.0, 3.0, -1.0, 3.0)
    """
    x0, x1, y0, y1 = window
    cx, cy, hx, hy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * factor, (y1 - y0) / 2 * factor
    out = (cx - hx, cx + hx, cy - hy, cy + hy)
    if limit is not None:
        out = (max(out[0], limit[0]), min(out[1], limit[1]), max(out[2], limit[2]), min(out[3], limit[3]))
    return out


def padded(window: Window, *, pad: float = 0.05) -> Window:
    """``window`` widened by ``pad`` of its size on each side (a selection's bounds, shown with a margin)."""
    x0, x1, y0, y1 = window
    dx, dy = max(x1 - x0, 1e-9) * pad, max(y1 - y0, 1e-9) * pad
    return x0 - dx, x1 + dx, y0 - dy, y1 + dy


def rows_in_window(xy: np.ndarray, base: np.ndarray, window: Window) -> np.ndarray:
    """Row ids in boolean ``base`` (N,) whose point lies in ``window`` (inclusive)."""
    x0, x1, y0, y1 = window
    x, y = xy[:, 0], xy[:, 1]
    return np.flatnonzero(base & (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1))


# --------------------------------------------------------------------------- colours

def class_palette(n_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours, one per class: Tableau 10 up to 10 classes, then evenly spaced hues
    in three lightness bands, so that neighbouring class indices differ in hue and lightness."""
    tableau = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
               "#9c755f", "#bab0ac"]
    if n_classes <= len(tableau):
        return np.array([hex_to_rgb(c) for c in tableau[:n_classes]], np.uint8).reshape(-1, 3)
    golden = 0.618033988749895
    out = []
    for i in range(n_classes):
        hue = (i * golden) % 1.0
        light, sat = (0.45, 0.75), (0.62, 0.55)
        out.append([round(255 * v) for v in colorsys.hls_to_rgb(hue, light[0] + 0.12 * (i % 3 == 1)
                                                                 - 0.1 * (i % 3 == 2), sat[i % 2])])
    return np.array(out, np.uint8)


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """'#rrggbb' -> (r, g, b)."""
    colour = colour.lstrip("#")
    return int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)


def rgb_to_hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


# Viridis at 9 stops (matplotlib's values), interpolated linearly.
_VIRIDIS = np.array([[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                     [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], np.float64)


def viridis(values: np.ndarray) -> np.ndarray:
    """(M, 3) uint8 Viridis colours of ``values`` in [0, 1] (clipped)."""
    t = np.clip(np.asarray(values, np.float64), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.minimum(np.floor(t).astype(int), len(_VIRIDIS) - 2)
    frac = (t - lo)[:, None]
    return np.round(_VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac).astype(np.uint8)


# --------------------------------------------------------------------------- rasterising

@dataclass(frozen=True)
class Raster:
    """Every point of a window drawn as pixels: ``rgba`` (H, W, 4) with row 0 at the top, and the
    number of points in each pixel, ``counts`` (H, W) (same orientation)."""

    rgba: np.ndarray
    counts: np.ndarray
    window: Window


def pixel_index(xy: np.ndarray, window: Window, *, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """For the rows of ``xy`` inside ``window``: (positions into ``xy``, flat pixel index).
    Pixel (row 0 = top) ``r * width + c``; a point on the window's edge falls in the edge pixel."""
    x0, x1, y0, y1 = window
    x, y = np.asarray(xy[:, 0], np.float64), np.asarray(xy[:, 1], np.float64)
    keep = np.flatnonzero((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1))
    col = np.minimum(((x[keep] - x0) / max(x1 - x0, 1e-12) * width).astype(np.int64), width - 1)
    row = np.minimum(((y1 - y[keep]) / max(y1 - y0, 1e-12) * height).astype(np.int64), height - 1)
    return keep, row * width + col


def rasterise(xy: np.ndarray, colours: np.ndarray, window: Window, *, width: int = 480, height: int = 300,
              min_alpha: float = 0.55, grow: int = 0) -> Raster:
    """Draw every point of ``xy`` (M, 2) in ``window`` with its colour ``colours`` (M, 3) uint8.

    A pixel's colour is the mean colour of its points (so a pixel holding two classes
    shows their mix, as datashader's categorical shading does), its opacity grows with
    the log of its count from ``min_alpha`` (one point: plainly visible) to 1. Empty
    pixels are transparent. ``grow`` > 0 also paints each empty pixel within ``grow`` pixels
    (right and down) of a filled one in its colour: a layer of rare points (the errors) stays
    visible on a picture the browser scales down.

    >>> r = rasterise(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[255, 0, 0], [0, 0, 255]], np.uint8),
    ...               (0.0, 1.0, 0.0, 1.0), width=2, height=2)
    >>> r.counts.tolist(), r.rgba[1, 0].tolist(), r.rgba[0, 1, :3].tolist()
    ([[0, 1], [1, 0]], [255, 0, 0, 255], [0, 0, 255])
    """
    colours = np.asarray(colours)
    if len(colours) != len(xy):
        raise ValueError(f"`colours` must have one row per point: {len(xy)}. Received {len(colours)}")
    keep, pix = pixel_index(xy, window, width=width, height=height)
    size = width * height
    counts = np.bincount(pix, minlength=size)
    rgba = np.zeros((size, 4), np.uint8)
    filled = counts > 0
    for channel in range(3):
        sums = np.bincount(pix, weights=colours[keep, channel].astype(np.float64), minlength=size)
        rgba[filled, channel] = np.round(sums[filled] / counts[filled]).astype(np.uint8)
    if filled.any():
        depth = np.log1p(counts[filled]) / np.log1p(counts.max())
        rgba[filled, 3] = np.round(255 * (min_alpha + (1 - min_alpha) * depth)).astype(np.uint8)
    image = rgba.reshape(height, width, 4)
    if grow > 0:
        image = _grown(image, grow)
    return Raster(image, counts.reshape(height, width), tuple(map(float, window)))


def _grown(rgba: np.ndarray, grow: int) -> np.ndarray:
    """``rgba`` (H, W, 4) with each transparent pixel given the colour of a filled pixel up to
    ``grow`` pixels left of or above it (the filled pixels themselves unchanged)."""
    out = rgba.copy()
    for dy in range(grow + 1):
        for dx in range(grow + 1):
            if dx == dy == 0:
                continue
            shifted = np.zeros_like(rgba)
            shifted[dy:, dx:] = rgba[:rgba.shape[0] - dy, :rgba.shape[1] - dx]
            empty = (out[..., 3] == 0) & (shifted[..., 3] > 0)
            out[empty] = shifted[empty]
    return out


def ring_raster(xy: np.ndarray, window: Window, colour: Sequence[int], *, width: int, height: int,
                radius: float = 5.0) -> np.ndarray:
    """(H, W, 4) uint8 picture of a ring (about 2 pixels wide, ``radius`` pixels from the centre) in
    ``colour`` (R, G, B) around each point of ``xy`` (M, 2) inside ``window``; transparent elsewhere.

    The outlines of the chosen confusion cell in picture mode: as one image the browser draws
    them at once, where thousands of outlined SVG markers cost it seconds.

    >>> r = ring_raster(np.array([[0.5, 0.5]]), (0.0, 1.0, 0.0, 1.0), (0, 0, 0), width=21, height=21, radius=5)
    >>> int(r[10, 10, 3]), int(r[10, 15, 3]), int(r[10, 5, 3]), int(r[0, 0, 3])
    (0, 255, 255, 0)
    """
    _, pix = pixel_index(np.asarray(xy, np.float64).reshape(-1, 2), window, width=width, height=height)
    rows, cols = np.divmod(np.unique(pix), width)
    out = np.zeros((height, width, 4), np.uint8)
    reach = int(np.ceil(radius))
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if not radius - 1.5 <= np.hypot(dy, dx) <= radius + 0.5:
                continue
            r, c = rows + dy, cols + dx
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            out[r[inside], c[inside]] = (*(int(v) for v in colour), 255)
    return out


@dataclass(frozen=True)
class GridSummary:
    """What a coarse ``width`` x ``height`` grid over a window holds, for hover text: per non-empty
    cell its flat index ``cell`` (row 0 at the top), centre, count, most common group, that
    group's share and the share of errors."""

    width: int
    height: int
    cell: np.ndarray
    x: np.ndarray
    y: np.ndarray
    count: np.ndarray
    top_group: np.ndarray
    top_share: np.ndarray
    error_share: np.ndarray


def grid_summary(xy: np.ndarray, groups: np.ndarray, wrong: np.ndarray, window: Window, *,
                 width: int = 60, height: int = 40, n_groups: int) -> GridSummary:
    """Summarise the points of ``xy`` (M, 2) in ``window`` on a ``width`` x ``height`` grid.

    ``groups`` (M,) are class indices below ``n_groups``; ``wrong`` (M,) bool marks errors.
    """
    keep, pix = pixel_index(xy, window, width=width, height=height)
    size = width * height
    counts = np.bincount(pix, minlength=size)
    cells = np.flatnonzero(counts)
    # most common group per cell: one sort by (cell, group), then run lengths
    key = pix.astype(np.int64) * n_groups + np.asarray(groups)[keep]
    uniq, per = np.unique(key, return_counts=True)
    cell_of, group_of = uniq // n_groups, uniq % n_groups
    order = np.lexsort((-per, cell_of))
    first = order[np.r_[True, cell_of[order][1:] != cell_of[order][:-1]]]
    top_group = np.zeros(size, np.int64)
    top_count = np.zeros(size, np.int64)
    top_group[cell_of[first]] = group_of[first]
    top_count[cell_of[first]] = per[first]
    errors = np.bincount(pix, weights=np.asarray(wrong, np.float64)[keep], minlength=size)
    x0, x1, y0, y1 = window
    col, row = cells % width, cells // width
    return GridSummary(
        width=width, height=height, cell=cells,
        x=x0 + (col + 0.5) * (x1 - x0) / width, y=y1 - (row + 0.5) * (y1 - y0) / height,
        count=counts[cells], top_group=top_group[cells], top_share=top_count[cells] / counts[cells],
        error_share=errors[cells] / counts[cells])


def png_data_uri(rgba: np.ndarray) -> str:
    """``rgba`` (H, W, 4) uint8 as a ``data:image/png;base64,...`` URI (OpenCV's encoder)."""
    import base64

    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgba), cv2.COLOR_RGBA2BGRA),
                           [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"cannot encode a {rgba.shape} image as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


# --------------------------------------------------------------------------- the plan of one map

COLOUR_BY = ("true class", "predicted class", "correct", "confidence")
ERROR_COLOUR = "#d62728"
SPARSE_ERRORS = 0.05  # errors at most this share of the picture's pixels are drawn 2 x 2 pixels each
CORRECT_COLOUR = "#8aa5c4"


@dataclass(frozen=True)
class MapPlan:
    """What the map draws for one window.

    ``mode`` is "points" (every visible row as a marker) or "raster" (more rows than the
    cap: every visible row in ``images``, PNG data URIs drawn bottom first over the window,
    with ``grid`` for hover text). ``rows`` are the visible rows in both modes.
    """

    mode: str
    window: Window
    rows: np.ndarray
    color_by: str
    images: tuple[str, ...] = ()
    grid: GridSummary | None = None

    @property
    def n_visible(self) -> int:
        return int(self.rows.size)


def point_colours(color_by: str, rows: np.ndarray, *, true: np.ndarray, predicted: np.ndarray,
                  confidence: np.ndarray, n_classes: int) -> np.ndarray:
    """(M, 3) uint8 colour of each of ``rows`` for ``color_by`` ("true class", "predicted class" or
    "confidence"; "correct" is drawn as two layers, see ``plan_map``)."""
    if color_by == "true class":
        return class_palette(n_classes)[np.asarray(true)[rows]]
    if color_by == "predicted class":
        return class_palette(n_classes)[np.asarray(predicted)[rows]]
    if color_by == "confidence":
        return viridis(np.asarray(confidence)[rows])
    raise ValueError(f"`color_by` must be one of {COLOUR_BY[:2] + COLOUR_BY[3:]}. Received: {color_by!r}")


def plan_map(xy: np.ndarray, base: np.ndarray, window: Window, *, color_by: str, true: np.ndarray,
             predicted: np.ndarray, correct: np.ndarray, confidence: np.ndarray, n_classes: int,
             cap: int = 20_000, width: int = 480, height: int = 300) -> MapPlan:
    """Plan the map of the rows in boolean ``base`` (N,) inside ``window``.

    At most ``cap`` visible rows: every one is a marker. More: every one is drawn into
    a picture of ``width`` x ``height`` pixels coloured by ``color_by`` (for "correct",
    the correct rows first and the errors on top, so that errors stay visible in dense
    regions), plus a 60 x 40 hover grid.
    """
    if color_by not in COLOUR_BY:
        raise ValueError(f"`color_by` must be one of {COLOUR_BY}. Received: {color_by!r}")
    if cap < 1:
        raise ValueError(f"`cap` must be at least 1. Received: cap={cap}")
    rows = rows_in_window(xy, base, window)
    if rows.size <= cap:
        return MapPlan("points", window, rows, color_by)
    pts = np.asarray(xy[rows])
    if color_by == "correct":
        wrong = ~np.asarray(correct, bool)[rows]
        layers = [(pts[~wrong], np.tile(np.uint8(hex_to_rgb(CORRECT_COLOUR)), (int((~wrong).sum()), 1))),
                  (pts[wrong], np.tile(np.uint8(hex_to_rgb(ERROR_COLOUR)), (int(wrong.sum()), 1)))]
    else:
        layers = [(pts, point_colours(color_by, rows, true=true, predicted=predicted, confidence=confidence,
                                      n_classes=n_classes))]
    # the errors' layer opaque and each error 2 x 2 pixels: at 70,000 points of which a few hundred
    # wrong, their pixels drawn at 55% opacity over the correct ones were mixed away (0 red pixels).
    # Grown only while they are sparse (at most SPARSE_ERRORS of the pixels): 37,000 errors
    # among 250,000 points, each 2 x 2, painted the whole map red
    grow = 1 if color_by == "correct" and len(layers[1][0]) <= SPARSE_ERRORS * width * height else 0
    opaque = [{} if i == 0 or color_by != "correct" else {"min_alpha": 1.0, "grow": grow} for i in range(len(layers))]
    images = tuple(png_data_uri(rasterise(p, c, window, width=width, height=height, **o).rgba)
                   for (p, c), o in zip(layers, opaque) if len(p))
    groups = np.asarray(predicted if color_by == "predicted class" else true)[rows]
    grid = grid_summary(pts, groups, ~np.asarray(correct, bool)[rows], window, n_groups=n_classes)
    return MapPlan("raster", window, rows, color_by, images, grid)
