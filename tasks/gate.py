"""The fairness gate on the coordinator: read every silo's evaluation report, pool the metrics, decide."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from prefect import task
from prefect.cache_policies import NONE

from fl_core.errors import ExchangeError, IntegrityError
from fl_core.evaluation import Metrics, pooled
from fl_core.gate import GateDecision, decide
from fl_core.messages import EvaluateResult, EvaluationReport, GateIntervals
from fl_core.quorum import require_quorum
from infra.config import FederationConfig
from infra.exchange import exchange_for
from infra.state import StateDir
from tasks.participation import Participation, sort_outcomes
from tasks.plan import RoundPlan


@dataclass(frozen=True, slots=True, kw_only=True)
class Assessment:
    candidate: Mapping[str, Metrics]
    champion: Mapping[str, Metrics]
    evaluation: Participation
    pooled: Mapping[str, float]
    gate: GateDecision
    compute_s: float
    intervals: Mapping[str, GateIntervals] = field(default_factory=dict)  # each silo's, of the gate's metric
    personalised: Mapping[str, Metrics] = field(default_factory=dict)  # each silo's own fine-tuned candidate


def _metrics(raw: Mapping[str, float]) -> Metrics:
    try:
        return Metrics(n=int(raw["n"]), accuracy=float(raw["accuracy"]), roc_auc=float(raw["roc_auc"]),
                       log_loss=float(raw["log_loss"]))
    except KeyError as exc:
        raise IntegrityError(f"the report lacks the metric {exc}") from None


def gate_json(gate: GateDecision, intervals: Mapping[str, GateIntervals] | None = None) -> dict:
    """The decision with every number it used: the checks (with their intervals), each silo's
    intervals and, with group checks, every silo's reported group counts and the federation's."""
    out = {"passed": gate.passed, "metric": gate.metric, "summary": gate.summary(), "undefined": list(gate.undefined),
           "checks": [asdict(c) for c in gate.checks]}
    if intervals:
        out["intervals"] = {silo: i.to_dict() for silo, i in sorted(intervals.items())}
    if gate.groups is not None:
        out["groups"] = gate.groups.to_dict()
    return out


@task(name="gate", task_run_name="gate", cache_policy=NONE, persist_result=False)
def assess(config: FederationConfig, state: StateDir, plan: RoundPlan, outcomes: list) -> Assessment:
    """Read every silo's evaluation report, pool the metrics and run the fairness gate."""
    exchange = exchange_for(config, state)
    r = plan.round_number
    evaluation = sort_outcomes(outcomes)
    candidate, champion, intervals, groups, rejected, compute_s = {}, {}, {}, {}, {}, 0.0
    personalised: dict[str, Metrics] = {}
    wanted = config.gate.groups
    for silo, manifest in evaluation.manifests.items():
        result = manifest.result
        try:
            if not isinstance(result, EvaluateResult):
                raise IntegrityError("not an evaluation manifest")
            report = EvaluationReport.from_dict(exchange.get_json(result.report))
            if (report.federation, report.round, report.silo) != (config.federation, r, silo):
                raise IntegrityError("report bound to another federation, round or silo")
            scored = _metrics(report.metrics["candidate"])
            own = _metrics(report.metrics["personalised"]) if "personalised" in report.metrics else None
            if config.personalisation is not None and own is None:
                raise IntegrityError("no personalised metrics, the federation's config asks for them")
            before = _metrics(report.metrics["champion"]) if "champion" in report.metrics else None
            if report.intervals is not None and report.intervals.metric != config.gate.metric:
                raise IntegrityError(f"intervals of {report.intervals.metric}, the gate's metric is {config.gate.metric}")
            if wanted is not None:
                g = report.groups
                if g is None:
                    raise IntegrityError(f"no group counts for gate.groups.column {wanted.column!r}")
                if (g.column, g.threshold, g.min_group_size) != (wanted.column, wanted.threshold, wanted.min_group_size):
                    raise IntegrityError(f"group counts of {g.column!r} at threshold {g.threshold} with groups of "
                                         f"{g.min_group_size}+ rows, the gate asks for {wanted.column!r} at "
                                         f"{wanted.threshold} with {wanted.min_group_size}+")
                if sum(c.n for c in g.counts.values()) > scored.n:
                    raise IntegrityError(f"group counts describe more rows than the {scored.n} of the holdout")
        except ExchangeError as exc:
            rejected[silo] = f"evaluation rejected: {exc}"
            continue
        candidate[silo] = scored
        if own is not None:
            personalised[silo] = own
        if report.intervals is not None:
            intervals[silo] = report.intervals
        if before is not None:
            champion[silo] = before
        if wanted is not None:
            groups[silo] = report.groups
        compute_s += result.compute_s
    if rejected:
        evaluation = evaluation.without(rejected)
    require_quorum(evaluation.silos_in, evaluation.out, config.policy().min_silos, f"round {r} evaluation")
    metric = config.gate.metric
    gate = decide(
        {s: m.get(metric) for s, m in candidate.items()},
        {s: m.get(metric) for s, m in champion.items()} if plan.champion_ref is not None else None,
        config.gate,
        gains={s: i.gain for s, i in intervals.items() if i.gain is not None},
        sizes={s: m.n for s, m in candidate.items()},
        groups={s: g.counts for s, g in groups.items()},
        suppressed={s: g.suppressed for s, g in groups.items()},
    )
    return Assessment(candidate=candidate, champion=champion, evaluation=evaluation, pooled=pooled(candidate),
                      gate=gate, compute_s=compute_s, intervals=intervals, personalised=personalised)
