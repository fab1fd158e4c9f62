"""Tasks that run on the coordinator: plan a round, aggregate, assess, record.

The coordinator reads silos' artifacts only through the exchange, by reference and digest; what a
silo returns through Prefect is a JSON manifest, never an object to unpickle.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from fl_core.anomaly import reported, score_updates, streaks
from fl_core.dp.distributed import noise_rng
from fl_core.dp.fedavg import FixedDenominatorMean, GaussianNoised
from fl_core.errors import AggregationError, ConfigError, ExchangeError, HeadroomError, IntegrityError, StateError
from fl_core.evaluation import Metrics, pooled
from fl_core.gate import GateDecision, decide
from fl_core.models import build_model
from fl_core.params import count, flatten
from fl_core.preprocess import FeatureEncoder
from fl_core.quorum import require_quorum
from fl_core.secagg import crypto
from fl_core.seeding import derive_seed
from infra.config import FederationConfig
from infra.dispatch import SiloOutcome
from infra.exchange import ObjectRef, exchange_for
from infra.keystore import coordinator_identity
from infra.progress import reporter
from infra.provenance import code_version
from infra.roster import RosterStore, enrol_local, publish_coordinator
from infra.state import StateDir
from infra.tracking import CANDIDATE, CHAMPION, TAG, tracker_for
from tasks.common import binding, model_card, record_header
from tasks.privacy import SiloLevel, charge, refuse_if_over
from validation.summary import ValidationSummary


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStart:
    job_run_id: str
    first_round: int
    last_round: int
    n_parameters: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundPlan:
    round_number: int
    n_parameters: int
    global_ref: ObjectRef
    parent_version: str | None
    champion_version: str | None
    champion_round: int | None
    champion_ref: ObjectRef | None
    anomaly_streaks: dict[str, int] = field(default_factory=dict)  # consecutive flagged rounds, from round r - 1
    # the roster as the round took it: who is dispatched to, with which keys, and who is left out (and why)
    silos: tuple[str, ...] = ()
    absent: dict[str, str] = field(default_factory=dict)
    keys: dict[str, bytes] = field(default_factory=dict, repr=False)
    roster_version: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Participation:
    """Which silos answered a phase, which sat out and why, and their row-free summaries."""

    manifests: dict[str, dict]
    out: dict[str, str]
    validations: dict[str, dict] = field(default_factory=dict)

    @property
    def silos_in(self) -> list[str]:
        return sorted(self.manifests)


@dataclass(frozen=True, slots=True, kw_only=True)
class Aggregate:
    global_ref: ObjectRef
    training: Participation
    aggregate_s: float
    secure: dict | None = None  # secure aggregation's counts: masked, dropped, recovered, bytes per silo
    privacy: dict | None = None  # silo-level DP: ε spent, noise, clipping (see tasks.privacy.charge)
    spent: dict[str, dict] = field(default_factory=dict)  # record-level DP of every silo that trained, in the sum or not
    anomaly: dict | None = None  # per-update scores, flags, streaks (trusted mode with aggregation.anomaly)


@dataclass(frozen=True, slots=True, kw_only=True)
class Assessment:
    candidate: dict[str, Metrics]
    champion: dict[str, Metrics]
    evaluation: Participation
    pooled: dict[str, float]
    gate: GateDecision
    compute_s: float


def _flatten_config(raw: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten_config(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def _initial_model(config: FederationConfig):
    encoder = FeatureEncoder(config.contract.features)
    return build_model(config.model, encoder.n_outputs, seed=derive_seed(config.seed, "init"))


@task(name="start-job", cache_policy=NONE, persist_result=False)
def start_job(config: FederationConfig, state: StateDir, rounds: int | None) -> JobStart:
    """Open tracking, make sure round 0 (the initial model) exists, start the job's MLflow run."""
    tracker = tracker_for(config, state).open()
    exchange = exchange_for(config, state)
    model = _initial_model(config)
    n_parameters = count(model)
    committed = exchange.committed_rounds()
    identity = coordinator_identity(state)
    if not committed:
        exchange.clear_uncommitted(0)
        ref = exchange.put_vector(exchange.global_key(0), flatten(model), binding(config.federation, 0, "global"))
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
    level = SiloLevel.of(config, n_parameters)
    if level is not None and level.shares is not None:
        try:
            level.shares.check_headroom(len(config.silo_ids), config.aggregation.secure.bits)
        except HeadroomError as exc:
            raise ConfigError(f"aggregation.privacy: {exc}") from None
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
    if level is not None:
        params["aggregation.privacy.resolved_noise_multiplier"] = f"{level.noise_multiplier:.6g}"
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
        tracker.set_tags(job_run_id, {f"{TAG}attack": _attack_tag(config)})
        reporter().note(f"EXPERIMENT: {_attack_tag(config)}")
    return JobStart(job_run_id=job_run_id, first_round=first, last_round=first + total - 1, n_parameters=n_parameters)


