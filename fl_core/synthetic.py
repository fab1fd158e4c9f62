"""Synthetic federations for tests and benchmarks.

* :func:`synthetic_silos` -- a logistic ground truth with per-silo covariate shift: each silo draws
  its features from a normal distribution centred on its own offset (``shift`` controls how non-IID
  the federation is) and labels from one shared logistic model, so a federated model can learn
  what no silo's sample shows alone.
* :func:`synthetic_fedprox` -- the Synthetic(alpha, beta) federation of Li, Sahu, Zaheer, Sanjabi,
  Talwalkar & Smith, "Federated Optimization in Heterogeneous Networks", MLSys 2020 (FedProx),
  Section 5.1: per-device softmax-regression ground truths and per-device feature distributions,
  ``alpha`` and ``beta`` controlling how much devices differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fl_core.partition import stratified_holdout
from fl_core.seeding import derive_seed, numpy_rng


@dataclass(frozen=True, slots=True, kw_only=True)
class SyntheticSilo:
    x: np.ndarray  # (rows, features), float64, within [-bound, bound]
    y: np.ndarray  # (rows,), int64 in {0, 1}


def synthetic_silos(
    n_silos: int, rows: int, n_features: int, seed: int, shift: float = 1.0, bound: float = 5.0
) -> dict[str, SyntheticSilo]:
    if n_silos < 1 or rows < 1 or n_features < 1:
        raise ValueError(f"need n_silos, rows, n_features >= 1, got {n_silos}, {rows}, {n_features}")
    truth = numpy_rng(derive_seed(seed, "synthetic", "truth")).normal(size=n_features)
    silos = {}
    width = len(str(n_silos - 1))
    for i in range(n_silos):
        rng = numpy_rng(derive_seed(seed, "synthetic", i))
        offset = rng.normal(scale=shift, size=n_features)
        x = np.clip(rng.normal(loc=offset, size=(rows, n_features)), -bound, bound)
        p = 1.0 / (1.0 + np.exp(-(x @ truth)))
        y = (rng.random(rows) < p).astype(np.int64)
        silos[f"s{i:0{width}d}"] = SyntheticSilo(x=x, y=y)
    return silos


@dataclass(frozen=True, slots=True, kw_only=True)
class SyntheticDevice:
    """One device of a Synthetic(alpha, beta) federation, with its own train/test split."""

    x: np.ndarray  # (rows, features), float64
    y: np.ndarray  # (rows,), int64 in [0, classes)
    test: np.ndarray  # (rows,), bool: True for the device's test rows (stratified by label)

    @property
    def x_train(self) -> np.ndarray:
        return self.x[~self.test]

    @property
    def y_train(self) -> np.ndarray:
        return self.y[~self.test]

    @property
    def x_test(self) -> np.ndarray:
        return self.x[self.test]

    @property
    def y_test(self) -> np.ndarray:
        return self.y[self.test]


def _nonnegative(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}") from None
    if not math.isfinite(number) or number < 0.0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def synthetic_fedprox(
    alpha: float,
    beta: float,
    rng_seed: int,
    *,
    devices: int = 30,
    features: int = 60,
    classes: int = 10,
    min_rows: int = 10,
    size_mu: float = 4.0,
    size_sigma: float = 1.0,
    test_fraction: float = 0.2,
) -> dict[str, SyntheticDevice]:
    """The Synthetic(alpha, beta) federation of FedProx (Li et al., MLSys 2020, Section 5.1).

    For device k:

    * ``u_k ~ N(0, alpha)``, ``W_k ~ N(u_k, 1)`` entrywise, shape (classes, features), and
      ``b_k ~ N(u_k, 1)`` entrywise, shape (classes,);
    * ``B_k ~ N(0, beta)``, ``v_k ~ N(B_k, 1)`` entrywise, shape (features,);
    * rows ``x ~ N(v_k, Sigma)`` with ``Sigma`` diagonal, ``Sigma_jj = j**-1.2`` (j = 1..features);
    * labels ``y = argmax(softmax(W_k x + b_k))``, i.e. the argmax of the logits.

    ``alpha`` and ``beta`` are the *standard deviations* of ``u_k`` and ``B_k`` (the paper writes
    ``N(0, alpha)``; its reference generator passes alpha as numpy's ``scale``). Both 0 still give
    a heterogeneous federation (each device has its own ``W_k``, ``b_k``, ``v_k``); the paper's
    IID variant is not provided. Note that ``u_k`` adds the same amount, ``u_k * (sum(x) + 1)``, to
    every logit of a device, so under this model ``alpha`` does not change any label: the label
    heterogeneity comes from the device-specific ``W_k``, ``b_k`` and from ``beta``'s feature shift.

    Device sizes follow a lognormal (heavy-tailed, power-law-like) law as in the paper's reference
    data: ``rows_k = min_rows + floor(LogNormal(size_mu, size_sigma))``. The reference generator
    uses ``LogNormal(4, 2) + 50`` (pass ``size_mu=4, size_sigma=2, min_rows=50``), whose tail makes
    totals of tens of thousands of rows common; the defaults here (``LogNormal(4, 1) + 10``) keep the
    skew (the largest device typically several times the median) with an expected
    ``10 + exp(4.5) ~ 100`` rows per device, i.e. about 3,000 rows for the default 30 devices.

    Every device has its own generator, ``numpy_rng(derive_seed(rng_seed, "synthetic_fedprox", k))``,
    drawing in a fixed order (size, ``u_k``, ``B_k``, ``v_k``, ``W_k``, ``b_k``, rows) from standard
    normals scaled by ``alpha``/``beta``, so device k does not depend on how many devices there are,
    and federations with the same seed but different ``alpha``/``beta`` share their random numbers.
    Each device's ``test`` mask is :func:`fl_core.partition.stratified_holdout` with `test_fraction`
    under ``derive_seed(rng_seed, "synthetic_fedprox", k, "test")``.

    Returns ``{name: SyntheticDevice}`` with names ``s0..s{devices-1}``, zero-padded to a common
    width like :func:`synthetic_silos`; ``x`` is float64 (rows, features), ``y`` int64.
    """
    alpha = _nonnegative("alpha", alpha)
    beta = _nonnegative("beta", beta)
    size_sigma = _nonnegative("size_sigma", size_sigma)
    if not isinstance(size_mu, int | float | np.number) or not math.isfinite(float(size_mu)):
        raise ValueError(f"size_mu must be finite, got {size_mu!r}")
    for name, value, minimum in (
        ("devices", devices, 1),
        ("features", features, 1),
        ("classes", classes, 2),
        ("min_rows", min_rows, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    scale = np.arange(1, features + 1, dtype=np.float64) ** -0.6  # sqrt(j ** -1.2)
    width = len(str(devices - 1))
    federation = {}
    for k in range(devices):
        rng = numpy_rng(derive_seed(rng_seed, "synthetic_fedprox", k))
        rows = int(min_rows + np.floor(rng.lognormal(size_mu, size_sigma)))
        u = alpha * rng.standard_normal()
        shift = beta * rng.standard_normal()
        v = shift + rng.standard_normal(features)
        w = u + rng.standard_normal((classes, features))
        b = u + rng.standard_normal(classes)
        x = v + rng.standard_normal((rows, features)) * scale
        y = np.argmax(x @ w.T + b, axis=1).astype(np.int64)  # softmax is monotone: same argmax
        test = stratified_holdout(y, test_fraction, numpy_rng(derive_seed(rng_seed, "synthetic_fedprox", k, "test")))
        federation[f"s{k:0{width}d}"] = SyntheticDevice(x=x, y=y, test=test)
    return federation
