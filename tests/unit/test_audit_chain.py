"""The audit log's chain: every kind of tampering is caught at the first entry it touches, and an
untouched log verifies."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.audit import EMPTY, AuditError, Head, append, verify

PROPERTY = settings(max_examples=30, deadline=None)


def public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


KEYS = {name: Ed25519PrivateKey.generate() for name in ("coordinator", "s0", "s1")}
ROSTER = {name: public(key) for name, key in KEYS.items()}


def key_of(actor, entry):
    return ROSTER.get(actor)


def build(n: int, actors=("coordinator", "s0", "s1")) -> tuple[list[str], Head]:
    lines, head = [], EMPTY
    for i in range(n):
        actor = actors[i % len(actors)]
        line, head = append(head, signer=KEYS[actor], actor=actor, kind="round_start", round_number=i // 2,
                            time=1000.0 + i, body={"i": i, "verdict": "passed", "epsilon": 0.25 * i})
        lines.append(line)
    return lines, head


@PROPERTY
@given(n=st.integers(0, 12))
def test_an_untouched_log_verifies_to_its_head(n):
    lines, head = build(n)
    entries, got = verify(lines, key_of, expected=head)
    assert got == head and [e.seq for e in entries] == list(range(n))
    assert [e.body["i"] for e in entries] == list(range(n))


@PROPERTY
@given(n=st.integers(2, 10), data=st.data())
def test_a_deleted_entry_is_caught_where_it_was(n, data):
    lines, head = build(n)
    k = data.draw(st.integers(0, n - 2))  # not the last: that is truncation
    with pytest.raises(AuditError) as caught:
        verify(lines[:k] + lines[k + 1:], key_of, expected=head)
    assert caught.value.index == k


@PROPERTY
@given(n=st.integers(2, 10), data=st.data())
def test_reordered_entries_are_caught_at_the_first_moved_one(n, data):
    lines, head = build(n)
    i = data.draw(st.integers(0, n - 2))
    j = data.draw(st.integers(i + 1, n - 1))
    swapped = list(lines)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    with pytest.raises(AuditError) as caught:
        verify(swapped, key_of, expected=head)
    assert caught.value.index == i


@PROPERTY
@given(n=st.integers(1, 10), data=st.data())
def test_an_edited_entry_is_caught_at_that_entry_even_with_a_recomputed_chain(n, data):
    lines, head = build(n)
    k = data.draw(st.integers(0, n - 1))
    raw = json.loads(lines[k])
    raw["body"]["verdict"] = "failed"
    edited = list(lines)
    edited[k] = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    with pytest.raises(AuditError) as caught:
        verify(edited, key_of, expected=head)
    assert caught.value.index == k and "signature" in caught.value.reason


@PROPERTY
@given(n=st.integers(1, 10), data=st.data())
def test_a_truncated_log_is_caught_against_its_recorded_head(n, data):
    lines, head = build(n)
    k = data.draw(st.integers(0, n - 1))
    with pytest.raises(AuditError, match="truncated") as caught:
        verify(lines[:k], key_of, expected=head)
    assert caught.value.index == k
    verify(lines[:k], key_of)  # without the head a prefix is a valid chain: why the head is recorded


def test_a_forged_entry_is_caught_whether_signed_by_a_stranger_or_in_anothers_name():
    lines, head = build(3)
    stranger = Ed25519PrivateKey.generate()
    forged, _ = append(head, signer=stranger, actor="s0", kind="promotion", round_number=5, time=2000.0, body={})
    with pytest.raises(AuditError, match="signature is not 's0'") as caught:
        verify([*lines, forged], key_of)
    assert caught.value.index == 3
    outsider, _ = append(head, signer=stranger, actor="mallory", kind="promotion", round_number=5, time=2000.0,
                         body={})
    with pytest.raises(AuditError, match="may not write"):
        verify([*lines, outsider], key_of)
    in_name, _ = append(head, signer=KEYS["s1"], actor="coordinator", kind="promotion", round_number=5,
                        time=2000.0, body={})
    with pytest.raises(AuditError, match="signature is not 'coordinator'"):
        verify([*lines, in_name], key_of)


def test_rounds_never_go_back_and_lines_must_be_canonical():
    lines, head = build(4)  # rounds 0, 0, 1, 1
    back, _ = append(head, signer=KEYS["coordinator"], actor="coordinator", kind="x", round_number=0, time=1.0,
                     body={})
    with pytest.raises(AuditError, match="round 0 after round 1"):
        verify([*lines, back], key_of)
    spaced = json.dumps(json.loads(lines[1]), sort_keys=True)  # same content, other spacing
    with pytest.raises(AuditError, match="canonical") as caught:
        verify([lines[0], spaced, *lines[2:]], key_of)
    assert caught.value.index == 1
    for bad in ("not json", "[]", json.dumps({"v": 1})):
        with pytest.raises(AuditError) as caught:
            verify([lines[0], bad], key_of)
        assert caught.value.index == 1


def test_append_refuses_what_cannot_be_verified_later():
    with pytest.raises(ValueError):
        append(EMPTY, signer=KEYS["s0"], actor="s0", kind="x", round_number=-1, time=0.0, body={})
    with pytest.raises(ValueError):
        append(EMPTY, signer=KEYS["s0"], actor="s0", kind="x", round_number=0, time=0.0, body={"e": float("nan")})


def test_a_log_that_grew_past_its_recorded_head_verifies_and_a_rewritten_one_does_not():
    lines, head = build(4)
    more, _ = append(head, signer=KEYS["coordinator"], actor="coordinator", kind="job_end", round_number=1,
                     time=5000.0, body={})
    verify([*lines, more], key_of, expected=head)
    # the same number of entries, re-signed by their writers with another body: a valid chain, not the recorded one
    rewritten, h = [], EMPTY
    for i, line in enumerate(lines):
        raw = json.loads(line)
        new, h = append(h, signer=KEYS[raw["actor"]], actor=raw["actor"], kind=raw["kind"], round_number=raw["round"],
                        time=raw["time"], body={**raw["body"], "verdict": "failed" if i == 2 else raw["body"]["verdict"]})
        rewritten.append(new)
    with pytest.raises(AuditError, match="rewritten") as caught:
        verify(rewritten, key_of, expected=head)
    assert caught.value.index == 3
