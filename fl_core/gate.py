"""The fairness gate: a round's model becomes the champion only if it serves every silo.

Three checks on one metric measured on each silo's own holdout (federated evaluation):
- floor: the worst silo's value is at least ``min_worst``;
- gap: best minus worst silo is at most ``max_gap``;
- regression: no silo loses more than ``max_regression`` against the current champion,
  evaluated on the same holdouts in the same round.
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
from typing import Literal

from fl_core.evaluation import HIGHER_IS_BETTER


@dataclass(frozen=True, slots=True, kw_only=True)
class GateSpec:
    __pydantic_config__ = {"extra": "forbid"}

    metric: Literal["accuracy", "roc_auc", "log_loss"] = "accuracy"
    min_worst: float = 0.6
    max_gap: float = 0.3
    max_regression: float = 0.05

    def __post_init__(self) -> None:
        if self.metric not in HIGHER_IS_BETTER:
            raise ValueError(f"metric must be one of {sorted(HIGHER_IS_BETTER)}, got {self.metric!r}")
        for name in ("min_worst", "max_gap", "max_regression"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.max_gap < 0 or self.max_regression < 0:
            raise ValueError(f"max_gap and max_regression must be >= 0, got {self.max_gap!r}, {self.max_regression!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    name: Literal["floor", "gap", "regression", "coverage"]
    passed: bool
    value: float
    threshold: float
    detail: str


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


def decide(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    spec: GateSpec,
) -> GateDecision:
    """Gate `candidate` (silo -> metric) against `spec` and, if given, the champion's values."""
    higher = HIGHER_IS_BETTER[spec.metric]
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
        losses = {}
        for silo, value in defined.items():
            before = champion.get(silo, math.nan)
            if not math.isnan(before):
                losses[silo] = (before - value) if higher else (value - before)
        if losses:
            silo = max(losses, key=losses.get)
            loss = losses[silo]
            ok = loss <= spec.max_regression
            checks.append(Check(
                name="regression", passed=ok, value=loss, threshold=spec.max_regression,
                detail=f"largest loss vs champion: {silo} {loss:+.3f} {'<=' if ok else '>'} {spec.max_regression:.3f}",
            ))
    return GateDecision(passed=all(c.passed for c in checks), metric=spec.metric, checks=tuple(checks), undefined=undefined)
