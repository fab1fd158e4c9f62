"""The federated mode end to end, with real processes on 127.0.0.1: `fedsilo stack up` (a Prefect
server on PostgreSQL, a process worker per silo pool, an S3 server, an MLflow server, each silo
enrolled with the identity made in its own state folder), `fedsilo deploy`, and `fedsilo run` with
each silo taking part in each round through one flow run of its own deployment on its own pool,
driven phase by phase through the bucket. Read back through the Prefect client (flow runs and task
runs, per silo and round, and their place in the run graph), boto3 (the objects) and MlflowClient
(versions, tags, aliases).

Eight silos. In one job, silo runs are killed (SIGKILL of their process), each in another phase —
train and masked in round 1, shares, unmask and evaluate in round 2 — and each round recovers along
the protocol's dropout path for those phases; then a silo's worker is killed and the next round
drops that silo at the phase deadline. Then the silos swap their workers for `fedsilo silo serve`, the hardened
runner, which runs their rounds in its own process and refuses a run naming another silo. A
coordinator killed in the middle of a round is started again by `fedsilo trigger` (the training
deployment on the coordinator's pool): the round is redone from scratch by a new attempt (the first
attempt's silo runs ended, its objects cleared), registered once, and equals FedAvg from the
previous round. Last, an object tampered with in the bucket stops the next round with nothing
registered, from the command line and from the deployment alike."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml
from stack_helpers import FEDSILO, alive, cli, flow_run_pid, parent_pid, reachable_folder, recorded

from infra.synthetic import write_synthetic_federation

pytestmark = pytest.mark.e2e
SILOS = [f"s{i}" for i in range(8)]
PHASES = ["train", "shares", "masked", "unmask", "evaluate"]
TIMEOUT_S = 90  # what a round waits in a phase for a silo whose worker was killed (8 runs start in it at load 10)


@pytest.fixture(scope="module")
def federated():
    root = reachable_folder("fedsilo-federated-")  # as root, the stack's PostgreSQL (user postgres) must reach it
    config = write_synthetic_federation(root / "fed", n_silos=len(SILOS), rows=120)
    raw = yaml.safe_load(config.read_text())
    raw["dispatch"] = {"mode": "work_pools", "phase_timeout_s": TIMEOUT_S, "poll_s": 0.3}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    home = root / "state"
    env = {}
    for line in cli(home, "stack", "up", str(config), timeout=600).stdout.splitlines():
        if line.strip().startswith("export "):
            key, value = line.strip().removeprefix("export ").split("=", 1)
            env[key] = value
    runners: dict[str, subprocess.Popen] = {}
    try:
        yield {"home": home, "config": config, "env": env, "runners": runners}
    finally:
        for runner in runners.values():  # by the process groups this module started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
        cli(home, "stack", "down", str(config), check=False)
        for record in recorded(home).values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record["pgid"], signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def prefect(federated):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    class Session:
        def __enter__(self):
            env = federated["env"]
            self.settings = temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"],
                                                PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"]})
            self.settings.__enter__()
            self.client = get_client(sync_client=True).__enter__()
            return self.client

        def __exit__(self, *exc):
            self.client.__exit__(*exc)
            self.settings.__exit__(*exc)

    return Session()


def s3(federated):
    import boto3

    env = federated["env"]
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def keys(federated, prefix: str) -> set[str]:
    bucket = s3(federated)
    return {o["Key"] for page in bucket.get_paginator("list_objects_v2").paginate(Bucket="fedsilo", Prefix=prefix)
            for o in page.get("Contents", [])}


def exchange(federated):
    """The federation's exchange over the bucket, as the coordinator reads it (digests checked)."""
    from infra.exchange import Exchange
    from infra.s3_store import S3ObjectStore

    return Exchange(S3ObjectStore("fedsilo", "synth", client=s3(federated)), "synth")


