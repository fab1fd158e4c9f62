from __future__ import annotations

import pytest

from infra.synthetic import write_synthetic_federation


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the session (it takes seconds to start), heartbeats off."""
    from prefect.testing.utilities import prefect_test_harness

    from infra.embedded import embedded_prefect

    with prefect_test_harness(server_startup_timeout=90), embedded_prefect():
        yield


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
