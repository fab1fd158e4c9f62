"""`fedsilo`: run a federated training job, check data contracts, show the last job, build the
example federation's data; in federated mode, start the servers on one machine (`stack`), register
the federation with Prefect (`deploy`) and start a job there from CI (`trigger`).

Exit codes: 0 success; 1 a user-facing error (one line on stderr, no traceback); 2 bad usage; 3 (trigger)
the job ran and the gate rejected its model.
Heavy libraries (Prefect, MLflow, Great Expectations, torch) are imported inside the commands that
need them, so `fedsilo --help` answers at once.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fl_core.errors import FedsiloError

app = typer.Typer(
    name="fedsilo",
    help="Federated learning across silos whose data never leaves them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ConfigArg = Annotated[Path, typer.Argument(help="federation config (YAML)", show_default=False)]


def user_errors(command):
    """Turn a `FedsiloError` into one line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FedsiloError as exc:
            err.print(f"[red]error:[/] {exc}", soft_wrap=True)
            raise typer.Exit(1) from None
        except Exception as exc:
            if type(exc).__name__ != "PrefectHTTPStatusError":
                raise
            # the Prefect server refused a request even after its client's retries (e.g. an overloaded
            # SQLite server answering 503): nothing of the round in progress was committed
            err.print(f"[red]error:[/] the Prefect server refused a request ({_first_line(exc)}); nothing of the "
                      "round in progress was committed, and running the job again resumes it", soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(" - Response:")[0]


def _state():
    from infra.state import ensure_state_dir, resolve_state_dir

    return ensure_state_dir(resolve_state_dir())


def _prefect_server(needed_by: str | None = None) -> str | None:
    """The Prefect server ``PREFECT_API_URL`` names, checked to answer; None for an embedded run.
    `needed_by` says what cannot run without one."""
    import urllib.error
    import urllib.request

    url = os.environ.get("PREFECT_API_URL")
    if not url:
        if needed_by:
            raise FedsiloError(f"{needed_by} needs a Prefect server: set PREFECT_API_URL (`fedsilo stack up` prints it)")
        return None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5):
            pass
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FedsiloError(f"the Prefect server at {url} is unreachable ({getattr(exc, 'reason', exc)})") from None
    return url


def _prefect_ui(api: str) -> str:
    """The UI of the Prefect server whose API is at `api` (the API lives under ``/api``)."""
    return api.rstrip("/").removesuffix("/api")


def _check_data_present(config) -> None:
    missing = [s for s in config.silo_ids if not config.silo_data_path(s).exists()]
    if len(missing) == len(config.silo_ids):
        hint = f"; run `fedsilo demo-data {config.source}` first" if config.federation == "heart" else ""
        raise FedsiloError(f"no silo has its data file (e.g. {config.silo_data_path(missing[0])}){hint}")
    for silo in missing:
        err.print(f"[yellow]warning:[/] silo {silo}: data file {config.silo_data_path(silo)} does not exist; it will sit out")


