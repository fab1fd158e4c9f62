"""What travels between the coordinator and the silos is signed and bound: the coordinator's orders
(flow-run parameters), the silos' manifests, the round records, the roster. Each test shows a
forgery, a replay or a foreign artifact being refused — and the genuine one accepted."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.errors import BadSignature, EnrolmentError, IntegrityError, SecAggError, StaleMessage, WrongSender
from fl_core.messages import (
    Manifest,
    ObjectRef,
    Order,
    ProtocolResult,
    TrainResult,
    open_order,
    seal_manifest,
    seal_order,
)
from fl_core.secagg import crypto
from infra.config import load_config
from infra.dispatch import Delivery, PhaseCall, Verified
from infra.exchange import Exchange, LocalObjectStore
from infra.roster import RosterStore, enrol, enrol_local, offboard, parse_public_key, published_roster
from infra.state import StateDir
from infra.synthetic import write_synthetic_federation
from tasks.common import record_header

COORDINATOR = crypto.new_identity()
COORDINATOR_PUBLIC = crypto.identity_public(COORDINATOR)
GLOBAL = ObjectRef(key="federations/f/rounds/2/global.arrow", sha256="ab" * 32, size=10)
REFS = {"global": GLOBAL}


def order(**changes):
    args = {"identity": COORDINATOR, "federation": "f", "round": 3, "phase": "train", "silos": ("s0", "s1"),
            "refs": REFS} | changes
    identity = args.pop("identity")
    return seal_order(identity, Order(**args))


def test_an_order_opens_for_its_silos_and_gives_its_references():
    opened = open_order(order(), COORDINATOR_PUBLIC, "f", 3, "train", "s1")
    assert opened.refs == REFS and opened.silos == ("s0", "s1") and opened.phase == "train"


@pytest.mark.parametrize(("where", "error"), [
    ({"round": 2}, StaleMessage),                  # a replay from the previous round
    ({"phase": "evaluate"}, StaleMessage),         # another phase of the same round
    ({"phase": "masked"}, StaleMessage),           # an order of a later phase, replayed into this one
    ({"federation": "g"}, StaleMessage),           # another federation's order
    ({"silos": ("s0",)}, WrongSender),             # not addressed to s1
    ({"identity": crypto.new_identity()}, BadSignature),  # signed by someone else
])
def test_an_order_for_another_round_phase_federation_or_silo_or_signer_is_refused(where, error):
    with pytest.raises(error):
        open_order(order(**where), COORDINATOR_PUBLIC, "f", 3, "train", "s1")


def test_an_order_whose_references_were_edited_on_the_way_is_refused():
    edited = order()
    edited["body"]["refs"]["global"]["sha256"] = "cd" * 32  # changed behind the coordinator's back
    with pytest.raises(BadSignature):
        open_order(edited, COORDINATOR_PUBLIC, "f", 3, "train", "s1")
    with pytest.raises(BadSignature):
        open_order({"refs": {"global": GLOBAL.to_dict()}}, COORDINATOR_PUBLIC, "f", 3, "train", "s1")  # unsigned


def test_an_order_of_another_format_version_is_refused_even_when_signed():
    from fl_core.messages import COORDINATOR as SENDER
    from fl_core.messages import header

    signed = crypto.seal(COORDINATOR, header("f", 3, "train", SENDER), {"v": 2, "silos": ["s1"], "refs": {}}).to_dict()
    with pytest.raises(BadSignature):
        open_order(signed, COORDINATOR_PUBLIC, "f", 3, "train", "s1")


@settings(max_examples=60, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_of_a_signed_order_is_refused(position, bit):
    text = bytearray(json.dumps(order(), sort_keys=True).encode())
    position %= len(text)
    text[position] ^= 1 << bit
    try:
        forged = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return  # not even JSON any more: nothing to open
    if forged == order() or forged == json.loads(json.dumps(order())):
        return  # the flip hit insignificant whitespace or an equivalent escape
    with pytest.raises(SecAggError):
        open_order(forged, COORDINATOR_PUBLIC, "f", 3, "train", "s1")


SILO = {s: crypto.new_identity() for s in ("s0", "s1")}
KEYS = {s: crypto.identity_public(k) for s, k in SILO.items()}


def manifest(silo="s0", round_number=3, phase="train", federation="f", n_samples=5):
    return Manifest(federation=federation, round=round_number, phase=phase, silo=silo,
                    result=TrainResult(n_samples=n_samples, steps=1, train_loss=0.5) if phase == "train"
                    else ProtocolResult())


class Canned:
    """A dispatcher whose silos answer with given (signed or not) manifests."""

    def __init__(self, answers):
        self.answers = answers

    def run(self, call, on_done=None):
        deliveries = [Delivery(silo_id=s, signed=self.answers[s]) for s in call.order.silos]
        for delivery in deliveries:
            if on_done is not None:
                on_done(delivery)
        return deliveries


def dispatch(answers, keys=KEYS, phase="train"):
    call = PhaseCall(order=Order(federation="f", round=3, phase=phase, silos=tuple(answers)), signed={})
    seen = []
    outcomes = Verified(Canned(answers), "f", keys).run(call, on_done=seen.append)
    assert [o.silo_id for o in seen] == [o.silo_id for o in outcomes]  # progress sees verified outcomes
    return {o.silo_id: o for o in outcomes}


def test_signed_manifests_pass_and_their_typed_bodies_reach_the_round():
    got = dispatch({s: seal_manifest(SILO[s], manifest(s, n_samples=7)) for s in SILO})
    assert {s: o.manifest.result.n_samples for s, o in got.items()} == {"s0": 7, "s1": 7}


@pytest.mark.parametrize(("answer", "reason"), [
    (manifest("s0").to_dict(), "BadSignature"),                                   # unsigned
    (seal_manifest(SILO["s1"], manifest("s0")), "BadSignature"),                 # s1's key, claiming to be s0
    (seal_manifest(SILO["s0"], manifest("s0", round_number=2)), "StaleMessage"),  # replayed from round 2
    (seal_manifest(SILO["s0"], manifest("s0", phase="masked")), "StaleMessage"),  # another phase's manifest
    (seal_manifest(SILO["s0"], manifest("s0", federation="g")), "StaleMessage"),  # another federation's
    (seal_manifest(crypto.new_identity(), manifest("s0")), "BadSignature"),      # a key not on the roster
])
def test_forged_replayed_or_foreign_manifests_drop_their_silo_with_the_reason(answer, reason):
    got = dispatch({"s0": answer, "s1": seal_manifest(SILO["s1"], manifest("s1"))})
    assert got["s0"].manifest is None and reason in got["s0"].error and "manifest rejected" in got["s0"].error
    assert got["s1"].manifest is not None


def test_a_signed_body_that_is_not_a_manifest_is_refused_as_malformed():
    from fl_core.messages import header

    signed = crypto.seal(SILO["s0"], header("f", 3, "train", "s0"),
                         {"federation": "f", "round": 3, "phase": "train", "silo": "s0", "status": "ok",
                          "result": {"n_samples": "seven", "steps": 1, "train_loss": 0.1}}).to_dict()
    got = dispatch({"s0": signed})
    assert got["s0"].manifest is None and "MalformedMessage" in got["s0"].error and "n_samples" in got["s0"].error


def test_a_silo_off_the_roster_is_refused_even_with_its_old_key():
    signed = seal_manifest(SILO["s0"], manifest("s0"))
    got = dispatch({"s0": signed}, keys={"s1": KEYS["s1"]})  # s0 offboarded before this round
    assert got["s0"].manifest is None and "not on this round's roster" in got["s0"].error


def test_a_body_edited_after_signing_is_refused():
    signed = seal_manifest(SILO["s0"], manifest("s0", n_samples=7))
    signed["body"]["result"]["n_samples"] = 7000
    assert "BadSignature" in dispatch({"s0": signed})["s0"].error


# -- signed records in the exchange ---------------------------------------------------------------
def test_a_round_record_is_read_only_with_a_valid_signature_and_binding(tmp_path):
    exchange = Exchange(LocalObjectStore(tmp_path), "f")
    key = exchange.record_key(4)
    exchange.put_signed_json(key, {"round": 4, "global": GLOBAL.to_dict()}, COORDINATOR, record_header("f", 4))
    assert exchange.read_signed_json(key, COORDINATOR_PUBLIC, record_header("f", 4))["round"] == 4
    with pytest.raises(IntegrityError, match="signature does not verify"):  # bound to round 4, read as round 5
        exchange.read_signed_json(key, COORDINATOR_PUBLIC, record_header("f", 5))
    with pytest.raises(IntegrityError, match="signature does not verify"):
        exchange.read_signed_json(key, crypto.identity_public(crypto.new_identity()), record_header("f", 4))
    path = tmp_path / key
    path.write_bytes(path.read_bytes().replace(b'"round": 4', b'"round": 40'))  # rewritten behind our back
    with pytest.raises(IntegrityError, match="signed digest"):
        exchange.read_signed_json(key, COORDINATOR_PUBLIC, record_header("f", 4))
    (tmp_path / f"{key}.sig").unlink()
    with pytest.raises(IntegrityError, match="no signature"):
        exchange.read_signed_json(key, COORDINATOR_PUBLIC, record_header("f", 4))


# -- the roster -----------------------------------------------------------------------------------
@pytest.fixture
def parties(tmp_path):
    config = load_config(write_synthetic_federation(tmp_path / "fed", n_silos=3, rows=40))
    return config, StateDir(root=tmp_path / "coordinator"), Exchange(LocalObjectStore(tmp_path / "exchange"), "synth")


def test_enrolment_and_offboarding_write_signed_versions(parties):
    config, state, exchange = parties
    key0 = crypto.identity_public(crypto.new_identity())
    roster, changed = enrol(config, state, exchange, "s0", key0)
    assert changed and roster.version == 1 and roster.keys() == {"s0": key0}
    assert enrol(config, state, exchange, "s0", key0) == (roster, False)  # idempotent
    silos, absent = roster.participants(config)
    assert silos == ["s0"] and "not enrolled" in absent["s1"] and "fedsilo silo add" in absent["s1"]
    roster, _ = offboard(config, state, exchange, "s0")
    assert roster.version == 2 and roster.members == {} and "offboarded" in roster.participants(config)[1]["s0"]
    coordinator = crypto.identity_public(RosterStore(state, "synth")._identity())
    assert published_roster(exchange, coordinator) == RosterStore(state, "synth").load() == roster


def test_a_silo_cannot_be_rekeyed_silently(parties):
    config, state, exchange = parties
    enrol(config, state, exchange, "s1", crypto.identity_public(crypto.new_identity()))
    other = crypto.identity_public(crypto.new_identity())
    with pytest.raises(EnrolmentError, match="--rekey"):
        enrol(config, state, exchange, "s1", other)
    roster, changed = enrol(config, state, exchange, "s1", other, rekey=True)
    assert changed and roster.keys()["s1"] == other


def test_a_tampered_roster_is_refused(parties):
    config, state, exchange = parties
    enrol(config, state, exchange, "s0", crypto.identity_public(crypto.new_identity()))
    store = RosterStore(state, "synth")
    document = json.loads(store.path.read_text())
    document["body"]["members"]["s0"]["ed25519"] = crypto.b64(crypto.identity_public(crypto.new_identity()))
    store.path.write_text(json.dumps(document))
    with pytest.raises(EnrolmentError, match="signature"):
        store.load()


def test_embedded_enrolment_takes_every_configured_silo_but_not_an_offboarded_one(parties):
    config, state, exchange = parties
    roster = enrol_local(config, state, exchange)
    assert sorted(roster.members) == ["s0", "s1", "s2"]
    assert enrol_local(config, state, exchange).version == roster.version  # nothing new: no new version
    offboard(config, state, exchange, "s2")
    assert sorted(enrol_local(config, state, exchange).members) == ["s0", "s1"]


def test_keys_are_read_as_printed_or_from_the_file_silo_init_writes(tmp_path):
    public = crypto.identity_public(crypto.new_identity())
    card = tmp_path / "s0.pub.json"
    card.write_text(json.dumps({"ed25519": crypto.b64(public)}))
    assert parse_public_key(crypto.b64(public)) == parse_public_key(str(card)) == public
    with pytest.raises(EnrolmentError, match="neither"):
        parse_public_key("not-a-key")


def test_an_order_of_another_attempt_at_the_round_is_refused():
    """A silo run of an interrupted attempt never acts on the orders of the attempt that redoes it."""
    with pytest.raises(StaleMessage, match="another attempt"):
        open_order(order(attempt="aaaa0000"), COORDINATOR_PUBLIC, "f", 3, "train", "s1", attempt="bbbb1111")
    assert open_order(order(attempt="aaaa0000"), COORDINATOR_PUBLIC, "f", 3, "train", "s1",
                      attempt="aaaa0000").attempt == "aaaa0000"
