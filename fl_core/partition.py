"""Splitting rows between silos and within a silo.

* :func:`stratified_holdout` -- a stratified train/holdout split of one silo's rows.
* :func:`dirichlet_label_skew` -- the Dirichlet label-skew ("non-IID") split used throughout the
  federated-learning literature. Hsu, Qi & Brown, "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification", arXiv:1909.06335 (2019), popularised the
  concentration parameter ``alpha`` as the knob for how non-identical the clients are; they draw
  each *client's* class mix ``q ~ Dir(alpha * p)``. The variant implemented here draws, for each
  *class*, the share of its rows every silo receives, ``p ~ Dir(alpha * 1_n)``, as in Yurochkin et
  al., "Bayesian Nonparametric Federated Learning of Neural Networks", ICML 2019, and in the
  benchmark of Li, Diao, Chen & He, "Federated Learning on Non-IID Data Silos: An Experimental
  Study", ICDE 2022. It partitions a fixed data set exactly (every row goes to one silo); ``alpha``
  plays the same role: large -> every silo close to the global label mix, small -> each silo
  dominated by a few classes.
* :func:`quantity_skew` -- a label-independent split whose silo *sizes* are skewed, either by
  Dirichlet proportions (the "quantity skew" setting of Li et al., ICDE 2022) or by a power law.

All randomness comes from the injected ``np.random.Generator`` (see :mod:`fl_core.seeding`).
"""

from __future__ import annotations

import math
import operator

import numpy as np


def stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of holdout rows: in every class, ``round(fraction * n_class)`` rows drawn by
    `rng`, at least one when the class has two or more rows (so both splits see every class that
    can be split) and none when it has one (the only example stays in training)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction!r}")
    labels = np.asarray(labels)
    holdout = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        k = int(round(fraction * len(rows)))
        if len(rows) >= 2:
            k = min(max(k, 1), len(rows) - 1)
        else:
            k = 0
        holdout[rng.choice(rows, size=k, replace=False)] = True
    return holdout


def _count(name: str, value: object, minimum: int) -> int:
    """`value` as an int >= `minimum` (bools and non-integers refused)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def _positive(name: str, value: object) -> float:
    """`value` as a finite float > 0."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def _check_silos(n_rows: int, n_silos: object, min_rows: object) -> tuple[int, int]:
    n_silos = _count("n_silos", n_silos, 1)
    min_rows = _count("min_rows", min_rows, 0)
    if n_silos > n_rows:
        raise ValueError(f"n_silos must be <= the number of rows ({n_rows}), got {n_silos}")
    if n_silos * min_rows > n_rows:
        raise ValueError(
            f"min_rows={min_rows} for each of {n_silos} silos needs {n_silos * min_rows} rows, only {n_rows} given"
        )
    return n_silos, min_rows


