"""Per-round overhead of the federated path (each silo's part of a round one flow run of the silo's
own deployment on its own pool, orders and manifests and every artifact through an S3 server, the
Prefect server on PostgreSQL) against the embedded path (the silos' steps task runs of the round's
flow in the coordinator's process, a local exchange), on the same federation and model.

Overhead is a round's wall time minus the same round's training and evaluation done in memory, one
silo after the other, with no pipeline (as in benchmarks/round_overhead.py): what orchestration,
tracking, validation, the protocol and the exchange cost. All paths run secure aggregation.

The federated path runs against `fedsilo stack up` (PostgreSQL, a Prefect server on it, moto's S3
server and an MLflow server, all on 127.0.0.1), after `fedsilo deploy`, with `fedsilo run` in its
own process, in two ways a silo can run its part:
- pools: one Prefect process worker per silo pool; each silo's run of each round is a new process
  the worker starts (`python -m flows.engine`), forked from the stack's warm-start process, which
  has imported Prefect, torch and the silo flow once (`flows.warm`);
- served: the silos' workers stopped, each silo running `fedsilo silo serve` (the hardened runner:
  one long-lived process per silo that runs its flow runs in itself).
Served rounds run first, then the workers are started again (`stack up`) for the pools' rounds.
Where the time goes is read back from the Prefect server, for every silo run of the measured rounds:
the time from its creation to being claimed (pickup), from the claim to the flow running (for a
worker: the run's process starting), and the flow itself (running to completed; it lives for the
whole round). The whole stack's memory (the proportional set size, PSS, of every process of the
stack, the coordinator and the silos' runs and runners, summed) is sampled twice a second; its peak
is reported.

On one machine every silo shares its cores: at 16 silos, 16 flow-run processes start at once on 2
cores, which a federation of 16 sites never does. The per-run figures say what one silo pays; the
per-round figures are what this machine pays.

    python benchmarks/workpool_overhead.py            # 4, 16 silos (served and pools, 1 warm-up + 3 rounds), 50 (pools, 2 rounds)
    python benchmarks/workpool_overhead.py --quick    # 2 silos, 1 warm-up + 1 round each way
    python benchmarks/workpool_overhead.py --silos 8 --rounds 2

Last line: JSON with `pools_overhead_s_per_round_N`, `served_overhead_s_per_round_N`,
`inprocess_overhead_s_per_round_N`, the ratios to embedded, the per-run medians and
`stack_peak_pss_mb_N` for each size N; a size whose job failed appears as `failed_N` with the job's
last line of error (the stack is stopped and the other sizes go on).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
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
    """Per silo run of `rounds`: pickup, start, flow (seconds), from the server's state history; per
    round, the first run created to the last one running (`last_start_s`)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    out = {"pickup_s": [], "start_s": [], "flow_s": [], "last_start_s": []}
    per_round: dict[str, list] = {}
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
            per_round.setdefault(run.name.split("/")[1], []).append((run.created, when["RUNNING"]))
    for started in per_round.values():
        first = min(created for created, _ in started)
        out["last_start_s"].append((max(running for _, running in started) - first).total_seconds())
    return out


PHASES = ("train_phase_s", "secagg.shares_s", "secagg.masked_s", "secagg.unmask_s", "evaluate_phase_s")


def summarise(label: str, timings: list[dict], compute_s: float) -> dict[str, float]:
    phases = {p: statistics.median(t.get(p, 0.0) for t in timings) for p in PHASES}
    round_s = statistics.median(t["round_s"] for t in timings)
    row = {"round_s": round_s, "compute_s": compute_s, "overhead_s": round_s - compute_s, **phases}
    print(f"  {label:<10} round {row['round_s']:6.2f} s  compute {compute_s:5.2f} s  overhead "
          f"{row['overhead_s']:6.2f} s   phases: " + "  ".join(f"{p.split('.')[-1].removesuffix('_s')} "
                                                           f"{phases[p]:.2f}" for p in PHASES), flush=True)
    return row


