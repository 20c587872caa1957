"""The error-analysis report of a run: one self-contained HTML file, or Markdown + images.

``build_report(run) -> Report`` gathers what the run holds into sections (each
only when the run has its data): summary, per-class table, confusion matrix
and most confused pairs, most confident errors, diagnoses, the map, training,
a comparison with another run, verdicts. Each section opens with a few
sentences generated from its numbers alone. ``render_html`` writes one HTML
document whose figures are inline SVG and whose pictures are data URIs: no
script, no stylesheet or font from anywhere, printable with page breaks
between sections. ``write_markdown`` writes ``report.md`` and ``images/``.

Every string that comes from the user (class names, file paths, run and
reviewer names, notes) is escaped where it is rendered (``html.escape`` for
HTML; Markdown escapes and a code span for paths), and bidirectional control
characters are shown as their code points so that a name cannot reorder the
text around it.

``max_images`` bounds the thumbnails (and so the file's size): sections take
their share of it in order, and say how many they left out. Reading a run for
its report imports neither TensorFlow nor umap.

Conventions: N images, K classes; rows of a confusion matrix are true classes,
columns predicted; row ids are positions in ``run.predictions``.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError
from core.run import metrics as M
from core.run.store import Run

DEFAULT_MAX_IMAGES = 120
THUMB_PX = 96
#: classes shown in the confusion-matrix figure; a run with more shows those of the largest confusions first
MATRIX_CLASSES = 20
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]
ERROR_COLOUR = "#d62728"
# bidirectional controls (LRE..RLO, LRI..PDI, LRM/RLM/ALM): shown as code points, never obeyed
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def clean(text: object) -> str:
    """``text`` as a plain string safe to show: bidi controls and other control characters as ``<U+XXXX>``.

    >>> clean("abc\\u202edef")
    'abc<U+202E>def'
    """
    text = str(text)
    text = _BIDI.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)
    return "".join(c if c.isprintable() or c == " " else f"<U+{ord(c):04X}>" for c in text)


def esc(text: object) -> str:
    """``clean(text)`` escaped for HTML text and attribute values."""
    return html.escape(clean(text), quote=True)


# --------------------------------------------------------------------------- the document model
@dataclass
class Picture:
    """A thumbnail: encoded image bytes (``mime``), its caption lines (user strings, unescaped)."""

    data: bytes | None
    mime: str
    lines: tuple[str, ...]
    wrong: bool = False


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    highlight: set[int] = field(default_factory=set)  # row positions called out
    numeric: set[int] = field(default_factory=set)  # column positions aligned right
    values: list[list[object]] | None = None  # exact values behind the shown cells (data-value)


@dataclass
class Figure:
    """An inline SVG (``svg``, built here from numbers: trusted markup with escaped text) or a PNG."""

    alt: str
    svg: str | None = None
    png: bytes | None = None
    caption: str = ""


@dataclass
class Section:
    key: str
    title: str
    narrative: list[str] = field(default_factory=list)
    blocks: list = field(default_factory=list)  # str (a paragraph), Table, Figure, list[Picture], ("h3", text)


@dataclass
class Report:
    title: str
    run_id: str
    sections: list[Section]
    n_images: int
    max_images: int


class _Budget:
    """What is left of ``max_images`` thumbnails."""

    def __init__(self, total: int):
        self.left = total

    def take(self, wanted: int) -> int:
        n = max(0, min(wanted, self.left))
        self.left -= n
        return n


# --------------------------------------------------------------------------- helpers
def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2%}"


def _f3(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def _thumbnail(run: Run, row: int) -> tuple[bytes | None, str]:
    """Encoded thumbnail of ``row`` (PNG for small gray pictures, JPEG for photos), or (None, why not)."""
    import cv2

    from core.data.images import thumbnail

    try:
        img = run.image(int(row))  # RGB or gray uint8 (images.npy or the file, read inside the data root)
    except (OSError, UserError) as exc:  # PermissionError outside the data root, a damaged images.npy
        return None, str(exc)
    if img is None:
        return None, "image not readable"
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if max(img.shape[:2]) > THUMB_PX:  # never enlarged here: the page scales small pictures up (pixelated)
        img = thumbnail(img, size=THUMB_PX)
    small = img.shape[0] * img.shape[1] <= 64 * 64 or img.ndim == 2
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    ok, buf = cv2.imencode(".png" if small else ".jpg", bgr, [] if small else [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        return None, "cannot encode"
    return buf.tobytes(), "image/png" if small else "image/jpeg"


def _pictures(run: Run, rows: Sequence[int], budget: _Budget, caption, *, wanted: int) -> list[Picture]:
    rows = list(rows)[:budget.take(min(wanted, len(rows)))]
    preds = run.predictions
    correct = preds["correct"].to_numpy()
    out = []
    for row in rows:
        data, mime = _thumbnail(run, row)
        lines = tuple(caption(int(row)))
        if data is None:
            lines = lines + (f"(no picture: {mime})",)
        out.append(Picture(data=data, mime=mime if data is not None else "", lines=lines,
                           wrong=not bool(correct[row])))
    return out


def _prediction_caption(run: Run):
    preds = run.predictions
    names = run.classes
    true, pred, conf = preds["true"].to_numpy(), preds["predicted"].to_numpy(), preds["confidence"].to_numpy()
    paths = preds["path"]

    def caption(row: int) -> list[str]:
        head = (f"{names[pred[row]]} {conf[row]:.2f} (true {names[true[row]]})" if pred[row] != true[row]
                else f"✓ {names[true[row]]} {conf[row]:.2f}")
        return [head, str(paths.iat[row])]
    return caption


# --------------------------------------------------------------------------- SVG figures
def _svg(width: int, height: int, body: str, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{esc(label)}" font-family="sans-serif" '
            f'font-size="11">{body}</svg>')


def _short(name: str, limit: int = 18) -> str:
    name = clean(name)
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _blend(share: float, colour=(31, 119, 180)) -> str:
    r, g, b = (round(255 - (255 - c) * share) for c in colour)
    return f"rgb({r},{g},{b})"


def _share_label(share: float) -> str:
    """A row share that never reads 0% for images that are there nor 100% for a row not whole.

    >>> [_share_label(x) for x in (0.004, 0.005, 0.5, 0.996, 1.0)]
    ['<1%', '<1%', '50%', '>99%', '100%']
    """
    if share < 0.01:
        return "<1%"
    if share < 1.0 and round(share * 100) >= 100:
        return ">99%"
    return f"{share:.0%}"


def confusion_svg(cm: np.ndarray, names: Sequence[str], *, normalise: bool, title: str,
                  row_totals: np.ndarray | None = None) -> str:
    """The matrix as an SVG heat map (rows true, columns predicted), counts or row shares in the cells.

    ``row_totals`` (K,): the images of each true class when ``cm`` is a part of the full matrix (its
    shares are of the whole row, not of the classes shown); default the rows' own sums.
    """
    k = len(names)
    cell = max(12, min(44, 560 // max(k, 1)))
    left, top = 130, 110
    width, height = left + cell * k + 70, top + cell * k + 30
    totals = cm.sum(axis=1) if row_totals is None else np.asarray(row_totals)
    shares = np.divide(cm, totals[:, None], out=np.zeros(cm.shape, float), where=totals[:, None] > 0)
    parts = [f'<text x="{left}" y="14" font-weight="bold">{esc(title)}</text>',
             f'<text x="{left + cell * k / 2:.0f}" y="{height - 6}" text-anchor="middle">predicted</text>',
             f'<text x="12" y="{top + cell * k / 2:.0f}" text-anchor="middle" '
             f'transform="rotate(-90 12 {top + cell * k / 2:.0f})">true</text>']
    show_text = cell >= 22
    for i in range(k):
        y = top + i * cell
        parts.append(f'<text x="{left - 4}" y="{y + cell / 2 + 4:.0f}" text-anchor="end">'
                     f'{esc(_short(names[i]))}</text>')
        x = left + i * cell + cell / 2
        parts.append(f'<text x="{x:.0f}" y="{top - 4}" transform="rotate(-55 {x:.0f} {top - 4})">'
                     f'{esc(_short(names[i]))}</text>')
        for j in range(k):
            share = float(shares[i, j])
            colour = _blend(share, (31, 119, 180) if i == j else (214, 39, 40)) if cm[i, j] else "#fff"
            parts.append(f'<rect x="{left + j * cell}" y="{y}" width="{cell}" height="{cell}" fill="{colour}" '
                         f'stroke="#ddd"><title>{esc(names[i])} → {esc(names[j])}: {int(cm[i, j]):,} '
                         f'({share:.1%})</title></rect>')
            if show_text and cm[i, j]:
                label = _share_label(share) if normalise else f"{int(cm[i, j])}"
                fill = "#fff" if share > 0.55 else "#222"
                parts.append(f'<text x="{left + j * cell + cell / 2:.0f}" y="{y + cell / 2 + 4:.0f}" '
                             f'text-anchor="middle" fill="{fill}" font-size="{9 if cell < 34 else 11}">'
                             f'{esc(label)}</text>')
    return _svg(width, height, "".join(parts), title)


def line_chart_svg(series: dict[str, Sequence[float]], *, title: str, y_label: str,
                   x: Sequence[float] | None = None, diagonal: bool = False, points: bool = False,
                   y_range: tuple[float, float] | None = None, integer_x: bool = False) -> str:
    """Lines (or points) of named series over a shared x; ``diagonal`` draws y = x (the reliability diagram);
    ``integer_x`` puts ticks on whole numbers only (epochs)."""
    width, height, left, top, right, bottom = 430, 260, 58, 24, 110, 34
    w, h = width - left - right, height - top - bottom
    xs = {name: np.asarray(x if x is not None else np.arange(1, len(v) + 1), float) for name, v in series.items()}
    ys = {name: np.asarray(v, float) for name, v in series.items()}
    allx = np.concatenate([v[np.isfinite(ys[n])] for n, v in xs.items()] or [np.zeros(1)])
    ally = np.concatenate([v[np.isfinite(v)] for v in ys.values()] or [np.zeros(1)])
    x0, x1 = (0.0, 1.0) if diagonal else (float(allx.min()), float(allx.max()) if allx.max() > allx.min() else
                                         float(allx.min()) + 1)
    y0, y1 = y_range or (float(ally.min()) if ally.size else 0.0, float(ally.max()) if ally.size else 1.0)
    if y1 <= y0:
        y1 = y0 + 1

    def px(vx, vy):
        return left + (vx - x0) / (x1 - x0) * w, top + h - (vy - y0) / (y1 - y0) * h

    parts = [f'<text x="{left}" y="14" font-weight="bold">{esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for t in np.linspace(y0, y1, 5):
        _, yy = px(x0, t)
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{yy + 4:.1f}" text-anchor="end">{t:.3g}</text>')
    ticks = np.linspace(x0, x1, 5)
    if integer_x:  # whole numbers, evenly spaced: 1, 3, 5, 7 rather than 1, 3, 4, 6, 8
        step = max(1, math.ceil((x1 - x0) / 5))
        ticks = np.arange(math.ceil(x0), x1 + 0.5, step)
    for t in ticks:
        xx, _ = px(t, y0)
        parts.append(f'<text x="{xx:.1f}" y="{top + h + 14}" text-anchor="middle">{t:.3g}</text>')
    parts.append(f'<text x="12" y="{top + h / 2:.0f}" transform="rotate(-90 12 {top + h / 2:.0f})" '
                 f'text-anchor="middle">{esc(y_label)}</text>')
    if diagonal:
        a, b = px(0, 0), px(1, 1)
        parts.append(f'<line x1="{a[0]:.1f}" y1="{a[1]:.1f}" x2="{b[0]:.1f}" y2="{b[1]:.1f}" stroke="#999" '
                     'stroke-dasharray="4 3"/>')
    for i, (name, vy) in enumerate(ys.items()):
        colour = PALETTE[i % len(PALETTE)]
        keep = np.isfinite(vy)
        coords = [px(a, b) for a, b in zip(xs[name][keep], vy[keep])]
        if coords:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in coords)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            if points:
                parts.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>' for a, b in coords)
        parts.append(f'<rect x="{left + w + 10}" y="{top + 6 + i * 16}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{left + w + 24}" y="{top + 15 + i * 16}">{esc(_short(name, 14))}</text>')
    return _svg(width, height, "".join(parts), title)


def _colours(n: int) -> np.ndarray:
    """``n`` distinct RGB colours (the palette, then evenly spaced hues)."""
    base = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in PALETTE]
    if n <= len(base):
        return np.array(base[:n], np.uint8)
    import cv2

    hues = (np.arange(n) * 180 / n).astype(np.uint8)
    hsv = np.stack([hues, np.full(n, 200, np.uint8), np.full(n, 220, np.uint8)], axis=1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def scatter_png(xy: np.ndarray, colours: np.ndarray, *, size: int = 520, order: np.ndarray | None = None) -> bytes:
    """A PNG of points ``xy`` (M, 2) in RGB ``colours`` (M, 3), drawn in ``order`` (later on top), 2x2 px each."""
    import cv2

    canvas = np.full((size, size, 3), 255, np.uint8)
    if len(xy):
        lo, hi = np.nanmin(xy, axis=0), np.nanmax(xy, axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        pix = ((xy - lo) / span * (size - 8) + 4).astype(np.int64)
        pix[:, 1] = size - 1 - pix[:, 1]
        order = np.arange(len(xy)) if order is None else order
        for dy in (0, 1):
            for dx in (0, 1):
                canvas[np.clip(pix[order, 1] + dy, 0, size - 1), np.clip(pix[order, 0] + dx, 0, size - 1)] = \
                    colours[order]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    return buf.tobytes()


# --------------------------------------------------------------------------- sections
def _summary(run: Run) -> Section:
    m = run.metrics
    s = Section("summary", "Summary")
    model, data = run.model_info, run.data_info
    skipped = len(run.skipped)
    n_eval = int(m.get("n", 0))
    model_name = Path(model.path).name if model.path else "(no model file recorded)"
    s.narrative.append(f"The model {clean(model_name)} ({model.format or 'unknown format'}) classifies "
                       f"{n_eval:,} images of "
                       f"the {clean(run.eval_split)} split with accuracy {_pct(m.get('accuracy'))} and macro-F1 "
                       f"{_f3(m.get('macro_f1'))}; {int(m.get('errors', 0)):,} of them are wrong"
                       + (f", and the right class is among its three most probable in "
                          f"{_pct(m.get('top3_accuracy'))} of cases." if m.get("top3_accuracy") is not None else "."))
    rows = [["Run", run.id], ["Created", run.created[:19].replace("T", " ")],
            ["Model", f"{model.path or '?'} ({model.format or '?'}"
             + (f", input {model.input_size[0]}x{model.input_size[1]}" if model.input_size else "")
             + (f", scale {model.scale}" if model.scale else "") + ")"],
            ["Data", f"{data.name} ({data.kind}" + (f", {data.path}" if data.path else "") + ")"],
            ["Classes", f"{len(run.classes):,}"],
            ["Images", f"{run.n_images:,} (" + ", ".join(f"{k} {v:,}" for k, v in sorted(run.splits.items())) + ")"],
            ["Evaluated split", f"{run.eval_split} ({n_eval:,} images)"],
            ["Skipped files", f"{skipped:,}"],
            ["Accuracy", _pct(m.get("accuracy"))], ["Macro-F1", _f3(m.get("macro_f1"))],
            ["Top-3 accuracy", _pct(m.get("top3_accuracy"))], ["Errors", f"{int(m.get('errors', 0)):,}"]]
    s.blocks.append(Table(["", ""], rows))
    if skipped:
        table = run.skipped.head(10)
        s.blocks.append(Table(list(map(str, table.columns)), [[str(v) for v in r] for r in table.values.tolist()]))
        if skipped > 10:
            s.blocks.append(f"… and {skipped - 10:,} more skipped files.")
    for note in run.notes:
        s.blocks.append(f"Note: {note}")
    return s


def worst_classes(per_class: pd.DataFrame, *, share: float = 0.1) -> np.ndarray:
    """Row positions of the lowest-F1 ``share`` of classes (at least one, ties at the cut included), lowest
    first (``M.lowest_f1``, which the dashboard's per-class table flags too)."""
    return M.lowest_f1(per_class, share=share)


def _per_class(run: Run, cm: np.ndarray) -> Section:
    table = run.per_class
    s = Section("per-class", "Per-class results")
    worst = worst_classes(table)
    names = run.classes
    for pos in worst[:3]:
        row = table.iloc[pos]
        k = int(pos)
        off = cm[k].copy(); off[k] = 0
        text = f"{clean(row['class'])} is {'the weakest class' if pos == worst[0] else 'also weak'} (F1 {row['f1']:.2f}"
        text += f", precision {row['precision']:.2f}, recall {row['recall']:.2f})"
        if off.sum():
            j = int(np.argmax(off))
            text += f"; {off[j] / off.sum():.0%} of its errors go to {clean(names[j])}"
        s.narrative.append(text + ".")
    best = int(np.argmax(table["f1"].to_numpy(float)))
    s.narrative.append(f"{clean(table['class'].iat[best])} is the strongest (F1 {table['f1'].iat[best]:.2f}). "
                       f"Highlighted rows: the {_plural(len(worst), 'class', 'classes')} with the lowest F1.")
    cols = ["class", "precision", "recall", "f1", "support", "tp", "fp", "fn", "tn", "cer"]
    shown, values = [], []
    for r in table[cols].itertuples(index=False):
        shown.append([str(r[0])] + [f"{v:.3f}" for v in r[1:4]] + [f"{int(v):,}" for v in r[4:9]] + [f"{r[9]:.4f}"])
        values.append([str(r[0])] + [float(v) for v in r[1:4]] + [int(v) for v in r[4:9]] + [float(r[9])])
    if len(table) > 20:  # a long table: the weakest first, then every class in order
        s.blocks.append(("h3", f"The {_plural(len(worst), 'weakest class', 'weakest classes')}"))
        s.blocks.append(Table(cols, [shown[int(i)] for i in worst], numeric=set(range(1, 10))))
        s.blocks.append(("h3", "Every class"))
    s.blocks.append(Table(cols, shown, highlight=set(int(w) for w in worst), numeric=set(range(1, 10)),
                          values=values))
    return s


def matrix_classes(cm: np.ndarray, top: int = MATRIX_CLASSES) -> np.ndarray:
    """Indices (ascending) of ``top`` classes, those of the largest confusions first
    (``M.most_confused_classes``; all of them when K <= top)."""
    if len(cm) <= top:
        return np.arange(len(cm))
    return M.most_confused_classes(cm, top=top)


def _confusion(run: Run, cm: np.ndarray, budget: _Budget, per_pair: int = 4) -> Section:
    s = Section("confusion", "Confusion matrix")
    names = run.classes
    keep = matrix_classes(cm)
    sub = cm[np.ix_(keep, keep)]
    sub_names = [names[i] for i in keep]
    note = "" if len(keep) == len(names) else (f" The {len(keep)} classes of the largest confusions (then those "
                                              f"most involved in errors) of {len(names):,}; the full matrix is in "
                                              "the dashboard.")
    totals = cm.sum(axis=1)[keep]
    s.blocks.append(Figure(alt="confusion matrix, counts", svg=confusion_svg(
        sub, sub_names, normalise=False, title="Counts (rows: true class)", row_totals=totals),
                           caption="Rows are true classes, columns predicted." + note))
    s.blocks.append(Figure(alt="confusion matrix, row-normalised",
                           svg=confusion_svg(sub, sub_names, normalise=True, title="Share of each true class",
                                             row_totals=totals),
                           caption="Where each true class's images go: shares of the whole row"
                                   + (", other classes included." if len(keep) < len(names) else " (100% a row).")
                                   + note))
    pairs = M.confused_pairs(cm, names, top=10)
    errors = int(cm.sum() - np.trace(cm))
    if len(pairs):
        top = pairs.iloc[0]
        top_share = pairs["count"].head(5).sum() / max(errors, 1)
        s.narrative.append(f"The most frequent confusion is {clean(top['true'])} taken for {clean(top['predicted'])} "
                           f"({int(top['count']):,} images, {top['share_of_true']:.1%} of {clean(top['true'])}); "
                           f"the five most confused pairs hold {top_share:.0%} of the {errors:,} errors.")
        s.blocks.append(Table(["true", "predicted as", "images", "share of true class"],
                              [[str(p["true"]), str(p["predicted"]), f"{int(p['count']):,}",
                                f"{p['share_of_true']:.1%}"] for _, p in pairs.iterrows()], numeric={2, 3}))
        preds = run.predictions
        mask = run.eval_mask()
        caption = _prediction_caption(run)
        for _, p in pairs.head(6).iterrows():
            if budget.left <= 0:
                break
            hit = (mask & (preds["true"].to_numpy() == p["true_index"])
                   & (preds["predicted"].to_numpy() == p["predicted_index"]))
            rows = np.flatnonzero(hit)
            rows = rows[np.argsort(-preds["confidence"].to_numpy()[rows], kind="stable")]
            s.blocks.append(("h3", f"{p['true']} → {p['predicted']} ({int(p['count']):,})"))
            s.blocks.append(_pictures(run, rows, budget, caption, wanted=per_pair))
    else:
        s.narrative.append("No image of the evaluated split is misclassified.")
    return s


def _image_flags(run: Run, findings: dict) -> list:
    """Per-image caption makers from the kinds' declared findings, else label-issue and copy flags."""
    makers = []
    for name, f in findings.items():
        if f.columns is None or not f.captions:
            continue
        columns = f.columns

        def lines(row: int, columns=columns, captions=f.captions) -> list[str]:
            if row not in columns.index:
                return []
            values = columns.loc[row].to_dict()
            out = []
            for cap in captions:
                flag = values.get(cap.when)
                if flag is None or (isinstance(flag, float) and math.isnan(flag)) or not flag:
                    continue
                try:
                    out.append(cap.template.format(**values))
                except (KeyError, ValueError, IndexError):
                    continue
            return out
        makers.append(lines)
    if makers:
        return makers
    issues = _stored(run, "label_issues")
    if issues is not None:
        table = issues.table("label_issues")
        flagged = dict(zip(table.loc[table["is_issue"], "row"].astype(int), table.loc[table["is_issue"], "score"]))
        suggested = dict(zip(table["row"].astype(int), table.get("suggested_label", pd.Series(dtype=str))))
        makers.append(lambda row: [f"label issue (score {flagged[row]:.2f})"
                                   + (f", likelier {suggested[row]}" if row in suggested else "")]
                      if row in flagged else [])
    dups = _stored(run, "duplicates")
    if dups is not None:
        copies = dups.table("eval_with_train_copy")
        leak = set(copies["row"].astype(int))
        makers.append(lambda row: ["has a near copy in train"] if row in leak else [])
    return makers


def _stored(run: Run, name: str):
    """The current stored result of kind ``name`` (None when missing, stale or the kind is not registered)."""
    from core import diagnose
    from core.run import derived

    diagnose.load_kinds()
    if name not in derived.kinds():
        return None
    try:
        return derived.get(run, name, compute=False)
    except (UserError, OSError):  # a stored result that cannot be read: the report goes on without it
        return None


def _confident_errors(run: Run, budget: _Budget, flags: list, wanted: int) -> Section | None:
    from core.report.tables import errors_table

    table = errors_table(run)
    if table.empty:
        return None
    s = Section("errors", "Most confident errors")
    high = int((table["confidence"] >= 0.9).sum())
    s.narrative.append(f"{_plural(len(table), 'error')} in the {clean(run.eval_split)} split; {high:,} of them are "
                       "made "
                       f"with confidence ≥ 0.90, the most confident at {table['confidence'].iat[0]:.2f} "
                       f"({clean(table['true_label'].iat[0])} called {clean(table['predicted_label'].iat[0])}).")
    causes = _stored(run, "causes")
    if causes is not None and not flags:
        from core.diagnose import headline

        s.narrative.append(f"Error causes: {clean(headline('causes', causes.summary))}.")
    base = _prediction_caption(run)
    n_flagged = 0
    top_rows = table["id"].to_numpy()[:wanted]
    for row in top_rows:
        if any(f(int(row)) for f in flags):
            n_flagged += 1
    if flags:
        s.narrative.append(f"{n_flagged} of the {len(top_rows)} most confident errors carry a diagnosis flag "
                           "(shown under the picture).")

    def caption(row: int) -> list[str]:
        return base(row) + [line for f in flags for line in f(row)]
    s.blocks.append(_pictures(run, top_rows, budget, caption, wanted=wanted))
    head = table.head(20)
    s.blocks.append(Table(["rank", "file", "true", "predicted", "confidence", "true prob.", "margin"],
                          [[str(r["rank"]), str(r["path"]), str(r["true_label"]), str(r["predicted_label"]),
                            f"{r['confidence']:.3f}", f"{r['true_prob']:.3f}", f"{r['margin']:.3f}"]
                           for _, r in head.iterrows()], numeric={0, 4, 5, 6}))
    return s


# For kinds that declare no findings: (table, rows filter column, sort column, ascending, what the images are)
_FALLBACK_ROWS = {
    "label_issues": ("label_issues", "is_issue", "score", False, "most likely mislabelled first"),
    "calibration": ("confident_errors", None, "rank", True, "the most confident mistakes first"),
    "duplicates": ("eval_with_train_copy", None, "similarity", False,
                   "evaluated images with a near copy in train, closest copy first"),
    "image_properties": ("properties", None, "atypicality", False, "the most atypical evaluated images first"),
}
_FALLBACK_HEADLINES = {
    "duplicates": lambda s: (f"{s['n_pairs']:,} pairs of copies ({s['n_exact']:,} exact, {s['n_near']:,} near; "
                             f"{s['n_cross_split']:,} across splits); {s['n_eval_with_train_copy']:,} images of "
                             f"'{s['eval_split']}' have a copy in train, {s['n_eval_errors_with_train_copy']:,} of "
                             "them misclassified."),
    "image_properties": lambda s: f"{s['n_findings']:,} findings; the first: {s['top_finding']}.",
    "error_slices": lambda s: (f"{s['n_slices']:,} slices of the embedding space where errors concentrate hold "
                               f"{s['errors_in_slices']:,} of the {s['n_errors']:,} errors of '{s['split']}'."),
    "image_scan": lambda s: f"{s['n_readable']:,} of {s['n_images']:,} images read, {s['n_skipped']:,} skipped.",
}


def _headline(name: str, summary: dict) -> str:
    from core import diagnose

    try:
        return _FALLBACK_HEADLINES[name](summary)
    except (KeyError, TypeError, ValueError):
        return diagnose.headline(name, summary)


def declared_findings(run: Run) -> dict:
    """``{kind: Findings}`` of the kinds that declare findings and have a current result ({} before the
    registry offers ``all_findings``)."""
    from core import diagnose
    from core.run import derived

    diagnose.load_kinds()
    return derived.all_findings(run) if hasattr(derived, "all_findings") else {}


def _diagnoses(run: Run, declared: dict, budget: _Budget, per_card: int) -> Section | None:
    """The diagnoses section from the kinds' declared findings, else from their summaries."""
    from core import diagnose

    stored = {name: _stored(run, name) for name in diagnose.DIAGNOSES}
    stored = {name: st for name, st in stored.items() if st is not None}
    if not stored and not declared:
        return None
    s = Section("diagnoses", "Diagnoses")
    caption = _prediction_caption(run)
    cards = [card for f in declared.values() for card in f.cards]
    eval_mask, correct = run.eval_mask(), run.predictions["correct"].to_numpy()

    def explained(rows: np.ndarray) -> int:
        rows = np.asarray(rows, np.int64)
        return int((eval_mask[rows] & ~correct[rows]).sum()) if rows.size else 0
    if cards:
        cards.sort(key=lambda c: -explained(c.explained_rows()))
        s.narrative.append(f"{_plural(len(cards), 'finding')}; the one explaining most evaluated errors is "
                           f"'{clean(cards[0].title)}' ({explained(cards[0].explained_rows()):,} errors).")
        for card in cards:
            s.blocks.append(("h3", card.title))
            s.blocks.append(card.text)
            s.blocks.extend(f"Note: {n}" for n in card.notes)
            if card.kind == "calibration" and "calibration" in stored:
                s.blocks.extend(_calibration_blocks(stored["calibration"]))
            if len(card.rows):
                s.blocks.append(f"{_plural(len(card.rows), 'image')}, {card.order_note}:")
                s.blocks.append(_pictures(run, card.rows, budget, caption, wanted=per_card))
    for name, st in stored.items():
        if name in declared:
            continue
        s.blocks.append(("h3", name.replace("_", " ").capitalize()))
        s.blocks.append(_headline(name, st.summary))
        if name == "calibration":
            s.blocks.extend(_calibration_blocks(st))
        if name == "error_slices":
            s.blocks.extend(_slice_blocks(run, st, budget, caption, per_card))
            continue
        spec = _FALLBACK_ROWS.get(name)
        if spec and f"{spec[0]}.parquet" in st.info.files:
            table = st.table(spec[0])
            if spec[1]:
                table = table[table[spec[1]].astype(bool)]
            if spec[2] in table:
                table = table.sort_values(spec[2], ascending=spec[3], kind="stable")
            rows = pd.unique(table["row"].to_numpy(np.int64)) if "row" in table else np.zeros(0, np.int64)
            rows = rows[eval_mask[rows]] if name == "image_properties" else rows
            if len(rows):
                s.blocks.append(f"{_plural(len(rows), 'image')}, {spec[4]}:")
                s.blocks.append(_pictures(run, rows, budget, caption, wanted=per_card))
    if "calibration" in stored:
        c = stored["calibration"].summary
        s.narrative.append(f"Calibration: ECE {c['ece_before']:.4f} before temperature scaling, "
                           f"{c['ece_after']:.4f} after (temperature {c['temperature']:.2f}); mean confidence "
                           f"{c['mean_confidence']:.3f} against accuracy {c['accuracy']:.3f}.")
    if "label_issues" in stored:
        s.narrative.append(f"Label issues: {clean(diagnose.headline('label_issues', stored['label_issues'].summary))}.")
    return s


def _calibration_blocks(stored) -> list:
    if "reliability.parquet" not in stored.info.files:
        return []
    rel = stored.table("reliability")
    groups = rel.groupby("probabilities", sort=False) if "probabilities" in rel else [("model", rel)]
    # each series has its own x (the mean confidence of each bin): one chart per series
    figs = []
    for name, part in groups:
        part = part[part["count"] > 0]
        figs.append(Figure(alt=f"reliability diagram ({name})", svg=line_chart_svg(
            {f"{name}": part["accuracy"].to_numpy(float)}, x=part["mean_confidence"].to_numpy(float),
            title=f"Reliability ({name})", y_label="accuracy", diagonal=True, points=True, y_range=(0.0, 1.0)),
            caption="Accuracy against mean confidence per bin; the dashed line is perfect calibration."))
    return figs


def _slice_blocks(run: Run, stored, budget: _Budget, caption, per_card: int) -> list:
    if "slices.parquet" not in stored.info.files:
        return []
    slices, members = stored.table("slices"), stored.table("members")
    out = []
    for _, sl in slices.head(3).iterrows():
        mine = members[members["slice_id"] == sl["slice_id"]].sort_values("distance")
        out.append(f"Slice {clean(sl['name'])}: {int(sl['n']):,} images, error rate {sl['error_rate']:.0%} against "
                   f"{sl['expected_rate']:.0%} expected ({sl['lift']:.1f}x).")
        out.append(_pictures(run, mine["row"].to_numpy(np.int64), budget, caption, wanted=per_card))
    return out


def _map(run: Run) -> Section | None:
    from core.analysis.projection import stored_projection

    try:
        xy = stored_projection(run)
    except (UserError, OSError):  # a damaged map: the report goes on without it
        return None
    if xy is None:
        return None
    xy = np.asarray(xy, np.float32)
    preds = run.predictions
    true = preds["true"].to_numpy()
    s = Section("map", "Embedding map (UMAP)")
    colours = _colours(len(run.classes))
    by_class = scatter_png(xy, colours[true])
    s.blocks.append(Figure(alt="map coloured by true class", png=by_class,
                           caption="Every image, coloured by its true class."))
    legend = [[f'{c}', name] for c, name in zip(["#%02x%02x%02x" % tuple(int(v) for v in col) for col in colours],
                                                 run.classes)]
    s.blocks.append(("legend", legend))
    mask = run.eval_mask()
    wrong = mask & ~preds["correct"].to_numpy()
    rows = np.flatnonzero(mask)
    col = np.where(wrong[rows, None], np.array([214, 39, 40], np.uint8), np.array([190, 190, 190], np.uint8))
    order = np.argsort(wrong[rows], kind="stable")  # errors drawn last, on top
    s.blocks.append(Figure(alt="map coloured by correctness", png=scatter_png(xy[rows], col, order=order),
                           caption=f"The {clean(run.eval_split)} split: errors in red, drawn on top of the "
                                   "correct predictions in grey."))
    s.narrative.append(f"{int(wrong.sum()):,} errors of {int(mask.sum()):,} evaluated images on the map "
                       f"of all {len(xy):,} images.")
    return s


def _training(run: Run) -> Section | None:
    training = run.training
    if not training:
        return None
    history = run.history
    s = Section("training", "Training")
    recipe = training.get("recipe") if isinstance(training.get("recipe"), dict) else {}
    if history is not None and not history.empty:
        if "val_accuracy" in history and history["val_accuracy"].notna().any():
            best = int(history["val_accuracy"].astype(float).idxmax())
            s.narrative.append(f"Trained for {len(history)} epochs"
                               + (f" of {recipe['epochs']} planned" if recipe.get("epochs") else "")
                               + (f", stopped by {clean(training['stopped_by'])}" if training.get("stopped_by") else "")
                               + f"; the best validation accuracy {history['val_accuracy'].iat[best]:.4f} came at "
                               f"epoch {int(history['epoch'].iat[best])}"
                               + (f", the last is {history['val_accuracy'].iat[-1]:.4f}." if best != len(history) - 1
                                  else "."))
        for metric in ("loss", "accuracy"):
            series = {c: history[c].to_numpy(float) for c in (metric, f"val_{metric}") if c in history}
            if series:
                s.blocks.append(Figure(alt=f"training {metric}", svg=line_chart_svg(
                    series, x=history["epoch"].to_numpy(float), title=metric.capitalize(), y_label=metric,
                    integer_x=True)))
    corrections = training.get("corrections")
    if isinstance(corrections, dict):  # what the review changed before this training
        s.narrative.append(f"Trained on the corrections of {clean(Path(str(corrections.get('file', '?'))).name)}: "
                           f"{int(corrections.get('relabelled', 0)):,} images relabelled, "
                           f"{int(corrections.get('dropped', 0)):,} excluded (SHA-256 "
                           f"{clean(str(corrections.get('sha256', '?'))[:12])}...).")
    rows = [[str(k), str(v)] for k, v in recipe.items()]
    for key in ("seconds", "stopped_by", "test_accuracy", "mixed_precision", "command"):
        if training.get(key) is not None:
            rows.append([key, str(training[key])])
    if rows:
        s.blocks.append(("h3", "Recipe"))
        s.blocks.append(Table(["setting", "value"], rows))
    return s


def _comparison(run: Run, other: Run, budget: _Budget, wanted: int) -> Section:
    from core.analysis.compare import BROKEN, FIXED, compare, flip_cells

    cmp = compare(other, run)  # A = the other run, B = this one: deltas say what this run changed
    s = Section("compare", f"Compared with run {clean(other.id)}")
    acc_a, acc_b = cmp.metric("accuracy")
    f1 = cmp.per_class.sort_values("f1_delta", kind="stable")
    s.narrative.append(f"Compared {cmp.basis}: this run's accuracy is {acc_b:.2%} against {acc_a:.2%} for "
                       f"{clean(other.id)} ({(acc_b - acc_a) * 100:+.2f} points); it fixes {cmp.n_fixed:,} images and "
                       f"breaks {cmp.n_broken:,}.")
    if len(f1):
        gain, loss = f1.iloc[-1], f1.iloc[0]
        s.narrative.append((f"Largest F1 gain: {clean(gain['class'])} ({gain['f1_delta']:+.3f})" if gain["f1_delta"] > 0
                            else "No class gains F1")
                           + (f"; largest loss: {clean(loss['class'])} ({loss['f1_delta']:+.3f})."
                              if loss["f1_delta"] < 0 else "; no class loses F1."))
    fmt = {"accuracy": "{:.4f}", "macro_f1": "{:.4f}", "top3_accuracy": "{:.4f}", "errors": "{:,.0f}", "n": "{:,.0f}"}
    s.blocks.append(Table(["metric", f"A: {other.id}", f"B: {run.id}", "B - A"],
                          [[r["metric"], fmt[r["metric"]].format(r["a"]), fmt[r["metric"]].format(r["b"]),
                            ("{:+,.0f}" if r["metric"] in ("errors", "n") else "{:+.4f}").format(r["delta"])]
                           for _, r in cmp.metrics.iterrows()], numeric={1, 2, 3}))
    cols = ["class", "f1_a", "f1_b", "f1_delta", "tp_delta", "fp_delta", "fn_delta"]
    s.blocks.append(Table(cols, [[str(r[0]), f"{r[1]:.3f}", f"{r[2]:.3f}", f"{r[3]:+.3f}", f"{int(r[4]):+d}",
                                  f"{int(r[5]):+d}", f"{int(r[6]):+d}"]
                                 for r in cmp.per_class[cols].itertuples(index=False)], numeric=set(range(1, 7))))
    cells = flip_cells(cmp.flips, run.classes).head(10)
    if len(cells):
        s.blocks.append(Table(["kind", "true", "wrong prediction", "images"],
                              [[r["kind"], str(r["true_label"]), str(r["wrong_label"]), f"{int(r['count']):,}"]
                               for _, r in cells.iterrows()], numeric={3}))
        fl = cmp.flips.set_index("id")

        def caption(row: int) -> list[str]:
            r = fl.loc[row]
            return [f"{r['kind']}: {r['predicted_a']} {r['confidence_a']:.2f} → {r['predicted_b']} "
                    f"{r['confidence_b']:.2f}", f"true {r['true_label']}", str(r["path"])]
        for flip in (FIXED, BROKEN):  # B's most confident answers first: its surest fixes and worst breaks
            part = cmp.flips[cmp.flips["kind"] == flip].sort_values("confidence_b", ascending=False, kind="stable")
            if len(part):
                s.blocks.append(("h3", f"{flip} ({len(part):,}), B's most confident first"))
                s.blocks.append(_pictures(run, part["id"].to_numpy(), budget, caption, wanted=wanted // 2))
    return s


def _verdicts(run: Run) -> Section | None:
    from core.review.reviewed import RunReview
    from core.review.verdicts import ReviewDB, ReviewError, review_db_path

    db_file = review_db_path(run.location.parent)
    if not db_file.is_file():
        return None  # no verdict recorded in this store (and reading must not create the file)
    try:
        review = RunReview(run, ReviewDB(db_file))
        table = review.verdicts()
        if table.empty:
            return None
        reviewed = review.reviewed_metrics()
    except (ReviewError, OSError) as exc:
        s = Section("verdicts", "Verdicts")
        s.blocks.append(f"The verdicts cannot be read: {exc}")
        return s
    s = Section("verdicts", "Verdicts and metrics as reviewed")
    counts = table["verdict"].value_counts()
    rs = reviewed.summary
    s.narrative.append(f"{_plural(len(table), 'verdict')} recorded ("
                       + ", ".join(f"{v} {int(c):,}" for v, c in counts.items()) + f"); with the labels as reviewed "
                       f"({rs['relabelled']:,} relabelled, {rs['excluded']:,} excluded) the accuracy is "
                       f"{_pct(rs['accuracy'])} against {_pct(rs['given_accuracy'])} as given.")
    s.blocks.append(Table(["metric", "as given", "as reviewed"],
                          [["accuracy", _pct(rs["given_accuracy"]), _pct(rs["accuracy"])],
                           ["images", f"{rs['given_n']:,}", f"{rs['n']:,}"],
                           ["macro-F1", _f3(run.metrics.get("macro_f1")), _f3(rs["macro_f1"])]], numeric={1, 2}))
    head = table.head(50)
    s.blocks.append(Table(["file", "given", "verdict", "new label", "note", "reviewer", "time"],
                          [[str(r["path"]), str(r["given_label"]), str(r["verdict"]), str(r["new_label"]),
                            str(r["note"]), str(r["reviewer"]), str(r["time"])[:19]] for _, r in head.iterrows()]))
    if len(table) > 50:
        s.blocks.append(f"… and {len(table) - 50:,} more verdicts (python -m core review list).")
    return s


def build_report(run: Run, *, compare_with: Run | None = None, max_images: int = DEFAULT_MAX_IMAGES) -> Report:
    """Every section the run has data for, with at most ``max_images`` thumbnails in all."""
    if max_images < 0:
        raise UserError(f"--max-images must be 0 or more. Received: {max_images}")
    if compare_with is not None and compare_with.id == run.id:
        raise UserError(f"--compare names the run itself ({run.id!r}); name another run on the same images.")
    budget = _Budget(max_images)
    preds = run.predictions
    mask = run.eval_mask()
    cm = M.confusion_matrix(preds["true"].to_numpy()[mask], preds["predicted"].to_numpy()[mask],
                            n_classes=len(run.classes))
    # the budget's shares: a fifth for the confused pairs, a quarter for the most confident errors, a sixth
    # for a comparison, the rest for the diagnoses; more images give each pair, error list and card more
    pairs_budget = _Budget(max_images // 5)
    sections = [_summary(run), _per_class(run, cm),
                _confusion(run, cm, pairs_budget, per_pair=min(12, max(4, max_images // 30)))]
    budget.take(max_images // 5 - pairs_budget.left)
    declared = declared_findings(run)
    flags = _image_flags(run, declared)
    errors = _confident_errors(run, budget, flags, wanted=min(100, max_images // 4))
    if errors is not None:
        sections.append(errors)
    compare_share = max_images // 6 if compare_with is not None else 0
    diag = _diagnoses(run, declared, _Budget(max(0, budget.left - compare_share)),
                      per_card=min(24, max(6, max_images // 20)))
    if diag is not None:
        sections.append(diag)
    for extra in (_map(run), _training(run)):
        if extra is not None:
            sections.append(extra)
    if compare_with is not None:
        sections.append(_comparison(run, compare_with, _Budget(compare_share), wanted=compare_share))
    verdicts = _verdicts(run)
    if verdicts is not None:
        sections.append(verdicts)
    n = sum(len(b) for s in sections for b in s.blocks if isinstance(b, list) and b and isinstance(b[0], Picture))
    return Report(title=f"Error analysis of run {clean(run.id)}", run_id=run.id, sections=sections,
                  n_images=n, max_images=max_images)


# --------------------------------------------------------------------------- HTML
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1100px;padding:16px 24px;
color:#222;line-height:1.4}
h1{font-size:1.6em;margin:.2em 0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:1.6em}
h3{font-size:1.05em;margin:1.1em 0 .4em}
nav a{margin-right:12px}.narrative{background:#f6f8fa;border-left:4px solid #1f77b4;padding:6px 12px}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.worst td{background:#fde8e8;font-weight:600}
.wide{overflow-x:auto}figure{display:inline-block;margin:6px 12px 6px 0;vertical-align:top}
figcaption{font-size:.85em;color:#555;max-width:560px}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.tile{width:128px;font-size:.75em;word-break:break-all;
break-inside:avoid}.tile img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;
border:3px solid #2ca02c;background:#eee}.tile.wrong img{border-color:#d62728}.tile .missing{width:96px;
height:96px;background:#eee;border:3px dashed #999}
.legend span{display:inline-block;margin:0 10px 2px 0;font-size:.8em}.legend i{display:inline-block;width:10px;
height:10px;margin-right:4px}
section{break-before:page}section#summary{break-before:auto}
@media print{body{max-width:none;padding:0}nav{display:none}.wide{overflow:visible}h2,h3{break-after:avoid}
figure,tr,.tile{break-inside:avoid}}
"""


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in t.columns) if any(t.columns) else ""
    out = ['<div class="wide"><table>', f"<thead><tr>{head}</tr></thead>" if head else "", "<tbody>"]
    for i, row in enumerate(t.rows):
        cells = []
        for j, v in enumerate(row):
            attrs = ' class="n"' if j in t.numeric else ""
            if t.values is not None:
                attrs += f' data-value="{esc(t.values[i][j])}"'
            cells.append(f"<td{attrs}>{esc(v)}</td>")
        worst = ' class="worst"' if i in t.highlight else ""
        out.append(f"<tr{worst}>{''.join(cells)}</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _html_block(block) -> str:
    if isinstance(block, str):
        return f"<p>{esc(block)}</p>"
    if isinstance(block, tuple) and block[0] == "h3":
        return f"<h3>{esc(block[1])}</h3>"
    if isinstance(block, tuple) and block[0] == "legend":
        return '<p class="legend">' + "".join(f'<span><i style="background:{esc(c)}"></i>{esc(n)}</span>'
                                               for c, n in block[1]) + "</p>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        inner = block.svg if block.svg is not None else (
            f'<img src="{_data_uri(block.png, "image/png")}" alt="{esc(block.alt)}" width="520" height="520">')
        return f"<figure>{inner}<figcaption>{esc(block.caption)}</figcaption></figure>"
    if isinstance(block, list):
        if not block:
            return "<p><em>(the image budget, --max-images, is spent: no picture here)</em></p>"
        tiles = []
        for p in block:
            img = (f'<img src="{_data_uri(p.data, p.mime)}" alt="{esc(p.lines[0] if p.lines else "")}">'
                   if p.data else '<div class="missing"></div>')
            lines = "<br>".join(esc(line) for line in p.lines)
            tiles.append(f'<div class="tile{" wrong" if p.wrong else ""}">{img}<div>{lines}</div></div>')
        return f'<div class="gallery">{"".join(tiles)}</div>'
    raise TypeError(f"unknown block {type(block).__name__}")


def render_html(report: Report) -> str:
    """The report as one HTML document (UTF-8 text), nothing fetched from anywhere."""
    nav = " ".join(f'<a href="#{s.key}">{esc(s.title)}</a>' for s in report.sections)
    body = []
    for s in report.sections:
        body.append(f'<section id="{s.key}"><h2>{esc(s.title)}</h2>')
        if s.narrative:
            body.append('<div class="narrative">' + "".join(f"<p>{esc(t)}</p>" for t in s.narrative) + "</div>")
        body.extend(_html_block(b) for b in s.blocks)
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(report.title)}"
            f"</title><style>{CSS}</style></head><body><h1>{esc(report.title)}</h1>"
            f"<p>{report.n_images} thumbnails (--max-images {report.max_images}).</p><nav>{nav}</nav>"
            + "".join(body) + "</body></html>\n")


def report_html_bytes(run: Run, *, compare_with: Run | None = None, max_images: int = DEFAULT_MAX_IMAGES) -> bytes:
    """What ``python -m core report RUN --html FILE`` writes (the dashboard's download serves these bytes)."""
    return render_html(build_report(run, compare_with=compare_with, max_images=max_images)).encode()


def write_html(report: Report, file: str | Path) -> int:
    """Write the report to ``file`` atomically; its size in bytes."""
    data = render_html(report).encode()
    _write_atomic(Path(file), data)
    return len(data)


def _write_atomic(file: Path, data: bytes) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(file)
    except OSError as exc:
        raise UserError(f"Cannot write {str(file)!r}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- Markdown
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|~&])")
_MD_LINE_START = re.compile(r"^(\s*)([#>+=-]|\d+(?=[.)](?:\s|$)))")


def md(text: object) -> str:
    """``clean(text)`` as Markdown text: inline specials escaped (no link, emphasis, raw HTML or entity
    can form), and a heading, list or quote marker at its start too.

    >>> md("<script>*x*")
    '\\\\<script\\\\>\\\\*x\\\\*'
    >>> md("- 1. T-shirt/top")
    '\\\\- 1. T-shirt/top'
    >>> md("1. T-shirt/top"), md("58.04%"), md("3) x")
    ('1\\\\. T-shirt/top', '58.04%', '3\\\\) x')

    A backslash escapes only punctuation: before the dot of an ordered-list marker, never before a
    number ("\\\\58.04%" shows its backslash).
    """
    text = _MD_SPECIAL.sub(r"\\\1", clean(text)).replace("\n", " ")
    marker = lambda m: m.group(2) + "\\" if m.group(2).isdigit() else "\\" + m.group(2)  # noqa: E731
    return _MD_LINE_START.sub(lambda m: m.group(1) + marker(m), text)


def _at_least(data: bytes, size: int) -> bytes:
    """An encoded picture enlarged (nearest neighbour, same format) to ``size`` px on its long side when
    smaller: a Markdown viewer shows pictures at their own size, unlike the report's page."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or max(img.shape[:2]) >= size:
        return data
    factor = max(1, size // max(img.shape[:2]))
    big = cv2.resize(img, (img.shape[1] * factor, img.shape[0] * factor), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png" if data[:4] == b"\x89PNG" else ".jpg", big)
    return buf.tobytes() if ok else data


def write_markdown(report: Report, folder: str | Path) -> list[Path]:
    """``folder/report.md`` and its pictures in ``folder/images/``; the files written."""
    folder = Path(folder)
    images = folder / "images"
    try:
        images.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the folder {str(images)!r}: {exc.strerror or exc}") from None
    for old in images.iterdir():  # the pictures of an earlier report in this folder (ours only, by name)
        if re.fullmatch(r"img\d{4}\.(png|jpg|svg)", old.name) and old.is_file():
            old.unlink()
    written: list[Path] = []
    counter = [0]

    def save(data: bytes, ext: str) -> str:
        counter[0] += 1
        name = f"img{counter[0]:04d}.{ext}"
        _write_atomic(images / name, data)
        written.append(images / name)
        return f"images/{name}"

    lines = [f"# {md(report.title)}", ""]
    for s in report.sections:
        lines += [f"## {md(s.title)}", ""]
        lines += [f"> {md(t)}" for t in s.narrative] + ([""] if s.narrative else [])
        for b in s.blocks:
            if isinstance(b, str):
                lines += [md(b), ""]
            elif isinstance(b, tuple) and b[0] == "h3":
                lines += [f"### {md(b[1])}", ""]
            elif isinstance(b, tuple) and b[0] == "legend":
                lines += ["Colours: " + ", ".join(f"{md(name)} {colour}" for colour, name in b[1]), ""]
            elif isinstance(b, Table):
                cols = b.columns if any(b.columns) else ["", ""]
                lines.append("| " + " | ".join(md(c) for c in cols) + " |")
                lines.append("|" + "|".join("---:" if j in b.numeric else "---" for j in range(len(cols))) + "|")
                for i, row in enumerate(b.rows):
                    cells = [md(v) for v in row]
                    if i in b.highlight:
                        cells = [f"**{c}**" for c in cells]
                    lines.append("| " + " | ".join(cells) + " |")
                lines.append("")
            elif isinstance(b, Figure):
                ref = save(b.svg.encode(), "svg") if b.svg is not None else save(b.png, "png")
                lines += [f"![{md(b.alt)}]({ref})", "", f"*{md(b.caption)}*" if b.caption else "", ""]
            elif isinstance(b, list):
                for p in b:
                    ref = save(_at_least(p.data, THUMB_PX), "png" if p.mime == "image/png" else "jpg") \
                        if p.data else None
                    text = " · ".join(md(line) for line in p.lines)
                    lines.append(f"- ![{md(p.lines[0] if p.lines else '')}]({ref}) {text}" if ref else f"- {text}")
                lines.append("")
    file = folder / "report.md"
    _write_atomic(file, "\n".join(lines).encode())
    return [file] + written
