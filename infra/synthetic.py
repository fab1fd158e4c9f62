"""Write a synthetic federation to disk: one Parquet file per silo and its federation config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from fl_core.partition import stratified_holdout
from fl_core.seeding import derive_seed, numpy_rng
from fl_core.synthetic import synthetic_silos


def write_synthetic_federation(
    folder: Path,
    n_silos: int,
    rows: int = 200,
    n_features: int = 8,
    seed: int = 0,
    federation: str = "synth",
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder/data/<silo>.parquet`` and ``folder/federation.yaml``; returns the config path.

    `overrides` replaces top-level config sections (e.g. ``{"training": {...}, "gate": {...}}``)."""
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    bound = 5.0
    silos = synthetic_silos(n_silos, rows, n_features, seed, bound=bound)
    for silo_id, silo in silos.items():
        holdout = stratified_holdout(silo.y, 0.3, numpy_rng(derive_seed(seed, "synthetic-split", silo_id)))
        columns = {f"f{j}": pa.array(silo.x[:, j]) for j in range(n_features)}
        columns["label"] = pa.array(silo.y)
        columns["split"] = pa.array(np.where(holdout, "holdout", "train"))
        pq.write_table(pa.table(columns), folder / "data" / f"{silo_id}.parquet")
    config: dict[str, Any] = {
        "federation": federation,
        "seed": seed,
        "silos": [{"id": s, "data": f"data/{s}.parquet"} for s in silos],
        "contract": {
            "label": {"column": "label", "classes": [0, 1]},
            "split_column": "split",
            "min_train_rows": 5,
            "min_holdout_rows": 2,
            "features": [{"name": f"f{j}", "dtype": "float", "min": -bound, "max": bound} for j in range(n_features)],
        },
        "model": {"kind": "logistic"},
        "training": {"rounds": 3, "local_epochs": 1, "optimizer": "sgd", "lr": 0.1, "batch_size": 32},
        "aggregation": {"rule": "fedavg", "min_silos": max(1, min(2, n_silos))},
        "gate": {"metric": "accuracy", "min_worst": 0.5, "max_gap": 0.5, "max_regression": 0.2},
    }
    config.update(overrides or {})
    path = folder / "federation.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
