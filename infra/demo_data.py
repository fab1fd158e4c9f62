"""Build the example federation's silo tables from the UCI Heart Disease CSV.

One Parquet file per hospital, with the contract's columns, a binary label and a stratified,
seeded train/holdout split. The source file ships in ``examples/heart/`` with its attribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fl_core.errors import ConfigError, DataError
from fl_core.partition import stratified_holdout
from fl_core.seeding import derive_seed, numpy_rng
from infra.config import FederationConfig
from validation.schema import expected_arrow_schema

SOURCE_FILE = "heart_disease_uci.csv"
HOSPITALS = {"Cleveland": "cleveland", "Hungary": "hungary", "Switzerland": "switzerland", "VA Long Beach": "va_long_beach"}
MISSING_CODES = {"chol": 0, "trestbps": 0}  # zero codes a measurement that was not taken
FIRST_HUNGARIAN_ID = 304
HOLDOUT_FRACTION = 0.3


@dataclass(frozen=True, slots=True)
class SiloTableReport:
    silo: str
    path: Path
    rows: int
    train: int
    holdout: int
    positive_fraction: float


def _read_source(path: Path):
    import pandas as pd

    if not path.exists():
        raise DataError(f"{path}: the example's source CSV is missing")
    frame = pd.read_csv(path)
    frame.loc[frame["id"] == FIRST_HUNGARIAN_ID, "dataset"] = "Hungary"
    for column, code in MISSING_CODES.items():
        frame.loc[frame[column] == code, column] = np.nan
    frame["disease"] = (frame["num"] > 0).astype("int64")
    return frame


def _silo_table(part, config: FederationConfig, rng: np.random.Generator) -> pa.Table:
    import pandas as pd

    contract = config.contract
    out = pd.DataFrame(index=part.index)
    for feature in contract.features:
        values = part[feature.name]
        if feature.dtype == "int":
            out[feature.name] = values.round().astype("Int64")
        elif feature.dtype == "float":
            out[feature.name] = values.astype("float64")
        elif feature.dtype == "bool":
            out[feature.name] = values.map({True: True, False: False, "TRUE": True, "FALSE": False}).astype("boolean")
        else:
            out[feature.name] = values.astype("string")
    out[contract.label.column] = part["disease"].astype("int64")
    holdout = stratified_holdout(part["disease"].to_numpy(), HOLDOUT_FRACTION, rng)
    out[contract.split_column] = np.where(holdout, "holdout", "train")
    return pa.Table.from_pandas(out.reset_index(drop=True), schema=expected_arrow_schema(contract), preserve_index=False)


def write_heart_silos(config: FederationConfig) -> list[SiloTableReport]:
    """Write each hospital's Parquet file where the config says; returns what was written."""
    if config.source is None:
        raise ConfigError("demo-data needs a config loaded from a file (its folder holds the source CSV)")
    unknown = sorted(set(config.silo_ids) - set(HOSPITALS.values()))
    if unknown:
        raise ConfigError(f"demo-data builds the heart example; silos {unknown} are not among {sorted(HOSPITALS.values())}")
    frame = _read_source(config.source.parent / SOURCE_FILE)
    reports = []
    for hospital, silo in HOSPITALS.items():
        if silo not in config.silo_ids:
            continue
        part = frame[frame["dataset"] == hospital]
        table = _silo_table(part, config, numpy_rng(derive_seed(config.seed, "demo-split", silo)))
        path = config.silo_data_path(silo)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        split = table.column(config.contract.split_column).to_numpy(zero_copy_only=False)
        reports.append(
            SiloTableReport(
                silo=silo,
                path=path,
                rows=table.num_rows,
                train=int(np.sum(split == "train")),
                holdout=int(np.sum(split == "holdout")),
                positive_fraction=float(part["disease"].mean()),
            )
        )
    return reports
