"""`fedsilo stack up|down|status`: the federated mode's servers on one machine, for a person trying
it — a PostgreSQL server and a Prefect server on it, one Prefect process worker per silo pool (and
one for the coordinator's pool), an S3-compatible server (moto's server mode) and an MLflow tracking
server, all listening on 127.0.0.1 only.

Everything lives under ``<state>/stack/``: ``stack.json`` (ports, addresses, bucket), ``pids/<name>.json``
(pid, process group, the command it runs), ``logs/<name>.log``, the servers' stores (the Prefect
server's database cluster in ``postgres/``, see `infra.postgres`), and one state folder per silo
(``silos/<id>/``: each silo's worker runs its flows with its own ``FEDSILO_HOME``); the coordinator's
worker uses the state folder the stack was started from, like `fedsilo run` there.
Each process starts in its own session and is stopped by its recorded process group only — and only
if the pid still runs the command recorded for it (a pid reused by another program is left alone).

The pools are created with the locked base job template of `infra.workpools.locked_template`, whose
command has each run's process forked from the stack's warm-start process (`flows.warm`, one per
machine: it imports what a silo run needs once; the workers find it through ``FEDSILO_WARM_SOCKET``).

The Prefect server requires basic auth (``PREFECT_SERVER_API_AUTH_STRING``): a random string made at
the first `up`, kept in ``stack.json`` (0600), handed to the workers and printed among the ``export``
lines (``PREFECT_API_AUTH_STRING``) for the shell that runs the coordinator; the UI asks for it.

`up` is idempotent: it starts what is not running and leaves what is. A failed start stops what this
call started, so nothing is left half up. PostgreSQL starts first (the Prefect server migrates its
database when it starts) and stops last, with ``pg_ctl stop -m fast``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fl_core.errors import FedsiloError
from infra import postgres
from infra.config import FederationConfig
from infra.keystore import write_private
from infra.state import StateDir
from infra.workpools import COORDINATOR_POOL, ensure_pools

HOST = "127.0.0.1"
BUCKET = "fedsilo"
READY_TIMEOUT_S = 90.0
WORKERS_READY_TIMEOUT_S = 240.0  # 17 workers starting at once on 2 cores take about a minute
STOP_TIMEOUT_S = 15.0
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "fedsilo-local", "AWS_SECRET_ACCESS_KEY": "fedsilo-local",
               "AWS_DEFAULT_REGION": "us-east-1"}  # moto accepts any; never real credentials
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}

# The Prefect server on PostgreSQL keeps its task-run recorder and event persister on, as Prefect
# ships it. Measured on 2 cores with 4 and 8 client processes (64 and 256 silo-like runs at once, each
# a flow run and 6 task runs through their states, 21 requests): no errors or timeouts, and a pool of
# 20 + 20 was no faster than Prefect's 5 + 10 (17.5 s for 64 either way) — the one server process is
# bound by its own CPU, not by connections. But with 50 silos' runs starting at once on the same two
# cores (51 workers polling, 50 fresh processes importing Prefect and torch), the starved server held
# its 15 connections in open transactions past the pool's 30 s wait and answered 500 ("QueuePool limit
# of size 5 overflow 10 reached"): the stack gives it 20 + 30 connections and two minutes to get one.
POOL = {"PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "20",
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "30",
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_TIMEOUT": "120"}
MAX_CONNECTIONS = 100  # the pool's 50, the stack's own provisioning, a psql session or two

# Each worker poll costs the Prefect server about 20 ms of CPU; PostgreSQL's part is around 1 ms,
# and it takes the polls' writes concurrently (on SQLite they queued for its one writer). Measured
# with 17 idle workers: 0.32 of a core at 1 s each, 0.17 at 2 s, 0.09 at 4 s.
POLLS_PER_SECOND = 10  # all workers together: about a fifth of a core of the server's time (see poll_seconds)


def poll_seconds(workers: int) -> int:
    """How often each worker asks the server for runs: every second up to POLLS_PER_SECOND workers (a
    run is picked up ~0.5 s after it is created, on average), less often beyond so that the workers
    together poll about POLLS_PER_SECOND times a second (2 s each at 17 workers, 11 s at 101)."""
    return max(1, math.ceil(workers / POLLS_PER_SECOND))


class StackError(FedsiloError):
    """A stack process could not be started, reached or stopped."""


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    health: str | None  # URL answering 200 once the service is ready; None: a worker (pid only)
    socket: Path | None = None  # or a Unix socket accepting connections once it is ready
    run_as: postgres.Account | None = None  # started as this user (PostgreSQL's, when the stack runs as root)


@dataclass(frozen=True, slots=True)
class Status:
    name: str
    pid: int | None
    running: bool
    address: str | None
    folder: Path | None = None  # where it keeps its data, for the database


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((HOST, port)) != 0


class Stack:
    def __init__(self, state: StateDir, config: FederationConfig):
        self.config = config
        self.state_root = state.root
        self.root = state.root / "stack"
        self.pids = self.root / "pids"
        self.logs = self.root / "logs"
        self.layout_file = self.root / "stack.json"
        self.database_root = self.root / "postgres"
        # processes this call started: their Popen tells liveness even before exec has replaced the
        # forked child's command line (which the recorded-argv check cannot yet match)
        self._children: dict[str, subprocess.Popen] = {}

    # -- layout ------------------------------------------------------------------------------------
    def layout(self) -> dict:
        if self.layout_file.exists():
            layout = json.loads(self.layout_file.read_text())
            if layout.get("federation") != self.config.federation:
                raise StackError(f"{self.root} runs federation {layout.get('federation')!r}; stop it first "
                                 "(fedsilo stack down) or use another FEDSILO_HOME")
            if "postgres" not in layout["ports"]:
                raise StackError(f"{self.root} was started by an earlier fedsilo, with its Prefect server on SQLite; "
                                 "stop it first (fedsilo stack down)")
            return layout
        return {"federation": self.config.federation,
                "ports": {"postgres": free_port(), "prefect": free_port(), "mlflow": free_port(), "s3": free_port()},
                # the Prefect API answers only requests that carry it (basic auth); stack.json is 0600
                "auth": f"fedsilo:{secrets.token_urlsafe(24)}"}

    @staticmethod
    def addresses(layout: dict) -> dict[str, str]:
        ports = layout["ports"]
        return {
            "postgres": f"postgresql://{HOST}:{ports['postgres']}/{postgres.DATABASE}",
            "prefect": f"http://{HOST}:{ports['prefect']}",
            "mlflow": f"http://{HOST}:{ports['mlflow']}",
            "s3": f"http://{HOST}:{ports['s3']}",
        }

    def client_environment(self, layout: dict) -> dict[str, str]:
        """What a coordinator (or a silo) sets to use this stack."""
        urls = self.addresses(layout)
        return {
            "PREFECT_API_URL": f"{urls['prefect']}/api",
            "PREFECT_API_AUTH_STRING": layout["auth"],
            "FEDSILO_TRACKING_URI": urls["mlflow"],
            "FEDSILO_EXCHANGE": f"s3://{BUCKET}/{self.config.federation}",
            "AWS_ENDPOINT_URL_S3": urls["s3"],
            **CREDENTIALS,
        }

    def cluster(self, account: postgres.Account | None) -> postgres.Cluster:
        """The Prefect server's database cluster (``postgres/``), run by `account` (None: this user)."""
        return postgres.Cluster(root=self.database_root, account=account)

    def database(self, layout: dict, binaries: postgres.Binaries, cluster: postgres.Cluster) -> Service:
        argv = postgres.server_argv(binaries, cluster, layout["ports"]["postgres"], max_connections=MAX_CONNECTIONS)
        return Service("postgres", argv, postgres.server_env(), None, run_as=cluster.account)

    def servers(self, layout: dict, cluster: postgres.Cluster) -> list[Service]:
        """The Prefect server (on `cluster`, which must exist: its password is made at initdb), moto's S3
        server, MLflow's tracking server."""
        ports, urls = layout["ports"], self.addresses(layout)
        base = self._base_env()
        prefect_env = {**base, **QUIET, "PREFECT_HOME": str(self.root / "prefect"),
                       "PREFECT_SERVER_API_HOST": HOST, "PREFECT_SERVER_API_PORT": str(ports["prefect"]),
                       "PREFECT_SERVER_API_AUTH_STRING": layout["auth"],
                       "PREFECT_API_DATABASE_CONNECTION_URL": cluster.url(ports["postgres"]), **POOL}
        bin_dir = Path(sys.executable).parent
        return [
            Service("prefect", [str(bin_dir / "prefect"), "server", "start", "--host", HOST, "--port",
                                str(ports["prefect"])], prefect_env, f"{urls['prefect']}/api/health"),
            Service("s3", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(ports["s3"])],
                    {**base, **QUIET}, f"{urls['s3']}/moto-api/"),
            Service("mlflow", [str(bin_dir / "mlflow"), "server", "--host", HOST, "--port", str(ports["mlflow"]),
                               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                               "--artifacts-destination", str(self.root / "mlartifacts"), "--workers", "1"],
                    {**base, **QUIET, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, f"{urls['mlflow']}/health"),
        ]

    def warm_socket(self) -> Path:
        """The warm-start process's socket: in a folder of this user's under the system's temporary
        folder (a Unix socket's path must stay under ~100 bytes), one per stack."""
        tag = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"fedsilo-{os.getuid()}" / f"warm-{tag}.sock"

    def _worker_env(self, layout: dict) -> dict[str, str]:
        """What every worker runs with — and the warm-start process, whose Prefect settings must be the
        workers' for it to serve their runs."""
        base = self._base_env()
        # the pools' fixed command runs the `python` first on PATH: this environment's
        path = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", os.defpath)])
        return {**base, **QUIET, **self.client_environment(layout), "PATH": path,
                "PREFECT_WORKER_QUERY_SECONDS": str(poll_seconds(len(self.config.silos) + 1)),
                "PREFECT_HOME": str(self.root / "prefect-client")}

    def warm_start(self, layout: dict) -> Service:
        """The process the workers' runs are forked from (`flows.warm`): ready once its socket answers."""
        socket_path = self.warm_socket()
        return Service("warm-start", [sys.executable, "-m", "flows.warm", "--socket", str(socket_path)],
                       self._worker_env(layout), None, socket=socket_path)

    def workers(self, layout: dict) -> list[Service]:
        """One Prefect process worker per pool: the coordinator's and each silo's."""
        bin_dir = Path(sys.executable).parent
        worker_env = {**self._worker_env(layout), "FEDSILO_WARM_SOCKET": str(self.warm_socket())}
        return [Service(
            f"worker-{pool}",
            [str(bin_dir / "prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name",
             f"{pool}-worker", "--no-create-pool-if-not-found", "--install-policy", "never"],
            {**worker_env, "FEDSILO_HOME": str(home),
             # the training deployment dispatches each silo's phase to the silo's pool
             **({"FEDSILO_DISPATCH": "work_pools"} if pool == COORDINATOR_POOL else {})}, None,
        ) for pool, home in self._pool_homes()]

    def _pool_homes(self) -> list[tuple[str, Path]]:
        # the coordinator's worker shares the state folder of whoever runs `fedsilo run` here: one coordinator
        # identity, one privacy ledger, whether a job starts from the command line or from the deployment
        return [(COORDINATOR_POOL, self.state_root),
                *((s.pool_name, self.silo_state(s.id).root) for s in self.config.silos)]

    @staticmethod
    def _base_env() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FEDSILO_", "MLFLOW_", "AWS_"))}

    # -- processes ---------------------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.json"

    def _recorded(self, name: str) -> dict | None:
        path = self._pid_file(name)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(record: dict | None) -> bool:
        """The recorded pid runs, and runs the recorded command (not a reused pid)."""
        if not record:
            return False
        try:
            raw = Path(f"/proc/{record['pid']}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        cmdline, argv = [part.decode(errors="replace") for part in raw if part], record["argv"]
        # a script runs as `<interpreter> <script> ...`: look for the recorded argv anywhere in the line
        return any(cmdline[i:i + len(argv)] == argv for i in range(min(2, len(cmdline))))

    def _start(self, service: Service) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{service.name}.log", "ab") as log:
            process = subprocess.Popen(service.argv, env=service.env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root,
                                       **(service.run_as.popen() if service.run_as else {}))
        record = {"pid": process.pid, "pgid": process.pid, "argv": service.argv, "started": time.time()}
        self._pid_file(service.name).write_text(json.dumps(record))
        self._children[service.name] = process

    def _running(self, name: str) -> bool:
        """Ours and running: a child of this call that has not exited, or a recorded process that runs
        the recorded command."""
        child = self._children.get(name)
        if child is not None:
            return child.poll() is None
        return self._alive(self._recorded(name))

    def _wait_ready(self, service: Service, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not self._running(service.name):
                log = self.logs / f"{service.name}.log"
                raise StackError(f"{service.name} exited while starting; see {log}{_tail(log)}")
            if service.socket is not None:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    if probe.connect_ex(str(service.socket)) == 0:
                        return
                time.sleep(0.2)
                continue
            if service.health is None:
                return
            try:
                with urllib.request.urlopen(service.health, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise StackError(f"{service.name} did not answer at {service.health} within {READY_TIMEOUT_S:.0f} s; "
                         f"see {self.logs / (service.name + '.log')}")

    def _stop(self, name: str) -> bool:
        return bool(self._stop_all([name]))

    def _stop_all(self, names: list[str]) -> list[str]:
        """SIGTERM to each one's process group, then one shared grace period (a worker waiting on a busy
        server can take seconds to exit: stopping 17 in turn took minutes), then SIGKILL to the rest."""
        records = {name: self._recorded(name) for name in names}
        running = [name for name in names if records[name] is not None and self._running(name)]
        for name in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(records[name]["pgid"], signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(self._running(name) for name in running) and time.monotonic() < deadline:
            time.sleep(0.1)
        for name in running:
            if self._running(name):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(records[name]["pgid"], signal.SIGKILL)
        for name in names:
            child = self._children.pop(name, None)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=STOP_TIMEOUT_S)  # reap it
            self._pid_file(name).unlink(missing_ok=True)
        return running

    # -- commands ----------------------------------------------------------------------------------
    def up(self, on_step=lambda message: None) -> dict[str, str]:
        try:
            import moto.server  # noqa: F401  (the S3-compatible server)
        except ImportError:
            raise StackError("the S3 server needs moto: pip install 'moto[server]'") from None
        binaries = postgres.find_binaries()  # before anything is written or started
        cluster = self.cluster(postgres.server_account())
        postgres.check_reachable(cluster)
        layout = self.layout()
        self.root.mkdir(parents=True, exist_ok=True)
        write_private(self.layout_file, json.dumps(layout, indent=1).encode())
        postgres.admit(self.root, cluster.account)  # the database's user passes through to its folder, nobody else
        started: list[str] = []
        try:
            self._database_up(layout, binaries, cluster, started)
            on_step(f"postgres ready: {self.addresses(layout)['postgres']} ({cluster.root})")
            servers, workers = [*self.servers(layout, cluster), self.warm_start(layout)], self.workers(layout)
            self.warm_socket().parent.mkdir(mode=0o700, exist_ok=True)
            for service in servers:  # start the servers together, then wait for each
                if not self._running(service.name):
                    self._check_port(service.name, layout)
                    self._start(service)
                    started.append(service.name)
            deadline = time.monotonic() + READY_TIMEOUT_S
            for service in servers:
                self._wait_ready(service, deadline)
                on_step(f"{service.name} ready")
            self._bucket(layout)
            self._pools(layout)
            on_step(f"work pools: {COORDINATOR_POOL}, " + ", ".join(s.pool_name for s in self.config.silos))
            roster = self._enrol(layout)
            on_step(f"roster v{roster.version}: " + ", ".join(sorted(roster.members)))
            began = datetime.now(UTC)
            for service in workers:
                if not self._running(service.name):
                    self._start(service)
                    started.append(service.name)
            fresh = {name: began for name in started}  # a restarted worker's old registration does not count
            self._wait_workers(layout, workers, fresh, time.monotonic() + WORKERS_READY_TIMEOUT_S)
            on_step(f"workers ready: {len(workers)}")
        except BaseException:
            self._stop_in_order(started)
            raise
        return self.addresses(layout)

    def _database_up(self, layout: dict, binaries: postgres.Binaries, cluster: postgres.Cluster,
                     started: list[str]) -> None:
        """The cluster made (once), its server started unless it runs, and the Prefect database in it."""
        postgres.init_cluster(binaries, cluster)
        service = self.database(layout, binaries, cluster)
        if not self._running(service.name):
            self._check_port(service.name, layout)
            self._start(service)
            started.append(service.name)
        pid = self._recorded(service.name)["pid"]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not postgres.ready(cluster, pid):
            if not self._running(service.name):
                log = self.logs / f"{service.name}.log"
                raise StackError(f"postgres exited while starting; see {log}{_tail(log)}")
            if time.monotonic() > deadline:
                raise StackError(f"postgres did not accept connections within {READY_TIMEOUT_S:.0f} s; "
                                 f"see {self.logs / 'postgres.log'}")
            time.sleep(0.05)
        postgres.ensure_database(cluster, layout["ports"]["postgres"])

    def _check_port(self, name: str, layout: dict) -> None:
        if name not in layout["ports"]:
            return  # no port: the warm-start process listens on a Unix socket of its own
        port = layout["ports"][name]
        if not port_free(port):
            raise StackError(f"{name}: port {port} on {HOST} is taken by a process this stack did not start; "
                             f"stop it, or remove {self.layout_file} to pick new ports")

    def down(self) -> list[str]:
        """Stop every recorded process: the workers, then the servers, then the database."""
        if not self.pids.exists():
            return []
        stopped = self._stop_in_order(sorted(p.stem for p in self.pids.glob("*.json")))
        self.layout_file.unlink(missing_ok=True)
        return stopped

    def _stop_in_order(self, names: list[str]) -> list[str]:
        """The workers together, then the servers together, then PostgreSQL (the Prefect server holds
        connections to it until it exits)."""
        stopped = self._stop_all([n for n in names if n.startswith("worker-")])
        stopped += self._stop_all([n for n in names if not n.startswith("worker-") and n != "postgres"])
        if "postgres" in names:
            stopped += self._stop_database()
        return stopped

    def _stop_database(self) -> list[str]:
        """`pg_ctl stop -m fast` if the recorded postmaster runs and its lock file names it (pg_ctl
        signals whatever pid that file holds), then by process group like the others if it still runs."""
        record = self._recorded("postgres")
        if not self._running("postgres"):
            self._stop_all(["postgres"])  # forget the record
            return []
        with contextlib.suppress(postgres.PostgresError):
            cluster = self.cluster(postgres.server_account())
            if record is not None and postgres.lock_pid(cluster) == record["pid"]:
                postgres.stop(postgres.find_binaries(), cluster, int(STOP_TIMEOUT_S))
        self._stop_all(["postgres"])
        return ["postgres"]

    def status(self) -> list[Status]:
        if not self.layout_file.exists():
            return []
        layout = self.layout()
        urls = self.addresses(layout)
        names = ["postgres", "prefect", "s3", "mlflow", "warm-start", *(f"worker-{pool}" for pool, _ in self._pool_homes())]
        rows = []
        for name in names:
            record = self._recorded(name)
            rows.append(Status(name, record["pid"] if record else None, self._alive(record), urls.get(name),
                               self.database_root if name == "postgres" else None))
        return rows

    # -- provisioning ------------------------------------------------------------------------------
    def _bucket(self, layout: dict) -> None:
        from botocore.exceptions import ClientError

        s3 = self._s3(layout)
        try:
            s3.create_bucket(Bucket=BUCKET)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StackError(f"cannot create bucket {BUCKET}: {exc}") from None

    def _enrol(self, layout: dict):
        """The stack plays every party on one machine: each silo gets its identity in its own state
        folder (as `fedsilo silo init` makes it there) and is enrolled in the coordinator's roster."""
        from fl_core.secagg import crypto
        from infra.exchange import Exchange
        from infra.keystore import silo_identity
        from infra.roster import enrol
        from infra.s3_store import S3ObjectStore

        store = S3ObjectStore(BUCKET, self.config.federation, client=self._s3(layout))
        exchange = Exchange(store, self.config.federation)
        roster = None
        for silo in self.config.silo_ids:
            public = crypto.identity_public(silo_identity(self.silo_state(silo), silo))
            roster, _ = enrol(self.config, StateDir(root=self.state_root), exchange, silo, public)
        return roster

    def silo_state(self, silo: str) -> StateDir:
        """The state folder of `silo`'s worker (its FEDSILO_HOME)."""
        return StateDir(root=self.root / "silos" / silo)

    def _s3(self, layout: dict):
        import boto3

        return boto3.client("s3", endpoint_url=self.addresses(layout)["s3"], region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def _api(self, layout: dict):
        """Prefect client settings for this stack's server (its address and auth string)."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        env = self.client_environment(layout)
        return temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"],
                                   PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"]})

    def _pools(self, layout: dict) -> None:
        """Create (or reset to the locked template) the coordinator's pool and one pool per silo."""
        from prefect.client.orchestration import get_client

        with self._api(layout), get_client(sync_client=True) as client:
            ensure_pools(client, self.config, reset=True)

    def _wait_workers(self, layout: dict, workers: list[Service], since: dict[str, datetime], deadline: float) -> None:
        """Until every worker has registered with the server (the ones in `since` with a heartbeat after
        they were started): `up` returns a stack that takes runs, and a federation deployed right after
        does not meet a server still busy with workers starting."""
        from prefect.client.orchestration import get_client

        pending = {service.name: service.name.removeprefix("worker-") for service in workers}
        with self._api(layout), get_client(sync_client=True) as client:
            while True:
                for name, pool in list(pending.items()):
                    if not self._running(name):
                        log = self.logs / f"{name}.log"
                        raise StackError(f"{name} exited while starting; see {log}{_tail(log)}")
                    after = since.get(name)
                    if any(w.name == f"{pool}-worker" and (after is None or (w.last_heartbeat_time and
                                                                              w.last_heartbeat_time >= after))
                           for w in client.read_workers_for_work_pool(pool)):
                        del pending[name]
                if not pending:
                    return
                if time.monotonic() > deadline:
                    raise StackError(f"{', '.join(sorted(pending))} did not register with the Prefect server within "
                                     f"{WORKERS_READY_TIMEOUT_S:.0f} s; see {self.logs}")
                time.sleep(0.5)


def _tail(log: Path, lines: int = 12) -> str:
    """The last lines of a log, indented, for an error message (empty if there is nothing to show)."""
    try:
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("\n  " + "\n  ".join(text)) if text else ""
