"""The fairness gate: a round's model becomes the champion only if it serves every silo and is not
worse than the champion.

Checks on one metric measured on each silo's own holdout (federated evaluation):
- floor: the worst silo's value is at least ``min_worst``;
- gap: best minus worst silo is at most ``max_gap``;
- regression: no silo loses more than ``max_regression`` against the current champion beyond
  noise: each silo scores both models on the same holdout rows and reports its paired bootstrap
  interval of the candidate's gain (`fl_core.bootstrap`); the silo blocks only if the whole
  interval lies below −``max_regression`` (without an interval, its point loss must not exceed
  ``max_regression``);
- overall: the candidate's gain over the champion, the holdout-size-weighted mean of the silos'
  gains (for accuracy and log loss, exactly the difference on all holdouts pooled), is at least
  −``max_overall_drop`` (0 by default: the champion never moves to a model that is worse on the
  federation's holdouts, so that a run of drops each inside noise cannot walk it down). Its
  interval, from the silos' replicates' spreads (the silos' resamples are independent: a
  stratified bootstrap with a normal interval), is reported beside it.
Silos where the metric is undefined (ROC AUC on a one-class holdout) are named and left out of the
checks; if no silo has a defined value the gate fails. For ``log_loss`` (lower is better) the
floor is a ceiling and losses are increases. Fairness across groups in this sense follows the
"worst-group" view of Sagawa et al., ICLR 2020, and the per-client view of Li et al., "Fair
Resource Allocation in Federated Learning", ICLR 2020.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

from fl_core.bootstrap import Interval
from fl_core.evaluation import HIGHER_IS_BETTER


@dataclass(frozen=True, slots=True, kw_only=True)
class GateSpec:
    __pydantic_config__ = {"extra": "forbid"}

    metric: Literal["accuracy", "roc_auc", "log_loss"] = "accuracy"
    min_worst: float = 0.6
    max_gap: float = 0.3
    max_regression: float = 0.0
    max_overall_drop: float = 0.0
    confidence: float = 0.95  # of the bootstrap intervals
    bootstrap: int = 1000  # replicates each silo draws

    def __post_init__(self) -> None:
        if self.metric not in HIGHER_IS_BETTER:
            raise ValueError(f"metric must be one of {sorted(HIGHER_IS_BETTER)}, got {self.metric!r}")
        for name in ("min_worst", "max_gap", "max_regression", "max_overall_drop", "confidence"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.max_gap < 0 or self.max_regression < 0:
            raise ValueError(f"max_gap and max_regression must be >= 0, got {self.max_gap!r}, {self.max_regression!r}")
        if self.max_overall_drop < 0:
            raise ValueError(f"max_overall_drop must be >= 0, got {self.max_overall_drop!r}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence!r}")
        if not 100 <= self.bootstrap <= 100_000:
            raise ValueError(f"bootstrap must be between 100 and 100000 replicates, got {self.bootstrap!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    name: Literal["floor", "gap", "regression", "overall", "coverage"]
    passed: bool
    value: float
    threshold: float
    detail: str
    low: float | None = None  # the value's interval, where it has one
    high: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GateDecision:
    passed: bool
    metric: str
    checks: tuple[Check, ...]
    undefined: tuple[str, ...] = field(default=())

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def summary(self) -> str:
        if self.passed:
            return "passed"
        return "; ".join(c.detail for c in self.failures)


def _interval_text(low: float | None, high: float | None) -> str:
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return ""
    return f" [{low:+.3f}, {high:+.3f}]"


def decide(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    spec: GateSpec,
    gains: Mapping[str, Interval] | None = None,
    sizes: Mapping[str, int] | None = None,
) -> GateDecision:
    """Gate `candidate` (silo -> metric) against `spec` and, if given, the champion's values.
    `gains`: each silo's paired interval of the candidate's gain over the champion (positive is
    better); `sizes`: each silo's holdout rows, the weights of the overall gain (equal without)."""
    higher = HIGHER_IS_BETTER[spec.metric]
    gains = gains or {}
    defined = {s: v for s, v in candidate.items() if not math.isnan(v)}
    undefined = tuple(sorted(s for s in candidate if s not in defined))
    if not defined:
        check = Check(
            name="coverage", passed=False, value=0.0, threshold=1.0,
            detail=f"no silo has a defined {spec.metric} on its holdout",
        )
        return GateDecision(passed=False, metric=spec.metric, checks=(check,), undefined=undefined)

    checks: list[Check] = []
    worst_silo = min(defined, key=defined.get) if higher else max(defined, key=defined.get)
    best_silo = max(defined, key=defined.get) if higher else min(defined, key=defined.get)
    worst = defined[worst_silo]
    floor_ok = worst >= spec.min_worst if higher else worst <= spec.min_worst
    relation = ("<" if higher else ">") if not floor_ok else (">=" if higher else "<=")
    checks.append(Check(
        name="floor", passed=floor_ok, value=worst, threshold=spec.min_worst,
        detail=f"worst silo {worst_silo} {spec.metric} {worst:.3f} {relation} {spec.min_worst:.3f}",
    ))
    gap = abs(defined[best_silo] - worst)
    gap_ok = gap <= spec.max_gap
    checks.append(Check(
        name="gap", passed=gap_ok, value=gap, threshold=spec.max_gap,
        detail=f"gap {best_silo} - {worst_silo} = {gap:.3f} {'<=' if gap_ok else '>'} {spec.max_gap:.3f}",
    ))
    if champion is not None:
        point: dict[str, float] = {}  # gain over the champion, positive is better
        for silo, value in defined.items():
            before = champion.get(silo, math.nan)
            if not math.isnan(before):
                point[silo] = (value - before) if higher else (before - value)
        if point:
            # the silo whose gain's interval reaches least far up: the one nearest to blocking
            def upper(silo: str) -> float:
                interval = gains.get(silo)
                return interval.high if interval is not None and not math.isnan(interval.high) else point[silo]

            silo = min(point, key=upper)
            interval = gains.get(silo)
            loss, reach = -point[silo], -upper(silo)  # reach: the smallest loss the interval admits
            ok = reach <= spec.max_regression
            if interval is None or math.isnan(interval.high):
                low = high = None
                detail = f"largest loss vs champion: {silo} {loss:+.3f} {'<=' if ok else '>'} {spec.max_regression:.3f}"
            else:
                low, high = -interval.high, -interval.low
                detail = (f"largest loss vs champion: {silo} {loss:+.3f}{_interval_text(low, high)}, "
                          f"{'not ' if ok else ''}beyond {spec.max_regression:.3f}")
            checks.append(Check(name="regression", passed=ok, value=loss, threshold=spec.max_regression, low=low,
                                high=high, detail=detail))
            weights = {s: float((sizes or {}).get(s, 1)) for s in point}
            total = sum(weights.values())
            overall = sum(weights[s] * point[s] for s in point) / total
            spreads = [gains[s].sd for s in point if s in gains and not math.isnan(gains[s].sd)]
            low = high = None
            if len(spreads) == len(point):
                sd = math.sqrt(sum((weights[s] / total) ** 2 * gains[s].sd ** 2 for s in point))
                z = NormalDist().inv_cdf(0.5 + spec.confidence / 2.0)
                low, high = overall - z * sd, overall + z * sd
            floor = 0.0 - spec.max_overall_drop  # 0.0 - 0.0 is +0.0: no "-0.000" in the detail
            ok = overall >= floor
            checks.append(Check(
                name="overall", passed=ok, value=overall, threshold=floor, low=low, high=high,
                detail=f"overall gain vs champion {overall:+.3f}{_interval_text(low, high)} "
                       f"{'>=' if ok else '<'} {floor:+.3f}",
            ))
    return GateDecision(passed=all(c.passed for c in checks), metric=spec.metric, checks=tuple(checks), undefined=undefined)
