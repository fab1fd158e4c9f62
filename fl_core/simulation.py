"""Federated training in one process, on arrays: the pipeline's arithmetic without the pipeline.

It derives every seed exactly as the pipeline does (initial weights: ``("init",)``; a silo's
training in round r: ``("train", r, silo)``) and uses the same training, flattening, averaging
and server code, so for the same config and data it produces the same global model as the
trusted pipeline, bit for bit: `fedavg_rounds` for FedAvg, `federated_rounds` for every local
objective (FedAvg, FedProx, SCAFFOLD: `fl_core.objectives`) and server optimiser
(`fl_core.server_opt`), every silo in every round unless `Options` samples them (and adds the
secure sum's arithmetic, DP-SGD, stragglers and q-FFL weights). Benchmarks use it to compare federated
training with pooled and local training; tests use it as the reference the Prefect pipeline must
reproduce.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from fl_core.aggregation import FedAvg, weighted_mean
from fl_core.dp.dpsgd import train_local_dp
from fl_core.models import ModelSpec, build_model
from fl_core.objectives import correction, scaffold_server_control, scaffold_silo_control
from fl_core.params import flatten, load_flat_inplace
from fl_core.qffl import mean_loss, qffl_weight
from fl_core.round_policy import Contribution, RoundPolicy
from fl_core.sampling import sample_silos
from fl_core.seeding import derive_seed, numpy_rng, torch_rng
from fl_core.server_opt import ServerOptimizer, ServerOptimizerSpec, ServerState
from fl_core.specs import DPSGDSpec, steps_per_round
from fl_core.training import TrainSpec, WorkBudget, planned_steps, train_local


@dataclass(frozen=True, slots=True, kw_only=True)
class SiloArrays:
    x_train: np.ndarray
    y_train: np.ndarray


def initial_vector(spec: ModelSpec, n_inputs: int, root_seed: int) -> np.ndarray:
    return flatten(build_model(spec, n_inputs, seed=derive_seed(root_seed, "init")))


def fedavg_rounds(
    silos: Mapping[str, SiloArrays],
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    root_seed: int,
    rounds: int,
    server: FedAvg | None = None,
    start: np.ndarray | None = None,
    first_round: int = 1,
    on_round: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Run `rounds` FedAvg rounds over every silo (in sorted id order) and return the global vector
    (plain FedAvg whatever `train_spec.objective` says: the reference the other objectives are
    compared with)."""
    train_spec = replace(train_spec, objective="fedavg", prox_mu=0.0)
    server = server or FedAvg()
    n_inputs = next(iter(silos.values())).x_train.shape[1]
    vector = initial_vector(model_spec, n_inputs, root_seed) if start is None else np.asarray(start, dtype=np.float32)
    return federated_rounds(silos, model_spec, train_spec, root_seed, rounds,
                            server=ServerOptimizer(spec=ServerOptimizerSpec(), lr=server.server_lr),
                            start=Federated(vector=vector, server=ServerState(), controls={}),
                            first_round=first_round, on_round=on_round).vector


@dataclass(frozen=True, slots=True, kw_only=True)
class Federated:
    """Where `federated_rounds` left the federation: the global model, the server's state and each
    silo's SCAFFOLD control variate (empty for other objectives)."""

    vector: np.ndarray
    server: ServerState
    controls: Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True, kw_only=True)
class Stragglers:
    """Systems heterogeneity as FedProx's experiments simulate it (Li et al., MLSys 2020, §5.2): in
    every round a seeded ``fraction`` of the silos are stragglers and do a number of local steps
    drawn uniformly from [1, planned); with ``drop`` their work is discarded (what FedAvg does with a
    silo that missed the deadline), otherwise it is aggregated as it is (partial work)."""

    fraction: float
    drop: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"straggler fraction must be in [0, 1], got {self.fraction!r}")

    def budgets(self, silos: Sequence[str], planned: Mapping[str, int], root_seed: int,
                round_number: int) -> dict[str, int]:
        """The step cap of each straggler of the round (silos not named do all their steps)."""
        rng = numpy_rng(derive_seed(root_seed, "stragglers", round_number))
        ordered = sorted(silos)
        k = int(round(self.fraction * len(ordered)))
        chosen = sorted(rng.choice(len(ordered), size=k, replace=False).tolist()) if k else []
        caps = {}
        for i in chosen:
            silo = ordered[i]
            caps[silo] = int(rng.integers(1, planned[silo])) if planned[silo] > 1 else 1
        return caps


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """What else a simulated round does, each off by default.

    - ``policy``: the pipeline's round policy; in secure mode every update goes through the secure
      sum's arithmetic (clipped, weighted, stochastically quantised with the silo's seeded rounding,
      summed modulo 2³², decoded: the masks, which cancel exactly, are left out), and the server
      step is the policy's;
    - ``dp``: record-level DP-SGD per silo (its `DPSGDSpec`), the noise drawn from a generator
      seeded per silo and round (reproducible here; the pipeline draws it from the OS);
    - ``stragglers``: `Stragglers`;
    - ``sample``: k silos per round (`fl_core.sampling.sample_silos`), None for all;
    - ``qffl``: q of q-FFL's reweighting (`fl_core.qffl`), None for sample-count weights.
    """

    policy: RoundPolicy | None = None
    dp: Mapping[str, DPSGDSpec] | None = None
    stragglers: Stragglers | None = None
    sample: int | None = None
    qffl: float | None = None


