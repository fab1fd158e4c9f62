"""Secure-aggregation settings of a federation, and what they imply."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fl_core.secagg.quantize import Quantizer, check_headroom


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureSpec:
    """``threshold``: Shamir threshold t (default: a strict majority of the roster, n // 2 + 1);
    ``clip_norm``: each silo's update is clipped to this L2 norm before quantisation;
    ``bits``: quantisation bits per coordinate (the sum of all silos must fit 32 bits)."""

    __pydantic_config__ = {"extra": "forbid"}

    threshold: int | None = None
    clip_norm: float = 10.0
    bits: int = 24

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip_norm must be a positive number, got {self.clip_norm!r}")
        if not 2 <= self.bits <= 31:
            raise ValueError(f"bits must be in [2, 31], got {self.bits!r}")
        if self.threshold is not None and self.threshold < 2:
            raise ValueError(f"threshold must be >= 2 when set, got {self.threshold!r}")

    def threshold_for(self, n_silos: int) -> int:
        t = self.threshold if self.threshold is not None else n_silos // 2 + 1
        if not n_silos // 2 < t <= n_silos:
            raise ValueError(f"threshold {t} must be in ({n_silos // 2}, {n_silos}] for {n_silos} silos (t > n/2)")
        return t

    def check(self, n_silos: int) -> None:
        """Raise if these settings cannot serve a roster of `n_silos` (threshold, wrap-around)."""
        self.threshold_for(n_silos)
        check_headroom(n_silos, self.bits)

    def quantizer(self) -> Quantizer:
        # Coordinates of a clipped update lie in [-clip_norm, clip_norm]; the weight in [0, 1].
        return Quantizer(bound=max(self.clip_norm, 1.0), bits=self.bits)
