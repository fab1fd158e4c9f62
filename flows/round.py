"""The round flow: every silo's part of the round, the aggregation, the evaluation on every holdout,
the gate and the record.

The round opens every silo's part at once — in embedded mode a `SiloRound` per silo in this process,
whose steps are task runs of this flow; in federated mode one flow run per silo of its own
deployment, a child of this run — and then drives the phases with signed orders: train (with the
round keys), then in secure mode the protocol's shares, masked and unmask, each followed by the
coordinator's check of what arrived; then evaluate. Bucketed mode runs the same phases with one
instance of the protocol per bucket and merges the bucket means with the robust rule. Trusted mode
has the silos publish their updates and merges them directly.

With ``aggregation.silos_per_round`` only the round's sampled silos (`tasks.plan.RoundPlan.trainers`)
get the train order and so the protocol's phases; every eligible silo's part is opened all the same
and gets the evaluate order, so that the gate scores the candidate on every holdout.
"""

from __future__ import annotations

import contextvars
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from fl_core.messages import END, Order, phases_for, seal_order
from infra.config import load_config
from infra.dispatch import (
    Dispatcher,
    InProcessDispatcher,
    PhaseCall,
    SiloOutcome,
    Verified,
    default_parallel,
    describe_error,
)
from infra.keystore import coordinator_identity
from infra.progress import reporter
from infra.state import resolve_state_dir
from tasks.aggregate import merge
from tasks.gate import assess
from tasks.plan import plan_round
from tasks.record import log_validations, record_round
from tasks.secure_coordinator import secure_keys, secure_masked, secure_open, secure_shares, secure_unmask
from tasks.silo_round import SiloRound


def make_dispatcher(config, state) -> Dispatcher:
    """In process (embedded), or each silo's deployment on its own work pool (``dispatch.mode``)."""
    if config.dispatch.mode == "work_pools":
        from infra.exchange import exchange_for
        from infra.workpools import WorkPoolDispatcher

        return WorkPoolDispatcher(config, exchange_for(config, state))
    parallel = config.dispatch.parallel or default_parallel(len(config.silos))
    return InProcessDispatcher(lambda silo, r, attempt: SiloRound(config, state, silo, r, attempt), parallel)


def phases_per_round(mode: str) -> int:
    """Silo phases per round (for progress displays): train, evaluate, and the protocol's three."""
    return len(phases_for(mode))


class _Round:
    """Wiring shared by every aggregation path: hand a phase to some silos with the coordinator's
    signed order, verify their signed manifests against the round's roster, time it."""

    def __init__(self, dispatcher: Dispatcher, config, round_number: int, state):
        self.dispatcher, self.config, self.round_number = dispatcher, config, round_number
        self.identity = coordinator_identity(state)
        self.timings: dict[str, float] = {}
        self.plan = None
        self.opened = False
        self.attempt = uuid.uuid4().hex[:16]  # this attempt at the round (a redone round gets a new one)

    def start(self, plan) -> None:
        """From here on the round's roster decides: who takes part, whose signatures count."""
        self.plan = plan
        self.dispatcher = Verified(self.dispatcher, self.config.federation, plan.keys)
        began = time.perf_counter()
        self.dispatcher.open_round(self.round_number, self.attempt, list(plan.silos))
        self.opened = True
        self.timings["open_s"] = time.perf_counter() - began

    def call(self, phase: str, silos: list[str], refs: dict) -> PhaseCall:
        order = Order(federation=self.config.federation, round=self.round_number, phase=phase, silos=tuple(silos),
                      refs=refs, attempt=self.attempt)
        return PhaseCall(order=order, signed=seal_order(self.identity, order))

    def phase(self, phase: str, silos: list[str], refs: dict, timing: str) -> list[SiloOutcome]:
        reporter().phase_started(self.round_number, phase, silos)

        def done(outcome: SiloOutcome) -> None:
            manifest = outcome.manifest
            ok = manifest is not None and manifest.ok
            why = (manifest.reason if manifest is not None else outcome.error) or ""
            reporter().silo_done(self.round_number, phase, outcome.silo_id, ok, why)

        began = time.perf_counter()
        outcomes = self.dispatcher.run(self.call(phase, silos, refs), on_done=done)
        self.timings[timing] = time.perf_counter() - began
        return outcomes

    def train(self) -> list[SiloOutcome]:
        """The training phase for the round's trainers (the roster's silos, or those sampled of them);
        the configured silos off the roster sit it out. A silo not sampled is no outcome at all: it
        is not a dropout, and the round's sample names it."""
        plan = self.plan
        refs = {"global": plan.global_ref}
        if plan.server_ref is not None and self.config.policy().control:  # SCAFFOLD: the server's control variate
            refs["server"] = plan.server_ref
        trained = self.phase("train", list(plan.trainers), refs, "train_phase_s")
        return trained + [SiloOutcome(silo_id=s, manifest=None, error=why) for s, why in plan.absent.items()]

    def close(self) -> None:
        """Tell every silo the round is over (the end order) and end what is still running."""
        if self.opened:
            self.opened = False
            silos = list(self.plan.silos)
            self.dispatcher.close_round(self.call(END, silos, {}) if silos else None)

    def close_soon(self) -> Future:
        """`close()` in a thread of its own (with this context: the flow run, the Prefect settings):
        the silos' runs wind down while the coordinator scores and records the round, not before."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsilo-round-close")
        future = pool.submit(contextvars.copy_context().run, self.close)
        pool.shutdown(wait=False)  # no more calls; the thread ends with this one
        return future


def _trusted(run: _Round, config_q, state, plan, job_run_id: str):
    trained = run.train()
    log_validations(config_q, state, job_run_id, run.round_number, "train", quote(trained))
    return merge(config_q, state, quote(plan), quote(trained))


def _secure(run: _Round, config_q, state, plan, job_run_id: str):
    sr = secure_open(config_q, state, quote(plan))
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
    dispatcher = make_dispatcher(config, state)
    # quote(): Prefect need not walk these objects to find upstream futures (there are none).
    config_q = quote(config)
    for name in dispatcher.settle():  # silo runs an interrupted coordinator left going must not write here
        reporter().note(f"ended flow run {name}, left by an interrupted round")
    plan = plan_round(config_q, state, round_number)
    run = _Round(dispatcher, config, round_number, state)
    closing = None
    try:
        run.start(plan)
        aggregated = AGGREGATION[config.aggregation.mode](run, config_q, state, plan, job_run_id)
        models = {"candidate": aggregated.global_ref}
        if plan.champion_ref is not None:
            models["champion"] = plan.champion_ref
        evaluated = run.phase("evaluate", list(plan.silos), models, "evaluate_phase_s")
        closing = run.close_soon()
    finally:
        if closing is None:
            run.close()
    try:
        log_validations(config_q, state, job_run_id, round_number, "evaluate", quote(evaluated))
        assessment = assess(config_q, state, quote(plan), quote(evaluated))

        training = aggregated.training
        train_compute = sum(training.train(s).compute_s for s in training.manifests)
        timings = {
            "started_at": started,
            **run.timings,
            "aggregate_s": aggregated.aggregate_s,
            "compute_s": train_compute + assessment.compute_s,
        }
        record = record_round(config_q, state, job_run_id, quote(plan), quote(aggregated), quote(assessment), timings)
    finally:
        failed = closing.exception()  # waits: the round is over once its silos' runs are
        if failed is not None:  # the round stands; the next round's settle() ends what is left
            get_run_logger().warning("round %d: ending the silos' runs failed: %s", round_number, describe_error(failed))
    reporter().round_done(record)
    return record
