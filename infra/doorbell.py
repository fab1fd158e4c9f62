"""A doorbell beside the mailbox (`infra.mailbox`): a Prefect event that says "something was posted
in this round's mailbox", so that the other side looks now instead of at its next poll.

The coordinator rings ``fedsilo.order.published`` when it writes a phase's order, a silo rings
``fedsilo.manifest.posted`` when it leaves a manifest; both name the round's attempt as the event's
resource (``fedsilo.round.<federation>.<round>.<attempt>``). Each side listens, on Prefect's event
stream, for the other side's bell on its attempt only, and its polling loop waits on the bell instead
of sleeping: measured on the 2-core stack with pools rounds running, an event reached its subscriber
in 7 ms (median of 20; 0.17 s at most), against up to `dispatch.poll_s` (0.5 s) for a poll.

The bell carries nothing but the phase's name. It is not trusted: what a side acts on is always the
signed object in the exchange, verified as before, and a bell rung by anyone else only costs a
listing. Without a Prefect API, or when the stream drops, the bell stays silent and the polling with
back-off carries on as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time

ORDER = "fedsilo.order.published"
MANIFEST = "fedsilo.manifest.posted"


def resource_id(federation: str, round_number: int, attempt: str) -> str:
    return f"fedsilo.round.{federation}.{round_number}.{attempt}"


class Doorbell:
    """Ring the other side's bell (`ring`); wait for ours (`wait`), or for the timeout."""

    def __init__(self, federation: str, round_number: int, attempt: str, *, listen_to: str | None, rings: str | None):
        self.resource = resource_id(federation, round_number, attempt)
        self.listen_to, self.rings = listen_to, rings
        self._rung = threading.Event()
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None

    # -- listening ---------------------------------------------------------------------------------
    def start(self, ready_timeout_s: float = 0.0) -> Doorbell:
        """Listen in a thread; wait up to `ready_timeout_s` for the subscription to be in place."""
        if self.listen_to is not None and self._thread is None:
            # in the caller's context: the Prefect settings it runs with (a temporary API, say) hold there too
            context = contextvars.copy_context()
            self._thread = threading.Thread(target=context.run, args=(self._listen,), daemon=True,
                                            name="fedsilo-doorbell")
            self._thread.start()
            if ready_timeout_s > 0:
                self._listening.wait(ready_timeout_s)
        return self

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def _listen(self) -> None:
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

        event_filter = EventFilter(event=EventNameFilter(name=[self.listen_to]),
                                   resource=EventResourceFilter(id=[self.resource]))

        async def listen() -> None:
            async with get_events_subscriber(filter=event_filter) as subscriber:
                self._listening.set()
                events = subscriber.__aiter__()
                while not self._stop.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(events.__anext__(), timeout=1.0)
                        self._rung.set()

        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # no API, a dropped stream: the polls carry on; try again
                asyncio.run(listen())
            self._listening.clear()
            self._stop.wait(timeout=2.0)

    def wait(self, timeout_s: float) -> bool:
        """Until the bell rings or `timeout_s` passes; True if it rang (since the last wait)."""
        rung = self._rung.wait(timeout_s)
        self._rung.clear()
        return rung

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3.0)
            self._thread = None

    # -- ringing -----------------------------------------------------------------------------------
    def ring(self, phase: str) -> None:
        if self.rings is None:
            return
        with contextlib.suppress(Exception):  # a bell that cannot ring: the other side's poll finds it
            from prefect.events import emit_event

            emit_event(event=self.rings, resource={"prefect.resource.id": self.resource},
                       payload={"phase": phase})


class Silence:
    """No bell: waiting is sleeping (embedded tests, a mailbox without a Prefect API)."""

    listening = False

    def __init__(self, sleep=time.sleep):
        self._sleep = sleep

    def start(self, ready_timeout_s: float = 0.0) -> Silence:
        return self

    def wait(self, timeout_s: float) -> bool:
        self._sleep(timeout_s)
        return False

    def ring(self, phase: str) -> None:
        pass

    def close(self) -> None:
        pass
