"""The embedding map's pure functions: selection from drawn shapes, rasterising every point, windows.

Points are rows of a projection ``xy`` (N, 2); a window is (x0, x1, y0, y1); raster row 0 is the top.
"""

from __future__ import annotations

import numpy as np
import pytest

from dashboard import mapview


def random_polygon(rng: np.random.Generator, *, vertices: int, concave: bool) -> np.ndarray:
    """A closed polygon around a random centre: a wobbly circle, or a star (concave)."""
    angle = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radius = rng.uniform(0.5, 3.0) * (np.where(np.arange(vertices) % 2, 0.35, 1.0) if concave
                                      else rng.uniform(0.8, 1.2, vertices))
    centre = rng.normal(0, 1, 2)
    return np.stack([centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle)], axis=1)


@pytest.mark.parametrize("seed", range(8))
def test_sorted_sweep_selects_exactly_what_the_textbook_ray_cast_selects(seed):
    rng = np.random.default_rng(seed)
    xy = rng.normal(0, 2, (20_000, 2)).astype(np.float32)
    xy[:200] = np.round(xy[:200], 1)  # ties on y and points exactly on grid lines
    points = mapview.SortedPoints(xy)
    for concave in (False, True):
        polygon = random_polygon(rng, vertices=int(rng.integers(3, 200)), concave=concave)
        expected = np.flatnonzero(mapview.points_in_polygon(xy, polygon))
        got = points.in_polygon(polygon)
        assert got.tolist() == expected.tolist()
        assert expected.size > 0


def test_a_self_crossing_lasso_follows_the_even_odd_rule():
    # a bow tie: the two triangles are inside, the centre where the edges cross is a single point
    bow = [(0, 0), (2, 2), (2, 0), (0, 2)]
    xy = np.array([[0.2, 1.0], [1.8, 1.0], [1.0, 0.2], [1.0, 1.8]])
    assert mapview.SortedPoints(xy).in_polygon(bow).tolist() == [0, 1]
    assert mapview.points_in_polygon(xy, bow).tolist() == [True, True, False, False]


def test_boxes_are_inclusive_and_shapes_combine_as_a_union():
    xy = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [5.0, 5.0], [1.0, 3.0]])
    points = mapview.SortedPoints(xy)
    assert points.in_box((1.0, 0.0, 2.0, 0.0)).tolist() == [0, 1]  # any corner order, edges included
    union = points.in_shapes([("box", (0, 1, 0, 1)), ("lasso", ((4, 4), (6, 4), (6, 6), (4, 6)))])
    assert union.tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="Unknown shape kind 'circle'"):
        points.in_shapes([("circle", (0, 0, 1))])
    with pytest.raises(ValueError, match="at least 3"):
        points.in_polygon([(0, 0), (1, 1)])
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        mapview.SortedPoints(np.zeros(3))


def test_shapes_come_from_streamlits_selection_state_in_data_units():
    selection = {"points": [], "box": [{"xref": "x", "yref": "y", "x": [3, 1], "y": [2, -1]}],
                 "lasso": [{"x": [0, 1, 1], "y": [0, 0, 1]}, {"x": [0, 1], "y": [0, 1]}]}
    assert mapview.shapes_from_selection(selection) == [
        ("box", (1.0, 3.0, -1.0, 2.0)), ("lasso", ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0)))]
    assert mapview.shapes_from_selection(None) == []
    assert mapview.shapes_bounds(mapview.shapes_from_selection(selection)) == (0.0, 3.0, -1.0, 2.0)
    assert mapview.shapes_bounds([]) is None


def test_rasterising_draws_every_point_in_its_pixel_with_the_mean_colour():
    # window 0..4 x 0..2 on 4 x 2 pixels: pixel (row, col) covers x in [col, col+1), y in (1-row, 2-row]
    xy = np.array([[0.5, 1.5], [0.6, 1.4], [3.5, 0.5], [4.0, 0.0], [9.0, 9.0]])
    colours = np.array([[255, 0, 0], [0, 0, 255], [0, 255, 0], [0, 255, 0], [1, 1, 1]], np.uint8)
    r = mapview.rasterise(xy, colours, (0.0, 4.0, 0.0, 2.0), width=4, height=2, min_alpha=0.5)
    assert r.counts.tolist() == [[2, 0, 0, 0], [0, 0, 0, 2]]  # the point outside the window is left out
    assert r.rgba[0, 0].tolist()[:3] == [128, 0, 128]  # red and blue mixed
    assert r.rgba[1, 3].tolist() == [0, 255, 0, 255]
    assert r.rgba[0, 1, 3] == 0  # empty pixels are transparent
    one = mapview.rasterise(xy[:3], colours[:3], (0.0, 4.0, 0.0, 2.0), width=4, height=2, min_alpha=0.5)
    # a lone pixel beside one of 2 points: opacity from min_alpha up by the log of its count
    assert one.rgba[1, 3, 3] == round(255 * (0.5 + 0.5 * np.log(2) / np.log(3))) >= 255 * 0.5
    with pytest.raises(ValueError, match="one row per point"):
        mapview.rasterise(xy, colours[:2], (0.0, 4.0, 0.0, 2.0))


def test_grid_summary_counts_every_point_with_its_most_common_class_and_errors():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 10, (5000, 2))
    groups = rng.integers(0, 4, 5000)
    wrong = rng.random(5000) < 0.2
    g = mapview.grid_summary(xy, groups, wrong, (0.0, 10.0, 0.0, 10.0), width=5, height=5, n_groups=4)
    assert g.count.sum() == 5000
    for x, y, count, top, share, errors in zip(g.x, g.y, g.count, g.top_group, g.top_share, g.error_share):
        cell = (np.abs(xy[:, 0] - x) <= 1.0) & (np.abs(xy[:, 1] - y) <= 1.0)
        assert cell.sum() == count
        per_group = np.bincount(groups[cell], minlength=4)
        assert per_group[top] == per_group.max() and share == pytest.approx(per_group.max() / count)
        assert errors == pytest.approx(wrong[cell].mean())