def tracking(federated):
    from mlflow import MlflowClient

    uri = federated["env"]["FEDSILO_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def record(federated, r: int) -> dict:
    ex = exchange(federated)
    return ex.read_json_key(ex.record_key(r))


def committed(federated) -> list[int]:
    return exchange(federated).committed_rounds()


def answered(federated, r: int) -> set[tuple[str, str]]:
    """(phase, silo) of every manifest in round r's exchange, whatever the attempt."""
    out = set()
    for key in keys(federated, f"synth/federations/synth/rounds/{r}/manifests/"):
        *_, phase, name = key.split("/")
        out.add((phase, name.removesuffix(".json")))
    return out


def runs_named(client, name: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


def test_deploy_registers_one_silo_deployment_per_pool_and_is_idempotent(federated):
    early = cli(federated["home"], "run", str(federated["config"]), "--no-progress", env=federated["env"], check=False)
    assert early.returncode == 1 and "no deployment silo/synth-s0, silo/synth-s1" in early.stderr
    assert "Traceback" not in early.stderr
    assert committed(federated) == [] and not exchange(federated).store.list("federations/synth/rounds")
    first = cli(federated["home"], "deploy", str(federated["config"]), env=federated["env"])
    assert "deployment silo/synth-s0" in first.stdout and "deployment training/synth-training" in first.stdout
    with prefect(federated) as client:
        before = {d.name: (d.id, d.work_pool_name, d.parameters) for d in client.read_deployments()}
    cli(federated["home"], "deploy", str(federated["config"]), env=federated["env"])
    with prefect(federated) as client:
        after = {d.name: (d.id, d.work_pool_name, d.parameters) for d in client.read_deployments()}
        pools = sorted(p.name for p in client.read_work_pools())
    assert after == before
    assert {name: pool for name, (_, pool, _) in after.items()} == {
        **{f"synth-{s}": f"silo-{s}" for s in SILOS}, "synth-training": "fedsilo-coordinator"}
    assert pools == sorted(["fedsilo-coordinator", *(f"silo-{s}" for s in SILOS)])


def _crash(federated, client, r: int, silo: str, phase: str, deadline: float) -> str:
    """SIGKILL the process of `silo`'s run of round r once it has answered the phase before `phase`;
    returns the phase it died in (the first it had not answered when it was stopped)."""
    name = f"synth/r{r:03d}/{silo}"
    pid = None
    while pid is None:
        assert time.monotonic() < deadline, f"{name} never ran"
        running = [x for x in runs_named(client, name) if x.state is not None and x.state.is_running()]
        pid = flow_run_pid(str(running[0].id)) if running else None
        time.sleep(0.05)
    # the run's process was forked from the stack's warm-start process, not started cold by its worker
    assert parent_pid(pid) == recorded(federated["home"])["warm-start"]["pid"], name
    before = PHASES[PHASES.index(phase) - 1] if phase != "train" else None
    while before is not None and (before, silo) not in answered(federated, r):
        assert time.monotonic() < deadline, f"{name} never answered {before}"
        time.sleep(0.02)
    os.kill(pid, signal.SIGSTOP)  # frozen first: what it has answered can no longer change
    done = {p for p, s in answered(federated, r) if s == silo}
    os.kill(pid, signal.SIGKILL)
    return next(p for p in PHASES if p not in done)


KILLED = {1: {"s1": "train", "s2": "masked"}, 2: {"s3": "shares", "s4": "unmask", "s5": "evaluate"}}  # round: silo: phase


def test_a_silo_run_killed_in_each_phase_and_a_killed_worker_are_survived_round_by_round(federated):
    """Three rounds through the process workers. In rounds 1 and 2 silo runs are killed, each in
    another phase (KILLED: train and masked, then shares, unmask and evaluate); round 3 starts after
    silo s6's worker was killed, so its run is never taken and s6 misses the train phase's deadline.
    Every round completes without the killed silos, along the dropout path of the phase each died in."""
    home = federated["home"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FEDSILO_", "AWS_"))}
    began = time.perf_counter()
    job = subprocess.Popen([FEDSILO, "run", str(federated["config"]), "--rounds", "3", "--no-progress"],
                           env={**base, "FEDSILO_HOME": str(home), "COLUMNS": "200", **federated["env"]},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    worker = recorded(home)["worker-silo-s6"]
    died = {}
    try:
        with prefect(federated) as client:
            for r, killed in KILLED.items():  # in phase order within a round: each waits for the one before
                for silo, phase in killed.items():
                    died[silo] = _crash(federated, client, r, silo, phase, time.monotonic() + 300)
        while 2 not in committed(federated):
            assert job.poll() is None and time.perf_counter() - began < 900, "round 2 never committed"
            time.sleep(0.2)
        os.killpg(worker["pgid"], signal.SIGKILL)  # a crashed machine: nothing reports for it any more
        stdout, stderr = job.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
    took = time.perf_counter() - began
    assert job.returncode == 0 and "candidate v3" in stdout, stdout + stderr
    assert died == {silo: phase for killed in KILLED.values() for silo, phase in killed.items()}, died
    assert not alive(worker["pid"])

    rounds = {r: record(federated, r) for r in range(1, 4)}
    for r, done in rounds.items():
        print(f"round {r}: " + ", ".join(f"{k} {v:.1f}" for k, v in done["timings"].items() if k.endswith("_s")),
              f"out: {done['silos_out']}")
    everyone = set(SILOS)
    first, second, third = rounds[1], rounds[2], rounds[3]
    assert first["silos_in"] == sorted(everyone - {"s1", "s2"}), first["silos_out"]
    assert first["silos_out"]["s1"].startswith("dropped at train") and "ended crashed" in first["silos_out"]["s1"]
    assert first["silos_out"]["s2"].startswith("dropped at masked")
    assert first["secure"]["recovered_silos"] == ["s2"]  # it had shared: its pairwise masks recovered
    assert second["silos_in"] == sorted(everyone - {"s3"}), second["silos_out"]  # s4's and s5's inputs are in
    assert second["silos_out"]["s3"].startswith("dropped at shares")
    assert second["secure"]["recovered"] == 0  # s3 never shared: nobody masked with it; s4's seed revealed by the rest
    assert sorted(second["evaluated"]) == sorted(everyone - {"s3", "s4", "s5"})  # scored without their holdouts
    assert "ended crashed" in second["evaluation_out"]["s5"]
    assert third["silos_in"] == sorted(everyone - {"s6"})
    assert third["silos_out"]["s6"] == f"dropped at train: missed the phase's deadline ({TIMEOUT_S} s)"
    # dropped from the rest of the round: the evaluation does not wait on it a second time
    assert "missed the train phase's deadline" in third["evaluation_out"]["s6"]
    assert third["timings"]["evaluate_phase_s"] < TIMEOUT_S / 2

    with prefect(federated) as client:
        deployments = {d.id: d.name for d in client.read_deployments()}
        for r in range(1, 4):
            (round_run,) = runs_named(client, f"synth/r{r:03d}")
            for silo in SILOS:
                (run,) = runs_named(client, f"synth/r{r:03d}/{silo}")  # one run per silo and round
                assert run.work_pool_name == f"silo-{silo}" and deployments[run.deployment_id] == f"synth-{silo}"
                parent = client.read_task_run(run.parent_task_run_id)  # a child of the round in the run graph
                assert parent.flow_run_id == round_run.id
                if silo in KILLED.get(r, {}):
                    assert run.state.type.value in {"CRASHED", "FAILED"}, (run.name, run.state)
                elif r == 3 and silo == "s6":
                    assert run.state.type.value in {"CANCELLED", "CANCELLING"}, (run.name, run.state)
                else:
                    assert run.state.is_completed(), (run.name, run.state)
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

        (run,) = runs_named(client, "synth/r002/s0")
        deadline = time.monotonic() + 60
        while True:  # the server records task runs from their events
            names = {t.name for t in client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id])))}
            wanted = {f"s0/{step}" for step in ("validate", "train", "keys", "shares", "masked", "unmask", "evaluate")}
            if wanted <= names or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert wanted <= names  # every step of the silo's round is a task run of its one flow run

    found = keys(federated, "synth/")
    for r in range(1, 4):
        prefix = f"synth/federations/synth/rounds/{r}"
        assert {f"{prefix}/global.arrow", f"{prefix}/round.json", f"{prefix}/secagg/plan.json"} <= found
        assert {f"{prefix}/secagg/masked/{s}.arrow" for s in rounds[r]["silos_in"]} <= found
    assert not any((home / "exchange").rglob("*.arrow"))  # nothing in the local folder

    mlflow = tracking(federated)
    versions = {int(v.version): v for v in mlflow.search_model_versions("name = 'synth'")}
    assert sorted(versions) == [1, 2, 3]
    assert versions[3].tags["fedsilo.parent_version"] == "2" and "missed the phase's deadline" in versions[3].tags[
        "fedsilo.silos_out"]
    assert mlflow.get_registered_model("synth").aliases["candidate"] == "3"
    print(f"3 rounds of 8 silos through work pools, 5 silo runs and a worker killed: {took:.0f} s")

    before = {name: r["pid"] for name, r in recorded(home).items()}
    cli(home, "stack", "up", str(federated["config"]), timeout=600)  # restarts only the killed worker
    after = {name: r["pid"] for name, r in recorded(home).items()}
    assert {n for n in after if after[n] != before.get(n)} == {"worker-silo-s6"}


