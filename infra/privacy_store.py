"""Privacy ledgers on their owner's disk: a silo's record-level ledger in
``silos/<id>/privacy/<federation>.json``, the federation's silo-level ledger on the coordinator's
side in ``coordinator/privacy/<federation>.json``.

The ledger is opened before every DP round and saved after each charge, atomically (temp file +
rename), readable only by the silo's user. A ledger is created exactly once: creating it also
writes an anchor (``<federation>.anchor``) recording that its owner has a ledger. If the anchor is
there and the ledger is not, or the ledger is damaged, opening it is an error (`LedgerCorrupt`) —
never a fresh budget. Removing both files by hand is the only way to start over, and it is
visible as such.
"""

from __future__ import annotations

import json
import time

from fl_core.dp.ledger import Ledger, PrivacyBudget
from fl_core.errors import LedgerCorrupt
from infra.keystore import write_private
from infra.state import StateDir

FEDERATION = "@federation"  # the owner of the silo-level ledger (not a valid silo id)


class LedgerStore:
    def __init__(self, state: StateDir, owner: str, federation: str):
        """`owner`: a silo id, or `FEDERATION` for the coordinator's silo-level ledger."""
        self.owner, self.federation = owner, federation
        folder = (state.root / "coordinator" if owner == FEDERATION else state.silo(owner)) / "privacy"
        self.path = folder / f"{federation}.json"
        self.anchor = folder / f"{federation}.anchor"

    def open(self, budget: PrivacyBudget) -> Ledger:
        """The owner's ledger under `budget` (created on first use); a lower ε budget or another
        accountant applies, a raised ε budget or another δ is refused (`PrivacyError`)."""
        if self.path.exists():
            try:
                text = self.path.read_bytes()
            except OSError as exc:
                raise LedgerCorrupt(f"{self.path} is unreadable ({exc}); it is kept as it is and not replaced") from None
            ledger = Ledger.from_json(text, owner=self.owner, federation=self.federation, where=str(self.path))
            return ledger if ledger.budget == budget else ledger.with_budget(budget)
        if self.anchor.exists():
            raise LedgerCorrupt(
                f"{self.path} is missing but {self.anchor.name} says {self.owner} has a ledger; refusing to start "
                "a fresh budget (restore the ledger file)"
            )
        ledger = Ledger(owner=self.owner, federation=self.federation, budget=budget)
        write_private(self.anchor, json.dumps({"created": time.time(), "owner": self.owner}).encode())
        self.save(ledger)
        return ledger

    def save(self, ledger: Ledger) -> None:
        if (ledger.owner, ledger.federation) != (self.owner, self.federation):
            raise LedgerCorrupt(f"a ledger of {ledger.owner!r} cannot be saved as {self.owner!r}'s")
        write_private(self.path, ledger.to_json().encode())
