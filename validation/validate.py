"""Validate one silo's table: the Arrow schema first, then the Great Expectations suite in an
ephemeral context. Returns a `ValidationSummary`; deciding what a failure means is the caller's job.
"""

from __future__ import annotations

import os
import threading
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from fl_core.schema import DataContract
from validation.schema import check_schema, decoded
from validation.suite import build_suite
from validation.summary import ExpectationOutcome, ValidationSummary, schema_hash

_lock = threading.Lock()
_context = None


def _gx_context():
    """One ephemeral GX context per process (made on first use; nothing is written to disk)."""
    global _context
    with _lock:
        if _context is None:
            os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            _context = context
        return _context


def _outcome(result) -> ExpectationOutcome:
    config = result.expectation_config
    stats = result.result or {}
    error = None
    info = result.exception_info or {}
    if isinstance(info, dict) and info.get("raised_exception"):
        error = str(info.get("exception_message") or "expectation raised")[:200]
    elif isinstance(info, dict):
        for nested in info.values():  # GX can nest exception info per metric
            if isinstance(nested, dict) and nested.get("raised_exception"):
                error = str(nested.get("exception_message") or "expectation raised")[:200]
                break
    element_count = stats.get("element_count")
    unexpected = stats.get("unexpected_count")
    fraction = None
    if unexpected is not None and element_count:
        fraction = float(unexpected) / float(element_count)
    # Deliberately dropped: observed_value, partial_unexpected_*, unexpected_rows (values from the data).
    return ExpectationOutcome(
        expectation=config.type,
        column=config.kwargs.get("column"),
        success=bool(result.success),
        element_count=None if element_count is None else int(element_count),
        unexpected_count=None if unexpected is None else int(unexpected),
        unexpected_fraction=fraction,
        missing_count=None if stats.get("missing_count") is None else int(stats["missing_count"]),
        error=error,
    )


def _split_counts(table: pa.Table, contract: DataContract) -> tuple[int, int]:
    column = table.column(contract.split_column)
    return (
        int(pc.sum(pc.equal(column, "train")).as_py() or 0),
        int(pc.sum(pc.equal(column, "holdout")).as_py() or 0),
    )


def validate_table(table: pa.Table, contract: DataContract, silo: str) -> ValidationSummary:
    """Check `table` against `contract`; the summary names every failure and holds no values."""
    fields = [(f.name, str(f.type)) for f in table.schema]
    base = dict(
        silo=silo,
        contract_hash=contract.contract_hash(),
        schema_hash=schema_hash(fields),
        n_rows=table.num_rows,
        extra_columns=len(set(table.schema.names) - set(contract.columns)),
    )
    issues = check_schema(table.schema, contract)
    if issues:
        return ValidationSummary(**base, passed=False, n_train=0, n_holdout=0, schema_issues=tuple(issues))

    n_train, n_holdout = _split_counts(table, contract)
    problems = []
    if n_train < contract.min_train_rows:
        problems.append(f"{contract.split_column}: {n_train} train rows, the contract needs >= {contract.min_train_rows}")
    if n_holdout < contract.min_holdout_rows:
        problems.append(
            f"{contract.split_column}: {n_holdout} holdout rows, the contract needs >= {contract.min_holdout_rows}"
        )

    selected = table.select(list(contract.columns))
    frame = pa.table([decoded(c) for c in selected.columns], names=selected.column_names).to_pandas()
    context = _gx_context()
    name = f"silo-{uuid.uuid4().hex}"
    with _lock:
        source = context.data_sources.add_pandas(name)
        try:
            batch = source.add_dataframe_asset("table").add_batch_definition_whole_dataframe("all").get_batch(
                batch_parameters={"dataframe": frame}
            )
            result = batch.validate(
                build_suite(contract),
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 0, "include_unexpected_rows": False},
            )
        finally:
            context.data_sources.delete(name)
    outcomes = sorted((_outcome(r) for r in result.results), key=lambda o: (o.column or "", o.expectation))
    passed = not problems and all(o.success for o in outcomes)
    return ValidationSummary(
        **base, passed=passed, n_train=n_train, n_holdout=n_holdout, outcomes=tuple(outcomes), problems=tuple(problems)
    )
