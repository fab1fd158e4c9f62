"""A silo's files: reading its Parquet table, and the validation cache keyed by the file's digest
and the contract hash (a changed file or contract is validated again; a damaged cache entry is a
miss, never a crash)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fl_core.errors import DataError
from infra.silo_data import ValidationCache, encode_table, file_digest, read_table

DIGEST = "ab" * 32
OTHER_DIGEST = "cd" * 32


# --- read_table --------------------------------------------------------------------------------


def test_read_table_returns_the_written_table(tmp_path, conforming_table):
    path = tmp_path / "clinic.parquet"
    pq.write_table(conforming_table, path)
    table = read_table(path, "clinic")
    assert table.equals(conforming_table)


def test_a_missing_file_raises_data_error_naming_silo_and_path(tmp_path):
    path = tmp_path / "nowhere" / "hungary.parquet"
    with pytest.raises(DataError) as caught:
        read_table(path, "hungary")
    message = str(caught.value)
    assert "hungary" in message
    assert str(path) in message
    assert "does not exist" in message


@pytest.mark.parametrize(
    "content",
    [
        b"id,age,sex\n1,63,Male\n",  # a CSV saved under a .parquet name
        b"",  # an empty file
        b"PAR1" + b"\x00" * 64,  # the magic bytes, then nothing sensible
    ],
    ids=["csv", "empty", "truncated"],
)
def test_a_non_parquet_file_raises_data_error_naming_silo_and_path(tmp_path, content):
    path = tmp_path / "switzerland.parquet"
    path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        read_table(path, "switzerland")
    message = str(caught.value)
    assert "switzerland" in message
    assert str(path) in message
    assert "not a readable Parquet file" in message
    assert "\n" not in message  # one line, as the CLI prints it
    assert caught.value.__cause__ is None


def test_a_truncated_parquet_file_raises_data_error(tmp_path, conforming_table):
    path = tmp_path / "cleveland.parquet"
    pq.write_table(conforming_table, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="cleveland"):
        read_table(path, "cleveland")


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 5000  # more than one read block
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()


# --- ValidationCache ---------------------------------------------------------------------------


def test_put_then_get_returns_the_summary(tmp_path, conforming_summary, contract):
    cache = ValidationCache(tmp_path / "cache")
    assert cache.get(DIGEST, contract.contract_hash()) is None
    cache.put(DIGEST, contract.contract_hash(), conforming_summary)
    assert cache.get(DIGEST, contract.contract_hash()) == conforming_summary
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".json"]  # no temporary file left


def test_a_failed_summary_round_trips_through_the_cache(tmp_path, validate, make_table, contract):
    failed = validate(make_table(split=["train"] * 35 + ["holdout"] * 5))
    assert not failed.passed
    cache = ValidationCache(tmp_path)
    cache.put(DIGEST, contract.contract_hash(), failed)
    assert cache.get(DIGEST, contract.contract_hash()) == failed


def test_a_changed_contract_hash_is_a_miss(tmp_path, conforming_summary, contract):
    cache = ValidationCache(tmp_path)
    cache.put(DIGEST, contract.contract_hash(), conforming_summary)
    stricter = dataclasses.replace(contract, min_holdout_rows=contract.min_holdout_rows + 1)
    assert stricter.contract_hash() != contract.contract_hash()
    assert cache.get(DIGEST, stricter.contract_hash()) is None
    assert cache.get(DIGEST, contract.contract_hash()) == conforming_summary


def test_a_changed_data_digest_is_a_miss(tmp_path, conforming_summary, contract):
    cache = ValidationCache(tmp_path)
    cache.put(DIGEST, contract.contract_hash(), conforming_summary)
    assert cache.get(OTHER_DIGEST, contract.contract_hash()) is None


def test_entries_for_different_keys_do_not_overwrite_each_other(
    tmp_path, conforming_summary, validate, make_table, contract
):
    failed = validate(make_table(disease=[3] * 40))
    cache = ValidationCache(tmp_path)
    cache.put(DIGEST, contract.contract_hash(), conforming_summary)
    cache.put(OTHER_DIGEST, contract.contract_hash(), failed)
    assert cache.get(DIGEST, contract.contract_hash()) == conforming_summary
    assert cache.get(OTHER_DIGEST, contract.contract_hash()) == failed


def test_put_overwrites_the_entry_for_the_same_key(tmp_path, conforming_summary, contract):
    cache = ValidationCache(tmp_path)
    cache.put(DIGEST, contract.contract_hash(), dataclasses.replace(conforming_summary, silo="old"))
    cache.put(DIGEST, contract.contract_hash(), conforming_summary)
    assert cache.get(DIGEST, contract.contract_hash()) == conforming_summary


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"silo": "clinic", "passed": tru',  # cut off mid-write
        b"not json at all",
        b"\xff\xfe\x00\x81 binary garbage",  # not even UTF-8
        b"[1, 2, 3]",
        b"null",
        b'{"silo": "clinic"}',  # valid JSON, missing fields
        b'{"unexpected": 1}',
    ],
    ids=["empty", "truncated", "text", "binary", "list", "null", "partial", "foreign"],
)
def test_a_corrupted_cache_file_is_a_miss_not_a_crash(tmp_path, conforming_summary, contract, content):
    cache = ValidationCache(tmp_path)
    cache.put(DIGEST, contract.contract_hash(), conforming_summary)
    (entry,) = tmp_path.glob("*.json")
    entry.write_bytes(content)
    assert cache.get(DIGEST, contract.contract_hash()) is None
    # ... and the next put repairs it.
    cache.put(DIGEST, contract.contract_hash(), conforming_summary)
    assert cache.get(DIGEST, contract.contract_hash()) == conforming_summary


def test_a_cache_entry_with_a_malformed_outcome_is_a_miss(tmp_path, conforming_summary, contract):
    cache = ValidationCache(tmp_path)
    cache.put(DIGEST, contract.contract_hash(), conforming_summary)
    (entry,) = tmp_path.glob("*.json")
    raw = json.loads(entry.read_text())
    raw["outcomes"] = [{"expectation": "expect_x", "column": None, "success": True, "observed_value": 42}]
    entry.write_text(json.dumps(raw))
    assert cache.get(DIGEST, contract.contract_hash()) is None


def test_the_cache_folder_is_made_on_first_put_only(tmp_path, conforming_summary, contract):
    folder = tmp_path / "state" / "validation"
    cache = ValidationCache(folder)
    assert cache.get(DIGEST, contract.contract_hash()) is None
    assert not folder.exists()  # a lookup has no side effect
    cache.put(DIGEST, contract.contract_hash(), conforming_summary)
    assert folder.is_dir()


def test_a_cached_entry_holds_no_digest_of_the_data(tmp_path, conforming_summary, contract):
    # The file name carries the (truncated) digest; the content is the summary alone.
    cache = ValidationCache(tmp_path)
    cache.put(DIGEST, contract.contract_hash(), conforming_summary)
    (entry,) = tmp_path.glob("*.json")
    assert entry.read_text() == conforming_summary.to_json()
    assert DIGEST not in entry.read_text()


def test_read_table_then_cache_by_file_digest(tmp_path, conforming_table, conforming_summary, contract):
    # The silo flow's use: the digest of the file is the key, so rewriting the file misses.
    path = tmp_path / "clinic.parquet"
    pq.write_table(conforming_table, path)
    cache = ValidationCache(tmp_path / "cache")
    cache.put(file_digest(path), contract.contract_hash(), conforming_summary)
    assert cache.get(file_digest(path), contract.contract_hash()) == conforming_summary
    pq.write_table(conforming_table.slice(1), path)
    assert cache.get(file_digest(path), contract.contract_hash()) is None
    assert read_table(path, "clinic").num_rows == conforming_table.num_rows - 1
    assert isinstance(read_table(path, "clinic"), pa.Table)


# --- encoding a table that passed --------------------------------------------------------------


def test_encode_table_splits_rows_by_the_split_column(conforming_table, contract):
    data = encode_table(conforming_table, contract)
    assert (len(data.y_train), len(data.y_holdout)) == (28, 12)
    assert data.x_train.shape[0] == 28 and data.x_holdout.shape[0] == 12
    labels = np.array(conforming_table.column("disease").to_pylist())
    holdout = np.array(conforming_table.column("split").to_pylist()) == "holdout"
    np.testing.assert_array_equal(data.y_holdout, labels[holdout])
    np.testing.assert_array_equal(data.y_train, labels[~holdout])


def test_categorical_columns_encode_like_plain_ones(tmp_path, conforming_table, contract):
    # pandas categoricals become dictionary columns (in memory, and for strings after a Parquet
    # round trip); their missing values must stay missing in the encoding, not become a category.
    frame = conforming_table.to_pandas()
    for name in ("sex", "cp", "restecg", "slope", "thal", "split"):
        frame[name] = frame[name].astype("category")
    for name in ("age", "trestbps", "chol", "thalch", "ca"):
        frame[name] = frame[name].astype("Int64").astype("category")
    in_memory = pa.Table.from_pandas(frame, preserve_index=False)
    path = tmp_path / "categorical.parquet"
    pq.write_table(in_memory, path)
    from_file = read_table(path, "clinic")
    assert pa.types.is_dictionary(in_memory.schema.field("ca").type)
    assert pa.types.is_dictionary(from_file.schema.field("thal").type)
    assert from_file.column("thal").null_count == conforming_table.column("thal").null_count > 0
    plain = encode_table(conforming_table, contract)
    for table in (in_memory, from_file):
        encoded = encode_table(table, contract)
        for part in ("x_train", "y_train", "x_holdout", "y_holdout"):
            np.testing.assert_array_equal(getattr(encoded, part), getattr(plain, part), err_msg=part)
