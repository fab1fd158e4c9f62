"""Warm starts (`flows.warm`, `flows.engine`): a run's process forked from the warm process behaves,
to the worker that started `python -m flows.engine`, as the run's own process — the requester's
environment, folder, command line and streams, its exit code, its death by a signal — and it does not
outlive the requester; without a warm process, or when it declines, the engine starts cold.

Real processes and a real Unix socket; the child runs a small probe module instead of Prefect's
engine (which needs a server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.warm import WarmServer, logging_settings

PROBE = textwrap.dedent('''
    import os, sys, time
    mode = os.environ.get("PROBE_MODE", "echo")
    if mode == "echo":
        print("env", os.environ.get("PROBE_VALUE"), "cwd", os.getcwd(), "argv", sys.argv[1:], flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        raise SystemExit(int(os.environ.get("PROBE_EXIT", "0")))
    print("sleeping", os.getpid(), flush=True)
    time.sleep(120)
''')


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    (root / "warm_probe.py").write_text(PROBE)
    socket_path = Path(f"/tmp/fedsilo-test-{os.getpid()}.sock")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    code = ("import sys; from pathlib import Path; from flows.warm import WarmServer, preload; "
            "preload(('prefect.settings', 'prefect.context')); "
            f"WarmServer(Path({str(socket_path)!r}), engine='warm_probe').serve()")
    server = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not socket_path.exists():
        assert server.poll() is None and time.monotonic() < deadline, server.stdout.read() if server.poll() else "slow"
        time.sleep(0.05)
    yield {"socket": socket_path, "root": root, "server": server, "env": env}
    server.terminate()
    server.wait(timeout=30)
    assert not socket_path.exists()  # removed when it stops


def engine(warm, *args, env=None, cwd=None, **popen):
    base = {**warm["env"], "FEDSILO_WARM_SOCKET": str(warm["socket"]), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "flows.engine", *args], env=base, cwd=cwd or warm["root"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_the_child_runs_with_the_requesters_environment_folder_arguments_streams_and_exit_code(warm, tmp_path):
    run = engine(warm, "some-run-id", env={"PROBE_VALUE": "from-the-requester", "PROBE_EXIT": "3",
                                           "PREFECT__FLOW_RUN_ID": "run-1"}, cwd=tmp_path)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 3, err
    assert f"env from-the-requester cwd {tmp_path} argv ['some-run-id']" in out
    assert "to stderr" in err and "cold start" not in err


def test_a_child_is_a_child_of_the_warm_process_named_in_its_runs_folder_while_it_runs(warm):
    run = engine(warm, env={"PROBE_MODE": "sleep", "PREFECT__FLOW_RUN_ID": "run-2"})
    line = run.stdout.readline()
    pid = int(line.split()[1])
    runs = warm["socket"].with_name(warm["socket"].name + ".runs")
    assert (runs / "run-2").read_text() == str(pid)
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert parent == warm["server"].pid and pid != run.pid
    run.send_signal(signal.SIGTERM)  # forwarded: the child ends by it, and so does the requester
    run.wait(timeout=30)
    assert run.returncode == -signal.SIGTERM
    deadline = time.monotonic() + 10
    while (runs / "run-2").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (runs / "run-2").exists() and not _alive(pid)


def test_a_killed_requester_takes_its_child_with_it(warm):
    run = engine(warm, env={"PROBE_MODE": "sleep", "PREFECT__FLOW_RUN_ID": "run-3"})
    pid = int(run.stdout.readline().split()[1])
    run.kill()
    run.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_a_killed_child_ends_its_requester_by_the_same_signal(warm):
    run = engine(warm, env={"PROBE_MODE": "sleep", "PREFECT__FLOW_RUN_ID": "run-4"})
    pid = int(run.stdout.readline().split()[1])
    os.kill(pid, signal.SIGKILL)
    run.wait(timeout=30)
    assert run.returncode == -signal.SIGKILL


def test_other_logging_settings_or_no_warm_process_start_the_engine_cold(warm, tmp_path):
    # the cold engine is Prefect's own: with no valid run id it says so and exits 1
    declined = engine(warm, env={"PREFECT_LOGGING_LEVEL": "DEBUG", "PREFECT__FLOW_RUN_ID": "not-a-uuid"})
    _, err = declined.communicate(timeout=120)
    assert "cold start (the run's Prefect logging settings differ from the warm process's: level)" in err
    assert declined.returncode == 1 and "Invalid flow run id" in err
    absent = engine(warm, env={"FEDSILO_WARM_SOCKET": str(tmp_path / "none.sock"), "PREFECT__FLOW_RUN_ID": "x"})
    _, err = absent.communicate(timeout=120)
    assert "cold start (the warm process at" in err and "does not answer" in err
    assert absent.returncode == 1 and "Invalid flow run id" in err


def test_logging_settings_are_resolved_not_compared_as_strings():
    assert logging_settings({"PREFECT_LOGGING_LEVEL": "info"}) == logging_settings({"PREFECT_LOGGING_LEVEL": "INFO"})
    assert logging_settings({"PREFECT_LOGGING_LEVEL": "DEBUG"}) != logging_settings({})


def test_the_server_refuses_to_fork_with_threads_running(tmp_path):
    import threading

    from flows.warm import WarmStartError

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        with pytest.raises(WarmStartError, match="threads"):
            WarmServer(tmp_path / "s.sock").serve()
    finally:
        stop.set()
