"""features/ingest.py in process: the one raw reader's format sniffing (what ingest and
build_candidates --from / --users share), its one-line errors, and the audit rows."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pandas as pd
import pytest

from features.ingest import AuditRow, RawInputError, audit_frame, audit_row, read_raw, sniff_format, summary_line


@pytest.fixture(scope="module")
def sources(spark, tmp_path_factory):
    d = tmp_path_factory.mktemp("reader")
    frame = pd.DataFrame({"user_id": [1, 2], "score": [0.5, 1.5]})
    frame.to_csv(d / "rows.csv", index=False)
    frame.to_parquet(d / "rows.parquet")
    (d / "folder").mkdir()
    frame.to_parquet(d / "folder" / "part-0")  # named neither way: the caller's unnamed format
    spark.createDataFrame(frame).write.format("delta").save(str(d / "delta"))
    return d


def test_the_format_comes_from_the_name_then_the_delta_log_then_the_caller(spark, sources):
    assert sniff_format(spark, str(sources / "rows.csv")) == "csv"
    assert sniff_format(spark, str(sources / "rows.parquet"), unnamed="csv") == "parquet"
    assert sniff_format(spark, str(sources / "delta")) == "delta"
    assert sniff_format(spark, str(sources / "folder")) == "csv"  # ingest's default: landing files are CSV
    assert sniff_format(spark, str(sources / "folder"), unnamed="parquet") == "parquet"


@pytest.mark.parametrize("name", ["rows.csv", "rows.parquet", "delta"])
def test_every_format_reads_as_the_same_strings_with_its_position(spark, sources, name):
    df = read_raw(spark, str(sources / name), "t", required=["user_id"])
    rows = sorted((r["user_id"], r["score"]) for r in df.collect())
    assert rows == [("1", "0.5"), ("2", "1.5")]
    assert sorted(r["_source_row"] for r in df.collect()) == [1, 2]


def test_a_catalog_table_is_read_by_its_bare_name(spark, sources):
    spark.read.format("delta").load(str(sources / "delta")).createOrReplaceTempView("reader_test_users")
    assert sniff_format(spark, "reader_test_users") == "table"
    df = read_raw(spark, "reader_test_users", "--users", required=["user_id"], unnamed="parquet")
    assert {r["_source_file"] for r in df.collect()} == {"reader_test_users"}


def test_a_missing_source_and_missing_columns_are_one_line_naming_table_and_source(spark, sources):
    with pytest.raises(RawInputError) as info:
        read_raw(spark, str(sources / "nope.parquet"), "candidates", unnamed="parquet")
    assert str(info.value) == f"candidates: source {sources / 'nope.parquet'} not found"
    with pytest.raises(RawInputError) as info:
        read_raw(spark, str(sources / "rows.csv"), "bronze_users", required=["user_id", "age"])
    assert str(info.value) == (f"bronze_users: {sources / 'rows.csv'} lacks the contract columns ['age']; "
                               "its columns are ['user_id', 'score']")


def test_audit_rows_follow_the_table_schema_and_say_when_counts_do_not_reconcile(spark):
    from conf.schemas import INGEST_AUDIT_SCHEMA

    assert [f.name for f in dataclasses.fields(AuditRow)] == INGEST_AUDIT_SCHEMA.fieldNames()
    at = dt.datetime(2022, 5, 4, 1, 2, 3)
    row = audit_row("r1", "bronze_log", ["a.csv", "b.csv"], ["2022-04-25", "2022-04-26"], 5, 3, 1, at, [])
    assert (row.source_file, row.dates, row.reconciled, row.ignored_columns) == (
        "a.csv,b.csv", "2022-04-25,2022-04-26", False, None)
    assert summary_line(row) == "bronze_log: read 5 = landed 3 + quarantined 1  [dates 2022-04-25,2022-04-26]  MISMATCH"
    stored = audit_frame(spark, [row]).first().asDict()
    assert stored == dataclasses.asdict(row)
