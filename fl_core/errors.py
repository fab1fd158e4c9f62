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


class MalformedMessage(ExchangeError):
    """A message or object reference does not parse as its type (the text names the message and field)."""


class TrackingError(FedsiloError):
    """The tracking/registry backend is unreachable or refused an operation."""


class StateError(FedsiloError):
    """The federation's stored state does not fit the config (e.g. a different model)."""


class SecAggError(FedsiloError):
    """Secure aggregation refused a message or could not complete. Each subclass names one cause;
    a message refused in a phase makes its sender count as dropped for the rest of the round."""


class StaleMessage(SecAggError):
    """A message bound to another federation, round or phase (e.g. a replay from round r - 1)."""


class WrongSender(SecAggError):
    """A message whose sender is not who it claims to be, or not expected in this phase."""


class UnknownSilo(SecAggError):
    """A message or share about a silo outside the round's participant set."""


class WrongLength(SecAggError):
    """A vector or share of the wrong size."""


class BadSignature(SecAggError):
    """A signature that does not verify. Deliberately says nothing more."""


class BadCiphertext(SecAggError):
    """An encrypted share that does not decrypt and authenticate. Deliberately says nothing more."""


class ThresholdError(SecAggError, QuorumError):
    """Fewer participants than the Shamir threshold: the round cannot be unmasked and changes nothing."""


class HeadroomError(ConfigError):
    """Quantisation settings under which the sum of the silos' updates could wrap around the modulus."""


class PrivacyError(FedsiloError):
    """A privacy setting or ledger is invalid."""


class BudgetExceeded(PrivacyError):
    """A round would take a privacy ledger past its budget; the round is refused, nothing is charged."""


class LedgerCorrupt(PrivacyError, StateError):
    """A privacy ledger on disk is unreadable or fails its checksum; it is never replaced by a fresh one."""


class TooFewUpdates(AggregationError):
    """Fewer updates than an aggregation rule needs: none at all, or too few for the number of Byzantine
    updates it is set to tolerate (e.g. Krum needs n ≥ 2f + 3, Bulyan n ≥ 4f + 3)."""


class ShapeMismatch(AggregationError):
    """Updates that are not flat vectors of one common length (or a vector of the wrong length for the rule)."""


class NonFiniteUpdate(AggregationError):
    """An update holding NaN or infinite values; robust rules refuse it rather than guess what it meant."""


class BadWeights(AggregationError):
    """Weights that are not one finite, non-negative number per update with a positive total."""


class UnknownAggregator(AggregationError):
    """An aggregation rule name, or a parameter of a rule, that the robust-aggregation registry does not know."""


class EnrolmentError(FedsiloError):
    """A silo is not on the federation's signed roster (never enrolled, or offboarded), its key does
    not match the roster, or the roster itself fails its signature."""