@app.command()
@user_errors
def run(
    config: ConfigArg,
    rounds: Annotated[int | None, typer.Option(help="rounds in this job (default: training.rounds)", min=1)] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Train across the federation's silos: one Prefect flow per round, tracked in MLflow, gated."""
    from infra.config import load_config
    from infra.embedded import configure_embedded, embedded_api, embedded_prefect, using_api
    from infra.progress import reporting_to
    from infra.tracking import preflight, tracker_for

    federation = load_config(config)
    _check_data_present(federation)
    if federation.dispatch.mode == "work_pools":
        from infra.workpools import missing_deployments

        _prefect_server("dispatch.mode: work_pools")
        missing = missing_deployments(federation)
        if missing:
            raise FedsiloError(f"no deployment {', '.join(missing)} on the Prefect server; run `fedsilo deploy {config}`")
    else:
        _prefect_server()
    state = _state()
    tracker = tracker_for(federation, state)
    preflight(tracker.uri)
    configure_embedded(state)
    api = embedded_api(state)
    out.print(f"[dim]state folder {state.root} · tracking {tracker.uri}[/]", soft_wrap=True)

    from flows.console import ConsoleReporter
    from flows.training import training_flow

    with using_api(api), ConsoleReporter(out, metric=federation.gate.metric, show_progress=progress) as display:
        with reporting_to(display), embedded_prefect():
            result = training_flow(config_path=str(config.resolve()), rounds=rounds)
    _where_to_look(federation, state, tracker, result)


def _where_to_look(federation, state, tracker, result) -> None:
    records = result["rounds"]
    last = records[-1]
    promoted = [r for r in records if r["promoted"]]
    out.print()
    if promoted:
        best = promoted[-1]
        out.print(
            f"[bold green]champion[/]: {federation.federation} v{best['version']} (round {best['round']}), "
            f"global accuracy {best['pooled']['accuracy']:.3f}"
        )
    elif last.get("champion_version"):
        out.print(f"[bold]champion[/]: {federation.federation} v{last['champion_version']} (from an earlier job); "
                  "no round of this job passed the gate")
    else:
        out.print("[bold yellow]no champion[/]: no round passed the fairness gate; the newest version is 'candidate'")
    from flows.console import gate_table

    table, checks = gate_table(last)
    out.print(table)
    for line in checks:
        out.print(f"  {line}", soft_wrap=True, highlight=False)
    uri = tracker.uri
    mlflow_cmd, prefect_cmd, python_cmd = _tool("mlflow"), _tool("prefect"), _tool("python")
    out.print(f"registered model: [bold]models:/{federation.federation}@champion[/] "
              f"(newest: models:/{federation.federation}@candidate = v{last['version']})")
    out.print("where to look:")
    if uri.startswith(("http://", "https://")):  # a tracking server: its own UI
        out.print(f"  MLflow UI   {uri}", soft_wrap=True)
    else:
        out.print(f"  MLflow UI   {mlflow_cmd} ui --backend-store-uri {uri} --port 5000   → http://127.0.0.1:5000",
                  soft_wrap=True)
    api = os.environ.get("PREFECT_API_URL")
    if api:  # a Prefect server: its UI is the API's host
        out.print(f"  Prefect UI  {_prefect_ui(api)}", soft_wrap=True)
    else:
        out.print(f"  Prefect UI  PREFECT_HOME={state.prefect_home} {prefect_cmd} server start   → http://127.0.0.1:4200",
                  soft_wrap=True)
    out.print(f"  score       MLFLOW_TRACKING_URI={uri} {python_cmd} -c \"import mlflow, pandas as pd; "
              f"m = mlflow.pyfunc.load_model('models:/{federation.federation}@champion'); "
              f"print(m.predict(pd.read_parquet('{federation.silo_data_path(federation.silo_ids[0])}')))\"", soft_wrap=True)
    out.print(f"  status      {_tool('fedsilo')} status {_short(federation.source)}", soft_wrap=True)


@app.command()
@user_errors
def validate(config: ConfigArg) -> None:
    """Check every silo's data against the federation's contract (no training, nothing logged)."""
    from infra.config import load_config
    from infra.silo_data import read_table
    from validation import validate_table
    from validation.summary import ValidationSummary

    federation = load_config(config)
    table = Table(title=f"data contract · {federation.federation}")
    for column in ("silo", "rows", "train", "holdout", "contract", "problems"):
        table.add_column(column, justify="right" if column in ("rows", "train", "holdout") else "left")
    failed = 0
    for silo in federation.silo_ids:
        try:
            summary = validate_table(read_table(federation.silo_data_path(silo), silo), federation.contract, silo)
        except FedsiloError as exc:
            summary = ValidationSummary.unreadable(silo, federation.contract.contract_hash(), str(exc))
        failed += not summary.passed
        table.add_row(
            silo, str(summary.n_rows), str(summary.n_train), str(summary.n_holdout),
            "[green]passed[/]" if summary.passed else "[red]failed[/]", "\n".join(summary.reasons()) or "",
        )
    out.print(table)
    if failed:
        raise FedsiloError(f"{failed} of {len(federation.silo_ids)} silos fail the contract")


@app.command()
@user_errors
def status(config: ConfigArg) -> None:
    """The last training job: its rounds, metrics, gate decisions and the champion."""
    from infra.config import load_config
    from infra.embedded import configure_embedded
    from infra.tracking import CHAMPION, TAG, tracker_for

    federation = load_config(config)
    state = _state()
    configure_embedded(state)
    tracker = tracker_for(federation, state).open()
    job = tracker.latest_job()
    if job is None:
        out.print(f"no training job of federation {federation.federation} in {tracker.uri} yet")
        return
    rounds = tracker.round_runs(job.info.run_id)
    table = Table(title=f"{federation.federation} · job {job.info.run_name} · {job.info.status.lower()}")
    table.add_column("round", justify="right")
    table.add_column("version", justify="right")
    for silo in federation.silo_ids:
        table.add_column(silo, justify="right")
    table.add_column("global", justify="right")
    table.add_column("gate")
    from flows.console import fmt

    metric = federation.gate.metric
    for run in rounds:
        m = run.data.metrics
        gate = run.data.tags.get(f"{TAG}gate", "?")
        table.add_row(
            run.data.tags.get(f"{TAG}round", "?"),
            run.data.tags.get(f"{TAG}version", "—"),
            *(fmt(m.get(f"silo.{s}.{metric}")) for s in federation.silo_ids),
            fmt(m.get(f"global.{metric}", m.get("global.accuracy"))),
            "[green]passed[/]" if gate == "passed" else f"[yellow]{gate}[/]",
        )
    out.print(table)
    failure = job.data.tags.get(f"{TAG}failure")
    if failure:
        out.print(f"[red]job failed:[/] {failure}")
    champion = tracker.version_by_alias(CHAMPION)
    if champion:
        out.print(f"champion: models:/{federation.federation}@champion = v{champion.version} (round {champion.round})")
    else:
        out.print("champion: none yet")


@app.command("demo-data")
@user_errors
def demo_data(
    config: Annotated[Path, typer.Argument(help="the example federation's config")] = Path("examples/heart/federation.yaml"),
) -> None:
    """Split the UCI Heart Disease data into one Parquet file per hospital (train/holdout split)."""
    from infra.config import load_config
    from infra.demo_data import write_heart_silos

    federation = load_config(config)
    table = Table(title=f"example federation · {federation.federation}")
    for column in ("silo", "rows", "train", "holdout", "positive", "file"):
        table.add_column(column, justify="left" if column in ("silo", "file") else "right")
    for report in write_heart_silos(federation):
        table.add_row(report.silo, str(report.rows), str(report.train), str(report.holdout),
                      f"{report.positive_fraction:.0%}", _short(report.path))
    out.print(table)


@app.command()
@user_errors
def deploy(
    config: ConfigArg,
    cron: Annotated[str | None, typer.Option(help="schedule training jobs, e.g. '0 2 * * 1'")] = None,
    timezone: Annotated[str, typer.Option(help="the schedule's time zone")] = "UTC",
) -> None:
    """Register the federation with a Prefect server: locked pools, one silo deployment per silo pool,
    the training deployment on the coordinator's pool. Running it again changes nothing."""
    from infra.config import load_config
    from infra.workpools import deploy as register

    federation = load_config(config)
    _prefect_server("deploy")
    for name in register(federation, config, cron=cron, timezone=timezone):
        out.print(f"deployment {name}")
    out.print("run a job with dispatch.mode: work_pools (or FEDSILO_DISPATCH=work_pools) and `fedsilo run`, "
              "or from the Prefect UI")


@app.command()
@user_errors
def trigger(
    config: ConfigArg,
    rounds: Annotated[int | None, typer.Option(help="rounds in this job (default: training.rounds)", min=1)] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the job", min=1)] = 3600,
) -> None:
    """Start a training job from the federation's training deployment on the Prefect server (from a CI
    job, say) and wait for it. Exit 0 if it completed and its last model passed the gate, 3 if it
    completed and the gate rejected that model, 1 if it failed, crashed, was cancelled or is still
    running after --timeout."""
    from infra.config import load_config
    from infra.exchange import exchange_for
    from infra.workpools import trigger as start

    federation = load_config(config)
    ui = _prefect_ui(_prefect_server("trigger"))
    outcome = start(federation, exchange_for(federation, _state()), rounds, timeout,
                    on_started=lambda name, run_id: out.print(f"started {name}  {ui}/runs/flow-run/{run_id}", soft_wrap=True))
    if not outcome.completed:
        err.print(f"[red]error:[/] job {outcome.run_name} ended {outcome.state.lower()}"
                  + (f": {outcome.message}" if outcome.message else ""), soft_wrap=True)
        raise typer.Exit(1)
    for record in outcome.records:
        verdict = "promoted" if record.get("promoted") else "rejected by the gate"
        out.print(f"round {record['round']}: candidate v{record.get('version')} {verdict}")
    if not outcome.records:
        err.print(f"[red]error:[/] job {outcome.run_name} completed but no new round is in the exchange "
                  f"({federation.storage.exchange or 'the local state folder'}); is this the coordinator's exchange?",
                  soft_wrap=True)
        raise typer.Exit(1)
    if not outcome.promoted:
        raise typer.Exit(3)


stack_app = typer.Typer(help="The federated mode's servers on this machine (loopback only), for trying it out.",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")


def _stack(config: Path):
    from infra.config import load_config
    from infra.stack import Stack

    return Stack(_state(), load_config(config))


@stack_app.command("up")
@user_errors
def stack_up(config: ConfigArg) -> None:
    """Start PostgreSQL, a Prefect server on it, one worker per silo pool, an S3 server and an MLflow server."""
    stack = _stack(config)
    urls = stack.up(on_step=lambda message: out.print(f"[dim]{message}[/]", soft_wrap=True))
    out.print(f"Prefect UI  {urls['prefect']}  (it asks for PREFECT_API_AUTH_STRING, below)")
    out.print(f"MLflow UI   {urls['mlflow']}")
    out.print(f"S3 endpoint {urls['s3']}  (bucket fedsilo)")
    out.print(f"PostgreSQL  {urls['postgres']}  (the Prefect server's database, in {stack.database_root})", soft_wrap=True)
    out.print("to use this stack from a shell:")
    for key, value in stack.client_environment(stack.layout()).items():
        out.print(f"  export {key}={value}", soft_wrap=True)


@stack_app.command("down")
@user_errors
def stack_down(config: ConfigArg) -> None:
    """Stop every process the stack started (by its recorded process group)."""
    stopped = _stack(config).down()
    out.print(f"stopped {len(stopped)}: {', '.join(stopped)}" if stopped else "nothing was running")


@stack_app.command("status")
@user_errors
def stack_status(config: ConfigArg) -> None:
    """Which stack processes run, with their pids, addresses and (the database's) data folder."""
    rows = _stack(config).status()
    if not rows:
        out.print("the stack is not up")
        return
    table = Table(box=None)
    for column in ("process", "pid", "state", "address", "folder"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(row.name, str(row.pid or "-"), "[green]running[/]" if row.running else "[red]stopped[/]",
                      row.address or "", str(row.folder or ""))
    out.print(table, soft_wrap=True)
    if not all(row.running for row in rows):
        raise typer.Exit(1)


silo_app = typer.Typer(help="Silo identities and the federation's roster; the hardened silo runner.",
                       no_args_is_help=True)
app.add_typer(silo_app, name="silo")
SiloOpt = Annotated[str, typer.Option("--silo", help="the silo's id (as in the config)", show_default=False)]


def _ignored_by_git(path: Path) -> None:
    """Refuse to keep a private key inside a git work tree unless git ignores that place."""
    import subprocess

    for parent in [path, *path.parents]:
        if (parent / ".git").exists():
            try:
                ignored = subprocess.run(["git", "-C", str(parent), "check-ignore", "-q", str(path)],
                                         capture_output=True).returncode == 0
            except OSError:
                ignored = False
            if not ignored:
                raise FedsiloError(f"{path} is inside the git work tree {parent} and not ignored by it; set "
                                   "FEDSILO_HOME to a folder outside the repository for the silo's keys")
            return


@silo_app.command("init")
@user_errors
def silo_init(
    config: ConfigArg,
    silo: SiloOpt,
    coordinator_key: Annotated[str | None, typer.Option(
        help="the coordinator's public key (base64), to pin now instead of trusting the first one seen")] = None,
) -> None:
    """On the silo's side: make its Ed25519 identity (kept 0600 in FEDSILO_HOME, never sent anywhere)
    and print the public key for the coordinator to enrol. Run again, it shows the same key."""
    from fl_core.secagg import crypto
    from infra.config import load_config
    from infra.keystore import silo_identity
    from infra.roster import parse_public_key
    from infra.secagg_channel import pin_coordinator
    from infra.state import ensure_state_dir, resolve_state_dir

    federation = load_config(config)
    federation.silo(silo)
    state = resolve_state_dir()
    key_path = state.silo(silo) / "identity" / "ed25519.pem"
    _ignored_by_git(key_path)  # before anything is written there
    ensure_state_dir(state)
    existed = key_path.exists()
    public = crypto.identity_public(silo_identity(state, silo))
    card = state.silo(silo) / "identity" / f"{federation.federation}-{silo}.pub.json"
    card.write_text(json.dumps({"federation": federation.federation, "silo": silo, "ed25519": crypto.b64(public),
                                "fingerprint": crypto.fingerprint(public)}, indent=1))
    if coordinator_key is not None:
        pin_coordinator(state.silo(silo) / "trust", parse_public_key(coordinator_key))
        out.print(f"pinned the coordinator's key {crypto.fingerprint(parse_public_key(coordinator_key))}")
    out.print(f"{'identity of' if existed else 'new identity for'} silo {silo}: {key_path} (0600)", soft_wrap=True)
    out.print(f"public key   {crypto.b64(public)}", soft_wrap=True)
    out.print(f"fingerprint  {crypto.fingerprint(public)}")
    out.print(f"send {card} to the coordinator, who runs:", soft_wrap=True)
    out.print(f"  fedsilo silo add {config} --silo {silo} --key {crypto.b64(public)}", soft_wrap=True)


def _roster_change(config: Path, change):
    from infra.config import load_config
    from infra.exchange import exchange_for

    federation = load_config(config)
    state = _state()
    return federation, change(federation, state, exchange_for(federation, state))


@silo_app.command("add")
@user_errors
def silo_add(
    config: ConfigArg,
    silo: SiloOpt,
    key: Annotated[str, typer.Option(help="the silo's public key (base64) or the .pub.json file `silo init` wrote",
                                     show_default=False)],
    rekey: Annotated[bool, typer.Option(help="replace the key of a silo already enrolled")] = False,
) -> None:
    """On the coordinator's side: enrol a silo with its public key (from the next round on)."""
    from fl_core.secagg import crypto
    from infra.roster import enrol, parse_public_key

    public = parse_public_key(key)
    _, (roster, changed) = _roster_change(config, lambda f, st, ex: enrol(f, st, ex, silo, public, rekey=rekey))
    verb = "enrolled" if changed else "already enrolled"
    out.print(f"{verb}: {silo} with key {crypto.fingerprint(public)} on pool {roster.members[silo].pool} "
              f"(roster v{roster.version}; from the next round)")


@silo_app.command("remove")
@user_errors
def silo_remove(config: ConfigArg, silo: SiloOpt) -> None:
    """On the coordinator's side: offboard a silo; from the next round it is not asked and its
    messages are refused."""
    from infra.roster import offboard

    _, (roster, changed) = _roster_change(config, lambda f, st, ex: offboard(f, st, ex, silo))
    out.print(f"{'offboarded' if changed else 'already offboarded'}: {silo} (roster v{roster.version}; from the next round)")


@silo_app.command("list")
@user_errors
def silo_list(config: ConfigArg) -> None:
    """On the coordinator's side: the coordinator's public key (for the silos to pin) and the roster:
    each configured silo, its pool, its key's fingerprint and status."""
    import datetime

    from fl_core.secagg import crypto
    from infra.config import load_config
    from infra.keystore import coordinator_identity
    from infra.roster import RosterStore

    federation = load_config(config)
    state = _state()
    roster = RosterStore(state, federation.federation).load()
    coordinator = crypto.identity_public(coordinator_identity(state))
    out.print(f"coordinator key {crypto.b64(coordinator)}  fingerprint {crypto.fingerprint(coordinator)}  "
              "(for `fedsilo silo init --coordinator-key`)", soft_wrap=True)
    table = Table(title=f"{federation.federation} roster v{roster.version}", box=None)
    for column in ("silo", "pool", "fingerprint", "status", "since"):
        table.add_column(column)
    for silo in federation.silo_ids:
        member = roster.members.get(silo)
        if member is not None:
            since = datetime.datetime.fromtimestamp(member.enrolled_at).strftime("%Y-%m-%d %H:%M")
            table.add_row(silo, member.pool, member.fingerprint, "[green]enrolled[/]", since)
        elif silo in roster.removed:
            since = datetime.datetime.fromtimestamp(roster.removed[silo]).strftime("%Y-%m-%d %H:%M")
            table.add_row(silo, federation.silo(silo).pool_name, "-", "[red]offboarded[/]", since)
        else:
            table.add_row(silo, federation.silo(silo).pool_name, "-", "[yellow]not enrolled[/]", "")
    out.print(table)


@silo_app.command("serve")
@user_errors
def silo_serve(
    config: ConfigArg,
    silo: SiloOpt,
    poll: Annotated[float, typer.Option(help="seconds between looks for runs (new runs also arrive as events)",
                                        min=0.05)] = 2.0,
    max_runs: Annotated[int | None, typer.Option(help="stop after this many runs", min=1)] = None,
) -> None:
    """On the silo's side: run this silo's flow runs in this process (instead of a Prefect worker),
    taking only their parameters from the server — the hardened runner."""
    import signal

    from flows.silo import silo_flow
    from infra.silo_runner import SiloRunner

    _prefect_server("silo serve")
    runner = SiloRunner(config, silo, silo_flow, poll_s=poll, on_run=lambda report: out.print(
        f"{report.name}  {report.state.lower()}  {report.seconds:.2f} s"
        + (f"  {report.message}" if report.state != "COMPLETED" and report.message else ""), soft_wrap=True))
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    out.print(f"silo {silo} serving {runner.deployment} (Ctrl-C to stop)")
    handled = runner.serve(max_runs=max_runs)
    out.print(f"stopped after {handled} run(s)")


def _tool(name: str) -> str:
    """How to call a command installed next to this Python (e.g. `.venv/bin/mlflow`)."""
    candidate = Path(sys.executable).parent / name
    return _short(candidate) if candidate.exists() else name


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main() -> None:
    app(prog_name="fedsilo")


if __name__ == "__main__":
    sys.exit(main())