def _dirichlet(alpha: float, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """One draw of Dir(alpha * 1_n), renormalised; None if numerically unusable."""
    p = rng.dirichlet(np.full(n, alpha))
    total = p.sum()
    if not np.all(np.isfinite(p)) or not total > 0.0:
        return None
    return p / total


def _split_by_proportions(rows: np.ndarray, p: np.ndarray) -> list[np.ndarray]:
    """Cut `rows` into ``len(p)`` consecutive pieces, piece i holding about ``p[i] * len(rows)``
    (boundaries at the rounded cumulative shares, so the pieces cover `rows` exactly)."""
    cuts = np.clip(np.rint(np.cumsum(p)[:-1] * len(rows)), 0, len(rows)).astype(np.int64)
    return np.split(rows, cuts)


def dirichlet_label_skew(
    labels: np.ndarray,
    n_silos: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_rows: int = 1,
    max_attempts: int = 1000,
) -> list[np.ndarray]:
    """Split rows between `n_silos` silos with Dirichlet label skew.

    For each class (in ``np.unique`` order) the class's row indices are shuffled and cut into
    `n_silos` consecutive pieces with shares ``p ~ Dir(alpha * 1_n)``, one fresh draw per class;
    silo i receives piece i of every class. Whenever some silo ends up with fewer than `min_rows`
    rows, the whole split is drawn again, at most `max_attempts` times, then ValueError.

    Returns one sorted ``int64`` index array per silo; together they partition
    ``range(len(labels))`` (every row exactly once). Labels may be of any dtype ``np.unique`` sorts.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    alpha = _positive("alpha", alpha)
    n_silos, min_rows = _check_silos(len(labels), n_silos, min_rows)
    max_attempts = _count("max_attempts", max_attempts, 1)
    by_class = [np.flatnonzero(labels == cls) for cls in np.unique(labels)]
    for _ in range(max_attempts):
        pieces: list[list[np.ndarray]] = [[] for _ in range(n_silos)]
        usable = True
        for rows in by_class:
            p = _dirichlet(alpha, n_silos, rng)
            if p is None:
                usable = False
                break
            for silo, piece in enumerate(_split_by_proportions(rng.permutation(rows), p)):
                pieces[silo].append(piece)
        if not usable:
            continue
        silos = [np.sort(np.concatenate(parts)).astype(np.int64) for parts in pieces]
        if min(len(s) for s in silos) >= min_rows:
            return silos
    raise ValueError(
        f"could not give each of {n_silos} silos at least min_rows={min_rows} rows with alpha={alpha!r} "
        f"in {max_attempts} attempts; raise alpha, lower min_rows or use fewer silos"
    )


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer sizes summing to `total`, proportional to `weights` (largest remainders)."""
    quotas = weights / weights.sum() * total
    sizes = np.floor(quotas).astype(np.int64)
    short = total - int(sizes.sum())
    if short > 0:
        # Stable sort on the negated remainders: ties go to the lower silo index.
        sizes[np.argsort(-(quotas - sizes), kind="stable")[:short]] += 1
    return sizes


def quantity_skew(
    n_rows: int,
    n_silos: int,
    rng: np.random.Generator,
    *,
    alpha: float | None = None,
    power: float | None = None,
    min_rows: int = 1,
) -> list[np.ndarray]:
    """Label-independent split of ``range(n_rows)`` into `n_silos` silos of skewed sizes.

    Each silo first gets `min_rows` rows; the remaining ``n_rows - n_silos * min_rows`` rows are
    shared out in proportion to weights ``w`` (integer sizes by largest remainders), where exactly
    one of

    * ``alpha``: ``w ~ Dir(alpha * 1_n)``; large alpha -> near-equal sizes, small -> a few big silos;
    * ``power``: ``w_i`` i.i.d. classical Pareto with shape ``power`` and scale 1, i.e.
      ``P(w_i > t) = t**-power`` for ``t >= 1`` (drawn as ``1 + rng.pareto(power)``); the smaller
      ``power``, the heavier the tail (for ``power <= 1`` the mean is infinite and one silo tends to
      hold most rows)

    must be given. The rows are a random permutation of ``range(n_rows)`` cut into pieces of those
    sizes; returns one sorted ``int64`` index array per silo, together a partition of the range.
    Every silo holds at least `min_rows` rows by construction (no redraws).
    """
    n_rows = _count("n_rows", n_rows, 1)
    n_silos, min_rows = _check_silos(n_rows, n_silos, min_rows)
    if (alpha is None) == (power is None):
        raise ValueError(f"give exactly one of alpha or power, got alpha={alpha!r}, power={power!r}")
    if alpha is not None:
        alpha = _positive("alpha", alpha)
        weights = None
        for _ in range(100):  # a usable draw is all but certain; numpy can underflow for tiny alpha
            weights = _dirichlet(alpha, n_silos, rng)
            if weights is not None:
                break
        else:
            raise ValueError(f"Dir(alpha={alpha!r}) gave no usable proportions in 100 draws; raise alpha")
    else:
        power = _positive("power", power)
        weights = 1.0 + rng.pareto(power, size=n_silos)
        if not np.all(np.isfinite(weights)):  # overflow for tiny power: the infinite ones share
            weights = np.where(np.isfinite(weights), 0.0, 1.0)
    sizes = min_rows + _apportion(n_rows - n_silos * min_rows, weights)
    order = rng.permutation(n_rows)
    return [np.sort(piece).astype(np.int64) for piece in np.split(order, np.cumsum(sizes)[:-1])]
