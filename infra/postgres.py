"""The stack's own PostgreSQL, in which its Prefect server keeps its database.

One cluster per stack, under ``<stack>/postgres/``: ``data/`` (made once, by ``initdb``) and
``password`` (0600, the stack's user only): the password of the cluster's one role, made at
``initdb``. The server (``postgres``, started and recorded by the stack like its other processes)
listens on 127.0.0.1 only, on a port of the stack's, with no Unix socket; ``pg_hba.conf`` admits that
role from 127.0.0.1 with its password (scram-sha-256) and nothing else. It stops with
``pg_ctl stop -m fast``.

PostgreSQL refuses to run as root. As root, ``initdb``, ``postgres`` and ``pg_ctl`` run as the
unprivileged system user ``postgres`` (the account the distributions' packages create): the data
folder is that user's, and the stack's folders above it let that user's group through (mode 0710)
and nobody else. Not as root, they run as the user who runs the stack.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fl_core.errors import FedsiloError

HOST = "127.0.0.1"
MIN_MAJOR = 15
PROGRAMS = ("initdb", "pg_ctl", "postgres")
SEARCH = ("/usr/lib/postgresql/*/bin",)  # Debian's and Ubuntu's versioned folders, when not on PATH
SYSTEM_USER = "postgres"
ROLE = "fedsilo"
DATABASE = "prefect"
MISSING = (f"the stack's Prefect server needs PostgreSQL {MIN_MAJOR}+ server binaries (initdb, pg_ctl, postgres) "
           "on PATH or in /usr/lib/postgresql/*/bin: apt-get install postgresql, or point PREFECT_API_URL at an "
           "existing Prefect server")


class PostgresError(FedsiloError):
    """The stack's PostgreSQL could not be found, initialised, started, provisioned or stopped."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Binaries:
    folder: Path
    major: int

    @property
    def initdb(self) -> Path:
        return self.folder / "initdb"

    @property
    def pg_ctl(self) -> Path:
        return self.folder / "pg_ctl"

    @property
    def postgres(self) -> Path:
        return self.folder / "postgres"


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """The unprivileged user the PostgreSQL programs run as when the stack runs as root."""

    name: str
    uid: int
    gid: int

    def popen(self) -> dict:
        """`subprocess` arguments that drop to this user (and its group only) before exec."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    """A data folder and who runs it; the port is chosen per start."""

    root: Path  # <stack>/postgres
    account: Account | None  # None: run as this process's user

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    def url(self, port: int) -> str:
        """What `prefect server start` takes as PREFECT_API_DATABASE_CONNECTION_URL."""
        return f"postgresql+asyncpg://{ROLE}:{self.password()}@{HOST}:{port}/{DATABASE}"

    def password(self) -> str:
        try:
            return self.password_file.read_text().strip()
        except OSError as exc:
            raise PostgresError(f"cannot read the stack database's password {self.password_file}: "
                                f"{exc.strerror or exc}") from None

    def popen(self) -> dict:
        return self.account.popen() if self.account else {}


# -- finding the programs --------------------------------------------------------------------------
def find_binaries(path: str | None = None, search: tuple[str, ...] | None = None) -> Binaries:
    """The first folder on `path` (PATH by default), then in `search` (SEARCH by default), newest
    version first, that holds initdb, pg_ctl and postgres of PostgreSQL MIN_MAJOR or later."""
    path = os.environ.get("PATH", os.defpath) if path is None else path
    on_path = [Path(p) for p in path.split(os.pathsep) if p]
    patterns = SEARCH if search is None else search
    found = sorted((Path(p) for pattern in patterns for p in glob.glob(pattern)), key=_version_key, reverse=True)
    too_old = []
    for folder in dict.fromkeys([*on_path, *found]):
        if not all(os.access(folder / program, os.X_OK) and (folder / program).is_file() for program in PROGRAMS):
            continue
        major = _major(folder / "postgres")
        if major is not None and major >= MIN_MAJOR:
            return Binaries(folder=folder, major=major)
        too_old.append(f"{major or 'an unknown version'} in {folder}")
    raise PostgresError(MISSING + (f" (found PostgreSQL {', '.join(too_old)})" if too_old else ""))


def _major(postgres: Path) -> int | None:
    """The major version `postgres --version` reports (it answers that even as root)."""
    try:
        out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(match.group(1)) if match else None


def _version_key(folder: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", folder.parent.name)) or (0,)


# -- who runs them ---------------------------------------------------------------------------------
def server_account(euid: int | None = None) -> Account | None:
    """None when not root (the programs run as this user); as root, the system user `postgres`."""
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresError(f"PostgreSQL refuses to run as root, and there is no user {SYSTEM_USER!r} to run the "
                            f"stack's as: create it (useradd --system {SYSTEM_USER}) or run the stack as a "
                            "non-root user") from None
    if entry.pw_uid == 0:
        raise PostgresError(f"the user {SYSTEM_USER!r} has uid 0; PostgreSQL needs an unprivileged user")
    return Account(name=SYSTEM_USER, uid=entry.pw_uid, gid=entry.pw_gid)


def admit(folder: Path, account: Account | None) -> None:
    """Let `account`'s group through `folder` (0710), and nobody else; nothing when `account` is None."""
    if account is None:
        return
    os.chown(folder, -1, account.gid)
    os.chmod(folder, 0o710)


