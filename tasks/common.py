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


def read_server_state(exchange, federation: str, ref, round_number: int, length: int):
    """The server's state published after round `round_number` (`fl_core.server_opt.ServerState`),
    checked against its binding and the model's `length`; `IntegrityError` if it does not fit."""
    from fl_core.errors import IntegrityError, StateError
    from fl_core.server_opt import ServerState

    vector, meta = exchange.get_vector_meta(ref, expect={"federation": federation, "round": round_number,
                                                         "phase": "server"})
    try:
        return ServerState.from_flat(vector, meta, length)
    except StateError as exc:
        raise IntegrityError(f"{ref.key}: {exc}") from None

