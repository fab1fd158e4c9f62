"""Local objectives: FedProx's proximal term and SCAFFOLD's control variates, in plain and DP-SGD
training, against their definitions; FedProx with μ = 0 and SCAFFOLD on identical silos are FedAvg."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_core.dp.dpsgd import DPSGDSpec, train_local_dp
from fl_core.models import ModelSpec, build_model
from fl_core.objectives import Correction, correction, effective_lr, scaffold_server_control, scaffold_silo_control
from fl_core.params import flatten
from fl_core.simulation import SiloArrays, fedavg_rounds, federated_rounds
from fl_core.training import TrainSpec, train_local

MLP = ModelSpec(kind="mlp", hidden=(4,), activation="tanh")


@pytest.fixture
def silos(binary_data):
    out = {}
    for i, n in enumerate([30, 50, 17]):
        x, y = binary_data(n, 3, seed=20 + i)
        out[f"s{i}"] = SiloArrays(x_train=x + i, y_train=y)  # shifted features: not IID
    return out


def test_fedprox_with_mu_zero_is_fedavg_bit_for_bit(silos):
    spec = TrainSpec(batch_size=8, lr=0.1, local_epochs=2)
    fedavg = fedavg_rounds(silos, MLP, spec, root_seed=3, rounds=3)
    prox = federated_rounds(silos, MLP, TrainSpec(batch_size=8, lr=0.1, local_epochs=2, objective="fedprox"),
                            root_seed=3, rounds=3)
    np.testing.assert_array_equal(prox.vector, fedavg)


def test_the_proximal_correction_is_the_gradient_of_the_proximal_term():
    model = build_model(MLP, 3, seed=1)
    anchor = flatten(model) + np.linspace(-1, 1, len(flatten(model))).astype(np.float32)
    mu = 0.7
    params = list(model.parameters())
    for p in params:
        p.grad = None
    correction(model, TrainSpec(objective="fedprox", prox_mu=mu), start=anchor).apply(params)
    ours = torch.cat([p.grad.reshape(-1) for p in params]).numpy()

    w = torch.tensor(flatten(model), dtype=torch.float64, requires_grad=True)
    (0.5 * mu * ((w - torch.tensor(anchor, dtype=torch.float64)) ** 2).sum()).backward()
    np.testing.assert_allclose(ours, w.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_a_larger_mu_keeps_the_local_model_nearer_the_global_one(binary_data):
    x, y = binary_data(60, 3, seed=4)
    start = flatten(build_model(MLP, 3, seed=2))
    distances = []
    for mu in (0.0, 0.5, 5.0):
        model = build_model(MLP, 3, seed=2)
        spec = TrainSpec(batch_size=8, lr=0.1, local_epochs=5, objective="fedprox", prox_mu=mu)
        train_local(model, x, y, spec, seed=1, correction=correction(model, spec, start=start))
        distances.append(float(np.linalg.norm(flatten(model) - start)))
    assert distances[0] > distances[1] > distances[2] > 0


@pytest.mark.parametrize("private", [False, True], ids=["sgd", "dp-sgd"])
def test_a_constant_correction_moves_one_step_by_lr_times_it(binary_data, private):
    """One SGD step with a constant extra gradient v lands lr·v from the same step without it; under
    DP-SGD (no noise) it is added after the clipped, scaled gradient (Opacus's step hook)."""
    x, y = binary_data(40, 3, seed=6)
    spec = TrainSpec(batch_size=10, lr=0.2, local_steps=1)
    offset = np.linspace(-0.5, 0.5, len(flatten(build_model(MLP, 3, seed=0)))).astype(np.float32)

    def trained(with_offset: bool) -> np.ndarray:
        model = build_model(MLP, 3, seed=0)
        corr = None
        if with_offset:
            corr = Correction(mu=0.0, anchor=None, offset=tuple(
                torch.from_numpy(part.copy()).reshape(p.shape)
                for part, p in zip(np.split(offset, np.cumsum([p.numel() for p in model.parameters()])[:-1]),
                                   model.parameters())))
        if private:
            train_local_dp(model, x, y, spec, DPSGDSpec(noise_multiplier=0.0, max_grad_norm=0.5), seed=3,
                           noise=torch.Generator().manual_seed(0), correction=corr)
        else:
            train_local(model, x, y, spec, seed=3, correction=corr)
        return flatten(model)

    np.testing.assert_allclose(trained(True), trained(False) - spec.lr * offset, rtol=0, atol=1e-6)


def test_scaffold_on_identical_silos_is_fedavg(binary_data):
    """Identical silos (full-batch steps, so every silo takes the same steps): every cᵢ equals c and
    the correction vanishes; the control variates are not zero, so the equality is not trivial."""
    x, y = binary_data(24, 3, seed=8)
    silos = {f"s{i}": SiloArrays(x_train=x, y_train=y) for i in range(3)}
    spec = TrainSpec(batch_size=64, lr=0.2, local_epochs=3)
    fedavg = fedavg_rounds(silos, MLP, spec, root_seed=5, rounds=4)
    scaffold = federated_rounds(silos, MLP, TrainSpec(batch_size=64, lr=0.2, local_epochs=3, objective="scaffold"),
                                root_seed=5, rounds=4)
    np.testing.assert_allclose(scaffold.vector, fedavg, rtol=0, atol=1e-5)
    control = scaffold.server.slots["control"]
    assert np.linalg.norm(control) > 1e-3
    for own in scaffold.controls.values():
        np.testing.assert_allclose(own, control, rtol=0, atol=1e-5)
    assert dict(scaffold.server.accepted) == {"s0": 4, "s1": 4, "s2": 4}


def test_scaffold_differs_from_fedavg_on_heterogeneous_silos_and_is_deterministic(silos):
    spec = TrainSpec(batch_size=8, lr=0.1, local_epochs=2, objective="scaffold")
    a = federated_rounds(silos, MLP, spec, root_seed=3, rounds=3)
    b = federated_rounds(silos, MLP, spec, root_seed=3, rounds=3)
    np.testing.assert_array_equal(a.vector, b.vector)
    fedavg = fedavg_rounds(silos, MLP, TrainSpec(batch_size=8, lr=0.1, local_epochs=2), root_seed=3, rounds=3)
    assert np.abs(a.vector - fedavg).max() > 1e-3


def test_scaffold_control_updates_by_hand():
    spec = TrainSpec(lr=0.1, momentum=0.5, objective="scaffold")
    assert effective_lr(spec) == pytest.approx(0.2)
    start, trained = np.array([1.0, 2.0]), np.array([0.6, 2.4])
    c, ci = np.array([0.1, -0.1]), np.array([0.3, 0.0])
    new = scaffold_silo_control(spec, start, trained, steps=4, server_control=c, silo_control=ci)
    np.testing.assert_allclose(new, ci - c + (start - trained) / (4 * 0.2), rtol=1e-6)
    np.testing.assert_array_equal(scaffold_silo_control(spec, start, trained, 0, c, ci), ci.astype(np.float32))
    moved = scaffold_server_control(c, np.array([1.0, -2.0]), in_sum=3, n_silos=4)
    np.testing.assert_allclose(moved, c + 0.75 * np.array([1.0, -2.0]), rtol=1e-6)
    with pytest.raises(ValueError, match="5 silos in the sum"):
        scaffold_server_control(c, c, in_sum=5, n_silos=4)


def test_the_correction_is_built_from_the_objective():
    model = build_model(ModelSpec(), 3, seed=0)
    start = flatten(model)
    assert correction(model, TrainSpec(), start=start) is None
    assert correction(model, TrainSpec(objective="fedprox", prox_mu=0.0), start=start) is None
    assert correction(model, TrainSpec(objective="fedprox", prox_mu=0.1), start=start).mu == 0.1
    with pytest.raises(ValueError, match="control variates"):
        correction(model, TrainSpec(objective="scaffold"), start=start)
    with pytest.raises(ValueError, match="a vector of 5 values for a model of 4"):
        correction(model, TrainSpec(objective="fedprox", prox_mu=0.1), start=np.zeros(5, np.float32))


@pytest.mark.parametrize("params, message", [
    ({"prox_mu": 0.1}, "set objective: fedprox"),
    ({"objective": "fedprox", "prox_mu": -1.0}, "prox_mu must be"),
    ({"objective": "scaffold", "optimizer": "adam"}, "scaffold needs optimizer sgd"),
    ({"objective": "fednova"}, "objective must be one of"),
])
def test_bad_objectives_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        TrainSpec(**params)
