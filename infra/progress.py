"""Progress events from flows to whoever displays them (the CLI), without flows knowing how.

Flows call `reporter()` and get the reporter the entry point installed for this context, or one
that ignores everything. Events carry numbers and names, never data.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any


class Reporter:
    """Base reporter: every event is a no-op. The CLI subclasses it."""

    def job_started(
        self, federation: str, first_round: int, last_round: int, silos: list[str], phases_per_round: int = 2,
        trainers_per_round: int | None = None,
    ) -> None: ...

    def phase_started(self, round_number: int, phase: str, silos: list[str]) -> None: ...

    def silo_done(self, round_number: int, phase: str, silo: str, ok: bool, detail: str) -> None: ...

    def round_done(self, record: dict[str, Any]) -> None: ...

    def note(self, text: str) -> None: ...


_current: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("fedsilo_reporter", default=None)
_null = Reporter()


def reporter() -> Reporter:
    return _current.get() or _null


@contextlib.contextmanager
def reporting_to(target: Reporter) -> Iterator[Reporter]:
    token = _current.set(target)
    try:
        yield target
    finally:
        _current.reset(token)
