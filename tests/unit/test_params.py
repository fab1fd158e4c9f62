"""Flat parameter vectors: the wire format of every update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from strategies import model_specs as specs

from fl_core.models import ModelSpec, build_model
from fl_core.params import count, flatten, layout, load_flat_inplace

PROPERTY = settings(max_examples=40, deadline=None)



def test_layout_and_count_of_an_mlp():
    model = build_model(ModelSpec(kind="mlp", hidden=(3,)), 4, seed=0)
    assert layout(model) == (("0.weight", (3, 4)), ("0.bias", (3,)), ("2.weight", (1, 3)), ("2.bias", (1,)))
    assert count(model) == 3 * 4 + 3 + 3 + 1


def test_flatten_order_is_named_parameters_order():
    model = build_model(ModelSpec(kind="mlp", hidden=(2,)), 3, seed=0)
    v = flatten(model)
    expected = np.concatenate([p.detach().numpy().reshape(-1) for _, p in model.named_parameters()])
    np.testing.assert_array_equal(v, expected)
    assert v[0] == model[0].weight[0, 0].item()
    assert v[6] == model[0].bias[0].item()


def test_flatten_returns_a_fresh_float32_copy():
    model = build_model(ModelSpec(), 3, seed=0)
    v = flatten(model)
    assert v.dtype == np.float32 and v.shape == (count(model),)
    before = model[0].weight.detach().clone()
    v[:] = 123.0
    assert torch.equal(model[0].weight.detach(), before)
    assert flatten(model) is not flatten(model)


@PROPERTY
@given(spec=specs, n_inputs=st.integers(1, 8), s1=st.integers(0, 2**32), s2=st.integers(0, 2**32))
def test_flatten_then_load_round_trips_between_models(spec, n_inputs, s1, s2):
    source, target = build_model(spec, n_inputs, s1), build_model(spec, n_inputs, s2)
    vector = flatten(source)
    assert load_flat_inplace(target, vector) is None
    np.testing.assert_array_equal(flatten(target), vector)
    for p, q in zip(source.parameters(), target.parameters()):
        assert torch.equal(p, q)
    x = torch.linspace(-1, 1, 3 * n_inputs).reshape(3, n_inputs)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


@PROPERTY
@given(spec=specs, n_inputs=st.integers(1, 8), data=st.data())
def test_load_then_flatten_returns_the_vector(spec, n_inputs, data):
    model = build_model(spec, n_inputs, 0)
    vector = data.draw(
        hnp.arrays(np.float32, count(model), elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=False))
    )
    load_flat_inplace(model, vector)
    np.testing.assert_array_equal(flatten(model), vector)


def test_float64_vectors_are_loaded_as_float32():
    model = build_model(ModelSpec(), 2, seed=0)
    load_flat_inplace(model, np.array([0.1, 0.2, 0.3], dtype=np.float64))
    np.testing.assert_array_equal(flatten(model), np.array([0.1, 0.2, 0.3], dtype=np.float32))


@pytest.mark.parametrize(
    "vector, match",
    [
        (np.zeros(2, dtype=np.float32), r"shape \(2,\), the model needs \(3,\)"),
        (np.zeros(4, dtype=np.float32), r"shape \(4,\)"),
        (np.zeros((1, 3), dtype=np.float32), r"shape \(1, 3\)"),
        (np.array([0.0, np.nan, 0.0], dtype=np.float32), r"NaN or infinite"),
        (np.array([0.0, 0.0, np.inf], dtype=np.float32), r"NaN or infinite"),
    ],
)
def test_bad_vectors_are_refused_and_the_model_is_untouched(vector, match):
    model = build_model(ModelSpec(), 2, seed=0)
    before = flatten(model)
    with pytest.raises(ValueError, match=match):
        load_flat_inplace(model, vector)
    np.testing.assert_array_equal(flatten(model), before)
