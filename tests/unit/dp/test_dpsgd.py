"""DP-SGD inside a silo: with no noise and no clipping it is exactly minibatch SGD on the same
Poisson batches; clipping bounds every step; the noise has the std it claims; a round's privacy
event is known before training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.dp.dpsgd import (
    DPSGDSpec,
    noise_generator,
    poisson_batches,
    round_event,
    steps_per_round,
    train_local_dp,
)
from fl_core.errors import PrivacyError, TrainingError
from fl_core.models import ModelSpec, build_model
from fl_core.seeding import torch_rng
from fl_core.training import TrainSpec, _optimizer, train_local


def data(n: int = 120, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (x[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(np.float32)


def vector(model) -> np.ndarray:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().astype(np.float64)


def reference_sgd(model, x, y, spec: TrainSpec, seed: int, steps: int) -> None:
    """Plain torch: the same Poisson batches, the summed loss over the expected batch size q·n."""
    n = len(x)
    q = min(1.0, spec.batch_size / n)
    optimizer = _optimizer(model, spec)
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    for index in poisson_batches(n, q, steps, torch_rng(seed)):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(features[index]).squeeze(-1), labels[index], reduction="sum") / (q * n)
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("model_spec", [ModelSpec(), ModelSpec(kind="mlp", hidden=(8, 4))], ids=["logistic", "mlp"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_no_noise_and_no_clipping_is_plain_sgd(model_spec, optimizer):
    x, y = data()
    spec = TrainSpec(local_epochs=2, batch_size=16, lr=0.05, momentum=0.5 if optimizer == "sgd" else 0.0,
                     optimizer=optimizer)
    private = build_model(model_spec, x.shape[1], seed=1)
    result = train_local_dp(private, x, y, spec, DPSGDSpec(noise_multiplier=0.0, max_grad_norm=math.inf), seed=7,
                            noise=noise_generator())
    plain = build_model(model_spec, x.shape[1], seed=1)
    reference_sgd(plain, x, y, spec, seed=7, steps=result.steps)
    # Equal up to float reassociation (per-sample sums vs one batched product).
    np.testing.assert_allclose(vector(private), vector(plain), rtol=0, atol=1e-6)
    assert result.clipped_fraction == 0.0
    assert not np.allclose(vector(private), vector(build_model(model_spec, x.shape[1], seed=1)))  # it did train


@settings(max_examples=25, deadline=None)
@given(clip=st.floats(0.01, 5.0), n=st.integers(1, 60), batch=st.integers(1, 40), seed=st.integers(0, 2**31),
       scale=st.floats(0.1, 100.0))
def test_a_step_moves_the_model_by_at_most_batch_times_clip(clip, n, batch, seed, scale):
    x, y = data(n=n, seed=seed % 1000)
    x = x * scale
    spec = TrainSpec(local_steps=1, batch_size=batch, lr=1.0)
    model = build_model(ModelSpec(), x.shape[1], seed=2)
    before = vector(model)
    result = train_local_dp(model, x, y, spec, DPSGDSpec(noise_multiplier=0.0, max_grad_norm=clip), seed=seed,
                            noise=noise_generator())
    q = result.event.sample_rate
    size = len(next(poisson_batches(n, q, 1, torch_rng(seed))))
    # Σ clip(g_i) / (q n): norm at most |B| · C / (q n).
    assert np.linalg.norm(vector(model) - before) <= size * clip / (q * n) * (1 + 1e-5) + 1e-7
    assert 0.0 <= result.clipped_fraction <= 1.0


def test_clipped_fraction_counts_the_rows_over_the_norm():
    x, y = data(n=200)
    spec = TrainSpec(local_epochs=1, batch_size=20, lr=0.01)
    tight = train_local_dp(build_model(ModelSpec(), 6, seed=3), x, y, spec, DPSGDSpec(noise_multiplier=0.0, max_grad_norm=1e-6),
                           seed=1, noise=noise_generator())
    loose = train_local_dp(build_model(ModelSpec(), 6, seed=3), x, y, spec, DPSGDSpec(noise_multiplier=0.0, max_grad_norm=1e3),
                           seed=1, noise=noise_generator())
    assert tight.clipped_fraction == 1.0
    assert loose.clipped_fraction == 0.0


@pytest.mark.parametrize("z,clip", [(1.0, 1.0), (0.5, 3.0), (2.0, 0.25)])
def test_noise_std_is_noise_multiplier_times_clip(z, clip):
    """Features that are all zero give weight gradients of zero: what moves those weights is the
    noise alone, Δw = −lr · N(0, (zC)²) / (q n)."""
    n, d = 50, 4000
    x, y = np.zeros((n, d), dtype=np.float32), (np.arange(n) % 2).astype(np.float32)
    spec = TrainSpec(local_steps=1, batch_size=10, lr=1.0)
    model = build_model(ModelSpec(), d, seed=4)
    weights_before = model[0].weight.detach().clone() if isinstance(model, torch.nn.Sequential) else None
    before = vector(model)
    result = train_local_dp(model, x, y, spec, DPSGDSpec(noise_multiplier=z, max_grad_norm=clip), seed=5,
                            noise=noise_generator())
    moved = (vector(model) - before)[:d] * (result.event.sample_rate * n)  # the weights, not the bias
    assert weights_before is None or moved.shape == (d,)
    assert abs(moved.mean()) < 4 * z * clip / math.sqrt(d)
    # The sample std of d normals is within ~3 / sqrt(2d) ≈ 3.4 % of the truth.
    assert moved.std() == pytest.approx(z * clip, rel=0.05)


def test_noise_differs_between_generators_and_batches_do_not():
    x, y = data()
    spec = TrainSpec(local_epochs=1, batch_size=16, lr=0.1)
    dp = DPSGDSpec(noise_multiplier=1.0, max_grad_norm=1.0)
    a = build_model(ModelSpec(), 6, seed=1)
    b = build_model(ModelSpec(), 6, seed=1)
    train_local_dp(a, x, y, spec, dp, seed=3, noise=noise_generator())
    train_local_dp(b, x, y, spec, dp, seed=3, noise=noise_generator())
    assert not np.allclose(vector(a), vector(b))
    same = [torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)]
    c, e = build_model(ModelSpec(), 6, seed=1), build_model(ModelSpec(), 6, seed=1)
    train_local_dp(c, x, y, spec, dp, seed=3, noise=same[0])
    train_local_dp(e, x, y, spec, dp, seed=3, noise=same[1])
    np.testing.assert_array_equal(vector(c), vector(e))


def test_the_round_event_is_known_before_training():
    x, y = data(n=212)
    spec = TrainSpec(local_epochs=2, batch_size=16)
    event = round_event(212, spec, 1.3)
    assert event.sample_rate == pytest.approx(16 / 212)
    assert event.steps == math.ceil(2 * 212 / 16) == steps_per_round(212, spec)
    result = train_local_dp(build_model(ModelSpec(), 6, seed=1), x, y, spec, DPSGDSpec(noise_multiplier=1.3, max_grad_norm=1.0),
                            seed=1, noise=noise_generator())
    assert result.event == event
    assert round_event(10, TrainSpec(batch_size=32, local_steps=7), 1.0).sample_rate == 1.0
    assert round_event(10, TrainSpec(batch_size=32, local_steps=7), 1.0).steps == 7


def test_the_model_leaves_dp_training_clean():
    x, y = data()
    model = build_model(ModelSpec(kind="mlp", hidden=(8,)), 6, seed=1)
    train_local_dp(model, x, y, TrainSpec(local_epochs=1, batch_size=16), DPSGDSpec(noise_multiplier=1.0, max_grad_norm=1.0),
                   seed=1, noise=noise_generator())
    for p in model.parameters():
        assert not hasattr(p, "grad_sample") and not hasattr(p, "summed_grad")
    assert not model._forward_hooks and all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    train_local(model, x, y, TrainSpec(local_epochs=1), seed=1)  # plain training still works


def test_an_empty_poisson_sample_still_takes_a_noisy_step():
    x, y = data(n=40)
    spec = TrainSpec(local_steps=30, batch_size=1, lr=0.1)  # q = 1/40: most samples are empty
    model = build_model(ModelSpec(), 6, seed=1)
    before = vector(model)
    result = train_local_dp(model, x, y, spec, DPSGDSpec(noise_multiplier=1.0, max_grad_norm=1.0), seed=2,
                            noise=noise_generator())
    assert result.steps == 30
    assert not np.allclose(vector(model), before)


def test_bad_settings_are_refused():
    with pytest.raises(PrivacyError):
        DPSGDSpec(noise_multiplier=-1.0, max_grad_norm=1.0)
    with pytest.raises(PrivacyError):
        DPSGDSpec(noise_multiplier=1.0, max_grad_norm=0.0)
    with pytest.raises(PrivacyError, match="finite max_grad_norm"):
        DPSGDSpec(noise_multiplier=1.0, max_grad_norm=math.inf)
    x, y = data()
    with pytest.raises(TrainingError):
        train_local_dp(build_model(ModelSpec(), 6, seed=1), x[:0], y[:0], TrainSpec(),
                       DPSGDSpec(noise_multiplier=1.0, max_grad_norm=1.0), seed=1, noise=noise_generator())
