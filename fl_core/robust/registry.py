"""Robust rules by name, for configs: `make_aggregator("trimmed_mean", beta=0.2)`, and how many
Byzantine updates each tolerates among n (`tolerated_faults`).

Names: "mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median",
"centered_clipping", "norm_bounding". An unknown name, or a parameter the rule does not take, raises
`UnknownAggregator`; a known parameter with a bad value raises `ValueError` naming it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from fl_core.errors import TooFewUpdates, UnknownAggregator
from fl_core.robust.bulyan import Bulyan
from fl_core.robust.centered_clipping import CenteredClipping
from fl_core.robust.coordinate import Median, TrimmedMean, trimmed_cut
from fl_core.robust.geometric_median import GeometricMedian
from fl_core.robust.krum import Krum, MultiKrum
from fl_core.robust.mean import Mean
from fl_core.robust.norm_bounding import NormBounding

Aggregator = Callable[[Sequence[np.ndarray], Sequence[float]], np.ndarray]

RULES: dict[str, type] = {
    "mean": Mean,
    "median": Median,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
    "multi_krum": MultiKrum,
    "bulyan": Bulyan,
    "geometric_median": GeometricMedian,
    "centered_clipping": CenteredClipping,
    "norm_bounding": NormBounding,
}
NAMES: tuple[str, ...] = tuple(RULES)

# Centred clipping's analysis (Karimireddy, He & Jaggi 2021) covers a Byzantine fraction up to 0.1.
CENTERED_CLIPPING_FRACTION = 0.1


def _rule(name: str) -> type:
    try:
        return RULES[name]
    except (KeyError, TypeError):
        raise UnknownAggregator(f"unknown aggregation rule {name!r}; known: {', '.join(NAMES)}") from None


def parameters(name: str) -> tuple[str, ...]:
    """The parameters rule `name` takes."""
    return tuple(f.name for f in dataclasses.fields(_rule(name)))


def _check_names(name: str, params: dict) -> type:
    cls = _rule(name)
    known = parameters(name)
    for key in params:
        if key not in known:
            takes = ", ".join(known) if known else "no parameters"
            raise UnknownAggregator(f"aggregation rule {name!r} has no parameter {key!r}; it takes {takes}")
    return cls


def make_aggregator(name: str, **params: object) -> Aggregator:
    """The rule called `name`, built from `params` (validated by the rule)."""
    cls = _check_names(name, params)
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [key for key in required if key not in params]
    if missing:
        raise ValueError(f"aggregation rule {name!r} needs {', '.join(missing)}")
    return cls(**params)


def tolerated_faults(name: str, n: int, **params: object) -> int:
    """The most Byzantine updates among n that rule `name` (with `params`, e.g. beta, m) is guaranteed to
    withstand — its breakdown point counted in updates, for equal weights; for Krum, Multi-Krum and
    Bulyan the largest f they can be set to for n (a given `f` is ignored). 0 for "mean" and
    "norm_bounding" (bounded influence, no recovery); `TooFewUpdates` when the rule cannot run on n
    updates at all (e.g. Krum below 3, Multi-Krum below m)."""
    _check_names(name, params)
    if "beta" in params:
        TrimmedMean(beta=params["beta"])  # the value checks
    if params.get("m") is not None:
        MultiKrum(f=0, m=params["m"])
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if n == 0:
        raise TooFewUpdates(f"{name} needs at least 1 update, got 0")
    if name in ("mean", "norm_bounding"):
        return 0
    if name in ("median", "geometric_median"):
        return (n - 1) // 2
    if name == "trimmed_mean":
        return trimmed_cut(float(params.get("beta", TrimmedMean().beta)), n)
    if name == "centered_clipping":
        return math.floor(CENTERED_CLIPPING_FRACTION * n)
    if name in ("krum", "multi_krum"):
        if n < 3:
            raise TooFewUpdates(f"{name} needs at least 3 updates (n ≥ 2f + 3), got {n}")
        f = (n - 3) // 2
        m = params.get("m")
        if m is None:
            return f
        if n < m:
            raise TooFewUpdates(f"{name} with m = {m} needs at least {max(3, m)} updates, got {n}")
        return min(f, n - int(m))  # Multi-Krum's m choices must fit among the n − f honest updates
    if n < 3:  # bulyan
        raise TooFewUpdates(f"bulyan needs at least 3 updates (n ≥ 4f + 3), got {n}")
    return (n - 3) // 4
