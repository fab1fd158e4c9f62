"""Warm starts for the silo runs a Prefect process worker starts: each run's process is forked from a
long-lived process that has already imported everything a silo run needs, instead of a new
interpreter importing it all again.

Why: a silo's run through a process worker is a fresh Python process. Before its first step it
imports Prefect, torch (and ``torch._dynamo``, which ``torch.optim`` pulls in at the first optimiser
step), Great Expectations, pyarrow and boto3 — 5 to 11 s of CPU and about 430 MB of private memory,
for a run whose own work is a few hundred milliseconds. Sixteen such runs starting together on one
machine were most of a round's time; fifty did not fit in its memory.

How: the pools' locked job template runs ``python -m flows.engine`` (`flows.engine`) instead of
``python -m prefect.engine``. That small program (standard library only, ~50 ms) finds the warm
process's Unix socket in ``FEDSILO_WARM_SOCKET`` and hands it its environment, working folder, command
line and its standard streams (the descriptors themselves, over the socket); the warm process forks,
and the child becomes that run's engine — ``prefect.engine`` run as ``__main__`` with the run's
environment, exactly the code a cold start runs, minus the imports. The program the worker started
waits for the child and exits as it does (the same code, or killed by the same signal), forwards the
signals it gets to it, and if it is killed itself, the warm process kills the child: to the worker
it is the run's process. Without the variable, when the socket does not answer, or when the warm
process declines (the run's Prefect logging settings differ from its own), the program becomes the cold engine
(`exec`), so a pool works the same with any worker.

The warm process holds no secret: it imports modules and nothing else (it never runs a flow, reads a
key or opens the exchange); every secret a run touches is loaded by the run, in its child, after the
fork. Its socket is its owner's only (0600, in a folder of the owner's); each child gets the
environment of the process its worker started, nothing of another run. Children share the parent's
pages until they write to them (`gc.freeze` before serving keeps the collector from touching them
all). While a child runs, ``<socket>.runs/<flow run id>`` holds its pid (for an operator, and for the
tests that kill a run's process).

Fork safety: the warm process imports only and runs no torch operation, so no thread pool exists when
it forks, and it checks that it is single-threaded before serving (it refuses to start otherwise).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

# What a silo run imports, in the order it imports them (each module pulls in its own dependencies).
PRELOAD = (
    "prefect.flow_engine", "prefect.deployments.steps", "prefect.runner",
    "torch", "torch.optim", "torch._dynamo", "opacus", "pyarrow", "pyarrow.parquet", "pyarrow.compute",
    "great_expectations", "great_expectations.expectations", "boto3", "botocore",
    "flows.silo", "tasks.silo_round", "tasks.silo", "tasks.secure_silo", "validation.suite", "validation.validate",
    "infra.s3_store",
)

HEADER = struct.Struct("!I")  # the length of the request's JSON
MAX_REQUEST = 1 << 20


class WarmStartError(RuntimeError):
    """The warm process cannot serve (it is not single-threaded after its imports, or its socket is taken)."""


def logging_settings(env: dict[str, str]) -> dict:
    """Prefect's logging settings as `env` resolves them (with the profile its ``PREFECT_HOME`` names).
    Prefect sets its logging up when it is imported, so a child runs with the warm process's logging:
    a run whose environment resolves them otherwise is started cold. Every other setting the child
    reads again from its own environment (`prefect.context.refresh_global_settings_context`)."""
    from prefect.settings import Settings

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return Settings().logging.model_dump(mode="json")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def preload(modules: tuple[str, ...] = PRELOAD) -> float:
    """Import `modules`; returns the CPU seconds it took."""
    began = time.process_time()
    for name in modules:
        importlib.import_module(name)
    return time.process_time() - began


class WarmServer:
    """The warm process's loop: accept a run's request, fork its child, relay signals and the child's end."""

    def __init__(self, socket_path: Path, log=print, engine: str = "prefect.engine"):
        """`engine`: the module each child runs as ``__main__`` (Prefect's engine; another in tests)."""
        self.path = Path(socket_path)
        self.engine = engine
        self.runs = self.path.with_name(self.path.name + ".runs")
        self.log = log
        self.pid = os.getpid()
        self.logging = logging_settings(dict(os.environ))
        self.children: dict[int, tuple[socket.socket, str]] = {}  # pid -> (its requester's connection, run id)
        self.by_conn: dict[socket.socket, int] = {}
        self._stop = False
        self._own_fds: list[int] = []  # the listener and the wake-up pipe: a child closes them

    # -- serving -----------------------------------------------------------------------------------
    def serve(self) -> None:
        if threading.active_count() != 1:
            raise WarmStartError(f"{threading.active_count()} threads after the imports: forking would copy "
                                 "them half-stopped; not serving")
        self.runs.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old)
        listener.listen(128)
        wake_r, wake_w = os.pipe()
        self._own_fds = [listener.fileno(), wake_r, wake_w]
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        gc.freeze()  # the imported objects stay out of the collector's way: children keep sharing their pages
        self.log(f"warm start: serving on {self.path} (pid {self.pid})")
        try:
            while not self._stop:
                try:
                    ready, _, _ = select.select([listener, wake_r, *self.by_conn], [], [], 5.0)
                except InterruptedError:
                    continue
                if wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                self._reap()
                for conn in [c for c in ready if c is not listener and c is not wake_r]:
                    self._from_requester(conn)
                if listener in ready:
                    conn, _ = listener.accept()
                    self._request(conn)  # in a forked child this returns only by raising SystemExit
        finally:
            if os.getpid() == self.pid:  # not in a child leaving by SystemExit
                self._shutdown(listener)

    def _on_stop(self, *_):
        self._stop = True

    def _shutdown(self, listener: socket.socket) -> None:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for pid in list(self.children):  # runs in flight end with the warm process (as with a killed worker)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self.log("warm start: stopped")

    # -- one request -------------------------------------------------------------------------------
    def _request(self, conn: socket.socket) -> None:
        conn.settimeout(5.0)
        try:
            request, fds = self._read_request(conn)
        except EOFError:  # a connection and nothing on it: a readiness probe
            conn.close()
            return
        except (OSError, ValueError) as exc:
            self.log(f"warm start: a request could not be read: {exc}")
            conn.close()
            return
        conn.settimeout(None)
        env = request["env"]
        theirs = logging_settings(env)
        if theirs != self.logging:
            differ = sorted(k for k in set(theirs) | set(self.logging) if theirs.get(k) != self.logging.get(k))
            self._answer(conn, f"cold the run's Prefect logging settings differ from the warm process's: "
                               f"{', '.join(differ)}")
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        argv = request.get("argv") or []
        run_id = str(env.get("PREFECT__FLOW_RUN_ID") or (argv[1] if len(argv) > 1 else "unknown"))
        pid = os.fork()
        if pid == 0:
            self._become_run(conn, fds, request)  # never returns
        for fd in fds:
            os.close(fd)
        self.children[pid] = (conn, run_id)
        self.by_conn[conn] = pid
        (self.runs / _safe(run_id)).write_text(str(pid))
        self._answer(conn, f"pid {pid}")

    @staticmethod
    def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
        head, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
        if not head:
            raise EOFError
        while len(head) < HEADER.size:
            more = conn.recv(HEADER.size - len(head))
            if not more:
                raise ValueError("the requester hung up")
            head += more
        (size,) = HEADER.unpack(head)
        if size > MAX_REQUEST or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            raise ValueError(f"a request of {size} bytes with {len(fds)} descriptors (3 expected)")
        body = b""
        while len(body) < size:
            more = conn.recv(size - len(body))
            if not more:
                raise ValueError("the requester hung up")
            body += more
        request = json.loads(body)
        if not isinstance(request, dict) or not isinstance(request.get("env"), dict):
            raise ValueError("a request without an environment")
        return request, fds

    @staticmethod
    def _answer(conn: socket.socket, line: str) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(line.encode() + b"\n")

    def _become_run(self, conn: socket.socket, fds: list[int], request: dict) -> None:
        """In the child: take the requester's streams, folder, environment and command line, then run
        Prefect's engine as `python -m prefect.engine` would."""
        import runpy

        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        for fd in self._own_fds:  # the run must not keep the warm process's socket open after it is gone
            with contextlib.suppress(OSError):
                os.close(fd)
        for other in self.by_conn:
            other.close()
        conn.close()
        self.children.clear()
        self.by_conn.clear()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115  (the streams live as long as the process)
        sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("cwd"):
            os.chdir(request["cwd"])
        sys.argv = ["-m", *request.get("argv", [])[1:]]
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()  # the run's settings, from its environment
        sys.modules.pop(self.engine, None)  # imported by the preloads; it runs afresh as __main__, as cold
        runpy.run_module(self.engine, run_name="__main__", alter_sys=True)
        raise SystemExit(0)

    # -- the requester's side and the children's ends ----------------------------------------------
    def _from_requester(self, conn: socket.socket) -> None:
        pid = self.by_conn.get(conn)
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        if pid is None:
            return
        if not data:  # the process the worker started is gone (killed): its run goes with it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.by_conn.pop(conn, None)
            return
        for line in data.decode(errors="replace").splitlines():
            word, _, value = line.partition(" ")
            if word == "sig" and value.isdigit() and int(value) in {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, int(value))

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn, run_id = self.children.pop(pid, (None, ""))
            (self.runs / _safe(run_id)).unlink(missing_ok=True)
            if conn is not None:
                self.by_conn.pop(conn, None)
                self._answer(conn, f"exit {os.waitstatus_to_exitcode(status)}")
                conn.close()


def _safe(run_id: str) -> str:
    return "".join(ch for ch in run_id if ch.isalnum() or ch == "-")[:64] or "unknown"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.warm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, type=Path, help="the Unix socket to serve on")
    args = parser.parse_args(argv)
    seconds = preload()
    print(f"warm start: imported {len(PRELOAD)} modules in {seconds:.1f} s of CPU", flush=True)
    try:
        WarmServer(args.socket, log=lambda line: print(line, flush=True)).serve()
    except WarmStartError as exc:
        print(f"warm start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
