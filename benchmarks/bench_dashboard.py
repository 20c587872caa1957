"""Dashboard timings on a 1,000,000-row synthetic run (not a test: prints a table).

Builds (or reuses, with --store) two synthetic runs of N images and K classes
with 16x16 images stored in the run, then times the functions each page
calls on an interaction (figure builders, filters, one gallery page,
selection logic) and, with --apptest, whole page runs through Streamlit's
AppTest with warm caches. Budget: every interaction under a second.

    .venv/bin/python benchmarks/bench_dashboard.py                 # 1M rows, 100 classes
    .venv/bin/python benchmarks/bench_dashboard.py --store /tmp/b  # keep/reuse the runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
from cpu_info import cpu_line  # noqa: E402  (this script's folder is on sys.path)

from core.analysis import neighbours  # noqa: E402
from core.analysis.compare import compare, flip_cells, image_signature  # noqa: E402
from core.run.metrics import confused_pairs, confusion_matrix  # noqa: E402
from core.run.store import Run, RunStore  # noqa: E402
from core.run.synthetic import make_synthetic_run  # noqa: E402
from dashboard import figures, mapview, views  # noqa: E402

BUDGET_S = 1.0


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def ensure_runs(store: RunStore, n: int, k: int) -> tuple[str, str]:
    ids = (f"bench-{n}-{k}-a", f"bench-{n}-{k}-b")
    for run_id, accuracy in zip(ids, (0.85, 0.9)):
        if not store.exists(run_id):
            start = time.perf_counter()
            make_synthetic_run(store, run_id, n=n, n_classes=k, accuracy=accuracy, seed=0)
            print(f"built {run_id} in {time.perf_counter() - start:.1f} s", flush=True)
    return ids


def thumbnails_page(run: Run, rows: np.ndarray) -> int:
    from dashboard import cache, gallery  # streamlit import only, no server

    page = views.page_of(rows, page=1, per_page=24)
    key = cache.run_key(run)
    for row in page:
        cache.thumbnail(run, key, int(row), gallery.THUMB_PX)
        gallery.compact_caption(run, row)
        gallery.full_caption(run, row)
    return page.size


def lasso(xy: np.ndarray, *, share: float, vertices: int = 300) -> np.ndarray:
    """A wobbly closed lasso (``vertices`` points) around the first row's point, ``share`` of the map's
    width across: the kind of region a user circles on a cluster."""
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    centre, radius = xy[0].astype(np.float64), (hi - lo) * share / 2
    angle = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    wobble = 1 + 0.15 * np.sin(7 * angle)
    return np.stack([centre[0] + radius[0] * wobble * np.cos(angle),
                     centre[1] + radius[1] * wobble * np.sin(angle)], axis=1)


def bench_functions(a: Run, b: Run) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []

    def add(name, fn, repeat=3):
        seconds, out = timed(fn, repeat)
        rows.append((name, seconds))
        return out

    fresh = Run(a.path)
    add("load run: predictions table (cold)", lambda: Run(a.path).predictions, repeat=1)
    df = fresh.predictions
    mask = add("eval mask", fresh.eval_mask)
    k = len(fresh.classes)
    cm = add("confusion matrix (eval split)", lambda: confusion_matrix(
        df["true"].to_numpy()[mask], df["predicted"].to_numpy()[mask], n_classes=k))
    add(f"confusion figure, all {k} classes (+ JSON)",
        lambda: figures.confusion_figure(cm, fresh.classes).to_json())
    order = views.most_confused_classes(cm, top=30)
    add("confusion figure, top-30 classes (+ JSON)",
        lambda: figures.confusion_figure(cm, fresh.classes, class_order=order, log_color=True).to_json())
    t, p = views.default_cell(cm)
    cell = add("rows of a clicked cell", lambda: views.cell_rows(df, mask, true=t, predicted=p))
    add("gallery page: 24 thumbnails + captions", lambda: thumbnails_page(fresh, cell))
    errors = add("errors: all, ranked", lambda: views.filter_errors(df, mask))
    add("errors: filtered (2 classes, conf 0.5-1)", lambda: views.filter_errors(
        df, mask, true_classes=[0, 1], confidence_range=(0.5, 1.0)))
    add(f"errors CSV export ({errors.size:,} rows)",
        lambda: views.errors_csv(fresh, errors), repeat=1)
    add("per-class CSV bytes", fresh.per_class_csv)
    add("most confused pairs", lambda: confused_pairs(cm, fresh.classes, top=15))
    row = int(errors[0])
    add("probability figure (+ JSON)", lambda: figures.probability_figure(
        np.asarray(fresh.probs[row]), fresh.classes, true=int(df["true"].iat[row]),
        predicted=int(df["predicted"].iat[row])).to_json())
    reference, pool_kind = neighbours.reference_rows(df["split"].astype(str).to_numpy())
    pools = add("neighbour pools by class (cached once)", lambda: neighbours.rows_by_class(
        df["true"].to_numpy(), reference, n_classes=k), repeat=1)
    cls_rows = pools[int(df["true"].iat[row])]
    add(f"nearest neighbours ({cls_rows.size:,} {pool_kind} rows of a class)",
        lambda: neighbours.nearest(fresh.embeddings, row, cls_rows, k=5))
    xy = np.ascontiguousarray(fresh.projection, dtype=np.float32)
    everything = np.ones(len(df), bool)
    arrays = {"true": df["true"].to_numpy(), "predicted": df["predicted"].to_numpy(),
              "correct": df["correct"].to_numpy(bool), "confidence": df["confidence"].to_numpy()}
    full = mapview.full_window(xy)
    for color_by in ("true class", "correct", "confidence"):
        plan = add(f"map: picture of all {len(df):,} points, coloured by {color_by}",
                   lambda: mapview.plan_map(xy, everything, full, color_by=color_by, n_classes=k, **arrays))
    add("map: figure of the picture (+ JSON)", lambda: figures.embedding_figure(
        plan, xy, df, fresh.classes).to_json())
    points = add("map: points sorted by y for selections (once per map)", lambda: mapview.SortedPoints(xy),
                 repeat=1)
    for share in (0.1, 0.4):
        polygon = lasso(xy, share=share)
        n_inside = points.in_polygon(polygon).size
        add(f"map: lasso of 300 vertices -> all {n_inside:,} rows inside", lambda: points.in_polygon(polygon))
    add("map: box -> every row inside", lambda: points.in_box((*np.percentile(xy[:, 0], [30, 70]),
                                                               *np.percentile(xy[:, 1], [30, 70]))))
    window = mapview.padded(mapview.shapes_bounds([("lasso", tuple(map(tuple, lasso(xy, share=0.1))))]))
    zoomed = add("map: zoom to the selection -> re-render the window",
                 lambda: mapview.plan_map(xy, everything, window, color_by="true class", n_classes=k, **arrays))
    add(f"map: zoomed figure, {zoomed.n_visible:,} points in a {zoomed.mode} (+ JSON)",
        lambda: figures.embedding_figure(zoomed, xy, df, fresh.classes).to_json())
    small = mapview.zoom_window(window, factor=0.1)
    close = add("map: zoom in close -> every point a marker",
                lambda: mapview.plan_map(xy, everything, small, color_by="confidence", n_classes=k, **arrays))
    add(f"map: close figure, {close.n_visible:,} points as {close.mode} (+ JSON)",
        lambda: figures.embedding_figure(close, xy, df, fresh.classes).to_json())
    other = Run(b.path)
    add("compare: image signature", lambda: image_signature(other))
    comparison = add("compare: metrics, per-class deltas and flips (core.analysis.compare)", lambda: compare(fresh, other))
    add("compare: flips per cell", lambda: flip_cells(comparison.flips, fresh.classes))
    return rows


def bench_apptest(store_root: Path, run_a: str, run_b: str) -> list[tuple[str, float]]:
    from streamlit.testing.v1 import AppTest

    os.environ["ARTIFACTS_DIR"] = str(store_root)
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=300)
    start = time.perf_counter()
    at.run()
    rows = [("AppTest: first run (loads the run, cold caches)", time.perf_counter() - start)]
    at.sidebar.selectbox(key="run_id").set_value(run_a)
    at.run()

    def page(name: str, action=None) -> None:
        at.switch_page(f"app_pages/{name}.py")
        start = time.perf_counter()
        at.run()  # first visit: fills this page's caches
        rows.append((f"AppTest: {name} page first visit", time.perf_counter() - start))
        if action:
            action()
            start = time.perf_counter()
            at.run()
            rows.append((f"AppTest: {name} page after its first choice", time.perf_counter() - start))
        start = time.perf_counter()
        at.run()
        rows.append((f"AppTest: {name} page rerun (warm)", time.perf_counter() - start))
        if at.exception:
            raise RuntimeError(f"{name}: {at.exception[0].value}")

    page("overview")
    page("per_class")
    page("confusion")
    page("errors")
    page("embeddings")
    page("compare", lambda: (at.selectbox(key="compare-a").set_value(run_a),
                             at.selectbox(key="compare-b").set_value(run_b)))
    # one interaction: choose another confusion cell (new gallery)
    at.switch_page("app_pages/confusion.py")
    at.run()
    next(s for s in at.selectbox if s.label == "True class").set_value(1)
    start = time.perf_counter()
    at.run()
    rows.append(("AppTest: confusion, choose a cell -> gallery", time.perf_counter() - start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--store", type=Path, default=None, help="store to build/reuse the runs in")
    parser.add_argument("--no-apptest", action="store_true", help="skip whole-page AppTest timings")
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    root = args.store or Path(tempfile.mkdtemp(prefix="bench_dashboard_"))
    store = RunStore(root)
    run_a, run_b = ensure_runs(store, args.n, args.classes)
    rows = bench_functions(store.load(run_a), store.load(run_b))
    if not args.no_apptest:
        rows += bench_apptest(root, run_a, run_b)
    width = max(len(name) for name, _ in rows)
    print(f"\n{args.n:,} images, {args.classes} classes, store {root}")
    print(f"{'step':<{width}}  {'seconds':>8}  {'/ budget':>8}")
    for name, seconds in rows:
        flag = "" if seconds < BUDGET_S else "  over budget"
        print(f"{name:<{width}}  {seconds:8.3f}  {seconds / BUDGET_S:8.2f}{flag}")


if __name__ == "__main__":
    main()
