"""Heart benchmark: federated vs pooled vs local training on the example's four hospitals.

Question: does federated averaging across the four hospitals of the UCI Heart Disease example
(Cleveland, Hungary, Switzerland, VA Long Beach) land close to training one model on the pooled
data, and far above what the small hospitals reach on their own?

For every benchmark seed the config's model (``model``) is trained three ways with the config's
training spec (``training``: optimiser, lr, momentum, batch size, ...):

- pooled: one model on the concatenated training splits of all hospitals, for
  ``rounds x local_epochs`` epochs (``rounds x local_steps`` steps when ``local_steps`` is set),
  i.e. the same number of passes a federated run makes over each silo;
- local: one model per hospital on its own training split only, with the same budget;
- federated: ``fl_core.simulation.fedavg_rounds`` over all hospitals for ``training.rounds``
  rounds with the config's aggregation (the pipeline's arithmetic, bit for bit).

All three start from the same initial weights (the federation's ``("init",)`` seed) and every
random choice is derived from the root seed ``config.seed + benchmark seed`` through
``fl_core.seeding``; no global RNG is used. Each model is evaluated on every hospital's holdout
and on the pooled holdout (all holdouts together): accuracy, and ROC AUC where both classes occur.
The train/holdout split is the one ``write_heart_silos`` fixes from ``config.seed``, so the spread
over seeds reflects initialisation and shuffling, not resampling of the data.

Run from the repository root:

    python benchmarks/heart.py            # full: seeds 0..4, the config's rounds
    python benchmarks/heart.py --quick    # smoke run: 2 seeds, fewer rounds (same code path)
    python benchmarks/heart.py --config path/to/federation.yaml

If the hospitals' Parquet files are missing they are built first with
``infra.demo_data.write_heart_silos`` (under ``examples/heart/data/``, next to the config).
The output is a table of holdout accuracy (mean +/- sd over seeds), the same for ROC AUC, a
one-line reading, and as the last line one JSON object with ``pooled_accuracy``,
``federated_accuracy`` and ``local_accuracy`` (hospital -> accuracy on the pooled holdout) plus
supporting figures.
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
from fl_core.simulation import SiloArrays, fedavg_rounds, initial_vector  # noqa: E402
from fl_core.training import TrainSpec, train_local  # noqa: E402
from infra.config import FederationConfig, load_config  # noqa: E402
from infra.demo_data import write_heart_silos  # noqa: E402
from infra.silo_data import SiloData, encode_table, read_table  # noqa: E402
from validation.schema import check_schema  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / "examples" / "heart" / "federation.yaml"
FULL_SEEDS = 5
QUICK_SEEDS = 2
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


def train_all(
    config: FederationConfig, silos: dict[str, SiloData], spec: TrainSpec, root_seed: int
) -> dict[str, torch.nn.Module]:
    """The pooled, federated and per-hospital local models for one root seed, by row name."""
    n_inputs = next(iter(silos.values())).x_train.shape[1]
    start = initial_vector(config.model, n_inputs, root_seed)
    models: dict[str, torch.nn.Module] = {}

    x_all = np.concatenate([silos[s].x_train for s in silos])
    y_all = np.concatenate([silos[s].y_train for s in silos])
    models["pooled"] = train_centralised(config.model, spec, start, x_all, y_all, derive_seed(root_seed, "pooled"))

    arrays = {s: SiloArrays(x_train=d.x_train, y_train=d.y_train) for s, d in silos.items()}
    vector = fedavg_rounds(arrays, config.model, spec, root_seed, spec.rounds, server=config.aggregation.fedavg())
    federated = build_model(config.model, n_inputs, seed=0)
    load_flat_inplace(federated, vector)
    models["federated"] = federated

    for silo, data in silos.items():
        models[f"local:{silo}"] = train_centralised(
            config.model, spec, start, data.x_train, data.y_train, derive_seed(root_seed, "local", silo)
        )
    return models


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
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SEEDS} seeds and at most {QUICK_ROUNDS} rounds")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    torch.set_num_threads(1)
    config = load_config(args.config)
    spec = config.training
    if args.quick:
        spec = dataclasses.replace(spec, rounds=min(spec.rounds, QUICK_ROUNDS))
    seeds = list(range(QUICK_SEEDS if args.quick else FULL_SEEDS))
    silos = load_silos(config)
    hospitals = list(silos)

    budget = f"{spec.rounds * spec.local_steps} steps" if spec.local_steps else f"{spec.rounds * spec.local_epochs} epochs"
    print(
        f"heart benchmark: {config.federation}, model {config.model.kind}, {spec.optimizer} lr={spec.lr} "
        f"batch={spec.batch_size}; federated {spec.rounds} rounds x {spec.local_epochs} local epochs, "
        f"pooled/local {budget}; seeds {seeds} (root seed {config.seed} + seed)"
    )
    print("hospitals (train/holdout rows): " + ", ".join(f"{s} {len(d.y_train)}/{len(d.y_holdout)}" for s, d in silos.items()))

    runs: list[dict[str, dict[str, Metrics]]] = []
    for seed in seeds:
        models = train_all(config, silos, spec, root_seed=config.seed + seed)
        runs.append(evaluate_all(models, silos))

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

    pooled_acc = acc["pooled"][POOLED][0]
    federated_acc = acc["federated"][POOLED][0]
    by_size = sorted(hospitals, key=lambda s: len(silos[s].y_train))
    gaps = ", ".join(f"{s} (n={len(silos[s].y_train)}) {pooled_acc - acc[f'local:{s}'][POOLED][0]:+.3f}" for s in by_size)
    print(
        f"reading (pooled-holdout accuracy): pooled − federated = {pooled_acc - federated_acc:+.3f}; "
        f"pooled − local, smallest hospital first: {gaps}"
    )

    wall = time.perf_counter() - began
    result = {
        "pooled_accuracy": r4(pooled_acc),
        "federated_accuracy": r4(federated_acc),
        "local_accuracy": {s: r4(acc[f"local:{s}"][POOLED][0]) for s in hospitals},
        "pooled_accuracy_sd": r4(acc["pooled"][POOLED][1]),
        "federated_accuracy_sd": r4(acc["federated"][POOLED][1]),
        "local_accuracy_sd": {s: r4(acc[f"local:{s}"][POOLED][1]) for s in hospitals},
        "pooled_roc_auc": r4(auc["pooled"][POOLED][0]),
        "federated_roc_auc": r4(auc["federated"][POOLED][0]),
        "local_roc_auc": {s: r4(auc[f"local:{s}"][POOLED][0]) for s in hospitals},
        "per_hospital_accuracy": {r: {s: r4(acc[r][s][0]) for s in hospitals} for r in rows},
        "seeds": len(seeds),
        "rounds": spec.rounds,
        "local_epochs": spec.local_epochs,
        "quick": args.quick,
        "wall_seconds": round(wall, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
