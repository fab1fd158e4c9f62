"""Quorum: a round goes on only with enough silos, and the error says who is missing and why."""

from __future__ import annotations

import pytest

from fl_core.errors import FedsiloError, QuorumError
from fl_core.quorum import require_quorum


@pytest.mark.parametrize("available, min_silos", [(["a", "b", "c"], 2), (["a", "b"], 2), (["a"], 1), ([], 0)])
def test_enough_silos_pass(available, min_silos):
    assert require_quorum(available, {"z": "timed out"}, min_silos, "train") is None


def test_too_few_silos_name_every_silo_that_sat_out_sorted():
    out = {"zurich": "contract violated: age > max", "basel": "timed out"}
    with pytest.raises(QuorumError) as info:
        require_quorum(["cleveland"], out, 2, "round 3 training")
    message = str(info.value)
    assert message == (
        "round 3 training: only 1 silo(s) available, the federation needs min_silos=2 "
        "(basel: timed out; zurich: contract violated: age > max)"
    )
    assert isinstance(info.value, FedsiloError)


def test_no_answers_at_all_say_so():
    with pytest.raises(
        QuorumError, match=r"^evaluate: only 0 silo\(s\) available, .*min_silos=1 \(no silo answered\)$"
    ):
        require_quorum([], {}, 1, "evaluate")


def test_inputs_are_not_mutated():
    available, out = ["a"], {"b": "down"}
    with pytest.raises(QuorumError):
        require_quorum(available, out, 3, "train")
    assert available == ["a"] and out == {"b": "down"}
