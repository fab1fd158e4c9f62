"""The hardened silo runner: `fedsilo silo serve CONFIG --silo ID`, a long-lived process on the
silo's side that runs the silo's part of every round in itself, in place of a Prefect worker.

Why: a Prefect work pool is not a trust boundary. A process worker does what the deployment and
the run say — pull steps, job variables — and whoever may edit deployments on the server can make it
run anything on the silo's machine. This runner takes nothing from the server but the *parameters*
of the runs of its own deployment (``silo/<federation>-<silo>``): it ignores the deployment's pull
steps, entrypoint and job variables, runs only the silo flow of the fedsilo installed next to it,
with the silo's own config (the ``config_path`` a run names is replaced by the one the runner was
started with) and its own state folder, and refuses — fails, with the reason, without running — any
run that names another federation or silo, or carries parameters the silo flow does not take. The
flow itself then verifies the coordinator's signed order before acting, as it does under a worker.

It is also the fast path: the flow runs in this process (no interpreter start, no imports per
round), so a round costs the API calls of one flow run plus the work. The runner hears about new runs
on Prefect's event stream (a ``prefect.flow-run.Scheduled`` event related to its deployment) and
also looks every `poll_s` seconds (a read), in case an event was missed. Runs are taken one at a
time, in the order they were scheduled (one round at a time: a silo's run lives for its round). A run
is claimed by moving it to Pending, which the server grants to one claimant only; the coordinator's
phase deadline still applies (a run this runner could not start in time misses the phase and the
silo is dropped from it).

Limits: one process, one run at a time; a flow that crashes the interpreter takes the runner down
(restart it; the coordinator counts the silo as dropped for the phase it was in). A run executing
here is not interrupted by a cancellation request: the silo flow looks at its own state while it
waits for orders and stops when asked; a late manifest is ignored by the coordinator (the round has
moved on).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fl_core.errors import ConfigError
from infra.config import load_config
from infra.workpools import silo_deployment

PARAMETERS = frozenset({"federation", "silo_id", "round_number", "attempt", "config_path"})


@dataclass(frozen=True, slots=True)
class RunReport:
    """What the runner did with one flow run."""

    name: str
    state: str  # COMPLETED, FAILED, ... or REFUSED (never run)
    seconds: float
    message: str = ""


class SiloRunner:
    def __init__(self, config_path: Path, silo_id: str, silo_flow: Callable, poll_s: float = 2.0,
                 on_run: Callable[[RunReport], None] | None = None):
        """`silo_flow`: the flow this runner runs (`flows.silo.silo_flow`, passed in from the flow side)."""
        self.config = load_config(config_path)
        self.config.silo(silo_id)  # a ConfigError naming the silos if it is not in the config
        self.config_path = str(Path(config_path).resolve())
        self.silo = silo_id
        self.silo_flow = silo_flow
        self.deployment = f"silo/{silo_deployment(self.config.federation, silo_id)}"
        self.poll_s = poll_s
        self.on_run = on_run or (lambda report: None)
        self._wake = threading.Event()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def refusal(self, parameters: dict) -> str | None:
        """Why a run's parameters are not for this silo (None if they are)."""
        extra = sorted(set(parameters) - PARAMETERS)
        if extra:
            return f"parameters {extra} are not the silo flow's"
        if parameters.get("federation") != self.config.federation:
            return f"federation {parameters.get('federation')!r}; this runner serves {self.config.federation!r}"
        if parameters.get("silo_id") != self.silo:
            return f"silo {parameters.get('silo_id')!r}; this runner serves {self.silo!r}"
        return None

    def serve(self, max_runs: int | None = None) -> int:
        """Run this silo's flow runs until `stop()` (or SIGINT), or until `max_runs` have been handled.
        Returns how many runs it handled."""
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        with get_client(sync_client=True) as client:
            try:
                deployment = client.read_deployment_by_name(self.deployment)
            except ObjectNotFound:
                raise ConfigError(f"no deployment {self.deployment} on the Prefect server; the coordinator "
                                  "registers it with `fedsilo deploy`") from None
            listener = threading.Thread(target=self._listen, args=(str(deployment.id),), daemon=True,
                                        name="silo-runner-events")
            listener.start()
            handled = 0
            while not self._stop.is_set():
                for run in self._scheduled(client, deployment.id):
                    if self._stop.is_set():
                        break
                    if self._claim(client, run):
                        self.on_run(self._execute(client, run))
                        handled += 1
                        if max_runs is not None and handled >= max_runs:
                            self.stop()
                self._wake.wait(timeout=self.poll_s)
                self._wake.clear()
            return handled

    # -- one run -----------------------------------------------------------------------------------
    @staticmethod
    def _scheduled(client, deployment_id) -> list:
        """The deployment's runs due now, oldest first. A read only: Prefect's own poll for scheduled
        runs also records the poll (a write), and on a SQLite server every write can hold up the
        coordinator's run creations."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterDeploymentId,
            FlowRunFilterNextScheduledStartTime,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        due = FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=datetime.now(UTC)),
        )
        return client.read_flow_runs(flow_run_filter=due, sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=50)

    @staticmethod
    def _claim(client, run) -> bool:
        """Move the run to Pending; False if another claimant (or a cancellation) got there first."""
        from prefect.exceptions import Abort
        from prefect.states import Pending
        from prefect.utilities.engine import propose_state_sync

        try:
            state = propose_state_sync(client, Pending(), flow_run_id=run.id)
        except Abort:
            return False
        return state.is_pending()

    def _execute(self, client, run) -> RunReport:
        from prefect.client.schemas.objects import StateType
        from prefect.flow_engine import run_flow
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
        from prefect.states import Cancelled, Failed

        began = time.perf_counter()
        parameters = dict(run.parameters)
        why = self.refusal(parameters)
        if why is not None:
            client.set_flow_run_state(run.id, Failed(message=f"refused by silo {self.silo}'s runner: {why}"), force=True)
            return RunReport(run.name, "REFUSED", time.perf_counter() - began, why)
        parameters["config_path"] = self.config_path  # the silo's own config, whatever the run says
        # heartbeats off: a sync flow otherwise joins its heartbeat thread for ~1 s at exit
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            state = run_flow(self.silo_flow, flow_run=run, parameters=parameters, return_type="state")
        if client.read_flow_run(run.id).state.type == StateType.CANCELLING:
            # asked to cancel while it ran here (a flow in this process cannot be interrupted): it has
            # ended now, and what it wrote is ignored by the coordinator, which gave up on it
            client.set_flow_run_state(run.id, Cancelled(message="cancelled by the coordinator while running; "
                                                                "it ran to its end and was ignored"), force=True)
            return RunReport(run.name, "CANCELLED", time.perf_counter() - began, "cancelled while running")
        return RunReport(run.name, state.type.value, time.perf_counter() - began, state.message or "")

    # -- events ------------------------------------------------------------------------------------
    def _listen(self, deployment_id: str) -> None:
        """Wake the loop on every new scheduled run of the deployment (polling covers the gaps)."""
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

        event_filter = EventFilter(
            event=EventNameFilter(name=["prefect.flow-run.Scheduled"]),
            related=EventRelatedFilter(id=[f"prefect.deployment.{deployment_id}"]),
        )

        async def listen() -> None:
            async with get_events_subscriber(filter=event_filter) as subscriber:
                async for _ in subscriber:
                    self._wake.set()
                    if self._stop.is_set():
                        return

        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a dropped stream: polling carries on, reconnect shortly
                asyncio.run(listen())
            self._stop.wait(timeout=self.poll_s)