@task(name="plan-round", cache_policy=NONE, persist_result=False)
def plan_round(config: FederationConfig, state: StateDir, round_number: int) -> RoundPlan:
    exchange = exchange_for(config, state)
    tracker = tracker_for(config, state).open()
    if exchange.clear_uncommitted(round_number):
        reporter().note(f"round {round_number}: cleared what an interrupted attempt left in the exchange")
    n_parameters = count(_initial_model(config))
    level = SiloLevel.of(config, n_parameters)
    if level is not None:  # the federation's budget: refuse before any silo trains
        refuse_if_over(config, state, level, round_number)
    previous = read_record(config, state, exchange, round_number - 1)
    roster = (enrol_local(config, state, exchange) if config.dispatch.mode == "in_process"
              else RosterStore(state, config.federation).load())
    publish_coordinator(exchange, coordinator_identity(state))
    silos, absent = roster.participants(config)
    for silo, why in absent.items():
        reporter().note(f"round {round_number}: {silo} sits out: {why}")
    champion = tracker.version_by_alias(CHAMPION)
    champion_ref = None
    if champion is not None and champion.round >= 0:
        try:
            champion_ref = ObjectRef.from_dict(read_record(config, state, exchange, champion.round)["global"])
        except IntegrityError:
            raise
        except ExchangeError:
            reporter().note(f"champion v{champion.version} (round {champion.round}) is not in this exchange; "
                            "the gate skips the regression check")
    return RoundPlan(
        round_number=round_number,
        n_parameters=n_parameters,
        global_ref=ObjectRef.from_dict(previous["global"]),
        parent_version=previous.get("version"),
        champion_version=champion.version if champion else None,
        champion_round=champion.round if champion else None,
        champion_ref=champion_ref,
        anomaly_streaks=(previous.get("anomaly") or {}).get("streaks", {}),
        silos=tuple(silos),
        absent=absent,
        keys={s: roster.members[s].public for s in silos},
        roster_version=roster.version,
    )


def read_record(config: FederationConfig, state: StateDir, exchange, round_number: int) -> dict:
    """Round `round_number`'s record, verified against the coordinator's signature."""
    public = crypto.identity_public(coordinator_identity(state))
    return exchange.read_signed_json(exchange.record_key(round_number), public,
                                     record_header(config.federation, round_number))


def privacy_spent(manifests: dict[str, dict]) -> dict[str, dict]:
    """The record-level DP report of every silo that trained: a silo that charged its ledger and
    then dropped out of the sum (or had its update rejected) still spent its ε."""
    return {s: m["privacy"] for s, m in manifests.items() if m.get("privacy")}


def sort_outcomes(outcomes: list[SiloOutcome], federation: str, round_number: int, phase: str) -> Participation:
    """Split a phase's outcomes into silos that delivered and silos that sat out (with reasons)."""
    manifests, out, validations = {}, {}, {}
    for outcome in outcomes:
        manifest = outcome.manifest
        if manifest is None:
            out[outcome.silo_id] = outcome.error or "no answer"
            continue
        if (manifest.get("federation"), manifest.get("round"), manifest.get("phase"), manifest.get("silo")) != (
            federation, round_number, phase, outcome.silo_id,
        ):
            out[outcome.silo_id] = "manifest bound to another federation, round, phase or silo"
            continue
        if manifest.get("validation") is not None:
            validations[outcome.silo_id] = manifest["validation"]
        if manifest.get("status") != "ok":
            out[outcome.silo_id] = manifest.get("reason") or "sat out"
            continue
        manifests[outcome.silo_id] = manifest
    return Participation(manifests=manifests, out=out, validations=validations)


