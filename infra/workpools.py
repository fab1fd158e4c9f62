"""Federated mode through Prefect work pools: deployments of the silo flow on each silo's own pool,
the training flow on the coordinator's, and the dispatcher that runs a phase on every silo's pool.

`deploy` turns a federation config into pools and deployments (idempotent: a second run updates the
same deployments and changes nothing else). Pools it creates get a locked base job template: the
per-run variables that could run something else on a silo's machine (``command``, ``env``,
``working_dir``) are not variables at all and ``additionalProperties`` is false, so the server
refuses a deployment or a run that tries to set them. A pool that already exists is left as its
owner made it. (A pool is still not a trust boundary — whoever may create deployments on it can add
pull steps — so the silo flow checks its parameters and the coordinator's signatures itself.)

`WorkPoolDispatcher` runs each silo's part of a round as one flow run of the silo's deployment
(``<federation>/r<round>/<silo>``): it creates the round's runs all at once when the round opens
(concurrent requests: the server runs on PostgreSQL), each linked to the round's flow run as its
child (`arun_deployment`, which records the parent task run), and then drives the phases through
the exchange (`infra.mailbox`): each phase's signed order is written once, and the silos' signed
manifests are collected as they arrive, with one deadline per phase. A silo whose run could not be
created, whose run ended (failed, crashed, cancelled) without answering, or that misses the deadline
is a delivery without a manifest: dropped for the phase, with the reason, and secure aggregation
recovers it. A silo whose run ended or missed a deadline is dropped from the rest of the round too:
later phases (the evaluation included) answer for it at once instead of waiting on it again. When the round closes the coordinator writes the end order and ends the runs that do
not stop by themselves. The coordinator never reads a Prefect result of a silo, let alone unpickles
one: manifests are signed JSON in the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fl_core.errors import FedsiloError
from infra.config import FederationConfig
from infra.dispatch import Delivery, PhaseCall, describe_error
from infra.doorbell import MANIFEST, ORDER, Doorbell
from infra.exchange import Exchange
from infra.mailbox import Backoff, CoordinatorMailbox

REPO = Path(__file__).resolve().parent.parent
COORDINATOR_POOL = "fedsilo-coordinator"


ENGINE_COMMAND = "python -m flows.engine"


def locked_template() -> dict:
    """The process worker's base job template with nothing a run could use to execute something else:
    only ``name``, ``labels`` and ``stream_output`` remain variables, and no others are accepted.

    The command is fixed to fedsilo's engine starter (`flows.engine`: Prefect's engine, forked from
    the warm-start process when the worker names one, else started cold), run by the ``python`` first
    on the worker's PATH (the environment fedsilo is installed in). Without a command, a process worker starts a supervisor
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
                               description=f"silo {silo.id} of federation {config.federation}: its part of one round")
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
    """Each silo's part of a round as one flow run of its deployment on its own pool, driven phase by
    phase through the exchange (see the module docstring)."""

    def __init__(self, config: FederationConfig, exchange: Exchange):
        self.config = config
        self.exchange = exchange
        self.timeout_s = config.dispatch.phase_timeout_s
        self.backoff = Backoff(cap_s=config.dispatch.poll_s)
        self._deployments: dict[str, object] = {}  # silo -> its deployment's id, read once
        self.round_number: int | None = None
        self.runs: dict[str, object] = {}  # silo -> its flow run's id, this round
        self.unavailable: dict[str, str] = {}  # silo -> why it has no run this round
        self.mailbox: CoordinatorMailbox | None = None

    # -- a round's runs ------------------------------------------------------------------------------
    def open_round(self, round_number: int, attempt: str, silos: Sequence[str]) -> None:
        """Create every silo's flow run of the round at once (at most `create_concurrency` requests in
        flight), each linked to the calling round's flow run as its child in the run graph."""
        self.round_number, self.runs, self.unavailable = round_number, {}, {}
        bell = Doorbell(self.config.federation, round_number, attempt, listen_to=MANIFEST, rings=ORDER).start()
        self.mailbox = CoordinatorMailbox(self.exchange, round_number, attempt, bell=bell)
        created = asyncio.run(self._create_all(round_number, attempt, list(silos)))
        for silo, (run_id, error) in created.items():
            if run_id is not None:
                self.runs[silo] = run_id
            else:
                self.unavailable[silo] = f"could not start its flow run: {error}"

    async def _create_all(self, round_number: int, attempt: str, silos: list[str]
                          ) -> dict[str, tuple[object | None, str | None]]:
        from prefect.client.orchestration import get_client
        from prefect.deployments import arun_deployment

        gate = asyncio.Semaphore(self.config.dispatch.create_concurrency)
        config_path = str(self.config.source) if self.config.source else ""
        async with get_client() as client:
            async def one(silo: str) -> tuple[str, tuple[object | None, str | None]]:
                name = silo_run_name(self.config.federation, round_number, silo)
                async with gate:
                    try:
                        deployment = await self._deployment_id(client, silo)
                        run = await arun_deployment(
                            deployment, client=client, timeout=0, flow_run_name=name,
                            parameters={"federation": self.config.federation, "silo_id": silo,
                                        "round_number": round_number, "attempt": attempt,
                                        "config_path": config_path},
                            idempotency_key=f"{name}:{attempt}",
                            tags=["fedsilo", f"silo:{silo}", f"round:{round_number}"],
                        )
                        return silo, (run.id, None)
                    except Exception as exc:  # no deployment, server refused: the silo sits this round out
                        return silo, (None, describe_error(exc))

            return dict(await asyncio.gather(*(one(silo) for silo in silos)))

    async def _deployment_id(self, client, silo: str):
        if silo not in self._deployments:
            deployment = await client.read_deployment_by_name(f"silo/{silo_deployment(self.config.federation, silo)}")
            self._deployments[silo] = deployment.id
        return self._deployments[silo]

    # -- one phase -----------------------------------------------------------------------------------
    def run(self, call: PhaseCall, on_done: Callable[[Delivery], None] | None = None) -> list[Delivery]:
        """Publish the phase's order, then collect the named silos' manifests as they arrive, until all
        are in, their runs have ended, or the phase's deadline has passed."""
        from prefect.client.orchestration import get_client

        mailbox = self.mailbox
        mailbox.publish(call.phase, call.signed)
        began = time.perf_counter()
        deliveries: dict[str, Delivery] = {}

        def deliver(delivery: Delivery) -> None:
            deliveries[delivery.silo_id] = delivery
            if on_done is not None:
                on_done(delivery)

        pending = []
        for silo in call.order.silos:
            if silo in self.unavailable or silo not in self.runs:
                deliver(Delivery(silo_id=silo, signed=None, error=self.unavailable.get(silo, "no flow run this round")))
            else:
                pending.append(silo)
        deadline = time.monotonic() + self.timeout_s
        next_check = time.monotonic() + 1.0
        with get_client(sync_client=True) as client:
            for delay in self.backoff.delays():
                if not pending:
                    break
                arrived = mailbox.arrived(call.phase)
                for silo in [s for s in pending if s in arrived]:
                    pending.remove(silo)
                    signed = mailbox.read(call.phase, silo)
                    deliver(Delivery(silo_id=silo, signed=signed, error=None if signed else "manifest is not JSON",
                                     wall_s=time.perf_counter() - began))
                if not pending:
                    break
                now = time.monotonic()
                if now > deadline:
                    for silo in pending:  # dropped from the rest of the round: later phases do not wait on it
                        self.unavailable[silo] = f"missed the {call.phase} phase's deadline ({self.timeout_s:g} s)"
                        deliver(Delivery(silo_id=silo, signed=None, wall_s=time.perf_counter() - began,
                                         error=f"missed the phase's deadline ({self.timeout_s:g} s)"))
                    pending = []
                    break
                if now >= next_check:  # a run that ended without answering will not answer
                    next_check = now + 1.0
                    ended = self._ended(client, pending)
                    if ended:
                        arrived = mailbox.arrived(call.phase)  # its manifest may have landed just before it ended
                        for silo, why in ended.items():
                            if silo not in arrived:
                                pending.remove(silo)
                                self.unavailable[silo] = why
                                deliver(Delivery(silo_id=silo, signed=None, error=why,
                                                 wall_s=time.perf_counter() - began))
                mailbox.bell.wait(delay)  # a silo's manifest rings it
        return [deliveries[silo] for silo in call.order.silos]

    def _ended(self, client, silos: list[str]) -> dict[str, str]:
        """The silos among `silos` whose run is in a final state, with how it ended."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        ids = {self.runs[s]: s for s in silos}
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(ids))))
        out = {}
        for run in runs:
            if run.state is not None and run.state.is_final():
                message = f": {run.state.message}" if run.state.message else ""
                out[ids[run.id]] = f"its flow run {run.name} ended {run.state.type.value.lower()}{message}"
        return out

    def close_round(self, end: PhaseCall | None, grace_s: float = 10.0) -> None:
        """Tell the silos' runs the round is over (the end order), give them `grace_s` to finish, then
        end the ones still going (cancelled outright if no worker claimed them)."""
        if self.mailbox is None or not self.runs:
            return
        if end is not None:
            try:
                self.mailbox.publish(end.phase, end.signed)
            except FedsiloError:
                pass  # already ended: the runs stop on the end order that is there
        self.mailbox.bell.close()
        asyncio.run(self._wind_down(grace_s))
        self.mailbox, self.runs = None, {}

    async def _wind_down(self, grace_s: float) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        deadline = time.monotonic() + grace_s
        async with get_client() as client:
            while True:
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(self.runs.values()))))
                going = [run for run in runs if run.state is None or not run.state.is_final()]
                if not going:
                    return
                if time.monotonic() > deadline:
                    for run in going:
                        await _end_run(client, run, "the round ended without it")
                    return
                await asyncio.sleep(0.2)

    def settle(self, grace_s: float = 30.0) -> list[str]:
        """Before a round: end every silo run of this federation that is not finished — left behind by
        a coordinator that died mid-round — so that none of them writes into the round being redone.
        A run no worker has claimed is cancelled at once; a running one is asked to cancel (its worker
        stops the process; a served run sees it and stops) and awaited up to `grace_s`. Returns the
        names of the runs it ended."""
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


def silo_run_name(federation: str, round_number: int, silo: str) -> str:
    """The name of a silo's flow run of a round (as the silo flow names itself)."""
    return f"{federation}/r{round_number:03d}/{silo}"


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
