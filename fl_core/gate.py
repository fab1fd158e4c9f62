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
floor is a ceiling and losses are increases. Fairness across silos in this sense follows the
"worst-group" view of Sagawa et al., ICLR 2020, and the per-client view of Li et al., "Fair
Resource Allocation in Federated Learning", ICLR 2020.

With ``groups`` (`GroupSpec`), two more checks on one declared sensitive column of the contract
(`fl_core.fairness`): each silo reports the candidate's per-group confusion counts on its holdout
(small cells withheld), and the gate sums them over silos and checks the federation's
demographic parity difference against ``max_dp_difference`` (check "parity") and its equalised
odds difference against ``max_eo_difference`` (check "odds"). The federation's value is the one on
the pooled reported rows, not an average of the silos'; each silo's own value is named in the
detail. A difference the summed counts cannot measure (fewer than two groups with a defined rate)
fails its check, as a gate without any defined metric does: it cannot vouch for what it cannot
see.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

from fl_core.bootstrap import Interval
from fl_core.evaluation import HIGHER_IS_BETTER
from fl_core.fairness import Disparity, GroupCounts, disparity, sum_counts


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSpec:
    """Group fairness on one categorical column of the contract (checked against it when the config
    is read): the largest demographic parity and equalised odds differences the candidate may show
    on the federation's holdouts, the smallest group a silo reports (smaller cells are withheld),
    and the probability at which a prediction counts as positive."""

    __pydantic_config__ = {"extra": "forbid"}

    column: str
    max_dp_difference: float
    max_eo_difference: float
    min_group_size: int = 10
    threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_dp_difference", "max_eo_difference"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if isinstance(self.min_group_size, bool) or self.min_group_size < 3:
            raise ValueError(f"min_group_size must be >= 3 (no reported count may describe one or two people), "
                             f"got {self.min_group_size!r}")
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold < 1.0):
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")


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
    groups: GroupSpec | None = None  # group fairness on a sensitive column: off unless configured

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
    name: Literal["floor", "gap", "regression", "overall", "coverage", "parity", "odds"]
    passed: bool
    value: float
    threshold: float
    detail: str
    low: float | None = None  # the value's interval, where it has one
    high: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSummary:
    """Every number the group checks used: the counts each silo reported (and how many groups it
    withheld), each silo's differences, and the federation's from the summed counts."""

    column: str
    threshold: float
    min_group_size: int
    counts: Mapping[str, GroupCounts]  # the federation's: summed over the silos' reported counts
    federation: Disparity
    silo_counts: Mapping[str, Mapping[str, GroupCounts]]
    silos: Mapping[str, Disparity]
    suppressed: Mapping[str, int]  # silo -> groups it withheld

    def to_dict(self) -> dict:
        return {
            "column": self.column, "threshold": self.threshold, "min_group_size": self.min_group_size,
            "federation": {"counts": {g: c.to_dict() for g, c in self.counts.items()}, **self.federation.to_dict()},
            "silos": {silo: {"counts": {g: c.to_dict() for g, c in self.silo_counts[silo].items()},
                             "suppressed": self.suppressed.get(silo, 0), **self.silos[silo].to_dict()}
                      for silo in sorted(self.silos)},
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class GateDecision:
    passed: bool
    metric: str
    checks: tuple[Check, ...]
    undefined: tuple[str, ...] = field(default=())
    groups: GroupSummary | None = None  # with GateSpec.groups: the group checks' numbers

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


def _per_silo(values: Mapping[str, float], silo_counts: Mapping[str, Mapping[str, GroupCounts]],
              suppressed: Mapping[str, int]) -> str:
    parts = []
    for silo in sorted(values):
        withheld = suppressed.get(silo, 0)
        note = f" ({withheld} group{'s' if withheld != 1 else ''} withheld)" if withheld else ""
        value = values[silo]
        if math.isnan(value):
            reason = note or (" (one group reported)" if len(silo_counts[silo]) < 2 else " (rates undefined)")
            parts.append(f"{silo} —{reason}")
        else:
            parts.append(f"{silo} {value:.3f}{note}")
    return ", ".join(parts) or "none"


def _group_checks(spec: GroupSpec, groups: Mapping[str, Mapping[str, GroupCounts]],
                  suppressed: Mapping[str, int]) -> tuple[list[Check], GroupSummary]:
    """The parity and odds checks on the federation's summed counts, and every number they used."""
    silo_counts = {silo: dict(sorted(counts.items())) for silo, counts in groups.items()}
    for silo in suppressed:
        silo_counts.setdefault(silo, {})
    pooled = sum_counts(silo_counts.values())
    federation = disparity(pooled)
    silos = {silo: disparity(counts) for silo, counts in silo_counts.items()}
    summary = GroupSummary(column=spec.column, threshold=spec.threshold, min_group_size=spec.min_group_size,
                           counts=pooled, federation=federation, silo_counts=silo_counts, silos=silos,
                           suppressed={s: k for s, k in suppressed.items() if k})
    left_out = f" · left out: {', '.join(federation.left_out)}" if federation.left_out else ""
    checks = []
    for name, label, value, threshold, parts, per_silo in (
        ("parity", "demographic parity difference", federation.parity, spec.max_dp_difference,
         "positive rate " + ", ".join(f"{g} {r['selection']:.3f}" for g, r in federation.rates.items()),
         {s: d.parity for s, d in silos.items()}),
        ("odds", "equalised odds difference", federation.odds, spec.max_eo_difference,
         f"TPR gap {_number(federation.tpr_gap)}, FPR gap {_number(federation.fpr_gap)}",
         {s: d.odds for s, d in silos.items()}),
    ):
        where = f"per silo: {_per_silo(per_silo, silo_counts, suppressed)}"
        if math.isnan(value):
            detail = (f"{label} on {spec.column} undefined: the reported counts hold fewer than two groups with a "
                      f"defined rate ({len(pooled)} reported) · {where}{left_out}")
            checks.append(Check(name=name, passed=False, value=math.nan, threshold=threshold, detail=detail))
            continue
        ok = value <= threshold
        detail = (f"{label} on {spec.column} {value:.3f} {'<=' if ok else '>'} {threshold:.3f} ({parts}) · "
                  f"{where}{left_out}")
        checks.append(Check(name=name, passed=ok, value=value, threshold=threshold, detail=detail))
    return checks, summary


def _number(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


def decide(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    spec: GateSpec,
    gains: Mapping[str, Interval] | None = None,
    sizes: Mapping[str, int] | None = None,
    groups: Mapping[str, Mapping[str, GroupCounts]] | None = None,
    suppressed: Mapping[str, int] | None = None,
) -> GateDecision:
    """Gate `candidate` (silo -> metric) against `spec` and, if given, the champion's values.
    `gains`: each silo's paired interval of the candidate's gain over the champion (positive is
    better); `sizes`: each silo's holdout rows, the weights of the overall gain (equal without).
    With ``spec.groups``: `groups`, each silo's reported group counts of the candidate (after
    suppression), and `suppressed`, how many groups each silo withheld; ignored without it."""
    higher = HIGHER_IS_BETTER[spec.metric]
    gains = gains or {}
    group_checks: list[Check] = []
    summary = None
    if spec.groups is not None:
        group_checks, summary = _group_checks(spec.groups, groups or {}, suppressed or {})
    defined = {s: v for s, v in candidate.items() if not math.isnan(v)}
    undefined = tuple(sorted(s for s in candidate if s not in defined))
    if not defined:
        check = Check(
            name="coverage", passed=False, value=0.0, threshold=1.0,
            detail=f"no silo has a defined {spec.metric} on its holdout",
        )
        return GateDecision(passed=False, metric=spec.metric, checks=(check, *group_checks), undefined=undefined,
                            groups=summary)

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
    checks.extend(group_checks)
    return GateDecision(passed=all(c.passed for c in checks), metric=spec.metric, checks=tuple(checks), undefined=undefined,
                        groups=summary)