@task(name="log-validations", cache_policy=NONE, persist_result=False)
def log_validations(
    config: FederationConfig, state: StateDir, job_run_id: str, round_number: int, phase: str, outcomes: list[SiloOutcome]
) -> None:
    """Log every silo's row-free validation summary for this phase to the job run, as soon as the
    phase ends (so a round that aborts later still leaves them)."""
    participation = sort_outcomes(outcomes, config.federation, round_number, phase)
    payload = {
        "round": round_number,
        "phase": phase,
        "summaries": participation.validations,
        "sat_out": participation.out,
    }
    tracker = tracker_for(config, state).open()
    tracker.log_json(job_run_id, f"validation/r{round_number:03d}-{phase}.json", payload)


@task(name="aggregate", cache_policy=NONE, persist_result=False)
def aggregate(config: FederationConfig, state: StateDir, plan: RoundPlan, outcomes: list[SiloOutcome]) -> Aggregate:
    """Check quorum, read and verify every update, take the FedAvg step, publish the new global model."""
    began = time.perf_counter()
    exchange = exchange_for(config, state)
    r = plan.round_number
    training = sort_outcomes(outcomes, config.federation, r, "train")
    spent = privacy_spent(training.manifests)
    require_quorum(training.silos_in, training.out, config.aggregation.min_silos, f"round {r} training")
    start = exchange.get_vector(plan.global_ref, expect={"federation": config.federation, "round": r - 1, "phase": "global"})
    deltas, weights, rejected = [], [], {}
    for silo in training.silos_in:
        manifest = training.manifests[silo]
        try:
            delta = exchange.get_vector(
                ObjectRef.from_dict(manifest["update"]),
                expect={"federation": config.federation, "round": r, "phase": "train", "silo": silo},
            )
            if delta.shape != start.shape:
                raise IntegrityError(f"update has {delta.shape[0]} values, the model {start.shape[0]}")
            n = int(manifest["n_samples"])
        except (ExchangeError, KeyError, TypeError, ValueError) as exc:
            rejected[silo] = f"update rejected: {exc}"
            continue
        deltas.append(delta)
        weights.append(n)
    if rejected:
        kept = {s: m for s, m in training.manifests.items() if s not in rejected}
        training = Participation(manifests=kept, out={**training.out, **rejected}, validations=training.validations)
        require_quorum(training.silos_in, training.out, config.aggregation.min_silos, f"round {r} training")
    level = SiloLevel.of(config, plan.n_parameters)
    privacy = anomaly = None
    if level is None:
        merge = config.aggregation.merge_rule()
        merged = merge(deltas, weights)
        if config.aggregation.anomaly is not None:
            anomaly, merged, excluded = score_merge(config, plan, training.silos_in, deltas, weights, merged, merge)
            if excluded:
                training = Participation(
                    manifests={s: m for s, m in training.manifests.items() if s not in excluded},
                    out={**training.out, **{s: f"excluded: anomalous update ({', '.join(anomaly['scores'][s]['flags'])})"
                                            for s in excluded}},
                    validations=training.validations,
                )
        new_global = config.aggregation.fedavg().apply(start, merged)
    else:
        # DP-FedAvg: clip each update, capped weights, Gaussian noise of std z·C on the weighted sum.
        capped = [level.weight(n) for n in weights]
        pairs = [level.clip(d) for d in deltas]
        clipped, fraction = [c for c, _ in pairs], sum(was for _, was in pairs) / len(pairs)
        noised = GaussianNoised(FixedDenominatorMean(sum(capped)), level.noise_multiplier, level.sensitivity,
                                sum(capped), noise_rng())
        new_global = config.aggregation.fedavg().apply(start, noised(clipped, capped))
        privacy = charge(config, state, level, r, level.event(), fraction)
    ref = exchange.put_vector(exchange.global_key(r), new_global, binding(config.federation, r, "global"))
    return Aggregate(global_ref=ref, training=training, aggregate_s=time.perf_counter() - began, privacy=privacy,
                     spent=spent, anomaly=anomaly)


