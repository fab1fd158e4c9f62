"""The `fedsilo` command as a user runs it: in a subprocess, on a copy of the example federation,
with its own state folder and an empty HOME that must stay empty. Results are read back the way an
auditor would: with MlflowClient and by loading the registered model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e
SILOS = ["cleveland", "hungary", "switzerland", "va_long_beach"]
HEADER = "round  cleveland  hungary  switzerland  va_long_beach  global  gate"
ROUNDS = range(1, 21)  # the example's training.rounds


class Workspace:
    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.state = root / "state"
        self.example = root / "heart"
        self.home.mkdir(parents=True)
        self.example.mkdir()
        for name in ("federation.yaml", "heart_disease_uci.csv"):
            shutil.copy(REPO / "examples" / "heart" / name, self.example / name)
        self.config = self.example / "federation.yaml"

    def fedsilo(self, *args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FEDSILO_", "MLFLOW_"))}
        environment = {**inherited, "HOME": str(self.home), "FEDSILO_HOME": str(self.state), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", *args],
            cwd=self.root, env=environment, capture_output=True, text=True, timeout=timeout,
        )

    def variant(self, name: str, edit) -> Path:
        """A copy of the example config (same data folder) with `edit(raw_dict)` applied."""
        raw = yaml.safe_load(self.config.read_text())
        edit(raw)
        path = self.example / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    def client(self):
        from mlflow import MlflowClient

        uri = f"sqlite:///{self.state}/mlflow.db"
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def registry_snapshot(self) -> tuple:
        client = self.client()
        found = client.search_model_versions("name = 'heart'")
        model = client.get_registered_model("heart")
        return sorted(str(v.version) for v in found), {k: str(v) for k, v in model.aliases.items()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """demo-data + the example federation's run (its 20 rounds), as a new user does it (`make demo`)."""
    work = Workspace(tmp_path_factory.mktemp("demo"))
    made = work.fedsilo("demo-data", str(work.config))
    assert made.returncode == 0, made.stderr
    run = work.fedsilo("run", str(work.config), "--no-progress")
    assert run.returncode == 0, run.stdout + run.stderr
    work.run = run
    return work


def test_demo_run_prints_the_round_table_and_where_to_look(demo):
    out = demo.run.stdout
    assert HEADER in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and len(line.split()) >= 7]
    assert [row[0] for row in rows] == [str(r) for r in ROUNDS]
    for row in rows:
        accuracies = [float(x) for x in row[1:6]]
        assert all(0.3 <= a <= 1.0 for a in accuracies)
    assert "models:/heart@champion" in out
    assert f"ui --backend-store-uri sqlite:///{demo.state}/mlflow.db" in out
    assert "Traceback" not in demo.run.stderr


def test_demo_run_is_tracked_and_registered_with_lineage(demo):
    client = demo.client()
    experiment = client.get_experiment_by_name("heart")
    assert experiment is not None
    jobs = client.search_runs([experiment.experiment_id], "tags.`fedsilo.kind` = 'job'")
    assert len(jobs) == 1 and jobs[0].info.status == "FINISHED"
    job = jobs[0].info.run_id
    assert sorted(m.step for m in client.get_metric_history(job, "global.accuracy")) == list(ROUNDS)
    for silo in SILOS:
        assert len(client.get_metric_history(job, f"silo.{silo}.accuracy")) == len(ROUNDS)
    rounds = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{job}'", max_results=100)
    assert len(rounds) == len(ROUNDS)

    versions = sorted(client.search_model_versions("name = 'heart'"), key=lambda v: int(v.version))
    assert [v.tags["fedsilo.round"] for v in versions] == [str(r) for r in ROUNDS]
    for previous, version in zip([None, *versions[:-1]], versions):
        tags = version.tags
        assert tags["fedsilo.parent_version"] == (str(previous.version) if previous else "none")
        assert tags["fedsilo.silos_in"] == ",".join(SILOS)
        assert tags["fedsilo.silos_out"] == "none"
        assert len(tags["fedsilo.config_hash"]) == 64 and tags["fedsilo.code_version"]
        assert tags["fedsilo.gate"] in ("passed", "failed")
        for silo in SILOS:
            fingerprint = json.loads(tags[f"fedsilo.data.{silo}"])
            assert fingerprint["contract"] == "passed" and fingerprint["rows"] > 0
    model = client.get_registered_model("heart")
    assert str(model.aliases["candidate"]) == str(versions[-1].version)
    champion = client.get_model_version_by_alias("heart", "champion")
    assert champion.tags["fedsilo.gate"] == "passed"


