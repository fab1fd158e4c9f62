"""Server optimisers: each step against the formulas computed by hand, the state's round trip, and a
resumed sequence of steps equal to an uninterrupted one."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fl_core.aggregation import FedAvg
from fl_core.errors import AggregationError, StateError
from fl_core.server_opt import SERVER_OPTIMIZERS, ServerOptimizer, ServerOptimizerSpec, ServerState

X = np.array([1.0, -2.0, 0.5], dtype=np.float32)
D1 = np.array([0.2, -0.4, 0.0], dtype=np.float32)
D2 = np.array([-0.1, 0.3, 0.05], dtype=np.float32)


def run(kind: str, lr: float, deltas, **params) -> tuple[np.ndarray, ServerState]:
    optimizer = ServerOptimizer(spec=ServerOptimizerSpec(kind=kind, **params), lr=lr)
    x, state = X, ServerState()
    for d in deltas:
        x, state = optimizer.step(x, d, state)
    return x, state


def test_fedavg_is_the_plain_server_step():
    x, state = run("fedavg", 0.7, [D1])
    np.testing.assert_array_equal(x, FedAvg(server_lr=0.7).apply(X, D1))
    assert state.slots == {} and state.steps == 1


def test_fedavgm_two_steps_by_hand():
    # m1 = d1, x1 = x + η d1; m2 = β d1 + d2, x2 = x1 + η m2
    x, state = run("fedavgm", 0.5, [D1, D2], beta1=0.9)
    d1, d2 = D1.astype(float), D2.astype(float)
    expected = X + 0.5 * d1 + 0.5 * (0.9 * d1 + d2)
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    np.testing.assert_allclose(state.slots["m"], 0.9 * d1 + d2, rtol=1e-6)


@pytest.mark.parametrize("kind", ["fedadagrad", "fedadam", "fedyogi"])
def test_adaptive_optimisers_two_steps_by_hand(kind):
    b1, b2, tau, lr = 0.9, 0.99, 1e-3, 0.1
    x, state = run(kind, lr, [D1, D2], beta1=b1, beta2=b2, tau=tau)
    m = np.zeros(3)
    v = np.full(3, tau * tau)
    expected = X.astype(float)
    for d in (D1.astype(float), D2.astype(float)):
        m = b1 * m + (1 - b1) * d
        if kind == "fedadagrad":
            v = v + d * d
        elif kind == "fedadam":
            v = b2 * v + (1 - b2) * d * d
        else:
            v = v - (1 - b2) * d * d * np.sign(v - d * d)
        expected = expected + lr * m / (np.sqrt(v) + tau)
    np.testing.assert_allclose(x, expected, rtol=1e-5)
    np.testing.assert_allclose(state.slots["m"], m, rtol=1e-6)
    np.testing.assert_allclose(state.slots["v"], v, rtol=1e-5)
    assert state.steps == 2


def test_adam_first_step_moves_each_coordinate_by_about_the_learning_rate():
    """With v starting at τ², Adam's first step is η (1-β₁)Δ / (√((1-β₂)Δ² + τ²) + τ): about η·sign(Δ)
    for |Δ| ≫ τ, whatever Δ's scale: the adaptivity the optimisers are for."""
    big = np.array([10.0, -10.0, 1e-6], dtype=np.float32)
    x, _ = run("fedadam", 0.01, [big], beta1=0.9, beta2=0.99)
    moved = x - X
    assert abs(moved[0] - 0.01) < 1e-3 and abs(moved[1] + 0.01) < 1e-3
    assert abs(moved[2]) < 1e-5


@settings(max_examples=50, deadline=None)
@given(kind=st.sampled_from(SERVER_OPTIMIZERS), split=st.integers(0, 4),
       deltas=st.lists(arrays(np.float32, 3, elements=st.floats(-5, 5, width=32)), min_size=1, max_size=5))
def test_a_resumed_sequence_of_steps_equals_an_uninterrupted_one(kind, split, deltas):
    """What a resumed coordinator does: the state written after round k (flattened, as the exchange
    keeps it) and read back continues exactly as if the job had not stopped."""
    optimizer = ServerOptimizer(spec=ServerOptimizerSpec(kind=kind), lr=0.3)
    whole, state = X, ServerState()
    for d in deltas:
        whole, state = optimizer.step(whole, d, state)
    x, state = X, ServerState()
    for i, d in enumerate(deltas):
        if i == split:
            vector, meta = state.flat()
            state = ServerState.from_flat(vector, meta, len(X))
        x, state = optimizer.step(x, d, state)
    np.testing.assert_array_equal(x, whole)


@settings(max_examples=50, deadline=None)
@given(names=st.lists(st.sampled_from(["m", "v", "control"]), unique=True), steps=st.integers(0, 10_000),
       accepted=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True), st.integers(1, 999)),
       length=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_server_state_round_trips_through_its_flat_form(names, steps, accepted, length, seed):
    rng = np.random.default_rng(seed)
    state = ServerState(steps=steps, slots={n: rng.normal(size=length).astype(np.float32) for n in names},
                        accepted=accepted)
    back = ServerState.from_flat(*state.flat(), length)
    assert back.steps == steps and dict(back.accepted) == accepted
    assert set(back.slots) == set(names)
    for n in names:
        np.testing.assert_array_equal(back.slots[n], state.slots[n])


def test_a_state_that_does_not_fit_the_model_is_refused():
    vector, meta = ServerState(steps=1, slots={"m": np.ones(4, np.float32)}).flat()
    with pytest.raises(StateError, match="4 values"):
        ServerState.from_flat(vector, meta, 3)
    with pytest.raises(StateError, match="unknown slots"):
        ServerState(slots={"w": np.ones(3)})
    optimizer = ServerOptimizer(spec=ServerOptimizerSpec(kind="fedadam"), lr=0.1)
    with pytest.raises(StateError, match="slot m"):
        optimizer.step(X, D1, ServerState(slots={"m": np.ones(2, np.float32)}))


@pytest.mark.parametrize("params, message", [
    ({"kind": "sgd"}, "kind must be one of"), ({"beta1": 1.0}, "beta1"), ({"beta2": -0.1}, "beta2"),
    ({"tau": 0.0}, "tau"), ({"tau": math.nan}, "tau"),
])
def test_bad_settings_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        ServerOptimizerSpec(**params)


def test_bad_updates_and_diverging_steps_are_refused():
    optimizer = ServerOptimizer(spec=ServerOptimizerSpec(kind="fedavgm"), lr=1e38)
    with pytest.raises(AggregationError, match="shape"):
        optimizer.step(X, D1[:2], ServerState())
    with pytest.raises(AggregationError, match="NaN"):
        optimizer.step(X, np.array([np.nan, 0, 0], np.float32), ServerState())
    with pytest.raises(AggregationError, match="non-finite"):
        optimizer.step(X, np.array([1e3, 0, 0], np.float32), ServerState())
