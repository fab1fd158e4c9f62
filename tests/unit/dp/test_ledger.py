"""Privacy ledgers: refuse to overspend, charge a round once, survive serialisation, and never turn
a damaged file into a fresh budget."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.dp.accounting import GaussianEvent, epsilon
from fl_core.dp.ledger import Ledger, PrivacyBudget
from fl_core.errors import BudgetExceeded, LedgerCorrupt, PrivacyError, StateError

ROUND = GaussianEvent(1.2, 0.02, 50)  # one round of local DP-SGD: ε ≈ 1.03 alone, ≈ 3 after 19


def fresh(budget: float = 3.0, accountant: str = "rdp") -> Ledger:
    return Ledger(owner="cleveland", federation="heart", budget=PrivacyBudget(budget, 1e-5, accountant))


def run_until_refused(ledger: Ledger, rounds: int = 100) -> tuple[Ledger, int | None]:
    for r in range(1, rounds + 1):
        try:
            ledger = ledger.charge(r, ROUND)
        except BudgetExceeded:
            return ledger, r
    return ledger, None


def test_a_budget_that_runs_out_stops_at_the_right_round():
    ledger, refused = run_until_refused(fresh(3.0))
    assert refused is not None
    # The refused round is exactly the first whose composition passes the budget.
    assert epsilon([ROUND] * (refused - 1), 1e-5) <= 3.0 < epsilon([ROUND] * refused, 1e-5)
    assert ledger.rounds == list(range(1, refused))
    assert ledger.spent() <= 3.0
    # Nothing was charged for the refused round; the next round is refused too.
    with pytest.raises(BudgetExceeded, match=r"cleveland: round \d+ would spend ε"):
        ledger.charge(refused + 1, ROUND)


def test_refusal_names_the_party_the_round_and_the_figures():
    with pytest.raises(BudgetExceeded) as info:
        fresh(0.5).charge(1, GaussianEvent(0.8, 0.2, 500))
    message = str(info.value)
    assert "cleveland" in message and "round 1" in message and "budget of 0.5" in message


def test_charges_go_in_round_order_and_a_retried_round_is_charged_again():
    ledger = fresh(10.0).charge(1, ROUND).charge(2, ROUND)
    with pytest.raises(PrivacyError, match="round order"):
        ledger.charge(1, ROUND)
    with pytest.raises(PrivacyError):
        ledger.charge(0, ROUND)
    retried = ledger.charge(2, ROUND)  # round 2 trained again after an interruption
    assert retried.rounds == [1, 2, 2]
    assert retried.spent() == pytest.approx(epsilon([ROUND] * 3, 1e-5))
    assert Ledger.from_json(retried.to_json(), owner="cleveland", federation="heart") == retried


def test_spent_is_recomputed_from_events_and_switching_accountant_re_evaluates():
    ledger = fresh(10.0).charge(1, ROUND).charge(2, ROUND).charge(3, ROUND)
    assert ledger.spent() == pytest.approx(epsilon([ROUND] * 3, 1e-5))
    prv = ledger.with_budget(PrivacyBudget(10.0, 1e-5, "prv"))
    assert prv.spent() == pytest.approx(epsilon([ROUND] * 3, 1e-5, "prv"))
    assert prv.spent() < ledger.spent()
    assert ledger.preview(ROUND) == pytest.approx(epsilon([ROUND] * 4, 1e-5))
    assert ledger.remaining() == pytest.approx(10.0 - ledger.spent())


def test_the_budget_can_be_lowered_not_raised_and_delta_is_fixed():
    ledger = fresh(3.0).charge(1, ROUND)
    assert ledger.with_budget(PrivacyBudget(2.0, 1e-5)).budget.epsilon == 2.0
    with pytest.raises(PrivacyError, match="cannot be raised"):
        ledger.with_budget(PrivacyBudget(4.0, 1e-5))
    with pytest.raises(PrivacyError, match="δ"):
        ledger.with_budget(PrivacyBudget(3.0, 1e-6))


@settings(max_examples=20, deadline=None)
@given(rounds=st.integers(0, 12), noise=st.floats(0.7, 5.0), q=st.floats(0.001, 0.5), steps=st.integers(1, 500))
def test_serialisation_round_trips(rounds, noise, q, steps):
    ledger = fresh(1e6)
    for r in range(1, rounds + 1):
        ledger = ledger.charge(r, GaussianEvent(noise, q, steps))
    again = Ledger.from_json(ledger.to_json(), owner="cleveland", federation="heart")
    assert again == ledger
    assert again.spent() == ledger.spent()


def damaged_copies(text: str):
    raw = json.loads(text)
    yield "truncated", text[: len(text) // 2]
    yield "empty", ""
    yield "not json", "ledger"
    yield "binary", b"\xff\xfe\x00"
    edited = dict(raw, charges=raw["charges"][:-1])  # a charge removed, checksum left alone
    yield "charge removed", json.dumps(edited)
    edited = json.loads(text)
    edited["budget"]["epsilon"] = 100.0
    yield "budget raised", json.dumps(edited)
    edited = json.loads(text)
    del edited["sha256"]
    yield "no checksum", json.dumps(edited)
    edited = json.loads(text)
    edited["format"] = "other"
    yield "other format", json.dumps(edited)


@pytest.mark.parametrize("case", ["truncated", "empty", "not json", "binary", "charge removed", "budget raised",
                                  "no checksum", "other format"])
def test_a_damaged_ledger_is_an_error_not_a_fresh_budget(case):
    text = fresh().charge(1, ROUND).charge(2, ROUND).to_json()
    damaged = dict(damaged_copies(text))[case]
    with pytest.raises(LedgerCorrupt, match="corrupt") as info:
        Ledger.from_json(damaged, owner="cleveland", federation="heart", where="silos/cleveland/privacy.json")
    assert "silos/cleveland/privacy.json" in str(info.value)
    assert isinstance(info.value, StateError)


@given(position=st.integers(0, 10_000), value=st.integers(32, 126))
@settings(max_examples=60, deadline=None)
def test_any_changed_character_is_caught(position, value):
    text = fresh().charge(1, ROUND).charge(2, ROUND).to_json()
    position %= len(text)
    if text[position] == chr(value):
        return
    changed = text[:position] + chr(value) + text[position + 1:]
    try:
        again = Ledger.from_json(changed, owner="cleveland", federation="heart")
    except LedgerCorrupt:
        return
    # Only changes that leave the content equal (JSON whitespace) may pass.
    assert again == Ledger.from_json(text, owner="cleveland", federation="heart")


def test_a_ledger_of_another_party_is_refused():
    text = fresh().charge(1, ROUND).to_json()
    with pytest.raises(LedgerCorrupt, match="belongs to 'cleveland'"):
        Ledger.from_json(text, owner="hungary", federation="heart")
    with pytest.raises(LedgerCorrupt, match="federation 'heart'"):
        Ledger.from_json(text, owner="cleveland", federation="other")


@pytest.mark.parametrize("kwargs", [{"epsilon": 0, "delta": 1e-5}, {"epsilon": float("inf"), "delta": 1e-5},
                                    {"epsilon": 1.0, "delta": 0}, {"epsilon": 1.0, "delta": 1e-5, "accountant": "gdp"}])
def test_bad_budgets_are_refused(kwargs):
    with pytest.raises(PrivacyError):
        PrivacyBudget(**kwargs)