def test_after_the_demo_no_earlier_version_beats_the_champion_beyond_the_gates_interval(demo):
    """Every version, re-scored on every hospital's holdout against the champion with the gate's own
    paired intervals: none would pass the gate against the champion while gaining beyond its
    overall interval, and the champion is the best of the promoted versions on the pooled holdouts."""
    from fl_core.bootstrap import paired_intervals
    from fl_core.evaluation import predict_proba, scores
    from fl_core.fairness import group_counts, reportable
    from fl_core.gate import decide
    from fl_core.models import build_model
    from fl_core.params import load_flat_inplace
    from infra.config import load_config
    from infra.exchange import Exchange, LocalObjectStore, ObjectRef
    from infra.silo_data import encode_table

    config = load_config(demo.config)
    exchange = Exchange(LocalObjectStore(demo.state / "exchange"), "heart")
    records = {r: exchange.read_json_key(exchange.record_key(r)) for r in ROUNDS}
    holdouts = {s: encode_table(pq.read_table(config.silo_data_path(s)), config.contract) for s in SILOS}

    def predictions(round_number: int) -> dict:
        vector = exchange.get_vector(ObjectRef.from_dict(records[round_number]["global"]))
        model = build_model(config.model, holdouts[SILOS[0]].x_holdout.shape[1], seed=0)
        load_flat_inplace(model, vector)
        return {s: predict_proba(model, d.x_holdout) for s, d in holdouts.items()}

    champion_round = int(demo.client().get_model_version_by_alias("heart", "champion").tags["fedsilo.round"])
    promoted = [r for r in ROUNDS if records[r]["promoted"]]
    assert champion_round == promoted[-1]
    assert len(promoted) < len(ROUNDS)  # the gate does refuse some rounds
    best = predictions(champion_round)
    pooled = {}
    for r in ROUNDS:
        mine = predictions(r)
        pooled[r] = records[r]["pooled"]["accuracy"]
        if r == champion_round:
            continue
        gains, values, before, groups, withheld = {}, {}, {}, {}, {}
        spec = config.gate.groups
        for s, d in holdouts.items():
            _, gains[s] = paired_intervals("accuracy", d.y_holdout, mine[s], best[s], np.random.default_rng(r),
                                           replicates=config.gate.bootstrap, confidence=config.gate.confidence)
            values[s] = scores(d.y_holdout, mine[s]).accuracy
            before[s] = scores(d.y_holdout, best[s]).accuracy
            if spec is not None:  # the group checks as the silos report them
                labels = d.holdout_groups[spec.column]
                counts = group_counts(d.y_holdout, mine[s], labels, threshold=spec.threshold)
                groups[s], withheld[s] = reportable(counts, spec.min_group_size,
                                                    unassigned=sum(v is None for v in labels))
        decision = decide(values, before, config.gate, gains=gains, sizes={s: len(d.y_holdout) for s, d in holdouts.items()},
                          groups=groups, suppressed=withheld)
        overall = next(c for c in decision.checks if c.name == "overall")
        assert not (decision.passed and overall.low > 0), (r, decision.summary(), overall)
    assert all(pooled[r] <= pooled[champion_round] + 1e-12 for r in promoted)


def test_the_champion_scores_raw_records(demo):
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{demo.state}/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{demo.state}/mlflow.db")  # not a registry an earlier test left set
    model = mlflow.pyfunc.load_model("models:/heart@champion")
    records = pd.read_parquet(demo.example / "data" / "hungary.parquet").drop(columns=["disease", "split"])
    scored = model.predict(records)
    assert len(scored) == len(records)
    assert scored["probability"].between(0.0, 1.0).all()
    assert set(scored["prediction"].unique()) <= {0, 1}
    with pytest.raises(Exception, match="chol"):
        model.predict(records.drop(columns=["chol"]))


