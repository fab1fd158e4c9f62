"""The heterogeneity benchmark's wiring, on a budget of a few steps (its numbers are the benchmark's)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "heterogeneity.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("heterogeneity_benchmark", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_fedavg_drops_its_stragglers_and_the_others_send_partial_work(bench):
    assert bench.stragglers_for("fedavg", 0) is None and bench.stragglers_for("fedprox", 0) is None
    assert bench.stragglers_for("fedavg", 90).drop and bench.stragglers_for("fedavg", 90).fraction == 0.9
    assert not bench.stragglers_for("fedprox", 90).drop and not bench.stragglers_for("scaffold", 90).drop
    base = bench.TrainSpec(local_steps=3)
    assert bench.algorithm_spec(base, "fedprox").prox_mu == bench.PROX_MU == 1.0
    assert bench.algorithm_spec(base, "scaffold").objective == "scaffold"
    assert bench.algorithm_spec(base, "fedavg").prox_mu == 0.0


def test_digits_silos_partition_the_data_each_with_its_own_holdout(bench):
    x, y = bench.load_digits_arrays()
    silos = bench.digits_silos(0, x, y)
    assert len(silos) == bench.DIGITS_SILOS >= 20
    assert sum(len(s.y_train) + len(s.y_test) for s in silos.values()) == len(y)
    assert all(len(s.y_test) >= 1 and len(s.y_train) + len(s.y_test) >= bench.DIGITS_MIN_ROWS for s in silos.values())
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_a_tiny_run_reports_every_headline_key(bench, capsys):
    result = bench.run(bench.Setup(seeds=(0,), synthetic_rounds=2, digits_rounds=1, local_steps=2, synthetic_epochs=1))
    for name in bench.ALGORITHMS:
        for level in ("stragglers0", "stragglers90"):
            assert 0.0 <= result["synthetic_accuracy"][name][level] <= 1.0
            assert result["synthetic_train_loss"][name][level] > 0.0
        assert 0.0 <= result["digits_accuracy"][name] <= 1.0
        assert 0.0 <= result["digits_personalised_accuracy"][name] <= 1.0
    assert 0.0 <= result["digits_local_accuracy"] <= 1.0
    assert set(result["fedprox_minus_fedavg"]) == {"stragglers0", "stragglers90"}
    assert result["seeds"] == 1 and result["rounds"] == 2
    printed = capsys.readouterr().out
    assert "synthetic" in printed and "digits" in printed and "reading:" in printed
