"""Privacy accounting for compositions of subsampled Gaussian mechanisms.

One DP-SGD step (record level: Abadi et al., "Deep Learning with Differential Privacy", CCS 2016)
and one DP-FedAvg round (silo level: McMahan et al., "Learning Differentially Private Recurrent
Language Models", ICLR 2018) are both a Gaussian mechanism of noise multiplier z applied to a
Poisson sample of rate q (fedsilo's silo sampling draws exactly k of n silos and is charged at
q = k / n, an approximation of this: see `fl_core.round_policy.SiloLevel`). A ledger is a list of `GaussianEvent` (z, q, steps); `epsilon` composes
them with one of two accountants, both from Opacus:

- ``rdp``: Rényi DP of the sampled Gaussian mechanism (Mironov, "Rényi Differential Privacy",
  CSF 2017; Mironov, Talwar & Zhang, "Rényi Differential Privacy of the Sampled Gaussian
  Mechanism", 2019), summed over events at a fixed grid of orders, then converted to (ε, δ).
  The default conversion is the tighter one of Balle et al., "Hypothesis Testing Interpretations
  and Rényi Differential Privacy" (AISTATS 2020), as Opacus does; ``conversion="classic"`` is
  Mironov's ε = RDP(α) + log(1/δ)/(α − 1), which reproduces the figures of Abadi et al.
- ``prv``: numerical composition of privacy random variables (Gopi, Lee & Wutschitz, "Numerical
  Composition of Differential Privacy", NeurIPS 2021), tighter than RDP, with an ε error bound.

Distributed DP adds integer noise under secure aggregation instead: a `SkellamEvent` is a release
of an integer vector plus symmetric Skellam noise, whose Rényi DP at integer orders α > 1 is
bounded by Agarwal, Kairouz & Liu, "The Skellam Mechanism for Differentially Private Federated
Learning" (NeurIPS 2021), for noise variance μ and L1 / L2 sensitivities Δ₁, Δ₂:

    RDP(α) <= α Δ₂² / (2μ) + min(((2α − 1) Δ₂² + 6 Δ₁) / (4μ²), 3 Δ₁ / (2μ)),

the Gaussian's α Δ₂² / (2μ) plus a term that vanishes as μ grows. Between integer orders the bound
is interpolated through the convexity of (α − 1)·RDP(α) (van Erven & Harremoës, "Rényi Divergence and
Kullback-Leibler Divergence", 2014); below 2 the bound at 2 holds. Skellam events compose with Gaussian
ones under the ``rdp`` accountant only.

Opacus is imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fl_core.errors import PrivacyError

Method = Literal["rdp", "prv"]
Conversion = Literal["improved", "classic"]

# Rényi orders: fine near 1 (small ε), coarse further out (large ε / few steps).
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [80, 96, 128, 192, 256, 512, 1024])
PRV_EPS_ERROR = 0.01  # absolute bound on the PRV accountant's ε error


@dataclass(frozen=True, slots=True)
class GaussianEvent:
    """`steps` applications of a Gaussian mechanism with noise multiplier `noise_multiplier`
    (noise std / sensitivity) to a Poisson sample of rate `sample_rate`."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (isinstance(self.noise_multiplier, (int, float)) and math.isfinite(self.noise_multiplier)
                and self.noise_multiplier >= 0):
            raise PrivacyError(f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier!r}")
        if not (isinstance(self.sample_rate, (int, float)) and 0 <= self.sample_rate <= 1):
            raise PrivacyError(f"sample_rate must be in [0, 1], got {self.sample_rate!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise PrivacyError(f"steps must be an integer >= 0, got {self.steps!r}")

    @property
    def is_noop(self) -> bool:
        """Touches no record (no steps or an empty sample): costs no privacy."""
        return self.steps == 0 or self.sample_rate == 0

    def to_dict(self) -> dict:
        return {"noise_multiplier": float(self.noise_multiplier), "sample_rate": float(self.sample_rate), "steps": self.steps}

    @classmethod
    def from_dict(cls, raw: dict) -> GaussianEvent:
        try:
            return cls(float(raw["noise_multiplier"]), float(raw["sample_rate"]), raw["steps"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PrivacyError(f"not a privacy event: {exc}") from None


@dataclass(frozen=True, slots=True)
class SkellamEvent:
    """`steps` releases of an integer vector of L2 / L1 sensitivity `l2` / `l1` plus symmetric
    Skellam noise of `variance` per coordinate (no subsampling)."""

    variance: float
    l2: float
    l1: float
    steps: int = 1

    def __post_init__(self) -> None:
        for name in ("variance", "l2", "l1"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise PrivacyError(f"a Skellam event's {name} must be a positive number, got {value!r}")
        if self.l1 < self.l2:
            raise PrivacyError(f"the L1 sensitivity {self.l1} cannot be below the L2 sensitivity {self.l2}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise PrivacyError(f"steps must be an integer >= 0, got {self.steps!r}")

    @property
    def is_noop(self) -> bool:
        return self.steps == 0

    @property
    def noise_multiplier(self) -> float:
        """Noise std over L2 sensitivity: the Gaussian noise multiplier this noise amounts to."""
        return math.sqrt(self.variance) / self.l2

    @property
    def sample_rate(self) -> float:
        return 1.0

    def _integer_rdp(self, a: int) -> float:
        mu, l1, l2sq = self.variance, self.l1, self.l2 ** 2
        return a * l2sq / (2 * mu) + min(((2 * a - 1) * l2sq + 6 * l1) / (4 * mu ** 2), 3 * l1 / (2 * mu))

    def rdp(self, order: float) -> float:
        """Agarwal et al.'s bound at `order`, for all `steps`. Their bound holds at integer orders;
        in (1, 2] the bound at 2 applies (RDP grows with the order), and between integers a < α < a + 1
        the convexity of (α − 1)·RDP(α) in α interpolates (α − 1)·RDP between a and a + 1."""
        if order <= 2:
            return self.steps * self._integer_rdp(2)
        a = math.floor(order)
        if a == order:
            return self.steps * self._integer_rdp(a)
        low, high = (a - 1) * self._integer_rdp(a), a * self._integer_rdp(a + 1)
        return self.steps * ((a + 1 - order) * low + (order - a) * high) / (order - 1)

    def to_dict(self) -> dict:
        return {"kind": "skellam", "variance": float(self.variance), "l2": float(self.l2), "l1": float(self.l1),
                "steps": self.steps}

    @classmethod
    def from_dict(cls, raw: dict) -> SkellamEvent:
        try:
            return cls(float(raw["variance"]), float(raw["l2"]), float(raw["l1"]), raw["steps"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PrivacyError(f"not a Skellam event: {exc}") from None


Event = GaussianEvent | SkellamEvent


def event_from_dict(raw: dict) -> Event:
    """A stored event: ``kind: skellam``, or a Gaussian event (no kind)."""
    if not isinstance(raw, dict):
        raise PrivacyError(f"not a privacy event: {raw!r}")
    kind = raw.get("kind", "gaussian")
    if kind == "skellam":
        return SkellamEvent.from_dict(raw)
    if kind == "gaussian":
        return GaussianEvent.from_dict(raw)
    raise PrivacyError(f"unknown privacy event kind {kind!r}")


def _split(events: Iterable[Event]) -> tuple[list[GaussianEvent], list[SkellamEvent]]:
    gaussian, skellam = [], []
    for e in events:
        if isinstance(e, SkellamEvent):
            if not e.is_noop:
                skellam.append(e)
        elif isinstance(e, GaussianEvent):
            gaussian.append(e)
        else:
            raise PrivacyError(f"not a privacy event: {e!r}")
    return gaussian, skellam


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")


def _merged(events: Iterable[GaussianEvent]) -> list[tuple[float, float, int]]:
    """Consecutive equal (z, q) events folded into one (composition is order-free)."""
    out: list[tuple[float, float, int]] = []
    for e in events:
        if e.is_noop:
            continue
        if out and out[-1][0] == e.noise_multiplier and out[-1][1] == e.sample_rate:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + e.steps)
        else:
            out.append((float(e.noise_multiplier), float(e.sample_rate), e.steps))
    return out


def rdp_curve(events: Iterable[Event], orders: Sequence[float] = ORDERS) -> list[float]:
    """The composed Rényi DP of `events` at each order."""
    from opacus.accountants.analysis.rdp import compute_rdp

    gaussian, skellam = _split(events)
    total = [sum(e.rdp(a) for e in skellam) for a in orders]
    for z, q, steps in _merged(gaussian):
        if z == 0:
            return [math.inf] * len(orders)
        for i, value in enumerate(compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=list(orders))):
            total[i] += float(value)
    return total


def epsilon(
    events: Iterable[Event], delta: float, method: Method = "rdp", conversion: Conversion = "improved"
) -> float:
    """The ε at `delta` of the composition of `events` (0 for none, ∞ if any event has no noise)."""
    _check_delta(delta)
    gaussian, skellam = _split(events)
    merged = _merged(gaussian)
    if not merged and not skellam:
        return 0.0
    if any(z == 0 for z, _, _ in merged):
        return math.inf
    if skellam and method != "rdp":
        raise PrivacyError("Skellam (distributed DP) events are accounted with the rdp accountant only")
    if method == "rdp":
        rdp = rdp_curve([*(GaussianEvent(z, q, s) for z, q, s in merged), *skellam])
        if conversion == "classic":
            return min(r + math.log(1 / delta) / (a - 1) for r, a in zip(rdp, ORDERS))
        if conversion != "improved":
            raise PrivacyError(f"conversion must be 'improved' or 'classic', got {conversion!r}")
        from opacus.accountants.analysis.rdp import get_privacy_spent

        with warnings.catch_warnings():  # "optimal order is the largest alpha": ε is still an upper bound
            warnings.simplefilter("ignore", UserWarning)
            eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
        return float(eps)
    if method == "prv":
        if conversion != "improved":
            raise PrivacyError("the classic conversion applies to the rdp accountant only")
        from opacus.accountants import PRVAccountant

        accountant = PRVAccountant()
        accountant.history = list(merged)
        # Its domain sizing asks RDP at a tiny δ, where the largest order wins (a UserWarning), and at
        # q = 1 its CDF takes log(0) on a branch np.where discards.
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", UserWarning)
            return float(accountant.get_epsilon(delta, eps_error=PRV_EPS_ERROR))
    raise PrivacyError(f"accountant must be 'rdp' or 'prv', got {method!r}")


@functools.lru_cache(maxsize=256)
def noise_for_epsilon(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, method: Method = "rdp",
    tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (within `tolerance` in ε) whose `steps` events at `sample_rate`
    stay within `target_epsilon` at `delta`; found by bisection on `epsilon` itself (a pure function
    of its arguments, remembered: a silo asks the same question every round)."""
    _check_delta(delta)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise PrivacyError(f"target epsilon must be a positive number, got {target_epsilon!r}")
    event = GaussianEvent(1.0, sample_rate, steps)
    if event.is_noop:
        return 0.0

    def eps(z: float) -> float:
        return epsilon([GaussianEvent(z, sample_rate, steps)], delta, method)

    low, high = 0.0, 1.0
    while eps(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise PrivacyError(f"no noise multiplier up to 1e6 reaches ε = {target_epsilon} in {steps} steps")
    while high - low > 1e-4 * high:
        mid = (low + high) / 2
        value = eps(mid)
        if value > target_epsilon:
            low = mid
        else:
            high = mid
            if target_epsilon - value < tolerance * target_epsilon:
                break
    return high
