"""Error slices: groups of mistakes found in embedding space, named, saved as filters, compared across runs.

Conventions: N images (the run's rows), K classes; slices are found among the
images of the evaluated split (``run.eval_split``). ``margin`` is the top-1
minus the top-2 probability; an image is *hard* when it is wrong or its margin
is under ``max_margin``.

How: the hard images are clustered with k-means on the embeddings (unit
length, a 32-dimensional PCA; the 2-D map when the run has no embeddings).
Every evaluated image, right or wrong, then joins the cluster whose centre is
nearest if it lies within the cluster's radius (the 90th percentile of its
hard images' distances), so a slice's error rate is measured on everything
that looks like it, not only on its mistakes. A slice is kept when its error
rate is at least ``min_lift`` times, and 10 points above, what its images'
classes make on average, with at least ``min_size`` images and ``min_errors``
errors. It is named from its dominant true -> predicted pairs and the image
properties that stand out (median within-class percentile under 25% or over
75%; atypicality is listed in ``properties`` but does not name a slice, being
measured in the very space the slices come from): "Shirt -> T-shirt/top, dark,
212 images, error rate 41% vs 9%".

A slice can be kept as a *filter*: a JSON rule listing its images' paths,
usable with any run on the same images (``filter_rows``); ``compare_slices``
says which slices got better or worse in a second run on the same images.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.analysis.projection import stored_projection
from core.diagnose.findings import Card, Column, Filter, Findings
from core.errors import UserError, first_line
from core.progress import Progress, slug
from core.run import derived
from core.run.store import Run

SLICE_COLUMNS = ["slice_id", "name", "n", "errors", "error_rate", "expected_rate", "lift", "excess_errors",
                 "top_pairs", "properties", "radius"]
FILTER_FORMAT = "classifier-error-analysis/filter"
_STANDOUT_PROPERTIES = ("brightness", "contrast", "blur", "size", "aspect", "atypicality")


# --------------------------------------------------------------------------- pure functions

def margins(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row: float (N,) from probs (N, K) (1.0 when K = 1).

    >>> margins(np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])).round(2).tolist()
    [0.5, 0.05]
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] < 2:
        return np.ones(len(probs))
    top2 = -np.partition(-probs, 1, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def _features(embeddings: np.ndarray, *, dims: int, seed: int) -> np.ndarray:
    """Unit-length rows projected on their top ``dims`` principal directions (float32)."""
    x = np.asarray(embeddings, np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if x.shape[1] <= dims:
        return x
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), min(len(x), 20000), replace=False)]
    mean = sample.mean(axis=0)
    _, vectors = np.linalg.eigh((sample - mean).T @ (sample - mean))
    return (x - mean) @ vectors[:, ::-1][:, :dims]


def find_error_slices(features: np.ndarray, labels: np.ndarray, predicted: np.ndarray, margin: np.ndarray, *,
                      classes: list[str], max_margin: float = 0.2, min_size: int = 20, min_errors: int = 5,
                      min_lift: float = 2.0, hard_per_cluster: int = 20, max_clusters: int = 40,
                      seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Slices of images where errors concentrate (see the module docstring).

    Parameters
    ----------
    features : float (n, d), the evaluated images in a space where near means alike.
    labels, predicted : int (n,) true and predicted classes; margin : float (n,) (see ``margins``).
    hard_per_cluster : about this many hard images per k-means cluster (2 to ``max_clusters`` clusters).

    Returns
    -------
    slices : DataFrame with ``SLICE_COLUMNS`` but ``properties`` ('' here), worst first
        (most errors above what the classes would make), ``slice_id`` = 0, 1, ...
    member : int (n,), the slice of each image (-1 for none)
    distance : float (n,), to the centre of its slice (NaN for none)

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(0, 1, (400, 2)); x[:40] += 8           # a far group ...
    >>> y = np.zeros(400, int); p = y.copy(); p[:30] = 1       # ... where 30 of 40 are wrong
    >>> p[200:210] = 1                                         # and 10 errors scattered elsewhere
    >>> s, member, _ = find_error_slices(x, y, p, np.ones(400), classes=["shirt", "t-shirt"], min_size=10)
    >>> s["name"].tolist()
    ['shirt -> t-shirt, 32 images, error rate 84% vs 10%']
    >>> bool((member[40:] == -1).all())                     # nothing from the ordinary images
    True
    """
    from sklearn.cluster import KMeans

    features = np.asarray(features, np.float32)
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    n = len(labels)
    if features.ndim != 2 or len(features) != n or len(predicted) != n or len(margin) != n:
        raise UserError(f"features (n, d), labels, predicted and margin must have the same n. Received: "
                         f"{features.shape}, {labels.shape}, {predicted.shape}, {np.shape(margin)}")
    wrong = labels != predicted
    hard = np.flatnonzero(wrong | (np.asarray(margin) < max_margin))
    member = np.full(n, -1, np.int64)
    distance = np.full(n, np.nan)
    empty = pd.DataFrame({c: [] for c in SLICE_COLUMNS})
    n_clusters = int(np.clip(len(hard) // max(hard_per_cluster, 1), 2, max_clusters))
    if len(hard) < max(min_size, n_clusters):
        return empty, member, distance
    km = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit(features[hard])
    centres = km.cluster_centers_.astype(np.float32)
    hard_distance = np.linalg.norm(features[hard] - centres[km.labels_], axis=1)
    radius = np.array([np.quantile(hard_distance[km.labels_ == c], 0.9) if (km.labels_ == c).any() else 0.0
                       for c in range(n_clusters)])
    nearest = np.empty(n, np.int64)
    near_distance = np.empty(n)
    for start in range(0, n, 16384):
        part = features[start:start + 16384]
        d2 = (part * part).sum(axis=1)[:, None] - 2 * part @ centres.T + (centres * centres).sum(axis=1)[None, :]
        nearest[start:start + 16384] = d2.argmin(axis=1)
        near_distance[start:start + 16384] = np.sqrt(np.maximum(d2.min(axis=1), 0))
    inside = near_distance <= radius[nearest]
    class_rate = np.array([wrong[labels == c].mean() if (labels == c).any() else 0.0
                           for c in range(len(classes))])
    found = []
    for c in range(n_clusters):
        rows = np.flatnonzero(inside & (nearest == c))
        if len(rows) < min_size:
            continue
        errors = int(wrong[rows].sum())
        rate, expected = errors / len(rows), float(class_rate[labels[rows]].mean())
        if errors < min_errors or rate < min_lift * expected or rate - expected < 0.1:
            continue
        found.append({"cluster": c, "rows": rows, "n": len(rows), "errors": errors, "error_rate": rate,
                      "expected_rate": expected, "lift": rate / expected if expected > 0 else np.inf,
                      "excess_errors": errors - expected * len(rows), "radius": float(radius[c]),
                      "top_pairs": _top_pairs(labels[rows], predicted[rows], classes)})
    found.sort(key=lambda s: -s["excess_errors"])
    for i, s in enumerate(found):
        member[s["rows"]] = i
        distance[s["rows"]] = near_distance[s["rows"]]
    slices = pd.DataFrame([{
        "slice_id": i, "name": _slice_name(s["top_pairs"], [], s["n"], s["error_rate"], s["expected_rate"]),
        "n": s["n"], "errors": s["errors"], "error_rate": s["error_rate"], "expected_rate": s["expected_rate"],
        "lift": s["lift"], "excess_errors": s["excess_errors"],
        "top_pairs": "; ".join(f"{t} -> {p} ({share:.0%})" for t, p, share in s["top_pairs"]),
        "properties": "", "radius": s["radius"]} for i, s in enumerate(found)], columns=SLICE_COLUMNS)
    return slices, member, distance


def _top_pairs(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> list[tuple[str, str, float]]:
    """The true -> predicted pairs of the slice's errors, most frequent first (up to 3), with their shares."""
    wrong = labels != predicted
    if not wrong.any():
        return []
    pairs, counts = np.unique(np.stack([labels[wrong], predicted[wrong]], axis=1), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:3]
    total = counts.sum()
    return [(classes[pairs[i, 0]], classes[pairs[i, 1]], counts[i] / total) for i in order]


def _slice_name(top_pairs: list, adjectives: list[str], n: int, rate: float, expected: float) -> str:
    """'shirt -> t-shirt, dark, 212 images, error rate 41% vs 9%' (two pairs when the first is under 60%)."""
    shown = top_pairs[:1] if top_pairs and top_pairs[0][2] >= 0.6 else top_pairs[:2]
    what = " / ".join(f"{t} -> {p}" for t, p, _ in shown) or "mixed"
    return ", ".join([what, *adjectives, f"{n:,} images", f"error rate {rate:.0%} vs {expected:.0%}"])


def standout_properties(values: dict[str, np.ndarray], labels: np.ndarray, member_rows: np.ndarray, *,
                        low: float = 0.25, high: float = 0.75) -> list[tuple[str, str, float]]:
    """Properties whose within-class percentile is extreme among ``member_rows``.

    ``values`` maps a property to a float array (n,) (NaN unknown), ``labels``
    are the classes (n,). Each image's value is ranked within its class (0..1);
    a property stands out when the members' median rank is <= ``low`` or >= ``high``.
    Returns (property, 'low' or 'high', median rank), most extreme first.
    """
    out = []
    for prop, raw in values.items():
        v = np.asarray(raw, np.float64)
        if np.isnan(v[member_rows]).all():
            continue
        rank = pd.Series(v).groupby(pd.Series(labels)).rank(pct=True).to_numpy()
        median = float(np.nanmedian(rank[member_rows]))
        if median <= low:
            out.append((prop, "low", median))
        elif median >= high:
            out.append((prop, "high", median))
    return sorted(out, key=lambda t: -abs(t[2] - 0.5))


# --------------------------------------------------------------------------- the derived kind

@dataclass(frozen=True)
class ErrorSlicesConfig:
    """See ``find_slices`` for each option; ``dims``: PCA width of the embeddings clustered;
    ``use_properties``: name slices by the image properties that set them apart too."""

    max_margin: float = 0.2
    min_size: int = 20
    min_errors: int = 5
    min_lift: float = 2.0
    hard_per_cluster: int = 20
    max_clusters: int = 40
    dims: int = 32
    use_properties: bool = True
    seed: int = 0

    def __post_init__(self):
        for name in ("min_size", "min_errors", "hard_per_cluster", "max_clusters", "dims"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"error_slices: {name} must be a positive integer. Received: {value!r}")
        if not 0.0 < float(self.max_margin) <= 1.0:
            raise UserError(f"error_slices: max_margin must be in (0, 1]. Received: {self.max_margin!r}")


#: At most this many slices get a card of their own (the worst first).
MAX_SLICE_CARDS = 5


def slice_findings(run: Run, stored) -> Findings:
    """A card per slice (the worst ``MAX_SLICE_CARDS``), each image's ``slice`` name and the Errors
    page's slice filter."""
    slices = stored.table("slices")
    members = stored.table("members")
    cards = []
    for _, s in slices.head(MAX_SLICE_CARDS).iterrows():
        mine = members[members["slice_id"] == s["slice_id"]].sort_values("distance")
        cards.append(Card(f"slice-{int(s['slice_id'])}", "error_slices", f"Error slice: {s['name']}",
                          f"{int(s['n']):,} images, error rate {s['error_rate']:.0%} against "
                          f"{s['expected_rate']:.0%} expected ({s['lift']:.1f}x); "
                          f"{s['excess_errors']:.0f} errors more than expected.",
                          mine["row"].to_numpy(np.int64), "closest to the slice's centre first"))
    names = dict(zip(slices["slice_id"], slices["name"].astype(str)))
    columns = pd.DataFrame({"slice": np.full(run.n_images, "", dtype=object)})
    columns.loc[members["row"].to_numpy(np.int64), "slice"] = members["slice_id"].map(names).fillna("").to_numpy()
    return Findings(cards=tuple(cards), columns=columns, column_specs=(Column("slice", "slice"),),
                    filters=(Filter("slice", "Error slice", "choices", "slice"),))


@derived.register("error_slices", version=1, config=ErrorSlicesConfig, findings=slice_findings,
                  reads=("image_properties",),
                  description="groups of errors found in embedding space, named by their confusions and properties")
def compute_error_slices(run: Run, config: ErrorSlicesConfig, progress: Progress) -> derived.DerivedResult:
    """Slices of the evaluated split (see the module docstring).

    Arrays: ``slice`` (N,) int32 (-1: none). Tables: ``slices`` (``SLICE_COLUMNS``,
    worst first) and ``members`` (``slice_id``, ``row``, ``path``, ``true_label``,
    ``predicted_label``, ``correct``, ``distance``). With ``use_properties``,
    the ``image_properties`` kind is read (computed if needed) to name what
    stands out; a run without pixels is named from its confusions alone.
    """
    preds = run.predictions
    rows = np.flatnonzero(run.eval_mask())
    notes = []
    if run.embeddings is not None:
        space = "embeddings"
        features = _features(run.embeddings[rows], dims=config.dims, seed=config.seed)
    elif (xy := stored_projection(run)) is not None:
        space = "projection"
        features = np.asarray(xy[rows], np.float32)
        notes.append("The run has no embeddings: slices found on the 2-D map.")
    else:
        raise UserError(f"Run {run.id!r} has neither embeddings nor a projection to find slices in")
    progress("error slices: clustering the hard images", 0.2)
    labels = preds["true"].to_numpy()[rows]
    predicted = preds["predicted"].to_numpy()[rows]
    margin = margins(run.probs[rows])
    slices, member, distance = find_error_slices(
        features, labels, predicted, margin, classes=run.classes, max_margin=float(config.max_margin),
        min_size=config.min_size, min_errors=config.min_errors, min_lift=float(config.min_lift),
        hard_per_cluster=config.hard_per_cluster, max_clusters=config.max_clusters,
        seed=config.seed)
    if config.use_properties and len(slices):
        progress("error slices: image properties", 0.6)
        values = _property_values(run, rows, notes, progress)
        if values:
            from core.diagnose.properties import TAIL_ADJECTIVES

            names, described = [], []
            for rec in slices.to_dict("records"):
                standout = standout_properties(values, labels, np.flatnonzero(member == rec["slice_id"]))
                # atypicality is measured in the same embedding space the slices come from: hard images are
                # atypical almost by construction, so it is described but does not name the slice
                adjectives = [TAIL_ADJECTIVES[p][0 if side == "low" else 1] for p, side, _ in standout
                              if p != "atypicality"][:2]
                described.append("; ".join(f"{p} {side} (median class percentile {m:.0%})"
                                           for p, side, m in standout[:3]))
                in_slice = member == rec["slice_id"]
                pairs = _top_pairs(labels[in_slice], predicted[in_slice], run.classes)
                names.append(_slice_name(pairs, adjectives, rec["n"], rec["error_rate"], rec["expected_rate"]))
            slices["name"], slices["properties"] = names, described
    full = np.full(run.n_images, -1, np.int32)
    full[rows] = member
    inside = member >= 0
    names = np.asarray(run.classes, dtype=object)
    members = pd.DataFrame({
        "slice_id": member[inside].astype(np.int64), "row": rows[inside].astype(np.int64),
        "path": preds["path"].astype(str).to_numpy()[rows[inside]],
        "true_label": names[labels[inside]], "predicted_label": names[predicted[inside]],
        "correct": (labels == predicted)[inside], "distance": distance[inside].astype(np.float32),
    }).sort_values(["slice_id", "correct", "distance"], kind="stable").reset_index(drop=True)
    progress("error slices: done", 1.0)
    return derived.DerivedResult(
        arrays={"slice": full}, tables={"slices": slices, "members": members},
        summary={"n_slices": int(len(slices)), "top_slice": slices["name"].iloc[0] if len(slices) else None,
                 "split": run.eval_split, "space": space, "n_evaluated": int(len(rows)),
                 "n_in_slices": int(inside.sum()),
                 "errors_in_slices": int((~members["correct"]).sum()) if len(members) else 0,
                 "n_errors": int((labels != predicted).sum()), "slice_names": slices["name"].head(10).tolist(),
                 "notes": notes},
    )


def _property_values(run: Run, rows: np.ndarray, notes: list, progress: Progress) -> dict[str, np.ndarray]:
    from core.diagnose.properties import PROPERTIES

    try:
        table = derived.get(run, "image_properties",
                            progress=lambda m, f: progress(m, 0.6 + 0.3 * f)).table("properties")
    except (UserError, OSError) as exc:
        notes.append(f"Slices named without image properties: {first_line(exc)}")
        return {}
    return {p: table[p].to_numpy(dtype=np.float64, na_value=np.nan)[rows] for p in _STANDOUT_PROPERTIES
            if p in PROPERTIES and p in table and table[p].notna().any()}


# --------------------------------------------------------------------------- reading, filters, comparison

def _stored(run: Run, *, compute: bool) -> derived.StoredDerived:
    stored = derived.get(run, "error_slices", compute=compute)
    if stored is None:
        raise UserError(f"Run {run.id!r} has no current error slices: compute them with "
                          f"python -m core diagnose {run.id}")
    return stored


def slice_rows(run: Run, slice_id: int, *, compute: bool = True) -> np.ndarray:
    """Sorted int64 row ids of slice ``slice_id`` of ``run`` (computed first if needed and ``compute``)."""
    members = _stored(run, compute=compute).table("members")
    known = sorted(set(members["slice_id"].tolist()))
    if slice_id not in known:
        raise UserError(f"Run {run.id!r} has no slice {slice_id!r}. Slices: {known}")
    return np.sort(members.loc[members["slice_id"] == slice_id, "row"].to_numpy(np.int64))


def slice_filter(run: Run, slice_id: int, *, name: str | None = None) -> dict:
    """A saved-filter rule (JSON-able) for slice ``slice_id``: the paths of its images.

    Paths, not row numbers, so that it applies to any run on the same images (``filter_rows``).
    """
    slices = _stored(run, compute=True).table("slices")
    rows = slice_rows(run, slice_id)
    title = str(slices.loc[slices["slice_id"] == slice_id, "name"].iloc[0])
    return {"format": FILTER_FORMAT, "version": 1, "name": name or title, "description": title,
            "rule": {"type": "paths", "paths": run.predictions["path"].astype(str).to_numpy()[rows].tolist()},
            "source": {"run": run.id, "run_uid": run.uid, "kind": "error_slices", "slice_id": int(slice_id)},
            "data_fingerprint": (run.config.data_fingerprint if run.config is not None else None)}


def filter_rows(run: Run, rule: dict) -> np.ndarray:
    """Sorted int64 rows of ``run`` that a filter (``slice_filter``) selects; paths the run lacks are ignored.

    A rule of type ``rows`` (``{"type": "rows", "rows": [...]}``) applies only to the run it names.
    """
    if not isinstance(rule, dict) or rule.get("format") != FILTER_FORMAT or not isinstance(rule.get("rule"), dict):
        raise UserError(f"Not a filter (expected format {FILTER_FORMAT!r}). Received keys: "
                         f"{sorted(rule) if isinstance(rule, dict) else type(rule).__name__}")
    body = rule["rule"]
    if body.get("type") == "paths":
        wanted = pd.Index([str(p) for p in body.get("paths") or []])
        paths = pd.Index(run.predictions["path"].astype(str))
        return np.sort(np.flatnonzero(paths.isin(wanted))).astype(np.int64)
    if body.get("type") == "rows":
        if (rule.get("source") or {}).get("run_uid") != run.uid:
            raise UserError(f"Filter {rule.get('name')!r} lists rows of another run; it cannot apply to {run.id!r}")
        rows = np.asarray(body.get("rows") or [], np.int64)
        bad = rows[(rows < 0) | (rows >= run.n_images)]
        if len(bad):
            raise UserError(f"Filter {rule.get('name')!r} names rows outside 0..{run.n_images - 1}: "
                             f"{bad[:5].tolist()}")
        return np.unique(rows)
    raise UserError(f"Unknown filter rule type {body.get('type')!r}. Types: ['paths', 'rows']")


def filters_folder(run: Run) -> Path:
    """Where saved filters live: ``<store>/.filters`` (hidden: not a run)."""
    return run.location.parent / ".filters"


def save_filter(rule: dict, folder: str | os.PathLike) -> Path:
    """Write ``rule`` as ``<folder>/<slug of its name>.json`` (atomically; replaces a filter of that name)."""
    if not (isinstance(rule, dict) and rule.get("format") == FILTER_FORMAT and isinstance(rule.get("name"), str)):
        raise UserError(f"Not a filter with a name (format {FILTER_FORMAT!r}). Received: "
                         f"{rule.get('format') if isinstance(rule, dict) else type(rule).__name__!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"{slug(rule['name'], default='filter')[:100]}.json"
    tmp = folder / f".{file.name}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(rule, indent=1), encoding="utf-8")
    os.replace(tmp, file)
    return file


def load_filters(folder: str | os.PathLike) -> dict[str, dict]:
    """Every saved filter in ``folder``: {name: rule}; unreadable files are left out."""
    out = {}
    for file in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        try:
            rule = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(rule, dict) and rule.get("format") == FILTER_FORMAT:
            out[str(rule.get("name") or file.stem)] = rule
    return out


def compare_slices(run_a: Run, run_b: Run, *, alpha: float = 0.05) -> pd.DataFrame:
    """How each slice of ``run_a`` fares in ``run_b``, a run on the same images (matched by path).

    Returns one row per slice of ``run_a``: ``slice_id``, ``name``, ``n``,
    ``n_matched`` (its images found in ``run_b``), ``error_rate_a``,
    ``error_rate_b`` (on the matched images), ``change`` (b - a), ``fixed``
    (wrong in a, right in b), ``broken`` (right in a, wrong in b), ``p_value``
    (two-sided sign test of fixed against broken) and ``verdict``: 'better' or
    'worse' when p < ``alpha``, else 'unchanged' ('not in b' without matches).
    """
    from scipy.stats import binomtest

    stored = _stored(run_a, compute=True)
    slices, members = stored.table("slices"), stored.table("members")
    b_rows = pd.Series(np.arange(run_b.n_images), index=run_b.predictions["path"].astype(str))
    b_rows = b_rows[~b_rows.index.duplicated()]
    if not b_rows.index.isin(run_a.predictions["path"].astype(str)).any():
        raise UserError(f"Runs {run_a.id!r} and {run_b.id!r} share no image paths: they are not on the same images")
    correct_a = run_a.predictions["correct"].to_numpy()
    correct_b = run_b.predictions["correct"].to_numpy()
    out = []
    for rec in slices.to_dict("records"):
        m = members[members["slice_id"] == rec["slice_id"]]
        matched = m["path"].isin(b_rows.index).to_numpy()
        rows_a = m["row"].to_numpy(np.int64)[matched]
        rows_b = b_rows.loc[m["path"].to_numpy()[matched]].to_numpy(np.int64)
        ca, cb = correct_a[rows_a], correct_b[rows_b]
        fixed, broken = int((~ca & cb).sum()), int((ca & ~cb).sum())
        p = binomtest(fixed, fixed + broken).pvalue if fixed + broken else 1.0
        rate_a = float((~ca).mean()) if len(ca) else np.nan
        rate_b = float((~cb).mean()) if len(cb) else np.nan
        verdict = ("not in b" if not len(ca) else "unchanged" if p >= alpha
                   else "better" if fixed > broken else "worse")
        out.append({"slice_id": rec["slice_id"], "name": rec["name"], "n": rec["n"], "n_matched": int(len(ca)),
                    "error_rate_a": rate_a, "error_rate_b": rate_b, "change": rate_b - rate_a, "fixed": fixed,
                    "broken": broken, "p_value": float(p), "verdict": verdict})
    return pd.DataFrame(out, columns=["slice_id", "name", "n", "n_matched", "error_rate_a", "error_rate_b", "change",
                                      "fixed", "broken", "p_value", "verdict"])
