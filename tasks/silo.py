"""Tasks that run on a silo's side: they touch its data and return only typed results and summaries.

What leaves a silo: a row-free validation summary, the update (a parameter delta, through the
exchange in trusted mode; masked, in secure mode), its training-set size, and evaluation metrics on
its holdout. Each task run is named after the silo (``cleveland/train``), so that in the Prefect UI
the steps of every silo of a round can be told apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from fl_core.attacks import Adversary
from fl_core.bootstrap import paired_intervals
from fl_core.dp.distributed import noise_rng
from fl_core.dp.dpsgd import noise_generator, round_event, train_local_dp
from fl_core.errors import BudgetExceeded, DataError, IntegrityError, TrainingError
from fl_core.evaluation import evaluate, predict_proba, scores
from fl_core.messages import EvaluateResult, EvaluationReport, GateIntervals, ObjectRef, PrivacyRelease, TrainResult
from fl_core.models import build_model
from fl_core.objectives import correction, scaffold_silo_control
from fl_core.params import flatten, load_flat_inplace
from fl_core.seeding import derive_seed, numpy_rng
from fl_core.training import WorkBudget, train_local
from infra.config import FederationConfig
from infra.controls import ControlStore
from infra.exchange import exchange_for
from infra.keystore import RoundSecrets
from infra.privacy_store import LedgerStore
from infra.silo_data import SiloData, ValidationCache, encode_table, file_digest, read_table
from infra.state import StateDir
from tasks.common import binding, read_server_state
from validation import ValidationSummary, validate_table

# Great Expectations' contexts are not shared between threads safely; silos of an embedded round run
# in threads, so a first validation (a cache miss) takes this lock. Cached verdicts do not.
_VALIDATION = threading.Lock()


@dataclass(frozen=True, slots=True)
class Refused:
    """The silo refused to train this round (its privacy budget); nothing was trained or charged."""

    reason: str


@task(name="validate", task_run_name="{silo_id}/validate", cache_policy=NONE, persist_result=False)
def load_and_validate(config: FederationConfig, silo_id: str, state: StateDir) -> tuple[SiloData | None, ValidationSummary]:
    """Read the silo's table and check it against the contract (verdicts cached by file digest).

    Returns ``(None, summary)`` when the data cannot be used; the summary says why, row-free."""
    path = config.silo_data_path(silo_id)
    try:
        table = read_table(path, silo_id)
    except DataError as exc:
        get_run_logger().warning("sitting out: %s", exc)
        return None, ValidationSummary.unreadable(silo_id, config.contract.contract_hash(), str(exc))
    cache = ValidationCache(state.silo(silo_id) / "validation")
    digest, contract_hash = file_digest(path), config.contract.contract_hash()
    summary = cache.get(digest, contract_hash)
    if summary is None:
        with _VALIDATION:
            summary = validate_table(table, config.contract, silo_id)
        cache.put(digest, contract_hash, summary)
    if not summary.passed:
        get_run_logger().warning("sitting out: %s", summary.one_line())
        return None, summary
    return encode_table(table, config.contract), summary


def _load_model(config: FederationConfig, exchange, ref: ObjectRef, n_inputs: int, expect: dict):
    vector = exchange.get_vector(ref, expect=expect)
    model = build_model(config.model, n_inputs, seed=0)
    try:
        load_flat_inplace(model, vector)
    except ValueError as exc:
        raise IntegrityError(f"{ref.key}: {exc}") from None
    return model, vector


class _Scaffold:
    """This silo's side of SCAFFOLD in one round: the server's c and its own cᵢ, and after training
    its new cᵢ⁺ (kept on the silo) and the delta it sends beside its model update."""

    def __init__(self, config: FederationConfig, exchange, silo_id: str, round_number: int,
                 server_ref: ObjectRef | None, state: StateDir, length: int):
        self.store = ControlStore(state, silo_id, config.federation)
        self.round_number, self.accepted = round_number, None
        self.server = np.zeros(length, dtype=np.float32)
        if server_ref is not None:
            server = read_server_state(exchange, config.federation, server_ref, round_number - 1, length)
            if "control" in server.slots:
                self.server = server.slots["control"]
            self.accepted = server.accepted.get(silo_id)
        self.silo = self.store.load(self.accepted, length)

    def finish(self, spec, start: np.ndarray, trained: np.ndarray, steps: int) -> np.ndarray:
        new = scaffold_silo_control(spec, start, trained, steps, self.server, self.silo)
        self.store.save(self.round_number, new, keep_from=self.accepted)
        return new - self.silo


def _train(config: FederationConfig, silo_id: str, round_number: int, global_ref: ObjectRef, data: SiloData,
           state: StateDir, server_ref: ObjectRef | None = None) -> tuple:
    """Train from the round's global model by the federation's local objective (FedAvg, FedProx,
    SCAFFOLD); returns the update and the result the manifest reports."""
    exchange = exchange_for(config, state)
    model, start = _load_model(
        config, exchange, global_ref, data.x_train.shape[1],
        expect={"federation": config.federation, "round": round_number - 1, "phase": "global"},
    )
    spec = config.training
    scaffold = None
    if spec.objective == "scaffold":
        scaffold = _Scaffold(config, exchange, silo_id, round_number, server_ref, state, len(start))
        corr = correction(model, spec, server_control=scaffold.server, silo_control=scaffold.silo)
    else:
        corr = correction(model, spec, start=start)
    began = time.perf_counter()
    seed = derive_seed(config.seed, "train", round_number, silo_id)
    policy = config.silo(silo_id).privacy
    privacy = None
    attack = config.attack if config.attack is not None and silo_id in config.attack.silos else None
    x, y = data.x_train, data.y_train
    if attack is not None:  # an experiment: this silo is one of the config's named attackers
        get_run_logger().warning("EXPERIMENT: this silo runs the %s attack named in the config", attack.kind)
        attack_rng = numpy_rng(derive_seed(config.seed, "attack", round_number, silo_id))
        x, y = Adversary(attack).poison_data(silo_id, x, y, attack_rng)
    weight = None
    if config.aggregation.qffl is not None:  # q-FFL: the silo's loss at the global model, before it trains
        from fl_core.qffl import mean_loss, qffl_weight

        try:
            weight = qffl_weight(len(y), mean_loss(model, x, y), config.aggregation.qffl)
        except ValueError as exc:  # a non-finite loss at the global model: this silo cannot weigh its update
            raise TrainingError(f"q-FFL weight: {exc}") from None
    budget = WorkBudget.seconds(spec.time_budget_s)  # from the start of training: a straggler's partial work
    if policy is None:
        result = train_local(model, x, y, spec, seed=seed, correction=corr, budget=budget)
    else:
        result, privacy = _train_private(config, silo_id, round_number, policy, model, x, y, seed, state, corr,
                                         budget)
    if result.partial:
        get_run_logger().warning("time budget of %gs spent: contributing %d of %d planned steps",
                                 spec.time_budget_s, result.steps, result.planned)
    local = evaluate(model, data.x_holdout, data.y_holdout)
    report = TrainResult(n_samples=result.n_samples, steps=result.steps, train_loss=result.mean_loss,
                         local_metrics={k: float(v) for k, v in local.to_dict().items()},
                         compute_s=time.perf_counter() - began, privacy=privacy,
                         planned_steps=result.planned if result.partial else None, weight=weight)
    trained = flatten(model)
    delta = trained - start
    if attack is not None:
        delta = Adversary(attack).poison_updates({silo_id: delta}, {silo_id: float(result.n_samples)}, attack_rng)[silo_id]
    if scaffold is not None:
        delta = np.concatenate([delta, scaffold.finish(spec, start, trained, result.steps)])
    return delta, report


def _under_ledger(config: FederationConfig, silo_id: str, round_number: int, policy, state: StateDir, n: int,
                  spec, run):
    """DP-SGD work of `spec` on `n` rows under the silo's ledger: refuse (BudgetExceeded) before
    `run(dpsgd)` if the planned event would pass the budget; once it has succeeded, charge what it
    cost (fewer steps than planned when a time budget cut it short) and save the ledger. Returns
    (the run's result, its DP-SGD spec, the charged ledger)."""
    store = LedgerStore(state, silo_id, config.federation)
    ledger = store.open(policy.budget)
    dpsgd = policy.dpsgd(n, spec)
    planned = round_event(n, spec, dpsgd.noise_multiplier)
    charged = ledger.charge(round_number, planned)  # raises if over
    result = run(dpsgd)
    if result.event != planned:  # fewer steps cost less than the planned round, which the ledger could afford
        charged = ledger.charge(round_number, result.event)
    store.save(charged)
    return result, dpsgd, charged


def _train_private(config: FederationConfig, silo_id: str, round_number: int, policy, model, x, y, seed: int,
                   state: StateDir, corr=None, budget=None):
    """DP-SGD under the silo's ledger (`_under_ledger`): refused before training if the round would
    pass the budget, charged only once training has succeeded, for the steps it took."""
    result, dpsgd, charged = _under_ledger(
        config, silo_id, round_number, policy, state, len(y), config.training,
        lambda dp: train_local_dp(model, x, y, config.training, dp, seed, noise=noise_generator(), correction=corr,
                                  budget=budget))
    privacy = PrivacyRelease(
        epsilon=charged.charges[-1].epsilon_after,  # computed by the charge, not again
        budget=policy.epsilon, delta=policy.delta, accountant=policy.accountant,
        noise_multiplier=dpsgd.noise_multiplier, max_grad_norm=dpsgd.max_grad_norm,
        sample_rate=result.event.sample_rate, clipped_fraction=result.clipped_fraction,
        clipping=result.clipping,  # Opacus's per-sample clipping: hooks or ghost
    )
    get_run_logger().info(
        "DP-SGD: ε = %.3f of %g spent (δ = %g, σ = %.3f, C = %g)", privacy.epsilon, policy.epsilon, policy.delta,
        dpsgd.noise_multiplier, dpsgd.max_grad_norm,
    )
    return result, privacy


@task(name="train", task_run_name="{silo_id}/train", cache_policy=NONE, persist_result=False)
def train_silo(
    config: FederationConfig, silo_id: str, round_number: int, attempt: str, global_ref: ObjectRef, data: SiloData,
    state: StateDir, server_ref: ObjectRef | None = None,
) -> TrainResult | Refused:
    """Train from the round's global model. Trusted aggregation: publish the delta itself to the
    exchange; secure aggregation: keep it on the silo's disk until it is masked. A round the silo's
    privacy budget cannot pay for comes back `Refused`, with nothing trained."""
    try:
        delta, report = _train(config, silo_id, round_number, global_ref, data, state, server_ref)
    except BudgetExceeded as exc:
        get_run_logger().warning("refusing round %d: %s", round_number, exc)
        return Refused(f"privacy budget: {exc}")
    policy = config.policy()
    if policy.is_secure:  # secure or bucketed: the update stays here until masked
        # Distributed DP: this silo's noise share is drawn now, off the masked phase's critical path
        # (it depends only on the federation's settings), and kept with the update until masking.
        noise = policy.noise_share(noise_rng())
        RoundSecrets(state, silo_id, config.federation, round_number, attempt).save_update(delta, report.aggregation_weight,
                                                                                          noise)
        return report
    exchange = exchange_for(config, state)
    ref = exchange.put_vector(
        exchange.update_key(round_number, silo_id), delta,
        binding(config.federation, round_number, "train", silo_id, n_samples=report.n_samples),
    )
    return replace(report, update=ref)


def _personalised(config: FederationConfig, silo_id: str, round_number: int, candidate_ref: ObjectRef,
                  candidate, data: SiloData, state: StateDir) -> dict[str, float]:
    """The holdout metrics of this silo's personalised model: the candidate fine-tuned on the
    silo's training rows (`fl_core.personalise`), its weights kept in the silo's state folder. Under
    record-level DP the fine-tuning is DP-SGD, refused (BudgetExceeded) if the ledger cannot pay for
    it and charged once it is done. A redone evaluation of the same candidate reuses the model."""
    from fl_core.personalise import personalise
    from infra.personal import PersonalStore

    store = PersonalStore(state, silo_id, config.federation)
    known = store.metrics(round_number, candidate_ref.sha256)
    if known is not None:
        return known
    spec, personal = config.training, config.personalisation
    model = build_model(config.model, data.x_train.shape[1], seed=0)
    load_flat_inplace(model, flatten(candidate))
    seed = derive_seed(config.seed, "personal", round_number, silo_id)
    privacy = config.silo(silo_id).privacy
    if privacy is None:
        personalise(model, data.x_train, data.y_train, spec, personal, seed)
    else:
        _under_ledger(config, silo_id, round_number, privacy, state, len(data.y_train), personal.train_spec(spec),
                      lambda dp: personalise(model, data.x_train, data.y_train, spec, personal, seed, dp=dp,
                                             noise=noise_generator()))
    metrics = {k: float(v) for k, v in evaluate(model, data.x_holdout, data.y_holdout).to_dict().items()}
    store.save(round_number, flatten(model), candidate_ref.sha256, metrics)
    return metrics


@task(name="evaluate", task_run_name="{silo_id}/evaluate", cache_policy=NONE, persist_result=False)
def evaluate_models(
    config: FederationConfig, silo_id: str, round_number: int, models: Mapping[str, ObjectRef], data: SiloData,
    state: StateDir,
) -> EvaluateResult:
    """Score each named model (candidate, champion) on the silo's holdout; publish the report.

    With ``gate.groups``, the report also carries the candidate's confusion counts per group of the
    sensitive column, small cells withheld (`fl_core.fairness.reportable`); the rows' group labels
    never leave the silo."""
    exchange = exchange_for(config, state)
    n_inputs = data.x_holdout.shape[1]
    began = time.perf_counter()
    metrics, predictions = {}, {}
    for name, ref in sorted(models.items()):
        model, _ = _load_model(config, exchange, ref, n_inputs, expect={"federation": config.federation, "phase": "global"})
        predictions[name] = predict_proba(model, data.x_holdout)
        metrics[name] = {k: float(v) for k, v in scores(data.y_holdout, predictions[name]).to_dict().items()}
        if name == "candidate" and config.personalisation is not None:
            metrics["personalised"] = _personalised(config, silo_id, round_number, ref, model, data, state)
    # The gate's intervals: both models on the same resamples of this silo's holdout rows (paired).
    gate = config.gate
    score, gain = paired_intervals(gate.metric, data.y_holdout, predictions["candidate"], predictions.get("champion"),
                                   numpy_rng(derive_seed(config.seed, "bootstrap", round_number, silo_id)),
                                   replicates=gate.bootstrap, confidence=gate.confidence)
    groups = None
    if gate.groups is not None:
        from fl_core.fairness import group_counts, reportable
        from fl_core.messages import GroupReport

        spec = gate.groups
        labels = data.holdout_groups.get(spec.column)
        if labels is None:
            raise DataError(f"silo {silo_id}: no group labels for gate.groups.column {spec.column!r}")
        counts = group_counts(data.y_holdout, predictions["candidate"], labels, threshold=spec.threshold)
        unassigned = int(sum(1 for v in labels if v is None))
        kept, withheld = reportable(counts, spec.min_group_size, unassigned=unassigned)
        groups = GroupReport(column=spec.column, threshold=spec.threshold, min_group_size=spec.min_group_size,
                             counts=kept, suppressed=withheld)
    compute_s = time.perf_counter() - began
    report = EvaluationReport(federation=config.federation, round=round_number, silo=silo_id, metrics=metrics,
                              intervals=GateIntervals(metric=gate.metric, confidence=gate.confidence, candidate=score,
                                                      gain=gain), groups=groups)
    ref = exchange.put_json(exchange.evaluation_key(round_number, silo_id), report.to_dict())
    return EvaluateResult(report=ref, compute_s=compute_s)
