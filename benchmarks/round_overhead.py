"""Where a round's wall time goes in embedded mode: the computation (local training and evaluation)
against everything else (Prefect orchestration, MLflow tracking and registration, contract checks,
the exchange, the secure-aggregation protocol), for federations of 4, 16 and 100 synthetic silos,
with Prefect's own floor for the same shape of round measured side by side.

Each silo takes part in a round through its steps as task runs of the round's flow run (validate,
train, keys, shares, masked, unmask, evaluate: seven in secure mode, three in trusted mode), the
silos of a phase running concurrently; the coordinator adds its own task runs (plan, the protocol's
checks, the unmasking, the gate, the registration). The task runs are recorded by the embedded API.

- **Round**: the wall time of a training job of `--rounds` rounds divided by its rounds (job start and
  end included, so a little over one round's own time), after one warm-up round of the same
  federation (its first round checks every silo's data with Great Expectations; later rounds find
  the verdict cached by file digest).
- **Compute**: the same rounds' training and evaluation done in memory, one silo after the other,
  in this process (`fl_core.simulation`, `fl_core.evaluation`): what a round would cost with no
  pipeline around it.
- **Overhead** = round − compute.
- **Prefect floor**: a round flow with the same task runs — as many, in the same waves, as
  concurrent — that do nothing, on the same API: the least a round of this shape costs in Prefect.

    python benchmarks/round_overhead.py                  # 4, 16, 100 silos, secure and trusted, 3 rounds each
    python benchmarks/round_overhead.py --quick          # 16 silos, secure, 1 round (under a minute)
    python benchmarks/round_overhead.py --silos 64 --mode secure --rounds 2

The full run also trains 100 silos of the example's heart model (record-level DP-SGD in every silo,
as in the example) for one round in a separate process and reports that process's peak memory.

The last line is JSON: ``overhead_s_per_round_16`` and ``overhead_s_per_round_100`` (secure, the
default mode), the floors (``floor_s_per_round_16`` …), the other sizes and the trusted mode under
keys ending in ``_trusted``, and ``peak_rss_mb_heart_100``.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COORDINATOR_TASKS = {"secure": 10, "trusted": 6}  # plan, secure-open, check-*, unmask-sum, logs, gate, register


def configure(workdir: Path):
    """An embedded API for this process, on a database of its own; returns it started."""
    from infra.embedded import configure_embedded, embedded_api
    from infra.state import StateDir

    os.environ["HOME"] = str(workdir / "home")  # nothing of this benchmark lands in the real home
    (workdir / "home").mkdir(exist_ok=True)
    os.environ.pop("PREFECT_API_URL", None)
    state = StateDir(workdir / "prefect-state")
    configure_embedded(state)
    return embedded_api(state)


# -- Prefect's floor for the round's shape --------------------------------------------------------------
def prefect_floor(n_silos: int, mode: str, parallel: int, samples: int) -> float:
    """Median wall time of an empty round of this shape: a round subflow holding the silos' task runs
    (in waves of every silo at once, `parallel` at a time) and the coordinator's, none doing anything."""
    from prefect import flow, task
    from prefect.cache_policies import NONE

    from fl_core.messages import phases_for

    @task(cache_policy=NONE, persist_result=False, task_run_name="{name}")
    def step(name: str) -> str:
        return name

    waves = [["validate", "train", "keys"] if p == "train" and mode != "trusted" else
             (["validate", "train"] if p == "train" else [p]) for p in phases_for(mode)]

    def silo(s: int, steps: list[str]) -> None:
        for name in steps:
            step(f"s{s}/{name}")

    @flow(persist_result=False)
    def empty_round(i: int) -> None:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            for k, steps in enumerate(waves):
                futures = [pool.submit(contextvars.copy_context().run, silo, s, steps) for s in range(n_silos)]
                for future in futures:
                    future.result()
                step(f"coordinator/{k}")
        for j in range(COORDINATOR_TASKS[mode] - len(waves)):
            step(f"coordinator/x{j}")

    @flow(persist_result=False)
    def job(rounds: int) -> list[float]:
        walls = []
        for i in range(rounds):
            began = time.perf_counter()
            empty_round(i)
            walls.append(time.perf_counter() - began)
        return walls

    job(1)
    return statistics.median(job(samples))


