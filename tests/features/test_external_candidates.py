"""External candidate import: every bad case lands in quarantine with its reason, the rest lands,
and every row is in exactly one of the two (one split of a frame holding all the cases)."""
from __future__ import annotations

import pytest

from features.external_candidates import split_external
from features.retrieval import request_time_ms

DATE = "2022-05-04"
T = request_time_ms(DATE)
COLUMNS = ("user_id", "video_id", "request_id", "request_time_ms", "retrieval_score", "channel")
ROWS = {  # source row -> raw strings
    1: ("1", "10", None, None, "0.9", "covisit"),
    2: ("1", "11", None, None, "0.8", None),
    3: ("", "10", None, None, None, None),                 # missing user
    4: ("1", "abc", None, None, None, None),               # unparseable video
    5: ("42", "10", None, None, None, None),               # unknown user
    6: ("1", "999", None, None, None, None),               # unknown video
    7: ("2", "10", "rd", None, "0.5", None),                # first of a duplicate pair: lands
    8: ("2", "10", "rd", None, "0.4", None),                # its duplicate
    9: ("2", "11", "rbig", None, None, None),              # a request over --max-per-request 2
    10: ("2", "12", "rbig", None, None, None),
    11: ("2", "13", "rbig", None, None, None),
    12: ("1", "10", "rmix", None, None, None),             # one request id, two users
    13: ("2", "11", "rmix", None, None, None),
    14: ("1", "12", None, str(T - 1), None, None),          # request time on the previous day
    15: ("1", "13", None, None, "NaN", None),               # a NaN score casts, but must not land
    16: ("1", "14", None, None, "nan", None),
    17: ("1", "15", None, None, "Infinity", None),          # so must an infinite one
    18: ("1", "16", None, None, "-inf", None),
}


@pytest.fixture(scope="module")
def split(spark):
    raw = spark.createDataFrame([(*ROWS[i], "cands.csv", i) for i in ROWS],
                                ", ".join(f"{c} string" for c in COLUMNS) + ", _source_file string, _source_row long")
    users = spark.createDataFrame([(1,), (2,)], "user_id bigint")
    videos = spark.createDataFrame([(v,) for v in range(10, 17)], "video_id bigint")
    landed, quarantine = split_external(raw, users, videos, DATE, max_per_request=2, run_id="t")
    return landed.collect(), {r["source_row"]: r for r in quarantine.collect()}


@pytest.mark.parametrize("rows, reason", [
    ([3], "missing:user_id"),
    ([4], "unparseable:video_id"),
    ([5], "unknown_user"),
    ([6], "unknown_video"),
    ([8], "duplicate_key:request_id,video_id"),
    ([9, 10, 11], "over_max_per_request:2"),
    ([12, 13], "request_mixes_users_or_times"),
    ([14], "request_time_outside_date"),
    ([15, 16], "nan:retrieval_score"),
    ([17, 18], "infinite:retrieval_score"),
])
def test_each_bad_case_is_quarantined_with_its_reason(split, rows, reason):
    _, quarantined = split
    assert {i: quarantined[i]["reason"] for i in rows} == {i: reason for i in rows}
    assert all(quarantined[i]["source_table"] == "candidates" and quarantined[i]["source_file"] == "cands.csv"
               for i in rows)
    assert f'"date":"{DATE}"' in quarantined[rows[0]]["raw"]  # the quarantine slice of the import date


def test_good_rows_land_with_defaults_and_every_row_is_counted_once(split):
    landed, quarantined = split
    assert len(landed) + len(quarantined) == len(ROWS)
    got = sorted((r["user_id"], r["video_id"], r["channels"], r["retrieval_score"]) for r in landed)
    assert got == [(1, 10, ["covisit"], 0.9), (1, 11, None, 0.8), (2, 10, None, 0.5)]
    assert {r["source"] for r in landed} == {"external"} and {r["request_time_ms"] for r in landed} == {T}
    default = {r["request_id"] for r in landed if r["user_id"] == 1}
    assert len(default) == 1 and default != {"rd"}  # one derived request for user 1 at the date's time