def test_plan_map_draws_points_up_to_the_cap_and_a_picture_beyond():
    rng = np.random.default_rng(0)
    n = 3000
    xy = rng.normal(0, 1, (n, 2))
    arrays = {"true": rng.integers(0, 3, n), "predicted": rng.integers(0, 3, n), "correct": rng.random(n) < 0.7,
              "confidence": rng.random(n)}
    base = np.ones(n, bool)
    base[:100] = False
    window = mapview.full_window(xy)
    points = mapview.plan_map(xy, base, window, color_by="true class", n_classes=3, cap=n, **arrays)
    assert points.mode == "points" and points.rows.tolist() == list(range(100, n)) and not points.images
    picture = mapview.plan_map(xy, base, window, color_by="correct", n_classes=3, cap=1000, **arrays)
    assert picture.mode == "raster" and picture.n_visible == n - 100 and len(picture.images) == 2
    assert picture.grid.count.sum() == n - 100
    zoomed = mapview.plan_map(xy, base, (0.0, 0.5, 0.0, 0.5), color_by="confidence", n_classes=3, cap=1000,
                              **arrays)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= 0.5) & (xy[:, 1] >= 0) & (xy[:, 1] <= 0.5) & base
    assert zoomed.mode == "points" and zoomed.rows.tolist() == np.flatnonzero(inside).tolist()


def test_windows_zoom_about_their_centre_and_colours_are_distinct():
    assert mapview.zoom_window((0.0, 2.0, 0.0, 4.0), factor=0.5) == (0.5, 1.5, 1.0, 3.0)
    assert mapview.zoom_window((0.0, 2.0, 0.0, 2.0), factor=4.0, limit=(-1.0, 2.0, -5.0, 5.0)) == (
        -1.0, 2.0, -3.0, 5.0)
    assert mapview.padded((0.0, 10.0, 0.0, 10.0), pad=0.1) == (-1.0, 11.0, -1.0, 11.0)
    palette = mapview.class_palette(120)
    assert palette.shape == (120, 3) and len({tuple(c) for c in palette}) == 120
    assert mapview.viridis(np.array([0.0, 1.0, 2.0])).tolist() == [[68, 1, 84], [253, 231, 37], [253, 231, 37]]


def test_errors_stay_visible_in_the_picture_of_a_dense_map():
    """Issue 24: 70,000 points coloured by correctness gave 0 red pixels (each error mixed at 55%
    opacity into the correct points around it). The errors' layer is opaque, each error 2 x 2 pixels."""
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(70_000, 2))
    correct = rng.random(70_000) > 0.004  # about 280 errors among 70,000
    n = 70_000
    plan = mapview.plan_map(xy, np.ones(n, bool), mapview.full_window(xy), color_by="correct",
                            true=np.zeros(n, int), predicted=np.zeros(n, int), correct=correct,
                            confidence=np.ones(n), n_classes=2, cap=20_000)
    assert plan.mode == "raster" and len(plan.images) == 2
    import base64

    import cv2

    errors = cv2.imdecode(np.frombuffer(base64.b64decode(plan.images[1].split(",", 1)[1]), np.uint8),
                          cv2.IMREAD_UNCHANGED)  # BGRA
    red = (errors[..., 3] == 255) & (errors[..., 2] == 0xd6) & (errors[..., 1] == 0x27)
    pixels = {tuple(p) for p in zip(*np.nonzero(red))}
    wrong = int((~correct).sum())
    assert red.sum() >= 2 * wrong  # every error opaque and grown (a few share pixels)
    assert (errors[..., 3][~red] == 0).all()  # nothing else in that layer
    assert len(pixels) == red.sum()


def test_grow_paints_the_pixels_right_and_below_only_where_empty():
    r = mapview.rasterise(np.array([[0.0, 1.0], [1.0, 1.0]]), np.array([[255, 0, 0], [0, 0, 255]], np.uint8),
                          (0.0, 1.0, 0.0, 1.0), width=3, height=3, min_alpha=1.0, grow=1)
    alpha = (r.rgba[..., 3] > 0).astype(int).tolist()
    assert alpha == [[1, 1, 1], [1, 1, 1], [0, 0, 0]]
    assert r.rgba[0, 2, :3].tolist() == [0, 0, 255] and r.rgba[1, 1, :3].tolist() == [255, 0, 0]
    assert r.counts.sum() == 2  # counts are the points', not the painted pixels'


def test_dense_errors_are_drawn_one_pixel_each_so_the_map_is_not_painted_red():
    """Errors are grown to 2 x 2 pixels only while sparse: 15% of 250,000 points grown covered the map."""
    import base64

    import cv2

    rng = np.random.default_rng(1)
    n = 250_000
    xy = rng.normal(size=(n, 2))
    correct = rng.random(n) > 0.15
    plan = mapview.plan_map(xy, np.ones(n, bool), mapview.full_window(xy), color_by="correct",
                            true=np.zeros(n, int), predicted=np.zeros(n, int), correct=correct,
                            confidence=np.ones(n), n_classes=2, cap=20_000)
    errors = cv2.imdecode(np.frombuffer(base64.b64decode(plan.images[1].split(",", 1)[1]), np.uint8),
                          cv2.IMREAD_UNCHANGED)
    drawn = int((errors[..., 3] == 255).sum())
    pixels_hit = np.unique(mapview.pixel_index(xy[~correct], plan.window, width=480, height=300)[1]).size
    assert drawn == pixels_hit  # one pixel per error's pixel, not grown
