"""Whether a round may go on with the silos that are left."""

from __future__ import annotations

from collections.abc import Mapping

from fl_core.errors import QuorumError


def require_quorum(available: list[str], out: Mapping[str, str], min_silos: int, phase: str) -> None:
    """Raise `QuorumError` naming every silo that sat out and why, if fewer than `min_silos` remain."""
    if len(available) >= min_silos:
        return
    reasons = "; ".join(f"{silo}: {why}" for silo, why in sorted(out.items())) or "no silo answered"
    raise QuorumError(
        f"{phase}: only {len(available)} silo(s) available, the federation needs min_silos={min_silos} ({reasons})"
    )
