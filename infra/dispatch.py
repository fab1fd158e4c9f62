"""How the coordinator drives a round's phases on its silos, and checks what comes back.

A `Dispatcher` serves one round at a time: `open_round` starts every silo's part of the round (in
embedded mode a `SiloRound` per silo in this process; in federated mode one flow run per silo on
its own pool, `infra.workpools`), `run` hands one phase's signed `Order` to the silos it names and
returns one `Delivery` per silo — its signed manifest, or why there is none — and `close_round`
tells the silos the round is over and ends whatever is still running. A silo that fails, crashes
or misses the phase's deadline is a delivery without a manifest; it never fails the round by
itself (the round decides on quorum).

`Verified` wraps any dispatcher and opens every manifest against the round's roster
(`fl_core.messages.open_manifest`): an unsigned, mis-signed, replayed (another round or phase),
malformed or foreign (another federation, another silo's key, an offboarded silo) manifest is
logged and its silo counts as dropped, never used. Orders are signed by the coordinator and checked
by each silo before it acts (`fl_core.messages.open_order`).

The in-process dispatcher runs the named silos of a phase concurrently in a bounded thread pool
(`dispatch.parallel`), each in a copy of the caller's context so that their task runs belong to the
round's flow run; it gives torch ``cores // parallel`` threads so that silos training at once do
not oversubscribe the cores.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Protocol

from fl_core.errors import ExchangeError, SecAggError, WrongSender
from fl_core.messages import Manifest, Order, open_manifest


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseCall:
    """One phase of a round: the order and the coordinator's signed envelope of it."""

    order: Order
    signed: dict[str, Any]

    @property
    def phase(self) -> str:
        return self.order.phase

    @property
    def round_number(self) -> int:
        return self.order.round


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """What a dispatcher got back from one silo for one phase: its signed manifest, or why none."""

    silo_id: str
    signed: dict[str, Any] | None
    error: str | None = None
    wall_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SiloOutcome:
    """A silo's verified answer to a phase: its manifest, or why it has none."""

    silo_id: str
    manifest: Manifest | None
    error: str | None = None
    wall_s: float = 0.0

    @property
    def answered(self) -> bool:
        return self.manifest is not None


OnDone = Callable[[Any], None]


class Dispatcher(Protocol):
    def settle(self) -> list[str]:
        """Before a round: end whatever silo work an interrupted round left going; returns what it ended."""
        ...

    def open_round(self, round_number: int, attempt: str, silos: Sequence[str]) -> None: ...

    def run(self, call: PhaseCall, on_done: OnDone | None = None) -> list[Delivery]: ...

    def close_round(self, end: PhaseCall | None) -> None:
        """The round is over (`end`: the coordinator's signed end order, None if it never opened)."""
        ...


class SiloParty(Protocol):
    """A silo's part of one round (`tasks.silo_round.SiloRound`): a signed manifest per signed order."""

    def answer(self, phase: str, signed_order: dict) -> dict: ...


def describe_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def default_parallel(n_silos: int) -> int:
    """Silos served at once in embedded mode when the config does not say: most of a silo's phase is
    waiting (on files, on the Prefect API, in numpy and torch outside the GIL), so a few per core."""
    return max(1, min(n_silos, 4 * (os.cpu_count() or 1)))


