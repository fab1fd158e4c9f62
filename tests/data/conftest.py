"""Fixtures for the data-contract tests: the heart example's contract, table factories and the
validator (its GX context is made once per process, so these are session-scoped)."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pytest
from heart_tables import EXAMPLE_CONFIG, N_ROWS, build_table

from fl_core.schema import DataContract
from infra.config import FederationConfig, load_config
from validation import ValidationSummary, validate_table


@pytest.fixture(scope="session")
def heart_config() -> FederationConfig:
    return load_config(EXAMPLE_CONFIG)


@pytest.fixture(scope="session")
def contract(heart_config) -> DataContract:
    return heart_config.contract


@pytest.fixture(scope="session")
def make_table(contract) -> Callable[..., pa.Table]:
    """Factory: ``make_table(n=40, column=values_or_array_or_DROP, extra=array)`` -> pa.Table."""

    def make(n: int = N_ROWS, **overrides) -> pa.Table:
        return build_table(contract, n, **overrides)

    return make


@pytest.fixture(scope="session")
def validate(contract) -> Callable[..., ValidationSummary]:
    """``validate(table, silo="clinic")`` against the heart contract."""

    def run(table: pa.Table, silo: str = "clinic") -> ValidationSummary:
        return validate_table(table, contract, silo)

    return run


@pytest.fixture(scope="session")
def conforming_table(contract) -> pa.Table:
    return build_table(contract)


@pytest.fixture(scope="session")
def conforming_summary(conforming_table, contract) -> ValidationSummary:
    """The conforming table's summary, computed once (the first GX run in a process is the slow one)."""
    return validate_table(conforming_table, contract, "clinic")
