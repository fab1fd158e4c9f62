"""Heart benchmark: every federated algorithm vs pooled vs local training on the example's four
hospitals, in the federation's default mode, and each with personalisation.

Question: which of the federated algorithms fedsilo ships lands closest to training one model on
the pooled data, and does a hospital's personalised model (the federation's model fine-tuned on
its own rows) beat what it reaches alone?

For every benchmark seed the config's model (``model``) is trained with the config's training spec
(``training``: optimiser, lr, momentum, batch size, ...):

- pooled: one model on the concatenated training splits, ``rounds x local_epochs`` epochs (the
  passes a federated run makes over each silo), without DP: the reference nobody may run;
- local: one model per hospital on its own training split, same budget, without DP (a hospital
  alone releases nothing and needs none);
- federated, one row per algorithm (`ALGORITHMS`: FedAvg, FedProx, SCAFFOLD, FedAvgM, FedAdam,
  FedYogi), through ``fl_core.simulation.federated_rounds`` with the pipeline's arithmetic of the
  default mode: DP-SGD in every hospital at the config's record-level privacy (noise calibrated to
  the config's target ε), updates clipped, weighted and quantised as the secure sum does, the
  server step of the algorithm (`fl_core.server_opt`);
- personalised, for each algorithm: its final model fine-tuned in each hospital
  (`fl_core.personalise`, ``PERSONAL_STEPS`` DP-SGD steps, as the pipeline runs it under
  record-level DP), scored on that hospital's holdout.

Every run starts from the federation's initial weights and every random choice derives from the
root seed ``config.seed + benchmark seed`` (DP noise included: reproducible here, from the OS in
the pipeline). The train/holdout split is the one ``write_heart_silos`` fixes, so the spread over
seeds reflects initialisation, sampling and noise. The algorithms' settings (`ALGORITHMS`) were set
once from the ranges their papers use (FedProx μ = 0.1; FedAdam and FedYogi at server lr 0.03 with
τ = 1e-3; server momentum 0.5 at lr 1), not searched on these holdouts; they are printed with the
results.

Run from the repository root:

    python benchmarks/heart.py            # full: seeds 0..4, the config's rounds
    python benchmarks/heart.py --quick    # smoke run: 1 seed, 5 rounds (same code path)

The output: accuracy on the pooled holdout (mean +/- sd over seeds) per row, each hospital's
holdout, the personalisation table, and as the last line one JSON object with
``pooled_accuracy``, ``best_federated_accuracy``, ``best_federated_algorithm``,
``accuracy.<algorithm>`` and ``min_personalised_minus_local`` (over hospitals: the personalised model of the best federated
algorithm, its accuracy on the hospital's holdout minus the hospital's local-only model's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fl_core.errors import DataError  # noqa: E402
from fl_core.evaluation import Metrics, evaluate  # noqa: E402
from fl_core.models import ModelSpec, build_model  # noqa: E402
from fl_core.params import load_flat_inplace  # noqa: E402
from fl_core.seeding import derive_seed  # noqa: E402
from fl_core.simulation import SiloArrays, initial_vector  # noqa: E402
from fl_core.training import TrainSpec, train_local  # noqa: E402
from infra.config import FederationConfig, load_config  # noqa: E402
from infra.demo_data import write_heart_silos  # noqa: E402
from infra.silo_data import SiloData, encode_table, read_table  # noqa: E402
from validation.schema import check_schema  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / "examples" / "heart" / "federation.yaml"
FULL_SEEDS = 5
QUICK_SEEDS = 1
QUICK_ROUNDS = 5
POOLED = "pooled"  # the column (and evaluation set) made of every hospital's holdout


# -- data ------------------------------------------------------------------------------------------
def load_silos(config: FederationConfig) -> dict[str, SiloData]:
    """Each hospital's encoded table, building the example's Parquet files first if any is missing."""
    if any(not config.silo_data_path(silo).exists() for silo in config.silo_ids):
        reports = write_heart_silos(config)
        print(f"built {len(reports)} hospital tables under {reports[0].path.parent}" if reports else "built no tables")
    silos = {}
    for silo in config.silo_ids:
        table = read_table(config.silo_data_path(silo), silo)
        problems = check_schema(table.schema, config.contract)
        if problems:
            raise DataError(f"silo {silo}: table does not fit the contract: " + "; ".join(problems))
        data = encode_table(table, config.contract)
        if len(data.y_train) == 0 or len(data.y_holdout) == 0:
            raise DataError(f"silo {silo}: needs both train and holdout rows, got {len(data.y_train)} and {len(data.y_holdout)}")
        silos[silo] = data
    return silos


def pooled_holdout(silos: dict[str, SiloData]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.concatenate([silos[s].x_holdout for s in silos]),
        np.concatenate([silos[s].y_holdout for s in silos]),
    )


# -- training --------------------------------------------------------------------------------------
def centralised_spec(spec: TrainSpec) -> TrainSpec:
    """One long training run with the budget a federated run spends on each silo."""
    return dataclasses.replace(
        spec,
        local_epochs=spec.rounds * spec.local_epochs,
        local_steps=None if spec.local_steps is None else spec.rounds * spec.local_steps,
    )


def train_centralised(
    model_spec: ModelSpec, spec: TrainSpec, start: np.ndarray, x: np.ndarray, y: np.ndarray, seed: int
) -> torch.nn.Module:
    model = build_model(model_spec, x.shape[1], seed=0)
    load_flat_inplace(model, start)
    train_local(model, x, y, centralised_spec(spec), seed=seed)
    return model


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One federated algorithm: the local objective and the server's step."""

    objective: str = "fedavg"
    prox_mu: float = 0.0
    server: str = "fedavg"
    server_lr: float = 1.0
    beta1: float = 0.9

    def describe(self) -> str:
        local = self.objective + (f" μ={self.prox_mu:g}" if self.prox_mu else "")
        return f"{local}; server {self.server} lr={self.server_lr:g}" + (f" β1={self.beta1:g}" if self.server != "fedavg" else "")


