"""Request-time training rows and the entire space (features/space.py)."""
from __future__ import annotations

import datetime as dt
from dataclasses import replace

import feature_timeline as tl
import pytest

from features.examples import build_features, build_spec, example_columns
from features.retrieval import request_time_ms
from features.space import (SHOWN, WEIGHT, build_request_examples, check_feature_time, only_candidates_exposed, shown_rows,
                            unshown_sample)

DATE = "2022-04-26"  # the timeline's second day: one impression (user 1, video 16) after the request time


def _settings(settings, feature_settings, **features):
    return replace(settings, features=replace(feature_settings, **features))


def test_request_time_rows_are_the_score_jobs_features_of_the_same_user_video_and_time(spark, settings,
                                                                                        feature_settings):
    """A row of features_time=request equals the per-row featuriser's row for (user, video,
    time_ms = the date's request time, tab = the request's tab): the features the nightly job scores with."""
    s = _settings(settings, feature_settings, feature_time="request")
    log, users, videos, history = tl.bronze_frames(spark)
    spec = build_spec(s)
    rows = build_request_examples(log, users, videos, history, s, [DATE], spec).collect()
    assert [r["video_id"] for r in rows] == [16] and list(rows[0].asDict()) == example_columns(spec)
    row = rows[0].asDict()
    t = request_time_ms(DATE)
    assert row["time_ms"] == t and row["label_click"] == 1 and row["mask_click"] == 1.0
    query = spark.createDataFrame([(row["impression_id"], 1, 16, t, 1)],
                                  "impression_id string, user_id bigint, video_id bigint, time_ms bigint, tab int")
    want = build_features(query, log, users, videos, history, s).first().asDict()
    assert {c: row[c] for c in spec.feature_columns} == {c: want[c] for c in spec.feature_columns}
    # it is not the per-impression row: that one sees nothing new, but 10 ms later; the hour differs
    per_impression = build_features(query.withColumn("time_ms", query["time_ms"] + 4 * 3_600_000), log, users,
                                    videos, history, s).first().asDict()
    assert per_impression["cat_hour"] != row["cat_hour"]
    # every day-0 event is visible at the request time (sequence of clicks, newest first)
    assert row["seq_click"][:2] == [want["seq_click"][0], want["seq_click"][1]] and len(row["seq_click"]) == tl.SEQ_LEN


def _day(spark):
    """A hand-built day: user 1's request holds videos 10..14; shown that day: 10 (twice), 11, and
    20 which retrieval missed; 12, 13, 14 unshown."""
    d = dt.date.fromisoformat(DATE)
    t = request_time_ms(DATE)
    log = spark.createDataFrame(
        [("i1", 1, 10, t + 100, 1, 0, 1, 5_000, d), ("i2", 1, 10, t + 900, 0, 0, 0, 100, d),
         ("i3", 1, 11, t + 200, 0, 0, 0, 0, d), ("i4", 1, 20, t + 300, 1, 1, 1, 9_000, d)],
        "impression_id string, user_id bigint, video_id bigint, time_ms bigint, is_click int, is_like int, "
        "long_view int, play_time_ms bigint, date date")
    requests = spark.createDataFrame([("r1", 1, t, d)], "request_id string, user_id bigint, request_time_ms bigint, date date")
    candidates = spark.createDataFrame([("r1", 1, v, t, d) for v in (10, 11, 12, 13, 14)],
                                       "request_id string, user_id bigint, video_id bigint, request_time_ms bigint, date date")
    return log, requests, candidates


def test_exposure_labels_of_shown_unshown_and_unretrieved_videos(spark):
    from pyspark.sql import functions as F

    from features.space import space_label_columns

    log, requests, candidates = _day(spark)
    rows = shown_rows(log, requests).unionByName(unshown_sample(candidates, log, per_request=10))
    got = {(r["impression_id"][:1] if r["impression_id"].startswith("u") else r["impression_id"], r["video_id"]):
           (r["label_exposed"], r["mask_exposed"], r["label_click"], r["mask_click"])
           for r in rows.select("impression_id", "video_id", *space_label_columns(True)).collect()}
    assert got == {
        ("i1", 10): (1, 1.0, 1, 1.0),   # shown and retrieved: one exposure positive (its first impression)
        ("i2", 10): (1, 0.0, 0, 1.0),   # the repeat still trains click, not exposure
        ("i3", 11): (1, 1.0, 0, 1.0),
        ("i4", 20): (1, 1.0, 1, 1.0),   # shown though retrieval missed it: still exposed
        ("u", 12): (0, 1.0, 0, 0.0), ("u", 13): (0, 1.0, 0, 0.0), ("u", 14): (0, 1.0, 0, 0.0),  # unshown
    }
    ids = rows.where(F.col(SHOWN) == 0).select("impression_id").collect()
    assert len({r[0] for r in ids}) == 3  # unique keys, never a logged id
    # the default space: only the shown candidates are exposure positives; v20 still trains click
    within = only_candidates_exposed(shown_rows(log, requests), candidates).select("video_id", *space_label_columns(True))
    got = {(r["video_id"], r["mask_exposed"]) for r in within.where(F.col("label_exposed") == 1).collect()}
    assert got == {(10, 1.0), (10, 0.0), (11, 1.0), (20, 0.0)}
    assert within.where((F.col("video_id") == 20) & (F.col("mask_click") == 1.0)).count() == 1


