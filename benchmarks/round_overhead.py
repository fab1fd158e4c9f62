"""Where a round's wall time goes: compute (local training + evaluation, measured inside the silo
tasks) versus everything else (Prefect orchestration, MLflow tracking and registration, contract
validation, exchange I/O), for federations of 4, 16 and 64 synthetic silos.

The embedded pipeline runs every silo phase as a Prefect subflow (one per silo for training, one
for evaluation), so its overhead has a floor set by Prefect itself: the cost of an empty subflow
and of a no-op task on the same ephemeral API. That floor is measured in the same run and the
overhead is printed as a ratio to it, next to the same rounds computed in memory without any
orchestration (`fl_core.simulation.fedavg_rounds`).

    python benchmarks/round_overhead.py            # 4, 16, 64 silos; first round + 3 steady rounds each
    python benchmarks/round_overhead.py --quick    # 4, 16 silos; 1 steady round each
    ... --mode secure|trusted|both                 # aggregation mode(s), default both side by side

Secure aggregation (the default mode) adds three silo phases per round (shares, masked input,
unmask) and the coordinator's protocol steps; trusted mode has only train and evaluate.

The first round of a federation also validates every silo's data with Great Expectations (~0.3 s
per silo); later rounds find the verdict cached by file digest. The full run reports that first
round separately; the steady rounds are the headline. (`--quick` fills the verdict caches with the
silo task's own function instead of timing a first round.) One warm-up round on a 2-silo
federation absorbs the once-per-process costs (torch's first backward pass, MLflow's first model
logging), which a long-running coordinator pays once.

The last line is JSON with ``overhead_s_per_round_16`` and ``compute_s_per_round_16`` for the
default (secure) mode (and the same for the other sizes, the floor, the per-silo overhead, and the
trusted mode under keys ending in ``_trusted``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def configure(workdir: Path) -> None:
    from infra.embedded import configure_embedded
    from infra.state import StateDir

    os.environ["HOME"] = str(workdir / "home")  # nothing of this benchmark lands in the real home
    (workdir / "home").mkdir(exist_ok=True)
    configure_embedded(StateDir(workdir / "prefect-state"))


def prefect_floor(samples: int = 30) -> dict[str, float]:
    """Median cost of an empty subflow and of a no-op task, on the API this process uses."""
    from prefect import flow, task

    @task(persist_result=False)
    def noop(x: int) -> int:
        return x

    @flow(persist_result=False)
    def empty(i: int) -> int:
        return i

    @flow(persist_result=False)
    def parent(n: int) -> dict[str, float]:
        subflows, tasks = [], []
        for i in range(n):
            start = time.perf_counter()
            empty(i)
            subflows.append(time.perf_counter() - start)
            start = time.perf_counter()
            noop(i)
            tasks.append(time.perf_counter() - start)
        return {"subflow_s": statistics.median(subflows), "task_s": statistics.median(tasks)}

    parent(3)
    return parent(samples)


def prefill_contract_verdicts(config_path: Path) -> None:
    from infra.config import load_config
    from infra.state import ensure_state_dir, resolve_state_dir
    from tasks.silo import load_and_validate

    config = load_config(config_path)
    state = ensure_state_dir(resolve_state_dir())
    for silo in config.silo_ids:
        load_and_validate.fn(config, silo, state)


def run_federation(workdir: Path, n_silos: int, measured: int, first_round: bool, mode: str) -> dict:
    import pyarrow.parquet as pq

    from fl_core.simulation import SiloArrays, fedavg_rounds
    from flows.training import training_flow
    from infra.config import load_config
    from infra.silo_data import encode_table
    from infra.synthetic import write_synthetic_federation

    folder = workdir / f"fed-{n_silos}-{mode}"
    config_path = write_synthetic_federation(
        folder, n_silos=n_silos, rows=200, n_features=8, seed=n_silos,
        overrides={"aggregation": {"mode": mode, "rule": "fedavg", "min_silos": 2}},
    )
    os.environ["FEDSILO_HOME"] = str(folder / "state")
    first = None
    if first_round:
        first = training_flow(config_path=str(config_path), rounds=1)["rounds"][0]["timings"]
    else:
        prefill_contract_verdicts(config_path)
    result = training_flow(config_path=str(config_path), rounds=measured)
    timings = [r["timings"] for r in result["rounds"]]
    skip = 1 if first_round else 0

    config = load_config(config_path)
    silos = {}
    for silo in config.silo_ids:
        data = encode_table(pq.read_table(config.silo_data_path(silo)), config.contract)
        silos[silo] = SiloArrays(x_train=data.x_train, y_train=data.y_train)
    start = time.perf_counter()
    fedavg_rounds(silos, config.model, config.training, config.seed, rounds=measured, first_round=1 + skip)
    in_memory = (time.perf_counter() - start) / measured

    def mean(key: str) -> float:
        return statistics.mean(t[key] for t in timings)

    wall, compute = mean("round_s"), mean("compute_s")
    phases = sum(mean(key) for key in timings[0] if key.endswith("phase_s") or key.startswith("secagg."))
    return {
        "silos": n_silos,
        "mode": mode,
        "wall_s": wall,
        "compute_s": compute,
        "overhead_s": wall - compute,
        "silo_phases_s": phases,
        "coordinator_s": wall - phases,  # plan, aggregate, validation logs, MLflow run + registration
        "in_memory_s": in_memory,
        "first_overhead_s": None if first is None else first["round_s"] - first["compute_s"],
    }


def warm_up(workdir: Path) -> None:
    from flows.training import training_flow
    from infra.synthetic import write_synthetic_federation

    config_path = write_synthetic_federation(workdir / "warm-up", n_silos=2, rows=50, seed=1)
    os.environ["FEDSILO_HOME"] = str(workdir / "warm-up" / "state")
    training_flow(config_path=str(config_path), rounds=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 and 16 silos, one measured round")
    parser.add_argument("--mode", choices=("secure", "trusted", "both"), default="both",
                        help="aggregation mode(s) to measure (default both, side by side)")
    args = parser.parse_args()
    sizes = [4, 16] if args.quick else [4, 16, 64]
    measured = 1 if args.quick else 3
    modes = ["secure", "trusted"] if args.mode == "both" else [args.mode]

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedsilo-overhead-") as tmp:
        workdir = Path(tmp)
        configure(workdir)
        import torch

        torch.set_num_threads(1)
        from infra.embedded import embedded_prefect

        with embedded_prefect():
            floor = prefect_floor(samples=10 if args.quick else 30)
            warm_up(workdir)
            rows = [run_federation(workdir, n, measured, not args.quick, mode) for mode in modes for n in sizes]

    from flows.round import phases_per_round

    subflow_ms, task_ms = 1000 * floor["subflow_s"], 1000 * floor["task_s"]
    print(f"Prefect floor on this machine: empty subflow {subflow_ms:.0f} ms, no-op task {task_ms:.1f} ms (medians)")
    print(f"{measured} steady round(s) per size (contract verdicts cached); every silo trains and evaluates each round;")
    print("secure mode adds three silo phases per round (shares, masked input, unmask)\n")
    header = (f"{'mode':>7}  {'silos':>5}  {'round s':>8}  {'compute s':>9}  {'overhead s':>10}  {'per silo ms':>11}  "
              f"{'silo phases s':>13}  {'coordinator s':>13}  {'floor s':>7}  {'overhead/floor':>14}  {'in-memory s':>11}  "
              f"{'1st-round overhead s':>20}")
    print(header)
    figures = {}
    for row in rows:
        n = row["silos"]
        mode = row["mode"]
        floor_s = phases_per_round(mode) * n * floor["subflow_s"]  # one subflow per silo phase, nothing else
        per_silo_ms = 1000 * row["overhead_s"] / n
        print(f"{mode:>7}  {n:>5}  {row['wall_s']:>8.2f}  {row['compute_s']:>9.3f}  {row['overhead_s']:>10.2f}  {per_silo_ms:>11.0f}  "
              f"{row['silo_phases_s']:>13.2f}  {row['coordinator_s']:>13.2f}  {floor_s:>7.2f}  "
              f"{row['overhead_s'] / floor_s:>14.2f}  {row['in_memory_s']:>11.3f}  "
              f"{'—' if row['first_overhead_s'] is None else format(row['first_overhead_s'], '.2f'):>20}")
        # The headline keys (no suffix) are the default mode's, secure; trusted rows get a suffix.
        tag = f"{n}" if mode == "secure" else f"{n}_{mode}"
        figures[f"overhead_s_per_round_{tag}"] = round(row["overhead_s"], 3)
        figures[f"compute_s_per_round_{tag}"] = round(row["compute_s"], 4)
        figures[f"overhead_ms_per_silo_{tag}"] = round(per_silo_ms, 1)
        figures[f"overhead_to_floor_{tag}"] = round(row["overhead_s"] / floor_s, 2)
        if row["first_overhead_s"] is not None:
            figures[f"first_round_overhead_s_{tag}"] = round(row["first_overhead_s"], 3)
    print("\nreading: 'floor' is phases x silos x an empty Prefect subflow (2 phases trusted, 5 secure), the least "
          "a round with one subflow per silo phase can cost here; the rest of the overhead is the silo tasks (validation cache, exchange "
          "reads/writes) and the coordinator (MLflow round run, model version, aliases).")
    figures.update(
        subflow_floor_ms=round(subflow_ms, 1),
        task_floor_ms=round(task_ms, 2),
        quick=args.quick,
        wall_seconds=round(time.perf_counter() - began, 1),
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
