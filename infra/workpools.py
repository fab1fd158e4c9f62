"""Federated mode through Prefect work pools: deployments of the silo flow on each silo's own pool,
the training flow on the coordinator's, and the dispatcher that runs a phase on every silo's pool.

`deploy` turns a federation config into pools and deployments (idempotent: a second run updates the
same deployments and changes nothing else). Pools it creates get a locked base job template: the
per-run variables that could run something else on a silo's machine (``command``, ``env``,
``working_dir``) are not variables at all and ``additionalProperties`` is false, so the server
refuses a deployment or a run that tries to set them. A pool that already exists is left as its
owner made it. (A pool is still not a trust boundary — whoever may create deployments on it can add
pull steps — so the silo flow checks its parameters and the coordinator's signatures itself.)

`WorkPoolDispatcher` follows the Prefect notes for a SQLite-backed server: it creates the phase's
flow runs one at a time (concurrent creations earn 503s; a 503 is retried after tens of
milliseconds, not Prefect's 2 s back-off), then waits for all of them together, event-driven
(`wait_for_flow_run`), with one deadline for the phase. A run that fails, crashes, is cancelled or
misses the deadline (it is then cancelled) makes that silo an outcome without a manifest: dropped
for the phase, with the reason, and secure aggregation recovers it. A completed run's manifest is
read from the exchange, where the silo flow left it as JSON — the coordinator never unpickles a
Prefect result from a silo.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fl_core.errors import FedsiloError
from infra.config import FederationConfig
from infra.dispatch import SiloCall, SiloOutcome, describe_error, silo_run_name
from infra.exchange import Exchange

REPO = Path(__file__).resolve().parent.parent
COORDINATOR_POOL = "fedsilo-coordinator"


ENGINE_COMMAND = "python -m prefect.engine"
CREATE_ATTEMPTS = 10


def locked_template() -> dict:
    """The process worker's base job template with nothing a run could use to execute something else:
    only ``name``, ``labels`` and ``stream_output`` remain variables, and no others are accepted.

    The command is fixed to Prefect's engine, run by the ``python`` first on the worker's PATH (the
    environment fedsilo is installed in). Without a command, a process worker starts a supervisor
    process that prepares a workspace and then starts the engine in a second Python process: two
    interpreters and two imports of Prefect per silo phase instead of one (measured here: ~6 s
    against ~3 s from claim to running)."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    keep = ("name", "labels", "stream_output")
    variables = template["variables"]
    variables["properties"] = {k: v for k, v in variables["properties"].items() if k in keep}
    variables["additionalProperties"] = False
    variables.pop("required", None)
    template["job_configuration"] = {
        "command": ENGINE_COMMAND, "env": {}, "working_dir": None,
        **{k: "{{ " + k + " }}" for k in keep},
    }
    return template


def quiet():
    """Prefect's deploy prints a table per deployment; the CLI prints its own summary."""
    return contextlib.redirect_stdout(io.StringIO())


def ensure_pools(client, config: FederationConfig, reset: bool = False) -> None:
    """The coordinator's pool and one pool per silo, with the locked template: created when missing;
    with `reset`, an existing pool's template is replaced too (the stack owns its pools)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    template = locked_template()
    for pool in [COORDINATOR_POOL, *(s.pool_name for s in config.silos)]:
        if not reset:
            try:
                client.read_work_pool(pool)
                continue
            except ObjectNotFound:
                pass
        client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template), overwrite=True)


def silo_deployment(federation: str, silo_id: str) -> str:
    return f"{federation}-{silo_id}"


def training_deployment(federation: str) -> str:
    return f"{federation}-training"


def deploy(config: FederationConfig, config_path: Path, cron: str | None = None, timezone: str = "UTC") -> list[str]:
    """Create missing pools (locked) and (re)register the federation's deployments; returns their
    full names. The training deployment's optional `cron` schedule starts inactive only if the
    deployment is new; pause and resume it in the Prefect UI."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.schedules import CronSchedule

    with get_client(sync_client=True) as client:
        ensure_pools(client, config)
    names = []
    silo_source = flow.from_source(source=str(REPO), entrypoint="flows/silo.py:silo_flow")
    for silo in config.silos:
        name = silo_deployment(config.federation, silo.id)
        with quiet():
            silo_source.deploy(name=name, work_pool_name=silo.pool_name, build=False, push=False,
                               print_next_steps=False, ignore_warnings=True,
                               description=f"silo {silo.id} of federation {config.federation}: one phase of one round")
        names.append(f"silo/{name}")
    training = flow.from_source(source=str(REPO), entrypoint="flows/training.py:training_flow")
    name = training_deployment(config.federation)
    with quiet():
        training.deploy(
            name=name, work_pool_name=COORDINATOR_POOL, build=False, push=False, print_next_steps=False,
            ignore_warnings=True, parameters={"config_path": str(Path(config_path).resolve())},
            schedules=[CronSchedule(cron=cron, timezone=timezone)] if cron else None,
            description=f"a training job of federation {config.federation} (training.rounds rounds)",
        )
    names.append(f"training/{name}")
    return names


