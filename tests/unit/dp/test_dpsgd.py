"""DP-SGD inside a silo: with no noise and no clipping it is exactly minibatch SGD on the same
Poisson batches; clipping bounds every step; the noise has the std it claims; a round's privacy
event is known before training; the hooks and ghost clipping modes compute the same update."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.dp.dpsgd import (
    GHOST_MIN_GRAD_SAMPLE_ENTRIES,
    DPSGDSpec,
    clipping_mode,
    ghost_supported,
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


MODES = ["hooks", "ghost"]


@pytest.mark.parametrize("clipping", MODES)
@pytest.mark.parametrize("model_spec", [ModelSpec(), ModelSpec(kind="mlp", hidden=(8, 4))], ids=["logistic", "mlp"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_no_noise_and_no_clipping_is_plain_sgd(model_spec, optimizer, clipping):
    x, y = data()
    spec = TrainSpec(local_epochs=2, batch_size=16, lr=0.05, momentum=0.5 if optimizer == "sgd" else 0.0,
                     optimizer=optimizer)
    private = build_model(model_spec, x.shape[1], seed=1)
    result = train_local_dp(private, x, y, spec,
                            DPSGDSpec(noise_multiplier=0.0, max_grad_norm=math.inf, clipping=clipping), seed=7,
                            noise=noise_generator())
    plain = build_model(model_spec, x.shape[1], seed=1)
    reference_sgd(plain, x, y, spec, seed=7, steps=result.steps)
    # Equal up to float reassociation (per-sample sums vs one batched product).
    np.testing.assert_allclose(vector(private), vector(plain), rtol=0, atol=1e-6)
    assert result.clipped_fraction == 0.0
    assert result.clipping == clipping
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


@pytest.mark.parametrize("clipping", MODES)
def test_clipped_fraction_counts_the_rows_over_the_norm(clipping):
    x, y = data(n=200)
    spec = TrainSpec(local_epochs=1, batch_size=20, lr=0.01)
    tight = train_local_dp(build_model(ModelSpec(), 6, seed=3), x, y, spec,
                           DPSGDSpec(noise_multiplier=0.0, max_grad_norm=1e-6, clipping=clipping),
                           seed=1, noise=noise_generator())
    loose = train_local_dp(build_model(ModelSpec(), 6, seed=3), x, y, spec,
                           DPSGDSpec(noise_multiplier=0.0, max_grad_norm=1e3, clipping=clipping),
                           seed=1, noise=noise_generator())
    assert tight.clipped_fraction == 1.0
    assert loose.clipped_fraction == 0.0


@pytest.mark.parametrize("z,clip,clipping", [(1.0, 1.0, "hooks"), (0.5, 3.0, "hooks"), (2.0, 0.25, "hooks"),
                                             (0.5, 3.0, "ghost")])
def test_noise_std_is_noise_multiplier_times_clip(z, clip, clipping):
    """Features that are all zero give weight gradients of zero: what moves those weights is the
    noise alone, Δw = −lr · N(0, (zC)²) / (q n)."""
    n, d = 50, 4000
    x, y = np.zeros((n, d), dtype=np.float32), (np.arange(n) % 2).astype(np.float32)
    spec = TrainSpec(local_steps=1, batch_size=10, lr=1.0)
    model = build_model(ModelSpec(), d, seed=4)
    weights_before = model[0].weight.detach().clone() if isinstance(model, torch.nn.Sequential) else None
    before = vector(model)
    result = train_local_dp(model, x, y, spec, DPSGDSpec(noise_multiplier=z, max_grad_norm=clip, clipping=clipping),
                            seed=5, noise=noise_generator())
    assert result.clipping == clipping
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


@pytest.mark.parametrize("clipping", MODES)
def test_the_model_leaves_dp_training_clean(clipping):
    x, y = data()
    model = build_model(ModelSpec(kind="mlp", hidden=(8,)), 6, seed=1)
    attributes = [set(vars(m)) for m in model.modules()]
    train_local_dp(model, x, y, TrainSpec(local_epochs=1, batch_size=16),
                   DPSGDSpec(noise_multiplier=1.0, max_grad_norm=1.0, clipping=clipping),
                   seed=1, noise=noise_generator())
    for p in model.parameters():
        assert not vars(p)  # no grad_sample, summed_grad, _norm_sample, _forward_counter, ...
    assert [set(vars(m)) for m in model.modules()] == attributes  # no activations, max_batch_len, ...
    assert all(not m._forward_hooks and not m._backward_hooks and not m._backward_pre_hooks for m in model.modules())
    train_local(model, x, y, TrainSpec(local_epochs=1), seed=1)  # plain training still works


@pytest.mark.parametrize("clipping", MODES)
def test_an_empty_poisson_sample_still_takes_a_noisy_step(clipping):
    x, y = data(n=40)
    spec = TrainSpec(local_steps=30, batch_size=1, lr=0.1)  # q = 1/40: most samples are empty
    model = build_model(ModelSpec(), 6, seed=1)
    before = vector(model)
    result = train_local_dp(model, x, y, spec, DPSGDSpec(noise_multiplier=1.0, max_grad_norm=1.0, clipping=clipping),
                            seed=2, noise=noise_generator())
    assert result.steps == 30
    assert not np.allclose(vector(model), before)


def test_bad_settings_are_refused():
    with pytest.raises(PrivacyError):
        DPSGDSpec(noise_multiplier=-1.0, max_grad_norm=1.0)
    with pytest.raises(PrivacyError):
        DPSGDSpec(noise_multiplier=1.0, max_grad_norm=0.0)
    with pytest.raises(PrivacyError, match="finite max_grad_norm"):
        DPSGDSpec(noise_multiplier=1.0, max_grad_norm=math.inf)
    with pytest.raises(PrivacyError, match="clipping must be one of 'auto', 'hooks', 'ghost', got 'fast'"):
        DPSGDSpec(noise_multiplier=1.0, max_grad_norm=1.0, clipping="fast")
    with pytest.raises(PrivacyError, match="clipping must be one of"):
        clipping_mode(build_model(ModelSpec(), 6, seed=1), "Ghost", batch_size=16)
    x, y = data()
    with pytest.raises(TrainingError):
        train_local_dp(build_model(ModelSpec(), 6, seed=1), x[:0], y[:0], TrainSpec(),
                       DPSGDSpec(noise_multiplier=1.0, max_grad_norm=1.0), seed=1, noise=noise_generator())


@pytest.mark.parametrize("model_spec,optimizer,steps,batch",
                         [(ModelSpec(), "sgd", 10, 16), (ModelSpec(kind="mlp", hidden=(8, 4)), "adam", 10, 16),
                          (ModelSpec(), "sgd", 30, 1)],  # batch 1 of 120: mostly empty samples
                         ids=["logistic-sgd", "mlp-adam", "empty-samples"])
def test_ghost_and_hooks_take_the_same_noisy_clipped_steps(model_spec, optimizer, steps, batch):
    """Same batches, same clipping, the same noise drawn in the same order from generators seeded
    alike, the same q·n: the same model and the same report, up to float reassociation."""
    x, y = data()
    spec = TrainSpec(local_steps=steps, batch_size=batch, lr=0.1, optimizer=optimizer)
    models, results = {}, {}
    for clipping in MODES:
        models[clipping] = build_model(model_spec, x.shape[1], seed=1)
        results[clipping] = train_local_dp(models[clipping], x, y, spec,
                                           DPSGDSpec(noise_multiplier=1.3, max_grad_norm=0.5, clipping=clipping),
                                           seed=4, noise=torch.Generator().manual_seed(11))
    np.testing.assert_allclose(vector(models["ghost"]), vector(models["hooks"]), rtol=0, atol=1e-5)
    hooks, ghost = results["hooks"], results["ghost"]
    assert (ghost.clipping, hooks.clipping) == ("ghost", "hooks")
    assert (ghost.n_samples, ghost.steps, ghost.event) == (hooks.n_samples, hooks.steps, hooks.event)
    assert ghost.mean_loss == pytest.approx(hooks.mean_loss, rel=1e-5)
    assert ghost.clipped_fraction == pytest.approx(hooks.clipped_fraction, abs=0.02)  # ties at C may differ
    if batch > 1:
        assert 0.0 < ghost.clipped_fraction < 1.0  # some rows clipped, some not: the test means something


@pytest.mark.parametrize("clipping", MODES)
def test_every_row_is_clipped_to_the_norm(clipping):
    """One full-batch SGD step (q = 1, σ = 0, lr = 1) moves the weights by −Σ clip(g_i) / n, where
    clip(g) = g · min(1, C / ‖g‖) has norm at most C; the rows' gradients come from plain torch."""
    x, y = data(n=24)
    x[::3] *= 20.0  # some rows far over the norm, others under it
    clip = 0.8
    model = build_model(ModelSpec(kind="mlp", hidden=(5,)), 6, seed=2)
    reference = build_model(ModelSpec(kind="mlp", hidden=(5,)), 6, seed=2)
    before = vector(model)
    result = train_local_dp(model, x, y, TrainSpec(local_steps=1, batch_size=len(x), lr=1.0),
                            DPSGDSpec(noise_multiplier=0.0, max_grad_norm=clip, clipping=clipping), seed=0,
                            noise=noise_generator())
    clipped_rows, over = [], 0
    for row in range(len(x)):
        reference.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(
            reference(torch.from_numpy(x[row : row + 1])).squeeze(-1), torch.from_numpy(y[row : row + 1]),
            reduction="sum").backward()
        g = torch.cat([p.grad.flatten() for p in reference.parameters()]).double().numpy()
        norm = np.linalg.norm(g)
        over += norm > clip
        clipped_rows.append(g * min(1.0, clip / (norm + 1e-6)))
        assert np.linalg.norm(clipped_rows[-1]) <= clip
    assert 0 < over < len(x)
    assert result.clipped_fraction == over / len(x)
    np.testing.assert_allclose(before - vector(model), np.sum(clipped_rows, axis=0) / len(x), rtol=0, atol=1e-6)


