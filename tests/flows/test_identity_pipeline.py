"""The roster and the signatures in the pipeline: an offboarded silo sits out from the next round
and comes back when enrolled again; a silo whose key is not the enrolled one has its manifests
refused; a silo refuses an order whose references were edited; a round record rewritten behind
the coordinator's back stops the next job before anything is registered."""

from __future__ import annotations

import json

import pytest
from pipeline_helpers import client, train

from fl_core.errors import IntegrityError
from fl_core.messages import END, ObjectRef, Order, open_manifest, seal_order
from fl_core.secagg import crypto
from infra.config import load_config
from infra.exchange import Exchange, LocalObjectStore
from infra.keystore import coordinator_identity, silo_identity
from infra.roster import enrol, offboard
from infra.state import StateDir

pytestmark = pytest.mark.usefixtures("prefect_harness")


def parties(config_path, state_home):
    config = load_config(config_path)
    return config, StateDir(root=state_home), Exchange(LocalObjectStore(state_home / "exchange"), "synth")


def test_an_offboarded_silo_sits_out_from_the_next_round_and_returns_when_enrolled(federation, state_home):
    config_path = federation(3)
    first = train(config_path, rounds=1)["rounds"][0]
    assert first["silos_in"] == ["s0", "s1", "s2"] and first["roster_version"] == 1

    config, state, exchange = parties(config_path, state_home)
    offboard(config, state, exchange, "s2")
    second = train(config_path, rounds=1)["rounds"][0]
    assert second["silos_in"] == ["s0", "s1"] and "offboarded" in second["silos_out"]["s2"]
    assert second["roster_version"] == 2
    assert not any("s2" in key for key in exchange.store.list(f"{exchange.round_prefix(2)}/secagg"))

    public = crypto.identity_public(silo_identity(state, "s2"))
    enrol(config, state, exchange, "s2", public)
    third = train(config_path, rounds=1)["rounds"][0]
    assert third["silos_in"] == ["s0", "s1", "s2"] and third["roster_version"] == 3
    version = client(state_home).get_model_version("synth", str(third["version"]))
    assert version.tags["fedsilo.roster_version"] == "3"


def test_a_silo_with_another_key_than_the_enrolled_one_is_refused(federation, state_home):
    config_path = federation(3)
    train(config_path, rounds=1)
    pem = state_home / "silos" / "s1" / "identity" / "ed25519.pem"
    pem.unlink()  # s1 makes itself a new identity: nobody enrolled it
    record = train(config_path, rounds=1)["rounds"][0]
    assert record["silos_in"] == ["s0", "s2"]
    assert "manifest rejected" in record["silos_out"]["s1"] and "BadSignature" in record["silos_out"]["s1"]


def test_a_silo_refuses_an_order_whose_references_were_edited(federation, state_home):
    from flows.silo import silo_flow

    config_path = federation(2)
    train(config_path, rounds=1)
    config, state, exchange = parties(config_path, state_home)
    record = exchange.read_json_key(exchange.record_key(1))
    identity = coordinator_identity(state)
    attempt = "0123456789abcdef"
    order = seal_order(identity, Order(federation="synth", round=2, phase="train", silos=("s0", "s1"), attempt=attempt,
                                       refs={"global": ObjectRef.from_dict(record["global"])}))
    order["body"]["refs"]["global"]["key"] = exchange.global_key(0)  # point s0 at another model
    exchange.put_json(exchange.order_key(2, attempt, "train"), order)  # as the coordinator leaves it for s0's run
    end = seal_order(identity, Order(federation="synth", round=2, phase=END, silos=("s0", "s1"), attempt=attempt))
    exchange.put_json(exchange.order_key(2, attempt, END), end)
    summary = silo_flow(federation="synth", silo_id="s0", round_number=2, attempt=attempt, config_path=str(config_path))
    assert summary["answered"] == ["train"]
    answer = exchange.read_json_key(exchange.manifest_key(2, attempt, "train", "s0"))
    manifest = open_manifest(answer, crypto.identity_public(silo_identity(state, "s0")), "synth", 2, "train", "s0")
    assert manifest.status == "sat_out" and "BadSignature" in manifest.reason  # refused, and said why, signed
    assert not [k for k in exchange.store.list(exchange.round_prefix(2)) if "/orders/" not in k and "/manifests/" not in k]
    assert not (state_home / "silos" / "s0" / "secagg").exists() or not any((state_home / "silos" / "s0" / "secagg").iterdir())


def test_a_rewritten_round_record_stops_the_next_job_before_anything_is_registered(federation, state_home):
    config_path = federation(2)
    train(config_path, rounds=1)
    config, state, exchange = parties(config_path, state_home)
    path = state_home / "exchange" / exchange.record_key(1)
    record = json.loads(path.read_text())
    record["global"] = json.loads((state_home / "exchange" / exchange.record_key(0)).read_text())["global"]
    path.write_text(json.dumps(record, sort_keys=True))  # round 1 now claims the initial model
    with pytest.raises(IntegrityError, match="signed digest"):
        train(config_path, rounds=1)
    assert len(client(state_home).search_model_versions("name = 'synth'")) == 1
    assert exchange.committed_rounds() == [0, 1]
