"""The whole pipeline with its exchange in an S3 bucket (a moto server process, see tests/e2e/s3_server.py)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import reference_round, train

from infra.exchange import Exchange, ObjectRef
from infra.s3_store import S3ObjectStore

if str(Path(__file__).resolve().parents[1] / "e2e") not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from s3_server import BUCKET  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_harness")
pytest_plugins = ["s3_server"]  # the fixtures moto_s3, s3_env, s3_prefix
SILOS = ["s0", "s1", "s2"]


def test_a_secure_round_exchanges_everything_through_the_bucket(federation, state_home, s3_env, s3_prefix, monkeypatch):
    monkeypatch.setenv("FEDSILO_EXCHANGE", f"s3://{BUCKET}/{s3_prefix}")
    config_path = federation(3)

    record = train(config_path)["rounds"][0]
    assert record["silos_in"] == SILOS

    base = f"{s3_prefix}/federations/synth/rounds/1/"
    keys = [key.removeprefix(base) for key in s3_env.keys(base)]
    client = s3_env.client()

    def read(name: str) -> bytes:
        return client.get_object(Bucket=BUCKET, Key=base + name)["Body"].read()

    assert {"global.arrow", "round.json", "round.json.sig"} <= set(keys)
    published = json.loads(read("round.json"))
    assert published["global"] == record["global"]
    glob = read("global.arrow")
    assert hashlib.sha256(glob).hexdigest() == record["global"]["sha256"] and len(glob) == record["global"]["size"]
    # the secure-aggregation messages: the coordinator's signed sets and each silo's message of each phase
    assert {"secagg/plan.json", "secagg/u1.json", "secagg/u2.json", "secagg/u3.json"} <= set(keys)
    for silo in SILOS:
        assert {f"secagg/shares/{silo}.json", f"secagg/masked/{silo}.json", f"secagg/masked/{silo}.arrow",
                f"secagg/unmask/{silo}.json"} <= set(keys), keys
    assert s3_env.keys(f"{s3_prefix}/federations/synth/rounds/0/") == [
        f"{s3_prefix}/federations/synth/rounds/0/{name}" for name in ("global.arrow", "round.json", "round.json.sig")
    ]

    # read back through the S3 store: the aggregate the pipeline published is round 1 of FedAvg
    exchange = Exchange(S3ObjectStore(BUCKET, s3_prefix), "synth")
    assert exchange.committed_rounds() == [0, 1]
    vector = exchange.get_vector(ObjectRef.from_dict(record["global"]))
    np.testing.assert_allclose(vector, reference_round(config_path, SILOS), rtol=0, atol=1e-4)

    written = [p for p in (state_home / "exchange").rglob("*") if p.is_file()] if (state_home / "exchange").exists() else []
    assert written == []
