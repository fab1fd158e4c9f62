"""How the coordinator runs a phase on every silo, and what travels signed between them.

A `Dispatcher` takes one `SiloCall` per silo (plain parameters only) and returns one `SiloOutcome`
per silo: the silo's JSON manifest, or why it produced none. A silo that fails, crashes or times
out is an outcome with ``manifest=None``; it never fails the round by itself (the round decides on
quorum). The in-process dispatcher runs the silo flow as a subflow in this process, one silo after
the other; a work-pool dispatcher (federated mode) runs the same flow on each silo's pool.

Both directions are signed and bound to (federation, round, phase, party):
- the coordinator's *order* for a phase (`sign_order`): the silos it goes to and the object
  references (with digests) they act on — the global model to train from, the models to score. It
  travels as a flow-run parameter; a silo verifies it with the coordinator's key it pinned before
  doing anything (`open_order`), so a parameter edited on the Prefect server is refused;
- a silo's *manifest* (`seal_manifest`): what it did, with the references (and digests) of what it
  wrote. `Verified` wraps any dispatcher and checks each manifest against the round's roster: an
  unsigned, mis-signed, replayed (another round or phase) or foreign (another federation, another
  silo's key, an offboarded silo) manifest is logged and its silo counts as dropped, never used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fl_core.errors import BadSignature, SecAggError, StaleMessage, WrongSender
from fl_core.secagg import crypto

COORDINATOR = "coordinator"


@dataclass(frozen=True, slots=True, kw_only=True)
class SiloCall:
    silo_id: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class SiloOutcome:
    silo_id: str
    manifest: dict[str, Any] | None
    error: str | None = None
    wall_s: float = 0.0

    @property
    def answered(self) -> bool:
        return self.manifest is not None


class Dispatcher(Protocol):
    def run(self, calls: Sequence[SiloCall], on_done: Callable[[SiloOutcome], None] | None = None) -> list[SiloOutcome]: ...

    def settle(self) -> list[str]:
        """Before a round: end whatever silo work an interrupted round left going; returns what it ended."""
        ...


def silo_run_name(parameters: dict[str, Any]) -> str:
    """The name a silo's flow run carries: ``<federation>/r<round>/<silo>[/<phase>]`` (train unsuffixed)."""
    suffix = "" if parameters["phase"] == "train" else f"/{parameters['phase']}"
    return f"{parameters['federation']}/r{parameters['round_number']:03d}/{parameters['silo_id']}{suffix}"


def describe_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class InProcessDispatcher:
    """Calls `silo_flow(**parameters)` for each silo in turn, in this process."""

    def __init__(self, silo_flow: Callable[..., Any]):
        self.silo_flow = silo_flow

    def settle(self) -> list[str]:
        return []  # silo subflows die with the process that ran them

    def run(self, calls: Sequence[SiloCall], on_done: Callable[[SiloOutcome], None] | None = None) -> list[SiloOutcome]:
        outcomes = []
        for call in calls:
            start = time.perf_counter()
            state = self.silo_flow(**call.parameters, return_state=True)
            wall = time.perf_counter() - start
            if state.is_completed():
                manifest = state.result(raise_on_failure=False)
                if isinstance(manifest, dict):
                    outcome = SiloOutcome(silo_id=call.silo_id, manifest=manifest, wall_s=wall)
                else:
                    outcome = SiloOutcome(silo_id=call.silo_id, manifest=None, error="silo returned no manifest", wall_s=wall)
            else:
                try:
                    state.result(raise_on_failure=True)
                    error = f"silo flow ended {state.type.value.lower()}"
                except BaseException as exc:  # the silo's failure, reported as its reason to sit out
                    error = describe_error(exc)
                outcome = SiloOutcome(silo_id=call.silo_id, manifest=None, error=error, wall_s=wall)
            outcomes.append(outcome)
            if on_done is not None:
                on_done(outcome)
        return outcomes


def _header(federation: str, round_number: int, phase: str, sender: str) -> dict[str, Any]:
    return {"federation": federation, "round": round_number, "phase": phase, "sender": sender}


