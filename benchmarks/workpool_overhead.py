"""Per-round overhead of the federated path (every silo phase a flow run of the silo's own
deployment, every artifact through an S3 server) against the embedded path (every silo phase a
subflow in the coordinator's process, a local exchange), on the same federation and model.

Overhead is a round's wall time minus its compute (local training and evaluation, measured inside
the silo tasks), as in benchmarks/round_overhead.py: what orchestration, tracking, validation,
the protocol and the exchange cost. All paths run secure aggregation (five silo phases a round).

The federated path runs against `fedsilo stack up` (a Prefect server, moto's S3 server and an MLflow
server, all on 127.0.0.1), after `fedsilo deploy`, with `fedsilo run` in its own process, in two
ways a silo can run its part:
- pools: one Prefect process worker per silo pool; every phase of every silo is a new Python
  process (interpreter, imports, loading the flow);
- served: the silos' workers stopped, each silo running `fedsilo silo serve` (the hardened runner:
  one long-lived process per silo that runs its flow runs in itself).
Served rounds run first, then the workers are started again (`stack up`) for the pools' rounds; a
pools job the server gives up on (a SQLite server under many workers answers 503) is reported as
failed, with its error, instead of ending the benchmark.
Where the time goes is read back from the Prefect server: for every silo flow run of the measured
rounds, the time from its creation to being claimed (pickup), from the claim to the flow running
(for a worker: the run's process starting), the flow itself (running to completed), and per phase
the span from the first run created to the last one completed.

On one machine every silo shares its cores: at 16 silos, 16 flow-run processes start at once on 2
cores, which a federation of 16 sites never does. The per-run figures say what one silo pays; the
per-round figures are what this machine pays.

    python benchmarks/workpool_overhead.py            # 4 and 16 silos, 1 warm-up + 3 measured rounds each way
    python benchmarks/workpool_overhead.py --quick    # 4 silos, 1 warm-up + 1 measured round each way (~5 min)

Last line: JSON with `pools_overhead_s_per_round_4`, `inprocess_overhead_s_per_round_4`,
`served_overhead_s_per_round_4` (and `_16` without --quick), the ratios to embedded, and the
per-run medians.
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
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    out = {"pickup_s": [], "start_s": [], "flow_s": [], "span_s": [], "last_start_s": []}
    spans: dict[str, list] = {}
    settings = {PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"]}
    with temporary_settings(settings), get_client(sync_client=True) as client:
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


def breakdown(label: str, env: dict[str, str], rounds: range, row: dict) -> dict:
    runs = run_breakdown(env, "synth", rounds)
    row.update({f"run_{k}": statistics.median(v) for k, v in runs.items()})
    row["runs"] = len(runs["flow_s"])
    print(f"  {label:<10} per silo flow run (median of {row['runs']}): pickup {row['run_pickup_s']:.2f} s, "
          f"claim to running {row['run_start_s']:.2f} s, flow {row['run_flow_s']:.2f} s; per phase on the server: "
          f"first run created to last completed {row['run_span_s']:.2f} s", flush=True)
    return row


def serve(home: Path, config: Path, env: dict[str, str], silos: list[str]) -> list[subprocess.Popen]:
    """Stop the stack's silo workers (by their recorded process groups) and start one runner per silo."""
    import signal

    pids = home / "stack" / "pids"
    for silo in silos:
        record = json.loads((pids / f"worker-silo-{silo}.json").read_text())
        os.killpg(record["pgid"], signal.SIGKILL)  # a worker given SIGTERM may go on taking runs for a while
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FEDSILO_", "AWS_", "MLFLOW_"))}
    return [subprocess.Popen([FEDSILO, "silo", "serve", str(config), "--silo", silo],
                             env={**base, **env, "FEDSILO_HOME": str(home / "stack" / "silos" / silo)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            for silo in silos]


def measure(n_silos: int, warmup: int, rounds: int, workdir: Path) -> dict[str, dict]:
    import signal

    total = warmup + rounds
    print(f"\n{n_silos} silos: {warmup} warm-up + {rounds} measured round(s) each way, secure aggregation", flush=True)

    # embedded: subflows in this process's job, a local exchange
    home = workdir / f"embedded-{n_silos}"
    config = federation(workdir / f"fed-embedded-{n_silos}", n_silos, "in_process")
    fedsilo(home, "run", str(config), "--rounds", str(total), "--no-progress")
    inprocess = summarise("embedded", round_timings(local_records(home, "synth", range(warmup + 1, total + 1))))

    # federated: the stack, deployments, a job whose silo phases are flow runs of the silos' deployments;
    # first served by the silos' runners (the workers stopped), then through the pools' workers (started
    # again by a second `stack up`)
    home = workdir / f"federated-{n_silos}"
    config = federation(workdir / f"fed-pools-{n_silos}", n_silos, "work_pools")
    silos = [s["id"] for s in yaml.safe_load(config.read_text())["silos"]]
    began = time.perf_counter()
    env = exports(fedsilo(home, "stack", "up", str(config)))
    stack_s = time.perf_counter() - began
    runners: list[subprocess.Popen] = []
    served_rounds, pool_rounds = range(warmup + 1, total + 1), range(total + warmup + 1, 2 * total + 1)
    pools: dict = {}
    try:
        fedsilo(home, "deploy", str(config), env=env)
        runners = serve(home, config, env, silos)
        fedsilo(home, "run", str(config), "--rounds", str(total), "--no-progress", env=env)
        served = summarise("served", round_timings(s3_records(env, "synth", served_rounds)))
        for runner in runners:
            os.killpg(runner.pid, signal.SIGTERM)
            runner.wait(timeout=30)
        runners = []
        fedsilo(home, "stack", "up", str(config))
        try:
            fedsilo(home, "run", str(config), "--rounds", str(total), "--no-progress", env=env)
        except SystemExit as failed:  # reported with what the server logged, not hidden
            pools = {"failed": str(failed).strip().splitlines()[-1]}
            print(f"  pools      FAILED: {pools['failed']}", flush=True)
        else:
            pools = summarise("pools", round_timings(s3_records(env, "synth", pool_rounds)))
        breakdown("served", env, served_rounds, served)
        if "failed" not in pools:
            breakdown("pools", env, pool_rounds, pools)
    finally:
        for runner in runners:
            os.killpg(runner.pid, signal.SIGTERM)
            runner.wait(timeout=30)
        fedsilo(home, "stack", "down", str(config))
    ratios = f"served {served['overhead_s'] / inprocess['overhead_s']:.2f}x"
    if "failed" not in pools:
        ratios += (f", pools {pools['overhead_s'] / inprocess['overhead_s']:.2f}x; pools against served "
                   f"{pools['overhead_s'] / served['overhead_s']:.2f}x")
    print(f"  stack up {stack_s:.1f} s (once); overhead per round against embedded: {ratios}", flush=True)
    return {"pools": pools, "served": served, "inprocess": inprocess}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 silos, one measured round each way")
    parser.add_argument("--silos", type=int, nargs="+", help="federation sizes (default: 4 and 16; --quick: 4)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (stack logs, stores)")
    args = parser.parse_args()
    sizes, rounds = ((4,), 1) if args.quick else ((4, 16), 3)
    sizes = tuple(args.silos or sizes)
    headline: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fedsilo-workpools-") as tmp:
        work = Path(tmp) if args.keep is None else args.keep
        for n in sizes:
            result = measure(n, 1, rounds, work)
            inprocess = result["inprocess"]["overhead_s"]
            for path in ("pools", "served"):
                row = result[path]
                if "failed" in row:
                    headline[f"{path}_failed_{n}"] = row["failed"]
                    continue
                headline[f"{path}_overhead_s_per_round_{n}"] = round(row["overhead_s"], 3)
                headline[f"{path}_to_inprocess_overhead_ratio_{n}"] = round(row["overhead_s"] / inprocess, 3)
                for key in ("run_pickup_s", "run_start_s", "run_flow_s", "run_span_s"):
                    headline[f"{path}_{key.removeprefix('run_')}_median_{n}"] = round(row[key], 3)
            headline[f"inprocess_overhead_s_per_round_{n}"] = round(inprocess, 3)
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
