"""The candidates contract (what scoring relies on is checked before anything is scored), request
splitting, and the build_candidates job for its three sources on a small lake."""
from __future__ import annotations

import datetime as dt

import feature_timeline as tl
import pandas as pd
import pytest

from conf.schemas import CANDIDATES_SCHEMA
from features.candidates import split_large_requests, validate_candidates

DAY = dt.date(2022, 5, 3)


def candidates(spark, rows):
    return spark.createDataFrame(rows, CANDIDATES_SCHEMA.simpleString())


def row(request, impression, user, video, t, tab=1, source="logged"):
    return (request, impression, user, video, t, tab, source, None, None, DAY)


def test_a_request_with_one_user_at_one_time_passes(spark):
    df = candidates(spark, [row("r1", "i1", 7, 10, 1000), row("r1", None, 7, 11, 1000, None, "retrieval"),
                            row("r2", "i3", 8, 10, 2000, 2, "external")])
    assert validate_candidates(df) is None  # returns quietly
    with pytest.raises(ValueError, match=r"2 request\(s\)"):  # the same rows with a second user in r1 fail
        validate_candidates(df.unionByName(candidates(spark, [row("r1", "i9", 8, 12, 1000), row("r2", "i8", 8, 1, 3)])))


def test_a_request_mixing_users_or_times_is_refused_by_name(spark):
    rows = [row("r1", "i1", 7, 10, 1000), row("r1", "i2", 8, 11, 1000),
            row("r2", "i3", 9, 10, 2000), row("r2", "i4", 9, 12, 2500), row("r3", "i5", 9, 12, 2500)]
    with pytest.raises(ValueError, match=r"2 request\(s\) .* 'r1' \(2 users, 1 request times\)"):
        validate_candidates(candidates(spark, rows))


def test_null_keys_unknown_sources_and_missing_columns_are_refused(spark):
    df = spark.createDataFrame([("r1", "i1", None, 10, 1000, 1, "logged", None, None, DAY)],
                               CANDIDATES_SCHEMA.simpleString())
    with pytest.raises(ValueError, match=r"null values in required columns .*'user_id': 1"):
        validate_candidates(df)
    with pytest.raises(ValueError, match="lacks required columns \\['request_time_ms'\\]"):
        validate_candidates(df.drop("request_time_ms"))
    with pytest.raises(ValueError, match=r"1 rows whose source is not one of"):
        validate_candidates(candidates(spark, [row("r1", "i1", 7, 10, 1000, source="guess")]))


def test_a_request_too_big_for_one_row_is_split_never_dropped(spark):
    packed = spark.createDataFrame([("big", 7, list(range(2500))), ("small", 8, [1, 2])],
                                   "request_id string, cat_user_id int, candidates array<int>")
    rows = split_large_requests(packed, 1000).collect()
    sizes = sorted((r["request_id"], len(r["candidates"])) for r in rows)
    assert sizes == [("big", 500), ("big", 1000), ("big", 1000), ("small", 2)]
    assert sorted(v for r in rows if r["request_id"] == "big" for v in r["candidates"]) == list(range(2500))
    assert {r["cat_user_id"] for r in rows if r["request_id"] == "big"} == {7}


# -- the job ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lake(spark, settings, tmp_path_factory):
    """A lake holding the timeline's bronze tables (2022-04-25 and one event on 04-26)."""
    from conf.lake import write_table
    from conf.tables import BRONZE_HISTORY, BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS

    s = settings.with_lake(str(tmp_path_factory.mktemp("cand_lake")))
    log, users, videos, history = tl.bronze_frames(spark)
    for table, df in ((BRONZE_LOG, log), (BRONZE_USERS, users), (BRONZE_VIDEOS, videos), (BRONZE_HISTORY, history)):
        write_table(df, s, table)
    return s


def build(s, *flags):
    from jobs.build_candidates import main

    return main(["--lake", s.lake.root, *flags])


def read(spark, s, table):
    return spark.read.format("delta").load(s.lake.table_path(table))


def test_logged_and_retrieval_sources_live_side_by_side(spark, lake, capsys):
    from pyspark.sql import functions as F

    assert build(lake, "--date", "2022-04-26") == 0  # logged: today's behaviour
    assert build(lake, "--date", "2022-04-26", "--source", "retrieval", "--candidates-per-request", "3") == 0
    # users 1 and 2 were active on 04-25; user 1 had been shown every video there is (v16 is
    # first shown on 04-26), so the summary counts an empty request instead of hiding it
    assert "1 requests got no candidate" in capsys.readouterr().out
    cands = read(spark, lake, "candidates")
    logged = cands.where("source = 'logged'").collect()
    assert [(r["user_id"], r["video_id"]) for r in logged] == [(1, 16)]  # the one event of 04-26
    retrieval = cands.where("source = 'retrieval'")
    assert sorted((r["user_id"], r["video_id"]) for r in retrieval.collect()) == [(2, 11), (2, 12), (2, 14)]
    assert retrieval.where(F.size("channels") == 0).count() == 0
    # a rerun replaces its own slice only
    assert build(lake, "--date", "2022-04-26", "--source", "retrieval", "--candidates-per-request", "2") == 0
    again = read(spark, lake, "candidates")
    assert again.where("source = 'logged'").count() == 1
    assert again.where("source = 'retrieval'").count() == 2


