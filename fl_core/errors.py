"""One error hierarchy for fedsilo.

Every error a user can cause carries a one-line message naming what was wrong and where
(the config key, the silo, the file). The CLI prints that line and exits non-zero; it never
shows a traceback for a `FedsiloError`.
"""

from __future__ import annotations


class FedsiloError(Exception):
    """Base of every error fedsilo raises on purpose."""


class ConfigError(FedsiloError):
    """The federation config is malformed, has an unknown key or a bad value."""


class DataError(FedsiloError):
    """A silo's data cannot be read (missing file, unreadable Parquet)."""


class ContractError(FedsiloError):
    """A silo's data violates the federation's data contract."""


class TrainingError(FedsiloError):
    """Local training cannot run on the inputs it was given."""


class AggregationError(FedsiloError):
    """Updates cannot be combined (mismatched shapes, non-finite values, no weight)."""


class QuorumError(FedsiloError):
    """Too few silos remain for a round to go on; the round changes nothing."""


class ExchangeError(FedsiloError):
    """An object is missing from the exchange or cannot be written."""


class IntegrityError(ExchangeError):
    """An object in the exchange does not match the digest it was published with."""


class TrackingError(FedsiloError):
    """The tracking/registry backend is unreachable or refused an operation."""


class StateError(FedsiloError):
    """The federation's stored state does not fit the config (e.g. a different model)."""
