"""The round flow: dispatch training to every silo, aggregate (securely by default), evaluate on
every holdout, record.

Secure mode runs the secure-aggregation protocol as silo phases between training and evaluation:
train (+ advertise keys) -> shares -> masked -> unmask, each followed by the coordinator's check
of what arrived. Bucketed mode runs the same phases with one instance of the protocol per bucket
(every bucket's silos in one dispatch per phase) and merges the bucket means with the robust rule.
Trusted mode has the silos publish their updates and merges them directly.
"""

from __future__ import annotations

import time

from prefect import flow
from prefect.utilities.annotations import quote

from flows.silo import silo_flow
from infra.config import load_config
from infra.dispatch import Dispatcher, InProcessDispatcher, SiloCall, SiloOutcome, Verified, sign_order
from infra.keystore import coordinator_identity
from infra.progress import reporter
from infra.state import resolve_state_dir
from tasks.coordinator import aggregate, assess, log_validations, plan_round, record_round
from tasks.secure_coordinator import secure_keys, secure_masked, secure_open, secure_shares, secure_unmask


def make_dispatcher(config, state) -> Dispatcher:
    """In process (embedded), or each silo's deployment on its own work pool (``dispatch.mode``)."""
    if config.dispatch.mode == "work_pools":
        from infra.exchange import exchange_for
        from infra.workpools import WorkPoolDispatcher

        return WorkPoolDispatcher(config, exchange_for(config, state))
    return InProcessDispatcher(silo_flow)


def phases_per_round(mode: str) -> int:
    """Silo phases per round (for progress displays): train, evaluate, and the protocol's three."""
    return 2 if mode == "trusted" else 5


class _Round:
    """Wiring shared by both aggregation paths: dispatch a phase to some silos with the coordinator's
    signed order, verify their signed manifests against the round's roster, time it."""

    def __init__(self, dispatcher: Dispatcher, config, config_path: str, round_number: int, state):
        self.dispatcher, self.config, self.config_path, self.round_number = dispatcher, config, config_path, round_number
        self.identity = coordinator_identity(state)
        self.timings: dict[str, float] = {}
        self.plan = None

    def start(self, plan) -> None:
        """From here on the round's roster decides: who is dispatched to, whose signatures count."""
        self.plan = plan
        self.dispatcher = Verified(self.dispatcher, self.config.federation, plan.keys)

    def phase(self, phase: str, silos: list[str], refs: dict, timing: str) -> list[SiloOutcome]:
        reporter().phase_started(self.round_number, phase, silos)
        order = sign_order(self.identity, self.config.federation, self.round_number, phase, silos, refs)
        calls = [
            SiloCall(
                silo_id=silo,
                parameters={
                    "federation": self.config.federation, "silo_id": silo, "round_number": self.round_number,
                    "phase": phase, "order": order, "config_path": self.config_path,
                },
            )
            for silo in silos
        ]

        def done(outcome: SiloOutcome) -> None:
            manifest = outcome.manifest or {}
            ok = manifest.get("status") == "ok"
            reporter().silo_done(self.round_number, phase, outcome.silo_id, ok, manifest.get("reason") or outcome.error or "")

        began = time.perf_counter()
        outcomes = self.dispatcher.run(calls, on_done=done)
        self.timings[timing] = time.perf_counter() - began
        return outcomes

    def train(self) -> list[SiloOutcome]:
        """The training phase for the roster's silos; the configured silos off the roster sit it out."""
        plan = self.plan
        trained = self.phase("train", list(plan.silos), {"global": plan.global_ref.to_dict()}, "train_phase_s")
        return trained + [SiloOutcome(silo_id=s, manifest=None, error=why) for s, why in plan.absent.items()]


def _trusted(run: _Round, config_q, state, plan, job_run_id: str):
    trained = run.train()
    log_validations(config_q, state, job_run_id, run.round_number, "train", quote(trained))
    return aggregate(config_q, state, quote(plan), quote(trained))


def _secure(run: _Round, config_q, state, plan, job_run_id: str):
    sr = secure_open(config_q, state, quote(plan), plan.n_parameters)
    trained = run.train()
    log_validations(config_q, state, job_run_id, run.round_number, "train", quote(trained))
    sr = secure_keys(config_q, state, quote(sr), quote(trained))
    shared = run.phase("shares", sr.u1, {}, "secagg.shares_s")
    sr = secure_shares(config_q, state, quote(sr), quote(shared))
    masked = run.phase("masked", sr.u2, {}, "secagg.masked_s")
    sr = secure_masked(config_q, state, quote(sr), quote(masked))
    revealed = run.phase("unmask", sr.survivors, {}, "secagg.unmask_s")
    return secure_unmask(config_q, state, quote(sr), quote(plan), quote(revealed))


AGGREGATION = {"secure": _secure, "bucketed": _secure, "trusted": _trusted}


@flow(name="round", flow_run_name="{federation}/r{round_number:03d}", persist_result=False, log_prints=False)
def round_flow(federation: str, round_number: int, config_path: str, job_run_id: str) -> dict:
    started = time.time()
    config = load_config(config_path)
    state = resolve_state_dir()
    run = _Round(make_dispatcher(config, state), config, config_path, round_number, state)
    # quote(): Prefect need not walk these objects to find upstream futures (there are none).
    config_q = quote(config)
    for name in run.dispatcher.settle():  # silo runs an interrupted coordinator left going must not write here
        reporter().note(f"ended flow run {name}, left by an interrupted round")
    plan = plan_round(config_q, state, round_number)
    run.start(plan)
    aggregated = AGGREGATION[config.aggregation.mode](run, config_q, state, plan, job_run_id)

    models = {"candidate": aggregated.global_ref.to_dict()}
    if plan.champion_ref is not None:
        models["champion"] = plan.champion_ref.to_dict()
    evaluated = run.phase("evaluate", list(plan.silos), models, "evaluate_phase_s")
    log_validations(config_q, state, job_run_id, round_number, "evaluate", quote(evaluated))
    assessment = assess(config_q, state, quote(plan), quote(evaluated))

    train_compute = sum(m.get("compute_s", 0.0) for m in aggregated.training.manifests.values())
    timings = {
        "started_at": started,
        **run.timings,
        "aggregate_s": aggregated.aggregate_s,
        "compute_s": train_compute + assessment.compute_s,
    }
    record = record_round(config_q, state, job_run_id, quote(plan), quote(aggregated), quote(assessment), timings)
    reporter().round_done(record)
    return record
