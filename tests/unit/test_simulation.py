"""In-process FedAvg: deterministic, resumable, and for one silo the same as local training."""

from __future__ import annotations

import numpy as np
import pytest

from fl_core import simulation
from fl_core.aggregation import FedAvg
from fl_core.models import ModelSpec, build_model
from fl_core.params import flatten, load_flat_inplace
from fl_core.seeding import derive_seed
from fl_core.simulation import SiloArrays, fedavg_rounds, initial_vector
from fl_core.training import TrainSpec, train_local

MLP = ModelSpec(kind="mlp", hidden=(4,), activation="tanh")
SPEC = TrainSpec(batch_size=8, lr=0.1)


@pytest.fixture
def silos(binary_data):
    out = {}
    for i, (name, n) in enumerate([("north", 24), ("east", 40), ("west", 13)]):
        x, y = binary_data(n, 3, seed=10 + i)
        out[name] = SiloArrays(x_train=x, y_train=y)
    return out


def test_initial_vector_is_the_init_seed_model():
    v = initial_vector(MLP, 3, root_seed=5)
    np.testing.assert_array_equal(v, flatten(build_model(MLP, 3, seed=derive_seed(5, "init"))))
    assert not np.array_equal(v, initial_vector(MLP, 3, root_seed=6))


@pytest.mark.parametrize("model_spec", [ModelSpec(), MLP], ids=["logistic", "mlp"])
def test_fedavg_rounds_is_deterministic(silos, model_spec):
    a = fedavg_rounds(silos, model_spec, SPEC, root_seed=3, rounds=3)
    b = fedavg_rounds(silos, model_spec, SPEC, root_seed=3, rounds=3)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32
    assert not np.array_equal(a, fedavg_rounds(silos, model_spec, SPEC, root_seed=4, rounds=3))


def test_silo_insertion_order_does_not_matter(silos):
    reordered = {name: silos[name] for name in reversed(list(silos))}
    np.testing.assert_array_equal(
        fedavg_rounds(silos, MLP, SPEC, root_seed=3, rounds=2),
        fedavg_rounds(reordered, MLP, SPEC, root_seed=3, rounds=2),
    )


@pytest.mark.parametrize("model_spec", [ModelSpec(), MLP], ids=["logistic", "mlp"])
def test_one_silo_with_server_lr_one_equals_local_training_round_by_round(binary_data, model_spec):
    x, y = binary_data(30, 3, seed=1)
    root, rounds = 9, 4
    history = []
    federated = fedavg_rounds(
        {"only": SiloArrays(x_train=x, y_train=y)},
        model_spec,
        SPEC,
        root_seed=root,
        rounds=rounds,
        server=FedAvg(server_lr=1.0),
        on_round=lambda r, v: history.append((r, v.copy())),
    )
    local = build_model(model_spec, 3, seed=derive_seed(root, "init"))
    for r in range(1, rounds + 1):
        train_local(local, x, y, SPEC, seed=derive_seed(root, "train", r, "only"))
        assert history[r - 1][0] == r
        # Equal up to float32 rounding of (local - global) + global.
        np.testing.assert_allclose(history[r - 1][1], flatten(local), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(federated, history[-1][1])


def test_one_round_with_server_lr_one_is_the_sample_weighted_average_of_local_models(silos):
    root = 2
    start = initial_vector(MLP, 3, root)
    local_models, sizes = [], []
    for name in sorted(silos):
        model = build_model(MLP, 3, seed=0)
        load_flat_inplace(model, start)
        train_local(model, silos[name].x_train, silos[name].y_train, SPEC, seed=derive_seed(root, "train", 1, name))
        local_models.append(flatten(model).astype(np.float64))
        sizes.append(len(silos[name].y_train))
    expected = sum(n * m for n, m in zip(sizes, local_models)) / sum(sizes)
    np.testing.assert_allclose(
        fedavg_rounds(silos, MLP, SPEC, root_seed=root, rounds=1), expected, rtol=1e-5, atol=1e-6
    )


def test_server_lr_scales_the_first_step(silos):
    start = initial_vector(ModelSpec(), 3, 7)
    full = fedavg_rounds(silos, ModelSpec(), SPEC, root_seed=7, rounds=1, server=FedAvg(server_lr=1.0))
    half = fedavg_rounds(silos, ModelSpec(), SPEC, root_seed=7, rounds=1, server=FedAvg(server_lr=0.5))
    np.testing.assert_allclose(half, start + 0.5 * (full - start), rtol=1e-5, atol=1e-6)


def test_resuming_from_a_saved_vector_reproduces_the_uninterrupted_run(silos):
    whole = fedavg_rounds(silos, MLP, SPEC, root_seed=3, rounds=3)
    first = fedavg_rounds(silos, MLP, SPEC, root_seed=3, rounds=2)
    saved = first.copy()
    resumed = fedavg_rounds(silos, MLP, SPEC, root_seed=3, rounds=1, start=first, first_round=3)
    np.testing.assert_array_equal(resumed, whole)
    np.testing.assert_array_equal(first, saved)  # the start vector is not modified


def test_on_round_sees_every_round_in_order(silos):
    seen = []
    last = fedavg_rounds(
        silos, ModelSpec(), SPEC, root_seed=1, rounds=3, first_round=5, on_round=lambda r, v: seen.append((r, v.copy()))
    )
    assert [r for r, _ in seen] == [5, 6, 7]
    np.testing.assert_array_equal(seen[-1][1], last)
    assert not np.array_equal(seen[0][1], seen[1][1])


def test_silo_data_is_not_mutated(silos):
    copies = {name: (s.x_train.copy(), s.y_train.copy()) for name, s in silos.items()}
    fedavg_rounds(silos, MLP, SPEC, root_seed=3, rounds=1)
    for name, (x, y) in copies.items():
        np.testing.assert_array_equal(silos[name].x_train, x)
        np.testing.assert_array_equal(silos[name].y_train, y)


def test_silos_train_in_sorted_id_order_with_their_own_seeds(silos, monkeypatch):
    # The pipeline reproduces this run bit for bit only if both sum the deltas in the same order.
    calls = []
    real = simulation.train_local

    def recording(model, x, y, spec, seed, correction=None, budget=None):
        calls.append(seed)
        return real(model, x, y, spec, seed, correction=correction, budget=budget)

    monkeypatch.setattr(simulation, "train_local", recording)
    reordered = {name: silos[name] for name in ["west", "north", "east"]}
    fedavg_rounds(reordered, ModelSpec(), SPEC, root_seed=3, rounds=2)
    expected = [derive_seed(3, "train", r, name) for r in (1, 2) for name in ["east", "north", "west"]]
    assert calls == expected
