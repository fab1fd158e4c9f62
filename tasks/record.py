"""Recording a round on the coordinator: its metrics and lineage in MLflow, its model version and
aliases, and — last — its signed record in the exchange (the commit). The metric names and tags of
each report come from the report itself (`fl_core.messages`)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping

from prefect import task
from prefect.cache_policies import NONE

from fl_core.evaluation import pooled
from fl_core.gate import GateDecision, GroupSummary
from fl_core.messages import GateIntervals
from fl_core.sampling import SiloSample
from infra.config import FederationConfig
from infra.exchange import exchange_for
from infra.keystore import coordinator_identity
from infra.provenance import code_version
from infra.state import StateDir
from infra.tracking import CANDIDATE, CHAMPION, TAG, tracker_for
from tasks.aggregate import Aggregate
from tasks.common import model_card, record_header
from tasks.gate import Assessment, gate_json
from tasks.job import attack_tag
from tasks.participation import sort_outcomes
from tasks.plan import RoundPlan
from validation.summary import ValidationSummary


def round_metrics(aggregated: Aggregate, assessment: Assessment, timings: Mapping[str, float],
                  sample: SiloSample | None = None) -> dict[str, float]:
    """Every metric of a round, as the job run and the round run log it (step = round); with silo
    sampling, how many of how many eligible silos were drawn to train (`silos.sampled`, ...)."""
    metrics: dict[str, float] = {f"global.{k}": v for k, v in assessment.pooled.items()}
    for silo, m in assessment.candidate.items():
        for name in ("accuracy", "roc_auc", "log_loss"):
            metrics[f"silo.{silo}.{name}"] = m.get(name)
    for silo, m in assessment.personalised.items():  # the silo's fine-tuned candidate, on its own holdout
        for name in ("accuracy", "roc_auc", "log_loss"):
            metrics[f"silo.{silo}.personalised.{name}"] = m.get(name)
    if assessment.personalised:
        metrics.update({f"personalised.{k}": v for k, v in pooled(assessment.personalised).items()})
    training = aggregated.training
    for silo in training.manifests:
        metrics.update(training.train(silo).metrics(silo))
    for silo, release in aggregated.spent.items():
        metrics.update(release.metrics(silo))
    if aggregated.privacy is not None:  # silo level
        metrics.update(aggregated.privacy.metrics())
    if aggregated.anomaly is not None:
        metrics.update(aggregated.anomaly.metrics())
    metrics["silos.in"] = float(len(training.silos_in))
    metrics["silos.out"] = float(len(training.out))
    if sample is not None:
        metrics.update(sample.metrics())
    if aggregated.secure is not None:
        metrics.update(aggregated.secure.metrics())
    metrics["gate.passed"] = 1.0 if assessment.gate.passed else 0.0
    for check in assessment.gate.checks:
        metrics[f"gate.{check.name}"] = check.value
    if assessment.gate.groups is not None:  # each silo's own differences (NaN, i.e. not logged, where withheld)
        for silo, d in assessment.gate.groups.silos.items():
            metrics[f"silo.{silo}.parity"] = d.parity
            metrics[f"silo.{silo}.odds"] = d.odds
    metrics.update({f"time.{k}": v for k, v in timings.items()})
    return metrics


def intervals_tag(intervals: Mapping[str, GateIntervals], limit: int = 4000) -> str:
    """Each silo's interval of the gate's metric and of its gain over the champion, on one line
    (cut at `limit` characters; the round's gate.json artifact has them all)."""
    first = next(iter(intervals.values()))
    parts = []
    for silo, i in sorted(intervals.items()):
        c = i.candidate
        text = f"{silo} {c.estimate:.3f} [{c.low:.3f}, {c.high:.3f}]"
        if i.gain is not None:
            g = i.gain
            text += f" gain {g.estimate:+.3f} [{g.low:+.3f}, {g.high:+.3f}]"
        parts.append(text)
    line = f"{first.metric} at {first.confidence:.0%}: " + "; ".join(parts)
    return line if len(line) <= limit else line[:limit - 30] + " … (all in gate.json)"


def groups_tag(groups: GroupSummary, limit: int = 4000) -> str:
    """The group checks' numbers on one line: the federation's rates per group (from the summed
    counts), then each silo's differences, reported rows per group and withheld groups (cut at
    `limit` characters; the round's gate.json artifact has every count)."""

    def number(value: float) -> str:
        return "—" if math.isnan(value) else f"{value:.3f}"

    def rates(counts, d) -> str:
        return ", ".join(f"{g} n={c.n} positive rate {number(d.rates[g]['selection'])} TPR {number(d.rates[g]['tpr'])} "
                         f"FPR {number(d.rates[g]['fpr'])}" for g, c in counts.items())

    f = groups.federation
    parts = [f"{groups.column} at p >= {groups.threshold:g}, groups under {groups.min_group_size} rows withheld: "
             f"federation parity {number(f.parity)} odds {number(f.odds)} ({rates(groups.counts, f) or 'no groups'})"]
    for silo, d in sorted(groups.silos.items()):
        counts = groups.silo_counts[silo]
        withheld = groups.suppressed.get(silo, 0)
        text = f"{silo} parity {number(d.parity)} odds {number(d.odds)}"
        text += f" ({', '.join(f'{g} n={c.n}' for g, c in counts.items())})" if counts else ""
        text += f", {withheld} withheld" if withheld else ""
        parts.append(text)
    line = "; ".join(parts)
    return line if len(line) <= limit else line[:limit - 30] + " … (all in gate.json)"


def sample_tags(sample: SiloSample | None) -> dict[str, str]:
    """The round's draw of trainers as tags (none without ``aggregation.silos_per_round``)."""
    if sample is None:
        return {}
    return {f"{TAG}sampled": ",".join(sample.sampled) or "none", f"{TAG}sample": f"{sample.k} of {sample.n}",
            f"{TAG}sample_rate": f"{sample.rate:.6g}"}


def lineage_tags(
    config: FederationConfig, plan: RoundPlan, aggregated: Aggregate, gate: GateDecision, fingerprints: dict,
    job_run_id: str, intervals: Mapping[str, GateIntervals] | None = None,
) -> dict[str, str]:
    """The tags a model version carries so that an auditor can trace it: where it came from (parent
    version, exchange object and digest), what went in (silos, data fingerprints, config and code
    versions) and why it was or was not promoted."""
    training = aggregated.training
    lineage = {
        f"{TAG}federation": config.federation,
        f"{TAG}round": str(plan.round_number),
        f"{TAG}parent_version": plan.parent_version or "none",
        f"{TAG}silos_in": ",".join(training.silos_in),
        f"{TAG}silos_out": json.dumps(training.out, sort_keys=True) if training.out else "none",
        f"{TAG}roster_version": str(plan.roster_version),
        **sample_tags(plan.sample),
        f"{TAG}config_hash": config.config_hash(),
        f"{TAG}contract_hash": config.contract.contract_hash(),
        f"{TAG}code_version": code_version(),
        f"{TAG}aggregation": f"{config.aggregation.mode}/{config.aggregation.rule}"
        + (f" {json.dumps(config.aggregation.robust, sort_keys=True)}" if config.aggregation.robust else ""),
        f"{TAG}global_sha256": aggregated.global_ref.sha256,
        f"{TAG}exchange_key": aggregated.global_ref.key,
        f"{TAG}job_run_id": job_run_id,
        f"{TAG}gate": "passed" if gate.passed else "failed",
        f"{TAG}gate.metric": gate.metric,
        f"{TAG}gate.summary": gate.summary(),
    }
    if config.attack is not None:
        lineage[f"{TAG}attack"] = attack_tag(config)
    for silo in training.manifests:
        release = training.train(silo).privacy
        if release is not None:
            lineage[f"{TAG}dp.{silo}"] = release.describe()
    if aggregated.privacy is not None:
        lineage[f"{TAG}dp.federation"] = aggregated.privacy.describe()
    if aggregated.anomaly is not None:
        lineage[f"{TAG}anomaly"] = aggregated.anomaly.describe()
    if aggregated.secure is not None:
        lineage.update(aggregated.secure.tags(TAG))
    for check in gate.checks:
        lineage[f"{TAG}gate.{check.name}"] = f"{'pass' if check.passed else 'FAIL'}: {check.detail}"
    if intervals:
        lineage[f"{TAG}gate.intervals"] = intervals_tag(intervals)
    if gate.groups is not None:
        lineage[f"{TAG}gate.groups"] = groups_tag(gate.groups)
    for silo, fp in fingerprints.items():
        lineage[f"{TAG}data.{silo}"] = json.dumps(fp, sort_keys=True)
    return lineage


@task(name="register", task_run_name="register", cache_policy=NONE, persist_result=False)
def record_round(
    config: FederationConfig,
    state: StateDir,
    job_run_id: str,
    plan: RoundPlan,
    aggregated: Aggregate,
    assessment: Assessment,
    timings: dict[str, float],
) -> dict:
    """Log the round to MLflow, register its model version with lineage, apply the gate, commit."""
    exchange = exchange_for(config, state)
    tracker = tracker_for(config, state).open()
    r = plan.round_number
    gate = assessment.gate
    training = aggregated.training
    fingerprints = {}
    for silo, summary in {**assessment.evaluation.validations, **training.validations}.items():
        fingerprints[silo] = ValidationSummary.from_dict(summary).fingerprint()
    record = {
        "federation": config.federation,
        "round": r,
        "kind": "round",
        "global": aggregated.global_ref.to_dict(),
        "server": aggregated.server_ref.to_dict() if aggregated.server_ref is not None else None,
        "parent_round": r - 1,
        "parent_version": plan.parent_version,
        "roster_version": plan.roster_version,
        "silos_in": training.silos_in,
        "silos_out": training.out,  # trainers that sat out or dropped; silos not sampled are in "sample"
        "sample": plan.sample.to_dict() if plan.sample is not None else None,
        "evaluated": assessment.evaluation.silos_in,
        "evaluation_out": assessment.evaluation.out,
        "train": {
            s: {"n_samples": t.n_samples, "steps": t.steps, "train_loss": t.train_loss,
                **({"planned_steps": t.planned_steps} if t.planned_steps is not None else {}),
                **({"weight": t.weight} if t.weight is not None else {})}
            for s, t in ((s, training.train(s)) for s in training.manifests)
        },
        "privacy": {s: p.to_dict() for s, p in aggregated.spent.items()},  # every silo that trained, in the sum or not
        "federation_privacy": aggregated.privacy.to_dict() if aggregated.privacy is not None else None,
        "anomaly": aggregated.anomaly.to_dict() if aggregated.anomaly is not None else None,
        "metrics": {s: m.to_dict() for s, m in assessment.candidate.items()},
        "champion_metrics": {s: m.to_dict() for s, m in assessment.champion.items()},
        "personalised_metrics": {s: m.to_dict() for s, m in assessment.personalised.items()},
        "champion_version_before": plan.champion_version,
        "pooled": assessment.pooled,
        "secure": aggregated.secure.to_dict() if aggregated.secure is not None else None,
        "gate": gate_json(gate, assessment.intervals),
        "data": fingerprints,
        "config_hash": config.config_hash(),
        "code_version": code_version(),
    }
    lineage = lineage_tags(config, plan, aggregated, gate, fingerprints, job_run_id, assessment.intervals)

    round_run = tracker.start_round(
        job_run_id, r, name=f"{config.federation}/r{r:03d}",
        tags={f"{TAG}gate": lineage[f"{TAG}gate"], f"{TAG}silos_in": lineage[f"{TAG}silos_in"],
              **sample_tags(plan.sample)},
    )
    try:
        tracker.log_json(round_run, "gate.json", record["gate"])
        existing = tracker.version_for_round(r)
        if existing is not None:
            version = existing.version  # registered by an interrupted attempt: never register a round twice
        else:
            vector = exchange.get_vector(aggregated.global_ref)
            version = tracker.register_round_model(
                round_run, r, vector, model_card(config.contract, config.model, config.federation, r), lineage,
            )
        tracker.set_alias(CANDIDATE, version)
        if gate.passed:
            tracker.set_alias(CHAMPION, version)
        record["version"] = version
        record["promoted"] = gate.passed
        record["champion_version"] = version if gate.passed else plan.champion_version
        timings = {k: v for k, v in timings.items() if k != "started_at"} | {"round_s": time.time() - timings["started_at"]}
        record["timings"] = timings
        metrics = round_metrics(aggregated, assessment, timings, plan.sample)
        tracker.log_metrics(job_run_id, metrics, step=r)
        tracker.log_metrics(round_run, metrics, step=r)
        tracker.set_tags(round_run, {f"{TAG}version": version})
        tracker.log_json(round_run, "round.json", record)
    except BaseException:
        tracker.end_run(round_run, "FAILED")
        raise
    tracker.end_run(round_run, "FINISHED")
    exchange.put_signed_json(exchange.record_key(r), record, coordinator_identity(state),
                             record_header(config.federation, r))
    return record


@task(name="log-validations", task_run_name="log-validations", cache_policy=NONE, persist_result=False)
def log_validations(config: FederationConfig, state: StateDir, job_run_id: str, round_number: int, phase: str,
                    outcomes: list) -> None:
    """Log every silo's row-free validation summary for this phase to the job run, as soon as the
    phase ends (so a round that aborts later still leaves them)."""
    participation = sort_outcomes(outcomes)
    payload = {"round": round_number, "phase": phase, "summaries": dict(participation.validations),
               "sat_out": dict(participation.out)}
    tracker_for(config, state).open().log_json(job_run_id, f"validation/r{round_number:03d}-{phase}.json", payload)
