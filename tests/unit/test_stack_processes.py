"""The stack's process bookkeeping: a process it has just started counts as running even while its
command line does not yet match the recorded one (between fork and exec), it is stopped by its
process group, and a recorded pid that runs another command is never taken for ours."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from infra.stack import Service, Stack
from infra.state import StateDir
from infra.synthetic import write_synthetic_federation


def test_a_child_counts_as_running_before_its_command_line_matches_and_is_stopped_by_its_group(tmp_path):
    from infra.config import load_config

    config = load_config(write_synthetic_federation(tmp_path / "fed", n_silos=2, rows=40))
    stack = Stack(StateDir(root=tmp_path / "state"), config)
    stack.root.mkdir(parents=True)
    probe = Service("probe", ["sleep", "30"], dict(os.environ), None)
    stack._start(probe)
    record = json.loads(stack._pid_file("probe").read_text())
    # what /proc shows between fork and exec: the parent's command line, not the recorded one
    stack._pid_file("probe").write_text(json.dumps({**record, "argv": ["python", "-m", "flows.cli", "stack", "up"]}))
    assert not stack._alive(stack._recorded("probe"))  # a cmdline check alone would call it dead
    assert stack._running("probe")
    stack._wait_ready(probe, time.monotonic() + 5)  # does not report it as exited
    assert stack._stop("probe")
    assert stack._children == {} and not stack._pid_file("probe").exists()
    assert not os.path.exists(f"/proc/{record['pid']}")  # killed and reaped


def test_a_recorded_pid_running_another_command_is_not_ours(tmp_path):
    from infra.config import load_config

    config = load_config(write_synthetic_federation(tmp_path / "fed", n_silos=2, rows=40))
    stack = Stack(StateDir(root=tmp_path / "state"), config)
    stack.pids.mkdir(parents=True)
    stack._pid_file("stale").write_text(json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0),
                                                     "argv": ["prefect", "server", "start"]}))
    assert not stack._running("stale")
    assert not stack._stop("stale")  # this test process is still here to assert it
    assert not stack._pid_file("stale").exists()


def test_workers_poll_less_often_as_there_are_more_of_them(tmp_path):
    """Every poll costs the Prefect server CPU: the workers together poll about POLLS_PER_SECOND times
    a second, every second each up to that many workers."""
    from infra.config import load_config
    from infra.stack import POLLS_PER_SECOND, poll_seconds

    for silos, expected in ((2, "1"), (9, "1"), (16, "2")):
        config = load_config(write_synthetic_federation(tmp_path / f"fed{silos}", n_silos=silos, rows=40))
        stack = Stack(StateDir(root=tmp_path / f"state{silos}"), config)
        layout = {"ports": {"postgres": 4, "prefect": 1, "s3": 2, "mlflow": 3}, "auth": "user:pass"}
        workers = stack.workers(layout)
        assert len(workers) == silos + 1
        assert {w.env["PREFECT_WORKER_QUERY_SECONDS"] for w in workers} == {expected}
        assert len(workers) / int(expected) <= POLLS_PER_SECOND * 1.25
    assert poll_seconds(1) == 1 and poll_seconds(101) == 11


def test_the_prefect_server_runs_on_the_stacks_postgres_with_its_recorders_on(tmp_path):
    """No SQLite settings left: the connection URL names the stack's database on loopback, and neither
    the task-run recorder nor the event persister is turned off."""
    from infra.config import load_config
    from infra.postgres import Cluster

    config = load_config(write_synthetic_federation(tmp_path / "fed", n_silos=2, rows=40))
    stack = Stack(StateDir(root=tmp_path / "state"), config)
    cluster = Cluster(root=tmp_path / "pg", account=None)
    cluster.root.mkdir()
    cluster.password_file.write_text("secret\n")
    layout = {"ports": {"postgres": 5432, "prefect": 1, "s3": 2, "mlflow": 3}, "auth": "user:pass"}
    prefect = next(s for s in stack.servers(layout, cluster) if s.name == "prefect")
    assert prefect.env["PREFECT_API_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://fedsilo:secret@127.0.0.1:5432/prefect"
    assert not [k for k in prefect.env if "RECORDER" in k or "PERSISTER" in k]


def _programs(folder: Path, version: str) -> Path:
    """Stand-ins for initdb, pg_ctl and postgres; `postgres --version` answers like the real one."""
    folder.mkdir(parents=True)
    for program in ("initdb", "pg_ctl", "postgres"):
        script = folder / program
        script.write_text(f"#!/bin/sh\necho '{program} (PostgreSQL) {version} (test build)'\n")
        script.chmod(0o755)
    return folder


def test_the_binaries_are_taken_from_path_first_then_the_newest_versioned_folder(tmp_path):
    from infra.postgres import find_binaries

    old, new = _programs(tmp_path / "old", "13.9"), _programs(tmp_path / "new", "16.2")
    partial = tmp_path / "partial"  # a psql-only folder, as a client package leaves it
    _programs(partial, "17.0")
    (partial / "initdb").unlink()
    found = find_binaries(path=os.pathsep.join(map(str, (partial, old, new))), search=())
    assert (found.folder, found.major, found.initdb) == (new, 16, new / "initdb")  # 13 is too old
    for major in ("15", "17", "9.6"):
        _programs(tmp_path / "lib" / "postgresql" / major / "bin", f"{major}.1")
    found = find_binaries(path=str(tmp_path / "none"), search=(str(tmp_path / "lib" / "postgresql" / "*" / "bin"),))
    assert (found.folder.parent.name, found.major) == ("17", 17)


def test_missing_binaries_are_one_line_saying_what_to_install_and_nothing_starts(tmp_path, monkeypatch):
    from infra import postgres
    from infra.config import load_config

    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(postgres, "SEARCH", (str(tmp_path / "usr-lib-postgresql" / "*" / "bin"),))
    config = load_config(write_synthetic_federation(tmp_path / "fed", n_silos=2, rows=40))
    stack = Stack(StateDir(root=tmp_path / "state"), config)
    with pytest.raises(postgres.PostgresError) as missing:
        stack.up()
    message = str(missing.value)
    assert "\n" not in message
    assert message.startswith("the stack's Prefect server needs PostgreSQL 15+ server binaries")
    assert "apt-get install postgresql" in message and "PREFECT_API_URL" in message
    assert not stack.root.exists()  # nothing written, nothing started

    _programs(tmp_path / "bin", "14.11")  # an older server is named, still on one line
    with pytest.raises(postgres.PostgresError) as old:
        stack.up()
    assert "\n" not in str(old.value) and f"found PostgreSQL 14 in {tmp_path / 'bin'}" in str(old.value)


def test_the_cli_prints_the_missing_binaries_as_one_error_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app
    from infra import postgres

    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("FEDSILO_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setattr(postgres, "SEARCH", ())
    config = write_synthetic_federation(tmp_path / "fed", n_silos=2, rows=40)
    result = CliRunner().invoke(app, ["stack", "up", str(config)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"error: {postgres.MISSING}"]


def test_as_root_the_programs_run_as_the_postgres_user_and_not_as_root_as_this_one(monkeypatch):
    import pwd

    from infra import postgres

    assert postgres.server_account(euid=1000) is None
    entry = pwd.struct_passwd(("postgres", "x", 101, 104, "", "/var/lib/postgresql", "/bin/false"))
    monkeypatch.setattr(postgres.pwd, "getpwnam", lambda name: entry if name == "postgres" else None)
    account = postgres.server_account(euid=0)
    assert (account.name, account.uid, account.gid) == ("postgres", 101, 104)
    assert account.popen() == {"user": 101, "group": 104, "extra_groups": []}

    def missing(name):
        raise KeyError(name)

    monkeypatch.setattr(postgres.pwd, "getpwnam", missing)
    with pytest.raises(postgres.PostgresError, match="no user 'postgres'"):
        postgres.server_account(euid=0)


def test_a_folder_the_database_user_cannot_enter_is_named():
    """As root, PostgreSQL runs as another user, who must be able to pass through every folder above
    its data: the first one it cannot enter is named, with its mode."""
    from infra.postgres import Account, Cluster, PostgresError, check_reachable, unreachable

    stranger = Account(name="fedsilo-test-nobody", uid=os.getuid() + 4242, gid=os.getgid() + 4242)
    top = Path(tempfile.mkdtemp(prefix="fedsilo-reach-"))  # below /tmp, whose parents everyone may enter
    try:
        top.chmod(0o711)
        cluster = Cluster(root=top / "home" / "stack" / "postgres", account=stranger)
        cluster.root.mkdir(parents=True)
        (top / "home").chmod(0o700)
        assert unreachable(cluster.root, stranger) == top / "home"
        with pytest.raises(PostgresError, match=f"may not enter {top / 'home'} \\(mode 700\\)"):
            check_reachable(cluster)
        (top / "home").chmod(0o711)
        (top / "home" / "stack").chmod(0o700)
        assert unreachable(cluster.root, stranger) == top / "home" / "stack"
        os.chown(top / "home" / "stack", -1, os.getgid())
        member = Account(name="fedsilo-test-member", uid=stranger.uid, gid=os.getgid())  # its group may pass 0710
        (top / "home" / "stack").chmod(0o710)
        assert unreachable(cluster.root, member) is None and unreachable(cluster.root, stranger) == top / "home" / "stack"
        check_reachable(Cluster(root=cluster.root, account=None))  # not root: nothing to check
    finally:
        shutil.rmtree(top)
