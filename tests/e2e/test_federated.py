"""The federated mode end to end, with real processes on 127.0.0.1: `fedsilo stack up` (Prefect
server, a process worker per silo pool, an S3 server, an MLflow server, each silo enrolled with the
identity made in its own state folder), `fedsilo deploy`, and `fedsilo run` with every silo phase
running as a flow run of that silo's deployment on its own pool and every artifact going through the
bucket. Read back through the Prefect client (flow runs by name, per silo), boto3 (the objects) and
MlflowClient (runs, versions, aliases). In the middle of that job a silo's worker is killed: its
runs are never picked up, the phase times out, and the round completes without it, saying which
silo dropped and why. Then the silos swap their workers for `fedsilo silo serve`, the hardened
runner, which runs their phases in its own process and refuses a run naming another silo. A
coordinator killed in the middle of a round is started again, by `fedsilo trigger` running the
training deployment on the coordinator's pool (which sends each silo's phases to the silo's
deployment): the round is redone from scratch (the first attempt's silo runs ended, its objects
cleared), registered once, and equals FedAvg from the previous round.
Last, an object tampered with in the bucket stops the next round with nothing registered, from the
command line and from the deployment alike."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import pytest
import yaml
from stack_helpers import alive, cli, recorded

from infra.synthetic import write_synthetic_federation

pytestmark = pytest.mark.e2e
SILOS = ["s0", "s1", "s2"]
PHASES = ["", "/shares", "/masked", "/unmask", "/evaluate"]  # run-name suffixes; train has none


@pytest.fixture(scope="module")
def federated(tmp_path_factory):
    root = tmp_path_factory.mktemp("federated")
    config = write_synthetic_federation(root / "fed", n_silos=3, rows=120)
    raw = yaml.safe_load(config.read_text())
    # what a round waits for a silo whose worker was killed; a phase of live workers takes 10-15 s here
    raw["dispatch"] = {"mode": "work_pools", "phase_timeout_s": 60}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    home = root / "state"
    cli(home, "stack", "up", str(config))
    env = {}
    for line in cli(home, "stack", "up", str(config)).stdout.splitlines():
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
            try:
                os.killpg(record["pgid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


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


def exchange(federated):
    """The federation's exchange over the bucket, as the coordinator reads it (digests checked)."""
    from infra.exchange import Exchange
    from infra.s3_store import S3ObjectStore

    return Exchange(S3ObjectStore("fedsilo", "synth", client=s3(federated)), "synth")


def tracking(federated):
    """The tracking server's client, its registry named too (not whatever this process used before)."""
    from mlflow import MlflowClient

    uri = federated["env"]["FEDSILO_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def record(federated, r: int) -> dict:
    ex = exchange(federated)
    return ex.read_json_key(ex.record_key(r))


def test_deploy_registers_one_silo_deployment_per_pool_and_is_idempotent(federated):
    early = cli(federated["home"], "run", str(federated["config"]), "--no-progress", env=federated["env"], check=False)
    assert early.returncode == 1 and "no deployment silo/synth-s0, silo/synth-s1, silo/synth-s2" in early.stderr
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
        "synth-s0": "silo-s0", "synth-s1": "silo-s1", "synth-s2": "silo-s2", "synth-training": "fedsilo-coordinator"}
    assert pools == ["fedsilo-coordinator", "silo-s0", "silo-s1", "silo-s2"]


