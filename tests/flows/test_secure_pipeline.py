"""Secure aggregation inside the pipeline: dropouts in every phase, too few survivors, tampering,
replay, and secrets that never leave the silo."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from pipeline_helpers import client, global_of, reference_round, train, use

from fl_core.errors import QuorumError
from infra.exchange import Exchange, LocalObjectStore

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.parametrize(
    ("phase", "in_sum", "recovered"),
    [
        ("shares", ["s0", "s2", "s3"], 0),  # s1 never shared: nobody masked with it
        ("masked", ["s0", "s2", "s3"], 1),  # s1 shared, then vanished: its pairwise masks are recovered
        ("unmask", ["s0", "s1", "s2", "s3"], 0),  # s1's input is in the sum; the others reveal its seed
    ],
)
def test_a_silo_vanishing_in_any_protocol_phase_is_survived(federation, state_home, monkeypatch, phase, in_sum, recovered):
    config_path = federation(4)
    use(monkeypatch, drops={phase: {"s1"}})
    record = train(config_path)["rounds"][0]

    assert record["silos_in"] == in_sum
    assert record["secure"]["recovered"] == recovered
    if phase != "unmask":
        assert record["silos_out"]["s1"].startswith(f"dropped at {phase}")
    np.testing.assert_allclose(global_of(state_home, record), reference_round(config_path, in_sum), rtol=0, atol=1e-4)
    job = client(state_home).search_runs(
        [client(state_home).get_experiment_by_name("synth").experiment_id], "tags.`fedsilo.kind` = 'job'"
    )[0]
    assert job.data.metrics["secagg.masked"] == len(in_sum)
    assert job.data.metrics["secagg.recovered"] == recovered
    assert {f"time.secagg.{p}_s" for p in ("shares", "masked", "unmask")} <= set(job.data.metrics)
    assert job.data.metrics["secagg.bytes.s0"] > 0


def test_too_few_survivors_abort_the_round_and_change_nothing(federation, state_home, monkeypatch):
    config_path = federation(3)  # threshold 2
    train(config_path)
    mlflow = client(state_home)
    before = sorted(str(v.version) for v in mlflow.search_model_versions("name = 'synth'"))

    use(monkeypatch, drops={"masked": {"s0", "s1"}})
    with pytest.raises(QuorumError) as caught:
        train(config_path)
    assert "threshold" in str(caught.value) or "min_silos" in str(caught.value)
    assert "s0" in str(caught.value) and "s1" in str(caught.value)
    assert sorted(str(v.version) for v in mlflow.search_model_versions("name = 'synth'")) == before
    assert Exchange(LocalObjectStore(state_home / "exchange"), "synth").committed_rounds() == [0, 1]


@pytest.mark.parametrize("damage", ["value", "file"])
def test_a_tampered_masked_vector_drops_its_silo_and_the_round_recovers_it(federation, state_home, monkeypatch, damage):
    import pyarrow as pa

    def tamper(phase, round_number):
        if phase != "masked":
            return
        path = state_home / "exchange" / f"federations/synth/rounds/{round_number}/secagg/masked/s2.arrow"
        if damage == "value":  # a well-formed file whose first value changed by one
            values = pa.ipc.open_file(pa.BufferReader(path.read_bytes())).read_all().column("values").to_numpy().copy()
            values[0] ^= 1
            sink = pa.BufferOutputStream()
            table = pa.table({"values": pa.array(values)})
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            path.write_bytes(sink.getvalue().to_pybytes())
        else:  # a byte flipped in the file's structure
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x01
            path.write_bytes(bytes(data))

    config_path = federation(4)
    use(monkeypatch, after=tamper)
    record = train(config_path)["rounds"][0]
    assert record["silos_in"] == ["s0", "s1", "s3"]
    expected = "BadSignature" if damage == "value" else "unreadable"
    assert expected in record["silos_out"]["s2"]
    assert record["secure"]["recovered_silos"] == ["s2"]
    np.testing.assert_allclose(global_of(state_home, record), reference_round(config_path, ["s0", "s1", "s3"]), atol=1e-4)


def test_a_replayed_message_from_the_previous_round_is_refused(federation, state_home, monkeypatch):
    config_path = federation(4)
    train(config_path)

    def replay(phase, round_number):
        if phase == "train" and round_number == 2:
            base = state_home / "exchange" / "federations/synth/rounds"
            (base / "2/secagg/keys/s3.json").write_bytes((base / "1/secagg/keys/s3.json").read_bytes())

    use(monkeypatch, after=replay)
    record = train(config_path)["rounds"][0]
    assert "s3" not in record["silos_in"]
    assert "StaleMessage" in record["silos_out"]["s3"]


def _forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), base64.b64encode(secret)]


@pytest.mark.parametrize("noise", [False, True])
def test_round_secrets_never_leave_the_silo(federation, state_home, monkeypatch, noise):
    """Keys (the round's private keys and the peers' share-encryption keys), seeds, shares, unmasked
    updates and distributed-DP noise shares: not in the exchange, MLflow, Prefect's database or logs."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    import infra.keystore as keystore

    secrets: list[bytes] = []
    share_keys: set[bytes] = set()
    save_state, save_update = keystore.RoundSecrets.save_state, keystore.RoundSecrets.save_update

    def capture_state(self, state):
        raw = state.to_dict()
        secrets.extend(bytes.fromhex(raw[k]) for k in ("enc_private", "mask_private") if raw[k])
        if raw["self_seed"]:
            secrets.append(bytes.fromhex(raw["self_seed"]))
        for share in [*raw["own_shares"].values(), *(v for held in raw["held"].values() for v in held.values())]:
            secrets.append(int(share, 16).to_bytes(33, "big"))
        keys = [bytes.fromhex(key) for key in raw["share_keys"].values()]  # the peers' share-encryption keys
        assert not raw["self_seed"] or len(keys) == len(raw["peers"]) - 1  # kept from the shares phase on
        secrets.extend(keys)
        share_keys.update(keys)
        return save_state(self, state)

    def capture_update(self, delta, n_samples, noise=None):
        secrets.append(np.asarray(delta, dtype=np.float32).tobytes()[:64])  # the update's leading bytes
        if noise is not None:
            secrets.append(np.asarray(noise, dtype=np.int64).tobytes()[:64])
            secrets.append(np.asarray(noise[:16], dtype=np.int32).tobytes())
        return save_update(self, delta, n_samples, noise)

    monkeypatch.setattr(keystore.RoundSecrets, "save_state", capture_state)
    monkeypatch.setattr(keystore.RoundSecrets, "save_update", capture_update)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    from prefect.logging.configuration import setup_logging

    setup_logging()  # configure Prefect's logging now, so that a later first setup cannot drop this handler
    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    config_path = federation(3)
    if noise:
        raw = yaml.safe_load(config_path.read_text())
        raw["aggregation"]["privacy"] = {"epsilon": 100.0, "clip_norm": 5.0, "noise_multiplier": 1.0,
                                         "placement": "distributed"}
        config_path.write_text(yaml.safe_dump(raw))
    try:
        record = train(config_path, rounds=1)["rounds"][0]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert len(secrets) > 20 and records
    assert len(share_keys) == 3 * 2  # each of the 3 silos kept a key for each of its 2 peers
    assert (record["federation_privacy"] is not None) == noise

    places: list[Path] = [p for p in (state_home / "exchange").rglob("*") if p.is_file()]
    places += [p for p in (state_home / "mlartifacts").rglob("*") if p.is_file()]
    places.append(state_home / "mlflow.db")
    database = PREFECT_API_DATABASE_CONNECTION_URL.value()
    if database and database.startswith("sqlite"):
        places.append(Path(database.split("///", 1)[1]))
    haystacks = [p.read_bytes() for p in places] + ["\n".join(records).encode()]
    for secret in secrets:
        for form in _forms(secret):
            assert not any(form in hay for hay in haystacks), "a round secret reached a stored artifact or log"
    leftovers = list((state_home / "silos").rglob("secagg/*"))
    assert leftovers == []  # each silo deleted its round secrets once it had revealed its shares
    pem = state_home / "silos" / "s0" / "identity" / "ed25519.pem"
    assert pem.stat().st_mode & 0o077 == 0  # the identity key is readable by its owner only
    roster = json.loads((state_home / "exchange" / "federations/synth/roster/v0001.json").read_text())
    assert set(roster["body"]["members"]) == {"s0", "s1", "s2"}  # public keys only, in the signed roster