# -- the same rounds in memory ------------------------------------------------------------------------
def in_memory_round_s(config_path: Path, rounds: int, first_round: int) -> float:
    """Training and evaluation of every silo, one after the other, with no pipeline: per round."""
    import pyarrow.parquet as pq

    from fl_core.evaluation import evaluate
    from fl_core.models import build_model
    from fl_core.params import load_flat_inplace
    from fl_core.simulation import SiloArrays, fedavg_rounds, initial_vector
    from infra.config import load_config
    from infra.silo_data import encode_table

    config = load_config(config_path)
    data = {s: encode_table(pq.read_table(config.silo_data_path(s)), config.contract) for s in config.silo_ids}
    arrays = {s: SiloArrays(x_train=d.x_train, y_train=d.y_train) for s, d in data.items()}
    n_inputs = next(iter(data.values())).x_train.shape[1]
    began = time.perf_counter()
    vector = initial_vector(config.model, n_inputs, config.seed)
    for r in range(first_round, first_round + rounds):
        vector = fedavg_rounds(arrays, config.model, config.training, config.seed, rounds=1, start=vector,
                               first_round=r)
        model = build_model(config.model, n_inputs, seed=0)
        load_flat_inplace(model, vector)
        for d in data.values():
            evaluate(model, d.x_holdout, d.y_holdout)
    return (time.perf_counter() - began) / rounds


def run_federation(workdir: Path, n_silos: int, rounds: int, mode: str) -> dict:
    from flows.training import training_flow
    from infra.synthetic import write_synthetic_federation

    folder = workdir / f"fed-{n_silos}-{mode}"
    config_path = write_synthetic_federation(
        folder, n_silos=n_silos, rows=200, n_features=8, seed=n_silos,
        overrides={"aggregation": {"mode": mode, "rule": "fedavg", "min_silos": 2}},
    )
    os.environ["FEDSILO_HOME"] = str(folder / "state")
    warm = training_flow(config_path=str(config_path), rounds=1)["rounds"][0]["timings"]
    began = time.perf_counter()
    result = training_flow(config_path=str(config_path), rounds=rounds)
    wall = (time.perf_counter() - began) / rounds
    compute = in_memory_round_s(config_path, rounds, first_round=2)
    timings = [r["timings"] for r in result["rounds"]]
    phases = {key: statistics.mean(t[key] for t in timings)
              for key in timings[0] if key.endswith("phase_s") or key.startswith("secagg.")}
    return {"silos": n_silos, "mode": mode, "round_s": wall, "compute_s": compute, "overhead_s": wall - compute,
            "phases": phases, "first_round_s": warm["round_s"]}


