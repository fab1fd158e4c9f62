"""Group fairness within silos for one declared sensitive column: per-group confusion counts of the
thresholded predictions on a silo's holdout, and the two differences the gate checks.

- Demographic parity difference: the largest gap, over the groups, in the rate of positive
  predictions P(ŷ = 1 | g) (Dwork et al., "Fairness Through Awareness", ITCS 2012; Calders &
  Verwer, "Three naive Bayes approaches for discrimination-free classification", Data Min. Knowl.
  Disc. 2010).
- Equalised odds difference: the larger of the gaps, over the groups, in the true-positive rate
  P(ŷ = 1 | y = 1, g) and in the false-positive rate P(ŷ = 1 | y = 0, g) (Hardt, Price & Srebro,
  "Equality of Opportunity in Supervised Learning", NeurIPS 2016).

Both are functions of five counts per group (rows, predicted positive, actual positive, true and
false positives), so a silo reports counts, never rows, and the federation's value is computed
from the counts summed over silos: for the rows that are reported it is exactly the value on the
pooled holdouts, not an average of the silos' values.

What a silo reports is suppressed first (small-cell suppression, `reportable`): a group with fewer
than ``min_group_size`` holdout rows is withheld, so that no count describes one or two patients;
and since the silo's holdout size is reported beside the counts (the metrics' ``n``), the rows left
undescribed (withheld groups plus rows with a missing value) must themselves be none or at least
``min_group_size``, otherwise the smallest reported groups are withheld too (complementary
suppression), as a subtraction would reveal the small cell. Only how many groups were withheld is
reported, never their values. Suppression depends on the group sizes alone, not on the model, so a
silo withholds the same groups for every model it scores on the same holdout.

A rate is undefined (NaN) for a group without rows of its conditioning class (a TPR without
positives, an FPR without negatives); such a group is left out of that gap and named in
`Disparity.left_out`. A gap needs two groups with a defined rate, and the equalised odds difference
is the larger of the gaps that are defined; with none, the difference is NaN ("not measurable
here", as the gate treats an undefined metric). Each difference lies in [0, 1].

numpy only; the silo calls `group_counts` and `reportable`, the gate `sum_counts` and `disparity`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

_FIELDS = ("n", "predicted", "positive", "true_positive", "false_positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupCounts:
    """One group's confusion counts of thresholded predictions on a holdout."""

    n: int  # rows of the group
    predicted: int  # rows predicted positive (ŷ = 1)
    positive: int  # rows that are positive (y = 1)
    true_positive: int  # ŷ = 1 and y = 1
    false_positive: int  # ŷ = 1 and y = 0

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"group counts: {name} must be a non-negative integer, got {value!r}")
        if self.positive > self.n or self.predicted > self.n:
            raise ValueError(f"group counts: positive {self.positive} and predicted {self.predicted} cannot exceed "
                             f"the group's {self.n} rows")
        if self.true_positive + self.false_positive != self.predicted:
            raise ValueError(f"group counts: true positives {self.true_positive} + false positives "
                             f"{self.false_positive} must equal predicted {self.predicted}")
        if self.true_positive > self.positive or self.false_positive > self.n - self.positive:
            raise ValueError(f"group counts: {self.true_positive} true and {self.false_positive} false positives do not "
                             f"fit {self.positive} positives and {self.n - self.positive} negatives")

    @property
    def negative(self) -> int:
        return self.n - self.positive

    @property
    def selection_rate(self) -> float:
        """P(ŷ = 1 | g); NaN for an empty group."""
        return self.predicted / self.n if self.n else math.nan

    @property
    def tpr(self) -> float:
        """P(ŷ = 1 | y = 1, g); NaN without positives."""
        return self.true_positive / self.positive if self.positive else math.nan

    @property
    def fpr(self) -> float:
        """P(ŷ = 1 | y = 0, g); NaN without negatives."""
        return self.false_positive / self.negative if self.negative else math.nan

    def __add__(self, other: GroupCounts) -> GroupCounts:
        return GroupCounts(**{name: getattr(self, name) + getattr(other, name) for name in _FIELDS})

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_dict(cls, raw: Mapping[str, int]) -> GroupCounts:
        """The counts of `raw`; `KeyError` for a missing field, `ValueError` for counts that do not fit."""
        return cls(**{name: raw[name] for name in _FIELDS})


ZERO = GroupCounts(n=0, predicted=0, positive=0, true_positive=0, false_positive=0)


def _missing(value: object) -> bool:
    # None from Arrow string columns, NaN from float columns, pandas.NA from nullable dtypes.
    if value is None or type(value).__name__ == "NAType":
        return True
    return isinstance(value, (float, np.floating)) and value != value


