"""Bootstrap confidence intervals of a silo's holdout metric, and of a candidate's gain over the
champion on the same rows (paired), computed on the silo: only the intervals leave it.

Each replicate resamples the holdout's rows with replacement (Efron, "Bootstrap Methods: Another
Look at the Jackknife", Ann. Statist. 1979) as multinomial counts, and both models are scored on
the same replicate, so the gain's interval reflects how the two models differ on the rows, not the
rows' own spread (the paired bootstrap; e.g. Koehn, "Statistical Significance Tests for Machine
Translation Evaluation", EMNLP 2004). Intervals are percentile intervals at `confidence`. Accuracy
and log loss are weighted means over the counts; ROC AUC is the Mann–Whitney statistic with the
counts as weights and ties counting 1/2, undefined for a replicate that holds one class (such
replicates are left out and counted). The gain is oriented so that positive is better: candidate
minus champion for accuracy and ROC AUC, champion minus candidate for log loss.

Randomness comes from an injected, seeded generator (the silo derives it from the federation's
seed, the round and its id), so a silo's reported intervals are reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fl_core.evaluation import HIGHER_IS_BETTER, METRICS

_CHUNK = 128  # replicates per block of counts (a block is _CHUNK × n)


@dataclass(frozen=True, slots=True, kw_only=True)
class Interval:
    estimate: float  # on the holdout as it is
    low: float
    high: float
    sd: float  # of the replicates
    replicates: int  # the replicates in which the value is defined

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "sd": self.sd,
                "replicates": self.replicates}

    @classmethod
    def from_dict(cls, raw) -> Interval:
        return cls(estimate=float(raw["estimate"]), low=float(raw["low"]), high=float(raw["high"]),
                   sd=float(raw["sd"]), replicates=int(raw["replicates"]))


def _weighted_metric(metric: str, y: np.ndarray, p: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """`metric` of predictions `p` on each replicate (rows of `counts`, one count per holdout row)."""
    n = counts.sum(axis=1)
    if metric == "accuracy":
        correct = ((p >= 0.5).astype(np.int64) == y).astype(np.float64)
        return counts @ correct / n
    if metric == "log_loss":
        q = np.clip(p, 1e-7, 1.0 - 1e-7)
        loss = -(y * np.log(q) + (1.0 - y) * np.log(1.0 - q))
        return counts @ loss / n
    order = np.argsort(p, kind="mergesort")
    scores, labels = p[order], y[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(scores)) + 1))
    weights = counts[:, order].astype(np.float64)
    positive = np.add.reduceat(weights * (labels == 1), starts, axis=1)
    negative = np.add.reduceat(weights * (labels == 0), starts, axis=1)
    below = np.cumsum(negative, axis=1) - negative
    pairs = positive.sum(axis=1) * negative.sum(axis=1)
    wins = (positive * (below + 0.5 * negative)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1.0), np.nan)


def _interval(estimate: float, replicates: np.ndarray, confidence: float) -> Interval:
    defined = replicates[~np.isnan(replicates)]
    if len(defined) == 0 or math.isnan(estimate):
        return Interval(estimate=estimate, low=math.nan, high=math.nan, sd=math.nan, replicates=len(defined))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(defined, [tail, 100.0 - tail])
    return Interval(estimate=estimate, low=float(low), high=float(high),
                    sd=float(defined.std(ddof=1)) if len(defined) > 1 else 0.0, replicates=len(defined))


def paired_intervals(metric: str, y: np.ndarray, candidate: np.ndarray, champion: np.ndarray | None,
                     rng: np.random.Generator, replicates: int = 1000,
                     confidence: float = 0.95) -> tuple[Interval, Interval | None]:
    """The candidate's `metric` with its interval, and (if `champion` is given) the candidate's gain
    over the champion with its paired interval, from `replicates` resamples of the holdout rows."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    y = np.asarray(y).astype(np.int64)
    p_new = np.asarray(candidate, dtype=np.float64)
    p_old = None if champion is None else np.asarray(champion, dtype=np.float64)
    n = len(y)
    if n == 0 or len(p_new) != n or (p_old is not None and len(p_old) != n):
        raise ValueError(f"{n} labels, {len(p_new)} candidate and "
                         f"{'no' if p_old is None else len(p_old)} champion predictions")
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    ones = np.ones((1, n))
    new_estimate = float(_weighted_metric(metric, y, p_new, ones)[0])
    old_estimate = None if p_old is None else float(_weighted_metric(metric, y, p_old, ones)[0])
    new_reps, gain_reps = [], []
    done = 0
    while done < replicates:
        block = min(_CHUNK, replicates - done)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=block).astype(np.float64)
        new = _weighted_metric(metric, y, p_new, counts)
        new_reps.append(new)
        if p_old is not None:
            gain_reps.append(sign * (new - _weighted_metric(metric, y, p_old, counts)))
        done += block
    candidate_interval = _interval(new_estimate, np.concatenate(new_reps), confidence)
    if p_old is None:
        return candidate_interval, None
    gain = sign * (new_estimate - old_estimate)
    return candidate_interval, _interval(gain, np.concatenate(gain_reps), confidence)
