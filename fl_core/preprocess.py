"""Turn raw records into the model's input matrix, using only the data contract.

Federated preprocessing must not depend on any one silo's statistics, so every transform is
fixed by the contract:

- numeric: ``2 (x - min) / (max - min) - 1``, i.e. the contract's range maps to [-1, 1]; values
  outside the range are clipped at scoring time (training data was validated against it);
- categorical: one-hot over the contract's categories; an unknown category is all zeros;
- boolean: 1.0 / 0.0;
- every feature whose contract allows missing values gets a missing indicator, and a missing
  value encodes as 0 in its own slots.

The same encoder runs in the silos (training, evaluation) and inside the registered model, so a
model version scores raw records exactly as it was trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fl_core.errors import DataError
from fl_core.schema import Feature


def _is_missing(value: object) -> bool:
    # None from Arrow/object columns, NaN from float columns, pandas.NA from nullable dtypes.
    if value is None or type(value).__name__ == "NAType":
        return True
    return isinstance(value, (float, np.floating)) and value != value


def _missing_mask(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind in "iub":
        return np.zeros(values.shape, dtype=bool)
    return np.fromiter((_is_missing(v) for v in values), dtype=bool, count=len(values))


def _as_float(values: np.ndarray, missing: np.ndarray, where: str) -> np.ndarray:
    if values.dtype.kind in "fiub":
        return values.astype(np.float64)
    out = np.zeros(len(values), dtype=np.float64)
    try:
        for i in np.flatnonzero(~missing):
            out[i] = float(values[i])
    except (TypeError, ValueError):
        raise DataError(f"column {where!r}: expected numbers, found a non-numeric value") from None
    return out


class FeatureEncoder:
    """Encodes columns (name -> 1-D array) into a float32 matrix laid out by the contract."""

    def __init__(self, features: Sequence[Feature]):
        self.features = tuple(features)
        names: list[str] = []
        for f in self.features:
            if f.kind == "categorical":
                names.extend(f"{f.name}={c}" for c in f.categories)
            else:
                names.append(f.name)
            if f.max_missing > 0:
                names.append(f"{f.name}:missing")
        self.output_names = tuple(names)

    @property
    def n_outputs(self) -> int:
        return len(self.output_names)

    def encode(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        absent = [f.name for f in self.features if f.name not in columns]
        if absent:
            raise DataError(f"missing input columns: {absent}")
        lengths = {len(columns[f.name]) for f in self.features}
        if len(lengths) != 1:
            raise DataError(f"input columns differ in length: {sorted(lengths)}")
        n = lengths.pop()
        blocks: list[np.ndarray] = []
        for f in self.features:
            values = np.asarray(columns[f.name])
            missing = _missing_mask(values)
            if f.kind == "numeric":
                x = _as_float(values, missing, f.name)
                lo, hi = float(f.min), float(f.max)
                scaled = np.clip(2.0 * (x - lo) / (hi - lo) - 1.0, -1.0, 1.0)
                scaled[missing] = 0.0
                blocks.append(scaled[:, None])
            elif f.kind == "boolean":
                x = _as_float(values, missing, f.name)
                x[missing] = 0.0
                blocks.append((x != 0).astype(np.float64)[:, None])
            else:
                onehot = np.zeros((n, len(f.categories)), dtype=np.float64)
                index = {c: j for j, c in enumerate(f.categories)}
                for i in np.flatnonzero(~missing):
                    j = index.get(values[i])
                    if j is not None:
                        onehot[i, j] = 1.0
                blocks.append(onehot)
            if f.max_missing > 0:
                blocks.append(missing.astype(np.float64)[:, None])
        if not blocks:
            return np.zeros((n, 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)