ALGORITHMS = {
    "fedavg": Algorithm(),
    "fedprox": Algorithm(objective="fedprox", prox_mu=0.1),
    "scaffold": Algorithm(objective="scaffold"),
    "fedavgm": Algorithm(server="fedavgm", server_lr=1.0, beta1=0.5),
    "fedadam": Algorithm(server="fedadam", server_lr=0.03),
    "fedyogi": Algorithm(server="fedyogi", server_lr=0.03),
}
PERSONAL_STEPS = 20


def algorithm_config(config: FederationConfig, algorithm: Algorithm, spec: TrainSpec) -> FederationConfig:
    from fl_core.server_opt import ServerOptimizerSpec

    training = dataclasses.replace(spec, objective=algorithm.objective, prox_mu=algorithm.prox_mu)
    aggregation = config.aggregation.model_copy(update={
        "server_lr": algorithm.server_lr,
        "server_optimizer": ServerOptimizerSpec(kind=algorithm.server, beta1=algorithm.beta1)})
    return config.model_copy(update={"training": training, "aggregation": aggregation})


def train_federated(config: FederationConfig, silos: dict[str, SiloData], algorithm: Algorithm, spec: TrainSpec,
                    root_seed: int) -> np.ndarray:
    """The final global vector of one algorithm in the default mode's arithmetic (secure sum, DP-SGD)."""
    from fl_core.simulation import Options, federated_rounds

    cfg = algorithm_config(config, algorithm, spec)
    dp = {s: (cfg.silo(s).privacy.dpsgd(len(d.y_train), cfg.training) if cfg.silo(s).privacy else None)
          for s, d in silos.items()}
    arrays = {s: SiloArrays(x_train=d.x_train, y_train=d.y_train) for s, d in silos.items()}
    policy = cfg.policy()
    return federated_rounds(arrays, cfg.model, cfg.training, root_seed, cfg.training.rounds,
                            options=Options(policy=policy, dp=dp)).vector


def personalised_accuracy(config: FederationConfig, silos: dict[str, SiloData], vector: np.ndarray,
                          spec: TrainSpec, root_seed: int) -> dict[str, float]:
    """Each hospital's accuracy on its own holdout after fine-tuning `vector` on its training rows
    (DP-SGD at its record-level noise, as the pipeline does under record-level DP)."""
    from fl_core.personalise import PersonalSpec, personalise
    from fl_core.seeding import torch_rng

    personal = PersonalSpec(steps=PERSONAL_STEPS)
    out = {}
    n_inputs = next(iter(silos.values())).x_train.shape[1]
    for silo, data in silos.items():
        model = build_model(config.model, n_inputs, seed=0)
        load_flat_inplace(model, vector)
        privacy = config.silo(silo).privacy
        dp = None if privacy is None else privacy.dpsgd(len(data.y_train), personal.train_spec(spec))
        personalise(model, data.x_train, data.y_train, spec, personal, derive_seed(root_seed, "personal", silo),
                    dp=dp, noise=torch_rng(derive_seed(root_seed, "personal-noise", silo)))
        out[silo] = evaluate(model, data.x_holdout, data.y_holdout).accuracy
    return out


