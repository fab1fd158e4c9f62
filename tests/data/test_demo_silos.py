"""The example federation's silo tables, built from the UCI Heart Disease CSV: one file per
hospital, all passing the contract, with seeded stratified splits."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from heart_tables import EXAMPLE_DIR

from infra.config import load_config
from infra.demo_data import FIRST_HUNGARIAN_ID, HOLDOUT_FRACTION, write_heart_silos
from validation import validate_table
from validation.schema import expected_arrow_schema

SILO_ROWS = {"cleveland": 303, "hungary": 294, "switzerland": 123, "va_long_beach": 200}
SOURCE = "heart_disease_uci.csv"


def copy_example(folder: Path, seed: int | None = None) -> Path:
    """The example's config and CSV in `folder` (the silos' data/ paths resolve there)."""
    folder.mkdir(parents=True)
    text = (EXAMPLE_DIR / "federation.yaml").read_text()
    if seed is not None:
        text = text.replace("seed: 20261124", f"seed: {seed}")
        assert f"seed: {seed}" in text
    (folder / "federation.yaml").write_text(text)
    shutil.copy(EXAMPLE_DIR / SOURCE, folder / SOURCE)
    return folder / "federation.yaml"


def split_sizes(table) -> dict[tuple[int, str], int]:
    frame = table.select(["disease", "split"]).to_pandas()
    return frame.groupby(["disease", "split"]).size().to_dict()


def digests(reports) -> dict[str, str]:
    return {r.silo: hashlib.sha256(r.path.read_bytes()).hexdigest() for r in reports}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The four hospitals written once from a copy of the example."""
    config = load_config(copy_example(tmp_path_factory.mktemp("demo") / "heart"))
    reports = write_heart_silos(config)
    return config, reports


@pytest.fixture(scope="module")
def tables(demo):
    config, reports = demo
    return {r.silo: pq.read_table(r.path) for r in reports}


@pytest.fixture(scope="module")
def source() -> pd.DataFrame:
    return pd.read_csv(EXAMPLE_DIR / SOURCE)


def test_one_file_per_hospital_in_the_copy(demo):
    config, reports = demo
    assert [r.silo for r in reports] == config.silo_ids == list(SILO_ROWS)
    for report in reports:
        assert report.path == config.silo_data_path(report.silo)
        assert report.path.parent == config.source.parent / "data"
        assert report.path.is_file()
    assert sorted(p.name for p in (config.source.parent / "data").iterdir()) == [f"{s}.parquet" for s in SILO_ROWS]


def test_every_file_passes_the_contract(demo, tables):
    config, reports = demo
    for report in reports:
        summary = validate_table(tables[report.silo], config.contract, report.silo)
        assert summary.passed, summary.reasons()
        assert (summary.n_rows, summary.n_train, summary.n_holdout) == (report.rows, report.train, report.holdout)
        assert summary.extra_columns == 0


def test_files_have_the_canonical_schema(demo, tables):
    config, _ = demo
    expected = expected_arrow_schema(config.contract)
    for table in tables.values():
        assert table.schema.equals(expected, check_metadata=False)


def test_row_counts_per_hospital_add_up_to_the_source(demo, tables, source):
    _, reports = demo
    assert {r.silo: r.rows for r in reports} == SILO_ROWS
    assert {silo: t.num_rows for silo, t in tables.items()} == SILO_ROWS
    assert sum(SILO_ROWS.values()) == len(source) == 920
    for report in reports:
        assert report.train + report.holdout == report.rows


def test_the_record_with_id_304_belongs_to_hungary(tables, source):
    # The CSV files id 304 under Cleveland; it is the first Hungarian patient (Cleveland has 303).
    assert FIRST_HUNGARIAN_ID == 304
    record = source.loc[source["id"] == FIRST_HUNGARIAN_ID].iloc[0]
    assert record["dataset"] == "Cleveland"
    assert (source["dataset"] == "Cleveland").sum() == 304
    # Rows keep the source order, so the record is Hungary's first row and not Cleveland's last.
    hungary, cleveland = tables["hungary"].slice(0, 1).to_pylist()[0], tables["cleveland"].slice(302, 1).to_pylist()[0]
    for column in ("age", "sex", "cp", "restecg"):
        assert hungary[column] == record[column], column
    last_cleveland = source.loc[source["id"] == FIRST_HUNGARIAN_ID - 1].iloc[0]
    assert (cleveland["age"], cleveland["sex"], cleveland["cp"]) == (
        last_cleveland["age"],
        last_cleveland["sex"],
        last_cleveland["cp"],
    )


def test_labels_are_binary_and_match_the_source(demo, tables, source):
    _, reports = demo
    positives = sum(int(np.sum(t.column("disease").to_numpy() == 1)) for t in tables.values())
    assert positives == int((source["num"] > 0).sum())
    for report in reports:
        labels = tables[report.silo].column("disease").to_numpy()
        assert set(np.unique(labels)) <= {0, 1}
        assert report.positive_fraction == pytest.approx(labels.mean())


def test_zero_measurements_are_written_as_missing(tables):
    # A cholesterol or blood pressure of 0 codes "not measured"; it must not reach the range check
    # as a value (Switzerland records no cholesterol at all).
    for table in tables.values():
        for column in ("chol", "trestbps"):
            values = table.column(column).to_pandas()
            assert not (values == 0).any(), column
    assert tables["switzerland"].column("chol").null_count == SILO_ROWS["switzerland"]


def test_splits_are_stratified_with_about_30_percent_holdout(tables):
    for silo, table in tables.items():
        frame = table.select(["disease", "split"]).to_pandas()
        assert set(frame["split"]) == {"train", "holdout"}
        holdout = (frame["split"] == "holdout").mean()
        assert holdout == pytest.approx(HOLDOUT_FRACTION, abs=0.02), silo
        for label, group in frame.groupby("disease"):
            # Each class is split on its own: round(30%) of it, at least one row either side.
            n = len(group)
            k = min(max(int(round(HOLDOUT_FRACTION * n)), 1), n - 1)
            assert (group["split"] == "holdout").sum() == k, (silo, label)


def test_a_second_run_with_the_same_seed_is_identical(demo, tmp_path):
    _, first = demo
    config = load_config(copy_example(tmp_path / "again"))
    second = write_heart_silos(config)
    assert [r.path for r in second] != [r.path for r in first]
    assert digests(second) == digests(first)
    for a, b in zip(first, second, strict=True):
        assert (a.silo, a.rows, a.train, a.holdout) == (b.silo, b.rows, b.train, b.holdout)
        assert pq.read_table(a.path).equals(pq.read_table(b.path))


def test_rewriting_in_place_gives_the_same_bytes(tmp_path):
    config = load_config(copy_example(tmp_path / "heart"))
    first = digests(write_heart_silos(config))
    assert digests(write_heart_silos(config)) == first


def test_another_seed_changes_the_split_not_the_rows(demo, tables, tmp_path):
    config = load_config(copy_example(tmp_path / "reseeded", seed=7))
    assert config.seed == 7
    reseeded = {r.silo: pq.read_table(r.path) for r in write_heart_silos(config)}
    for silo, table in tables.items():
        other = reseeded[silo]
        assert other.drop_columns(["split"]).equals(table.drop_columns(["split"]))
        assert other.column("split").to_pylist() != table.column("split").to_pylist(), silo
        # ... and the per-class holdout sizes stay the same.
        assert split_sizes(other) == split_sizes(table), silo