def test_nothing_is_written_outside_the_state_folder(demo):
    assert list(demo.home.iterdir()) == []
    assert not (demo.root / ".fedsilo").exists() and not (demo.root / "mlruns").exists()
    assert {p.name for p in demo.state.iterdir()} >= {"mlflow.db", "prefect", "exchange", "mlartifacts", "silos"}


def test_status_and_validate(demo):
    status = demo.fedsilo("status", str(demo.config))
    assert status.returncode == 0, status.stderr
    assert "champion: models:/heart@champion = v" in status.stdout
    validate = demo.fedsilo("validate", str(demo.config))
    assert validate.returncode == 0, validate.stderr
    assert validate.stdout.count("passed") == 4


def one_line_error(result, *needles: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_user_errors_are_one_line_and_change_nothing(demo):
    before = demo.registry_snapshot()

    malformed = demo.example / "malformed.yaml"
    malformed.write_text("federation: heart\nsilos: [\n  - id: x\n")
    one_line_error(demo.fedsilo("run", str(malformed)), "malformed YAML", "line")

    unknown = demo.variant("unknown", lambda raw: raw["training"].update(learning_rate=0.1))
    one_line_error(demo.fedsilo("run", str(unknown)), "training.learning_rate", "unknown key")

    bad_value = demo.variant("bad-value", lambda raw: raw["training"].update(lr=-1))
    one_line_error(demo.fedsilo("run", str(bad_value)), "training", "lr", "-1")

    unreachable = demo.fedsilo("run", str(demo.config), env={"FEDSILO_TRACKING_URI": "http://127.0.0.1:9"})
    one_line_error(unreachable, "http://127.0.0.1:9", "unreachable")

    one_line_error(demo.fedsilo("run", str(demo.example / "absent.yaml")), "absent.yaml", "not found")

    no_server = {"PREFECT_API_URL": ""}
    one_line_error(demo.fedsilo("run", str(demo.config), env={**no_server, "FEDSILO_DISPATCH": "work_pools"}),
                   "dispatch.mode: work_pools needs a Prefect server", "PREFECT_API_URL")
    one_line_error(demo.fedsilo("deploy", str(demo.config), env=no_server), "deploy needs a Prefect server")
    closed = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}
    one_line_error(demo.fedsilo("deploy", str(demo.config), env=closed), "http://127.0.0.1:9/api", "unreachable")
    one_line_error(demo.fedsilo("run", str(demo.config), env=closed), "http://127.0.0.1:9/api", "unreachable")
    assert demo.registry_snapshot() == before


def write_broken(path: Path, how: str) -> None:
    table = pq.read_table(path)
    if how == "wrong-type":
        index = table.schema.get_field_index("age")
        table = table.set_column(index, "age", pa.array([str(v) for v in table.column("age").to_pylist()]))
    elif how == "out-of-range":
        index = table.schema.get_field_index("chol")
        table = table.set_column(index, "chol", pa.array([900] * table.num_rows, pa.int64()))
    elif how == "empty":
        table = table.slice(0, 0)
    pq.write_table(table, path)


def test_bad_silos_sit_out_with_their_reason_and_the_round_goes_on(tmp_path):
    work = Workspace(tmp_path)
    assert work.fedsilo("demo-data", str(work.config)).returncode == 0
    write_broken(work.example / "data" / "hungary.parquet", "wrong-type")
    (work.example / "data" / "switzerland.parquet").unlink()
    # Two of four sitting out is more than secure aggregation's threshold (3 of 4) allows, so this
    # round names trusted aggregation explicitly; the secure case is the next test.
    config = work.variant("two", lambda raw: raw["aggregation"].update(mode="trusted", min_silos=2))

    run = work.fedsilo("run", str(config), "--rounds", "1", "--no-progress")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "switzerland" in run.stderr and "does not exist" in run.stderr  # warned before the run
    assert "hungary sits out round 1" in run.stdout and "age" in run.stdout
    assert "switzerland sits out round 1" in run.stdout
    version = work.client().get_model_version("heart", "1")
    out = json.loads(version.tags["fedsilo.silos_out"])
    assert set(out) == {"hungary", "switzerland"}
    assert version.tags["fedsilo.silos_in"] == "cleveland,va_long_beach"


