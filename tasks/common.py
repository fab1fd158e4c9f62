"""Helpers shared by silo and coordinator tasks."""

from __future__ import annotations

from fl_core.schema import DataContract


def binding(federation: str, round_number: int, phase: str, silo: str = "coordinator", **extra) -> dict[str, str | int]:
    """What an exchange object is bound to; readers check it before using the object."""
    return {"federation": federation, "round": round_number, "phase": phase, "silo": silo, **extra}


COORDINATOR = "coordinator"


def record_header(federation: str, round_number: int) -> dict:
    """What the coordinator's signature of round `round_number`'s record binds."""
    return {"federation": federation, "round": round_number, "phase": "record", "sender": COORDINATOR}


def model_card(contract: DataContract, model_spec, federation: str, round_number: int) -> dict:
    """The registered model's description of itself: contract, model architecture, provenance."""
    from dataclasses import asdict

    return {
        "federation": federation,
        "round": round_number,
        "contract": asdict(contract),
        "contract_hash": contract.contract_hash(),
        "model": asdict(model_spec),
    }
