"""A silo's table on its own disk: reading it, and remembering validation verdicts by digest.

The validation cache lives in the silo's state folder and is keyed by the sha256 of the data file
and the contract hash, so a changed file or a changed contract is always validated again. The
digest stays on the silo's side: it is never logged or sent to the coordinator.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fl_core.errors import DataError
from fl_core.preprocess import FeatureEncoder
from fl_core.schema import DataContract
from validation.schema import decoded
from validation.summary import ValidationSummary


def read_table(path: Path, silo: str) -> pa.Table:
    if not path.exists():
        raise DataError(f"silo {silo}: data file {path} does not exist")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"silo {silo}: data file {path} is not a readable Parquet file ({str(exc).splitlines()[0]})") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class SiloData:
    """A silo's table encoded for the model: features by the contract, labels as 0/1; and, for
    group fairness metrics (`fl_core.fairness`), each holdout row's raw label in every categorical
    column of the contract (None where the value is missing: such a row belongs to no group and is
    left out of the group metrics). The labels stay on the silo: only group counts leave it."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_holdout: np.ndarray
    y_holdout: np.ndarray
    holdout_groups: Mapping[str, np.ndarray] = field(default_factory=dict)  # column -> label per holdout row


def encode_table(table: pa.Table, contract: DataContract) -> SiloData:
    """Encode a table that passed the contract (row order kept; the split column picks the rows).

    The holdout's raw labels are kept for every categorical column, not only the gate's sensitive
    one: the contract, not the gate, is what a silo's data is read with, and the holdout is small."""
    encoder = FeatureEncoder(contract.features)
    columns = {name: decoded(table.column(name)).to_numpy(zero_copy_only=False) for name in contract.columns}
    x = encoder.encode(columns)
    y = (columns[contract.label.column] == contract.label.positive).astype(np.int64)
    train = columns[contract.split_column] == "train"
    groups = {}
    for feature in contract.features:
        if feature.kind == "categorical":
            values = np.asarray(columns[feature.name], dtype=object)[~train]
            groups[feature.name] = np.array([None if _missing(v) else str(v) for v in values], dtype=object)
    return SiloData(x_train=x[train], y_train=y[train], x_holdout=x[~train], y_holdout=y[~train],
                    holdout_groups=groups)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ValidationCache:
    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, data_digest: str, contract_hash: str) -> Path:
        return self.folder / f"{data_digest[:32]}-{contract_hash[:16]}.json"

    def get(self, data_digest: str, contract_hash: str) -> ValidationSummary | None:
        path = self._path(data_digest, contract_hash)
        try:
            return ValidationSummary.from_dict(json.loads(path.read_text()))
        except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError):
            return None

    def put(self, data_digest: str, contract_hash: str, summary: ValidationSummary) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(data_digest, contract_hash)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(summary.to_json())
        os.replace(tmp, path)