def test_subsampled_negatives_keep_p_exposed_calibrated(spark):
    """Synthetic requests with 10..200 candidates and a known shown share: kept negatives weighted
    by unshown / kept give back each request's exposure rate, and the overall one, exactly."""
    import random

    from pyspark.sql import functions as F

    rng = random.Random(3)
    d, t = dt.date.fromisoformat(DATE), request_time_ms(DATE)
    cand_rows, log_rows = [], []
    for r in range(40):
        n = rng.randint(10, 200)
        shown = rng.sample(range(n), rng.randint(1, max(1, n // 5)))
        cand_rows += [(f"r{r}", r, v, t, d) for v in range(n)]
        log_rows += [(f"i{r}_{v}", r, v, t + 1, 0, 0, 0, 0, d) for v in shown]
    candidates = spark.createDataFrame(cand_rows, "request_id string, user_id bigint, video_id bigint, "
                                                  "request_time_ms bigint, date date")
    log = spark.createDataFrame(log_rows, "impression_id string, user_id bigint, video_id bigint, time_ms bigint, "
                                          "is_click int, is_like int, long_view int, play_time_ms bigint, date date")
    requests = candidates.select("request_id", "user_id", "request_time_ms", "date").distinct()
    sample = unshown_sample(candidates, log, per_request=7, seed=1)
    rows = shown_rows(log, requests).unionByName(sample)
    per = {r["request_id"]: r for r in rows.groupBy("request_id").agg(
        (F.sum(F.col(SHOWN) * F.col(WEIGHT)) / F.sum(WEIGHT)).alias("p"), F.sum(1 - F.col(SHOWN)).alias("kept")).collect()}
    truth = {f"r{r}": sum(1 for x in log_rows if x[1] == r) / sum(1 for x in cand_rows if x[1] == r) for r in range(40)}
    assert all(abs(per[k]["p"] - p) < 1e-9 for k, p in truth.items())
    assert max(r["kept"] for r in per.values()) == 7  # subsampled, not all kept
    # a plain (unweighted) rate would be off: the weights do the calibration
    plain = rows.agg(F.mean(SHOWN)).first()[0]
    overall = len(log_rows) / len(cand_rows)
    weighted = rows.agg(F.sum(F.col(SHOWN) * F.col(WEIGHT)) / F.sum(WEIGHT)).first()[0]
    assert abs(plain - overall) > 0.05 and abs(weighted - overall) < 0.02
    # deterministic: the same rows on a rebuild
    assert sorted(map(tuple, sample.collect())) == sorted(map(tuple, unshown_sample(candidates, log, 7, 1).collect()))


def test_entire_space_examples_have_the_spec_columns_and_every_impression(spark, settings, feature_settings):
    from pyspark.sql import functions as F

    s = _settings(settings, feature_settings, feature_time="request", exposure_negatives=3)
    log, users, videos, history = tl.bronze_frames(spark)
    spec = build_spec(s)
    assert [t.name for t in spec.tasks][-1] == "exposed" and spec.options["exposure_negatives"] == 3
    rows = build_request_examples(log, users, videos, history, s, ["2022-04-25", DATE], spec).cache()
    assert rows.columns == example_columns(spec)
    shown = rows.where(F.col("mask_click") > 0)
    assert shown.count() == len(tl.EVENTS) and shown.where(F.col("label_exposed") != 1).count() == 0
    assert spec.options["exposure_space"] == "candidates"
    unshown = rows.where(F.col("mask_click") == 0)
    # day 2 serves users 1 and 2 (active on day 1); retrieval proposes day-1 videos they were not shown
    assert unshown.count() > 0 and unshown.where(F.col("label_exposed") != 0).count() == 0
    per_request = unshown.groupBy("user_id", "date").count().collect()
    assert max(r["count"] for r in per_request) <= 3
    # masks stay in [0, 1] (the examples suite's critical rule): weights scaled by 3 / 200
    lo, hi = rows.agg(F.min("mask_exposed"), F.max("mask_exposed")).first()
    assert 0.0 <= lo and hi <= 1.0
    top = rows.where(F.col("label_exposed") == 1).agg(F.max("mask_exposed")).first()[0]
    assert top == 0.0 or abs(top - 3 / 200) < 1e-6  # 0: no shown video of the timeline was retrieved
    assert rows.select("impression_id").distinct().count() == rows.count()


def test_feature_time_choices_are_checked(settings):
    with pytest.raises(ValueError, match="feature_time must be one of"):
        check_feature_time(replace(settings.features, feature_time="later"))
    check_feature_time(replace(settings.features, feature_time="request", exposure_negatives=5))
