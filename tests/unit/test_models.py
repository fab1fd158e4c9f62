"""ModelSpec validation and deterministic model construction."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import model_specs as specs
from torch import nn

from fl_core.models import ModelSpec, build_model
from fl_core.seeding import derive_seed

PROPERTY = settings(max_examples=30, deadline=None)

seeds = st.integers(0, 2**63 - 1)
# torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so "different seeds" means
# different in those bits; seeds from `derive_seed` are uniform hashes, so this holds for them.
seeds32 = st.integers(0, 2**32 - 1)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="logistic", hidden=(4,)), r"logistic model has no hidden layers, got hidden=\[4\]"),
        (dict(kind="mlp"), r"mlp needs at least one hidden layer size.*hidden"),
        (dict(kind="mlp", hidden=(4, 0)), r"hidden layer sizes must be >= 1, got \[4, 0\]"),
        (dict(kind="mlp", hidden=(-3,)), r"hidden layer sizes must be >= 1, got \[-3\]"),
    ],
)
def test_model_spec_rejects_bad_values_naming_hidden(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelSpec(**kwargs)


@pytest.mark.parametrize("n_inputs", [0, -1])
def test_build_model_needs_an_input(n_inputs):
    with pytest.raises(ValueError, match=rf"n_inputs={n_inputs}"):
        build_model(ModelSpec(), n_inputs, seed=0)


def test_logistic_is_one_linear_layer():
    model = build_model(ModelSpec(), 5, seed=1)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert len(list(model)) == 1 and len(linears) == 1
    assert (linears[0].in_features, linears[0].out_features) == (5, 1)


@pytest.mark.parametrize("activation, cls", [("relu", nn.ReLU), ("tanh", nn.Tanh)])
def test_mlp_layers_and_activation(activation, cls):
    model = build_model(ModelSpec(kind="mlp", hidden=(4, 3), activation=activation), 6, seed=1)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Linear, cls, nn.Linear, cls, nn.Linear]
    shapes = [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)]
    assert shapes == [(6, 4), (4, 3), (3, 1)]
    assert model(torch.zeros(7, 6)).shape == (7, 1)


@PROPERTY
@given(spec=specs, n_inputs=st.integers(1, 8), seed=seeds)
def test_same_seed_gives_identical_weights(spec, n_inputs, seed):
    a, b = build_model(spec, n_inputs, seed), build_model(spec, n_inputs, seed)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@PROPERTY
@given(spec=specs, n_inputs=st.integers(1, 8), s1=seeds32, s2=seeds32)
def test_different_seeds_give_different_weights(spec, n_inputs, s1, s2):
    assume(s1 != s2)
    a, b = build_model(spec, n_inputs, s1), build_model(spec, n_inputs, s2)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@PROPERTY
@given(spec=specs, n_inputs=st.integers(1, 8), seed=seeds)
def test_weights_lie_within_the_fan_in_bound(spec, n_inputs, seed):
    for layer in build_model(spec, n_inputs, seed):
        if isinstance(layer, nn.Linear):
            bound = 1.0 / math.sqrt(layer.in_features)
            assert float(layer.weight.detach().abs().max()) <= bound
            assert float(layer.bias.detach().abs().max()) <= bound


def test_initial_weights_do_not_depend_on_the_global_torch_rng():
    torch.manual_seed(1)
    a = _params(build_model(ModelSpec(kind="mlp", hidden=(3,)), 4, seed=9))
    torch.manual_seed(2)
    b = _params(build_model(ModelSpec(kind="mlp", hidden=(3,)), 4, seed=9))
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_weights_are_not_degenerate():
    # A generator bug that fills every weight with one value would still be "deterministic".
    w = build_model(ModelSpec(), 50, seed=3)[0].weight.detach()
    assert torch.unique(w).numel() == 50


def test_derived_seeds_for_different_paths_give_different_weights():
    vectors = {
        label: torch.cat(
            [p.detach().reshape(-1) for p in build_model(ModelSpec(), 4, derive_seed(7, "init", label)).parameters()]
        )
        for label in ["a", "b", "c", 0, 1]
    }
    values = list(vectors.values())
    assert all(not torch.equal(values[i], values[j]) for i in range(len(values)) for j in range(i + 1, len(values)))
