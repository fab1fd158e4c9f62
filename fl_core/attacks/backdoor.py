"""A trigger backdoor: a data-level poisoning attack after Gu, Dolan-Gavitt & Garg, "BadNets:
Identifying Vulnerabilities in the Machine Learning Model Supply Chain" (arXiv:1708.06733, 2017),
brought to federated learning by Bagdasaryan, Veit, Hua, Estrin & Shmatikov, "How To Backdoor
Federated Learning" (AISTATS 2020).

A malicious silo stamps a fixed pattern (the `Trigger`: given values on given feature columns) on
a fraction of its training rows and labels them with the attacker's target class; a model that
learns the backdoor keeps its accuracy on clean rows but predicts the target whenever the trigger
is present. The backdoor's success rate is measured on clean test rows whose true label is not
the target: stamp the trigger on them (`backdoor_test_rows`), predict, and count how many the
model sends to the target (`backdoor_success_rate`).

Columns index a row's features in C order once the row is flattened, so a trigger on image rows
(n, h, w) names pixels by h·w position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fl_core.attacks._checks import check_fraction, check_label, rows_and_labels, rows_to_poison
from fl_core.attacks.errors import AttackError, AttackParameterError


def check_trigger(columns: tuple[int, ...], values: tuple[float, ...], columns_field: str, values_field: str) -> None:
    """A trigger names at least one column, each once, each >= 0, with one finite value per column."""
    if not isinstance(columns, tuple) or not columns:
        raise AttackParameterError(columns_field, f"{columns_field} must name at least one feature column, got {columns!r}")
    if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0 for c in columns):
        raise AttackParameterError(columns_field, f"{columns_field} must be column indices >= 0, got {list(columns)!r}")
    if len(set(columns)) != len(columns):
        raise AttackParameterError(columns_field, f"{columns_field} names a column twice: {list(columns)!r}")
    if not isinstance(values, tuple) or len(values) != len(columns):
        raise AttackParameterError(
            values_field, f"{values_field} must hold one value per trigger column ({len(columns)}), got {values!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) for v in values):
        raise AttackParameterError(values_field, f"{values_field} must be finite numbers, got {list(values)!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger:
    """The backdoor pattern: feature ``columns[i]`` of a triggered row is set to ``values[i]``."""

    columns: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if isinstance(self.columns, list):
            object.__setattr__(self, "columns", tuple(self.columns))
        if isinstance(self.values, list):
            object.__setattr__(self, "values", tuple(self.values))
        check_trigger(self.columns, self.values, "columns", "values")


def _stamp_inplace(x: np.ndarray, rows: np.ndarray, trigger: Trigger) -> None:
    flat = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # a view: x is a fresh C-contiguous copy
    if max(trigger.columns) >= flat.shape[1]:
        raise AttackError(f"trigger column {max(trigger.columns)} is past the last feature (rows have {flat.shape[1]})")
    flat[np.ix_(rows, np.asarray(trigger.columns))] = np.asarray(trigger.values, dtype=x.dtype)


def apply_trigger(x: np.ndarray, trigger: Trigger) -> np.ndarray:
    """A copy of the rows `x` (rows first) with the trigger stamped on every row; nothing else changes."""
    x = np.array(x, copy=True, order="C")
    if x.ndim < 2:
        raise AttackError(f"features must have rows first and at least 2 dimensions, got shape {x.shape}")
    _stamp_inplace(x, np.arange(x.shape[0]), trigger)
    return x


def plant_backdoor(x: np.ndarray, y: np.ndarray, trigger: Trigger, target: int, fraction: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Copies of (x, y) in which ``round(fraction · rows)`` rows, drawn by `rng`, carry the trigger
    and the label `target`; the other rows are unchanged."""
    check_label(target, "target")
    check_fraction(fraction, "fraction")
    x, y = rows_and_labels(x, y)
    x, y = np.array(x, copy=True, order="C"), y.copy()
    rows = rows_to_poison(len(y), fraction, rng)
    _stamp_inplace(x, rows, trigger)
    y[rows] = target
    return x, y


def backdoor_test_rows(x: np.ndarray, y: np.ndarray, trigger: Trigger, target: int) -> np.ndarray:
    """The clean test rows whose true label is not `target`, with the trigger stamped on them: the
    rows on which a backdoor's success is measured (a row already of the target class says nothing)."""
    check_label(target, "target")
    x, y = rows_and_labels(x, y)
    return apply_trigger(x[y != target], trigger)


def backdoor_success_rate(p: np.ndarray, target: int, threshold: float = 0.5) -> float:
    """The fraction of `backdoor_test_rows` the model classifies as `target`, from its predicted
    probabilities `p` of class 1 (class 1 when p >= threshold, as in `fl_core.evaluation.accuracy`).
    NaN when there is no row to measure on (every test row is of the target class)."""
    check_label(target, "target")
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise AttackError(f"predicted probabilities must be a 1-D array, got shape {p.shape}")
    if len(p) == 0:
        return math.nan
    return float(np.mean((p >= threshold).astype(np.int64) == target))