@pytest.mark.parametrize(
    ("phase", "in_sum", "recovered", "evaluated"),
    [
        ("train", ["s0", "s2", "s3"], 0, ["s0", "s1", "s2", "s3"]),  # no update, no keys: never in the protocol
        ("shares", ["s0", "s2", "s3"], 0, ["s0", "s1", "s2", "s3"]),
        ("masked", ["s0", "s2", "s3"], 1, ["s0", "s1", "s2", "s3"]),  # shared, then crashed: masks recovered
        ("unmask", ["s0", "s1", "s2", "s3"], 0, ["s0", "s1", "s2", "s3"]),  # its input is in the sum
        ("evaluate", ["s0", "s1", "s2", "s3"], 0, ["s0", "s2", "s3"]),  # scored by the other holdouts only
    ],
)
def test_a_silo_crashing_in_any_phase_of_its_round_is_dropped_and_the_round_recovers(
        federation, state_home, monkeypatch, phase, in_sum, recovered, evaluated):
    config_path = federation(4)
    use(monkeypatch, crashes={phase: {"s1"}})
    record = train(config_path)["rounds"][0]

    assert record["silos_in"] == in_sum
    assert record["secure"]["recovered"] == recovered
    assert record["evaluated"] == evaluated
    if phase in ("train", "shares", "masked"):
        assert record["silos_out"]["s1"] == f"dropped at {phase}: RuntimeError: s1 crashed in {phase} (injected)"
    if phase == "evaluate":
        assert "crashed in evaluate" in record["evaluation_out"]["s1"]
    np.testing.assert_allclose(global_of(state_home, record), reference_round(config_path, in_sum), rtol=0, atol=1e-4)


def test_an_order_of_one_phase_replayed_in_the_next_is_refused_by_the_silo(federation, state_home, monkeypatch):
    """s2 is handed the coordinator's (genuine, signed) order of the previous phase in place of each
    phase's own: it refuses it, answers why, does nothing, and the round goes on without it."""
    from pipeline_helpers import Scripted

    import flows.round

    class Replaying(Scripted):
        previous = None

        def _answer(self, silo, call):
            if silo == "s2" and self.previous is not None and call.phase == "shares":
                from dataclasses import replace

                call = replace(call, signed=self.previous.signed)  # the train order, in the shares phase
            return super()._answer(silo, call)

        def run(self, call, on_done=None):
            deliveries = super().run(call, on_done)
            self.previous = call
            return deliveries

    monkeypatch.setattr(flows.round, "make_dispatcher", lambda config, state: Replaying(config, state))
    record = train(federation(4))["rounds"][0]
    assert record["silos_in"] == ["s0", "s1", "s3"]
    assert "order refused (StaleMessage" in record["silos_out"]["s2"]
    assert record["secure"]["recovered"] == 0  # it never shared: nobody masked with it