def test_external_import_quarantines_bad_rows_and_reconciles(spark, lake, tmp_path):
    from conf.lake import read_table
    from conf.tables import INGEST_AUDIT, QUARANTINE

    path = tmp_path / "ext.csv"
    pd.DataFrame({"user_id": ["1", "1", "2", "", "42"], "video_id": ["10", "11", "10", "12", "13"],
                  "retrieval_score": ["0.9", "0.8", "x", "0.1", "0.2"], "channel": ["a", "b", None, None, None],
                  "note": ["n"] * 5}
                 ).to_csv(path, index=False)
    assert build(lake, "--date", "2022-04-26", "--from", str(path)) == 0
    ext = read(spark, lake, "candidates").where("source = 'external'").collect()
    assert sorted((r["user_id"], r["video_id"], r["channels"]) for r in ext) == [(1, 10, ["a"]), (1, 11, ["b"])]
    quarantine = read_table(spark, lake, QUARANTINE).where("source_table = 'candidates'").collect()
    assert sorted(r["reason"] for r in quarantine) == ["missing:user_id", "unknown_user", "unparseable:retrieval_score"]
    assert sorted(r["source_row"] for r in quarantine) == [3, 4, 5]
    audit = read_table(spark, lake, INGEST_AUDIT).where("table_name = 'candidates'").collect()
    assert [(a["rows_read"], a["rows_landed"], a["rows_quarantined"], a["reconciled"], a["ignored_columns"])
            for a in audit] == [(5, 2, 3, True, "note")]  # a column outside the contract is named, not landed
    assert build(lake, "--date", "2022-04-26", "--from", str(path)) == 0  # a rerun replaces, never duplicates
    assert read_table(spark, lake, QUARANTINE).where("source_table = 'candidates'").count() == 3
    assert read(spark, lake, "candidates").where("source = 'external'").count() == 2


def test_a_missing_import_is_one_clear_line(lake, tmp_path, capsys):
    assert build(lake, "--date", "2022-04-26", "--from", str(tmp_path / "nope.parquet")) == 2
    assert "not found" in capsys.readouterr().err
    assert build(lake, "--date", "2022-04-26..2022-04-27", "--from", str(tmp_path / "x.csv")) == 2


def test_an_older_candidates_table_gets_the_new_columns(spark, settings, tmp_path_factory):
    from conf.lake import add_missing_columns, write_table
    from conf.tables import CANDIDATES

    s = settings.with_lake(str(tmp_path_factory.mktemp("old_lake")))
    old = spark.createDataFrame([("r1", "i1", 7, 10, 1000, 1, DAY)], "request_id string, impression_id string, "
                                "user_id bigint, video_id bigint, request_time_ms bigint, tab int, date date")
    write_table(old, s, CANDIDATES, {"date": DAY.isoformat()})
    assert add_missing_columns(spark, s, CANDIDATES, CANDIDATES_SCHEMA, fill={"source": "'logged'"}) == [
        "source", "channels", "retrieval_score"]
    migrated = spark.read.format("delta").load(s.lake.table_path("candidates"))
    assert validate_candidates(migrated) is None and migrated.first()["source"] == "logged"
    assert add_missing_columns(spark, s, CANDIDATES, CANDIDATES_SCHEMA) == []  # idempotent


def test_upgrade_lake_brings_an_older_lake_to_the_schema_once(spark, settings, tmp_path_factory):
    """What every job runs first (jobs.common.run_job): the old candidates table gains its columns,
    a second run and an empty lake change nothing."""
    from conf.lake import upgrade_lake, write_table
    from conf.tables import CANDIDATES

    s = settings.with_lake(str(tmp_path_factory.mktemp("upgrade_lake")))
    assert upgrade_lake(spark, s) == []
    old = spark.createDataFrame([("r1", "i1", 7, 10, 1000, 1, DAY)], "request_id string, impression_id string, "
                                "user_id bigint, video_id bigint, request_time_ms bigint, tab int, date date")
    write_table(old, s, CANDIDATES, {"date": DAY.isoformat()})
    assert upgrade_lake(spark, s) == ["candidates.source", "candidates.channels", "candidates.retrieval_score"]
    assert spark.read.format("delta").load(s.lake.table_path("candidates")).first()["source"] == "logged"
    assert upgrade_lake(spark, s) == []