def score_merge(config: FederationConfig, plan: RoundPlan, names: list[str], vectors, weights, merged, merge,
                members: dict[str, list[str]] | None = None):
    """Anomaly scores of this round's updates (trusted mode: `names` are silos) or bucket means
    (bucketed mode: `names` are buckets, `members` the silos summed in each) against the merged
    update; each silo's streak of flagged rounds (a silo in a flagged bucket counts as flagged),
    carried from the previous round's record through the plan; and — if the policy says so and
    quorum still holds — the merge redone without the flagged vectors. Returns (anomaly report,
    merged update, names left out of the merge)."""
    spec, r = config.aggregation.anomaly, plan.round_number
    scores = score_updates(dict(zip(names, vectors, strict=True)), merged, spec)
    per_silo = scores if members is None else {s: scores[name] for name, silos in members.items() for s in silos}
    counts = streaks(plan.anomaly_streaks, per_silo)
    flagged = sorted(name for name, score in scores.items() if score.flags)
    left = sum(len(members[name]) if members else 1 for name in names if name not in flagged)
    excluded = []
    if spec.exclude and flagged and left >= config.aggregation.min_silos:
        kept = [i for i, name in enumerate(names) if name not in flagged]
        try:
            merged = merge([vectors[i] for i in kept], [weights[i] for i in kept])
            excluded = flagged
        except AggregationError as exc:  # the rule cannot run on what is left: keep every vector
            get_run_logger().warning("round %d: flagged vectors kept in the merge: %s", r, exc)
    report = {"scores": {name: score.to_dict() for name, score in scores.items()}, "flagged": flagged,
              "streaks": counts, "reported": reported(counts, spec), "excluded": excluded}
    if members is not None:
        report["members"] = {name: list(silos) for name, silos in members.items()}
    logger = get_run_logger()
    what = "update" if members is None else "mean"
    for name in flagged:
        logger.warning("round %d: %s's %s is anomalous (%s)%s", r, name, what, ", ".join(scores[name].flags),
                       " and left out of the merge" if name in excluded else "")
    for silo in report["reported"]:
        where = "" if members is None else " (in a flagged bucket)"
        flags = f" ({', '.join(per_silo[silo].flags)})" if silo in per_silo else " (absent this round)"
        reporter().note(f"round {r}: {silo} flagged{where} {counts[silo]} rounds in a row{flags}")
    return report, merged, excluded


def _metrics(raw: dict) -> Metrics:
    return Metrics(
        n=int(raw["n"]), accuracy=float(raw["accuracy"]), roc_auc=float(raw["roc_auc"]), log_loss=float(raw["log_loss"])
    )


@task(name="assess", cache_policy=NONE, persist_result=False)
def assess(config: FederationConfig, state: StateDir, plan: RoundPlan, outcomes: list[SiloOutcome]) -> Assessment:
    """Read every silo's evaluation report, pool the metrics and run the fairness gate."""
    exchange = exchange_for(config, state)
    r = plan.round_number
    evaluation = sort_outcomes(outcomes, config.federation, r, "evaluate")
    candidate, champion, rejected, compute_s = {}, {}, {}, 0.0
    for silo, manifest in evaluation.manifests.items():
        try:
            report = exchange.get_json(ObjectRef.from_dict(manifest["report"]))
            if (report.get("federation"), report.get("round"), report.get("silo")) != (config.federation, r, silo):
                raise IntegrityError("report bound to another federation, round or silo")
            candidate[silo] = _metrics(report["metrics"]["candidate"])
            if "champion" in report["metrics"]:
                champion[silo] = _metrics(report["metrics"]["champion"])
            compute_s += float(manifest.get("compute_s", 0.0))
        except (ExchangeError, KeyError, TypeError, ValueError) as exc:
            rejected[silo] = f"evaluation rejected: {exc}"
    if rejected:
        evaluation = Participation(
            manifests={s: m for s, m in evaluation.manifests.items() if s not in rejected},
            out={**evaluation.out, **rejected}, validations=evaluation.validations,
        )
    require_quorum(evaluation.silos_in, evaluation.out, config.aggregation.min_silos, f"round {r} evaluation")
    metric = config.gate.metric
    gate = decide(
        {s: m.get(metric) for s, m in candidate.items()},
        {s: m.get(metric) for s, m in champion.items()} if plan.champion_ref is not None else None,
        config.gate,
    )
    return Assessment(
        candidate=candidate, champion=champion, evaluation=evaluation, pooled=pooled(candidate), gate=gate,
        compute_s=compute_s,
    )


