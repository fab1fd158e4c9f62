"""Which silos train in a round: k of the n eligible, drawn uniformly without replacement.

Federated averaging trains a fraction of the clients per round (McMahan et al., "Communication-
Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017: a fraction C of the
clients each round). Here the draw is seeded by the federation's seed and the round number only,
over the eligible silos sorted by id, so that:

- a redone or resumed round draws the same silos (the attempt, the process and the order in which
  the roster was read play no part);
- every silo can recompute the draw from its own config and the eligible set the coordinator
  announces, and refuse a plan that names other silos (a coordinator cannot hand-pick a round);
- the draw of round r does not shift when another round's draw changes (each round has its own
  seed, `fl_core.seeding.derive_seed(seed, "sample", r)`).

The draw depends on the eligible set: a silo offboarded (or not yet enrolled) changes which of the
others are drawn from then on. Pure Python and numpy: no torch, no Prefect.

What the draw does to silo-level DP accounting is written in `fl_core.round_policy.SiloLevel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fl_core.seeding import derive_seed, numpy_rng


def sample_silos(silos: Sequence[str], k: int | None, root_seed: int, round_number: int) -> tuple[str, ...]:
    """The sorted tuple of `k` silos of `silos` drawn uniformly without replacement for round
    `round_number`; all of them (sorted) when `k` is None or at least ``len(silos)``. The draw is
    over the sorted ids, so the order in which `silos` are given does not matter.

    Raises ValueError for ``k < 1`` and for repeated ids (a silo listed twice would be drawn with
    twice the probability)."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"silos per round must be an integer >= 1 (or None for every silo), got {k!r}")
    ids = sorted(silos)
    if len(set(ids)) != len(ids):
        repeated = sorted({s for s in ids if ids.count(s) > 1})
        raise ValueError(f"silos to sample from repeat: {repeated}")
    if k is None or k >= len(ids):
        return tuple(ids)
    rng = numpy_rng(derive_seed(root_seed, "sample", round_number))
    picked = rng.choice(len(ids), size=k, replace=False)
    return tuple(sorted(ids[int(i)] for i in picked))


@dataclass(frozen=True, slots=True, kw_only=True)
class SiloSample:
    """One round's draw: the silos eligible (on the roster, not offboarded), the ones drawn to
    train, and the configured k (None: every eligible silo trains)."""

    round_number: int
    eligible: tuple[str, ...]
    sampled: tuple[str, ...]
    per_round: int | None = None

    @classmethod
    def draw(cls, eligible: Sequence[str], per_round: int | None, root_seed: int, round_number: int) -> SiloSample:
        return cls(round_number=round_number, eligible=tuple(sorted(eligible)),
                   sampled=sample_silos(eligible, per_round, root_seed, round_number), per_round=per_round)

    @property
    def k(self) -> int:
        return len(self.sampled)

    @property
    def n(self) -> int:
        return len(self.eligible)

    @property
    def rate(self) -> float:
        """q = k / n, the probability that any one eligible silo trains this round (1 with no sampling
        or an empty roster)."""
        return self.k / self.n if self.n else 1.0

    @property
    def not_sampled(self) -> tuple[str, ...]:
        chosen = set(self.sampled)
        return tuple(s for s in self.eligible if s not in chosen)

    def describe(self) -> str:
        """One line for logs and tags, e.g. ``2 of 4 silos (q = 0.5): s0, s3``."""
        return f"{self.k} of {self.n} silos (q = {self.rate:.3g}): {', '.join(self.sampled) or 'none'}"

    def to_dict(self) -> dict:
        return {"silos_per_round": self.per_round, "k": self.k, "n": self.n, "rate": self.rate,
                "sampled": list(self.sampled), "not_sampled": list(self.not_sampled)}

    def metrics(self) -> dict[str, float]:
        return {"silos.sampled": float(self.k), "silos.eligible": float(self.n), "silos.sample_rate": self.rate}
