"""The round table of `fedsilo run`: accuracy per silo, the gate, and the ε row under it; the gate table
with its group checks."""

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


def test_the_gate_table_shows_each_silos_groups_the_withheld_ones_and_the_federations():
    from fl_core.fairness import GroupCounts
    from fl_core.gate import GateSpec, GroupSpec, decide
    from flows.console import gate_table
    from tasks.gate import gate_json

    counts = {"Female": GroupCounts(n=29, predicted=6, positive=8, true_positive=6, false_positive=0),
              "Male": GroupCounts(n=62, predicted=35, positive=34, true_positive=25, false_positive=10)}
    spec = GateSpec(min_worst=0.5, max_gap=0.5, groups=GroupSpec(column="sex", max_dp_difference=0.4,
                                                                 max_eo_difference=0.3))
    decision = decide({"a": 0.8, "b": 0.7}, None, spec, groups={"a": counts, "b": {}}, suppressed={"b": 2})
    rec = {**record(), "gate": gate_json(decision)}
    table, lines = gate_table(rec)
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(table)
    text = out.getvalue()
    assert "groups · sex · ŷ = 1 at p >= 0.5" in text
    rows = [line.strip("│ ").split() for line in text.splitlines() if "│" in line]
    assert ["a", "Female", "29", "0.207", "0.750", "0.000", "0.358", "0.357"] == [c for c in rows[-5] if c != "│"]
    assert ["b", "2", "withheld", "—", "—"] == [c for c in rows[-3] if c != "│"]
    assert [c for c in rows[-2] if c != "│"][:3] == ["federation", "Female", "29"]
    assert [line.split(":")[0] for line in lines][-2:] == ["[green]pass[/]  parity", "[red]FAIL[/]  odds"]


def test_the_gate_table_adds_each_silos_personalised_value_when_the_silos_report_one():
    from fl_core.gate import GateSpec, decide
    from flows.console import gate_table
    from tasks.gate import gate_json

    decision = decide({"a": 0.8, "b": 0.7}, None, GateSpec(min_worst=0.5, max_gap=0.5))
    out = io.StringIO()
    plain, _ = gate_table({**record(), "gate": gate_json(decision)})
    Console(file=out, width=120, color_system=None).print(plain)
    assert "personalised" not in out.getvalue()
    rec = {**record(), "gate": gate_json(decision), "personalised_metrics": {"a": {"accuracy": 0.85}}}
    table, _ = gate_table(rec)
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(table)
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in out.getvalue().splitlines() if line.count("│") > 2}
    assert "personalised accuracy" in out.getvalue()
    assert rows["a"][-1] == "0.850" and rows["b"][-1] == "—"


def test_the_progress_bar_counts_every_silos_evaluation_and_only_the_sampled_silos_other_phases():
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None, force_terminal=True)
    reporter = ConsoleReporter(console)
    reporter.job_started("fed", 1, 2, ["a", "b", "c", "d"], phases_per_round=5, trainers_per_round=2)
    total = reporter.progress.tasks[0].total
    reporter.progress.stop()
    assert total == 2 * (4 * 2 + 4)
    everyone = ConsoleReporter(Console(file=io.StringIO(), force_terminal=True))
    everyone.job_started("fed", 1, 2, ["a", "b", "c", "d"], phases_per_round=5)
    assert everyone.progress.tasks[0].total == 2 * 5 * 4
    everyone.progress.stop()
