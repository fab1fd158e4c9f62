from __future__ import annotations

import os

import pytest

from infra.synthetic import write_synthetic_federation


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect API for the session, as embedded runs get it (`infra.prefect_api.LocalApi`: task
    runs recorded, quick retries on a busy SQLite), on its own database; heartbeats off."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, temporary_settings

    from infra.embedded import embedded_prefect
    from infra.prefect_api import LocalApi

    home = tmp_path_factory.mktemp("prefect-api")
    database = f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": database}
    with LocalApi(home / "api.log", env=env) as api, api.settings(), embedded_prefect(), \
            temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: database}):
        yield api


@pytest.fixture
def state_home(tmp_path, monkeypatch):
    """A fresh state folder (MLflow store, exchange, silo state) for one test."""
    home = tmp_path / "state"
    monkeypatch.setenv("FEDSILO_HOME", str(home))
    return home


@pytest.fixture
def federation(tmp_path):
    """Factory: a synthetic federation on disk; returns its config path."""

    def make(n_silos: int = 3, **kwargs):
        return write_synthetic_federation(tmp_path / "fed", n_silos=n_silos, **kwargs)

    return make