def test_too_few_good_silos_fail_the_job_and_change_nothing(demo):
    before = demo.registry_snapshot()
    broken = demo.root / "broken"
    shutil.copytree(demo.example / "data", broken)
    write_broken(broken / "cleveland.parquet", "out-of-range")
    write_broken(broken / "hungary.parquet", "empty")

    def point_at_broken(raw):
        for silo in raw["silos"]:
            silo["data"] = str(broken / f"{silo['id']}.parquet")

    config = demo.variant("broken", point_at_broken)
    result = demo.fedsilo("run", str(config), "--rounds", "1", "--no-progress")
    line = one_line_error(result, "min_silos=3", "cleveland", "hungary")
    assert "chol" in line and "rows" in line
    assert demo.registry_snapshot() == before


def test_silo_identities_are_made_on_the_silo_and_enrolled_by_the_coordinator(tmp_path):
    """`silo init` on a silo's side, `silo add|remove|list` on the coordinator's: what each prints,
    where the keys live, and the refusals (a key inside a git work tree, a silent re-key)."""
    work = Workspace(tmp_path / "w")
    silo_home = tmp_path / "cleveland-site"
    first = work.fedsilo("silo", "init", str(work.config), "--silo", "cleveland", env={"FEDSILO_HOME": str(silo_home)})
    assert first.returncode == 0, first.stderr
    pem = silo_home / "silos" / "cleveland" / "identity" / "ed25519.pem"
    card = pem.with_name("heart-cleveland.pub.json")
    assert pem.stat().st_mode & 0o077 == 0 and "new identity for silo cleveland" in first.stdout
    public = json.loads(card.read_text())["ed25519"]
    assert f"public key   {public}" in first.stdout and public not in pem.read_text()
    again = work.fedsilo("silo", "init", str(work.config), "--silo", "cleveland", env={"FEDSILO_HOME": str(silo_home)})
    assert "identity of silo cleveland" in again.stdout and json.loads(card.read_text())["ed25519"] == public

    repo = tmp_path / "a-repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    inside = work.fedsilo("silo", "init", str(work.config), "--silo", "hungary", env={"FEDSILO_HOME": str(repo / "keys")})
    assert inside.returncode == 1 and "inside the git work tree" in inside.stderr and "Traceback" not in inside.stderr
    assert not (repo / "keys" / "silos" / "hungary" / "identity" / "ed25519.pem").exists()

    added = work.fedsilo("silo", "add", str(work.config), "--silo", "cleveland", "--key", str(card))
    assert added.returncode == 0 and "enrolled: cleveland" in added.stdout and "roster v1" in added.stdout
    listing = work.fedsilo("silo", "list", str(work.config)).stdout
    assert "cleveland" in listing and "enrolled" in listing and "not enrolled" in listing  # the other three
    other = work.fedsilo("silo", "init", str(work.config), "--silo", "cleveland",
                         env={"FEDSILO_HOME": str(tmp_path / "impostor")})
    stranger = json.loads((tmp_path / "impostor" / "silos" / "cleveland" / "identity" / "heart-cleveland.pub.json")
                          .read_text())["ed25519"]
    assert other.returncode == 0
    rekey = work.fedsilo("silo", "add", str(work.config), "--silo", "cleveland", "--key", stranger)
    assert rekey.returncode == 1 and "--rekey" in rekey.stderr
    unknown = work.fedsilo("silo", "add", str(work.config), "--silo", "nowhere", "--key", public)
    assert unknown.returncode == 1 and "'nowhere' is not in federation 'heart'" in unknown.stderr
    removed = work.fedsilo("silo", "remove", str(work.config), "--silo", "cleveland")
    assert removed.returncode == 0 and "offboarded: cleveland" in removed.stdout and "roster v2" in removed.stdout
    assert "offboarded" in work.fedsilo("silo", "list", str(work.config)).stdout
    versions = sorted(p.name for p in (work.state / "exchange" / "federations" / "heart" / "roster").iterdir())
    assert versions == ["v0001.json", "v0002.json"]
    serve = work.fedsilo("silo", "serve", str(work.config), "--silo", "cleveland", env={"PREFECT_API_URL": ""})
    assert serve.returncode == 1 and "silo serve needs a Prefect server" in serve.stderr
