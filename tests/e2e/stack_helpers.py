"""Helpers for the tests that drive `fedsilo stack` and the federated mode in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

FEDSILO = str(Path(sys.executable).parent / "fedsilo")


def cli(home: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """`fedsilo ARGS` with FEDSILO_HOME = `home`, none of this process's Prefect/fedsilo/AWS settings,
    and `env` on top."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FEDSILO_", "AWS_"))}
    result = subprocess.run([FEDSILO, *args], env={**base, "FEDSILO_HOME": str(home), "COLUMNS": "200", **(env or {})},
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"fedsilo {' '.join(args)} exited {result.returncode}: {result.stdout}\n{result.stderr}")
    return result


def recorded(home: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (home / "stack" / "pids").glob("*.json")}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def flow_run_pid(run_id: str) -> int | None:
    """The process running flow run `run_id` on this machine: the child of a warm-start process that
    runs it (named in that process's ``<socket>.runs/`` folder), else the process a worker started for
    it (a process worker hands it the run's id in ``PREFECT__FLOW_RUN_ID``), if any."""
    for entry in Path(tempfile.gettempdir()).glob(f"fedsilo-*/warm-*.sock.runs/{run_id}"):
        try:
            pid = int(entry.read_text())
        except (OSError, ValueError):
            continue
        if alive(pid):
            return pid
    needle = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except OSError:
            continue
    return None


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def reachable_folder(prefix: str) -> Path:
    """A new folder below /tmp that other users may pass through (0711) but not list. As root, the
    stack's PostgreSQL runs as the user postgres, which must reach its data folder inside the stack
    (pytest's own temp folders are 0700)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o711)
    return folder


def processes_naming(root: Path) -> dict[int, str]:
    """Live processes whose command line, environment or working folder names `root` (pid -> command
    line): the stack's servers (which start in its folder), PostgreSQL's processes (in their data
    folder), the workers and the flow runs they started."""
    found = {}
    needle = str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid() or not alive(int(entry.name)):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            cwd = os.fsencode(os.readlink(entry / "cwd"))
        except OSError:  # gone, or another user's (not root): not one of this stack's
            continue
        if needle in cmdline or needle in environ or cwd.startswith(needle):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found