def share_cores(parallel: int) -> int:
    """Give torch's intra-op pool cores // parallel threads (at least one); returns that number."""
    import torch

    threads = max(1, (os.cpu_count() or 1) // max(1, parallel))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


class InProcessDispatcher:
    """Every silo's `SiloParty` in this process, made by `make_party(silo, round, attempt)` when the round
    opens; a phase runs the named silos concurrently, at most `parallel` at a time."""

    def __init__(self, make_party: Callable[[str, int, str], SiloParty], parallel: int, limit_threads: bool = True):
        self.make_party = make_party
        self.parallel = max(1, parallel)
        self.limit_threads = limit_threads
        self.parties: dict[str, SiloParty] = {}
        self._unavailable: dict[str, str] = {}
        self._pool: ThreadPoolExecutor | None = None

    def settle(self) -> list[str]:
        return []  # a silo's part in this process ends with the process

    def open_round(self, round_number: int, attempt: str, silos: Sequence[str]) -> None:
        if self.limit_threads:
            share_cores(min(self.parallel, len(silos)))
        self.parties = {}
        errors = {}
        for silo in silos:
            try:
                self.parties[silo] = self.make_party(silo, round_number, attempt)
            except Exception as exc:  # the silo cannot take part in this round at all
                errors[silo] = describe_error(exc)
        self._unavailable = errors
        self._pool = ThreadPoolExecutor(max_workers=min(self.parallel, max(1, len(silos))),
                                        thread_name_prefix="fedsilo-silo")

    def _answer(self, silo: str, call: PhaseCall) -> Delivery:
        began = time.perf_counter()
        try:
            signed = self.parties[silo].answer(call.phase, call.signed)
        except BaseException as exc:  # the silo crashed in this phase: its reason to count as dropped
            return Delivery(silo_id=silo, signed=None, error=describe_error(exc), wall_s=time.perf_counter() - began)
        return Delivery(silo_id=silo, signed=signed, wall_s=time.perf_counter() - began)

    def run(self, call: PhaseCall, on_done: OnDone | None = None) -> list[Delivery]:
        if self._pool is None:
            raise RuntimeError("open_round() first")
        deliveries: dict[str, Delivery] = {}
        futures = {}
        for silo in call.order.silos:
            if silo not in self.parties:
                deliveries[silo] = Delivery(silo_id=silo, signed=None,
                                            error=self._unavailable.get(silo, "not in this round"))
                if on_done is not None:
                    on_done(deliveries[silo])
                continue
            context = contextvars.copy_context()  # one copy per silo: a context runs in one thread at a time
            futures[self._pool.submit(context.run, self._answer, silo, call)] = silo
        for future in as_completed(futures):
            delivery = future.result()
            deliveries[delivery.silo_id] = delivery
            if on_done is not None:
                on_done(delivery)
        return [deliveries[silo] for silo in call.order.silos]

    def close_round(self, end: PhaseCall | None) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.parties = {}


class Verified:
    """Any dispatcher, with every manifest opened against the round's roster (`keys`: silo -> its
    Ed25519 public key). A manifest that fails is logged and becomes a dropped outcome with the reason."""

    def __init__(self, inner: Dispatcher, federation: str, keys: Mapping[str, bytes]):
        self.inner, self.federation, self.keys = inner, federation, dict(keys)

    def settle(self) -> list[str]:
        return self.inner.settle()

    def open_round(self, round_number: int, attempt: str, silos: Sequence[str]) -> None:
        self.inner.open_round(round_number, attempt, silos)

    def close_round(self, end: PhaseCall | None) -> None:
        self.inner.close_round(end)

    def check(self, call: PhaseCall, delivery: Delivery) -> SiloOutcome:
        if delivery.signed is None:
            return SiloOutcome(silo_id=delivery.silo_id, manifest=None, error=delivery.error or "no answer",
                               wall_s=delivery.wall_s)
        try:
            manifest = self.open(delivery.silo_id, delivery.signed, call.round_number, call.phase)
        except (SecAggError, ExchangeError) as exc:
            why = f"manifest rejected ({type(exc).__name__}: {exc})"
            _logger().warning("round %s %s: %s: %s", call.round_number, call.phase, delivery.silo_id, why)
            return SiloOutcome(silo_id=delivery.silo_id, manifest=None, error=why, wall_s=delivery.wall_s)
        return SiloOutcome(silo_id=delivery.silo_id, manifest=manifest, wall_s=delivery.wall_s)

    def run(self, call: PhaseCall, on_done: OnDone | None = None) -> list[SiloOutcome]:
        checked: dict[str, SiloOutcome] = {}

        def done(delivery: Delivery) -> None:
            checked[delivery.silo_id] = self.check(call, delivery)
            if on_done is not None:
                on_done(checked[delivery.silo_id])

        deliveries = self.inner.run(call, on_done=done)
        return [checked.get(d.silo_id) or self.check(call, d) for d in deliveries]

    def open(self, silo: str, signed: Any, round_number: int, phase: str) -> Manifest:
        key = self.keys.get(silo)
        if key is None:
            raise WrongSender(f"{silo} is not on this round's roster")
        return open_manifest(signed, key, self.federation, round_number, phase, silo)


def _logger():
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:  # outside a flow run (unit tests): the module's logger
        return logging.getLogger("fedsilo.dispatch")
