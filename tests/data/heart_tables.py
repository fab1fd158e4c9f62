"""Small silo tables for the heart contract, built column by column so a test can break exactly
one thing.

The base table has 40 rows, 28 train and 12 holdout (the contract needs >= 20 and >= 10), both
label classes, and a few missing values in the columns that allow them.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from fl_core.schema import DataContract
from validation import ValidationSummary
from validation.schema import expected_arrow_schema

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "heart"
EXAMPLE_CONFIG = EXAMPLE_DIR / "federation.yaml"
N_ROWS = 40
HOLDOUT_SLOTS = (2, 5, 8)  # row i is holdout when i % 10 is one of these: 12 of 40 rows

_SEX = ("Male", "Female")
_CP = ("typical angina", "atypical angina", "non-anginal", "asymptomatic")
_RESTECG = ("normal", "st-t abnormality", "lv hypertrophy")
_SLOPE = ("upsloping", "flat", "downsloping")
_THAL = ("normal", "fixed defect", "reversable defect")


def base_columns(n: int = N_ROWS) -> dict[str, list]:
    """Plain Python values for every contract column, all inside the heart contract."""
    return {
        "age": [29 + (7 * i) % 48 for i in range(n)],  # 29..76
        "sex": [_SEX[i % 2] for i in range(n)],
        "cp": [_CP[i % 4] for i in range(n)],
        "trestbps": [None if i % 10 == 9 else 104 + (13 * i) % 61 for i in range(n)],  # 10% missing, max 35%
        "chol": [None if i % 5 == 4 else 183 + (17 * i) % 151 for i in range(n)],  # 20% missing, max 100%
        "fbs": [None if i % 8 == 7 else i % 3 == 0 for i in range(n)],
        "restecg": [_RESTECG[i % 3] for i in range(n)],
        "thalch": [None if i % 20 == 19 else 101 + (11 * i) % 89 for i in range(n)],
        "exang": [i % 4 == 1 for i in range(n)],
        "oldpeak": [round((i % 13) * 0.35, 2) for i in range(n)],  # 0.0..4.2
        "slope": [None if i % 6 == 5 else _SLOPE[i % 3] for i in range(n)],
        "ca": [None if i % 7 == 6 else i % 4 for i in range(n)],
        "thal": [None if i % 9 == 8 else _THAL[i % 3] for i in range(n)],
        "disease": [(i // 2) % 2 for i in range(n)],  # 0, 0, 1, 1, ...: both classes in both splits
        "split": ["holdout" if i % 10 in HOLDOUT_SLOTS else "train" for i in range(n)],
    }


DROP = object()  # an override that removes the column


def build_table(contract: DataContract, n: int = N_ROWS, **overrides) -> pa.Table:
    """A silo table in the canonical Arrow schema, with columns replaced or dropped.

    An override is a `pa.Array` (taken as is, any type), a list (typed as the contract says) or
    `DROP`. Extra columns not in the contract are appended in the given order."""
    schema = expected_arrow_schema(contract)
    values = base_columns(n)
    arrays: dict[str, pa.Array] = {}
    for field in schema:
        override = overrides.pop(field.name, None)
        if override is DROP:
            continue
        if isinstance(override, pa.Array | pa.ChunkedArray):
            arrays[field.name] = override
        else:
            arrays[field.name] = pa.array(values[field.name] if override is None else override, type=field.type)
    for name, extra in overrides.items():
        arrays[name] = extra if isinstance(extra, pa.Array | pa.ChunkedArray) else pa.array(extra)
    return pa.table(arrays)


def only_failure(summary: ValidationSummary):
    """The one failed expectation of `summary` (fails the test if there are none or several)."""
    failures = summary.failures
    assert len(failures) == 1, f"expected exactly one failed expectation, got {[o.describe() for o in failures]}"
    return failures[0]
