"""The data contract: every bad value is refused at construction with a message naming it."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.schema import DataContract, Feature, Label

PROPERTY = settings(max_examples=40, deadline=None)


def _numeric(name="age", **kw):
    return Feature(name=name, dtype=kw.pop("dtype", "float"), min=kw.pop("min", 0.0), max=kw.pop("max", 100.0), **kw)


def _contract(**kw):
    defaults = dict(
        features=(
            _numeric("age"),
            Feature(name="sex", dtype="string", categories=("f", "m")),
            Feature(name="smoker", dtype="bool"),
        ),
        label=Label(column="target"),
    )
    return DataContract(**{**defaults, **kw})


# --- Feature -----------------------------------------------------------------------------------


def test_feature_kinds():
    assert _numeric(dtype="int").kind == "numeric"
    assert _numeric(dtype="float").kind == "numeric"
    assert Feature(name="c", dtype="string", categories=("x",)).kind == "categorical"
    assert Feature(name="b", dtype="bool").kind == "boolean"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="1abc", dtype="bool"), r"feature name '1abc' is not a plain identifier"),
        (dict(name="a-b", dtype="bool"), r"'a-b'"),
        (dict(name="", dtype="bool"), r"feature name '' "),
        (dict(name="has space", dtype="bool"), r"'has space'"),
        (dict(name="f", dtype="bool", max_missing=-0.1), r"'f': max_missing must be in \[0, 1\], got -0.1"),
        (dict(name="f", dtype="bool", max_missing=1.5), r"max_missing.*1.5"),
        (dict(name="f", dtype="bool", max_missing=math.nan), r"max_missing.*nan"),
        (dict(name="f", dtype="float", max=1.0), r"'f': numeric features need both min and max"),
        (dict(name="f", dtype="int", min=0.0), r"need both min and max"),
        (dict(name="f", dtype="float", min=1.0, max=1.0), r"min < max, got min=1.0, max=1.0"),
        (dict(name="f", dtype="float", min=2.0, max=1.0), r"min=2.0, max=1.0"),
        (dict(name="f", dtype="float", min=-math.inf, max=1.0), r"finite min < max.*min=-inf"),
        (dict(name="f", dtype="float", min=0.0, max=math.nan), r"finite min < max.*max=nan"),
        (dict(name="f", dtype="int", min=0.0, max=1.0, categories=("a",)), r"'f': categories only apply to string"),
        (dict(name="f", dtype="string"), r"'f': string features need their allowed categories"),
        (dict(name="f", dtype="string", categories=("a", "b", "a")), r"'f': categories repeat a value"),
        (dict(name="f", dtype="string", categories=("a",), min=0.0), r"'f': min/max only apply to numeric"),
        (dict(name="f", dtype="string", categories=("a",), max=1.0), r"min/max only apply to numeric"),
        (dict(name="f", dtype="bool", categories=("a",)), r"'f': bool features take no min, max or categories"),
        (dict(name="f", dtype="bool", min=0.0), r"bool features take no min"),
        (dict(name="f", dtype="bool", max=1.0), r"bool features take no min"),
    ],
)
def test_feature_rejects_bad_values_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Feature(**kwargs)


@pytest.mark.parametrize("max_missing", [0.0, 0.25, 1.0])
def test_feature_accepts_max_missing_bounds(max_missing):
    assert Feature(name="b", dtype="bool", max_missing=max_missing).max_missing == max_missing


def test_feature_is_frozen_and_keyword_only():
    f = Feature(name="b", dtype="bool")
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.name = "c"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Feature("b", "bool")  # type: ignore[misc]


# --- Label -------------------------------------------------------------------------------------


def test_label_positive_is_the_second_class():
    assert Label(column="y").positive == 1
    assert Label(column="y", classes=(1, 2)).positive == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(column="9y"), r"label column '9y' is not a plain identifier"),
        (dict(column="y.z"), r"label column 'y.z'"),
        (dict(column="y", classes=(1, 1)), r"label classes must differ, got \[1, 1\]"),
    ],
)
def test_label_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Label(**kwargs)


# --- DataContract ------------------------------------------------------------------------------


def test_contract_columns_and_feature_lookup():
    c = _contract()
    assert c.columns == ("age", "sex", "smoker", "target", "split")
    assert c.feature("sex").categories == ("f", "m")
    with pytest.raises(KeyError):
        c.feature("nope")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(features=()), r"at least one feature"),
        (dict(features=(_numeric("a"), _numeric("b"), _numeric("a"))), r"features repeat a name: \['a'\]"),
        (dict(label=Label(column="age")), r"label/split columns must differ.*\['age'\]"),
        (dict(split_column="age"), r"label/split columns must differ.*\['age'\]"),
        (dict(split_column="target"), r"label/split columns must differ"),
        (dict(split_column="bad-name"), r"split column 'bad-name' is not a plain identifier"),
        (dict(min_train_rows=0), r"min_train_rows and min_holdout_rows must be >= 1, got 0, 1"),
        (dict(min_holdout_rows=0), r"min_train_rows and min_holdout_rows must be >= 1, got 1, 0"),
    ],
)
def test_contract_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _contract(**kwargs)


def test_contract_json_is_canonical():
    text = _contract().to_json()
    assert " " not in text and "\n" not in text
    raw = json.loads(text)
    assert list(raw) == sorted(raw)
    assert json.dumps(raw, sort_keys=True, separators=(",", ":")) == text


def test_contract_hash_changes_with_any_field():
    base = _contract()
    assert base.contract_hash() == _contract().contract_hash()
    variants = [
        _contract(split_column="part"),
        _contract(min_train_rows=2),
        _contract(min_holdout_rows=2),
        _contract(label=Label(column="target", classes=(1, 0))),
        _contract(features=(_numeric("age", max=99.0), *base.features[1:])),
        _contract(features=(*base.features[:2], Feature(name="smoker", dtype="bool", max_missing=0.1))),
    ]
    hashes = {v.contract_hash() for v in variants}
    assert base.contract_hash() not in hashes
    assert len(hashes) == len(variants)
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in hashes)


identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


@st.composite
def features(draw, name):
    dtype = draw(st.sampled_from(["int", "float", "string", "bool"]))
    max_missing = draw(st.floats(min_value=0.0, max_value=1.0))
    if dtype in ("int", "float"):
        lo = draw(st.floats(min_value=-1e6, max_value=1e6))
        width = draw(st.floats(min_value=1e-3, max_value=1e6))
        return Feature(name=name, dtype=dtype, min=lo, max=lo + width, max_missing=max_missing)
    if dtype == "string":
        cats = draw(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4, unique=True))
        return Feature(name=name, dtype="string", categories=tuple(cats), max_missing=max_missing)
    return Feature(name=name, dtype="bool", max_missing=max_missing)


@st.composite
def contracts(draw):
    names = draw(st.lists(identifiers, min_size=3, max_size=6, unique=True))
    label, split, *feature_names = names
    return DataContract(
        features=tuple(draw(features(n)) for n in feature_names),
        label=Label(
            column=label, classes=tuple(draw(st.lists(st.integers(-5, 5), min_size=2, max_size=2, unique=True)))
        ),
        split_column=split,
        min_train_rows=draw(st.integers(1, 100)),
        min_holdout_rows=draw(st.integers(1, 100)),
    )


@PROPERTY
@given(contract=contracts())
def test_contract_json_round_trip(contract):
    again = DataContract.from_json(contract.to_json())
    assert again == contract
    assert again.contract_hash() == contract.contract_hash()
    assert isinstance(again.features[0].categories, tuple)
    assert isinstance(again.label.classes, tuple)
