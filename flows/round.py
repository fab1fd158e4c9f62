"""The round flow: dispatch training to every silo, aggregate, evaluate on every holdout, record."""

from __future__ import annotations

import time

from prefect import flow
from prefect.utilities.annotations import quote

from flows.silo import silo_flow
from infra.config import load_config
from infra.dispatch import Dispatcher, InProcessDispatcher, SiloCall, SiloOutcome
from infra.progress import reporter
from infra.state import resolve_state_dir
from tasks.coordinator import aggregate, assess, log_validations, plan_round, record_round


def make_dispatcher() -> Dispatcher:
    return InProcessDispatcher(silo_flow)


def _phase(dispatcher: Dispatcher, config, config_path: str, round_number: int, phase: str, models: dict) -> list[SiloOutcome]:
    reporter().phase_started(round_number, phase, config.silo_ids)
    calls = [
        SiloCall(
            silo_id=silo,
            parameters={
                "federation": config.federation, "silo_id": silo, "round_number": round_number,
                "phase": phase, "models": models, "config_path": config_path,
            },
        )
        for silo in config.silo_ids
    ]

    def done(outcome: SiloOutcome) -> None:
        manifest = outcome.manifest or {}
        ok = manifest.get("status") == "ok"
        reporter().silo_done(round_number, phase, outcome.silo_id, ok, manifest.get("reason") or outcome.error or "")

    return dispatcher.run(calls, on_done=done)


@flow(name="round", flow_run_name="{federation}/r{round_number:03d}", persist_result=False, log_prints=False)
def round_flow(federation: str, round_number: int, config_path: str, job_run_id: str) -> dict:
    started = time.time()
    config = load_config(config_path)
    state = resolve_state_dir()
    dispatcher = make_dispatcher()
    # quote(): Prefect need not walk these objects to find upstream futures (there are none).
    config_q = quote(config)
    plan = plan_round(config_q, state, round_number)

    t0 = time.perf_counter()
    trained = _phase(dispatcher, config, config_path, round_number, "train", {"global": plan.global_ref.to_dict()})
    train_phase_s = time.perf_counter() - t0
    log_validations(config_q, state, job_run_id, round_number, "train", quote(trained))
    aggregated = aggregate(config_q, state, quote(plan), quote(trained))

    models = {"candidate": aggregated.global_ref.to_dict()}
    if plan.champion_ref is not None:
        models["champion"] = plan.champion_ref.to_dict()
    t0 = time.perf_counter()
    evaluated = _phase(dispatcher, config, config_path, round_number, "evaluate", models)
    evaluate_phase_s = time.perf_counter() - t0
    log_validations(config_q, state, job_run_id, round_number, "evaluate", quote(evaluated))
    assessment = assess(config_q, state, quote(plan), quote(evaluated))

    train_compute = sum(m.get("compute_s", 0.0) for m in aggregated.training.manifests.values())
    timings = {
        "started_at": started,
        "train_phase_s": train_phase_s,
        "evaluate_phase_s": evaluate_phase_s,
        "aggregate_s": aggregated.aggregate_s,
        "compute_s": train_compute + assessment.compute_s,
    }
    record = record_round(config_q, state, job_run_id, quote(plan), quote(aggregated), quote(assessment), timings)
    reporter().round_done(record)
    return record

