"""The result of checking a silo's table against the contract: counts and fractions only.

A summary leaves the silo (it is logged to the coordinator's tracking store), so it must not
carry a row, a value or a value-derived aggregate such as an observed minimum; only which
expectations failed and how many rows they concerned.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    element_count: int | None = None
    unexpected_count: int | None = None
    unexpected_fraction: float | None = None
    missing_count: int | None = None
    error: str | None = None

    def describe(self) -> str:
        where = f"{self.column}: " if self.column else ""
        if self.error:
            return f"{where}{self.expectation} could not run ({self.error})"
        if self.unexpected_count is not None and self.element_count:
            return (
                f"{where}{self.expectation} failed for {self.unexpected_count} of {self.element_count} rows"
                f" ({100 * (self.unexpected_fraction or 0):.1f}%)"
            )
        return f"{where}{self.expectation} failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationSummary:
    """``passed`` is True only when the schema matched and every expectation held."""

    silo: str
    passed: bool
    contract_hash: str
    schema_hash: str | None
    n_rows: int
    n_train: int
    n_holdout: int
    schema_issues: tuple[str, ...] = ()
    outcomes: tuple[ExpectationOutcome, ...] = ()
    extra_columns: int = 0
    problems: tuple[str, ...] = field(default=())

    @classmethod
    def unreadable(cls, silo: str, contract_hash: str, reason: str) -> ValidationSummary:
        """The verdict on data that could not even be read (a missing or corrupt file)."""
        return cls(
            silo=silo, passed=False, contract_hash=contract_hash, schema_hash=None,
            n_rows=0, n_train=0, n_holdout=0, problems=(reason,),
        )

    @property
    def failures(self) -> tuple[ExpectationOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.success)

    def reasons(self) -> list[str]:
        return [*self.schema_issues, *self.problems, *(o.describe() for o in self.failures)]

    def verdict(self) -> str:
        """The verdict without the silo's name, e.g. for a line that already names it."""
        if self.passed:
            return f"contract passed ({self.n_train} train / {self.n_holdout} holdout rows)"
        reasons = self.reasons()
        more = f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else ""
        return "contract failed: " + "; ".join(reasons[:3]) + more

    def one_line(self) -> str:
        return f"{self.silo}: {self.verdict()}"

    def fingerprint(self) -> dict:
        """What the lineage records about this silo's data: no data, only its shape and verdict."""
        return {
            "schema_hash": self.schema_hash,
            "contract_hash": self.contract_hash,
            "rows": self.n_rows,
            "train_rows": self.n_train,
            "holdout_rows": self.n_holdout,
            "contract": "passed" if self.passed else "failed",
            "failed_checks": len(self.schema_issues) + len(self.problems) + len(self.failures),
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> ValidationSummary:
        return cls(
            **{
                **raw,
                "schema_issues": tuple(raw.get("schema_issues", ())),
                "problems": tuple(raw.get("problems", ())),
                "outcomes": tuple(ExpectationOutcome(**o) for o in raw.get("outcomes", ())),
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def schema_hash(fields: list[tuple[str, str]]) -> str:
    """Hash of (column name, Arrow type) pairs in table order."""
    return hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()
