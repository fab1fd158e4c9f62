"""A training job on the coordinator: its start (tracking opened, round 0 in the exchange, the job's
MLflow run) and its end (the champion and the failure, if any, on the run)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NONE

from fl_core.errors import StateError
from fl_core.messages import ObjectRef
from infra.config import FederationConfig
from infra.exchange import exchange_for
from infra.keystore import coordinator_identity
from infra.progress import reporter
from infra.provenance import code_version
from infra.state import StateDir
from infra.tracking import CHAMPION, TAG, tracker_for
from tasks.common import binding, record_header
from tasks.plan import read_record


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStart:
    job_run_id: str
    first_round: int
    last_round: int
    n_parameters: int


def _flatten_config(raw: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten_config(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def initial_model(config: FederationConfig):
    """Round 0's model, built from the config's seed (every party that builds it gets the same)."""
    from fl_core.models import build_model
    from fl_core.preprocess import FeatureEncoder
    from fl_core.seeding import derive_seed

    encoder = FeatureEncoder(config.contract.features)
    return build_model(config.model, encoder.n_outputs, seed=derive_seed(config.seed, "init"))


@task(name="start-job", task_run_name="start-job", cache_policy=NONE, persist_result=False)
def start_job(config: FederationConfig, state: StateDir, rounds: int | None) -> JobStart:
    """Open tracking, make sure round 0 (the initial model) exists, start the job's MLflow run."""
    tracker = tracker_for(config, state).open()
    exchange = exchange_for(config, state)
    policy = config.policy()  # a config the policy cannot serve stops here, before anything is written
    n_parameters = policy.n_parameters
    committed = exchange.committed_rounds()
    identity = coordinator_identity(state)
    if not committed:
        exchange.clear_uncommitted(0)
        from fl_core.params import flatten

        ref = exchange.put_vector(exchange.global_key(0), flatten(initial_model(config)),
                                  binding(config.federation, 0, "global"))
        exchange.put_signed_json(
            exchange.record_key(0),
            {"federation": config.federation, "round": 0, "kind": "initial", "global": ref.to_dict(),
             "config_hash": config.config_hash()},
            identity, record_header(config.federation, 0),
        )
        last = 0
    else:
        last = committed[-1]
        record = read_record(config, state, exchange, last)
        vector = exchange.get_vector(ObjectRef.from_dict(record["global"]))
        if vector.shape[0] != n_parameters:
            raise StateError(
                f"federation {config.federation}: the global model of round {last} has {vector.shape[0]} parameters, "
                f"this config's model has {n_parameters}; use a new state folder (FEDSILO_HOME) for a different model"
            )
    first = last + 1
    total = rounds if rounds is not None else config.training.rounds
    if total < 1:
        raise StateError(f"rounds must be >= 1, got {total}")
    tracker.ensure_registered_model(
        f"Federated model of federation '{config.federation}': one version per round, "
        f"'{CHAMPION}' = newest version that passed the fairness gate."
    )
    params = _flatten_config(config.model_dump(mode="json", exclude={"contract", "silos"}))
    params["silos"] = ",".join(config.silo_ids)
    params["contract.hash"] = config.contract.contract_hash()
    if policy.privacy is not None:
        params["aggregation.privacy.resolved_noise_multiplier"] = f"{policy.privacy.noise_multiplier:.6g}"
    job_run_id = tracker.start_job(
        name=f"{config.federation}/r{first:03d}-r{first + total - 1:03d}",
        params=params,
        tags={
            f"{TAG}federation": config.federation,
            f"{TAG}config_hash": config.config_hash(),
            f"{TAG}code_version": code_version(),
            f"{TAG}first_round": str(first),
            f"{TAG}planned_rounds": str(total),
        },
    )
    tracker.log_json(job_run_id, "federation.json", config.model_dump(mode="json"))
    if config.attack is not None:
        tracker.set_tags(job_run_id, {f"{TAG}attack": attack_tag(config)})
        reporter().note(f"EXPERIMENT: {attack_tag(config)}")
    return JobStart(job_run_id=job_run_id, first_round=first, last_round=first + total - 1, n_parameters=n_parameters)


@task(name="finish-job", task_run_name="finish-job", cache_policy=NONE, persist_result=False)
def finish_job(config: FederationConfig, state: StateDir, job_run_id: str, status: str, reason: str | None = None) -> None:
    tracker = tracker_for(config, state).open()
    champion = tracker.version_by_alias(CHAMPION)
    tags = {f"{TAG}champion_version": champion.version if champion else "none"}
    if reason:
        tags[f"{TAG}failure"] = reason
    tracker.set_tags(job_run_id, tags)
    tracker.end_run(job_run_id, status)


def attack_tag(config: FederationConfig) -> str:
    attack = config.attack
    return f"{', '.join(attack.silos)} ran the {attack.kind} attack named in the config (an experiment)"
