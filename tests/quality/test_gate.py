"""The gate catches each injected fault by name, lets clean data and warnings through, records
results idempotently, writes data docs, and fails on expectations GX could not evaluate.

Every test uses its own lake and catalog database (``qsettings``) so that the tiny tables written
here never collide with other stages' test tables in the shared session.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
from dataclasses import replace
from pathlib import Path

import great_expectations.expectations as gxe
import pytest

from conf.lake import read_table, write_table
from conf.schemas import RAW_LOG_SCHEMA
from conf.tables import BRONZE_LOG, EXAMPLES, QUALITY_RESULTS
from features.spec import demo_spec
from quality.gate import previous_partition_count, run_gate
from quality.results import ERROR, FAILED, PASSED, ExpectationOutcome, GateResult, QualityGateFailed, failure_message
from quality.suites import CRITICAL, WARNING, bronze_log_suite, examples_suite, expectation

SPEC = demo_spec(seq_len=8)


@pytest.fixture(scope="module")
def qsettings(spark, settings, tmp_path_factory):
    database = "infnet_quality_tests"
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    root = str(tmp_path_factory.mktemp("quality_lake"))
    return replace(settings, lake=replace(settings.lake, root=root, database=database))


# ---------------------------------------------------------------------------------------------
# tiny tables
# ---------------------------------------------------------------------------------------------

def _midnight_ms(day: str) -> int:
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp() * 1000)


BRONZE_DDL = "impression_id string, " + ", ".join(
    f"{f.name} {'date' if f.name == 'date' else f.dataType.simpleString()}" for f in RAW_LOG_SCHEMA.fields
)


def bronze_rows(day: str, n: int = 60) -> list[dict]:
    """Clean rows: click 45 %, long_view 30 %, like 5 %."""
    base = _midnight_ms(day)
    return [
        dict(
            impression_id=f"{day}-{i}", user_id=i % 7 + 1, video_id=100 + i, date=dt.date.fromisoformat(day),
            hourmin=(i % 24) * 100, time_ms=base + 3_600_000 + i * 60_000,
            is_click=int(i % 20 < 9), is_like=int(i % 20 == 0), is_follow=0, is_comment=0, is_forward=0,
            is_hate=0, long_view=int(i % 20 < 6), play_time_ms=i * 1000, duration_ms=60_000,
            profile_stay_time=0, comment_stay_time=0, is_profile_enter=0, is_rand=0, tab=i % 5,
        )
        for i in range(n)
    ]


def bronze_df(spark, rows: list[dict]):
    columns = [c.split()[0] for c in BRONZE_DDL.split(", ")]
    return spark.createDataFrame([tuple(r[c] for c in columns) for r in rows], BRONZE_DDL)


EXAMPLES_DDL = ", ".join(
    ["impression_id string", "user_id long", "video_id long", "time_ms long", "date date"]
    + [f"{f.column} int" for f in SPEC.categorical]
    + [c for s in SPEC.sequences for c in (f"{s.column} array<int>", f"{s.gap_column} array<float>")]
    + [
        c for t in SPEC.tasks
        for c in (f"{t.column} {'int' if t.kind == 'binary' else 'float'}", f"{t.mask_column} float")
    ]
)
EXAMPLES_COLUMNS = [c.split()[0] for c in EXAMPLES_DDL.split(", ")]


def example_rows(day: str, n: int = 40) -> list[dict]:
    base = _midnight_ms(day)
    rows = []
    for i in range(n):
        r = dict(impression_id=f"ex-{day}-{i}", user_id=i % 7 + 1, video_id=100 + i, time_ms=base + i * 60_000,
                 date=dt.date.fromisoformat(day))
        for f in SPEC.categorical:
            r[f.column] = 1 + i % (f.vocab_size - 1)
        for k, s in enumerate(SPEC.sequences):
            length = i % (6 - k)
            r[s.column] = [1 + (3 * i + j) % 50 for j in range(length)]
            r[s.gap_column] = [0.5 + j for j in range(length)]  # newest first: gaps grow
        labels = {"click": int(i % 20 < 9), "like": int(i % 20 == 0), "long_view": int(i % 20 < 6)}
        for t in SPEC.tasks:
            r[t.column] = labels[t.name] if t.kind == "binary" else math.log1p(i * 1000)
            r[t.mask_column] = 1.0
        rows.append(r)
    return rows


def examples_df(spark, rows: list[dict]):
    return spark.createDataFrame([tuple(r[c] for c in EXAMPLES_COLUMNS) for r in rows], EXAMPLES_DDL)


def _gate_failure(spark, qsettings, table, df, day, suite) -> QualityGateFailed:
    with pytest.raises(QualityGateFailed) as info:
        run_gate(spark, qsettings, table, df, day, suite, write_docs=False)  # docs: see the rerun test
    return info.value


# ---------------------------------------------------------------------------------------------
# bronze_log
# ---------------------------------------------------------------------------------------------

def test_clean_bronze_passes_with_row_count_band(spark, qsettings):
    write_table(bronze_df(spark, bronze_rows("2031-01-01", 50)), qsettings, BRONZE_LOG, {"date": "2031-01-01"})
    result = run_gate(spark, qsettings, BRONZE_LOG, bronze_df(spark, bronze_rows("2031-01-02")), "2031-01-02",
                      bronze_log_suite(), write_docs=False)
    assert result.passed, failure_message(result)
    assert all(o.status == PASSED for o in result.outcomes), [o.describe() for o in result.outcomes if not o.success]
    assert (result.previous_partition, result.previous_count, result.row_count) == ("2031-01-01", 50, 60)
    assert "expect_table_row_count_to_be_between" in [o.expectation for o in result.outcomes]


def test_bronze_faults_are_each_caught_by_name(spark, qsettings):
    day = "2030-06-01"  # no earlier partition: no row-count band here
    rows = bronze_rows(day)
    for r in rows:
        r["is_click"] = 0  # a feed that lost its clicks
    rows[1]["video_id"] = None
    rows[2]["is_like"] = 2
    rows[3]["play_time_ms"] = -5
    rows[4]["time_ms"] = _midnight_ms(day) + 5 * 86_400_000  # five days in the future
    failed = _gate_failure(spark, qsettings, BRONZE_LOG, bronze_df(spark, rows), day, bronze_log_suite())
    names = {o.expectation for o in failed.result.failed_critical}
    assert names == {
        "expect_column_values_to_not_be_null(video_id)",
        "expect_column_values_to_be_in_set(is_like)",
        "expect_column_values_to_be_between(play_time_ms)",
        "expect_column_values_to_be_between(time_ms__hours_from_date)",
        "expect_column_mean_to_be_between(is_click)",
    }
    message = str(failed)
    assert "bronze_log partition 2030-06-01" in message
    for name in names:
        assert name in message
    assert "e.g. [2]" in message and "e.g. [-5]" in message and "observed 0.0" in message


def test_warning_continues_and_rerun_replaces_results_and_docs(spark, qsettings):
    day = "2030-07-01"
    first = run_gate(spark, qsettings, BRONZE_LOG, bronze_df(spark, bronze_rows(day)), day, bronze_log_suite())
    rows = bronze_rows(day)
    rows[5]["tab"] = 99  # an unknown tab is a warning, not a stop
    second = run_gate(spark, qsettings, BRONZE_LOG, bronze_df(spark, rows), day, bronze_log_suite())
    assert second.passed and not second.failed_critical
    assert [o.expectation for o in second.failed_warnings] == ["expect_column_values_to_be_between(tab)"]
    assert second.failed_warnings[0].sample_values == (99,)

    stored = read_table(spark, qsettings, QUALITY_RESULTS).where("table_name = 'bronze_log' AND partition = '2030-07-01'")
    assert {r.run_id for r in stored.select("run_id").distinct().collect()} == {second.run_id} != {first.run_id}
    assert stored.count() == len(second.outcomes)  # the rerun replaced the first run's rows
    tab = stored.where("expectation = 'expect_column_values_to_be_between(tab)'").first()
    assert (tab.severity, tab.status, tab.success, tab.unexpected_count, tab.sample_values) == (
        WARNING, FAILED, False, 1, "[99]")

    page = Path(second.docs_path).read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    for o in second.outcomes:
        assert o.expectation in page
    index = (Path(qsettings.lake.data_docs) / "index.html").read_text()
    assert f"bronze_log/2030-07-01/{second.run_id}.html" in index and first.run_id not in index


def test_job_fails_on_duplicated_partition(spark, qsettings):
    from jobs.common import JobError
    from jobs.quality_gate import body, build_parser

    assert build_parser().parse_args(["--table", "bronze_log", "--date", "2031-02-02"]).dates == ["2031-02-02"]
    clean = bronze_df(spark, bronze_rows("2031-02-02"))
    write_table(bronze_df(spark, bronze_rows("2031-02-01")), qsettings, BRONZE_LOG, {"date": "2031-02-01"})
    write_table(clean.unionByName(clean), qsettings, BRONZE_LOG, {"date": "2031-02-02"})  # appended twice
    assert previous_partition_count(spark, qsettings, BRONZE_LOG, "2031-02-02") == ("2031-02-01", 60)

    args = argparse.Namespace(table="bronze_log", dates=["2031-02-02"], spec_version=None)
    with pytest.raises(JobError) as info:
        body(spark, qsettings, args)
    message = str(info.value)
    assert "bronze_log partition 2031-02-02" in message
    assert "expect_table_row_count_to_be_between" in message and "observed 120" in message
    assert "expect_column_values_to_be_unique(impression_id)" in message and "120 of 120 rows unexpected" in message

    with pytest.raises(JobError, match="no rows for 2031-03-09"):
        body(spark, qsettings, argparse.Namespace(table="bronze_log", dates=["2031-03-09"], spec_version=None))


# ---------------------------------------------------------------------------------------------
# examples
# ---------------------------------------------------------------------------------------------

def test_clean_examples_pass(spark, qsettings):
    day = "2030-01-01"
    result = run_gate(spark, qsettings, EXAMPLES, examples_df(spark, example_rows(day)), day, examples_suite(SPEC),
                      write_docs=False)
    assert result.passed
    assert all(o.status == PASSED for o in result.outcomes), [o.describe() for o in result.outcomes if not o.success]
    assert len(result.outcomes) == len(examples_suite(SPEC).expectations)  # no earlier partition: no band


def test_examples_faults_are_each_caught_by_name(spark, qsettings):
    day = "2030-01-02"
    rows = example_rows(day)
    rows[1]["user_id"] = None  # null key
    rows[2]["label_click"] = 2  # out-of-range label
    rows[3]["cat_video_id"] = 51  # out of vocab (vocab_size 51)
    rows[4]["seq_like"], rows[4]["seq_like_gap"] = [5], [-3.0]  # leaked: event after the impression
    rows[5]["seq_long_view"] = list(range(1, 10))  # 9 items > max_len 8
    rows[5]["seq_long_view_gap"] = [float(j) for j in range(1, 10)]
    rows[6]["impression_id"] = rows[7]["impression_id"]  # duplicate key
    rows[8]["seq_click"], rows[8]["seq_click_gap"] = [5, 6], [1.0]  # gaps out of step with items
    rows[9]["label_play_time"] = float("nan")
    rows[10]["seq_click"], rows[10]["seq_click_gap"] = [60], [1.0]  # item outside the hashed vocab
    failed = _gate_failure(spark, qsettings, EXAMPLES, examples_df(spark, rows), day, examples_suite(SPEC))
    expected = {
        "expect_column_values_to_not_be_null(user_id)": [None],
        "expect_column_values_to_be_in_set(label_click)": [2],
        "expect_column_values_to_be_between(cat_video_id)": [51],
        "expect_column_values_to_be_between(seq_like_gap__min)": [-3.0],
        "expect_column_values_to_be_between(seq_long_view__len)": [9],
        "expect_column_values_to_be_unique(impression_id)": [rows[7]["impression_id"]],
        "expect_column_values_to_be_in_set(seq_click_gap__size_diff)": [-1],
        "expect_column_values_to_be_in_set(label_play_time__finite)": [False],
        "expect_column_values_to_be_between(seq_click__max)": [60],
    }
    got = {o.expectation: list(o.sample_values) for o in failed.result.failed_critical}
    assert got == expected
    message = str(failed)
    assert "examples partition 2030-01-02" in message
    for name in expected:
        assert name in message
    assert "e.g. [-3.0]" in message and "leaked sequence" in message


def test_unevaluable_expectations_fail_the_gate(spark, qsettings):
    day = "2030-01-03"
    df = examples_df(spark, example_rows(day)).drop("seq_like_gap")
    suite = examples_suite(SPEC).with_expectations(
        expectation(gxe.ExpectColumnValuesToNotBeNull, WARNING, "typo in a suite", column="no_such_column")
    )
    failed = _gate_failure(spark, qsettings, EXAMPLES, df, day, suite)
    errors = {o.expectation for o in failed.result.errors}
    assert {
        "expect_column_values_to_not_be_null(no_such_column)",  # even a warning that cannot run fails the gate
        "expect_column_values_to_not_be_null(seq_like_gap)",
        "expect_column_values_to_be_between(seq_like_gap__min)",
    } <= errors
    assert [o.expectation for o in failed.result.failed_critical] == ["expect_table_columns_to_match_set"]
    message = str(failed)
    assert "could not be evaluated" in message and "no_such_column" in message and "seq_like_gap" in message
    stored = read_table(spark, qsettings, QUALITY_RESULTS).where(f"partition = '{day}' AND status = 'error'")
    assert stored.count() == len(failed.result.errors)


# ---------------------------------------------------------------------------------------------
# pure logic
# ---------------------------------------------------------------------------------------------

def test_fail_on_warning_makes_warnings_blocking():
    warn = ExpectationOutcome("expect_column_values_to_be_between(tab)", "tab", WARNING, FAILED, 1, 10, None, (99,))
    ok = ExpectationOutcome("expect_column_values_to_be_unique(impression_id)", "impression_id", CRITICAL, PASSED)
    base = GateResult("r", "bronze_log", "2022-05-01", "bronze_log", dt.datetime(2022, 5, 2), 10, (warn, ok))
    assert base.passed and base.failed_warnings == [warn]
    strict = replace(base, fail_on_warning=True)
    assert not strict.passed and "warning(s) failed" in failure_message(strict)
    broken = replace(base, outcomes=(ExpectationOutcome("x", "", WARNING, ERROR, error="boom"),))
    assert not broken.passed and "could not evaluate: boom" in failure_message(broken)


# ---------------------------------------------------------------------------------------------
# what a leak really produces; rate bands sized to the partition; a quiet gate job
# ---------------------------------------------------------------------------------------------

def test_a_leaked_event_stops_the_gate(spark, qsettings):
    """The sequence builder turns an event at or after the impression into gap log1p(0) = 0 (it
    clamps negative gaps), so "gap >= 0" could never see a leak: the gate must refuse 0 itself."""
    from pyspark.sql import functions as F

    from features.sequences import gap

    day = "2030-01-04"
    t = _midnight_ms(day) + 3_600_000
    leaked = spark.range(1).select(
        gap(F.lit(t), F.lit(t + 5_000)).alias("after"),  # an event 5 s after the impression
        gap(F.lit(t), F.lit(t)).alias("same_ms"),  # the impression itself
        gap(F.lit(t), F.lit(t - 1)).alias("one_ms_before"),  # honest: strictly before
    ).first()
    assert leaked.one_ms_before > 0  # the closest honest event still has a positive gap
    rows = example_rows(day)
    rows[4]["seq_like"], rows[4]["seq_like_gap"] = [5, 6], [leaked.after, 1.0]
    rows[7]["seq_click"], rows[7]["seq_click_gap"] = [8], [leaked.same_ms]
    rows[9]["seq_long_view"], rows[9]["seq_long_view_gap"] = [9], [leaked.one_ms_before]
    failed = _gate_failure(spark, qsettings, EXAMPLES, examples_df(spark, rows), day, examples_suite(SPEC))
    got = {o.expectation: list(o.sample_values) for o in failed.result.failed_critical}
    assert got == {
        "expect_column_values_to_be_between(seq_like_gap__min)": [0.0],
        "expect_column_values_to_be_between(seq_click_gap__min)": [0.0],
    }
    assert "leaked sequence" in str(failed)


def test_a_small_honest_partition_passes_the_like_rate(spark, qsettings):
    """33 rows at the real like rate (1.7 %) expect 0.6 likes: none is an honest outcome."""
    day = "2029-05-01"  # no earlier stored partition: no row-count band
    rows = bronze_rows(day, 33)
    for r in rows:
        r["is_like"] = 0
    result = run_gate(spark, qsettings, BRONZE_LOG, bronze_df(spark, rows), day, bronze_log_suite(), write_docs=False)
    assert result.passed, failure_message(result)
    like = next(o for o in result.outcomes if o.expectation == "expect_column_mean_to_be_between(is_like)")
    assert like.status == PASSED and "at 33 rows" in like.check


def test_the_gate_job_prints_no_library_chatter(spark, qsettings, caplog, capsys):
    """great-expectations logged ~150 INFO lines per run, one of them a stray ``[]``."""
    import logging

    from jobs.common import run_job
    from jobs.quality_gate import body, build_parser

    day = "2029-06-01"
    write_table(bronze_df(spark, bronze_rows(day)), qsettings, BRONZE_LOG, {"date": day})
    caplog.set_level(logging.INFO)
    rc = run_job(build_parser(), lambda s, _, args: body(s, qsettings, args),
                 ["--lake", qsettings.lake.root, "--table", "bronze_log", "--date", day])
    assert rc == 0, capsys.readouterr().err
    chatter = [r for r in caplog.records if r.name.startswith("great_expectations") and r.levelno < logging.WARNING]
    assert chatter == [] and not any(r.getMessage().strip().endswith("[]") for r in caplog.records)
    assert any("PASSED" in r.getMessage() for r in caplog.records if r.name == "infnet.quality_gate")