async def _end_run(client, run, why: str) -> bool:
    """End a silo's unfinished run: cancelled outright if no worker has claimed it (none would ever see
    a request), else asked to cancel (its worker stops the process). True if it had started."""
    from prefect.states import Cancelled, Cancelling

    started = run.start_time is not None
    await client.set_flow_run_state(run.id, (Cancelling if started else Cancelled)(message=why), force=True)
    return started


def missing_deployments(config: FederationConfig) -> list[str]:
    """The federation's silo deployments the Prefect server does not have (`fedsilo deploy` makes them)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    missing = []
    with get_client(sync_client=True) as client:
        for silo in config.silos:
            name = f"silo/{silo_deployment(config.federation, silo.id)}"
            try:
                client.read_deployment_by_name(name)
            except ObjectNotFound:
                missing.append(name)
    return missing


class WorkPoolDispatcher:
    """Runs each silo's phase as a run of its deployment on its own pool (see the module docstring)."""

    def __init__(self, config: FederationConfig, exchange: Exchange):
        self.config = config
        self.exchange = exchange
        self.timeout_s = config.dispatch.phase_timeout_s
        self._deployments: dict[str, object] = {}  # silo -> its deployment's id, read once

    def run(self, calls: Sequence[SiloCall], on_done: Callable[[SiloOutcome], None] | None = None) -> list[SiloOutcome]:
        from prefect.client.orchestration import get_client

        outcomes: dict[str, SiloOutcome] = {}
        started: dict[str, tuple[object, float]] = {}
        attempt = uuid.uuid4().hex  # idempotency keys of this dispatch: a retried creation makes no second run
        with get_client(sync_client=True) as client:
            for call in calls:  # one at a time: a SQLite-backed server answers concurrent creations with 503s
                began = time.perf_counter()
                try:
                    run_id = self._create(client, call, f"{silo_run_name(call.parameters)}:{attempt}")
                    started[call.silo_id] = (run_id, began)
                except Exception as exc:  # no deployment, server refused: the silo cannot take part in this phase
                    outcomes[call.silo_id] = SiloOutcome(silo_id=call.silo_id, manifest=None,
                                                         error=f"could not start its flow run: {describe_error(exc)}")
        finished = asyncio.run(self._wait(started)) if started else {}
        for call in calls:
            if call.silo_id not in outcomes:
                outcomes[call.silo_id] = self._outcome(call, *finished[call.silo_id])
            if on_done is not None:
                on_done(outcomes[call.silo_id])
        return [outcomes[call.silo_id] for call in calls]

    def _deployment_id(self, client, silo: str):
        if silo not in self._deployments:
            self._deployments[silo] = client.read_deployment_by_name(f"silo/{silo_deployment(self.config.federation, silo)}").id
        return self._deployments[silo]

    def _create(self, client, call: SiloCall, idempotency_key: str):
        """Create the silo's flow run (``POST /deployments/{id}/create_flow_run``, as Prefect's client
        does). A 503 — SQLite busy: another writer got in between the server's read and its write — is
        retried here after tens of milliseconds; Prefect's client sleeps 2 s, then 4 s, before any retry
        (even with retries off), and on a busy one-machine server those sleeps were most of a phase."""
        import httpx
        from prefect.client.schemas.actions import DeploymentFlowRunCreate
        from prefect.states import Scheduled, to_state_create

        payload = DeploymentFlowRunCreate(
            parameters=call.parameters, name=silo_run_name(call.parameters), idempotency_key=idempotency_key,
            tags=["fedsilo", f"silo:{call.silo_id}"], state=to_state_create(Scheduled()),
        ).model_dump(mode="json", exclude_unset=True)
        http = client._client  # the client's configured httpx session (base URL, auth); sent without its retry loop
        request = http.build_request("POST", f"/deployments/{self._deployment_id(client, call.silo_id)}/create_flow_run",
                                     json=payload)
        delay = 0.05
        for _ in range(CREATE_ATTEMPTS):
            response = httpx.Client.send(http, request)
            if response.status_code != 503:
                break
            time.sleep(delay * (1 + random.random()))
            delay = min(2 * delay, 1.0)
        response.raise_for_status()
        return response.json()["id"]

    async def _wait(self, started: dict[str, tuple[object, float]]) -> dict[str, tuple[object | None, str | None, float]]:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import FlowRunWaitTimeout
        from prefect.flow_runs import wait_for_flow_run

        deadline = time.monotonic() + self.timeout_s

        async with get_client() as client:
            async def one(silo: str, run_id, began: float):
                try:
                    run = await wait_for_flow_run(run_id, timeout=max(1, int(deadline - time.monotonic())), client=client)
                    return silo, (run, None, time.perf_counter() - began)
                except FlowRunWaitTimeout:
                    await _end_run(client, await client.read_flow_run(run_id), "phase timeout")
                    return silo, (None, f"timed out after {self.timeout_s:g} s (its run was cancelled)",
                                  time.perf_counter() - began)

            results = await asyncio.gather(*(one(silo, run_id, began) for silo, (run_id, began) in started.items()))
        return dict(results)

    def settle(self, grace_s: float = 30.0) -> list[str]:
        """Before a round: end every silo run of this federation that is not finished — left behind by
        a coordinator that died mid-phase — so that none of them writes into the round being redone.
        A run no worker has claimed is cancelled at once; a running one is asked to cancel (its worker
        stops the process) and awaited up to `grace_s`. Returns the names of the runs it ended."""
        return asyncio.run(self._settle(grace_s))

    async def _settle(self, grace_s: float) -> list[str]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterName,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.exceptions import FlowRunWaitTimeout
        from prefect.flow_runs import wait_for_flow_run

        names = [silo_deployment(self.config.federation, s.id) for s in self.config.silos]
        unfinished = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]
        async with get_client() as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names)),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished))),
            )
            started = [run for run in runs if await _end_run(client, run, "left by an interrupted round")]
            deadline = time.monotonic() + grace_s
            for run in started:
                with contextlib.suppress(FlowRunWaitTimeout):
                    await wait_for_flow_run(run.id, timeout=max(1, int(deadline - time.monotonic())), client=client)
        return [run.name for run in runs]

    def _outcome(self, call: SiloCall, run, error: str | None, wall: float) -> SiloOutcome:
        silo = call.silo_id
        if run is None:
            return SiloOutcome(silo_id=silo, manifest=None, error=error, wall_s=wall)
        state = run.state
        if state is None or not state.is_completed():
            kind = state.type.value.lower() if state is not None else "unknown"
            message = f": {state.message}" if state is not None and state.message else ""
            return SiloOutcome(silo_id=silo, manifest=None, error=f"flow run {run.name} ended {kind}{message}", wall_s=wall)
        p = call.parameters
        try:
            manifest = self.exchange.read_json_key(self.exchange.manifest_key(p["round_number"], p["phase"], silo))
        except Exception as exc:  # completed without leaving its manifest: treated as no answer
            return SiloOutcome(silo_id=silo, manifest=None, error=f"no manifest in the exchange: {describe_error(exc)}",
                               wall_s=wall)
        return SiloOutcome(silo_id=silo, manifest=manifest, wall_s=wall)


