"""Orders and manifests through the exchange, for a silo's round run on its own machine.

In federated mode a silo takes part in a round through one flow run that lives for the whole round;
the coordinator drives its phases by writing each phase's signed order to
``rounds/<r>/orders/<attempt>/<phase>.json`` (and ``end.json`` when the round is over), and the
silo answers each with its signed manifest at ``rounds/<r>/manifests/<attempt>/<phase>/<silo>.json``
(``attempt``: a fresh id for each attempt at the round, so that a run left by an interrupted attempt
never sees, nor answers, the orders of the attempt that redoes the round). Both sides poll with
back-off (`Backoff`: 50 ms growing to a cap), one listing per poll, and between polls wait on a
doorbell (`infra.doorbell`: a Prefect event the other side rings when it posts) rather than sleep,
so that a posted object is usually seen within milliseconds, not at the next poll. Objects are written once: an
order already present when the coordinator writes its own means someone else wrote into the round,
which stops it (`IntegrityError`); a planted or replayed order is refused by the silo's signature
check and answered ``sat_out``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fl_core.errors import ExchangeError, IntegrityError
from fl_core.messages import END, ObjectRef
from infra.doorbell import Silence
from infra.exchange import Exchange


@dataclass(frozen=True, slots=True)
class Backoff:
    first_s: float = 0.05
    factor: float = 1.5
    cap_s: float = 0.5

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield delay
            delay = min(self.cap_s, delay * self.factor)


def _name(key: str) -> str:
    return key.rsplit("/", 1)[-1].removesuffix(".json")


class SiloMailbox:
    """A silo's side: wait for the order of a phase, post the manifest."""

    def __init__(self, exchange: Exchange, round_number: int, attempt: str, silo: str, *, backoff: Backoff,
                 timeout_s: float,
                 stopped: Callable[[], bool] = lambda: False, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, bell=None):
        """`bell`: waited on between polls and rung on posting (`infra.doorbell.Doorbell`); none: sleep."""
        self.exchange, self.round_number, self.attempt, self.silo = exchange, round_number, attempt, silo
        self.backoff, self.timeout_s, self.stopped = backoff, timeout_s, stopped
        self.clock = clock
        self.bell = bell if bell is not None else Silence(sleep)

    def wait(self, phase: str) -> dict | None:
        """The signed order for `phase` once the coordinator has written it; None when the round has
        ended (the coordinator's end order), the run was asked to stop, or no order came within
        `timeout_s`."""
        deadline = self.clock() + self.timeout_s
        prefix = self.exchange.orders_prefix(self.round_number, self.attempt)
        for delay in self.backoff.delays():
            present = {_name(key) for key in self.exchange.store.list(prefix)}
            if phase in present:
                return self._read(phase)
            if END in present or self.stopped() or self.clock() > deadline:
                return None
            self.bell.wait(delay)
        return None  # unreachable: the delays never end

    def _read(self, phase: str) -> dict:
        try:
            return json.loads(self.exchange.store.get(self.exchange.order_key(self.round_number, self.attempt, phase)))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # not an envelope: the signature check refuses it

    def post(self, phase: str, signed_manifest: dict) -> ObjectRef:
        key = self.exchange.manifest_key(self.round_number, self.attempt, phase, self.silo)
        ref = self.exchange.put_json(key, signed_manifest)
        self.bell.ring(phase)
        return ref


class CoordinatorMailbox:
    """The coordinator's side: publish a phase's order, see which manifests have arrived, read one."""

    def __init__(self, exchange: Exchange, round_number: int, attempt: str, bell=None):
        self.exchange, self.round_number, self.attempt = exchange, round_number, attempt
        self.bell = bell if bell is not None else Silence()

    def publish(self, phase: str, signed_order: dict) -> None:
        key = self.exchange.order_key(self.round_number, self.attempt, phase)
        if self.exchange.store.exists(key):
            raise IntegrityError(f"round {self.round_number}: an order for {phase} is already in the exchange "
                                 f"({key}); something else writes into this round")
        try:
            self.exchange.put_json(key, signed_order)
        except ExchangeError as exc:
            raise IntegrityError(f"round {self.round_number}: cannot publish the {phase} order: {exc}") from None
        self.bell.ring(phase)

    def arrived(self, phase: str) -> set[str]:
        """The silos whose manifest for `phase` is in the exchange."""
        prefix = self.exchange.manifests_prefix(self.round_number, self.attempt, phase)
        return {_name(key) for key in self.exchange.store.list(prefix)}

    def read(self, phase: str, silo: str) -> dict | None:
        """A silo's signed manifest as it is in the exchange (None if it is not JSON: refused unread)."""
        try:
            key = self.exchange.manifest_key(self.round_number, self.attempt, phase, silo)
            return json.loads(self.exchange.store.get(key))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
