"""Input checks shared by the robust rules, and the chunked views their kernels read updates through.

Updates arrive as a sequence of n flat vectors or as one (n, d) array. Nothing here stacks a list
into an (n, d) copy: at d = 1e6 a fresh 400 MB array costs more than most rules (page faults), so
the kernels read column blocks of the updates into small reused buffers instead (`Updates.block`,
`Updates.block_t`). Values are taken as float32, the wire format of an update.

Non-finite values are not looked for here — a full pass over n·d values costs as much as a plain
mean. Each kernel notices them where it touches the data anyway (a sorted row's ends, a squared
norm, a Gram diagonal) and then calls `raise_non_finite`, which finds the culprit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from fl_core.errors import BadWeights, NonFiniteUpdate, ShapeMismatch, TooFewUpdates

# Column-block width for the chunked kernels: a block of 100 updates is 1.6 MB (3.2 MB in float64),
# small enough to stay in cache and large enough that numpy's per-call overhead does not matter.
BLOCK = 4096


@dataclass(frozen=True, slots=True, eq=False)
class Updates:
    """n updates of length d as float32 rows: either one C-contiguous (n, d) array (`matrix`) or the
    list of the caller's vectors (`rows`, never copied)."""

    rows: tuple[np.ndarray, ...]
    matrix: np.ndarray | None

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def d(self) -> int:
        return int(self.rows[0].shape[0])

    def block(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Columns start:stop of every update, as an (n, stop - start) array (a view when it can be)."""
        if self.matrix is not None:
            return self.matrix[:, start:stop]
        view = out[:, : stop - start]
        for i, row in enumerate(self.rows):
            view[i] = row[start:stop]
        return view

    def block_t(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Columns start:stop of every update, transposed into `out`'s first stop - start rows: row j
        holds coordinate start + j of all n updates."""
        view = out[: stop - start]
        if self.matrix is not None:
            np.copyto(view, self.matrix[:, start:stop].T)
        else:
            for i, row in enumerate(self.rows):
                view[:, i] = row[start:stop]
        return view

    def select(self, indices: Sequence[int]) -> Updates:
        """The updates at `indices`, in that order, as views (no copy)."""
        return Updates(rows=tuple(self.rows[i] for i in indices), matrix=None)


def blocks(d: int, width: int = BLOCK) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive column blocks covering 0..d."""
    for start in range(0, d, width):
        yield start, min(d, start + width)


def as_updates(updates: Sequence[np.ndarray] | np.ndarray) -> Updates:
    """The updates as float32 rows of one length, or `TooFewUpdates` (none) / `ShapeMismatch`."""
    if isinstance(updates, np.ndarray):
        if updates.ndim != 2:
            raise ShapeMismatch(f"updates must be a sequence of flat vectors or an (n, d) array, got shape {updates.shape}")
        if updates.shape[0] == 0:
            raise TooFewUpdates("nothing to aggregate: no updates")
        if updates.shape[1] == 0:
            raise ShapeMismatch("updates have length 0")
        matrix = np.ascontiguousarray(updates, dtype=np.float32)
        return Updates(rows=tuple(matrix), matrix=matrix)
    if len(updates) == 0:
        raise TooFewUpdates("nothing to aggregate: no updates")
    rows = []
    for i, update in enumerate(updates):
        row = np.ascontiguousarray(update, dtype=np.float32)
        if row.ndim != 1:
            raise ShapeMismatch(f"update {i} has shape {row.shape}, expected a flat vector")
        if not rows and row.shape[0] == 0:
            raise ShapeMismatch("update 0 has length 0")
        if rows and row.shape != rows[0].shape:
            raise ShapeMismatch(f"update {i} has shape {row.shape}, expected {rows[0].shape} like update 0")
        rows.append(row)
    return Updates(rows=tuple(rows), matrix=None)


def as_weights(weights: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """One finite, non-negative float64 weight per update with a positive total, or `BadWeights`."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n:
        raise BadWeights(f"{n} updates but weights of shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise BadWeights(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return w


def require(n: int, needed: int, rule: str) -> None:
    """`TooFewUpdates` unless n ≥ needed; `rule` says who needs them and why (e.g. "Krum with f = 2 (2f + 3)")."""
    if n < needed:
        raise TooFewUpdates(f"{rule} needs at least {needed} updates, got {n}")


def raise_non_finite(updates: Updates) -> None:
    """`NonFiniteUpdate` naming the first update that holds NaN or an infinity (the slow path: called only
    once a kernel has seen a non-finite value)."""
    for i, row in enumerate(updates.rows):
        if not np.all(np.isfinite(row)):
            raise NonFiniteUpdate(f"update {i} holds NaN or infinite values")


def check_finite(updates: Updates) -> None:
    """`NonFiniteUpdate` if any update holds NaN or an infinity (a full pass over the data)."""
    raise_non_finite(updates)