def breakdown(label: str, env: dict[str, str], rounds: range, row: dict) -> dict:
    runs = run_breakdown(env, "synth", rounds)
    row.update({f"run_{k}": statistics.median(v) for k, v in runs.items() if v})
    row["runs"] = len(runs["flow_s"])
    print(f"  {label:<10} per silo run (median of {row['runs']}): pickup {row['run_pickup_s']:.2f} s, "
          f"claim to running {row['run_start_s']:.2f} s, flow {row['run_flow_s']:.2f} s; first run created to "
          f"last running {row['run_last_start_s']:.2f} s", flush=True)
    return row


class StackMemory:
    """Samples, twice a second, the summed PSS of every process whose command line, environment or
    working folder names `root` (the stack's servers and workers, PostgreSQL, the coordinator, the
    silos' runs and runners); `peak_mb` is the largest sum seen."""

    def __init__(self, root: Path):
        self.needle = str(root).encode()
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> StackMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.peak_mb = max(self.peak_mb, self.sample_mb())

    def sample_mb(self) -> float:
        total_kb = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                named = (self.needle in (entry / "cmdline").read_bytes() or self.needle in (entry / "environ").read_bytes()
                         or os.fsencode(os.readlink(entry / "cwd")).startswith(self.needle))
                if named:
                    for line in (entry / "smaps_rollup").read_text().splitlines():
                        if line.startswith("Pss:"):
                            total_kb += int(line.split()[1])
                            break
            except (OSError, ValueError):
                continue
        return total_kb / 1024


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


