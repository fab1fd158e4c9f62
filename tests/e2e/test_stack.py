"""`fedsilo stack up|status|down` in subprocesses: real PostgreSQL, Prefect, MLflow and S3 (moto)
servers and one Prefect worker per silo pool on 127.0.0.1, tracked by pid files and stopped by them
only; the Prefect server's database in the stack's own PostgreSQL cluster; silo pools whose locked
base job template refuses command and environment overrides."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from stack_helpers import alive, cli, processes_naming, reachable_folder, recorded

from infra.synthetic import write_synthetic_federation

pytestmark = pytest.mark.e2e
SERVERS = ["mlflow", "postgres", "prefect", "s3", "warm-start"]
WORKERS = ["worker-fedsilo-coordinator", "worker-silo-s0", "worker-silo-s1", "worker-silo-s2"]


@pytest.fixture(scope="module")
def stack():
    root = reachable_folder("fedsilo-stack-")
    config = write_synthetic_federation(root / "fed", n_silos=3)
    home = root / "state"
    began = time.perf_counter()
    try:
        up = cli(home, "stack", "up", str(config))
        layout = json.loads((home / "stack" / "stack.json").read_text())
        yield {"home": home, "config": config, "up": up, "layout": layout, "up_s": time.perf_counter() - began}
    finally:
        cli(home, "stack", "down", str(config), check=False)
        for record in recorded(home).values():  # a safety net: by the recorded process groups only
            try:
                os.killpg(record["pgid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(root)


def url(stack, name: str) -> str:
    return f"http://127.0.0.1:{stack['layout']['ports'][name]}"


def test_up_starts_every_process_on_loopback_and_prints_where_to_look(stack):
    out = stack["up"].stdout
    for name, label in (("prefect", "Prefect UI"), ("mlflow", "MLflow UI"), ("s3", "S3 endpoint")):
        assert f"{label}" in out and url(stack, name) in out
    assert "export PREFECT_API_URL=" in out and "export FEDSILO_EXCHANGE=s3://fedsilo/synth" in out
    assert "roster v3: s0, s1, s2" in out  # each silo's identity made in its own state folder, then enrolled
    for silo in ("s0", "s1", "s2"):
        pem = stack["home"] / "stack" / "silos" / silo / "silos" / silo / "identity" / "ed25519.pem"
        assert pem.stat().st_mode & 0o077 == 0
    pids = recorded(stack["home"])
    assert sorted(pids) == SERVERS + WORKERS
    assert all(alive(r["pid"]) for r in pids.values())
    for name in ("prefect", "mlflow", "s3"):
        assert "127.0.0.1" in pids[name]["argv"]  # told to listen on loopback only
    assert "listen_addresses=127.0.0.1" in pids["postgres"]["argv"]
    with urllib.request.urlopen(url(stack, "prefect") + "/api/health", timeout=5) as response:
        assert response.status == 200
    anonymous = urllib.request.Request(url(stack, "prefect") + "/api/work_pools/filter", data=b"{}", method="POST",
                                       headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:  # the API wants the stack's auth string
        urllib.request.urlopen(anonymous, timeout=5)
    assert refused.value.code == 401
    assert f"export PREFECT_API_AUTH_STRING={stack['layout']['auth']}" in out
    assert (stack["home"] / "stack" / "stack.json").stat().st_mode & 0o077 == 0
    with urllib.request.urlopen(url(stack, "mlflow") + "/health", timeout=5) as response:
        assert response.status == 200
    status = cli(stack["home"], "stack", "status", str(stack["config"]))
    assert status.stdout.count("running") == 9


def test_up_again_changes_nothing(stack):
    before = {name: r["pid"] for name, r in recorded(stack["home"]).items()}
    cli(stack["home"], "stack", "up", str(stack["config"]))
    assert {name: r["pid"] for name, r in recorded(stack["home"]).items()} == before


def test_the_bucket_and_the_tracking_server_answer(stack):
    import boto3
    from mlflow import MlflowClient

    s3 = boto3.client("s3", endpoint_url=url(stack, "s3"), region_name="us-east-1", aws_access_key_id="x",
                      aws_secret_access_key="x")
    s3.put_object(Bucket="fedsilo", Key="probe", Body=b"ok")
    assert s3.get_object(Bucket="fedsilo", Key="probe")["Body"].read() == b"ok"
    assert any(e.name == "Default" for e in MlflowClient(tracking_uri=url(stack, "mlflow")).search_experiments())


def test_silo_pools_have_workers_and_refuse_command_and_env_overrides(stack):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url(stack, "prefect") + "/api", PREFECT_API_AUTH_STRING: stack["layout"]["auth"]}), \
            get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                client.read_workers_for_work_pool(p) for p in ("silo-s0", "silo-s1", "silo-s2")):
            time.sleep(0.5)
        for pool in ("silo-s0", "silo-s1", "silo-s2", "fedsilo-coordinator"):
            assert [w.name for w in client.read_workers_for_work_pool(pool)] == [f"{pool}-worker"]
            template = client.read_work_pool(pool).base_job_template
            assert template["variables"]["additionalProperties"] is False
            assert not {"command", "env", "working_dir"} & set(template["variables"]["properties"])
        flow_id = client.create_flow_from_name("silo")
        with pytest.raises(PrefectHTTPStatusError) as refused:
            client.create_deployment(flow_id=flow_id, name="override", work_pool_name="silo-s0",
                                     job_variables={"command": "touch /tmp/fedsilo-override"})
        assert refused.value.response.status_code == 422 and "command" in refused.value.response.text
        deployment = client.create_deployment(flow_id=flow_id, name="plain", work_pool_name="silo-s0")
        with pytest.raises(PrefectHTTPStatusError) as refused:
            client.create_flow_run_from_deployment(deployment, job_variables={"env": {"PATH": "/tmp"}})
        assert refused.value.response.status_code == 422 and "env" in refused.value.response.text


def _postgres(stack, password: str | None = None, database: str = "prefect"):
    """A connection to the stack's database, as its role (with the stack's password unless given)."""
    import asyncpg

    cluster = stack["home"] / "stack" / "postgres"
    password = (cluster / "password").read_text().strip() if password is None else password
    return asyncpg.connect(host="127.0.0.1", port=stack["layout"]["ports"]["postgres"], user="fedsilo",
                           password=password, database=database, timeout=10)


def test_status_lists_the_database_with_its_port_and_folder(stack):
    status = cli(stack["home"], "stack", "status", str(stack["config"]))
    row = next(line.split() for line in status.stdout.splitlines() if line.split()[:1] == ["postgres"])
    port, folder = stack["layout"]["ports"]["postgres"], stack["home"] / "stack" / "postgres"
    assert row == ["postgres", str(recorded(stack["home"])["postgres"]["pid"]), "running",
                   f"postgresql://127.0.0.1:{port}/prefect", str(folder)]
    assert int((folder / "data" / "PG_VERSION").read_text()) >= 15
    assert (folder / "password").stat().st_mode & 0o077 == 0


def test_the_prefect_server_keeps_its_runs_in_the_stacks_postgres_with_its_recorders_on(stack):
    import asyncpg

    async def read():
        conn = await _postgres(stack)
        try:
            return {
                "pools": [r["name"] for r in await conn.fetch("SELECT name FROM work_pool ORDER BY name")],
                "extensions": {r["extname"] for r in await conn.fetch("SELECT extname FROM pg_extension")},
                "migrated": await conn.fetchval("SELECT count(*) FROM alembic_version"),
                "listen": await conn.fetchval("SHOW listen_addresses"),
                "sockets": await conn.fetchval("SHOW unix_socket_directories"),
                "hba": [tuple(r) for r in await conn.fetch(
                    "SELECT type, database, user_name, address FROM pg_hba_file_rules")],
            }
        finally:
            await conn.close()

    found = asyncio.run(read())
    assert found["pools"] == ["fedsilo-coordinator", "silo-s0", "silo-s1", "silo-s2"]  # made through the API
    assert "pg_trgm" in found["extensions"] and found["migrated"] == 1
    assert (found["listen"], found["sockets"]) == ("127.0.0.1", "")  # loopback TCP only, no Unix socket
    assert found["hba"] == [("host", ["prefect", "postgres"], ["fedsilo"], "127.0.0.1")]
    with pytest.raises(asyncpg.InvalidPasswordError):  # the role's password is needed, even on loopback
        asyncio.run(_postgres(stack, password="guess"))

    request = urllib.request.Request(url(stack, "prefect") + "/api/admin/settings", headers={
        "Authorization": "Basic " + base64.b64encode(stack["layout"]["auth"].encode()).decode()})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    services = json.loads(text)["server"]["services"]
    assert services["task_run_recorder"]["enabled"] is True and services["event_persister"]["enabled"] is True
    assert (stack["home"] / "stack" / "postgres" / "password").read_text().strip() not in text

    postmaster = recorded(stack["home"])["postgres"]["pid"]
    uid = int(next(line for line in open(f"/proc/{postmaster}/status") if line.startswith("Uid:")).split()[1])
    assert uid == (pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()) and uid != 0


def test_down_stops_the_recorded_processes_and_nothing_else(stack):
    home = stack["home"]
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        # a stale pid file naming a pid that now runs something else must not get it killed
        (home / "stack" / "pids" / "stale.json").write_text(
            json.dumps({"pid": bystander.pid, "pgid": bystander.pid, "argv": ["prefect", "server", "start"]}))
        pids = recorded(home)
        backends = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(pids["postgres"]["pid"])],
                                                       capture_output=True, text=True).stdout.split()]
        assert len(backends) >= 4  # checkpointer, writers, launchers: in sessions of their own, not its group
        ours = processes_naming(home)
        assert {r["pid"] for n, r in pids.items() if n != "stale"} <= set(ours)
        down = cli(home, "stack", "down", str(stack["config"]))
        assert "stopped 9" in down.stdout
        assert down.stdout.index("prefect") < down.stdout.index("postgres")  # the database last
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(r["pid"]) for n, r in pids.items() if n != "stale"):
            time.sleep(0.2)
        assert not any(alive(r["pid"]) for n, r in pids.items() if n != "stale")
        assert not [pid for pid in backends if alive(pid)]
        assert subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout == ""
        assert processes_naming(home) == {}
        assert "database system is shut down" in (home / "stack" / "logs" / "postgres.log").read_text()
        assert bystander.poll() is None  # still running
        assert not (home / "stack" / "pids").exists() or not list((home / "stack" / "pids").glob("*.json"))
        status = cli(home, "stack", "status", str(stack["config"]), check=False)
        assert "not up" in status.stdout
    finally:
        bystander.kill()
        bystander.wait()


def test_a_failed_up_stops_the_database_it_started(monkeypatch):
    """The Prefect server exits at once: `up` fails with its log, and the PostgreSQL it had started is
    stopped again (pg_ctl), leaving no process and no pid record; the cluster stays for the next `up`."""
    from infra.config import load_config
    from infra.stack import Service, Stack, StackError
    from infra.state import StateDir

    root = reachable_folder("fedsilo-stack-failed-")
    try:
        config = load_config(write_synthetic_federation(root / "fed", n_silos=2, rows=40))
        stack = Stack(StateDir(root=root / "state"), config)
        broken = Service("prefect", ["sh", "-c", "echo no server today; exit 3"], {"PATH": os.defpath}, "http://127.0.0.1:9/")
        monkeypatch.setattr(Stack, "servers", lambda self, layout, cluster: [broken])
        with pytest.raises(StackError, match="prefect exited while starting") as failed:
            stack.up()
        assert "no server today" in str(failed.value)
        assert not list(stack.pids.glob("*.json"))
        assert processes_naming(root) == {}
        assert (stack.database_root / "data" / "PG_VERSION").exists()
        assert "database system is shut down" in (stack.logs / "postgres.log").read_text()
    finally:
        for record in recorded(root / "state").values():  # a safety net: by the recorded process groups only
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record["pgid"], signal.SIGKILL)
        shutil.rmtree(root)
