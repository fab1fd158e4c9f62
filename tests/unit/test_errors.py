"""The error hierarchy: callers catch `FedsiloError` to print one line instead of a traceback."""

from __future__ import annotations

import pytest

from fl_core import errors

ALL_ERRORS = [
    errors.ConfigError,
    errors.DataError,
    errors.ContractError,
    errors.TrainingError,
    errors.AggregationError,
    errors.QuorumError,
    errors.ExchangeError,
    errors.IntegrityError,
    errors.TrackingError,
    errors.StateError,
    errors.PrivacyError,
    errors.BudgetExceeded,
    errors.LedgerCorrupt,
    errors.TooFewUpdates,
    errors.ShapeMismatch,
    errors.NonFiniteUpdate,
    errors.BadWeights,
    errors.UnknownAggregator,
]


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_error_is_a_fedsilo_error(cls):
    # The CLI's one-line handler catches FedsiloError; an error outside it would print a traceback.
    assert issubclass(cls, errors.FedsiloError)
    with pytest.raises(errors.FedsiloError, match="^silo a: boom$"):
        raise cls("silo a: boom")


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_errors_are_not_builtin_value_or_runtime_errors(cls):
    # Spec validation raises ValueError; the two must stay distinguishable.
    assert not issubclass(cls, (ValueError, RuntimeError, KeyError))


def test_integrity_error_is_an_exchange_error():
    assert issubclass(errors.IntegrityError, errors.ExchangeError)
    assert not issubclass(errors.ExchangeError, errors.IntegrityError)


def test_fedsilo_error_is_an_exception():
    assert issubclass(errors.FedsiloError, Exception)
    assert not issubclass(errors.FedsiloError, (ValueError, RuntimeError))
