"""How the coordinator runs a phase on every silo.

A `Dispatcher` takes one `SiloCall` per silo (plain parameters only) and returns one `SiloOutcome`
per silo: the silo's JSON manifest, or why it produced none. A silo that fails, crashes or times
out is an outcome with ``manifest=None``; it never fails the round by itself (the round decides on
quorum). The in-process dispatcher runs the silo flow as a subflow in this process, one silo after
the other; a work-pool dispatcher (federated mode) runs the same flow on each silo's pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


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