@dataclass(frozen=True, slots=True)
class TriggerOutcome:
    """What `trigger` saw: the job's flow run, how it ended, and the rounds it committed."""

    run_name: str
    run_id: str
    state: str
    message: str
    records: list[dict]

    @property
    def completed(self) -> bool:
        return self.state == "COMPLETED"

    @property
    def promoted(self) -> bool:
        """The job's last round passed the gate (its model became the champion)."""
        return bool(self.records) and bool(self.records[-1].get("promoted"))


def trigger(config: FederationConfig, exchange: Exchange, rounds: int | None, timeout_s: float,
            on_started: Callable[[str, str], None] | None = None) -> TriggerOutcome:
    """Run the federation's training deployment once on the Prefect server and wait for it (up to
    `timeout_s`; a run still going then is left running and reported as such). The rounds it
    committed are read back from the exchange, the coordinator's record of each round."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import FlowRunWaitTimeout, ObjectNotFound
    from prefect.flow_runs import wait_for_flow_run

    name = f"training/{training_deployment(config.federation)}"
    before = set(exchange.committed_rounds())
    parameters = {} if rounds is None else {"rounds": rounds}
    try:
        run = run_deployment(name=name, parameters=parameters, timeout=0)
    except ObjectNotFound:
        raise FedsiloError(f"no deployment {name} on the Prefect server; run `fedsilo deploy` first") from None
    if on_started is not None:
        on_started(run.name, str(run.id))

    async def wait():
        async with get_client() as client:
            return await wait_for_flow_run(run.id, timeout=max(1, int(timeout_s)), client=client, log_states=False)

    try:
        finished = asyncio.run(wait())
    except FlowRunWaitTimeout:
        return TriggerOutcome(run.name, str(run.id), "TIMED_OUT", f"still running after {timeout_s:g} s (left running)", [])
    state = finished.state
    new = sorted(set(exchange.committed_rounds()) - before)
    records = [exchange.read_json_key(exchange.record_key(r)) for r in new]
    return TriggerOutcome(run.name, str(run.id), state.type.value if state else "UNKNOWN",
                          (state.message or "") if state else "", records)
