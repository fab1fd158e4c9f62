"""Synthetic federations used by benchmarks and tests: the bounded binary silos (reproducible) and
the Synthetic(alpha, beta) federation of FedProx (Li et al., MLSys 2020)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.synthetic import synthetic_fedprox, synthetic_silos


def test_shapes_names_bounds_and_labels():
    silos = synthetic_silos(n_silos=11, rows=20, n_features=3, seed=0, bound=2.0)
    assert list(silos) == [f"s{i:02d}" for i in range(11)]
    for silo in silos.values():
        assert silo.x.shape == (20, 3) and silo.y.shape == (20,)
        assert np.all(np.abs(silo.x) <= 2.0)
        assert set(np.unique(silo.y)) <= {0, 1}


def test_same_seed_same_data_different_seed_different_data():
    a = synthetic_silos(3, 15, 2, seed=4)
    b = synthetic_silos(3, 15, 2, seed=4)
    c = synthetic_silos(3, 15, 2, seed=5)
    for name in a:
        np.testing.assert_array_equal(a[name].x, b[name].x)
        np.testing.assert_array_equal(a[name].y, b[name].y)
        assert not np.array_equal(a[name].x, c[name].x)


def test_adding_a_silo_leaves_the_others_unchanged():
    small = synthetic_silos(2, 10, 2, seed=1)
    large = synthetic_silos(3, 10, 2, seed=1)
    for i in range(2):
        np.testing.assert_array_equal(small[f"s{i}"].x, large[f"s{i}"].x)


@pytest.mark.parametrize("args", [(0, 10, 2), (2, 0, 2), (2, 10, 0)])
def test_sizes_below_one_are_refused(args):
    with pytest.raises(ValueError, match=r"need n_silos, rows, n_features >= 1"):
        synthetic_silos(*args, seed=0)


# --- Synthetic(alpha, beta), FedProx Section 5.1 ------------------------------------------------------


def _label_mixes(federation, classes=10):
    return np.array([np.bincount(d.y, minlength=classes) / len(d.y) for d in federation.values()])


def _mean_pairwise_tv(mixes):
    n = len(mixes)
    return np.mean([0.5 * np.abs(mixes[i] - mixes[j]).sum() for i in range(n) for j in range(i)])


def test_default_federation_shapes_labels_and_split():
    federation = synthetic_fedprox(0.5, 0.5, rng_seed=0)
    assert list(federation) == [f"s{k:02d}" for k in range(30)]
    total = 0
    for device in federation.values():
        rows = len(device.y)
        total += rows
        assert rows >= 10
        assert device.x.shape == (rows, 60) and device.x.dtype == np.float64
        assert device.y.shape == (rows,) and device.y.dtype == np.int64
        assert device.y.min() >= 0 and device.y.max() < 10
        assert device.test.shape == (rows,) and device.test.dtype == bool
        assert len(device.y_train) + len(device.y_test) == rows
        assert device.x_train.shape == (len(device.y_train), 60) and device.x_test.shape == (len(device.y_test), 60)
        assert abs(device.test.mean() - 0.2) < 0.15  # stratified 80/20, per class
        for cls in np.unique(device.y):
            if np.sum(device.y == cls) >= 2:
                assert cls in device.y_train and cls in device.y_test
    assert 1000 < total < 10000  # moderate: about 3,000 rows expected


@settings(max_examples=10, deadline=None)
@given(
    alpha=st.floats(0.0, 3.0),
    beta=st.floats(0.0, 3.0),
    devices=st.integers(1, 6),
    features=st.integers(1, 12),
    classes=st.integers(2, 6),
    seed=st.integers(0, 2**32),
)
def test_any_configuration_has_the_requested_shapes(alpha, beta, devices, features, classes, seed):
    federation = synthetic_fedprox(alpha, beta, seed, devices=devices, features=features, classes=classes, min_rows=3)
    assert len(federation) == devices
    for device in federation.values():
        assert device.x.shape == (len(device.y), features) and len(device.y) >= 3
        assert np.all((device.y >= 0) & (device.y < classes))
        assert np.all(np.isfinite(device.x))


def test_same_seed_same_federation_different_seed_different_one():
    a = synthetic_fedprox(1.0, 1.0, rng_seed=3, devices=5)
    b = synthetic_fedprox(1.0, 1.0, rng_seed=3, devices=5)
    c = synthetic_fedprox(1.0, 1.0, rng_seed=4, devices=5)
    for name in a:
        np.testing.assert_array_equal(a[name].x, b[name].x)
        np.testing.assert_array_equal(a[name].y, b[name].y)
        np.testing.assert_array_equal(a[name].test, b[name].test)
        assert a[name].x.shape != c[name].x.shape or not np.array_equal(a[name].x, c[name].x)


def test_a_device_does_not_depend_on_how_many_devices_follow_it():
    few = list(synthetic_fedprox(1.0, 1.0, rng_seed=9, devices=4).values())
    many = list(synthetic_fedprox(1.0, 1.0, rng_seed=9, devices=30).values())
    for small, large in zip(few, many[:4], strict=True):
        np.testing.assert_array_equal(small.x, large.x)
        np.testing.assert_array_equal(small.y, large.y)
        np.testing.assert_array_equal(small.test, large.test)


def test_beta_spreads_the_devices_feature_means():
    for seed in range(5):
        means = {}
        for level in (0.0, 1.0):
            federation = synthetic_fedprox(level, level, rng_seed=seed)
            means[level] = np.array([device.x.mean(axis=0) for device in federation.values()])
        # Total spread: Var(v_kj) = 1 at beta=0, 1 + beta**2 = 2 at beta=1, summed over 60 features.
        assert means[1.0].var(axis=0).sum() > 1.4 * means[0.0].var(axis=0).sum()
        # The shift B_k common to all of a device's features: about 1/60 at beta=0, about 1 at beta=1.
        assert means[1.0].mean(axis=1).var() > 10 * means[0.0].mean(axis=1).var()


def test_devices_are_label_heterogeneous_and_more_so_with_beta():
    # Even Synthetic(0, 0) is far from IID (each device has its own W_k, b_k and v_k), so the label
    # distance between devices is already high and nearly saturated; larger beta concentrates each
    # device further on its dominant class. Pooled over ten seeds for robustness.
    stats = {}
    for level in (0.0, 1.0):
        tv, top, entropy = [], [], []
        for seed in range(10):
            mixes = _label_mixes(synthetic_fedprox(level, level, rng_seed=seed))
            tv.append(_mean_pairwise_tv(mixes))
            top.append(mixes.max(axis=1).mean())
            logs = np.log(mixes, where=mixes > 0, out=np.zeros_like(mixes))
            entropy.append(-(mixes * logs).sum(axis=1).mean())
        stats[level] = (np.mean(tv), np.mean(top), np.mean(entropy))
    assert stats[0.0][0] > 0.7 and stats[1.0][0] > 0.7
    assert stats[1.0][0] > stats[0.0][0]  # pairwise label TV: larger (by a little: it is near 1 already)
    assert stats[1.0][1] > stats[0.0][1] + 0.02  # share of each device's largest class
    assert stats[1.0][2] < stats[0.0][2] - 0.05  # label entropy per device


def test_alpha_shifts_all_logits_equally_so_labels_do_not_depend_on_it():
    # u_k adds u_k * (sum(x) + 1) to every class's logit: the argmax, hence y, is unchanged.
    low = synthetic_fedprox(0.0, 0.7, rng_seed=2, devices=8)
    high = synthetic_fedprox(2.0, 0.7, rng_seed=2, devices=8)
    for name in low:
        np.testing.assert_array_equal(low[name].x, high[name].x)
        np.testing.assert_array_equal(low[name].y, high[name].y)


def test_device_sizes_are_heavy_tailed():
    ratios, skews = [], []
    for seed in range(10):
        sizes = np.array([len(d.y) for d in synthetic_fedprox(0.0, 0.0, rng_seed=seed).values()])
        ratios.append(sizes.max() / np.median(sizes))
        skews.append(sizes.mean() / np.median(sizes))
    assert min(ratios) > 2.5 and np.median(ratios) > 4
    assert min(skews) > 1.0  # right-skewed: mean above median


def test_size_parameters_follow_the_lognormal_law():
    sizes = np.array(
        [
            len(d.y)
            for d in synthetic_fedprox(
                0.0, 0.0, 1, devices=400, features=2, classes=2, min_rows=50, size_mu=3.0, size_sigma=0.5
            ).values()
        ]
    )
    assert sizes.min() >= 50
    logs = np.log(sizes - 50 + 0.5)  # floor() loses half a row on average
    assert abs(np.median(logs) - 3.0) < 0.1
    assert abs(logs.std() - 0.5) < 0.1


def test_feature_variances_decay_like_j_to_the_minus_1_2():
    # Pooled raw columns mix in the spread of v_k (variance 1 per feature), so measure within
    # devices: centre each device's rows on their own mean and pool the residuals.
    j = np.arange(1, 61)
    for seed in range(3):
        federation = synthetic_fedprox(0.0, 0.0, rng_seed=seed)
        residuals = np.concatenate([d.x - d.x.mean(axis=0) for d in federation.values()])
        variances = (residuals**2).sum(axis=0) / (len(residuals) - len(federation))
        np.testing.assert_allclose(variances, j**-1.2, rtol=0.2)
        assert variances[0] / variances[59] == pytest.approx(60**1.2, rel=0.2)
        slope = np.polyfit(np.log(j), np.log(variances), 1)[0]
        assert slope == pytest.approx(-1.2, abs=0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": -0.1}, r"alpha must be a finite number >= 0, got -0\.1"),
        ({"beta": math.nan}, r"beta must be a finite number >= 0, got nan"),
        ({"devices": 0}, r"devices must be an integer >= 1, got 0"),
        ({"features": 0}, r"features must be an integer >= 1, got 0"),
        ({"classes": 1}, r"classes must be an integer >= 2, got 1"),
        ({"min_rows": 0}, r"min_rows must be an integer >= 1, got 0"),
        ({"devices": 2.0}, r"devices must be an integer >= 1, got 2\.0"),
        ({"size_sigma": -1.0}, r"size_sigma must be a finite number >= 0, got -1\.0"),
        ({"size_mu": math.inf}, r"size_mu must be finite, got inf"),
        ({"test_fraction": 1.0}, r"test_fraction must be in \(0, 1\), got 1\.0"),
    ],
)
def test_fedprox_bad_inputs_are_refused(kwargs, message):
    args = {"alpha": 1.0, "beta": 1.0, "rng_seed": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        synthetic_fedprox(**args)