def test_silos_served_by_their_own_runners_take_only_their_own_runs(federated):
    """Each silo replaces its worker by `fedsilo silo serve` (the hardened runner, flows run in its own
    process): the next round runs every silo's part there, and a run that names another silo on a
    silo's deployment is refused without running."""
    home = federated["home"]
    for silo in SILOS:  # the silos' workers go; the coordinator's stays
        os.killpg(recorded(home)[f"worker-silo-{silo}"]["pgid"], signal.SIGKILL)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FEDSILO_", "AWS_"))}
    for silo in SILOS:
        federated["runners"][silo] = subprocess.Popen(
            [FEDSILO, "silo", "serve", str(federated["config"]), "--silo", silo, "--poll", "1"],
            env={**base, **federated["env"], "FEDSILO_HOME": str(home / "stack" / "silos" / silo)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
    r = committed(federated)[-1] + 1
    run = cli(home, "run", str(federated["config"]), "--rounds", "1", "--no-progress", env=federated["env"], timeout=600)
    assert f"candidate v{r}" in run.stdout, run.stdout + run.stderr
    assert record(federated, r)["silos_in"] == SILOS
    with prefect(federated) as client:
        for silo in SILOS:
            (served,) = runs_named(client, f"synth/r{r:03d}/{silo}")
            assert served.state.is_completed()
        deployment = client.read_deployment_by_name("silo/synth-s0")
        foreign = client.create_flow_run_from_deployment(deployment.id, name="foreign", parameters={
            "federation": "synth", "silo_id": "s1", "round_number": r, "attempt": "0123456789abcdef",
            "config_path": "/elsewhere/federation.yaml"})
        deadline = time.monotonic() + 60
        while not (state := client.read_flow_run(foreign.id).state).is_final() and time.monotonic() < deadline:
            time.sleep(0.5)
    assert state.is_failed() and "refused by silo s0's runner" in state.message and "'s1'" in state.message


def global_vector(federated, r: int):
    from infra.exchange import ObjectRef

    return exchange(federated).get_vector(ObjectRef.from_dict(record(federated, r)["global"]))


def versions_by_round(federated) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for v in tracking(federated).search_model_versions("name = 'synth'"):
        out.setdefault(int(v.tags["fedsilo.round"]), []).append(v.version)
    return out


def test_a_coordinator_killed_mid_round_is_resumed_by_a_triggered_job_and_nothing_is_duplicated(federated):
    """`fedsilo run` is killed in the middle of round r; `fedsilo trigger` then runs the training
    deployment on the coordinator's pool, which ends the first attempt's silo runs and redoes round r
    with a new attempt, each silo's part on the silo's own deployment (served by its runner)."""
    r = committed(federated)[-1] + 1
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FEDSILO_", "AWS_"))}
    coordinator = subprocess.Popen(
        [FEDSILO, "run", str(federated["config"]), "--rounds", "1", "--no-progress"],
        env={**base, "FEDSILO_HOME": str(federated["home"]), **federated["env"]}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    masked = f"synth/federations/synth/rounds/{r}/secagg/masked/"
    deadline = time.monotonic() + 300
    try:  # kill it once the first silo has sent its masked input: keys and shares exist, nothing is summed
        while "Contents" not in s3(federated).list_objects_v2(Bucket="fedsilo", Prefix=masked):
            assert coordinator.poll() is None and time.monotonic() < deadline, "the round never reached masking"
            time.sleep(0.1)
    finally:
        os.killpg(coordinator.pid, signal.SIGKILL)
        coordinator.wait()
    assert committed(federated)[-1] == r - 1  # the interrupted round is not committed

    run = cli(federated["home"], "trigger", str(federated["config"]), "--rounds", "1", "--timeout", "600",
              env=federated["env"], timeout=900, check=False)
    done = record(federated, r)
    assert run.returncode == (0 if done["promoted"] else 3), run.stdout + run.stderr
    assert f"round {r}: candidate v{done['version']}" in run.stdout
    assert done["silos_in"] == SILOS and done["parent_round"] == r - 1
    assert {k: v for k, v in versions_by_round(federated).items() if v != [str(k)]} == {}  # one version per round
    attempts = {key.split("/")[6] for key in keys(federated, f"synth/federations/synth/rounds/{r}/manifests/")}
    assert len(attempts) == 1  # what the first attempt left was cleared; only the redo answered

    with prefect(federated) as client:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

        job = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["synth-training"])))
        assert len(job) == 1 and job[0].state.is_completed() and job[0].work_pool_name == "fedsilo-coordinator"
        for silo in SILOS:
            tries = runs_named(client, f"synth/r{r:03d}/{silo}")
            assert len(tries) == 2 and all(x.state.is_final() for x in tries)  # nothing of the first attempt runs
            assert sum(x.state.is_completed() for x in tries) == 1
            assert all(x.work_pool_name == f"silo-{silo}" for x in tries)

    # the redone round is the round an uninterrupted job computes: FedAvg of every silo from round r-1
    import numpy as np
    import pyarrow.parquet as pq

    from fl_core.simulation import SiloArrays, fedavg_rounds
    from infra.config import load_config
    from infra.silo_data import encode_table

    config = load_config(federated["config"])
    arrays = {}
    for silo in SILOS:
        data = encode_table(pq.read_table(config.silo_data_path(silo)), config.contract)
        arrays[silo] = SiloArrays(x_train=data.x_train, y_train=data.y_train)
    expected = fedavg_rounds(arrays, config.model, config.training, config.seed, rounds=1,
                             start=global_vector(federated, r - 1), first_round=r)
    np.testing.assert_allclose(global_vector(federated, r), expected, rtol=0, atol=1e-4)


