"""Per-round overhead of the federated path (every silo phase a flow run on the silo's own work pool,
every artifact through an S3 server) against the embedded path (every silo phase a subflow in the
coordinator's process, a local exchange), on the same federation and model.

Overhead is a round's wall time minus its compute (local training and evaluation, measured inside
the silo tasks), as in benchmarks/round_overhead.py: what orchestration, tracking, validation,
the protocol and the exchange cost. Both paths run secure aggregation (five silo phases a round).

The federated path runs against `fedsilo stack up` (a Prefect server, one process worker per silo
pool, moto's S3 server and an MLflow server, all on 127.0.0.1), after `fedsilo deploy`, with
`fedsilo run` in its own process. Where its time goes is read back from the Prefect server: for
every silo flow run of the measured rounds, the time from its creation to a worker claiming it
(pickup), from the claim to the flow's engine running (the run's process starting: interpreter,
imports, loading the flow), the flow itself (running to completed), and what is left of the phase
(creating the runs one at a time, noticing completions, reading manifests from the bucket).

On one machine every silo's worker shares its cores: at 16 silos, 16 flow-run processes start at
once on 2 cores, which a federation of 16 sites never does. The per-run figures say what one silo
pays; the per-round figures are what this machine pays.

    python benchmarks/workpool_overhead.py            # 4 and 16 silos, 1 warm-up + 3 measured rounds
    python benchmarks/workpool_overhead.py --quick    # 4 silos, 1 warm-up + 1 measured round

Last line: JSON with `pools_overhead_s_per_round_4`, `inprocess_overhead_s_per_round_4` (and
`_16` without --quick), the ratio, and the breakdown medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FEDSILO = str(Path(sys.executable).parent / "fedsilo")


def fedsilo(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 3600) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FEDSILO_", "AWS_", "MLFLOW_"))}
    result = subprocess.run([FEDSILO, *args], env={**base, "FEDSILO_HOME": str(home), **(env or {})},
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"fedsilo {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def federation(folder: Path, n_silos: int, mode: str) -> Path:
    from infra.synthetic import write_synthetic_federation

    config = write_synthetic_federation(folder, n_silos=n_silos, rows=200)
    raw = yaml.safe_load(config.read_text())
    raw["aggregation"]["min_silos"] = 2
    raw["dispatch"] = {"mode": mode, "phase_timeout_s": 600}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


def exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.strip().startswith("export "):
            key, value = line.strip().removeprefix("export ").split("=", 1)
            env[key] = value
    return env


def round_timings(records: list[dict]) -> list[dict]:
    return [{"round": r["round"], **r["timings"]} for r in records]


def local_records(state: Path, federation_name: str, rounds: range) -> list[dict]:
    folder = state / "exchange" / "federations" / federation_name / "rounds"
    return [json.loads((folder / str(r) / "round.json").read_text()) for r in rounds]


def s3_records(env: dict[str, str], federation_name: str, rounds: range) -> list[dict]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    return [json.loads(s3.get_object(Bucket="fedsilo", Key=f"{federation_name}/federations/{federation_name}/rounds/{r}"
                                                          "/round.json")["Body"].read()) for r in rounds]


def run_breakdown(env: dict[str, str], federation_name: str, rounds: range) -> dict[str, list[float]]:
    """Per silo flow run of `rounds`: pickup, start, flow (seconds), from the server's state history."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    out = {"pickup_s": [], "start_s": [], "flow_s": [], "span_s": [], "last_start_s": []}
    spans: dict[str, list] = {}
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        runs, offset = [], 0
        while batch := client.read_flow_runs(limit=200, offset=offset):  # the server serves 200 at most
            runs += batch
            offset += len(batch)
        for run in runs:
            if not any(run.name.startswith(f"{federation_name}/r{r:03d}/") for r in rounds):
                continue
            when = {}
            for state in client.read_flow_run_states(run.id):
                when.setdefault(state.type.value, state.timestamp)
            if not {"PENDING", "RUNNING", "COMPLETED"} <= when.keys():
                continue
            out["pickup_s"].append((when["PENDING"] - run.created).total_seconds())
            out["start_s"].append((when["RUNNING"] - when["PENDING"]).total_seconds())
            out["flow_s"].append((when["COMPLETED"] - when["RUNNING"]).total_seconds())
            phase = run.name.rsplit("/", 1)[-1] if run.name.count("/") == 3 else "train"
            spans.setdefault(run.name.split("/")[1] + phase, []).append((run.created, when["RUNNING"], when["COMPLETED"]))
    for runs in spans.values():  # one phase of one round: first run created to last run completed
        first = min(created for created, _, _ in runs)
        out["span_s"].append((max(done for _, _, done in runs) - first).total_seconds())
        out["last_start_s"].append((max(running for _, running, _ in runs) - first).total_seconds())
    return out


