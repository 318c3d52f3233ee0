"""List metrics against a hand computation, and the paired bootstrap of two arms' lists."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from evaluation.lists import compare_lists, coverage, per_user_metrics, summarise

LISTS = pd.DataFrame({  # user 1: 10, 11, 12, 13; user 2: 20, 10; user 4: 30
    "user_id": [1, 1, 1, 1, 2, 2, 4],
    "video_id": [10, 11, 12, 13, 20, 10, 30],
    "rank": [1, 2, 3, 4, 1, 2, 1],
})
POSITIVES = pd.DataFrame([
    (1, 12, "click"), (1, 13, "click"), (1, 99, "click"),  # user 1: 2 of 3 clicks listed, at ranks 3 and 4
    (2, 10, "click"),                                       # user 2: its one click at rank 2
    (3, 10, "click"),                                       # user 3 has no list: not counted
    (4, 31, "click"),                                       # user 4: a miss
    (1, 10, "like"),                                        # one like, at rank 1
], columns=["user_id", "video_id", "task"])


def test_recall_ndcg_and_hit_rate_equal_a_hand_computation():
    m = per_user_metrics(LISTS, POSITIVES, k=3).set_index(["task", "user_id"])
    d = lambda r: 1 / math.log2(r + 1)  # noqa: E731 - the discount of rank r
    # user 1 at K=3: the click at rank 3 is in, the one at rank 4 is cut; 3 positives -> IDCG over 3 ranks
    assert m.loc[("click", 1), "recall"] == pytest.approx(1 / 3)
    assert m.loc[("click", 1), "ndcg"] == pytest.approx(d(3) / (d(1) + d(2) + d(3)))
    assert m.loc[("click", 1), "hit_rate"] == 1.0
    assert m.loc[("click", 2), "recall"] == 1.0 and m.loc[("click", 2), "ndcg"] == pytest.approx(d(2) / d(1))
    assert m.loc[("click", 4), ["recall", "ndcg", "hit_rate"]].tolist() == [0.0, 0.0, 0.0]
    assert m.loc[("like", 1), "ndcg"] == 1.0
    assert sorted(m.loc["click"].index) == [1, 2, 4]  # user 3 has no list
    summary = summarise(per_user_metrics(LISTS, POSITIVES, k=3), LISTS, catalog_size=20, k=3).set_index(["task", "metric"])
    assert summary.loc[("click", "recall"), "value"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert summary.loc[("click", "hit_rate"), "value"] == pytest.approx(2 / 3)
    assert summary.loc[("click", "recall"), "n"] == 3 and summary.loc[("like", "recall"), "n"] == 1
    # top 3 of the lists: 10, 11, 12 (user 1), 20, 10 (user 2), 30 (user 4): 5 distinct of 20
    assert summary.loc[("all", "coverage"), "value"] == pytest.approx(5 / 20) == coverage(LISTS, 20, 3)
    assert set(summary["slice"]) == {"list@3"}


def test_paired_bootstrap_of_two_arms():
    better = LISTS.copy()
    better.loc[(better["user_id"] == 1) & (better["video_id"] == 13), "rank"] = 1  # user 1's clicks move up
    better.loc[(better["user_id"] == 1) & (better["video_id"] == 10), "rank"] = 4
    same = compare_lists(LISTS, LISTS, POSITIVES, k=3, catalog_size=20, n_boot=50).set_index(["task", "metric"])
    assert (same["delta"] == 0).all() and (same["ci_low"] == 0).all() and (same["ci_high"] == 0).all()
    diff = compare_lists(LISTS, better, POSITIVES, k=3, catalog_size=20, n_boot=200, seed=1).set_index(["task", "metric"])
    row = diff.loc[("click", "recall")]
    assert row["control_value"] == pytest.approx((1 / 3 + 1) / 3) and row["treatment_value"] == pytest.approx((2 / 3 + 1) / 3)
    assert row["ci_low"] >= 0 and row["ci_high"] > 0 and row["n_users"] == 3
    assert diff.loc[("like", "recall"), "delta"] == -1.0  # the like at rank 1 fell out of the top 3
    assert set(diff["slice"]) == {"list@3"} and np.isfinite(diff.loc[("all", "coverage"), "ci_low"])


def test_spark_lists_and_positives(spark):
    from pyspark.sql import functions as F

    from evaluation.lists import logged_positives, top_k_per_user

    rows = spark.createDataFrame(
        [(1, 10, "a", 0.5), (1, 11, "a", 0.9), (1, 10, "b", 0.95), (1, 12, "a", 0.9), (2, 10, "c", 0.1)],
        "user_id bigint, video_id bigint, request_id string, s double")
    top = top_k_per_user(rows, [F.col("s").desc()], k=2).orderBy("user_id", "rank").collect()
    # user 1: v10 once at its best (0.95), then the 0.9 tie broken by video_id
    assert [(r["user_id"], r["video_id"], r["rank"]) for r in top] == [(1, 10, 1), (1, 11, 2), (2, 10, 1)]
    log = spark.createDataFrame([(1, 10, 100, 1, 0, 0), (1, 11, 99, 1, 1, 0), (1, 12, 200, 0, 1, 1), (5, 10, 300, 1, 1, 1)],
                                "user_id bigint, video_id bigint, time_ms bigint, is_click int, long_view int, is_like int")
    requests = spark.createDataFrame([(1, 100), (1, 150)], "user_id bigint, request_time_ms bigint")
    got = sorted(tuple(r) for r in logged_positives(log, requests).collect())
    # at or after user 1's first request (100); user 5 has no request
    assert got == [(1, 10, "click"), (1, 12, "like"), (1, 12, "long_view")]


def test_ab_report_compares_the_arms_lists_from_the_lake(spark, settings, tmp_path_factory):
    import datetime as dt

    from pyspark.sql import functions as F

    from conf.lake import write_table
    from conf.schemas import RECOMMENDATIONS_SCHEMA
    from conf.tables import BRONZE_LOG, BRONZE_VIDEOS, CANDIDATES, RECOMMENDATIONS
    from evaluation.ab import ABConfig
    from features.candidates import conform_candidates
    from jobs.ab_report import compare_list_arms
    from jobs.common import ModelRef

    s = settings.with_lake(str(tmp_path_factory.mktemp("ab_lists")))
    day, t = dt.date(2022, 5, 4), 1_000
    recs = []
    for name, order in (("ctl", [10, 11, 12]), ("trt", [12, 10, 11])):  # user 1 clicks v12 on the day
        for user in (1, 2):
            recs += [(day, user, name, "1", rank, video, 1.0, "r", "retrieval", "x=1")
                     for rank, video in enumerate(order, 1)]
    df = spark.createDataFrame(recs, "date date, user_id bigint, model_name string, model_version string, rank int, "
                                     "video_id bigint, objective double, request_id string, source string, "
                                     "objective_spec string").withColumn("ranked_at", F.current_timestamp())
    write_table(df.select(*[(F.col(f.name) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name)
                            for f in RECOMMENDATIONS_SCHEMA.fields]), s, RECOMMENDATIONS)
    write_table(conform_candidates(spark.createDataFrame([("r1", 1, 10, t, "retrieval", day), ("r2", 2, 10, t, "retrieval", day)],
                                                         "request_id string, user_id bigint, video_id bigint, "
                                                         "request_time_ms bigint, source string, date date")), s, CANDIDATES)
    write_table(spark.createDataFrame([(1, 12, t + 1, 1, 0, 0, day), (2, 11, t + 1, 1, 0, 0, day)],
                                      "user_id bigint, video_id bigint, time_ms bigint, is_click int, long_view int, "
                                      "is_like int, date date"), s, BRONZE_LOG)
    write_table(spark.createDataFrame([(v,) for v in range(10, 20)], "video_id bigint"), s, BRONZE_VIDEOS)
    table = compare_list_arms(spark, s, ModelRef("ctl", "1"), ModelRef("trt", "1"), ["2022-05-04"],
                              ABConfig(n_boot=30), k=1).set_index(["task", "metric"])
    # at K=1: control lists v10 for both (no hit), treatment v12 (user 1's click): recall 0 -> 0.5
    assert table.loc[("click", "recall"), ["control_value", "treatment_value"]].tolist() == [0.0, 0.5]
    assert table.loc[("click", "recall"), "n_users"] == 2 and set(table["slice"]) == {"list@1"}
    assert compare_list_arms(spark, s, ModelRef("ctl", "1"), ModelRef("none", "1"), ["2022-05-04"], ABConfig()) is None
