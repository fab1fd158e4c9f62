"""The stack's process bookkeeping: a process it has just started counts as running even while its
command line does not yet match the recorded one (between fork and exec), it is stopped by its
process group, and a recorded pid that runs another command is never taken for ours."""

from __future__ import annotations

import json
import os
import time

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
    """Every poll is a write on the stack's SQLite server: the workers together poll about
    POLLS_PER_SECOND times a second, however many silos there are."""
    from infra.config import load_config
    from infra.stack import POLLS_PER_SECOND, poll_seconds

    for silos, expected in ((2, "1"), (4, "1"), (16, "4")):
        config = load_config(write_synthetic_federation(tmp_path / f"fed{silos}", n_silos=silos, rows=40))
        stack = Stack(StateDir(root=tmp_path / f"state{silos}"), config)
        layout = {"ports": {"prefect": 1, "s3": 2, "mlflow": 3}, "auth": "user:pass"}
        workers = [s for s in stack.services(layout) if s.name.startswith("worker-")]
        assert len(workers) == silos + 1
        assert {w.env["PREFECT_WORKER_QUERY_SECONDS"] for w in workers} == {expected}
        assert len(workers) / int(expected) <= POLLS_PER_SECOND * 1.25
    assert poll_seconds(1) == 1 and poll_seconds(101) == 21
