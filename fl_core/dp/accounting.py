"""Privacy accounting for compositions of subsampled Gaussian mechanisms.

One DP-SGD step (record level: Abadi et al., "Deep Learning with Differential Privacy", CCS 2016)
and one DP-FedAvg round (silo level: McMahan et al., "Learning Differentially Private Recurrent
Language Models", ICLR 2018) are both a Gaussian mechanism of noise multiplier z applied to a
Poisson sample of rate q. A ledger is a list of `GaussianEvent` (z, q, steps); `epsilon` composes
them with one of two accountants, both from Opacus:

- ``rdp``: Rényi DP of the sampled Gaussian mechanism (Mironov, "Rényi Differential Privacy",
  CSF 2017; Mironov, Talwar & Zhang, "Rényi Differential Privacy of the Sampled Gaussian
  Mechanism", 2019), summed over events at a fixed grid of orders, then converted to (ε, δ).
  The default conversion is the tighter one of Balle et al., "Hypothesis Testing Interpretations
  and Rényi Differential Privacy" (AISTATS 2020), as Opacus does; ``conversion="classic"`` is
  Mironov's ε = RDP(α) + log(1/δ)/(α − 1), which reproduces the figures of Abadi et al.
- ``prv``: numerical composition of privacy random variables (Gopi, Lee & Wutschitz, "Numerical
  Composition of Differential Privacy", NeurIPS 2021), tighter than RDP, with an ε error bound.

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


def rdp_curve(events: Iterable[GaussianEvent], orders: Sequence[float] = ORDERS) -> list[float]:
    """The composed Rényi DP of `events` at each order."""
    from opacus.accountants.analysis.rdp import compute_rdp

    total = [0.0] * len(orders)
    for z, q, steps in _merged(events):
        if z == 0:
            return [math.inf] * len(orders)
        for i, value in enumerate(compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=list(orders))):
            total[i] += float(value)
    return total


def epsilon(
    events: Iterable[GaussianEvent], delta: float, method: Method = "rdp", conversion: Conversion = "improved"
) -> float:
    """The ε at `delta` of the composition of `events` (0 for none, ∞ if any event has no noise)."""
    _check_delta(delta)
    merged = _merged(events)
    if not merged:
        return 0.0
    if any(z == 0 for z, _, _ in merged):
        return math.inf
    if method == "rdp":
        rdp = rdp_curve([GaussianEvent(z, q, s) for z, q, s in merged])
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
