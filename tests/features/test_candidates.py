"""The candidates contract: what scoring relies on is checked before anything is scored."""
from __future__ import annotations

import datetime as dt

import pytest

from conf.tables import CANDIDATES_SCHEMA
from features.candidates import validate_candidates

DAY = dt.date(2022, 5, 3)


def candidates(spark, rows):
    return spark.createDataFrame(rows, CANDIDATES_SCHEMA.simpleString())


def test_a_request_with_one_user_at_one_time_passes(spark):
    validate_candidates(candidates(spark, [("r1", "i1", 7, 10, 1000, 1, DAY), ("r1", None, 7, 11, 1000, None, DAY),
                                           ("r2", "i3", 8, 10, 2000, 2, DAY)]))


def test_a_request_mixing_users_or_times_is_refused_by_name(spark):
    rows = [("r1", "i1", 7, 10, 1000, 1, DAY), ("r1", "i2", 8, 11, 1000, 1, DAY),
            ("r2", "i3", 9, 10, 2000, 1, DAY), ("r2", "i4", 9, 12, 2500, 1, DAY), ("r3", "i5", 9, 12, 2500, 1, DAY)]
    with pytest.raises(ValueError, match=r"2 request\(s\) .* 'r1' \(2 users, 1 request times\)"):
        validate_candidates(candidates(spark, rows))


def test_null_keys_and_missing_columns_are_refused(spark):
    df = spark.createDataFrame([("r1", "i1", None, 10, 1000, 1, DAY)],
                               "request_id string, impression_id string, user_id bigint, video_id bigint, "
                               "request_time_ms bigint, tab int, date date")
    with pytest.raises(ValueError, match=r"null values in required columns .*'user_id': 1"):
        validate_candidates(df)
    with pytest.raises(ValueError, match="lacks required columns \\['request_time_ms'\\]"):
        validate_candidates(df.drop("request_time_ms"))
