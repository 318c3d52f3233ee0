"""Contracts: every bad-row kind is quarantined with its reason, and the counts reconcile."""
from __future__ import annotations

from conf.schemas import QUARANTINE_SCHEMA, RAW_LOG_SCHEMA
from features.contracts import LOG_CONTRACT, USER_CONTRACT, as_strings, bronze_log, split_valid

COLS = [f.name for f in RAW_LOG_SCHEMA.fields]
GOOD = dict(zip(COLS, ["1", "10", "20220425", "0", "1650812741436", "1", "0", "0", "0", "0", "0", "1",
                       "1000", "9000", "0", "0", "0", "0", "1"]))


def _row(**changes):
    row = dict(GOOD, **changes)
    return [row[c] for c in COLS]


BAD = {
    "unparseable:user_id": _row(user_id="12x"),
    "missing:video_id": _row(video_id=None),
    "not_binary:is_click": _row(is_click="2"),
    "negative:time_ms": _row(time_ms="-5"),
    "bad_date:date": _row(date="20221345"),
    "unparseable:play_time_ms": _row(play_time_ms="1.5e"),
    # GOOD happened at 2022-04-24 23:05 Beijing time: a day stamped 04-26 is 24.9 h off
    "date_time_mismatch:date": _row(date="20220426"),
}


def _strings(spark, rows, cols=COLS):
    from conf.schemas import string_schema

    return spark.createDataFrame(rows, string_schema(cols))


def test_each_bad_row_kind_is_quarantined_with_its_reason(spark):
    rows = [_row(), _row(user_id=" 2 ")] + list(BAD.values())
    valid, quarantine = split_valid(_strings(spark, rows), LOG_CONTRACT, run_id="r1")
    reasons = sorted(r["reason"] for r in quarantine.collect())
    assert reasons == sorted(BAD)
    assert valid.count() + quarantine.count() == len(rows)
    assert [f.dataType for f in valid.schema.fields] == [f.dataType for f in RAW_LOG_SCHEMA.fields]
    assert sorted(r["user_id"] for r in valid.collect()) == [1, 2]
    assert quarantine.schema.fieldNames() == QUARANTINE_SCHEMA.fieldNames()
    one = quarantine.where("reason = 'not_binary:is_click'").first()
    assert one["source_table"] == "bronze_log" and '"is_click":"2"' in one["raw"] and one["run_id"] == "r1"


def test_several_reasons_on_one_row_are_all_named(spark):
    rows = [_row(is_like="7", duration_ms="-1")]
    _, quarantine = split_valid(_strings(spark, rows), LOG_CONTRACT)
    assert set(quarantine.first()["reason"].split(";")) == {"not_binary:is_like", "negative:duration_ms"}


def test_duplicate_dimension_keys_keep_the_first_row(spark):
    from conf.schemas import RAW_USER_SCHEMA

    cols = [f.name for f in RAW_USER_SCHEMA.fields] + ["_source_row"]
    base = {c: None for c in cols}
    rows = [dict(base, user_id="5", user_active_degree="a", _source_row="1"),
            dict(base, user_id="5", user_active_degree="b", _source_row="2"),
            dict(base, user_id="6", _source_row="3")]
    valid, quarantine = split_valid(_strings(spark, [[r[c] for c in cols] for r in rows], cols), USER_CONTRACT)
    assert sorted((r["user_id"], r["user_active_degree"]) for r in valid.collect()) == [(5, "a"), (6, None)]
    bad = quarantine.collect()
    assert [(b["reason"], b["source_row"]) for b in bad] == [("duplicate_key:user_id", 2)]


def test_bronze_log_ids_are_deterministic_and_unique_across_exact_duplicates(spark):
    rows = [_row(), _row(), _row(is_like="1"), _row(time_ms="1650812741437")]
    valid, _ = split_valid(_strings(spark, rows), LOG_CONTRACT)
    first = {r["impression_id"] for r in bronze_log(valid).collect()}
    again = {r["impression_id"] for r in bronze_log(valid.orderBy("is_like", ascending=False).repartition(3)).collect()}
    assert len(first) == 4 and first == again
    assert str(bronze_log(valid).schema["date"].dataType) == "DateType()"


def test_parquet_arrays_round_trip_through_strings(spark):
    from conf.schemas import RAW_HISTORY_SCHEMA
    from features.contracts import HISTORY_CONTRACT

    typed = spark.createDataFrame([(1, 2, 100, [5, 6], [], None), (2, -1, 100, [1], [], [])], RAW_HISTORY_SCHEMA)
    valid, quarantine = split_valid(as_strings(typed), HISTORY_CONTRACT)
    assert [(r["user_id"], r["watch_seq"], r["long_watch_seq"]) for r in valid.collect()] == [(1, [5, 6], None)]
    assert quarantine.first()["reason"] == "negative:history_len"


BEIJING_MIDNIGHT_0425 = 1_650_816_000_000  # 2022-04-25 00:00 UTC+8 = 2022-04-24 16:00 UTC
HOUR = 3_600_000


def test_date_may_lead_or_trail_time_ms_by_three_hours_not_more(spark):
    """``date`` is the Beijing (UTC+8) day of ``time_ms``; the real log stamps events up to 2.2 h
    before midnight with the next day, so 3 h either side of the day pass and the rest is quarantined."""
    cases = {  # time_ms -> quarantined? for rows dated 2022-04-25
        BEIJING_MIDNIGHT_0425 - 3 * HOUR: False,
        BEIJING_MIDNIGHT_0425 - 3 * HOUR - 1: True,
        BEIJING_MIDNIGHT_0425 + 12 * HOUR: False,
        BEIJING_MIDNIGHT_0425 + 27 * HOUR - 1: False,
        BEIJING_MIDNIGHT_0425 + 27 * HOUR: True,
        BEIJING_MIDNIGHT_0425 - 24 * HOUR: True,  # the day before: lands in the wrong partition
    }
    rows = [_row(date="20220425", time_ms=str(t)) for t in cases]
    valid, quarantine = split_valid(_strings(spark, rows), LOG_CONTRACT)
    assert sorted(r["time_ms"] for r in valid.collect()) == sorted(t for t, bad in cases.items() if not bad)
    bad = quarantine.collect()
    assert sorted(int(r["raw"].split('"time_ms":"')[1].split('"')[0]) for r in bad) == sorted(t for t, b in cases.items() if b)
    assert {r["reason"] for r in bad} == {"date_time_mismatch:date"}
