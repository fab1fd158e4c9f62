"""The federated mode end to end, with real processes on 127.0.0.1: `fedsilo stack up` (Prefect
server, a process worker per silo pool, an S3 server, an MLflow server), `fedsilo deploy`, and
`fedsilo run` with every silo phase running as a flow run of that silo's deployment on its own pool
and every artifact going through the bucket. Read back through the Prefect client (flow runs by
name, per silo), boto3 (the objects) and MlflowClient (runs, versions, aliases). Then a silo's
worker is killed: its runs are never picked up, the phase times out, and the round completes
without it, saying which silo dropped and why. Last, an object tampered with in the bucket stops the
next round with nothing registered."""

from __future__ import annotations

import json
import os
import signal
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
    raw["dispatch"] = {"mode": "work_pools", "phase_timeout_s": 45}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    home = root / "state"
    cli(home, "stack", "up", str(config))
    env = {}
    for line in cli(home, "stack", "up", str(config)).stdout.splitlines():
        if line.strip().startswith("export "):
            key, value = line.strip().removeprefix("export ").split("=", 1)
            env[key] = value
    try:
        yield {"home": home, "config": config, "env": env}
    finally:
        cli(home, "stack", "down", str(config), check=False)
        for record in recorded(home).values():
            try:
                os.killpg(record["pgid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def prefect(federated):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class Session:
        def __enter__(self):
            self.settings = temporary_settings({PREFECT_API_URL: federated["env"]["PREFECT_API_URL"]})
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


def record(federated, r: int) -> dict:
    body = s3(federated).get_object(Bucket="fedsilo", Key=f"synth/federations/synth/rounds/{r}/round.json")["Body"]
    return json.loads(body.read())


def test_deploy_registers_one_silo_deployment_per_pool_and_is_idempotent(federated):
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


def test_a_multi_round_job_runs_every_silo_phase_on_its_own_pool(federated):
    began = time.perf_counter()
    run = cli(federated["home"], "run", str(federated["config"]), "--rounds", "2", "--no-progress",
              env=federated["env"], timeout=900)
    took = time.perf_counter() - began
    assert "candidate v2" in run.stdout, run.stdout + run.stderr

    with prefect(federated) as client:
        runs = {r.name: r for r in client.read_flow_runs(limit=200)}
        deployments = {d.id: d.name for d in client.read_deployments()}
    for r in (1, 2):
        for silo in SILOS:
            for phase in PHASES:
                name = f"synth/r{r:03d}/{silo}{phase}"
                assert name in runs, f"no flow run {name}"
                assert runs[name].state.is_completed()
                assert runs[name].work_pool_name == f"silo-{silo}"
                assert deployments[runs[name].deployment_id] == f"synth-{silo}"

    bucket = s3(federated)
    keys = {o["Key"] for page in bucket.get_paginator("list_objects_v2").paginate(Bucket="fedsilo", Prefix="synth/")
            for o in page.get("Contents", [])}
    for r in (1, 2):
        prefix = f"synth/federations/synth/rounds/{r}"
        assert {f"{prefix}/global.arrow", f"{prefix}/round.json", f"{prefix}/secagg/plan.json"} <= keys
        assert {f"{prefix}/secagg/masked/{s}.arrow" for s in SILOS} <= keys
        assert {f"{prefix}/manifests/evaluate/{s}.json" for s in SILOS} <= keys
        assert record(federated, r)["silos_in"] == SILOS
    assert not any((federated["home"] / "exchange").rglob("*.arrow"))  # nothing in the local folder

    from mlflow import MlflowClient

    mlflow = MlflowClient(tracking_uri=federated["env"]["FEDSILO_TRACKING_URI"])
    versions = {int(v.version): v for v in mlflow.search_model_versions("name = 'synth'")}
    assert sorted(versions) == [1, 2]
    assert versions[2].tags["fedsilo.round"] == "2" and versions[2].tags["fedsilo.parent_version"] == "1"
    assert mlflow.get_registered_model("synth").aliases["candidate"] == "2"
    round_run = mlflow.get_run(versions[2].run_id)
    assert round_run.data.metrics["silos.in"] == 3.0
    print(f"2 rounds of 3 silos through work pools: {took:.0f} s")


def test_a_silo_whose_worker_is_killed_is_dropped_and_the_round_completes(federated):
    worker = recorded(federated["home"])["worker-silo-s2"]
    os.killpg(worker["pgid"], signal.SIGTERM)
    deadline = time.monotonic() + 15
    while alive(worker["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(worker["pid"])
    run = cli(federated["home"], "run", str(federated["config"]), "--rounds", "1", "--no-progress",
              env=federated["env"], timeout=900)
    assert "candidate v3" in run.stdout, run.stdout + run.stderr
    third = record(federated, 3)
    assert third["silos_in"] == ["s0", "s1"]
    assert "timed out after 45 s" in third["silos_out"]["s2"]
    from mlflow import MlflowClient

    mlflow = MlflowClient(tracking_uri=federated["env"]["FEDSILO_TRACKING_URI"])
    version = mlflow.get_model_version("synth", "3")
    assert "s2" in version.tags["fedsilo.silos_out"] and "timed out" in version.tags["fedsilo.silos_out"]
    with prefect(federated) as client:
        late = [r for r in client.read_flow_runs(limit=200) if r.name == "synth/r003/s2"]
    assert late and late[0].state.type.value in ("CANCELLED", "CANCELLING")  # not left to run later


def test_a_tampered_object_in_the_bucket_is_rejected_and_changes_nothing(federated):
    before = {name: r["pid"] for name, r in recorded(federated["home"]).items()}
    cli(federated["home"], "stack", "up", str(federated["config"]))  # restarts only the killed worker
    after = {name: r["pid"] for name, r in recorded(federated["home"]).items()}
    assert {n for n in after if after[n] != before.get(n)} == {"worker-silo-s2"}
    bucket, key = s3(federated), "synth/federations/synth/rounds/3/global.arrow"
    original = bucket.get_object(Bucket="fedsilo", Key=key)["Body"].read()
    tampered = bytearray(original)
    tampered[-64] ^= 0x01  # one bit of the model the next round starts from
    bucket.put_object(Bucket="fedsilo", Key=key, Body=bytes(tampered))  # behind the exchange's back
    run = cli(federated["home"], "run", str(federated["config"]), "--rounds", "1", "--no-progress",
              env=federated["env"], timeout=900, check=False)
    assert run.returncode == 1  # the coordinator refuses the round's starting model before any silo runs
    assert f"{key.removeprefix('synth/')}: content does not match its published digest" in run.stderr
    from mlflow import MlflowClient

    mlflow = MlflowClient(tracking_uri=federated["env"]["FEDSILO_TRACKING_URI"])
    assert sorted(int(v.version) for v in mlflow.search_model_versions("name = 'synth'")) == [1, 2, 3]
    assert "Contents" not in bucket.list_objects_v2(Bucket="fedsilo", Prefix="synth/federations/synth/rounds/4/round.json")