def federated_rounds(
    silos: Mapping[str, SiloArrays],
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    root_seed: int,
    rounds: int,
    *,
    server: ServerOptimizer | None = None,
    start: Federated | None = None,
    first_round: int = 1,
    on_round: Callable[[int, np.ndarray], None] | None = None,
    options: Options | None = None,
) -> Federated:
    """`rounds` rounds of every silo (sorted id order) training by `train_spec.objective`, the
    sample-weighted mean of their updates, and the `server` step (FedAvg with server_lr 1 by
    default); `options` add the secure sum's arithmetic, DP-SGD, stragglers, silo sampling and
    q-FFL weights."""
    options = options or Options()
    server = server or ServerOptimizer(spec=ServerOptimizerSpec(), lr=1.0)
    n_inputs = next(iter(silos.values())).x_train.shape[1]
    if start is None:
        start = Federated(vector=initial_vector(model_spec, n_inputs, root_seed), server=ServerState(), controls={})
    vector, state, controls = np.asarray(start.vector, dtype=np.float32), start.server, dict(start.controls)
    scaffold = train_spec.objective == "scaffold"
    model = build_model(model_spec, n_inputs, seed=0)
    planned = {silo: _planned(len(silos[silo].y_train), train_spec, options) for silo in silos}
    for r in range(first_round, first_round + rounds):
        chosen = sorted(silos)
        if options.sample is not None:
            chosen = list(sample_silos(chosen, options.sample, root_seed, r))
        caps = {} if options.stragglers is None else options.stragglers.budgets(chosen, planned, root_seed, r)
        if options.stragglers is not None and options.stragglers.drop:
            chosen = [silo for silo in chosen if silo not in caps] or chosen[:0]
        updates, weights, silos_in = [], [], []
        server_control = state.slots.get("control", np.zeros(len(vector), dtype=np.float32))
        for silo in chosen:
            data = silos[silo]
            load_flat_inplace(model, vector)
            weight = float(len(data.y_train))
            if options.qffl is not None:
                weight = qffl_weight(len(data.y_train), mean_loss(model, data.x_train, data.y_train), options.qffl)
            own = controls.get(silo, np.zeros(len(vector), dtype=np.float32))
            corr = (correction(model, train_spec, server_control=server_control, silo_control=own) if scaffold
                    else correction(model, train_spec, start=vector))
            budget = WorkBudget(max_steps=caps[silo]) if silo in caps else None
            seed = derive_seed(root_seed, "train", r, silo)
            if options.dp is not None and options.dp.get(silo) is not None:
                result = train_local_dp(model, data.x_train, data.y_train, train_spec, options.dp[silo], seed,
                                        noise=torch_rng(derive_seed(root_seed, "noise", r, silo)), correction=corr,
                                        budget=budget)
            else:
                result = train_local(model, data.x_train, data.y_train, train_spec, seed=seed, correction=corr,
                                     budget=budget)
            trained = flatten(model)
            update = trained - vector
            if scaffold:
                new = scaffold_silo_control(train_spec, vector, trained, result.steps, server_control, own)
                update = np.concatenate([update, new - own])
                controls[silo] = new
            updates.append(update)
            weights.append(weight)
            silos_in.append(silo)
        if not updates:  # every sampled silo straggled and was dropped: the model stays
            if on_round is not None:
                on_round(r, vector)
            continue
        if options.policy is not None:
            vector, state = _policy_round(options.policy, vector, state, r, silos_in, updates, weights, root_seed)
        else:
            mean = weighted_mean(updates, weights)
            n = len(vector)
            vector, state = server.step(vector, mean[:n], state)
            if scaffold:
                control = scaffold_server_control(server_control, mean[n:], len(silos_in), len(silos))
                state = ServerState(steps=state.steps, slots={**state.slots, "control": control},
                                    accepted={**state.accepted, **{silo: r for silo in silos_in}})
        if on_round is not None:
            on_round(r, vector)
    return Federated(vector=vector, server=state, controls=controls)


def _planned(n: int, spec: TrainSpec, options: Options) -> int:
    if options.dp is not None:
        return steps_per_round(n, spec)
    return planned_steps(n, spec)


def _policy_round(policy: RoundPolicy, vector: np.ndarray, state: ServerState, r: int, silos_in: list[str],
                  updates: list[np.ndarray], weights: list[float], root_seed: int) -> tuple[np.ndarray, ServerState]:
    """The policy's merge and server step; in secure mode through the secure sum's arithmetic."""
    rng = numpy_rng(derive_seed(root_seed, "merge", r))
    if policy.is_secure and policy.mode == "secure":
        scale = policy.weight_scale_for(weights)
        total = np.zeros(policy.length, dtype=np.uint64)
        for silo, update, weight in zip(silos_in, updates, weights):
            codes, _ = policy.encode(update, weight, scale, numpy_rng(derive_seed(root_seed, "quantize", r, silo)))
            total += codes
        total = (total & 0xFFFFFFFF).astype(np.uint32)
        (instance,) = policy.instances(r, silos_in)
        inputs = [policy.decode(instance, total, scale, silos_in, rng)]
    elif policy.mode == "trusted":
        inputs = [Contribution(name=silo, vector=u, weight=w, members=(silo,))
                  for silo, u, w in zip(silos_in, updates, weights)]
    else:
        raise ValueError("the simulation runs the trusted and secure modes' arithmetic, not the bucketed mode's")
    merged = policy.merge(inputs, {}, rng)
    return policy.step(vector, merged, state, r, silos_in)
