"""Aggregation on the coordinator: what a round's aggregation produced (`Aggregate`), the trusted
merge of single updates (`merge`), and the anomaly report's log lines. The secure path, which sees
only sums, is `tasks.secure_coordinator`; both call the round's policy (`fl_core.round_policy`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from fl_core.dp.distributed import noise_rng
from fl_core.errors import ExchangeError, IntegrityError
from fl_core.messages import AnomalyReport, FederationPrivacy, ObjectRef, PrivacyRelease, SecAggStats
from fl_core.quorum import require_quorum
from fl_core.round_policy import Contribution, Merged
from fl_core.server_opt import ServerState
from infra.config import FederationConfig
from infra.exchange import exchange_for
from infra.progress import reporter
from infra.state import StateDir
from tasks.common import binding, read_server_state
from tasks.participation import Participation, privacy_spent, sort_outcomes
from tasks.plan import RoundPlan
from tasks.privacy import charge


@dataclass(frozen=True, slots=True, kw_only=True)
class Aggregate:
    global_ref: ObjectRef
    server_ref: ObjectRef | None = None  # the server optimiser's state after this round, if it keeps one
    training: Participation  # the silos in the merge, and every other with its reason
    aggregate_s: float
    secure: SecAggStats | None = None
    privacy: FederationPrivacy | None = None  # silo-level DP
    spent: Mapping[str, PrivacyRelease] = field(default_factory=dict)  # record-level DP of every silo that trained
    anomaly: AnomalyReport | None = None


def load_server_state(config: FederationConfig, exchange, plan: RoundPlan) -> ServerState:
    """The server's state after round r - 1 (empty before the first step, or for a stateless server)."""
    if plan.server_ref is None:
        return ServerState()
    return read_server_state(exchange, config.federation, plan.server_ref, plan.round_number - 1,
                             config.policy().n_parameters)


def server_step(config: FederationConfig, exchange, plan: RoundPlan, start, merged: Merged,
                silos_in) -> tuple[ObjectRef, ObjectRef | None]:
    """The server's step: publish round r's global model and, if the server keeps one, its new state."""
    policy = config.policy()
    r = plan.round_number
    new_global, state = policy.step(start, merged, load_server_state(config, exchange, plan), r, list(silos_in))
    server_ref = None
    if policy.stateful:
        vector, meta = state.flat()
        server_ref = exchange.put_vector(exchange.server_key(r), vector, binding(config.federation, r, "server", **meta))
    ref = exchange.put_vector(exchange.global_key(r), new_global, binding(config.federation, r, "global"))
    return ref, server_ref


def log_anomaly(round_number: int, merged: Merged, per_silo: bool) -> None:
    """Warn about every flagged update (or bucket mean), and report the silos flagged k rounds in a row."""
    report = merged.anomaly
    if report is None:
        return
    logger = get_run_logger()
    what = "update" if per_silo else "mean"
    for name in report.flagged:
        logger.warning("round %d: %s's %s is anomalous (%s)%s", round_number, name, what,
                       ", ".join(report.scores[name]["flags"]), " and left out of the merge" if name in merged.excluded else "")
    by_silo = {s: name for name, silos in (report.members or {}).items() for s in silos}
    for silo in report.reported:
        name = silo if per_silo else by_silo.get(silo)
        where = "" if per_silo else " (in a flagged bucket)"
        flags = f" ({', '.join(report.scores[name]['flags'])})" if name in report.scores else " (absent this round)"
        reporter().note(f"round {round_number}: {silo} flagged{where} {report.streaks[silo]} rounds in a row{flags}")


def excluded_reasons(merged: Merged) -> dict[str, str]:
    """Why each silo left out of the merge by the anomaly screen is out."""
    report = merged.anomaly
    if report is None or not merged.excluded:
        return {}
    members = report.members or {}
    reasons = {}
    for name in merged.excluded:
        flags = ", ".join(report.scores[name]["flags"])
        for silo in members.get(name, (name,)):
            reasons[silo] = (f"excluded: anomalous update ({flags})" if not members
                             else f"excluded: {name}'s mean is anomalous ({flags})")
    return reasons


@task(name="merge", task_run_name="merge", cache_policy=NONE, persist_result=False)
def merge(config: FederationConfig, state: StateDir, plan: RoundPlan, outcomes: list) -> Aggregate:
    """Trusted mode: check quorum, read and verify every update, merge them by the round's policy (the
    rule, anomaly screening, DP-FedAvg), take the server step, publish the new global model."""
    began = time.perf_counter()
    exchange = exchange_for(config, state)
    policy = config.policy()
    r = plan.round_number
    training = sort_outcomes(outcomes)
    spent = privacy_spent(training)
    require_quorum(training.silos_in, training.out, policy.min_silos, f"round {r} training")
    start = exchange.get_vector(plan.global_ref, expect={"federation": config.federation, "round": r - 1, "phase": "global"})
    inputs, rejected = [], {}
    for silo in training.silos_in:
        result = training.train(silo)
        try:
            if result.update is None:
                raise IntegrityError("the manifest names no update")
            delta = exchange.get_vector(result.update,
                                        expect={"federation": config.federation, "round": r, "phase": "train", "silo": silo})
            if delta.shape != (policy.update_length,):
                raise IntegrityError(f"update has {delta.shape[0]} values, the round's updates {policy.update_length}")
        except ExchangeError as exc:
            rejected[silo] = f"update rejected: {exc}"
            continue
        inputs.append(Contribution(name=silo, vector=delta, weight=result.aggregation_weight, members=(silo,)))
    if rejected:
        training = training.without(rejected)
        require_quorum(training.silos_in, training.out, policy.min_silos, f"round {r} training")
    merged = policy.merge(inputs, plan.anomaly_streaks, noise_rng(), plan.sample_rate)
    log_anomaly(r, merged, per_silo=True)
    training = training.without(excluded_reasons(merged))
    ref, server_ref = server_step(config, exchange, plan, start, merged, training.silos_in)
    privacy = None
    if merged.release is not None:
        privacy = charge(config, state, policy.privacy, r, merged.release, merged.clipped_fraction or 0.0)
    return Aggregate(global_ref=ref, server_ref=server_ref, training=training, aggregate_s=time.perf_counter() - began, privacy=privacy,
                     spent=spent, anomaly=merged.anomaly)