def test_a_multi_round_job_runs_every_silo_phase_on_its_own_pool_and_survives_a_killed_worker(federated):
    """Two rounds through the process workers. Once round 1 is committed, silo s2's worker is killed:
    its run of round 2 is never picked up, the phase times out, its run is cancelled, and round 2
    completes without s2, saying which silo dropped and why."""
    from stack_helpers import FEDSILO

    home = federated["home"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FEDSILO_", "AWS_"))}
    began = time.perf_counter()
    job = subprocess.Popen([FEDSILO, "run", str(federated["config"]), "--rounds", "2", "--no-progress"],
                           env={**base, "FEDSILO_HOME": str(home), "COLUMNS": "200", **federated["env"]},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    worker = recorded(home)["worker-silo-s2"]
    try:
        while 1 not in committed(federated):
            assert job.poll() is None and time.perf_counter() - began < 600, "round 1 never committed"
            time.sleep(0.2)
        # a crash: a process worker turns a SIGTERM into a SIGINT to itself and was seen taking runs after it
        os.killpg(worker["pgid"], signal.SIGKILL)
        stdout, stderr = job.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
    took = time.perf_counter() - began
    assert job.returncode == 0 and "candidate v2" in stdout, stdout + stderr
    assert not alive(worker["pid"])

    with prefect(federated) as client:
        runs = {r.name: r for r in client.read_flow_runs(limit=200)}
        deployments = {d.id: d.name for d in client.read_deployments()}
    for r, silos in ((1, SILOS), (2, ["s0", "s1"])):
        for silo in silos:
            for phase in PHASES:
                name = f"synth/r{r:03d}/{silo}{phase}"
                assert name in runs, f"no flow run {name}"
                assert runs[name].state.is_completed()
                assert runs[name].work_pool_name == f"silo-{silo}"
                assert deployments[runs[name].deployment_id] == f"synth-{silo}"
    late = {x.name: x.state.type.value for x in runs.values() if x.name.startswith("synth/r002/s2")}
    assert {"CANCELLED", "CANCELLING"} & set(late.values()), late  # the run it missed was cancelled ...
    assert not {"SCHEDULED", "PENDING", "RUNNING"} & set(late.values()), late  # ... none is left to run later

    bucket = s3(federated)
    keys = {o["Key"] for page in bucket.get_paginator("list_objects_v2").paginate(Bucket="fedsilo", Prefix="synth/")
            for o in page.get("Contents", [])}
    for r, silos in ((1, SILOS), (2, ["s0", "s1"])):
        prefix = f"synth/federations/synth/rounds/{r}"
        assert {f"{prefix}/global.arrow", f"{prefix}/round.json", f"{prefix}/secagg/plan.json"} <= keys
        assert {f"{prefix}/secagg/masked/{s}.arrow" for s in silos} <= keys
        assert {f"{prefix}/manifests/evaluate/{s}.json" for s in silos} <= keys
        assert record(federated, r)["silos_in"] == silos
    assert not any((home / "exchange").rglob("*.arrow"))  # nothing in the local folder
    second = record(federated, 2)
    assert "timed out after 60 s" in second["silos_out"]["s2"]

    mlflow = tracking(federated)
    versions = {int(v.version): v for v in mlflow.search_model_versions("name = 'synth'")}
    assert sorted(versions) == [1, 2]
    assert versions[2].tags["fedsilo.round"] == "2" and versions[2].tags["fedsilo.parent_version"] == "1"
    assert "s2" in versions[2].tags["fedsilo.silos_out"] and "timed out" in versions[2].tags["fedsilo.silos_out"]
    assert mlflow.get_registered_model("synth").aliases["candidate"] == "2"
    assert mlflow.get_run(versions[1].run_id).data.metrics["silos.in"] == 3.0
    assert mlflow.get_run(versions[2].run_id).data.metrics["silos.in"] == 2.0
    print(f"2 rounds of 3 silos through work pools, one worker killed: {took:.0f} s")

    before = {name: r["pid"] for name, r in recorded(home).items()}
    cli(home, "stack", "up", str(federated["config"]))  # restarts only the killed worker
    after = {name: r["pid"] for name, r in recorded(home).items()}
    assert {n for n in after if after[n] != before.get(n)} == {"worker-silo-s2"}


def test_silos_served_by_their_own_runners_take_only_their_own_runs(federated):
    """Each silo replaces its worker by `fedsilo silo serve` (the hardened runner, flows run in its own
    process): the next round runs every silo phase there, and a run that names another silo on a
    silo's deployment is refused without running."""
    from stack_helpers import FEDSILO

    home = federated["home"]
    for silo in SILOS:  # the silos' workers go; the coordinator's stays
        os.killpg(recorded(home)[f"worker-silo-{silo}"]["pgid"], signal.SIGKILL)  # see the killed worker above
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
        runs = {x.name: x for x in client.read_flow_runs(limit=200)}
        for silo in SILOS:
            for phase in PHASES:
                assert runs[f"synth/r{r:03d}/{silo}{phase}"].state.is_completed()
        deployment = client.read_deployment_by_name("silo/synth-s0")
        foreign = client.create_flow_run_from_deployment(deployment.id, name="foreign", parameters={
            "federation": "synth", "silo_id": "s1", "round_number": r, "phase": "unmask", "order": {},
            "config_path": "/elsewhere/federation.yaml"})
        deadline = time.monotonic() + 60
        while not (state := client.read_flow_run(foreign.id).state).is_final() and time.monotonic() < deadline:
            time.sleep(0.5)
    assert state.is_failed() and "refused by silo s0's runner" in state.message and "'s1'" in state.message


def committed(federated) -> list[int]:
    return exchange(federated).committed_rounds()


def global_vector(federated, r: int):
    from infra.exchange import ObjectRef

    return exchange(federated).get_vector(ObjectRef.from_dict(record(federated, r)["global"]))


def versions_by_round(federated) -> dict[int, list[str]]:
    mlflow = tracking(federated)
    out: dict[int, list[str]] = {}
    for v in mlflow.search_model_versions("name = 'synth'"):
        out.setdefault(int(v.tags["fedsilo.round"]), []).append(v.version)
    return out


def test_a_coordinator_killed_mid_round_is_resumed_by_a_triggered_job_and_nothing_is_duplicated(federated):
    """`fedsilo run` is killed in the middle of round r; `fedsilo trigger` then runs the training
    deployment on the coordinator's pool, which redoes round r, sending each silo's phases to the
    silo's own deployment (served by the silo's runner since the test above)."""
    from stack_helpers import FEDSILO

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
            time.sleep(0.2)
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

    with prefect(federated) as client:
        every = client.read_flow_runs(limit=200)
        deployments = {d.id: d.name for d in client.read_deployments()}
    runs = {x.name: x for x in every}  # silo runs have one name per round and phase; jobs share theirs
    job = [x for x in every if x.deployment_id and deployments[x.deployment_id] == "synth-training"]
    assert len(job) == 1 and job[0].state.is_completed() and job[0].work_pool_name == "fedsilo-coordinator"
    for silo in SILOS:  # the job dispatched every silo's phases to the silo's own pool
        assert runs[f"synth/r{r:03d}/{silo}/unmask"].work_pool_name == f"silo-{silo}"
    attempt = [x for x in runs.values() if x.name.startswith(f"synth/r{r:03d}/")]
    assert attempt and all(x.state.is_final() for x in attempt)  # nothing of the first attempt still runs

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