def _round_metrics(aggregated: Aggregate, assessment: Assessment, timings: dict[str, float]) -> dict[str, float]:
    metrics: dict[str, float] = {f"global.{k}": v for k, v in assessment.pooled.items()}
    for silo, m in assessment.candidate.items():
        for name in ("accuracy", "roc_auc", "log_loss"):
            metrics[f"silo.{silo}.{name}"] = m.get(name)
    for silo, manifest in aggregated.training.manifests.items():
        metrics[f"silo.{silo}.train_loss"] = float(manifest["train_loss"])
        metrics[f"silo.{silo}.n_train"] = float(manifest["n_samples"])
    for silo, privacy in aggregated.spent.items():
        for name in ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "clipped_fraction"):
            metrics[f"dp.silo.{silo}.{name}"] = float(privacy[name])
    if aggregated.privacy is not None:  # silo level
        for name in ("epsilon", "delta", "noise_multiplier", "clip_norm", "clipped_fraction", "noise_shares"):
            if name in aggregated.privacy:
                metrics[f"dp.{name}"] = float(aggregated.privacy[name])
    if aggregated.anomaly is not None:
        report = aggregated.anomaly
        for silo, score in report["scores"].items():
            for name in ("norm", "cosine", "distance", "norm_z", "distance_z"):
                if score[name] is not None:
                    metrics[f"anomaly.{silo}.{name}"] = float(score[name])
            metrics[f"anomaly.{silo}.flagged"] = 1.0 if score["flags"] else 0.0
        metrics["anomaly.flagged"] = float(len(report["flagged"]))
        metrics["anomaly.reported"] = float(len(report["reported"]))
        metrics["anomaly.excluded"] = float(len(report["excluded"]))
    metrics["silos.in"] = float(len(aggregated.training.silos_in))
    metrics["silos.out"] = float(len(aggregated.training.out))
    if aggregated.secure is not None:
        stats = aggregated.secure
        metrics["secagg.masked"] = float(stats["masked"])
        metrics["secagg.dropped"] = float(stats["dropped"])
        metrics["secagg.recovered"] = float(stats["recovered"])
        metrics["secagg.clipped"] = float(len(stats["clipped"]))
        if "buckets" in stats:
            metrics["secagg.buckets"] = float(len(stats["buckets"]))
            metrics["secagg.buckets_lost"] = float(len(stats["lost"]))
        for silo, sent in stats["bytes"].items():
            metrics[f"secagg.bytes.{silo}"] = float(sent)
    metrics["gate.passed"] = 1.0 if assessment.gate.passed else 0.0
    for check in assessment.gate.checks:
        metrics[f"gate.{check.name}"] = check.value
    metrics.update({f"time.{k}": v for k, v in timings.items()})
    return metrics


def _gate_json(gate: GateDecision) -> dict:
    return {
        "passed": gate.passed,
        "metric": gate.metric,
        "summary": gate.summary(),
        "undefined": list(gate.undefined),
        "checks": [asdict(c) for c in gate.checks],
    }


def _attack_tag(config: FederationConfig) -> str:
    attack = config.attack
    return f"{', '.join(attack.silos)} ran the {attack.kind} attack named in the config (an experiment)"


def _dp_tag(what: str, p: dict, clip: str) -> str:
    return (f"{what}: epsilon {p['epsilon']:.4f} of {p['budget']:g} spent, delta {p['delta']:g}, noise multiplier "
            f"{p['noise_multiplier']:.4f}, clip {p[clip]:g}, {p['accountant']} accountant")