def small_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 1))


def test_auto_picks_ghost_for_linear_models_with_many_per_sample_gradient_entries():
    mlp = build_model(ModelSpec(kind="mlp", hidden=(64, 32)), 30, seed=1)  # 4097 parameters
    logistic = build_model(ModelSpec(), 30, seed=1)
    assert ghost_supported(mlp) and ghost_supported(logistic) and not ghost_supported(small_cnn())
    # The benchmark's cases at batch 256: the MLP gets ghost clipping, the logistic model and the CNN hooks.
    assert clipping_mode(mlp, batch_size=256) == "ghost"
    assert clipping_mode(logistic, batch_size=256) == "hooks"
    assert clipping_mode(small_cnn(), batch_size=256) == "hooks"
    assert clipping_mode(small_cnn(), batch_size=1e9) == "hooks"  # no ghost norms for convolutions
    # The threshold is on batch × parameters: the same MLP at a small batch, the logistic at a huge one.
    assert clipping_mode(mlp, batch_size=16) == "hooks"
    assert clipping_mode(logistic, batch_size=GHOST_MIN_GRAD_SAMPLE_ENTRIES / 31) == "ghost"
    assert clipping_mode(logistic, batch_size=GHOST_MIN_GRAD_SAMPLE_ENTRIES / 31 - 1) == "hooks"
    # Asked for, a mode runs whatever the model.
    assert clipping_mode(logistic, "ghost", batch_size=1) == "ghost"
    assert clipping_mode(mlp, "hooks", batch_size=256) == "hooks"
    frozen = build_model(ModelSpec(kind="mlp", hidden=(64, 32)), 30, seed=1)
    frozen[0].requires_grad_(False)  # only trainable parameters count: 33 of them here
    frozen[2].requires_grad_(False)
    assert clipping_mode(frozen, batch_size=256) == "hooks"


def test_the_default_is_auto_and_the_result_says_which_mode_ran():
    assert DPSGDSpec(noise_multiplier=1.0, max_grad_norm=1.0).clipping == "auto"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 30)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    spec = TrainSpec(local_steps=2, batch_size=256, lr=0.1)
    dp = DPSGDSpec(noise_multiplier=1.0, max_grad_norm=1.0)
    mlp = build_model(ModelSpec(kind="mlp", hidden=(64, 32)), 30, seed=1)
    assert train_local_dp(mlp, x, y, spec, dp, seed=1, noise=noise_generator()).clipping == "ghost"
    logistic = build_model(ModelSpec(), 30, seed=1)
    assert train_local_dp(logistic, x, y, spec, dp, seed=1, noise=noise_generator()).clipping == "hooks"
