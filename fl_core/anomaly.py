"""Anomaly scores for the updates of a round: what a coordinator can say about each update (or each
bucket mean) it sees, next to whatever rule merged them.

Per update i, against the merged update m:

- ``norm``: ‖uᵢ‖, and ``norm_z``, its robust z-score among the round's norms;
- ``cosine``: cos(uᵢ, m), the alignment with the direction the federation moved;
- ``distance``: ‖uᵢ − m‖, and ``distance_z``, its robust z-score among the round's distances.

Robust z-scores use the median and the median absolute deviation scaled by 1.4826 (a normal's
MAD), so that the outliers being looked for do not inflate the yardstick (Rousseeuw & Croux,
"Alternatives to the Median Absolute Deviation", JASA 1993). A flag is raised when a score passes
its threshold in `AnomalySpec`; `streaks` counts the consecutive rounds each silo has been
flagged, and a silo flagged `report_after` rounds in a row is reported. Scores never exclude
anyone by themselves: whether flagged updates are left out of the merge is the caller's policy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fl_core.errors import AggregationError

MAD_TO_STD = 1.4826


@dataclass(frozen=True, slots=True, kw_only=True)
class AnomalySpec:
    """``max_norm_z`` / ``max_distance_z``: flag above these robust z-scores; ``min_cosine``: flag an
    update less aligned than this with the merged update; ``report_after``: report a silo flagged
    in this many consecutive rounds; ``exclude``: leave flagged updates out of the merge."""

    __pydantic_config__ = {"extra": "forbid"}

    max_norm_z: float = 3.5
    max_distance_z: float = 3.5
    min_cosine: float = -0.5
    report_after: int = 3
    exclude: bool = False

    def __post_init__(self) -> None:
        for name in ("max_norm_z", "max_distance_z"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (isinstance(self.min_cosine, (int, float)) and -1 <= self.min_cosine <= 1):
            raise ValueError(f"min_cosine must be in [-1, 1], got {self.min_cosine!r}")
        if isinstance(self.report_after, bool) or not isinstance(self.report_after, int) or self.report_after < 1:
            raise ValueError(f"report_after must be an integer >= 1, got {self.report_after!r}")


@dataclass(frozen=True, slots=True)
class Score:
    norm: float
    norm_z: float
    cosine: float
    distance: float
    distance_z: float
    flags: tuple[str, ...]

    def to_dict(self) -> dict:
        """JSON-ready: an infinite z-score (an outlier from a zero-MAD consensus) becomes None."""
        return {"norm": self.norm, "norm_z": finite_or_none(self.norm_z), "cosine": self.cosine,
                "distance": self.distance, "distance_z": finite_or_none(self.distance_z), "flags": list(self.flags)}


def robust_z(values: Sequence[float]) -> np.ndarray:
    """(v − median) / (1.4826 · MAD). With a zero MAD (most values equal), values at the median
    score 0 and the others ±inf: they differ from a consensus."""
    v = np.asarray(values, dtype=np.float64)
    median = float(np.median(v))
    mad = MAD_TO_STD * float(np.median(np.abs(v - median)))
    if mad == 0:
        diff = v - median
        return np.where(diff > 0, np.inf, np.where(diff < 0, -np.inf, 0.0))
    return (v - median) / mad


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def score_updates(updates: Mapping[str, np.ndarray], merged: np.ndarray, spec: AnomalySpec) -> dict[str, Score]:
    """Scores and flags of each update against the merged update (needs at least one update)."""
    if not updates:
        raise AggregationError("nothing to score: no updates")
    m = np.asarray(merged, dtype=np.float64)
    names = sorted(updates)
    vectors = []
    for name in names:
        u = np.asarray(updates[name], dtype=np.float64)
        if u.shape != m.shape:
            raise AggregationError(f"update of {name} has shape {u.shape}, the merged update {m.shape}")
        if not np.all(np.isfinite(u)):
            raise AggregationError(f"update of {name} holds NaN or infinite values")
        vectors.append(u)
    norms = [float(np.linalg.norm(u)) for u in vectors]
    distances = [float(np.linalg.norm(u - m)) for u in vectors]
    norm_z, distance_z = robust_z(norms), robust_z(distances)
    out = {}
    for i, name in enumerate(names):
        cosine = _cosine(vectors[i], m)
        flags = []
        if norm_z[i] > spec.max_norm_z:
            flags.append("norm")
        if distance_z[i] > spec.max_distance_z:
            flags.append("distance")
        if cosine < spec.min_cosine:
            flags.append("cosine")
        out[name] = Score(norms[i], float(norm_z[i]), cosine, distances[i], float(distance_z[i]), tuple(flags))
    return out


def streaks(previous: Mapping[str, int], scores: Mapping[str, Score]) -> dict[str, int]:
    """Consecutive flagged rounds per silo after this round: +1 if flagged, 0 if it took part
    unflagged; a silo absent from this round keeps its count."""
    out = dict(previous)
    for name, score in scores.items():
        out[name] = out.get(name, 0) + 1 if score.flags else 0
    return out


def reported(counts: Mapping[str, int], spec: AnomalySpec) -> list[str]:
    """Silos flagged in at least `report_after` consecutive rounds."""
    return sorted(s for s, n in counts.items() if n >= spec.report_after)


def finite_or_none(value: float) -> float | None:
    """A score for JSON: infinities (a zero-MAD outlier) become None."""
    return value if math.isfinite(value) else None