def unreachable(folder: Path, account: Account) -> Path | None:
    """The first folder on the way to `folder` (itself included) that `account` may not enter; the
    check ends at the first one that does not exist yet (the stack makes those, with modes it sets)."""
    groups = set(os.getgrouplist(account.name, account.gid))
    for step in [*reversed(folder.parents), folder]:
        try:
            info = step.stat()
        except FileNotFoundError:
            return None
        if info.st_uid == account.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return step
    return None


def check_reachable(cluster: Cluster) -> None:
    if cluster.account is None:
        return
    blocked = unreachable(cluster.root, cluster.account)
    if blocked is not None:
        raise PostgresError(
            f"as root, the stack runs PostgreSQL as the user {cluster.account.name!r}, which may not enter {blocked} "
            f"(mode {stat.S_IMODE(blocked.stat().st_mode):o}): keep FEDSILO_HOME under folders it can pass through, "
            "or run the stack as a non-root user")


# -- the cluster -----------------------------------------------------------------------------------
def init_cluster(binaries: Binaries, cluster: Cluster) -> bool:
    """`initdb` once (True), or nothing if the data folder holds a cluster (False). Loopback and
    password only; the password is made here and kept beside the data folder."""
    cluster.root.mkdir(parents=True, exist_ok=True)
    admit(cluster.root, cluster.account)
    check_reachable(cluster)
    if (cluster.data / "PG_VERSION").exists():
        return False
    if cluster.data.exists() and any(cluster.data.iterdir()):
        raise PostgresError(f"{cluster.data} is neither empty nor a PostgreSQL data folder; remove it")
    cluster.data.mkdir(mode=0o700, exist_ok=True)
    password = secrets.token_urlsafe(24)
    given = cluster.root / ".initdb-password"  # read by initdb only, removed right after
    _write_owned(given, password + "\n", cluster.account)
    _write_owned(cluster.password_file, password + "\n", None)
    if cluster.account:
        os.chown(cluster.data, cluster.account.uid, cluster.account.gid)
    try:
        _run(cluster, [str(binaries.initdb), "-D", str(cluster.data), "-U", ROLE, f"--pwfile={given}",
                       "--auth-host=scram-sha-256", "--auth-local=reject", "-E", "UTF8", "--locale=C",
                       "--no-instructions"], "initdb")
    finally:
        given.unlink(missing_ok=True)
    _write_owned(cluster.data / "pg_hba.conf",
                 "# the stack's role, from 127.0.0.1 only, with its password; no socket, no other host\n"
                 f"host  {DATABASE},postgres  {ROLE}  {HOST}/32  scram-sha-256\n", cluster.account)
    return True


def server_argv(binaries: Binaries, cluster: Cluster, port: int, *, max_connections: int) -> list[str]:
    """The postmaster's command line: loopback TCP only, no Unix socket, named after its port (the
    name shows in `ps` beside each of its processes)."""
    return [str(binaries.postgres), "-D", str(cluster.data), "-p", str(port),
            "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories=",
            "-c", f"max_connections={max_connections}", "-c", f"cluster_name=fedsilo-{port}"]


def server_env() -> dict[str, str]:
    """The programs' environment: PATH, the locale and the time zone of this one; no PG* variable (they
    would override the command line) and nothing of the stack's other settings."""
    return {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ") or k.startswith("LC_")}


def lock_pid(cluster: Cluster) -> int | None:
    """The postmaster pid its lock file names (None without one)."""
    try:
        return int((cluster.data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def ready(cluster: Cluster, pid: int) -> bool:
    """The postmaster `pid` says in its lock file that it accepts connections."""
    try:
        lines = (cluster.data / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def ensure_database(cluster: Cluster, port: int, timeout: float = 10.0) -> bool:
    """Create the Prefect database (True) unless it exists (False), and the pg_trgm extension in it."""
    import asyncio

    import asyncpg

    async def connect(database: str):
        return await asyncpg.connect(host=HOST, port=port, user=ROLE, password=cluster.password(),
                                     database=database, timeout=timeout)

    async def provision() -> bool:
        conn = await connect("postgres")
        try:
            created = not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
            if created:
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()
        conn = await connect(DATABASE)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")  # Prefect's text search needs it
        finally:
            await conn.close()
        return created

    try:
        return asyncio.run(provision())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # TimeoutError is an OSError
        raise PostgresError(f"cannot create the Prefect database on {HOST}:{port}: "
                            f"{type(exc).__name__}: {exc}") from None


def stop(binaries: Binaries, cluster: Cluster, timeout_s: int) -> None:
    """`pg_ctl stop -m fast`: running transactions are rolled back, clients disconnected, and the
    postmaster waited for (up to `timeout_s`)."""
    _run(cluster, [str(binaries.pg_ctl), "stop", "-D", str(cluster.data), "-m", "fast", "-w", "-t", str(timeout_s)],
         "pg_ctl stop", timeout=timeout_s + 10)


def _run(cluster: Cluster, argv: list[str], what: str, timeout: float = 120) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cluster.root,
                                env=server_env(), stdin=subprocess.DEVNULL, **cluster.popen())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostgresError(f"{what} failed: {exc}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise PostgresError(f"{what} failed ({cluster.data}): {lines[-1] if lines else f'exit {result.returncode}'}")


def _write_owned(path: Path, text: str, account: Account | None) -> None:
    """A 0600 file owned by `account` (or by this user)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    if account:
        os.chown(path, account.uid, account.gid)
