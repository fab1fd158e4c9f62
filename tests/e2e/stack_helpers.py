"""Helpers for the tests that drive `fedsilo stack` and the federated mode in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