def _lineage_tags(
    config: FederationConfig, plan: RoundPlan, aggregated: Aggregate, gate: GateDecision, fingerprints: dict, job_run_id: str
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
        lineage[f"{TAG}attack"] = _attack_tag(config)
    for silo, manifest in aggregated.training.manifests.items():
        if manifest.get("privacy"):
            lineage[f"{TAG}dp.{silo}"] = _dp_tag("record-level DP-SGD", manifest["privacy"], "max_grad_norm")
    if aggregated.privacy is not None:
        p = aggregated.privacy
        lineage[f"{TAG}dp.federation"] = _dp_tag(f"silo-level DP-FedAvg, {p['placement']} noise", p, "clip_norm") + (
            f", {p['noise_shares']} noise shares" if "noise_shares" in p else ""
        )
    if aggregated.anomaly is not None:
        report = aggregated.anomaly
        lineage[f"{TAG}anomaly"] = (
            f"flagged {','.join(report['flagged']) or 'none'}; excluded {','.join(report['excluded']) or 'none'}; "
            f"reported {','.join(report['reported']) or 'none'}"
        )
    if aggregated.secure is not None:
        stats = aggregated.secure
        threshold = stats["threshold"]
        lineage[f"{TAG}secagg"] = (
            f"threshold {threshold if isinstance(threshold, int) else 'per bucket'}, masked {stats['masked']}, "
            f"dropped {stats['dropped']}, recovered {','.join(stats['recovered_silos']) or 'none'}"
        )
        if "buckets" in stats:  # which silos were summed together, and which buckets were lost
            lineage[f"{TAG}buckets"] = "; ".join(
                [f"{name}: {','.join(b['summed'])} of {','.join(b['silos'])} (threshold {b['threshold']})"
                 for name, b in stats["buckets"].items()] + [f"lost {why}" for why in stats["lost"].values()]
            )
    for check in gate.checks:
        lineage[f"{TAG}gate.{check.name}"] = f"{'pass' if check.passed else 'FAIL'}: {check.detail}"
    for silo, fp in fingerprints.items():
        lineage[f"{TAG}data.{silo}"] = json.dumps(fp, sort_keys=True)
    return lineage


@task(name="record-round", cache_policy=NONE, persist_result=False)
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
        "parent_round": r - 1,
        "parent_version": plan.parent_version,
        "roster_version": plan.roster_version,
        "silos_in": training.silos_in,
        "silos_out": training.out,
        "evaluated": assessment.evaluation.silos_in,
        "evaluation_out": assessment.evaluation.out,
        "train": {
            s: {k: m[k] for k in ("n_samples", "steps", "train_loss")} for s, m in training.manifests.items()
        },
        "privacy": aggregated.spent,  # every silo that trained, in the sum or not
        "federation_privacy": aggregated.privacy,
        "anomaly": aggregated.anomaly,
        "metrics": {s: m.to_dict() for s, m in assessment.candidate.items()},
        "champion_metrics": {s: m.to_dict() for s, m in assessment.champion.items()},
        "champion_version_before": plan.champion_version,
        "pooled": assessment.pooled,
        "secure": aggregated.secure,
        "gate": _gate_json(gate),
        "data": fingerprints,
        "config_hash": config.config_hash(),
        "code_version": code_version(),
    }
    lineage = _lineage_tags(config, plan, aggregated, gate, fingerprints, job_run_id)

    round_run = tracker.start_round(
        job_run_id, r, name=f"{config.federation}/r{r:03d}",
        tags={f"{TAG}gate": lineage[f"{TAG}gate"], f"{TAG}silos_in": lineage[f"{TAG}silos_in"]},
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
        metrics = _round_metrics(aggregated, assessment, timings)
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


@task(name="finish-job", cache_policy=NONE, persist_result=False)
def finish_job(config: FederationConfig, state: StateDir, job_run_id: str, status: str, reason: str | None = None) -> None:
    tracker = tracker_for(config, state).open()
    champion = tracker.version_by_alias(CHAMPION)
    tags = {f"{TAG}champion_version": champion.version if champion else "none"}
    if reason:
        tags[f"{TAG}failure"] = reason
    tracker.set_tags(job_run_id, tags)
    tracker.end_run(job_run_id, status)
