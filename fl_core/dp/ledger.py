"""A privacy ledger: what one party (a silo, or the federation for silo-level DP) has spent.

The ledger is an append-only list of charges, one per training, each a `GaussianEvent`
(or a `SkellamEvent` for distributed DP); the ε spent is
always recomputed from the events by the accountant (`fl_core.dp.accounting`), never summed from
stored figures, so switching accountant re-evaluates the same history. Before a round, `preview`
says what ε the ledger would reach; `charge` refuses (`BudgetExceeded`) a round that would pass the
budget, and returns a new ledger — nothing is charged for a refused round. A round trained again
(redone after an interruption) is charged again: each training is a new use of the data, and
over-counting is safe where under-counting is not. Charges are appended in round order.

Serialised as JSON with a sha256 over its canonical body: a ledger that does not parse, fails its
checksum or belongs to another party raises `LedgerCorrupt`. Nothing here creates a ledger from a
missing or broken one; that decision belongs to whoever stores it, and must be explicit.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace

from fl_core.dp.accounting import Event, GaussianEvent, Method, epsilon, event_from_dict
from fl_core.errors import BudgetExceeded, LedgerCorrupt, PrivacyError

FORMAT = "fedsilo-privacy-ledger/v1"


@dataclass(frozen=True, slots=True)
class PrivacyBudget:
    epsilon: float
    delta: float
    accountant: Method = "rdp"

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise PrivacyError(f"the ε budget must be a positive number, got {self.epsilon!r}")
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            raise PrivacyError(f"δ must be in (0, 1), got {self.delta!r}")
        if self.accountant not in ("rdp", "prv"):
            raise PrivacyError(f"accountant must be 'rdp' or 'prv', got {self.accountant!r}")

    def to_dict(self) -> dict:
        return {"epsilon": float(self.epsilon), "delta": float(self.delta), "accountant": self.accountant}


@dataclass(frozen=True, slots=True)
class Charge:
    round_number: int
    event: Event
    epsilon_after: float  # as computed when charged (informative; `Ledger.spent` recomputes)

    def to_dict(self) -> dict:
        return {"round": self.round_number, "event": self.event.to_dict(), "epsilon_after": self.epsilon_after}


@dataclass(frozen=True, slots=True)
class Ledger:
    owner: str
    federation: str
    budget: PrivacyBudget
    charges: tuple[Charge, ...] = field(default=())

    @property
    def events(self) -> list[Event]:
        return [c.event for c in self.charges]

    @property
    def rounds(self) -> list[int]:
        return [c.round_number for c in self.charges]

    def spent(self) -> float:
        return epsilon(self.events, self.budget.delta, self.budget.accountant)

    def spent_without_sampling(self) -> float:
        """ε with every charge taken at sampling rate 1: what a party that knows who was sampled in
        each round can be held to. The sampled Gaussian's amplification treats the sample as secret;
        for any sample that does not depend on the data, each round is at most the plain Gaussian
        mechanism (Rényi and hockey-stick divergences of mixtures over the same samples are bounded
        by the worst sample: joint quasi-convexity), so this is a bound for every observer."""
        events = [replace(e, sample_rate=1.0) if isinstance(e, GaussianEvent) and 0 < e.sample_rate < 1 else e
                  for e in self.events]
        return epsilon(events, self.budget.delta, self.budget.accountant)

    def preview(self, event: Event) -> float:
        """The ε this ledger would reach with `event` charged."""
        return epsilon([*self.events, event], self.budget.delta, self.budget.accountant)

    def remaining(self) -> float:
        return max(0.0, self.budget.epsilon - self.spent())

    def charge(self, round_number: int, event: Event) -> Ledger:
        """A new ledger with `event` charged for `round_number`; refuses to pass the budget."""
        if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 1:
            raise PrivacyError(f"round numbers start at 1, got {round_number!r}")
        if self.charges and round_number < self.charges[-1].round_number:
            raise PrivacyError(
                f"{self.owner}: round {round_number} comes before the last charged round "
                f"{self.charges[-1].round_number}; charges are appended in round order"
            )
        after = self.preview(event)
        if after > self.budget.epsilon:
            raise BudgetExceeded(
                f"{self.owner}: round {round_number} would spend ε = {after:.3f} of a budget of "
                f"{self.budget.epsilon:g} (spent so far {self.spent():.3f}, δ = {self.budget.delta:g})"
            )
        return replace(self, charges=(*self.charges, Charge(round_number, event, after)))

    def with_budget(self, budget: PrivacyBudget) -> Ledger:
        """This ledger under `budget`: a lower ε budget or another accountant is allowed; raising the
        ε budget or changing δ is refused (that would be a new guarantee, not this ledger)."""
        if budget.delta != self.budget.delta:
            raise PrivacyError(f"{self.owner}: δ is {self.budget.delta:g} in the ledger; it cannot become {budget.delta:g}")
        if budget.epsilon > self.budget.epsilon:
            raise PrivacyError(
                f"{self.owner}: the ledger's ε budget is {self.budget.epsilon:g}; it cannot be raised to {budget.epsilon:g}"
            )
        return replace(self, budget=budget)

    # -- serialisation ------------------------------------------------------------------------------
    def _body(self) -> dict:
        return {
            "format": FORMAT,
            "owner": self.owner,
            "federation": self.federation,
            "budget": self.budget.to_dict(),
            "charges": [c.to_dict() for c in self.charges],
        }

    def to_json(self) -> str:
        body = self._body()
        return json.dumps({**body, "sha256": _digest(body)}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, *, owner: str, federation: str, where: str = "the ledger") -> Ledger:
        try:
            raw = json.loads(text)
            digest = raw.pop("sha256")
            if raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format')!r}")
            if digest != _digest(raw):
                raise ValueError("checksum mismatch")
            budget = PrivacyBudget(**raw["budget"])
            charges = tuple(
                Charge(int(c["round"]), event_from_dict(c["event"]), float(c["epsilon_after"]))
                for c in raw["charges"]
            )
        except (ValueError, KeyError, TypeError, AttributeError, PrivacyError, UnicodeDecodeError) as exc:
            raise LedgerCorrupt(f"{where} is corrupt ({exc}); it is kept as it is and not replaced") from None
        if (raw["owner"], raw["federation"]) != (owner, federation):
            raise LedgerCorrupt(
                f"{where} belongs to {raw['owner']!r} of federation {raw['federation']!r}, not {owner!r} of {federation!r}"
            )
        rounds = [c.round_number for c in charges]
        if rounds != sorted(rounds):
            raise LedgerCorrupt(f"{where} charges rounds out of order: {rounds}")
        return cls(owner=owner, federation=federation, budget=budget, charges=charges)


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