def train_all(
    config: FederationConfig, silos: dict[str, SiloData], spec: TrainSpec, root_seed: int,
    algorithms: dict[str, Algorithm],
) -> tuple[dict[str, torch.nn.Module], dict[str, dict[str, float]]]:
    """The pooled, per-algorithm federated and per-hospital local models for one root seed, by row
    name; and per algorithm each hospital's personalised accuracy on its own holdout."""
    n_inputs = next(iter(silos.values())).x_train.shape[1]
    start = initial_vector(config.model, n_inputs, root_seed)
    models: dict[str, torch.nn.Module] = {}
    personalised: dict[str, dict[str, float]] = {}

    x_all = np.concatenate([silos[s].x_train for s in silos])
    y_all = np.concatenate([silos[s].y_train for s in silos])
    models["pooled"] = train_centralised(config.model, spec, start, x_all, y_all, derive_seed(root_seed, "pooled"))

    for name, algorithm in algorithms.items():
        vector = train_federated(config, silos, algorithm, spec, root_seed)
        federated = build_model(config.model, n_inputs, seed=0)
        load_flat_inplace(federated, vector)
        models[name] = federated
        personalised[name] = personalised_accuracy(config, silos, vector, spec, root_seed)

    for silo, data in silos.items():
        models[f"local:{silo}"] = train_centralised(
            config.model, spec, start, data.x_train, data.y_train, derive_seed(root_seed, "local", silo)
        )
    return models, personalised


def evaluate_all(models: dict[str, torch.nn.Module], silos: dict[str, SiloData]) -> dict[str, dict[str, Metrics]]:
    """Metrics of every model on every hospital's holdout and on the pooled holdout."""
    x_pool, y_pool = pooled_holdout(silos)
    out = {}
    for name, model in models.items():
        row = {silo: evaluate(model, data.x_holdout, data.y_holdout) for silo, data in silos.items()}
        row[POOLED] = evaluate(model, x_pool, y_pool)
        out[name] = row
    return out


