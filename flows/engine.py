"""What a silo pool's process worker runs for each flow run: ``python -m flows.engine``, which has the
run's process forked from the warm process (`flows.warm`) when one serves on ``FEDSILO_WARM_SOCKET``,
and otherwise becomes ``python -m prefect.engine`` (a cold start). Standard library only: it starts in
a few tens of milliseconds.

It stays the process its worker knows: it forwards SIGTERM, SIGINT and SIGHUP to the run's process,
waits for it, and ends as it ended (the same exit code, or killed by the same signal); killed itself,
its run's process is killed by the warm process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

HEADER = struct.Struct("!I")
CONNECT_TIMEOUT_S = 5.0
FORK_TIMEOUT_S = 60.0  # from the request to the child's pid: the warm process answers after forking


class ColdStart(Exception):
    """No warm start for this run: the reason is printed and the engine starts cold."""


def _request(sock: socket.socket) -> None:
    body = json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv}).encode()
    socket.send_fds(sock, [HEADER.pack(len(body))], [0, 1, 2])
    sock.sendall(body)


def _lines(sock: socket.socket):
    buffer = b""
    while True:
        try:
            data = sock.recv(256)
        except InterruptedError:
            continue
        if not data:
            return
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode(errors="replace")


def warm(path: str) -> int:
    """Run this flow run in a child of the warm process; its exit code (negative: killed by that signal)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect(path)
        _request(sock)
    except OSError as exc:
        sock.close()
        raise ColdStart(f"the warm process at {path} does not answer ({exc})") from None
    sock.settimeout(FORK_TIMEOUT_S)
    lines = _lines(sock)
    try:
        first = next(lines, "")
    except OSError as exc:  # accepted but never answered: a warm process that hangs
        sock.close()
        raise ColdStart(f"the warm process at {path} did not start the run ({exc})") from None
    sock.settimeout(None)
    word, _, value = first.partition(" ")
    if word != "pid" or not value.isdigit():
        sock.close()
        raise ColdStart(value if word == "cold" else f"the warm process at {path} answered {first!r}")

    def forward(signum, _frame):
        try:
            sock.sendall(f"sig {signum}\n".encode())
        except OSError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    child = int(value)
    for line in lines:
        word, _, value = line.partition(" ")
        if word == "exit":
            return int(value)
    try:  # the warm process went away: the run's process must not outlive this one
        os.kill(child, signal.SIGKILL)
    except ProcessLookupError:
        pass
    print(f"fedsilo: the warm process at {path} went away while this run's process {child} ran",
          file=sys.stderr)
    return 1


def main() -> None:
    path = os.environ.get("FEDSILO_WARM_SOCKET")
    if path:
        try:
            code = warm(path)
        except ColdStart as why:
            print(f"fedsilo: cold start ({why})", file=sys.stderr, flush=True)
        else:
            if code < 0:  # killed by a signal: end the same way, so the worker reports it as such
                if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
                    signal.signal(-code, signal.SIG_DFL)
                os.kill(os.getpid(), -code)
            os._exit(code)
    os.execv(sys.executable, [sys.executable, "-m", "prefect.engine", *sys.argv[1:]])


if __name__ == "__main__":
    main()
