"""Checks and small helpers shared by the attacks (not part of the public API)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from fl_core.attacks.errors import AttackError, AttackParameterError


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_fraction(value: float, field: str) -> None:
    """A fraction of rows or silos: a number in (0, 1]."""
    if not _is_number(value) or not 0.0 < value <= 1.0:
        raise AttackParameterError(field, f"{field} must be a number in (0, 1], got {value!r}")


def check_positive(value: float, field: str) -> None:
    if not _is_number(value) or not (math.isfinite(value) and value > 0):
        raise AttackParameterError(field, f"{field} must be a positive finite number, got {value!r}")


def check_non_negative(value: float, field: str) -> None:
    if not _is_number(value) or not (math.isfinite(value) and value >= 0):
        raise AttackParameterError(field, f"{field} must be a finite number >= 0, got {value!r}")


def check_label(value: int, field: str) -> None:
    if isinstance(value, bool) or value not in (0, 1):
        raise AttackParameterError(field, f"{field} must be a class label, 0 or 1, got {value!r}")


def rows_to_poison(n_rows: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``round(fraction * n_rows)`` distinct rows drawn by `rng` (all rows, in
    order and without drawing, when the fraction is 1)."""
    k = int(round(fraction * n_rows))
    if k >= n_rows:
        return np.arange(n_rows)
    return np.sort(rng.choice(n_rows, size=k, replace=False))


def binary_labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise AttackError(f"labels must be a 1-D array, got shape {y.shape}")
    if not np.all(np.isin(y, (0, 1))):
        raise AttackError("labels must be 0 or 1")
    return y


def rows_and_labels(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), binary_labels(y)
    if x.ndim < 2 or x.shape[0] != y.shape[0]:
        raise AttackError(f"features {x.shape} and labels {y.shape} do not line up")
    return x, y


def float_dtype(array: np.ndarray) -> np.dtype:
    """The dtype an attack's output keeps: the input's when it is floating point, else float64."""
    return array.dtype if np.issubdtype(array.dtype, np.floating) else np.dtype(np.float64)


def as_update(update: np.ndarray) -> np.ndarray:
    u = np.asarray(update)
    if u.ndim != 1:
        raise AttackError(f"updates are flat vectors, got shape {u.shape}")
    if not np.all(np.isfinite(u)):
        raise AttackError("an update holds NaN or infinite values")
    return u


def stack_updates(updates: Sequence[np.ndarray], what: str) -> np.ndarray:
    """The updates as one (k, d) float64 array, after checking they are finite flat vectors of one length."""
    if len(updates) == 0:
        raise AttackError(f"no {what} updates to compute the attack from")
    vectors = [as_update(u) for u in updates]
    shape = vectors[0].shape
    for i, v in enumerate(vectors):
        if v.shape != shape:
            raise AttackError(f"{what} update {i} has shape {v.shape}, expected {shape}")
    return np.stack([v.astype(np.float64) for v in vectors])
