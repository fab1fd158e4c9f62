"""Process settings for embedded runs, applied once at the entry point.

Prefect: a temporary local API whose SQLite database lives in the state folder (`embedded_api`,
`infra.prefect_api`), with the task-run recorder on (the Prefect UI shows every step of every silo)
and tuned so that orchestration does not dominate a round. MLflow and Great Expectations: no
telemetry (the machine may have no internet, and telemetry writes an id under the user's home),
quiet logs. Sync flows join a heartbeat thread for ~1 s at exit unless heartbeats are off, which
Prefect only accepts in code (`embedded_prefect`).

`configure_embedded` must run before `prefect` is imported: Prefect reads these settings
from the environment once. A `PREFECT_API_URL` already in the environment is respected (the runs
then go to that server).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, MutableMapping

from infra.state import StateDir

QUIET_CONSOLE = {
    # Logs still reach the API (and the Prefect UI) at INFO; the console is the CLI's: it shows
    # progress, the round table and one line per error, so Prefect prints only critical messages.
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL": "CRITICAL",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL": "CRITICAL",
    "PREFECT_SERVER_LOGGING_LEVEL": "ERROR",
}


def embedded_environment(state: StateDir) -> dict[str, str]:
    return {
        "PREFECT_HOME": str(state.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false",
        # Vectors and secrets never go through Prefect results; silo flows return JSON manifests.
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    }


LIBRARIES = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # with a tracking server, no "View run at" per run
}
QUIET_LIBRARIES = {"MLFLOW_LOGGING_LEVEL": "WARNING"}


def configure_embedded(state: StateDir, env: MutableMapping[str, str] | None = None, quiet: bool = True) -> None:
    env = os.environ if env is None else env
    state.prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect does not create nested homes itself
    env.update(embedded_environment(state))
    env.update(LIBRARIES)
    if quiet:
        for key, value in {**QUIET_CONSOLE, **QUIET_LIBRARIES}.items():
            env.setdefault(key, value)


@contextlib.contextmanager
def embedded_prefect() -> Iterator[None]:
    """Heartbeats off for the flows run inside (the setting refuses its env var)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def embedded_api(state: StateDir):
    """The embedded Prefect API for this process (`infra.prefect_api.LocalApi`, started in the
    background), or None when ``PREFECT_API_URL`` names a server (the runs then go there)."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    from infra.prefect_api import LocalApi

    return LocalApi(log_path=state.prefect_home / "api.log").start()


@contextlib.contextmanager
def using_api(api) -> Iterator[None]:
    """Wait for `api` (if any) and point Prefect's client at it inside the block."""
    if api is None:
        yield
        return
    with api.wait().settings():
        yield
