"""The training flow: a job of several rounds, each registered and gated."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from fl_core.errors import FedsiloError
from flows.round import phases_per_round, round_flow
from infra.config import load_config
from infra.progress import reporter
from infra.state import ensure_state_dir, resolve_state_dir
from tasks.job import finish_job, start_job


def job_run_name() -> str:
    config = load_config(flow_run.parameters["config_path"])
    return f"{config.federation}/job"


@flow(name="training", flow_run_name=job_run_name, persist_result=False, log_prints=False)
def training_flow(config_path: str, rounds: int | None = None) -> dict:
    config = load_config(config_path)
    state = ensure_state_dir(resolve_state_dir())
    job = start_job(quote(config), state, rounds)
    reporter().job_started(
        config.federation, job.first_round, job.last_round, config.silo_ids, phases_per_round(config.aggregation.mode),
        config.aggregation.silos_per_round,
    )
    records = []
    try:
        for round_number in range(job.first_round, job.last_round + 1):
            records.append(round_flow(config.federation, round_number, config_path, job.job_run_id))
    except FedsiloError as exc:
        finish_job(quote(config), state, job.job_run_id, "FAILED", reason=str(exc))
        raise
    except BaseException:
        finish_job(quote(config), state, job.job_run_id, "KILLED", reason="interrupted")
        raise
    finish_job(quote(config), state, job.job_run_id, "FINISHED")
    return {"federation": config.federation, "job_run_id": job.job_run_id, "rounds": records}