def group_counts(y, p, groups, threshold: float = 0.5) -> dict[str, GroupCounts]:
    """Each group's counts of the predictions ``p >= threshold`` against the labels `y` (0/1).

    `groups` holds each row's group label (its string form names the group); rows whose label is
    missing (None, NaN) belong to no group and are left out. Groups are keyed in sorted order."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    y = np.asarray(y).astype(np.int64)
    p = np.asarray(p, dtype=np.float64)
    labels = np.asarray(groups, dtype=object)
    if not (len(y) == len(p) == len(labels)):
        raise ValueError(f"{len(y)} labels, {len(p)} predictions and {len(labels)} group labels")
    if np.any((y != 0) & (y != 1)):
        raise ValueError("labels must be 0 or 1")
    predicted = p >= threshold
    names = np.array(["" if _missing(g) else str(g) for g in labels], dtype=object)
    present = np.fromiter((not _missing(g) for g in labels), dtype=bool, count=len(labels))
    out = {}
    for name in sorted(set(names[present])):
        rows = present & (names == name)
        yg, pg = y[rows], predicted[rows]
        out[name] = GroupCounts(n=int(rows.sum()), predicted=int(pg.sum()), positive=int(yg.sum()),
                                true_positive=int((pg & (yg == 1)).sum()), false_positive=int((pg & (yg == 0)).sum()))
    return out


def sum_counts(per_silo: Iterable[Mapping[str, GroupCounts]]) -> dict[str, GroupCounts]:
    """Counts summed group by group over silos: the counts of the silos' rows taken together."""
    total: dict[str, GroupCounts] = {}
    for counts in per_silo:
        for name, c in counts.items():
            total[name] = total.get(name, ZERO) + c
    return dict(sorted(total.items()))


def reportable(counts: Mapping[str, GroupCounts], min_group_size: int,
               unassigned: int = 0) -> tuple[dict[str, GroupCounts], int]:
    """The counts a silo may report, and how many groups it withholds.

    Withholds every group under `min_group_size` rows; then, while the rows left undescribed (the
    withheld groups' and the `unassigned` rows with a missing group) are more than none but fewer
    than `min_group_size`, also the smallest reported group (ties: by name), since the holdout's
    size is reported beside the counts and a subtraction would reveal the small remainder."""
    if min_group_size < 1:
        raise ValueError(f"min_group_size must be >= 1, got {min_group_size!r}")
    if unassigned < 0:
        raise ValueError(f"unassigned rows must be >= 0, got {unassigned!r}")
    kept = {name: c for name, c in counts.items() if c.n >= min_group_size}
    hidden = unassigned + sum(c.n for name, c in counts.items() if name not in kept)
    while kept and 0 < hidden < min_group_size:
        smallest = min(kept, key=lambda name: (kept[name].n, name))
        hidden += kept.pop(smallest).n
    return kept, len(counts) - len(kept)


def _gap(rates: Mapping[str, float]) -> float:
    defined = [r for r in rates.values() if not math.isnan(r)]
    return max(defined) - min(defined) if len(defined) >= 2 else math.nan


def demographic_parity_difference(counts: Mapping[str, GroupCounts]) -> float:
    """max − min over groups of P(ŷ = 1 | g); NaN with fewer than two non-empty groups."""
    return _gap({name: c.selection_rate for name, c in counts.items()})


def equalised_odds_difference(counts: Mapping[str, GroupCounts]) -> float:
    """The larger of the TPR gap and the FPR gap over groups (each over the groups where the rate is
    defined); NaN when neither gap is defined."""
    gaps = [g for g in (_gap({n: c.tpr for n, c in counts.items()}), _gap({n: c.fpr for n, c in counts.items()}))
            if not math.isnan(g)]
    return max(gaps) if gaps else math.nan


@dataclass(frozen=True, slots=True, kw_only=True)
class Disparity:
    """Both differences of one set of counts, their parts and the rates they came from."""

    parity: float  # demographic parity difference
    odds: float  # equalised odds difference: max(tpr_gap, fpr_gap) over the defined gaps
    tpr_gap: float
    fpr_gap: float
    rates: Mapping[str, Mapping[str, float]]  # group -> selection, tpr, fpr
    left_out: tuple[str, ...] = ()  # "<group> TPR (no positives)", "<group> FPR (no negatives)"

    def to_dict(self) -> dict:
        return {"parity": self.parity, "odds": self.odds, "tpr_gap": self.tpr_gap, "fpr_gap": self.fpr_gap,
                "rates": {g: dict(r) for g, r in self.rates.items()}, "left_out": list(self.left_out)}


def disparity(counts: Mapping[str, GroupCounts]) -> Disparity:
    """Both differences of `counts` (a silo's, or the federation's summed ones), with the rates and
    the groups each rate leaves out."""
    left_out = [f"{name} TPR (no positives)" for name, c in counts.items() if c.n and not c.positive]
    left_out += [f"{name} FPR (no negatives)" for name, c in counts.items() if c.n and not c.negative]
    return Disparity(
        parity=demographic_parity_difference(counts), odds=equalised_odds_difference(counts),
        tpr_gap=_gap({n: c.tpr for n, c in counts.items()}), fpr_gap=_gap({n: c.fpr for n, c in counts.items()}),
        rates={name: {"selection": c.selection_rate, "tpr": c.tpr, "fpr": c.fpr} for name, c in sorted(counts.items())},
        left_out=tuple(sorted(left_out)),
    )
