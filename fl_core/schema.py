"""The federation's data contract: which columns a silo's table has, their types, ranges,
categories and how much of each may be missing.

The contract is the one description of the data every party agrees on. The validation layer turns
it into an Arrow schema check and a Great Expectations suite; the feature encoder turns it into the
model's input layout. It never holds data, only its description.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Literal

Dtype = Literal["int", "float", "string", "bool"]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Feature:
    """One input column.

    `dtype` decides how the column is encoded: ``int``/``float`` are numeric and need a range
    (``min``/``max``); ``string`` is categorical and needs its allowed ``categories``; ``bool`` is
    a flag. ``max_missing`` is the largest fraction of missing values a silo may have.
    """

    __pydantic_config__ = {"extra": "forbid"}

    name: str
    dtype: Dtype
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] = ()
    max_missing: float = 0.0

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"feature name {self.name!r} is not a plain identifier")
        if not 0.0 <= self.max_missing <= 1.0:
            raise ValueError(f"feature {self.name!r}: max_missing must be in [0, 1], got {self.max_missing!r}")
        if self.dtype in ("int", "float"):
            if self.min is None or self.max is None:
                raise ValueError(f"feature {self.name!r}: numeric features need both min and max")
            if not (math.isfinite(self.min) and math.isfinite(self.max) and self.min < self.max):
                raise ValueError(f"feature {self.name!r}: need finite min < max, got min={self.min!r}, max={self.max!r}")
            if self.categories:
                raise ValueError(f"feature {self.name!r}: categories only apply to string features")
        elif self.dtype == "string":
            if not self.categories:
                raise ValueError(f"feature {self.name!r}: string features need their allowed categories")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"feature {self.name!r}: categories repeat a value")
            if self.min is not None or self.max is not None:
                raise ValueError(f"feature {self.name!r}: min/max only apply to numeric features")
        else:  # bool
            if self.categories or self.min is not None or self.max is not None:
                raise ValueError(f"feature {self.name!r}: bool features take no min, max or categories")

    @property
    def kind(self) -> Literal["numeric", "categorical", "boolean"]:
        if self.dtype in ("int", "float"):
            return "numeric"
        return "categorical" if self.dtype == "string" else "boolean"


@dataclass(frozen=True, slots=True, kw_only=True)
class Label:
    """The binary target: an integer column whose values are ``classes``; ``classes[1]`` is positive."""

    __pydantic_config__ = {"extra": "forbid"}

    column: str
    classes: tuple[int, int] = (0, 1)

    def __post_init__(self) -> None:
        if not _NAME.match(self.column):
            raise ValueError(f"label column {self.column!r} is not a plain identifier")
        if self.classes[0] == self.classes[1]:
            raise ValueError(f"label classes must differ, got {list(self.classes)!r}")

    @property
    def positive(self) -> int:
        return self.classes[1]


SPLITS = ("train", "holdout")


@dataclass(frozen=True, slots=True, kw_only=True)
class DataContract:
    """What every silo's table must look like.

    ``split_column`` assigns each row to ``train`` or ``holdout`` (the holdout is what federated
    evaluation scores); ``min_train_rows`` and ``min_holdout_rows`` guard against silos too small
    to contribute.
    """

    __pydantic_config__ = {"extra": "forbid"}

    features: tuple[Feature, ...]
    label: Label
    split_column: str = "split"
    min_train_rows: int = 1
    min_holdout_rows: int = 1

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("the contract needs at least one feature")
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"features repeat a name: {duplicates}")
        reserved = {self.label.column, self.split_column}
        clash = sorted(reserved.intersection(names))
        if clash or self.label.column == self.split_column:
            raise ValueError(f"label/split columns must differ from each other and from features: {clash or [self.split_column]}")
        if not _NAME.match(self.split_column):
            raise ValueError(f"split column {self.split_column!r} is not a plain identifier")
        if self.min_train_rows < 1 or self.min_holdout_rows < 1:
            raise ValueError(
                f"min_train_rows and min_holdout_rows must be >= 1, got {self.min_train_rows}, {self.min_holdout_rows}"
            )

    @property
    def columns(self) -> tuple[str, ...]:
        return (*(f.name for f in self.features), self.label.column, self.split_column)

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace): the input of `contract_hash`."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DataContract:
        raw = json.loads(text)
        return cls(
            features=tuple(Feature(**{**f, "categories": tuple(f["categories"])}) for f in raw["features"]),
            label=Label(column=raw["label"]["column"], classes=tuple(raw["label"]["classes"])),
            split_column=raw["split_column"],
            min_train_rows=raw["min_train_rows"],
            min_holdout_rows=raw["min_holdout_rows"],
        )

    def contract_hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()