def compute_s(config: Path, rounds: int, first_round: int) -> float:
    """The measured rounds' training and evaluation in memory (per round), in a fresh process after one
    round of warm-up (a process's first optimiser step imports torch._dynamo, about a second)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from round_overhead import in_memory_round_s; "
            "from pathlib import Path; in_memory_round_s(Path(sys.argv[2]), 1, int(sys.argv[4])); "
            "print(in_memory_round_s(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(config), str(rounds),
                          str(first_round)], capture_output=True, text=True, check=True, timeout=3600)
    return float(out.stdout.strip().splitlines()[-1])


def measure(n_silos: int, warmup: int, rounds: int, workdir: Path, served_too: bool) -> dict[str, dict]:
    import signal

    total = warmup + rounds
    ways = "served and pools" if served_too else "pools"
    print(f"\n{n_silos} silos: {warmup} warm-up + {rounds} measured round(s), {ways} and embedded, secure aggregation",
          flush=True)

    # embedded: the silos' steps task runs of this process's job, a local exchange
    home = workdir / f"embedded-{n_silos}"
    config = federation(workdir / f"fed-embedded-{n_silos}", n_silos, "in_process")
    fedsilo(home, "run", str(config), "--rounds", str(total), "--no-progress")
    compute = compute_s(config, rounds, warmup + 1)
    inprocess = summarise("embedded", round_timings(local_records(home, "synth", range(warmup + 1, total + 1))), compute)

    # federated: the stack, deployments, a job whose silos' parts are flow runs of the silos' deployments;
    # first served by the silos' runners (the workers stopped), then through the pools' workers (started
    # again by a second `stack up`)
    home = workdir / f"federated-{n_silos}"
    config = federation(workdir / f"fed-pools-{n_silos}", n_silos, "work_pools")
    silos = [s["id"] for s in yaml.safe_load(config.read_text())["silos"]]
    began = time.perf_counter()
    env = exports(fedsilo(home, "stack", "up", str(config)))
    stack_s = time.perf_counter() - began
    runners: list[subprocess.Popen] = []
    result = {"inprocess": inprocess, "stack_up_s": stack_s}
    try:
        fedsilo(home, "deploy", str(config), env=env)
        next_round = 1
        if served_too:
            runners = serve(home, config, env, silos)
            with StackMemory(workdir) as memory:
                fedsilo(home, "run", str(config), "--rounds", str(total), "--no-progress", env=env)
            served_rounds = range(warmup + 1, total + 1)
            result["served"] = summarise("served", round_timings(s3_records(env, "synth", served_rounds)), compute)
            result["served"]["peak_pss_mb"] = memory.peak_mb
            for runner in runners:
                os.killpg(runner.pid, signal.SIGTERM)
                runner.wait(timeout=30)
            runners = []
            fedsilo(home, "stack", "up", str(config))
            next_round = total + 1
        with StackMemory(workdir) as memory:
            fedsilo(home, "run", str(config), "--rounds", str(total), "--no-progress", env=env)
        pool_rounds = range(next_round + warmup, next_round + total)
        result["pools"] = summarise("pools", round_timings(s3_records(env, "synth", pool_rounds)), compute)
        result["pools"]["peak_pss_mb"] = memory.peak_mb
        if served_too:
            breakdown("served", env, served_rounds, result["served"])
        breakdown("pools", env, pool_rounds, result["pools"])
    finally:
        for runner in runners:
            os.killpg(runner.pid, signal.SIGTERM)
            runner.wait(timeout=30)
        fedsilo(home, "stack", "down", str(config))
    ratios = ", ".join(f"{path} {result[path]['overhead_s'] / inprocess['overhead_s']:.2f}x"
                       for path in ("served", "pools") if path in result)
    peaks = ", ".join(f"{path} {result[path]['peak_pss_mb']:.0f} MB" for path in ("served", "pools") if path in result)
    print(f"  stack up {stack_s:.1f} s (once); overhead per round against embedded: {ratios}; "
          f"the stack's peak memory (PSS): {peaks}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 silos, one measured round each way")
    parser.add_argument("--silos", type=int, nargs="+", help="federation sizes (default: 4, 16, 50; --quick: 2)")
    parser.add_argument("--rounds", type=int, help="measured rounds after the warm-up (default 3; 1 at 50 silos)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (stack logs, stores)")
    args = parser.parse_args()
    sizes = (2,) if args.quick else (4, 16, 50)
    sizes = tuple(args.silos or sizes)
    headline: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fedsilo-workpools-") as tmp:
        work = Path(tmp) if args.keep is None else args.keep
        work.mkdir(parents=True, exist_ok=True)
        work.chmod(0o711)  # as root, the stack's PostgreSQL runs as the user postgres: it must pass through
        for n in sizes:
            served_too = n <= SERVED_UP_TO  # 50 runners of ~0.5 GB each do not fit next to 50 workers here
            rounds = args.rounds or (1 if args.quick or n > SERVED_UP_TO else 3)
            try:
                result = measure(n, 1, rounds, work, served_too)
            except SystemExit as failed:  # a size that does not complete is reported, and the others kept
                headline[f"failed_{n}"] = str(failed).strip().splitlines()[-1][:300]
                print(f"  {n} silos FAILED: {headline[f'failed_{n}']}", flush=True)
                continue
            inprocess = result["inprocess"]["overhead_s"]
            for path in ("pools", "served"):
                if path not in result:
                    continue
                row = result[path]
                headline[f"{path}_overhead_s_per_round_{n}"] = round(row["overhead_s"], 3)
                headline[f"{path}_to_inprocess_overhead_ratio_{n}"] = round(row["overhead_s"] / inprocess, 3)
                headline[f"{path}_peak_pss_mb_{n}"] = round(row["peak_pss_mb"])
                for key in ("run_pickup_s", "run_start_s", "run_flow_s", "run_last_start_s"):
                    if key in row:
                        headline[f"{path}_{key.removeprefix('run_')}_median_{n}"] = round(row[key], 3)
            headline[f"inprocess_overhead_s_per_round_{n}"] = round(inprocess, 3)
            headline[f"stack_peak_pss_mb_{n}"] = round(max(result[p]["peak_pss_mb"] for p in ("pools", "served")
                                                           if p in result))
    print(json.dumps(headline))


SERVED_UP_TO = 16

if __name__ == "__main__":
    main()
