"""The contract as an Arrow schema check: every contract column present with a compatible type."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.types as pat

from fl_core.schema import DataContract, Dtype


def arrow_type_accepts(dtype: Dtype, arrow_type: pa.DataType) -> bool:
    """Whether a column of `arrow_type` can hold the contract's `dtype` without loss of meaning.

    Integers are accepted where floats are expected (a widening); an all-null column is accepted
    for any dtype (its missingness is the expectation suite's business)."""
    if pat.is_null(arrow_type):
        return True
    if pat.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if dtype == "int":
        return pat.is_integer(arrow_type)
    if dtype == "float":
        return pat.is_floating(arrow_type) or pat.is_integer(arrow_type) or pat.is_decimal(arrow_type)
    if dtype == "string":
        return pat.is_string(arrow_type) or pat.is_large_string(arrow_type)
    return pat.is_boolean(arrow_type)


def decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A dictionary-encoded column as a plain column of its value type. The checks and the encoder
    need plain columns: `ChunkedArray.to_numpy` turns a dictionary column's nulls into values, and
    range checks cannot run on the pandas Categorical it becomes."""
    return column.cast(column.type.value_type) if pat.is_dictionary(column.type) else column


def expected_arrow_schema(contract: DataContract) -> pa.Schema:
    """The canonical Arrow schema of a silo table (what `fedsilo demo-data` writes)."""
    types = {"int": pa.int64(), "float": pa.float64(), "string": pa.string(), "bool": pa.bool_()}
    fields = [pa.field(f.name, types[f.dtype], nullable=f.max_missing > 0) for f in contract.features]
    fields.append(pa.field(contract.label.column, pa.int64(), nullable=False))
    fields.append(pa.field(contract.split_column, pa.string(), nullable=False))
    return pa.schema(fields)


def check_schema(schema: pa.Schema, contract: DataContract) -> list[str]:
    """Problems with the table's schema, one line each, naming the column; empty when it fits."""
    issues: list[str] = []
    present = {f.name: f.type for f in schema}  # schema.field(name) raises on a duplicated name
    duplicated = sorted({n for n in schema.names if schema.names.count(n) > 1})
    issues.extend(f"{name}: column appears more than once" for name in duplicated)
    wanted: list[tuple[str, Dtype]] = [(f.name, f.dtype) for f in contract.features]
    wanted += [(contract.label.column, "int"), (contract.split_column, "string")]
    for name, dtype in wanted:
        if name not in present:
            issues.append(f"{name}: column missing")
        elif not arrow_type_accepts(dtype, present[name]):
            issues.append(f"{name}: type {present[name]} does not fit contract dtype {dtype}")
    return issues
