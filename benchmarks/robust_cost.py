"""What Byzantine-robust aggregation costs the coordinator: fedsilo's Krum, Multi-Krum, coordinate-wise
median and trimmed mean (`fl_core.robust`) against a plain mean of the same updates, side by side in one
run, for n = 100 updates of d = 1e6 float32 values (d = 1e5 with --quick: same code path, labelled).

All sides read the same (n, d) float32 array; they run interleaved (every repeat times each side once,
in turn) so that load drifts hit all of them, and each figure is the median over repeats. A ratio is a
side's time / the plain mean's time (`X.mean(axis=0)`, one pass over the 400 MB).

What bounds each, printed as a "limit" next to it:

- Krum / Multi-Krum: the Gram product. All n·(n+1)/2 pairwise dot products over d coordinates are
  ~5·10⁹ multiply-adds at n = 100, d = 1e6; the limit is `X @ X.T` alone (one BLAS call over the whole
  matrix, using the BLAS's threads). Krum runs it over column blocks summed in float64 (no n×d
  temporary) plus an n×n selection; Multi-Krum adds one pass to average the chosen updates. A second
  Gram pass runs only when the updates share an offset large enough to make the distances inexact
  (not the case for these inputs; see `fl_core.robust.krum`).
- median / trimmed mean: memory traffic for the transposed copy (each coordinate's n values made
  contiguous) plus the per-row sorts. The limits are the transposing copy alone (`np.copyto` of `X.T`
  into a (d, n) array) and `ndarray.sort(axis=1)` alone on that (d, n) float32 array, both on one
  thread as numpy runs them; "copy + sort" is what a straightforward implementation pays. Ours reads
  and sorts cache-sized blocks, spread over the machine's cores (up to 4; the "1 thread" rows show the
  same code on one), sorts the values as int32 keys (numpy sorts those faster than floats) and sums
  the trimmed mean's kept slice with one BLAS product per block.

A second part prices what bucketed mode saves in the secure-aggregation protocol itself: every
party's work of one round (`fl_core.secagg.simulate.run_round`: keys, Shamir shares, masking with a
PRG stream per peer, unmasking) for one secure sum over n = 100 silos against one instance per bucket
of 3, 5 or 10 silos (d = 1e5; --quick: n = 30, d = 1e4). Pairwise masks make a silo's work grow with
its group's size, so the protocol's total falls roughly by n / bucket size.

    python benchmarks/robust_cost.py            # n = 100, d = 1e6, 7 repeats
    python benchmarks/robust_cost.py --quick    # n = 100, d = 1e5, 5 repeats (under a minute)

Last line: JSON with `krum_ratio_to_mean`, `multi_krum_ratio_to_mean`, `median_ratio_to_mean`,
`trimmed_mean_ratio_to_mean`, the same for the one-thread runs and the limits (`*_ratio_to_mean`), every
time in ms (`*_ms`), n, d, the threads used, and the load average before and after; and
`secagg_one_sum_s`, `secagg_buckets_<b>_s`, `bucketed_secagg_speedup_<b>` for b = 3, 5, 10.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fl_core.robust import Krum, Median, MultiKrum, TrimmedMean, assign_buckets  # noqa: E402
from fl_core.robust._kernels import default_threads  # noqa: E402
from fl_core.robust.coordinate import coordinate_median, coordinate_trimmed_mean  # noqa: E402
from fl_core.secagg import simulate  # noqa: E402
from fl_core.secagg.client import RoundContext  # noqa: E402

N = 100
F = 10  # Byzantine updates Krum and Multi-Krum are set to tolerate (m = n − f)
BETA = 0.1  # the trimmed mean cuts 10 values from each side


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sides(x: np.ndarray, w: list[float]) -> dict:
    """name -> a function returning its own run time in seconds."""
    transposed = np.empty((x.shape[1], x.shape[0]), dtype=np.float32)
    np.copyto(transposed, x.T)
    work = np.empty_like(transposed)
    krum, multi, median, trimmed = Krum(f=F), MultiKrum(f=F), Median(), TrimmedMean(beta=BETA)

    def sort_alone() -> float:
        np.copyto(work, transposed)  # not timed: restore the unsorted rows
        return timed(lambda: work.sort(axis=1))

    return {
        "mean": lambda: timed(lambda: x.mean(axis=0)),
        "krum": lambda: timed(lambda: krum(x, w)),
        "multi_krum": lambda: timed(lambda: multi(x, w)),
        "gram": lambda: timed(lambda: x @ x.T),
        "median": lambda: timed(lambda: median(x, w)),
        "median_1_thread": lambda: timed(lambda: coordinate_median(x, threads=1)),
        "trimmed_mean": lambda: timed(lambda: trimmed(x, w)),
        "trimmed_mean_1_thread": lambda: timed(lambda: coordinate_trimmed_mean(x, BETA, threads=1)),
        "transpose": lambda: timed(lambda: np.copyto(work, x.T)),
        "sort": sort_alone,
    }


def check(x: np.ndarray, w: list[float]) -> None:
    """The fast paths agree with numpy on a slice (so the timings are of correct code)."""
    part = np.ascontiguousarray(x[:, :2000])
    cut = int(BETA * N)
    expected = np.sort(part, axis=0)[cut:N - cut].astype(np.float64).mean(axis=0)
    if not np.array_equal(Median()(part, w), np.median(part, axis=0).astype(np.float32)):
        raise SystemExit("the median disagrees with np.median: not timing it")
    if not np.allclose(TrimmedMean(beta=BETA)(part, w), expected, rtol=1e-5, atol=1e-6):
        raise SystemExit("the trimmed mean disagrees with a sort-based one: not timing it")


BUCKET_SIZES = (3, 5, 10)


def protocol_seconds(groups: list[tuple[str, ...]], inputs: dict[str, np.ndarray]) -> float:
    """Every party's work for one round of secure aggregation, one instance per group."""
    began = time.perf_counter()
    for k, group in enumerate(groups):
        ctx = RoundContext(federation=f"bench:bucket-{k}", round_number=1, roster=group, threshold=len(group) // 2 + 1)
        transcript = simulate.run_round(ctx, {s: inputs[s] for s in group})
        expected = np.sum([inputs[s].astype(np.uint64) for s in group], axis=0) % 2**32
        if not np.array_equal(transcript.result.total, expected.astype(np.uint32)):
            raise SystemExit(f"bucket {k}: the protocol's sum is wrong")
    return time.perf_counter() - began


def bucketed_protocol(n: int, d: int) -> dict:
    silos = tuple(f"s{i:03d}" for i in range(n))
    rng = np.random.default_rng(1)
    inputs = {s: rng.integers(0, 2**32, size=d, dtype=np.uint32) for s in silos}
    one = protocol_seconds([silos], inputs)
    print(f"\nsecure-aggregation protocol, all parties of one round, n = {n}, d = {d:.0e}:")
    print(f"{'one sum of ' + str(n):>22} {one:>8.2f} s")
    figures = {"secagg_n": n, "secagg_d": d, "secagg_one_sum_s": round(one, 3)}
    for size in BUCKET_SIZES:
        groups = assign_buckets(silos, size, np.random.default_rng(size))
        took = protocol_seconds(groups, inputs)
        print(f"{f'{len(groups)} buckets of >= {size}':>22} {took:>8.2f} s   {one / took:>5.1f}x less")
        figures[f"secagg_buckets_{size}_s"] = round(took, 3)
        figures[f"bucketed_secagg_speedup_{size}"] = round(one / took, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="d = 1e5, 5 repeats (same code path)")
    args = parser.parse_args()
    d, repeats = (10**5, 5) if args.quick else (10**6, 7)
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    x = np.random.default_rng(0).standard_normal((N, d), dtype=np.float32)
    w = [1.0] * N
    check(x, w)
    runs = sides(x, w)
    for run in runs.values():  # warm-up: first-touch page faults, thread pools, BLAS buffers
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    load_after = os.getloadavg()[0]
    threads = default_threads(N * d)

    label = "QUICK (d = 1e5)" if args.quick else "full (d = 1e6)"
    print(f"robust aggregation cost, n = {N}, d = {d:.0e} float32, {label}; {repeats} interleaved repeats, medians;"
          f" {threads} threads for the block kernels; load {load_before:.2f} before, {load_after:.2f} after")
    print(f"{'rule':>22} {'ms':>9} {'x mean':>7}   bound")
    rows = [
        ("mean", "X.mean(axis=0): one pass over n·d float32"),
        ("krum", "Gram product"),
        ("multi_krum", "Gram product + one averaging pass"),
        ("gram", "limit: X @ X.T alone (BLAS, its own threads)"),
        ("median", "transposed copy + per-row sorts, blocks over threads"),
        ("median_1_thread", "the same on one thread"),
        ("trimmed_mean", "transposed copy + per-row sorts, blocks over threads"),
        ("trimmed_mean_1_thread", "the same on one thread"),
        ("transpose", "limit: transposing copy alone (one thread)"),
        ("sort", "limit: sort of the (d, n) rows alone (one thread)"),
    ]
    for name, bound in rows:
        print(f"{name:>22} {ms[name]:>9.1f} {ms[name] / ms['mean']:>7.2f}   {bound}")
    copy_sort = ms["transpose"] + ms["sort"]
    print(f"{'copy + sort':>22} {copy_sort:>9.1f} {copy_sort / ms['mean']:>7.2f}   limit: a straightforward "
          "transpose-then-sort on one thread")

    figures: dict = {f"{name}_ratio_to_mean": round(ms[name] / ms["mean"], 2) for name, _ in rows if name != "mean"}
    figures["copy_sort_ratio_to_mean"] = round(copy_sort / ms["mean"], 2)
    figures.update({f"{name}_ms": round(value, 2) for name, value in ms.items()})
    figures.update(bucketed_protocol(30, 10**4) if args.quick else bucketed_protocol(N, 10**5))
    figures.update(n=N, d=d, f=F, beta=BETA, repeats=repeats, threads=threads, quick=args.quick,
                   load_before=round(load_before, 2), load_after=round(load_after, 2),
                   wall_seconds=round(time.perf_counter() - began, 1))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
