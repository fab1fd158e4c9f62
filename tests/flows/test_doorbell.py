"""The mailbox's doorbell (`infra.doorbell`) on a real Prefect API and its event stream: a bell rung
for a round's attempt wakes the side listening on that attempt at once (and no other attempt's, nor
the other direction's listener), and a silo waiting for an order with a poll of 30 s gets it as soon
as the coordinator publishes it. Without a bell the mailbox only polls."""

from __future__ import annotations

import threading
import time

import pytest

from fl_core.messages import END
from infra.doorbell import MANIFEST, ORDER, Doorbell, Silence
from infra.exchange import Exchange
from infra.mailbox import Backoff, CoordinatorMailbox, SiloMailbox
from infra.stores import LocalObjectStore

pytestmark = pytest.mark.usefixtures("prefect_harness")
ATTEMPT, OTHER = "a1" * 8, "b2" * 8


def listening(*bells: Doorbell) -> None:
    for bell in bells:
        bell.start(ready_timeout_s=60)
        assert bell.listening


def test_a_bell_wakes_the_listener_of_its_attempt_and_direction_only():
    ours = Doorbell("fed", 3, ATTEMPT, listen_to=ORDER, rings=None)
    other_attempt = Doorbell("fed", 3, OTHER, listen_to=ORDER, rings=None)
    other_direction = Doorbell("fed", 3, ATTEMPT, listen_to=MANIFEST, rings=None)
    listening(ours, other_attempt, other_direction)
    try:
        began = time.monotonic()
        Doorbell("fed", 3, ATTEMPT, listen_to=None, rings=ORDER).ring("train")
        assert ours.wait(20)
        assert time.monotonic() - began < 10
        assert not ours.wait(0.3)  # once per ring
        assert not other_attempt.wait(1.0) and not other_direction.wait(0.1)
    finally:
        for bell in (ours, other_attempt, other_direction):
            bell.close()


def test_a_waiting_silo_sees_the_order_when_it_is_published_not_at_its_next_poll(tmp_path):
    exchange = Exchange(LocalObjectStore(tmp_path / "exchange"), "fed")
    silo_bell = Doorbell("fed", 1, ATTEMPT, listen_to=ORDER, rings=MANIFEST)
    coordinator_bell = Doorbell("fed", 1, ATTEMPT, listen_to=MANIFEST, rings=ORDER)
    listening(silo_bell, coordinator_bell)
    slow = Backoff(first_s=30.0, cap_s=30.0)  # a poll every 30 s: only the bell can explain a quick answer
    silo = SiloMailbox(exchange, 1, ATTEMPT, "s0", backoff=slow, timeout_s=120, bell=silo_bell)
    coordinator = CoordinatorMailbox(exchange, 1, ATTEMPT, bell=coordinator_bell)
    got = {}
    waiter = threading.Thread(target=lambda: got.update(order=silo.wait("train"), at=time.monotonic()))
    try:
        waiter.start()
        time.sleep(1.0)  # the silo has listed once and now waits
        published = time.monotonic()
        coordinator.publish("train", {"order": "signed"})
        waiter.join(timeout=25)
        assert got["order"] == {"order": "signed"} and got["at"] - published < 10
        silo.post("train", {"manifest": "signed"})
        assert coordinator_bell.wait(20) and coordinator.arrived("train") == {"s0"}
        coordinator.publish(END, {"end": True})
    finally:
        silo_bell.close()
        coordinator_bell.close()


def test_without_a_bell_the_mailbox_sleeps_between_polls(tmp_path):
    slept = []
    exchange = Exchange(LocalObjectStore(tmp_path / "exchange"), "fed")
    silo = SiloMailbox(exchange, 1, ATTEMPT, "s0", backoff=Backoff(first_s=0.01, cap_s=0.02), timeout_s=0.05,
                       sleep=slept.append)
    clock = iter(range(100))
    silo.clock = lambda: next(clock) * 0.01
    assert silo.wait("train") is None  # no order came in time
    assert slept and isinstance(silo.bell, Silence)
