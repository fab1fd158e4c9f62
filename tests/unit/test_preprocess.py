"""FeatureEncoder: a fixed, contract-only transform from raw columns to the model's input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fl_core.errors import DataError
from fl_core.preprocess import FeatureEncoder
from fl_core.schema import Feature

PROPERTY = settings(max_examples=50, deadline=None)


def _enc(*features):
    return FeatureEncoder(features)


# --- layout --------------------------------------------------------------------------------------


def test_output_names_follow_the_contract_order():
    enc = _enc(
        Feature(name="age", dtype="float", min=0.0, max=100.0),
        Feature(name="sex", dtype="string", categories=("f", "m", "x"), max_missing=0.1),
        Feature(name="smoker", dtype="bool"),
        Feature(name="chol", dtype="int", min=100, max=400, max_missing=0.5),
    )
    assert enc.output_names == ("age", "sex=f", "sex=m", "sex=x", "sex:missing", "smoker", "chol", "chol:missing")
    assert enc.n_outputs == 8
    x = enc.encode({"age": [1.0], "sex": ["m"], "smoker": [True], "chol": [250]})
    assert x.shape == (1, 8)
    assert x.dtype == np.float32


# --- numeric -------------------------------------------------------------------------------------


def test_numeric_range_maps_to_minus_one_one():
    enc = _enc(Feature(name="v", dtype="float", min=10.0, max=30.0))
    x = enc.encode({"v": np.array([10.0, 20.0, 30.0, 15.0])})
    np.testing.assert_array_equal(x[:, 0], np.array([-1.0, 0.0, 1.0, -0.5], dtype=np.float32))


def test_numeric_values_outside_the_range_are_clipped():
    enc = _enc(Feature(name="v", dtype="float", min=0.0, max=1.0))
    x = enc.encode({"v": np.array([-5.0, 7.0, -np.inf, np.inf])})
    np.testing.assert_array_equal(x[:, 0], np.array([-1.0, 1.0, -1.0, 1.0], dtype=np.float32))


@PROPERTY
@given(
    lo=st.floats(min_value=-1e4, max_value=1e4),
    width=st.floats(min_value=1e-2, max_value=1e4),
    values=hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(min_value=-1e5, max_value=1e5)),
)
def test_numeric_encoding_matches_the_formula_and_stays_in_range(lo, width, values):
    hi = lo + width
    enc = _enc(Feature(name="v", dtype="float", min=lo, max=hi))
    out = enc.encode({"v": values})[:, 0]
    expected = np.clip(2.0 * (values - lo) / (hi - lo) - 1.0, -1.0, 1.0)
    assert np.all(out >= -1.0) and np.all(out <= 1.0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    inside = (values >= lo) & (values <= hi)
    # Order is kept inside the range: the encoder is monotone.
    order = np.argsort(values[inside], kind="stable")
    assert np.all(np.diff(out[inside][order]) >= 0)


def test_integer_and_string_digits_encode_like_floats():
    enc = _enc(Feature(name="v", dtype="int", min=0, max=4))
    as_int = enc.encode({"v": np.array([0, 1, 2, 4], dtype=np.int64)})
    as_obj = enc.encode({"v": np.array([0, 1.0, "2", 4], dtype=object)})
    np.testing.assert_array_equal(as_int, np.array([[-1.0], [-0.5], [0.0], [1.0]], dtype=np.float32))
    np.testing.assert_array_equal(as_obj, as_int)


def test_non_numeric_value_in_a_numeric_column_is_a_data_error_naming_it():
    enc = _enc(Feature(name="chol", dtype="float", min=0.0, max=1.0))
    with pytest.raises(DataError, match=r"column 'chol': expected numbers"):
        enc.encode({"chol": np.array([0.5, "high"], dtype=object)})


# --- missing values ------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", [None, math.nan, pd.NA], ids=["None", "NaN", "pandas.NA"])
def test_missing_values_in_every_form_encode_as_zero_with_indicator(missing):
    enc = _enc(
        Feature(name="v", dtype="float", min=0.0, max=10.0, max_missing=0.2),
        Feature(name="c", dtype="string", categories=("a", "b"), max_missing=0.2),
        Feature(name="b", dtype="bool", max_missing=0.2),
    )
    cols = {
        "v": np.array([10.0, missing], dtype=object),
        "c": np.array(["b", missing], dtype=object),
        "b": np.array([True, missing], dtype=object),
    }
    x = enc.encode(cols)
    assert enc.output_names == ("v", "v:missing", "c=a", "c=b", "c:missing", "b", "b:missing")
    np.testing.assert_array_equal(x[0], [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(x[1], [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    assert np.all(np.isfinite(x))


def test_nan_in_a_float_column_is_missing():
    enc = _enc(Feature(name="v", dtype="float", min=-1.0, max=1.0, max_missing=0.5))
    x = enc.encode({"v": np.array([0.5, np.nan, -1.0])})
    np.testing.assert_array_equal(x, np.array([[0.5, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32))


def test_pandas_nullable_columns_are_accepted():
    enc = _enc(
        Feature(name="i", dtype="int", min=0, max=10, max_missing=0.5),
        Feature(name="s", dtype="string", categories=("a", "b"), max_missing=0.5),
        Feature(name="b", dtype="bool", max_missing=0.5),
    )
    frame = pd.DataFrame(
        {
            "i": pd.array([10, None], dtype="Int64"),
            "s": pd.array(["a", None], dtype="string"),
            "b": pd.array([False, None], dtype="boolean"),
        }
    )
    x = enc.encode({name: frame[name].to_numpy() for name in frame})
    np.testing.assert_array_equal(x[0], [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(x[1], [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0])


def test_no_missing_indicator_when_the_contract_allows_no_missing_values():
    enc = _enc(
        Feature(name="v", dtype="float", min=0.0, max=1.0),
        Feature(name="c", dtype="string", categories=("a",)),
        Feature(name="b", dtype="bool"),
    )
    assert not any(name.endswith(":missing") for name in enc.output_names)
    x = enc.encode({"v": [None], "c": [None], "b": [None]})
    assert x.shape == (1, 3)
    np.testing.assert_array_equal(x, np.zeros((1, 3), dtype=np.float32))


# --- categorical ---------------------------------------------------------------------------------


@PROPERTY
@given(
    categories=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=5, unique=True),
    data=st.data(),
)
def test_one_hot_has_a_single_one_at_the_category_and_unknowns_are_zero(categories, data):
    values = data.draw(st.lists(st.one_of(st.sampled_from(categories), st.text(max_size=5)), min_size=1, max_size=15))
    enc = _enc(Feature(name="c", dtype="string", categories=tuple(categories)))
    x = enc.encode({"c": np.array(values, dtype=object)})
    assert x.shape == (len(values), len(categories))
    for row, value in zip(x, values):
        if value in categories:
            expected = np.zeros(len(categories), dtype=np.float32)
            expected[categories.index(value)] = 1.0
            np.testing.assert_array_equal(row, expected)
        else:
            np.testing.assert_array_equal(row, np.zeros(len(categories), dtype=np.float32))


def test_unicode_string_arrays_and_lists_encode_alike():
    enc = _enc(Feature(name="c", dtype="string", categories=("x", "y")))
    from_u = enc.encode({"c": np.array(["y", "x", "z"])})
    from_list = enc.encode({"c": ["y", "x", "z"]})
    np.testing.assert_array_equal(from_u, np.array([[0, 1], [1, 0], [0, 0]], dtype=np.float32))
    np.testing.assert_array_equal(from_list, from_u)


# --- boolean -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "column",
    [
        np.array([True, False, True]),
        np.array([1, 0, 1], dtype=np.int64),
        np.array([1.0, 0.0, 2.0]),
        np.array([-1, 0, 7], dtype=np.int64),
        np.array([0.25, 0.0, -0.5]),
        np.array([True, False, True], dtype=object),
    ],
    ids=["bool", "int", "float", "object", "negative-int", "fractional"],
)
def test_bool_columns_encode_as_one_zero(column):
    enc = _enc(Feature(name="b", dtype="bool"))
    np.testing.assert_array_equal(enc.encode({"b": column})[:, 0], np.array([1.0, 0.0, 1.0], dtype=np.float32))


# --- input checks --------------------------------------------------------------------------------


def test_missing_input_column_is_a_data_error_listing_it():
    enc = _enc(Feature(name="a", dtype="bool"), Feature(name="b", dtype="bool"))
    with pytest.raises(DataError, match=r"missing input columns: \['b'\]"):
        enc.encode({"a": [True]})


def test_columns_of_different_lengths_are_a_data_error():
    enc = _enc(Feature(name="a", dtype="bool"), Feature(name="b", dtype="bool"))
    with pytest.raises(DataError, match=r"differ in length: \[1, 2\]"):
        enc.encode({"a": [True], "b": [True, False]})


def test_extra_columns_are_ignored_and_inputs_not_mutated():
    enc = _enc(Feature(name="v", dtype="float", min=0.0, max=1.0, max_missing=0.5))
    v = np.array([0.25, np.nan, 3.0])
    x = enc.encode({"v": v, "target": np.array([0, 1, 0]), "split": np.array(["train"] * 3)})
    assert x.shape == (3, 2)
    np.testing.assert_array_equal(v, np.array([0.25, np.nan, 3.0]))


def test_zero_rows_give_an_empty_matrix_of_the_right_width():
    enc = _enc(
        Feature(name="v", dtype="float", min=0.0, max=1.0), Feature(name="c", dtype="string", categories=("a", "b"))
    )
    x = enc.encode({"v": np.zeros(0), "c": np.array([], dtype=object)})
    assert x.shape == (0, 3)
    assert x.dtype == np.float32