# -- 100 silos of the heart model, for memory --------------------------------------------------------
def write_heart_federation(folder: Path, n_silos: int) -> Path:
    """The example's federation with `n_silos` silos, each a seeded resample of one hospital's rows
    (train and holdout kept apart), every silo with the example's record-level DP policy."""
    import shutil

    import numpy as np
    import pyarrow.parquet as pq
    import yaml

    from infra.config import load_config
    from infra.demo_data import write_heart_silos

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("federation.yaml", "heart_disease_uci.csv"):
        shutil.copy(ROOT / "examples" / "heart" / name, folder / name)
    write_heart_silos(load_config(folder / "federation.yaml"))
    raw = yaml.safe_load((folder / "federation.yaml").read_text())
    hospitals = raw["silos"]
    rng = np.random.default_rng(100)
    silos = []
    for i in range(n_silos):
        source = hospitals[i % len(hospitals)]
        table = pq.read_table(folder / source["data"])
        picked = rng.integers(0, table.num_rows, size=table.num_rows)
        name = f"h{i:03d}"
        pq.write_table(table.take(picked), folder / "data" / f"{name}.parquet")
        silos.append({"id": name, "data": f"data/{name}.parquet", "privacy": source["privacy"]})
    raw["silos"] = silos
    raw["aggregation"]["secure"].pop("threshold", None)  # a strict majority of the 100
    (folder / "federation.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder / "federation.yaml"


def heart_memory(workdir: Path, n_silos: int) -> dict:
    """One embedded round of `n_silos` heart silos in this process: its peak RSS."""
    api = configure(workdir)
    from infra.embedded import embedded_prefect, using_api

    config_path = write_heart_federation(workdir / "heart", n_silos)
    os.environ["FEDSILO_HOME"] = str(workdir / "heart" / "state")
    with using_api(api), embedded_prefect():
        from flows.training import training_flow

        began = time.perf_counter()
        record = training_flow(config_path=str(config_path), rounds=1)["rounds"][0]
        took = time.perf_counter() - began
    api.stop()
    return {"silos": n_silos, "in_sum": len(record["silos_in"]), "round_s": took,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 silos, secure, one round")
    parser.add_argument("--silos", type=int, nargs="+", help="federation sizes (default 4 16 100)")
    parser.add_argument("--mode", choices=("secure", "trusted", "both"), help="aggregation mode(s)")
    parser.add_argument("--rounds", type=int, help="measured rounds per federation (default 3, quick 1)")
    parser.add_argument("--heart-memory", type=int, metavar="N", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.heart_memory:
        with tempfile.TemporaryDirectory(prefix="fedsilo-heart-") as tmp:
            print(json.dumps(heart_memory(Path(tmp), args.heart_memory)))
        return
    sizes = args.silos or ([16] if args.quick else [4, 16, 100])
    mode = args.mode or ("secure" if args.quick else "both")
    modes = ["secure", "trusted"] if mode == "both" else [mode]
    rounds = args.rounds or (1 if args.quick else 3)

    began = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedsilo-overhead-") as tmp:
        workdir = Path(tmp)
        api = configure(workdir)
        from infra.dispatch import default_parallel
        from infra.embedded import embedded_prefect, using_api

        with using_api(api), embedded_prefect():
            for m in modes:
                for n in sizes:
                    row = run_federation(workdir, n, rounds, m)
                    row["floor_s"] = prefect_floor(n, m, default_parallel(n), samples=3 if args.quick else 5)
                    rows.append(row)
        api.stop()
    heart = None
    if not args.quick and not args.silos:
        child = subprocess.run([sys.executable, __file__, "--heart-memory", "100"], capture_output=True, text=True,
                               timeout=1800)
        lines = child.stdout.strip().splitlines()
        heart = json.loads(lines[-1]) if child.returncode == 0 and lines else {"error": child.stderr[-400:]}

    print(f"{rounds} measured round(s) per federation after a warm-up round; compute = the same training and "
          "evaluation in memory, one silo after the other\n")
    print(f"{'mode':>7}  {'silos':>5}  {'round s':>8}  {'compute s':>9}  {'overhead s':>10}  {'Prefect floor s':>15}  "
          f"{'overhead/floor':>14}  {'per silo ms':>11}  phases (s)")
    figures: dict[str, object] = {}
    for row in rows:
        n, m = row["silos"], row["mode"]
        phases = "  ".join(f"{k.removesuffix('_s').removesuffix('_phase').removeprefix('secagg.')} {v:.2f}"
                           for k, v in row["phases"].items())
        print(f"{m:>7}  {n:>5}  {row['round_s']:>8.2f}  {row['compute_s']:>9.3f}  {row['overhead_s']:>10.2f}  "
              f"{row['floor_s']:>15.2f}  {row['overhead_s'] / row['floor_s']:>14.2f}  "
              f"{1000 * row['overhead_s'] / n:>11.0f}  {phases}")
        tag = f"{n}" if m == "secure" else f"{n}_{m}"  # the headline keys are the default mode's, secure
        figures[f"overhead_s_per_round_{tag}"] = round(row["overhead_s"], 3)
        figures[f"floor_s_per_round_{tag}"] = round(row["floor_s"], 3)
        figures[f"overhead_to_floor_{tag}"] = round(row["overhead_s"] / row["floor_s"], 2)
        figures[f"compute_s_per_round_{tag}"] = round(row["compute_s"], 4)
    if heart is not None:
        if "error" in heart:
            print(f"\nheart model, 100 silos: failed: {heart['error']}")
        else:
            print(f"\nheart model, 100 silos with record-level DP-SGD, one embedded round: {heart['round_s']:.1f} s, "
                  f"{heart['in_sum']} silos in the sum, coordinator process peak RSS {heart['peak_rss_mb']:.0f} MB")
            figures["peak_rss_mb_heart_100"] = round(heart["peak_rss_mb"], 1)
    print("\nreading: the floor is the round's task runs with nothing inside them on the same API; the rest of the "
          "overhead is the silos' steps (contract verdict from the cache, the exchange, the protocol's signatures, "
          "key agreements and masks) and the coordinator (MLflow round run, model version, aliases).")
    figures.update(quick=args.quick, wall_seconds=round(time.perf_counter() - began, 1))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