def test_a_tampered_object_in_the_bucket_is_rejected_and_changes_nothing(federated):
    last = committed(federated)[-1]
    bucket, key = s3(federated), f"synth/federations/synth/rounds/{last}/global.arrow"
    original = bucket.get_object(Bucket="fedsilo", Key=key)["Body"].read()
    tampered = bytearray(original)
    tampered[-64] ^= 0x01  # one bit of the model the next round starts from
    bucket.put_object(Bucket="fedsilo", Key=key, Body=bytes(tampered))  # behind the exchange's back
    run = cli(federated["home"], "run", str(federated["config"]), "--rounds", "1", "--no-progress",
              env=federated["env"], timeout=900, check=False)
    assert run.returncode == 1  # the coordinator refuses the round's starting model before any silo runs
    assert f"{key.removeprefix('synth/')}: content does not match its published digest" in run.stderr
    mlflow = tracking(federated)
    assert sorted(int(v.version) for v in mlflow.search_model_versions("name = 'synth'")) == list(range(1, last + 1))
    assert committed(federated)[-1] == last
    # the same refusal through the training deployment: the job's flow run fails, and so does trigger
    triggered = cli(federated["home"], "trigger", str(federated["config"]), "--rounds", "1", "--timeout", "300",
                    env=federated["env"], timeout=600, check=False)
    assert triggered.returncode == 1 and "ended failed" in triggered.stderr, triggered.stdout + triggered.stderr
    assert committed(federated)[-1] == last
