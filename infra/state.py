"""The state folder: everything an embedded run writes lives under one directory.

``.fedsilo/`` in the working directory unless ``FEDSILO_HOME`` names another. Nothing here creates
directories on import; `ensure_state_dir` does it, idempotently, at the entry point.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fl_core.errors import StateError


@dataclass(frozen=True, slots=True)
class StateDir:
    root: Path

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def exchange(self) -> Path:
        return self.root / "exchange"

    def silo(self, silo_id: str) -> Path:
        return self.root / "silos" / silo_id

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"


def resolve_state_dir(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> StateDir:
    env = os.environ if env is None else env
    home = env.get("FEDSILO_HOME")
    root = Path(home).expanduser() if home else (cwd or Path.cwd()) / ".fedsilo"
    return StateDir(root=root.resolve())


def ensure_state_dir(state: StateDir) -> StateDir:
    try:
        for path in (state.root, state.prefect_home, state.mlflow_artifacts, state.exchange):
            path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create the state folder {state.root}: {exc.strerror or exc}") from None
    return state
