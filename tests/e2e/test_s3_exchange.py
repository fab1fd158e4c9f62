"""The S3 exchange against a real S3 API: a moto server process on 127.0.0.1 (see s3_server.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml
from s3_server import BUCKET, free_port

from fl_core.errors import ConfigError, ExchangeError, IntegrityError
from infra.config import load_config, parse_config
from infra.exchange import Exchange, LocalObjectStore, exchange_for, open_store
from infra.s3_store import MiB, S3ObjectStore, parse_s3_url
from infra.state import StateDir
from infra.synthetic import write_synthetic_federation

pytestmark = pytest.mark.e2e
pytest_plugins = ["s3_server"]  # the fixtures moto_s3, s3_env, s3_prefix


@pytest.fixture
def store(s3_env, s3_prefix):
    return S3ObjectStore(BUCKET, s3_prefix)


# -- the ObjectStore protocol -----------------------------------------------------------------------
def test_put_get_exists_list_and_delete_prefix(store, s3_env, s3_prefix):
    assert store.describe() == f"s3://{BUCKET}/{s3_prefix}"
    assert not store.exists("a/b/one.json")
    assert store.list("a") == []

    for key in ("a/b/two.json", "a/b/one.json", "a/bc/three.json", "a/z.json", "other/four.json"):
        store.put(key, key.encode())

    assert store.get("a/b/one.json") == b"a/b/one.json"
    assert store.exists("a/b/one.json") and not store.exists("a/b/none.json")
    assert not store.exists("a/b")  # a "folder" is not an object
    assert store.list("a") == ["a/b/one.json", "a/b/two.json", "a/bc/three.json", "a/z.json"]
    assert store.list("a/b") == ["a/b/one.json", "a/b/two.json"]  # not a/bc/...
    # the objects really are under the store's prefix in the bucket
    assert s3_env.keys(f"{s3_prefix}/") == sorted(
        f"{s3_prefix}/{k}" for k in ("a/b/two.json", "a/b/one.json", "a/bc/three.json", "a/z.json", "other/four.json")
    )

    store.delete_prefix("a/b")
    assert store.list("a") == ["a/bc/three.json", "a/z.json"]
    assert store.list("other") == ["other/four.json"]
    store.delete_prefix("a/b")  # nothing left there: not an error


def test_list_and_delete_prefix_page_through_more_than_one_batch(s3_env, s3_prefix, monkeypatch):
    import infra.s3_store

    monkeypatch.setattr(infra.s3_store, "LIST_PAGE", 7)  # S3 pages by 1000; small pages keep the test fast
    monkeypatch.setattr(infra.s3_store, "DELETE_BATCH", 5)
    client = s3_env.client()
    calls = {"list_objects_v2": 0, "delete_objects": 0}
    def spy(name):
        real = getattr(client, name)

        def counted(**kwargs):
            calls[name] += 1
            return real(**kwargs)
        return counted

    for name in calls:
        monkeypatch.setattr(client, name, spy(name))
    store = S3ObjectStore(BUCKET, s3_prefix, client=client)
    keys = [f"many/{i:03d}" for i in range(23)]
    for key in reversed(keys):
        store.put(key, b"")
    store.put("kept/x", b"x")

    assert store.list("many") == keys
    assert calls["list_objects_v2"] == 4  # 7 + 7 + 7 + 2
    store.delete_prefix("many")
    assert calls["delete_objects"] == 5  # 5 + 5 + 5 + 5 + 3
    assert store.list("many") == [] and s3_env.keys(f"{s3_prefix}/many/") == []
    assert store.list("kept") == ["kept/x"]


def test_a_store_without_prefix_uses_the_bucket_root(s3_env, s3_prefix):
    store = S3ObjectStore(BUCKET, "")
    assert store.describe() == f"s3://{BUCKET}"
    store.put(f"{s3_prefix}/k", b"root")
    assert s3_env.client().get_object(Bucket=BUCKET, Key=f"{s3_prefix}/k")["Body"].read() == b"root"
    assert store.list(s3_prefix) == [f"{s3_prefix}/k"]


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", ".."])
def test_invalid_keys_are_refused_like_the_folder_store(store, key, tmp_path):
    with pytest.raises(ExchangeError, match="invalid object key"):
        store.put(key, b"x")
    with pytest.raises(ExchangeError, match="invalid object key"):
        LocalObjectStore(tmp_path).put(key, b"x")


def test_keys_name_the_same_object_as_in_the_folder_store(store, tmp_path):
    local = LocalObjectStore(tmp_path)
    for target in (store, local):
        target.put("a//b", b"x")
        target.put("./c", b"y")
    assert store.list("a") == local.list("a") == ["a/b"]
    assert store.get("a/b") == b"x" and store.get("c") == b"y" and store.exists("a/./b")
    with pytest.raises(ExchangeError, match="already in the exchange"):
        store.put("a/b", b"z")


def test_objects_are_written_once(store, s3_env, s3_prefix):
    store.put("k.json", b"first")
    with pytest.raises(ExchangeError) as caught:
        store.put("k.json", b"second")
    assert str(caught.value) == "k.json: already in the exchange; objects are written once"
    assert store.get("k.json") == b"first"
    assert s3_env.client().get_object(Bucket=BUCKET, Key=f"{s3_prefix}/k.json")["Body"].read() == b"first"


# -- multipart uploads ------------------------------------------------------------------------------
def _parts_store(s3_prefix, client=None):
    return S3ObjectStore(BUCKET, s3_prefix, client=client, multipart_threshold=5 * MiB, part_size=5 * MiB)


def _pending_uploads(server, s3_prefix):
    return server.client().list_multipart_uploads(Bucket=BUCKET, Prefix=f"{s3_prefix}/").get("Uploads", [])


def test_a_large_object_is_uploaded_in_parts_and_read_back_identical(s3_env, s3_prefix):
    store = _parts_store(s3_prefix)
    data = os.urandom(12_000_000)  # parts of 5 MiB, 5 MiB and the rest
    store.put("big.arrow", data)

    head = s3_env.client().head_object(Bucket=BUCKET, Key=f"{s3_prefix}/big.arrow")
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentLength"] == len(data)
    assert store.get("big.arrow") == data
    assert _pending_uploads(s3_env, s3_prefix) == []

    with pytest.raises(ExchangeError, match="already in the exchange"):
        store.put("big.arrow", os.urandom(12_000_000))
    assert store.get("big.arrow") == data
    assert _pending_uploads(s3_env, s3_prefix) == []  # the refused upload was aborted


def test_a_small_object_is_one_put_under_the_threshold(s3_env, s3_prefix):
    store = _parts_store(s3_prefix)
    store.put("small", b"x" * (5 * MiB))  # exactly the threshold: not above it
    head = s3_env.client().head_object(Bucket=BUCKET, Key=f"{s3_prefix}/small")
    assert "-" not in head["ETag"]


def test_a_failed_part_leaves_no_object_and_no_pending_upload(s3_env, s3_prefix, monkeypatch):
    from botocore.exceptions import ClientError

    client = s3_env.client()
    real_upload_part = client.upload_part
    calls = []

    def failing_upload_part(**kwargs):
        calls.append(kwargs["PartNumber"])
        if kwargs["PartNumber"] == 2:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, "UploadPart")
        return real_upload_part(**kwargs)

    monkeypatch.setattr(client, "upload_part", failing_upload_part)
    store = _parts_store(s3_prefix, client=client)
    with pytest.raises(ExchangeError) as caught:
        store.put("big.arrow", os.urandom(12_000_000))

    assert calls == [1, 2]
    assert "big.arrow" in str(caught.value) and "InternalError" in str(caught.value)
    assert not store.exists("big.arrow")
    assert s3_env.keys(f"{s3_prefix}/") == []
    assert _pending_uploads(s3_env, s3_prefix) == []


def test_part_size_below_the_s3_minimum_is_refused(s3_env):
    with pytest.raises(ConfigError, match="minimum"):
        S3ObjectStore(BUCKET, "p", part_size=MiB)


# -- failures are ExchangeErrors that name what and where --------------------------------------------
def test_a_missing_key_names_key_and_exchange(store, s3_prefix):
    with pytest.raises(ExchangeError) as caught:
        store.get("federations/f/rounds/1/round.json")
    assert str(caught.value) == f"federations/f/rounds/1/round.json: not in the exchange at s3://{BUCKET}/{s3_prefix}"


@pytest.mark.parametrize("operation", ["get", "put", "exists", "list"])
def test_a_missing_bucket_is_named_and_never_created(s3_env, operation):
    store = S3ObjectStore("no-such-bucket", "p")
    with pytest.raises(ExchangeError) as caught:
        if operation == "put":
            store.put("k.json", b"x")
        elif operation == "list":
            store.list("k")
        else:
            getattr(store, operation)("k.json")
    message = str(caught.value)
    assert "'no-such-bucket' does not exist" in message and "NoSuchBucket" in message
    assert message.startswith("k")
    names = [b["Name"] for b in s3_env.client().list_buckets()["Buckets"]]
    assert "no-such-bucket" not in names


def test_an_unreachable_endpoint_is_an_exchange_error(s3_env, s3_prefix):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = S3ObjectStore(BUCKET, s3_prefix, endpoint_url=endpoint)
    for call in (lambda: store.get("k.json"), lambda: store.put("k.json", b"x"), lambda: store.exists("k.json")):
        with pytest.raises(ExchangeError) as caught:
            call()
        assert str(caught.value).startswith("k.json: cannot reach the S3 endpoint")
        assert endpoint in str(caught.value) and "EndpointConnectionError" in str(caught.value)


def test_missing_credentials_are_an_exchange_error(s3_env, s3_prefix, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    store = S3ObjectStore(BUCKET, s3_prefix)
    with pytest.raises(ExchangeError, match=r"^k\.json: no usable AWS credentials .*NoCredentialsError"):
        store.get("k.json")


# -- open_store and the config -----------------------------------------------------------------------
def test_open_store_reads_s3_urls(s3_env):
    store = open_store(f"s3://{BUCKET}/team/exchange/")
    assert isinstance(store, S3ObjectStore) and store.describe() == f"s3://{BUCKET}/team/exchange"
    assert parse_s3_url(f"s3://{BUCKET}") == (BUCKET, "")
    assert isinstance(open_store("file:///tmp/x"), LocalObjectStore)


@pytest.mark.parametrize(
    "location",
    ["s3://", "s3:///prefix", "s3://Upper-Case/p", "s3://ab/p", "s3://bucket:9000/p", "s3://bucket/a/../b",
     "s3://bucket/a//b", "s3://bucket/p?x=1"],
)
def test_malformed_s3_urls_are_config_errors_naming_them(location):
    with pytest.raises(ConfigError) as caught:
        open_store(location)
    assert "storage.exchange" in str(caught.value) and repr(location) in str(caught.value)


def test_credentials_in_an_s3_url_are_refused_without_echoing_them():
    with pytest.raises(ConfigError) as caught:
        open_store("s3://AKIDEXAMPLE:s3cr3t@bucket/p")
    assert "s3cr3t" not in str(caught.value) and "AKIDEXAMPLE" not in str(caught.value)


def test_other_schemes_are_still_refused():
    with pytest.raises(ConfigError, match="gs://"):
        open_store("gs://bucket/p")


def test_the_env_override_and_config_fields_reach_the_store(s3_env, s3_prefix, tmp_path):
    storage = {"endpoint_url": s3_env.endpoint, "region": "us-east-1"}
    path = write_synthetic_federation(tmp_path / "fed", n_silos=3, overrides={"storage": storage})
    raw = yaml.safe_load(path.read_text())
    state = StateDir(tmp_path / "state")
    local = exchange_for(load_config(path, env={}), state)
    assert isinstance(local.store, LocalObjectStore) and local.store.root == state.exchange

    config = load_config(path, env={"FEDSILO_EXCHANGE": f"s3://{BUCKET}/{s3_prefix}"})
    assert config.storage.endpoint_url == s3_env.endpoint and config.storage.region == "us-east-1"
    exchange = exchange_for(config, state)
    assert exchange.store.describe() == f"s3://{BUCKET}/{s3_prefix}"
    exchange.put_json(exchange.record_key(0), {"round": 0})
    assert s3_env.keys(f"{s3_prefix}/") == [f"{s3_prefix}/federations/synth/rounds/0/round.json"]
    assert not any(p.is_file() for p in state.exchange.rglob("*")) if state.exchange.exists() else True

    for bad in ({"endpoint_url": "127.0.0.1:9000"}, {"region": "US East"}):
        with pytest.raises(ConfigError, match=f"storage.{next(iter(bad))}"):
            parse_config({**raw, "storage": bad}, source=path, env={})


# -- the Exchange over S3 ----------------------------------------------------------------------------
def test_vectors_over_s3_match_the_folder_store_and_tampering_is_caught(store, s3_env, s3_prefix, tmp_path):
    vector = np.random.default_rng(7).standard_normal(10_001).astype(np.float32)
    binding = {"federation": "synth", "round": 3, "silo": "s1", "phase": "train"}
    over_s3 = Exchange(store, "synth")
    on_disk = Exchange(LocalObjectStore(tmp_path / "exchange"), "synth")
    key = over_s3.update_key(3, "s1")

    ref = over_s3.put_vector(key, vector, binding)
    assert ref == on_disk.put_vector(key, vector, binding)
    np.testing.assert_array_equal(over_s3.get_vector(ref, expect=binding), vector)
    assert over_s3.store.get(key) == on_disk.store.get(key)

    with pytest.raises(IntegrityError, match="bound to silo='s1', expected 's2'"):
        over_s3.get_vector(ref, expect={**binding, "silo": "s2"})

    tampered = vector.copy()
    tampered[0] += 1.0
    forged = Exchange(LocalObjectStore(tmp_path / "forged"), "synth").put_vector(key, tampered, binding)
    s3_env.client().put_object(  # someone with write access replaces the object behind the exchange's back
        Bucket=BUCKET, Key=f"{s3_prefix}/{key}", Body=(tmp_path / "forged" / key).read_bytes()
    )
    assert forged.size == ref.size and forged.sha256 != ref.sha256
    with pytest.raises(IntegrityError, match="does not match its published digest"):
        over_s3.get_vector(ref, expect=binding)


def test_committed_rounds_and_clearing_an_uncommitted_round_over_s3(store):
    exchange = Exchange(store, "synth")
    exchange.put_json(exchange.record_key(0), {"round": 0})
    exchange.put_json(exchange.record_key(1), {"round": 1})
    exchange.put_bytes(exchange.update_key(2, "s0"), b"partial")
    assert exchange.committed_rounds() == [0, 1]

    assert exchange.clear_uncommitted(2) is True
    assert store.list(exchange.round_prefix(2)) == []
    assert exchange.clear_uncommitted(2) is False
    with pytest.raises(ExchangeError, match="round 1 is committed"):
        exchange.clear_uncommitted(1)
    assert exchange.committed_rounds() == [0, 1]