PHASES = ("train_phase_s", "secagg.shares_s", "secagg.masked_s", "secagg.unmask_s", "evaluate_phase_s")


def summarise(label: str, timings: list[dict]) -> dict[str, float]:
    overhead = [t["round_s"] - t["compute_s"] for t in timings]
    phases = {p: statistics.median(t[p] for t in timings) for p in PHASES}
    row = {"round_s": statistics.median(t["round_s"] for t in timings),
           "compute_s": statistics.median(t["compute_s"] for t in timings),
           "overhead_s": statistics.median(overhead), **phases}
    print(f"  {label:<10} round {row['round_s']:6.2f} s  compute {row['compute_s']:5.2f} s  overhead "
          f"{row['overhead_s']:6.2f} s   phases: " + "  ".join(f"{p.split('.')[-1].removesuffix('_s')} "
                                                           f"{phases[p]:.2f}" for p in PHASES), flush=True)
    return row


def measure(n_silos: int, warmup: int, rounds: int, workdir: Path) -> dict[str, float]:
    total = warmup + rounds
    measured = range(warmup + 1, total + 1)
    print(f"\n{n_silos} silos: {warmup} warm-up + {rounds} measured round(s), secure aggregation", flush=True)

    # embedded: subflows in this process's job, a local exchange
    home = workdir / f"embedded-{n_silos}"
    config = federation(workdir / f"fed-embedded-{n_silos}", n_silos, "in_process")
    began = time.perf_counter()
    fedsilo(home, "run", str(config), "--rounds", str(total), "--no-progress")
    inprocess = summarise("embedded", round_timings(local_records(home, "synth", measured)))
    inprocess["job_s"] = time.perf_counter() - began

    # federated: the stack, deployments, a job whose silo phases are flow runs on the silos' pools
    home = workdir / f"federated-{n_silos}"
    config = federation(workdir / f"fed-pools-{n_silos}", n_silos, "work_pools")
    began = time.perf_counter()
    env = exports(fedsilo(home, "stack", "up", str(config)))
    stack_s = time.perf_counter() - began
    try:
        fedsilo(home, "deploy", str(config), env=env)
        began = time.perf_counter()
        fedsilo(home, "run", str(config), "--rounds", str(total), "--no-progress", env=env)
        job_s = time.perf_counter() - began
        pools = summarise("pools", round_timings(s3_records(env, "synth", measured)))
        pools["job_s"], pools["stack_up_s"] = job_s, stack_s
        runs = run_breakdown(env, "synth", measured)
    finally:
        fedsilo(home, "stack", "down", str(config))
    per_phase_flow = statistics.median(runs["flow_s"])
    pools.update({f"run_{k}": statistics.median(v) for k, v in runs.items()})
    pools["runs"] = len(runs["flow_s"])
    phase_wall = statistics.median(pools[p] for p in PHASES)
    print(f"  per silo flow run (median of {pools['runs']}): pickup {pools['run_pickup_s']:.2f} s, process start "
          f"{pools['run_start_s']:.2f} s, flow {per_phase_flow:.2f} s", flush=True)
    print(f"  per phase (median): {phase_wall:.2f} s at the coordinator; on the server, first run created to last "
          f"running {pools['run_last_start_s']:.2f} s, to last completed {pools['run_span_s']:.2f} s", flush=True)
    print(f"  stack up {stack_s:.1f} s (once); pools / embedded overhead per round: "
          f"{pools['overhead_s'] / inprocess['overhead_s']:.2f}x", flush=True)
    return {"pools": pools, "inprocess": inprocess}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 silos, one measured round")
    args = parser.parse_args()
    sizes, rounds = ((4,), 1) if args.quick else ((4, 16), 3)
    headline: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fedsilo-workpools-") as tmp:
        for n in sizes:
            result = measure(n, 1, rounds, Path(tmp))
            pools, inprocess = result["pools"], result["inprocess"]
            headline[f"pools_overhead_s_per_round_{n}"] = round(pools["overhead_s"], 3)
            headline[f"inprocess_overhead_s_per_round_{n}"] = round(inprocess["overhead_s"], 3)
            headline[f"pools_to_inprocess_overhead_ratio_{n}"] = round(pools["overhead_s"] / inprocess["overhead_s"], 3)
            for key in ("run_pickup_s", "run_start_s", "run_flow_s"):
                headline[f"{key.removeprefix('run_')}_median_{n}"] = round(pools[key], 3)
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
