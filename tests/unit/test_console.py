"""The round table of `fedsilo run`: accuracy per silo, the gate, and the ε row under it."""

from __future__ import annotations

import io

from rich.console import Console

from flows.console import ConsoleReporter


def record(privacy=None, federation=None) -> dict:
    return {
        "round": 3, "version": "3", "metrics": {"a": {"accuracy": 0.8}, "b": {"accuracy": 0.7}},
        "pooled": {"accuracy": 0.75}, "privacy": privacy or {}, "federation_privacy": federation,
        "gate": {"passed": True, "checks": [], "metric": "accuracy", "undefined": []},
    }


def shown(rec: dict) -> list[str]:
    out = io.StringIO()
    reporter = ConsoleReporter(Console(file=out, width=200, color_system=None), show_progress=False)
    reporter.job_started("fed", 1, 5, ["a", "b"])
    reporter.round_done(rec)
    return out.getvalue().splitlines()[2:]


def test_the_epsilon_row_shows_each_silo_and_the_federation():
    rows = shown(record({"a": {"epsilon": 1.25}}, {"epsilon": 7.5}))
    assert rows[0].split()[:3] == ["3", "0.800", "0.700"]
    assert rows[1].split() == ["ε", "1.250", "–", "7.500"]  # b trained without DP; 7.5 is the federation's


def test_no_epsilon_row_without_privacy_and_no_federation_cell_without_silo_level_dp():
    assert len(shown(record())) == 1
    assert shown(record({"a": {"epsilon": 1.0}, "b": {"epsilon": 2.0}}))[1].split() == ["ε", "1.000", "2.000"]
