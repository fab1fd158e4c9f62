"""The embedded mode's Prefect API: Prefect's own server application on SQLite, started for one
process's runs on a free port of 127.0.0.1 (as Prefect's ephemeral mode does), with two things of
its own measured to matter on SQLite:

- the task-run recorder writes task runs in batches (``…_TASK_RUN_RECORDER_BATCH_SIZE``), not one
  transaction per state change, so that the round's task runs are recorded (the Prefect UI shows
  them) without holding the database's single write lock most of the time; the event history is
  not persisted (it cost a 16-silo round 0.5 s);
- a busy database answers 503 with ``Retry-After: 0.05``: SQLite in WAL mode refuses a write
  transaction that started as a read while another writer committed (no busy timeout helps), and
  Prefect's client otherwise waits 2 s, then 4 s, before retrying. Measured here: a 16-silo round
  whose task runs are recorded went from 2.5–6.5 s to 0.6–1.5 s of orchestration.

The database lives in the state folder (``PREFECT_HOME``), so ``prefect server start`` with the
same ``PREFECT_HOME`` shows the runs afterwards.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from fl_core.errors import StateError

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent  # uvicorn imports this module from here
RETRY_AFTER = b"0.05"
STARTUP_TIMEOUT_S = 180.0  # a busy machine (load 10) took over a minute to migrate a new database
CLIENT_RETRIES = "40"  # 503s retried after RETRY_AFTER: up to ~2 s of a busy database, then a clear error


def create_app():
    """The ASGI app uvicorn serves: Prefect's, with ``Retry-After`` on its 503 answers."""
    from prefect.server.api.server import create_app as prefect_app

    app = prefect_app()

    async def with_retry_after(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start" and message.get("status") == 503:
                message = {**message, "headers": [*message.get("headers", []), (b"retry-after", RETRY_AFTER)]}
            await send(message)

        return await app(scope, receive, send_with_header)

    return with_retry_after


SERVER_SETTINGS = {
    "PREFECT_UI_ENABLED": "false",
    "PREFECT__SERVER_EPHEMERAL": "1",  # the services Prefect runs in an ephemeral server (recorder included)
    "PREFECT__SERVER_FINAL": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED": "true",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "1000",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "1000",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "2",
    # The event history (the UI's Events page) is not kept: persisting it cost a 16-silo round 0.5 s
    # here. Runs, task runs, states and logs are kept; the live event stream still works.
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class LocalApi:
    """Prefect's server app in a subprocess on 127.0.0.1, started in a background thread so that its
    start-up (5-9 s; longer on a new database) overlaps the caller's own imports. `wait()` blocks
    until it answers; `settings()` points this process's Prefect client at it; `stop()` ends it."""

    def __init__(self, log_path: Path, env: Mapping[str, str] | None = None, timeout_s: float = STARTUP_TIMEOUT_S):
        self.log_path = Path(log_path)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}/api"
        self.timeout_s = timeout_s
        self._env = {**(os.environ if env is None else env), **SERVER_SETTINGS}
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._error: str | None = None

    def start(self) -> LocalApi:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the server's own errors (a pipe would fill and stall it)
            self._process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "infra.prefect_api:create_app", "--host", HOST,
                 "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
                env=self._env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(REPO),
            )
        atexit.register(self.stop)
        self._thread = threading.Thread(target=self._await_health, name="prefect-api-start", daemon=True)
        self._thread.start()
        return self

    def _await_health(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                self._error = (f"exited with code {self._process.returncode}" + (f": {' / '.join(tail)}" if tail else "")
                               + f" (log: {self.log_path})")
                return
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self._error = f"did not answer within {self.timeout_s:.0f} s"

    def wait(self) -> LocalApi:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise StateError(f"the embedded Prefect API did not start: {self._error}")
        return self

    @contextlib.contextmanager
    def settings(self) -> Iterator[None]:
        """This process's Prefect client talks to this server inside the block."""
        from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.url, PREFECT_CLIENT_MAX_RETRIES: int(CLIENT_RETRIES)}):
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    self.drain()

    @staticmethod
    def drain() -> None:
        """Send this process's pending logs and events to the server (before the server stops, or
        the log worker would retry against a closed port at exit)."""
        import inspect

        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
        from prefect.utilities.asyncutils import run_coro_as_sync

        async def drain_workers() -> None:
            with contextlib.suppress(RuntimeError):  # a worker that never started
                result = APILogWorker.instance().drain()
                if inspect.isawaitable(result):
                    await result
            result = EventsWorker.drain_all()
            if inspect.isawaitable(result):
                await result

        run_coro_as_sync(drain_workers())

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> LocalApi:
        return self.start().wait()

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):  # best effort: the server stops either way
            self.drain()
        self.stop()
