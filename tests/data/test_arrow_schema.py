"""The Arrow schema check: every contract column present once, with a type that fits its dtype.

It runs before any expectation, so a table that fails it never reaches Great Expectations; each
problem is one line that names the column.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from heart_tables import DROP, N_ROWS

from validation.schema import arrow_type_accepts, check_schema, expected_arrow_schema
from validation.summary import schema_hash


def test_the_canonical_schema_fits_the_contract(contract):
    schema = expected_arrow_schema(contract)
    assert schema.names == list(contract.columns)
    assert check_schema(schema, contract) == []


def test_a_conforming_table_passes(conforming_summary):
    assert conforming_summary.passed, conforming_summary.reasons()
    assert conforming_summary.silo == "clinic"
    assert (conforming_summary.n_rows, conforming_summary.n_train, conforming_summary.n_holdout) == (N_ROWS, 28, 12)
    assert conforming_summary.schema_issues == ()
    assert conforming_summary.problems == ()
    assert conforming_summary.failures == ()
    assert conforming_summary.reasons() == []
    assert conforming_summary.one_line() == "clinic: contract passed (28 train / 12 holdout rows)"


def test_the_summary_carries_the_contract_and_schema_hashes(conforming_summary, conforming_table, contract):
    assert conforming_summary.contract_hash == contract.contract_hash()
    fields = [(f.name, str(f.type)) for f in conforming_table.schema]
    assert conforming_summary.schema_hash == schema_hash(fields)


def test_every_expectation_of_the_suite_ran_on_the_conforming_table(conforming_summary, conforming_table, contract):
    # One outcome per expectation: table row count, then per feature a null check (unless
    # max_missing is 1) and a range or set check, then null and set checks on label and split.
    expected = 1 + 4
    for feature in contract.features:
        expected += (feature.max_missing < 1.0) + (feature.kind != "boolean")
    assert len(conforming_summary.outcomes) == expected
    assert all(o.success and o.error is None for o in conforming_summary.outcomes)
    for outcome in conforming_summary.outcomes:
        if outcome.column is None:
            continue
        assert outcome.element_count == N_ROWS
        if outcome.expectation == "expect_column_values_to_not_be_null":
            # Missing values within max_missing are counted, and still pass.
            assert outcome.unexpected_count == conforming_table.column(outcome.column).null_count
        else:
            assert outcome.unexpected_count == 0


def test_schema_hash_is_stable_across_calls_and_ignores_values(validate, conforming_summary, make_table):
    again = validate(make_table())
    assert again.schema_hash == conforming_summary.schema_hash
    other_values = validate(make_table(age=[60] * N_ROWS, cp=["asymptomatic"] * N_ROWS))
    assert other_values.passed
    assert other_values.schema_hash == conforming_summary.schema_hash


def test_schema_hash_changes_with_the_schema(validate, conforming_summary, make_table):
    narrower = validate(make_table(oldpeak=pa.array([1.5] * N_ROWS, pa.float32())))
    assert narrower.passed
    assert narrower.schema_hash != conforming_summary.schema_hash
    table = make_table()
    reordered = table.select(list(reversed(table.column_names)))
    assert validate(reordered).schema_hash != conforming_summary.schema_hash


# --- problems with columns -------------------------------------------------------------------


@pytest.mark.parametrize("column", ["age", "sex", "chol", "thal", "disease", "split"])
def test_a_missing_column_is_named(validate, make_table, column):
    # Risk: a hospital that does not record a column would train on an all-default input.
    summary = validate(make_table(**{column: DROP}))
    assert not summary.passed
    assert summary.schema_issues == (f"{column}: column missing",)
    assert summary.outcomes == ()  # the expectation suite never ran
    assert (summary.n_train, summary.n_holdout) == (0, 0)
    assert f"{column}: column missing" in summary.one_line()


def test_every_contract_column_is_required(contract, conforming_table):
    for column in contract.columns:
        schema = conforming_table.drop_columns([column]).schema
        assert check_schema(schema, contract) == [f"{column}: column missing"]


def test_several_missing_columns_are_each_named(contract, make_table):
    issues = check_schema(make_table(age=DROP, split=DROP).schema, contract)
    assert issues == ["age: column missing", "split: column missing"]


@pytest.mark.parametrize(
    ("column", "array", "issue"),
    [
        # Risk: ages exported as text ("63") would be encoded as garbage numbers.
        ("age", pa.array([str(29 + i) for i in range(N_ROWS)]), "age: type string does not fit contract dtype int"),
        # Risk: sex coded 0/1 by one hospital and Male/Female by another means two encodings of one fact.
        ("sex", pa.array([i % 2 for i in range(N_ROWS)]), "sex: type int64 does not fit contract dtype string"),
        # Risk: a fractional "int" (age 63.5) is a different measurement than the contract describes.
        ("age", pa.array([63.5] * N_ROWS), "age: type double does not fit contract dtype int"),
        # Risk: a label as probability/float would not be a class.
        ("disease", pa.array([0.0, 1.0] * (N_ROWS // 2)), "disease: type double does not fit contract dtype int"),
        ("split", pa.array([0, 1] * (N_ROWS // 2)), "split: type int64 does not fit contract dtype string"),
        # Risk: a flag exported as "TRUE"/"FALSE" text is not a boolean.
        ("fbs", pa.array(["TRUE"] * N_ROWS), "fbs: type string does not fit contract dtype bool"),
        ("oldpeak", pa.array(["1.5"] * N_ROWS), "oldpeak: type string does not fit contract dtype float"),
        ("exang", pa.array([0, 1] * (N_ROWS // 2)), "exang: type int64 does not fit contract dtype bool"),
    ],
)
def test_a_wrong_type_is_named_with_the_arrow_type_and_the_dtype(validate, make_table, column, array, issue):
    summary = validate(make_table(**{column: array}))
    assert not summary.passed
    assert summary.schema_issues == (issue,)
    assert summary.outcomes == ()
    assert summary.failures == ()
    assert summary.reasons() == [issue]


def test_a_duplicated_column_is_named_not_a_crash(validate, contract, conforming_table):
    # Risk: two "age" columns (e.g. a join gone wrong) leave it undefined which one the model sees.
    table = conforming_table.append_column("age", pa.array([50] * N_ROWS, pa.int64()))
    assert check_schema(table.schema, contract) == ["age: column appears more than once"]
    summary = validate(table)
    assert not summary.passed
    assert summary.schema_issues == ("age: column appears more than once",)
    assert summary.n_rows == N_ROWS


def test_a_duplicated_column_of_the_wrong_type_is_reported(contract, conforming_table):
    table = conforming_table.append_column("sex", pa.array([1] * N_ROWS))
    issues = check_schema(table.schema, contract)
    assert "sex: column appears more than once" in issues
    assert all(issue.startswith("sex: ") for issue in issues)


def test_problems_in_several_columns_are_all_reported(contract, make_table):
    table = make_table(age=pa.array(["x"] * N_ROWS), thal=DROP)
    table = table.append_column("cp", pa.array(["asymptomatic"] * N_ROWS))
    issues = check_schema(table.schema, contract)
    assert sorted(issues) == sorted(
        [
            "cp: column appears more than once",
            "age: type string does not fit contract dtype int",
            "thal: column missing",
        ]
    )


# --- what the schema check deliberately accepts ----------------------------------------------


@pytest.mark.parametrize("int_type", [pa.int8(), pa.int32(), pa.int64(), pa.uint16()])
def test_an_integer_column_is_accepted_where_a_float_is_expected(validate, make_table, int_type):
    # A widening: oldpeak written as whole numbers by a hospital that rounds is still oldpeak.
    summary = validate(make_table(oldpeak=pa.array([i % 5 for i in range(N_ROWS)], int_type)))
    assert summary.schema_issues == ()
    assert summary.passed, summary.reasons()


def test_a_float_column_is_not_accepted_where_an_int_is_expected():
    assert not arrow_type_accepts("int", pa.float64())
    assert arrow_type_accepts("float", pa.int64())


def test_an_all_null_column_passes_the_schema_check(validate, contract, make_table):
    # A hospital that records no cholesterol writes a null-typed column; the contract allows it
    # (chol may be 100% missing), so the schema check must not refuse it on type.
    table = make_table(chol=pa.nulls(N_ROWS))
    assert table.schema.field("chol").type == pa.null()
    assert check_schema(table.schema, contract) == []
    summary = validate(table)
    assert summary.passed, summary.reasons()


def test_an_all_null_column_is_left_to_the_missing_value_expectation(validate, contract, make_table):
    # The schema check accepts a null-typed age, but age may not be missing at all.
    table = make_table(age=pa.nulls(N_ROWS))
    assert check_schema(table.schema, contract) == []
    summary = validate(table)
    assert not summary.passed
    assert summary.schema_issues == ()
    failure = [o for o in summary.failures if o.column == "age"]
    assert [o.expectation for o in failure] == ["expect_column_values_to_not_be_null"]
    assert failure[0].unexpected_count == N_ROWS
    assert failure[0].unexpected_fraction == 1.0


@pytest.mark.parametrize("dtype", ["int", "float", "string", "bool"])
def test_the_null_type_fits_every_dtype(dtype):
    assert arrow_type_accepts(dtype, pa.null())


def test_dictionary_encoded_and_large_strings_are_categorical(validate, make_table):
    # What pandas categoricals and some Parquet writers produce.
    sex = pa.array([("Male", "Female")[i % 2] for i in range(N_ROWS)]).dictionary_encode()
    cp = pa.array(["asymptomatic"] * N_ROWS, pa.large_string())
    summary = validate(make_table(sex=sex, cp=cp))
    assert summary.schema_issues == ()
    assert summary.passed, summary.reasons()


def test_dictionary_encoded_columns_with_missing_values_pass(validate, contract, conforming_table):
    # A pandas frame with categorical dtypes, written to Parquet and read back, has dictionary
    # columns; the schema check accepts them, so the expectations must run on them as on plain ones.
    encoded = conforming_table
    for name in ("age", "trestbps", "ca", "sex", "thal", "split"):
        index = encoded.schema.get_field_index(name)
        encoded = encoded.set_column(index, name, encoded.column(name).dictionary_encode())
    assert encoded.column("thal").null_count > 0 and encoded.column("ca").null_count > 0
    summary = validate(encoded)
    assert summary.passed, summary.reasons()
    assert all(o.error is None for o in summary.outcomes)
    assert (summary.n_train, summary.n_holdout) == (28, 12)
    plain = {(o.column, o.expectation): o.unexpected_count for o in validate(conforming_table).outcomes}
    assert {(o.column, o.expectation): o.unexpected_count for o in summary.outcomes} == plain


def test_extra_columns_are_allowed_and_only_counted(validate, make_table):
    summary = validate(make_table(hospital_ward=pa.array(["W7"] * N_ROWS), note=pa.array(["n"] * N_ROWS)))
    assert summary.passed, summary.reasons()
    assert summary.extra_columns == 2
    assert "hospital_ward" not in summary.to_json()


def test_a_pandas_frame_with_nullable_integers_passes(validate, contract, conforming_table):
    # The usual way a hospital builds its table: pandas with nullable Int64 for integer columns.
    frame = conforming_table.to_pandas()
    for feature in contract.features:
        if feature.dtype == "int":
            frame[feature.name] = frame[feature.name].astype("Int64")
    summary = validate(pa.Table.from_pandas(frame, preserve_index=False))
    assert summary.passed, summary.reasons()
    assert (summary.n_train, summary.n_holdout) == (28, 12)


def test_a_pandas_integer_column_with_nan_is_refused_as_float(validate, contract, conforming_table):
    # Plain pandas turns an int column with a missing value into float64; the contract says int,
    # and the check names the column rather than letting 120.0 pass as an integer.
    frame = conforming_table.to_pandas()
    with_gaps = [f.name for f in contract.features if f.dtype == "int" and frame[f.name].isna().any()]
    assert with_gaps == ["trestbps", "chol", "thalch", "ca"]
    assert all(frame[name].dtype == "float64" for name in with_gaps)
    summary = validate(pa.Table.from_pandas(frame, preserve_index=False))
    assert summary.schema_issues == tuple(f"{name}: type double does not fit contract dtype int" for name in with_gaps)