# -- reporting -------------------------------------------------------------------------------------
def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd over seeds, ignoring NaN (an undefined AUC); NaN when nothing is left."""
    finite = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return math.nan, math.nan
    sd = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return float(finite.mean()), sd


def r4(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


def print_table(
    title: str, rows: list[str], columns: list[str], header: list[str], stats: dict[str, dict[str, tuple[float, float]]]
) -> None:
    cells = [[("n/a" if math.isnan(m) else f"{m:.3f} ± {s:.3f}") for m, s in (stats[r][c] for c in columns)] for r in rows]
    name_width = max(len(r) for r in [title, *rows])
    widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(header)]
    print(f"{title:<{name_width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for r, line in zip(rows, cells):
        print(f"{r:<{name_width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(line, widths)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="federation config (default: the heart example)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SEEDS} seed(s) and at most {QUICK_ROUNDS} rounds")
    parser.add_argument("--seeds", type=int, default=None, help=f"how many seeds (default {FULL_SEEDS})")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    torch.set_num_threads(1)
    config = load_config(args.config)
    spec = config.training
    if args.quick:
        spec = dataclasses.replace(spec, rounds=min(spec.rounds, QUICK_ROUNDS))
        config = config.model_copy(update={"training": spec})
    seeds = list(range(args.seeds or (QUICK_SEEDS if args.quick else FULL_SEEDS)))
    silos = load_silos(config)
    hospitals = list(silos)

    budget = f"{spec.rounds * spec.local_steps} steps" if spec.local_steps else f"{spec.rounds * spec.local_epochs} epochs"
    privacy = {s: config.silo(s).privacy for s in hospitals}
    dp_line = ", ".join(f"{s} σ={privacy[s].dpsgd(len(silos[s].y_train), spec).noise_multiplier:.2f}"
                        for s in hospitals if privacy[s] is not None) or "off"
    print(
        f"heart benchmark: {config.federation}, model {config.model.kind}, {spec.optimizer} lr={spec.lr} "
        f"batch={spec.batch_size}; federated {spec.rounds} rounds x {spec.local_epochs} local epochs in mode "
        f"{config.aggregation.mode} with DP-SGD ({dp_line}); pooled/local {budget} without DP; "
        f"personalised: {PERSONAL_STEPS} DP-SGD steps; seeds {seeds} (root seed {config.seed} + seed)"
    )
    print("hospitals (train/holdout rows): " + ", ".join(f"{s} {len(d.y_train)}/{len(d.y_holdout)}" for s, d in silos.items()))
    print("algorithms: " + "; ".join(f"{n}: {a.describe()}" for n, a in ALGORITHMS.items()))

    runs: list[dict[str, dict[str, Metrics]]] = []
    personal_runs: list[dict[str, dict[str, float]]] = []
    for seed in seeds:
        models, personalised = train_all(config, silos, spec, config.seed + seed, ALGORITHMS)
        runs.append(evaluate_all(models, silos))
        personal_runs.append(personalised)

    rows = list(runs[0])
    columns = [*hospitals, POOLED]
    header = [*hospitals, "pooled holdout"]
    acc = {r: {c: mean_sd([run[r][c].accuracy for run in runs]) for c in columns} for r in rows}
    auc = {r: {c: mean_sd([run[r][c].roc_auc for run in runs]) for c in columns} for r in rows}

    print()
    print_table("accuracy", rows, columns, header, acc)
    print()
    print_table("roc auc", rows, columns, header, auc)
    print()

    # Personalised vs local vs global, each on the hospital's own holdout.
    personal_rows = [*(f"{name}+personal" for name in ALGORITHMS), *(name for name in ALGORITHMS), "local"]
    own = {}
    for name in ALGORITHMS:
        own[f"{name}+personal"] = {s: mean_sd([run[name][s] for run in personal_runs]) for s in hospitals}
        own[name] = {s: acc[name][s] for s in hospitals}
    own["local"] = {s: acc[f"local:{s}"][s] for s in hospitals}
    print_table("own holdout", personal_rows, hospitals, hospitals, own)
    print()

    pooled_acc = acc["pooled"][POOLED][0]
    federated = {name: acc[name][POOLED][0] for name in ALGORITHMS}
    best = max(federated, key=federated.get)
    # The personalised model of the best federated algorithm (chosen on the pooled holdout, not per hospital).
    margins_of = {name: {s: own[f"{name}+personal"][s][0] - own["local"][s][0] for s in hospitals} for name in ALGORITHMS}
    margins = margins_of[best]
    print(
        f"reading (pooled-holdout accuracy): pooled {pooled_acc:.3f}, best federated {best} {federated[best]:.3f} "
        f"({federated[best] - pooled_acc:+.3f}); {best}+personal − local on each hospital's holdout: "
        + ", ".join(f"{s} {m:+.3f}" for s, m in margins.items())
    )

    wall = time.perf_counter() - began
    result = {
        "pooled_accuracy": r4(pooled_acc),
        "best_federated_accuracy": r4(federated[best]),
        "best_federated_algorithm": best,
        "accuracy": {name: r4(value) for name, value in federated.items()},
        "accuracy_sd": {name: r4(acc[name][POOLED][1]) for name in ALGORITHMS},
        "min_personalised_minus_local": r4(min(margins.values())),
        "personalised_minus_local": {s: r4(m) for s, m in margins.items()},
        "min_personalised_minus_local_by_algorithm": {n: r4(min(m.values())) for n, m in margins_of.items()},
        "personalised_accuracy": {name: {s: r4(own[f"{name}+personal"][s][0]) for s in hospitals} for name in ALGORITHMS},
        "local_accuracy": {s: r4(acc[f"local:{s}"][POOLED][0]) for s in hospitals},
        "local_own_accuracy": {s: r4(own["local"][s][0]) for s in hospitals},
        "roc_auc": {r: r4(auc[r][POOLED][0]) for r in ["pooled", *ALGORITHMS]},
        "seeds": len(seeds),
        "rounds": spec.rounds,
        "quick": args.quick,
        "wall_seconds": round(wall, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
