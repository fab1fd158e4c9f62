"""Column-block kernels shared by the robust rules: weighted combinations, squared norms and distances
in float64, and a runner that spreads blocks over threads.

Every kernel walks the d coordinates in blocks (`BLOCK` wide) so that the working set stays in cache
and no (n, d) temporary is ever allocated. Results do not depend on the thread count: each block is
computed the same way whichever thread runs it, and per-block partial results are combined in block
order afterwards.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from fl_core.errors import AggregationError
from fl_core.robust._inputs import BLOCK, Updates, blocks, raise_non_finite

T = TypeVar("T")

# Work below this many values (n·d) runs on the calling thread: a pool costs more than it saves.
PARALLEL_MIN_VALUES = 1 << 22
MAX_THREADS = 4


def default_threads(values: int) -> int:
    """Threads for a kernel over `values` numbers: one for small inputs, else the usable cores (≤ 4)."""
    if values < PARALLEL_MIN_VALUES:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_THREADS))


def map_blocks(d: int, work: Callable[[int, int, dict], T], threads: int | None, values: int,
               width: int = BLOCK) -> list[T]:
    """`work(start, stop, scratch)` for every column block; results in block order. Threads take the
    next block as they finish one (a core slowed by other work takes fewer), each with its own
    `scratch` dict for reusable buffers."""
    spans = list(blocks(d, width))
    threads = default_threads(values) if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    threads = min(threads, len(spans))
    if threads == 1:
        scratch: dict = {}
        return [work(start, stop, scratch) for start, stop in spans]
    results: list = [None] * len(spans)
    pending = iter(range(len(spans)))
    lock = threading.Lock()

    def run() -> None:
        scratch: dict = {}
        while True:
            with lock:
                i = next(pending, None)
            if i is None:
                return
            results[i] = work(*spans[i], scratch)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(run) for _ in range(threads)]:
            future.result()
    return results


def buffer(scratch: dict, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A reusable buffer of at least `shape` from a thread's scratch dict (allocated once per call)."""
    buf = scratch.get(name)
    if buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:] or buf.dtype != dtype:
        buf = scratch[name] = np.empty(shape, dtype=dtype)
    return buf


def combine(updates: Updates, coef: np.ndarray, threads: int | None = None, dtype: type = np.float32) -> np.ndarray:
    """Σ coef_i · x_i, accumulated in float64 block by block, returned as `dtype`. Order-invariant up to
    float64 rounding of the sum."""
    return combine_many(updates, np.asarray(coef, dtype=np.float64)[np.newaxis, :], threads, dtype)[0]


def combine_many(updates: Updates, coefs: np.ndarray, threads: int | None = None,
                 dtype: type = np.float32) -> np.ndarray:
    """`coefs @ X` for a (k, n) float64 coefficient matrix: k weighted combinations of the updates, as a
    (k, d) array of `dtype`, accumulated in float64."""
    coefs = np.asarray(coefs, dtype=np.float64)
    n, d = updates.n, updates.d
    out = np.empty((coefs.shape[0], d), dtype=dtype)
    used = np.flatnonzero(np.any(coefs != 0, axis=0))
    if updates.matrix is None or len(used) <= n // 2:  # skip updates whose coefficients are all zero
        part = Updates(rows=tuple(updates.rows[i] for i in used), matrix=None)
        coefs = np.ascontiguousarray(coefs[:, used])
    else:  # reading a block of the whole matrix is cheaper than gathering most of its rows
        part = updates
    m = part.n

    def work(start: int, stop: int, scratch: dict) -> None:
        block = part.block(start, stop, buffer(scratch, "rows", (m, BLOCK), np.float32))
        wide = buffer(scratch, "wide", (m, BLOCK), np.float64)[:, : stop - start]
        np.copyto(wide, block)
        with np.errstate(over="ignore", invalid="ignore"):  # callers check what matters to them
            target = out[:, start:stop]
            if dtype is not np.float64:
                target = buffer(scratch, "sums", (coefs.shape[0], BLOCK), np.float64)[:, : stop - start]
            np.matmul(coefs, wide, out=target)
            if dtype is not np.float64:
                out[:, start:stop] = target

    map_blocks(d, work, threads, m * d)
    return out


def sq_distances_to(updates: Updates, point: np.ndarray | None, threads: int | None = None) -> np.ndarray:
    """‖x_i − point‖² for every update (‖x_i‖² without a point), in float64: no overflow even for
    float32 values near the top of their range. Raises `NonFiniteUpdate` if an update is not finite."""
    n, d = updates.n, updates.d
    p = None if point is None else np.asarray(point, dtype=np.float64)

    def work(start: int, stop: int, scratch: dict) -> np.ndarray:
        block = updates.block(start, stop, buffer(scratch, "rows", (n, BLOCK), np.float32))
        wide = buffer(scratch, "wide", (n, BLOCK), np.float64)[:, : stop - start]
        np.copyto(wide, block)
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite results are checked below
            if p is not None:
                np.subtract(wide, p[start:stop], out=wide)
            np.multiply(wide, wide, out=wide)
            return wide.sum(axis=1)

    parts = map_blocks(d, work, threads, n * d)
    total = np.sum(parts, axis=0) if len(parts) > 1 else parts[0]
    if not np.all(np.isfinite(total)):
        raise_non_finite(updates)
        raise AggregationError("a distance to a non-finite point")
    return total
