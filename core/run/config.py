"""The frozen configuration that determines an analysis run, and its cache key.

Two analyses with equal ``AnalysisConfig`` give the same run, so the key of
the config is the run's cache key. Everything in it is known *before* the
model is loaded (the model file's hash, the data set's fingerprint and the
options as the user asked for them), so a cache hit needs no TensorFlow.
The config is written to the run's manifest as its ``analysis`` section.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from core.errors import UserError

SCHEMA_VERSION = 2  # 2: manifest gains 'analysis', 'run_uid' and 'derived'; 1 is still read


@dataclass(frozen=True)
class ProjectionConfig:
    """How the 2-D map is made: PCA to ``pca_dims`` when wider, exact neighbours, then UMAP, seeded.

    ``init`` is UMAP's initial layout ('pca' or its default 'spectral');
    ``n_epochs`` None lets ``core.analysis.umap_map.default_epochs`` choose by the
    number of points. See ``core.analysis.umap_map.project``.
    """

    method: str = "umap"
    seed: int = 0
    n_neighbors: int = 15
    min_dist: float = 0.1
    pca_dims: int = 50
    max_fit: int = 100_000
    init: str = "pca"
    n_epochs: int | None = None

    def __post_init__(self):
        if self.method != "umap":
            raise UserError(f"Unknown projection method {self.method!r}. Available: ['umap']")
        if self.n_neighbors < 2:
            raise UserError(f"n_neighbors must be at least 2. Received: n_neighbors={self.n_neighbors}")
        if self.init not in ("pca", "spectral"):
            raise UserError(f"Unknown UMAP init {self.init!r}. Available: ['pca', 'spectral']")
        if self.n_epochs is not None and self.n_epochs < 1:
            raise UserError(f"n_epochs must be at least 1. Received: n_epochs={self.n_epochs}")


@dataclass(frozen=True)
class AnalysisConfig:
    """What a run is computed from.

    ``layer``, ``scale`` and ``image_size`` are the options as requested
    (None / 'auto' = chosen from the model), not as resolved, so that the key
    can be formed without loading the model. ``scale`` is the preprocessing
    mode (``--preprocess``: 'raw', 'unit', ..., 'caffe', 'tf', 'torch'; the
    field keeps its first name so that older runs keep their keys) and
    ``channel_order`` the order the model was trained on ('rgb' or 'bgr'; left
    out of the dict, and so of the key, when 'rgb', as older runs were made).
    ``projection`` is None when no map is made. ``resize`` is how pictures are
    resized to the model's input (``core.data.preprocess.RESIZE_METHODS``; left out
    of the dict when 'area', as older runs were made).

    >>> a = AnalysisConfig(model_sha256="ab" * 32, data_fingerprint="f" * 16)
    >>> a.key() == AnalysisConfig.from_dict(a.to_dict()).key()
    True
    >>> a.key() == a.replace(projection=ProjectionConfig(seed=1)).key()
    False
    """

    model_sha256: str
    data_fingerprint: str
    layer: str | None = None
    scale: str = "auto"
    image_size: tuple[int, int] | None = None
    channel_order: str = "rgb"
    projection: ProjectionConfig | None = field(default_factory=ProjectionConfig)
    schema_version: int = SCHEMA_VERSION
    resize: str = "area"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size else None
        if self.channel_order == "rgb":
            del d["channel_order"]  # the key of an RGB run is the key it had before channel orders existed
        if self.resize == "area":
            del d["resize"]  # likewise for runs resized the one way there was before --resize
        return d

    @property
    def preprocessing(self):
        """The requested ``core.data.preprocess.Preprocessing`` (mode may be 'auto')."""
        from core.data.preprocess import Preprocessing

        return Preprocessing(self.scale, self.channel_order)

    @classmethod
    def from_dict(cls, data: dict) -> "AnalysisConfig":
        """Inverse of ``to_dict``; raises ValueError naming an unknown or missing field."""
        if not isinstance(data, dict):
            raise UserError(f"An analysis config must be a JSON object. Received: {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"Unknown analysis config fields {unknown}. Known: {sorted(known)}")
        data = dict(data)
        if data.get("image_size") is not None:
            data["image_size"] = tuple(int(v) for v in data["image_size"])
        if isinstance(data.get("projection"), dict):
            data["projection"] = ProjectionConfig(**data["projection"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise UserError(f"Incomplete analysis config: {exc}") from None

    def replace(self, **changes) -> "AnalysisConfig":
        from dataclasses import replace

        return replace(self, **changes)

    def key(self) -> str:
        """20 hex digits of the SHA-256 of the canonical JSON of the config."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def differences(self, other: "AnalysisConfig") -> list[str]:
        """Human-readable 'field: mine vs theirs' for each field that differs."""
        a, b = _flat(self.to_dict()), _flat(other.to_dict())
        out = []
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                out.append(f"{name} {_short(a.get(name))} vs {_short(b.get(name))}")
        return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(value) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text
