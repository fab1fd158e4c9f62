"""MLflow tracking and registry for a federation.

Conventions (DESIGN.md, "MLflow conventions"): one experiment per federation; one parent run per
training job (tag ``fedsilo.kind = job``) with per-round metrics at ``step = round``; one child run
per round (``fedsilo.kind = round``) holding the round's artifacts (validation summaries, gate
report) and its logged model; one registered model per federation, one version per round, tagged
with its lineage; aliases ``candidate`` (newest version) and ``champion`` (newest that passed the
fairness gate).

Nothing here holds a secret or a row of data: metrics, counts, hashes and decisions only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fl_core.errors import TrackingError

TAG = "fedsilo."
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
CANDIDATE, CHAMPION = "candidate", "champion"


def _quiet_mlflow_environment() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


@contextlib.contextmanager
def _quiet(*loggers: str):
    """Silence MLflow's advice about signatures while logging a model whose input the model
    itself validates against the data contract (see `infra.pyfunc_model`)."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    try:
        for name in loggers:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def preflight(uri: str, timeout: float = 3.0) -> None:
    """Fail fast, with the URI in the message, when the tracking backend cannot be reached."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingError(f"tracking server {uri} answered /health with HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            raise TrackingError(f"tracking server {uri} answered /health with HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"tracking server {uri} is unreachable: {reason}") from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        path = path if path.is_absolute() else Path("/" + str(path))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"tracking store {uri}: cannot create {path.parent} ({exc.strerror or exc})") from None
        if not os.access(path.parent, os.W_OK):
            raise TrackingError(f"tracking store {uri}: {path.parent} is not writable")
    elif "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        if scheme not in ("databricks", "postgresql", "mysql", "mssql"):
            raise TrackingError(f"tracking URI {uri!r}: unsupported scheme {scheme!r}")


def _clean(metrics: Mapping[str, float]) -> dict[str, float]:
    """MLflow stores NaN, but an undefined metric is better absent than a NaN point on a chart."""
    return {k: float(v) for k, v in metrics.items() if v is not None and not math.isnan(float(v))}


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: str
    round: int
    tags: dict[str, str]


class Tracker:
    def __init__(self, uri: str, experiment: str, model_name: str, artifact_root: Path | None = None):
        self.uri = uri
        self.experiment_name = experiment
        self.model_name = model_name
        self.artifact_root = artifact_root
        self._client = None
        self.experiment_id: str | None = None

    # -- connection ---------------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            raise TrackingError("tracker used before open()")
        return self._client

    def open(self) -> Tracker:
        """Check the backend, then get (or create) the federation's experiment. Idempotent."""
        preflight(self.uri)
        _quiet_mlflow_environment()
        import mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        try:
            experiment = self._client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                location = None
                if self.artifact_root is not None:
                    location = (self.artifact_root / self.experiment_name).resolve().as_uri()
                self.experiment_id = self._client.create_experiment(self.experiment_name, artifact_location=location)
            else:
                self.experiment_id = experiment.experiment_id
        except MlflowException as exc:
            raise TrackingError(f"tracking store {self.uri}: {exc.message.splitlines()[0]}") from None
        return self

    def _call(self, what: str, fn, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            raise TrackingError(f"{what} failed at {self.uri}: {exc.message.splitlines()[0]}") from None

    # -- runs ---------------------------------------------------------------------------------------
    def start_job(self, name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> str:
        run = self._call(
            "creating the job run", self.client.create_run, self.experiment_id, run_name=name,
            tags={**tags, f"{TAG}kind": "job"},
        )
        from mlflow.entities import Param

        batch = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(batch), 100):
            self._call("logging job params", self.client.log_batch, run.info.run_id, params=batch[start : start + 100])
        return run.info.run_id

    def start_round(self, job_run_id: str, round_number: int, name: str, tags: Mapping[str, str]) -> str:
        run = self._call(
            "creating the round run", self.client.create_run, self.experiment_id, run_name=name,
            tags={**tags, "mlflow.parentRunId": job_run_id, f"{TAG}kind": "round", f"{TAG}round": str(round_number)},
        )
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._call("closing a run", self.client.set_terminated, run_id, status=status)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call("tagging a run", self.client.log_batch, run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in _clean(metrics).items()]
        for start in range(0, len(items), 1000):
            self._call("logging metrics", self.client.log_batch, run_id, metrics=items[start : start + 1000])

    def log_json(self, run_id: str, name: str, payload: object) -> None:
        folder, _, filename = name.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            path.write_text(json.dumps(payload, indent=2, sort_keys=True, allow_nan=True))
            self._call(f"logging {name}", self.client.log_artifact, run_id, str(path), artifact_path=folder or None)

    # -- registry -----------------------------------------------------------------------------------
    def register_round_model(
        self,
        round_run_id: str,
        round_number: int,
        vector: np.ndarray,
        spec: Mapping[str, object],
        tags: Mapping[str, str],
    ) -> str:
        """Log the round's pyfunc model in its run and register it as a new version with `tags`."""
        import mlflow
        import pandas
        import torch

        import fl_core

        requirements = [
            f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
            f"pandas=={pandas.__version__}",
        ]
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "weights.npy"
            np.save(weights, np.asarray(vector, dtype=np.float32))
            spec_path = Path(tmp) / "spec.json"
            spec_path.write_text(json.dumps(spec, sort_keys=True))
            try:
                with _quiet("mlflow.pyfunc", "mlflow.models"), mlflow.start_run(run_id=round_run_id):
                    info = mlflow.pyfunc.log_model(
                        name="model",
                        python_model=str(PYFUNC_FILE),
                        artifacts={"weights": str(weights), "spec": str(spec_path)},
                        code_paths=[str(Path(fl_core.__file__).parent)],
                        pip_requirements=requirements,
                        metadata={"fedsilo_contract_hash": spec.get("contract_hash", "")},
                        step=round_number,
                    )
            except Exception as exc:  # MLflow raises several types here; all mean "not logged"
                raise TrackingError(f"logging the round {round_number} model failed: {str(exc).splitlines()[0]}") from None
        version = self._call(
            "registering the model version",
            self.client.create_model_version,
            self.model_name,
            source=info.model_uri,
            run_id=round_run_id,
            tags={k: str(v)[:5000] for k, v in tags.items()},
            model_id=info.model_id,
        )
        return str(version.version)

    def ensure_registered_model(self, description: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self._call("creating the registered model", self.client.create_registered_model, self.model_name,
                       description=description)

    def set_version_tags(self, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._call("tagging a model version", self.client.set_model_version_tag, self.model_name, version, key,
                       str(value)[:5000])

    def set_alias(self, alias: str, version: str) -> None:
        self._call(f"setting alias {alias}", self.client.set_registered_model_alias, self.model_name, alias, version)

    def version_by_alias(self, alias: str) -> VersionInfo | None:
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException:
            return None
        return VersionInfo(version=str(version.version), round=int(version.tags.get(f"{TAG}round", -1)), tags=dict(version.tags))

    def version_for_round(self, round_number: int) -> VersionInfo | None:
        found = self._call(
            "searching model versions",
            self.client.search_model_versions,
            f"name = '{self.model_name}' and tags.`{TAG}round` = '{round_number}'",
        )
        if not found:
            return None
        version = max(found, key=lambda v: int(v.version))
        return VersionInfo(version=str(version.version), round=round_number, tags=dict(version.tags))

    # -- reading back -------------------------------------------------------------------------------
    def latest_job(self):
        runs = self._call(
            "searching job runs",
            self.client.search_runs,
            [self.experiment_id],
            filter_string=f"tags.`{TAG}kind` = 'job'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def round_runs(self, job_run_id: str):
        runs = self._call(
            "searching round runs",
            self.client.search_runs,
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{job_run_id}'",
            max_results=10000,
        )
        return sorted(runs, key=lambda r: int(r.data.tags.get(f"{TAG}round", 0)))


def tracker_for(config, state) -> Tracker:
    """The federation's tracker (not yet opened): ``tracking.uri`` if set, else sqlite in the state folder."""
    uri = config.tracking.uri or state.tracking_uri
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    return Tracker(
        uri=uri,
        experiment=config.tracking.experiment or config.federation,
        model_name=config.federation,
        artifact_root=state.mlflow_artifacts if local else None,
    )
