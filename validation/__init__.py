"""Data contracts: an Arrow schema check and a Great Expectations suite built from the
federation's contract, returning a compact summary that holds no rows and no values."""

from validation.summary import ExpectationOutcome, ValidationSummary
from validation.validate import validate_table

__all__ = ["ExpectationOutcome", "ValidationSummary", "validate_table"]