def sign_order(identity, federation: str, round_number: int, phase: str, silos: Sequence[str],
               refs: dict[str, Any]) -> dict[str, Any]:
    """The coordinator's signed order for one phase of one round (a flow-run parameter, JSON)."""
    body = {"silos": sorted(silos), "refs": refs}
    return crypto.seal(identity, _header(federation, round_number, phase, COORDINATOR), body).to_dict()


def open_order(order: Any, coordinator_public: bytes, federation: str, round_number: int, phase: str,
               silo_id: str) -> dict[str, Any]:
    """The references of an order, if the coordinator signed it for this federation, round and phase
    and named `silo_id` among its silos; otherwise a `SecAggError` subclass (nothing is done)."""
    envelope = crypto.Envelope.from_dict(order)
    body = crypto.open_envelope(envelope, coordinator_public, federation=federation, round_number=round_number,
                                phase=phase, sender=COORDINATOR)
    if silo_id not in body.get("silos", ()):
        raise WrongSender(f"the coordinator's order for round {round_number} {phase} is not addressed to {silo_id}")
    refs = body.get("refs")
    if not isinstance(refs, dict):
        raise BadSignature("message rejected")
    return refs


def seal_manifest(identity, manifest: dict[str, Any]) -> dict[str, Any]:
    """A silo's manifest, signed and bound to its own (federation, round, phase, silo)."""
    header = _header(manifest["federation"], manifest["round"], manifest["phase"], manifest["silo"])
    return crypto.seal(identity, header, manifest).to_dict()


class Verified:
    """Any dispatcher, with every manifest checked against the round's roster (`keys`: silo -> its
    Ed25519 public key). A manifest that fails is logged and becomes a dropped outcome with the reason."""

    def __init__(self, inner: Dispatcher, federation: str, keys: Mapping[str, bytes]):
        self.inner, self.federation, self.keys = inner, federation, dict(keys)

    def settle(self) -> list[str]:
        return self.inner.settle()

    def run(self, calls: Sequence[SiloCall], on_done: Callable[[SiloOutcome], None] | None = None) -> list[SiloOutcome]:
        by_silo = {call.silo_id: call for call in calls}

        def check(outcome: SiloOutcome) -> SiloOutcome:
            if outcome.manifest is None:
                return outcome
            p = by_silo[outcome.silo_id].parameters
            try:
                manifest = self.open(outcome.silo_id, outcome.manifest, p["round_number"], p["phase"])
            except SecAggError as exc:
                why = f"manifest rejected ({type(exc).__name__}: {exc})"
                _logger().warning("round %s %s: %s: %s", p["round_number"], p["phase"], outcome.silo_id, why)
                return SiloOutcome(silo_id=outcome.silo_id, manifest=None, error=why, wall_s=outcome.wall_s)
            return SiloOutcome(silo_id=outcome.silo_id, manifest=manifest, wall_s=outcome.wall_s)

        checked: dict[str, SiloOutcome] = {}

        def done(outcome: SiloOutcome) -> None:
            checked[outcome.silo_id] = check(outcome)
            if on_done is not None:
                on_done(checked[outcome.silo_id])

        outcomes = self.inner.run(calls, on_done=done)
        return [checked.get(o.silo_id) or check(o) for o in outcomes]

    def open(self, silo: str, signed: Any, round_number: int, phase: str) -> dict[str, Any]:
        key = self.keys.get(silo)
        if key is None:
            raise WrongSender(f"{silo} is not on this round's roster")
        envelope = crypto.Envelope.from_dict(signed)
        body = crypto.open_envelope(envelope, key, federation=self.federation, round_number=round_number,
                                    phase=phase, sender=silo)
        if (body.get("federation"), body.get("round"), body.get("phase"), body.get("silo")) != (
                self.federation, round_number, phase, silo):
            raise StaleMessage("the manifest's body is bound to another round, phase or silo than its signature")
        return body


def _logger():
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:  # outside a flow run (unit tests): the module's logger
        return logging.getLogger("fedsilo.dispatch")
