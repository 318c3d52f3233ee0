"""List metrics against a hand computation, and the paired bootstrap of two arms' lists."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from evaluation.lists import compare_lists, coverage, format_list_metrics, per_user_metrics, summarise, versus_baselines

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


def write_arm_lists(spark, s, day, orders: dict) -> None:
    """``recommendations`` of version 1 of each arm in ``orders`` (name -> video order), the same
    list for users 1 and 2 on ``day``; the table's other columns null."""
    from pyspark.sql import functions as F

    from conf.lake import write_table
    from conf.schemas import RECOMMENDATIONS_SCHEMA
    from conf.tables import RECOMMENDATIONS

    recs = [(day, user, name, "1", rank, video, 1.0, "r", "retrieval", "x=1")
            for name, order in orders.items() for user in (1, 2) for rank, video in enumerate(order, 1)]
    df = spark.createDataFrame(recs, "date date, user_id bigint, model_name string, model_version string, rank int, "
                                     "video_id bigint, objective double, request_id string, source string, "
                                     "objective_spec string").withColumn("ranked_at", F.current_timestamp())
    write_table(df.select(*[(F.col(f.name) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name)
                            for f in RECOMMENDATIONS_SCHEMA.fields]), s, RECOMMENDATIONS)


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


def test_each_model_is_compared_with_each_baseline():
    better = LISTS.copy()
    better.loc[(better["user_id"] == 1) & (better["video_id"] == 13), "rank"] = 1
    better.loc[(better["user_id"] == 1) & (better["video_id"] == 10), "rank"] = 4
    lists = {("m", "3"): better, ("popularity", "0"): LISTS, ("retrieval_order", "0"): better}
    table = versus_baselines(lists, [("m", "3")], POSITIVES, k=3, catalog_size=20, n_boot=50)
    assert set(zip(table["model"], table["baseline"])) == {("m@3", "popularity"), ("m@3", "retrieval_order")}
    assert set(table["metric"]) == {"recall", "ndcg"}
    click = table[(table["task"] == "click") & (table["metric"] == "recall")].set_index("baseline")
    assert click.loc["popularity", "delta"] == pytest.approx(1 / 9) and click.loc["retrieval_order", "delta"] == 0
    frame = pd.DataFrame({"model_name": ["m"], "model_version": ["3"], "task": ["click"], "metric": ["recall"],
                          "slice": ["list@3"], "value": [0.5], "n": [3]})
    frame.attrs["versus_baselines"] = table.to_dict("records")
    text = format_list_metrics(frame, 3)
    assert "m@3 - popularity" in text and "+0.1111" in text


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


    from conf.lake import write_table
    from conf.tables import BRONZE_LOG, BRONZE_VIDEOS, CANDIDATES
    from evaluation.ab import ABConfig
    from evaluation.lists import compare_list_arms
    from features.candidates import conform_candidates
    from conf.syntax import ModelRef

    s = settings.with_lake(str(tmp_path_factory.mktemp("ab_lists")))
    day, t = dt.date(2022, 5, 4), 1_000
    write_arm_lists(spark, s, day, {"ctl": [10, 11, 12], "trt": [12, 10, 11]})  # user 1 clicks v12 on the day
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


# -- the IPS replay, the ceiling, the propensities ------------------------------------------------

IPS_LISTS = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "video_id": [10, 11, 12, 20, 21], "rank": [1, 2, 3, 1, 2]})
IPS_POSITIVES = pd.DataFrame([(1, 11, "click"), (1, 12, "click"), (1, 99, "click"), (2, 20, "click"), (2, 21, "click")],
                             columns=["user_id", "video_id", "task"])
IPS_PROPENSITIES = pd.DataFrame({"task": "click", "video_id": [11, 12, 20, 21], "propensity": [0.5, 1.0, 1.0, 0.5]})


def test_ips_recall_ndcg_and_ceiling_equal_a_hand_computation():
    from evaluation.lists import recall_ceiling, weight_positives

    weighted, fits = weight_positives(IPS_POSITIVES, IPS_PROPENSITIES, clip=0.25)
    # weights 1/p: v11 2, v12 1, v99 (no count: the clip 0.25) 4, v20 1, v21 2
    assert weighted.set_index("video_id")["weight"].to_dict() == {11: 2.0, 12: 1.0, 99: 4.0, 20: 1.0, 21: 2.0}
    assert fits["click"].n_clipped == 1 and fits["click"].n_positives == 5
    m = per_user_metrics(IPS_LISTS, weighted, k=3, weighted=True).set_index("user_id")
    d = lambda r: 1 / math.log2(r + 1)  # noqa: E731
    # user 1: hits v11 (rank 2, w 2) and v12 (rank 3, w 1) of 2 + 1 + 4; the ideal list is 4, 2, 1
    assert m.loc[1, "recall"] == pytest.approx(3 / 7)
    assert m.loc[1, "ndcg"] == pytest.approx((2 * d(2) + 1 * d(3)) / (4 * d(1) + 2 * d(2) + 1 * d(3)))
    # user 2: both positives listed, but the heavier one second: NDCG below 1 (naive: exactly 1)
    assert m.loc[2, "recall"] == 1.0
    assert m.loc[2, "ndcg"] == pytest.approx((1 * d(1) + 2 * d(2)) / (2 * d(1) + 1 * d(2)))
    assert per_user_metrics(IPS_LISTS, IPS_POSITIVES, k=3).set_index("user_id").loc[2, "ndcg"] == 1.0
    # ceiling: user 1's candidates hold 10..13, not v99; user 2's hold both
    held = pd.DataFrame({"user_id": [1, 1, 1, 1, 2, 2], "video_id": [10, 11, 12, 13, 20, 21]})
    ceiling = recall_ceiling(weighted, held, weighted=True).set_index("user_id")["recall_ceiling"]
    assert ceiling.to_dict() == pytest.approx({1: 3 / 7, 2: 1.0})
    assert recall_ceiling(IPS_POSITIVES, held).set_index("user_id")["recall_ceiling"].to_dict() == pytest.approx(
        {1: 2 / 3, 2: 1.0})
    summary = summarise(per_user_metrics(IPS_LISTS, weighted, k=3, weighted=True), IPS_LISTS, 100, 3,
                        recall_ceiling(weighted, held, weighted=True), weighted=True).set_index(["task", "metric"])
    assert set(summary["slice"]) == {"ips_list@3"}
    assert set(summary.index) == {("click", "recall"), ("click", "ndcg"), ("click", "recall_ceiling")}
    assert summary.loc[("click", "recall"), "value"] == pytest.approx((3 / 7 + 1) / 2)
    assert summary.loc[("click", "recall_ceiling"), "value"] == pytest.approx((3 / 7 + 1) / 2)
    with pytest.raises(ValueError, match="weight"):
        per_user_metrics(IPS_LISTS, IPS_POSITIVES, k=3, weighted=True)


def test_propensities_follow_the_formula_and_the_clip():
    from evaluation.lists import fit_propensities

    counts = pd.DataFrame({"task": "click", "video_id": [1, 2, 3, 4], "n": [400, 100, 4, 1]})
    props, fits = fit_propensities(counts, clip=0.02, gamma=0.5)  # exponent (0.5 + 1) / 2 = 0.75
    p = props.set_index("video_id")["propensity"]
    assert p[1] == 1.0 and p[2] == pytest.approx(0.25 ** 0.75) and p[3] == pytest.approx(0.01 ** 0.75)
    assert p[4] == 0.02  # (1/400) ^ 0.75 = 0.0112: clipped
    assert fits["click"].exponent == 0.75 and not fits["click"].fitted
    _, fitted = fit_propensities(counts, clip=0.01, min_count=1)
    assert fitted["click"].fitted and fitted["click"].exponent == pytest.approx((fitted["click"].gamma + 1) / 2)
    assert "gamma" in fitted["click"].describe()


@pytest.mark.parametrize("gamma", [0.6, 0.9, 1.2])
def test_the_exponent_fit_recovers_a_synthetic_power_law(gamma):
    from evaluation.lists import fit_popularity_exponent

    ranks = np.arange(1, 3001)
    exact = 5000.0 * ranks ** -gamma
    assert fit_popularity_exponent(exact) == pytest.approx(gamma, abs=1e-9)
    p = ranks ** -gamma / (ranks ** -gamma).sum()
    sampled = np.bincount(np.random.default_rng(0).choice(len(p), size=300_000, p=p), minlength=len(p))
    assert fit_popularity_exponent(np.random.default_rng(1).permutation(sampled), min_count=10) == pytest.approx(
        gamma, abs=0.05)


def test_positive_counts_see_only_labels_visible_before_the_cut(spark):
    from evaluation.lists import positive_counts
    from features.categorical import DAY_MS

    cut = 10 * DAY_MS
    events = spark.createDataFrame([
        (1, 10, cut - 1000, 1, 0, 0, 500),       # playback ends before the cut: counted
        (2, 10, cut - 1000, 1, 1, 0, 1000),      # ends at the cut: not yet visible
        (3, 10, cut - 100, 1, 0, 0, 50),         # counted
        (1, 11, cut - 5000, 0, 1, 1, 10),        # a long view and a like
        (1, 12, cut - 2 * DAY_MS, 1, 0, 0, 0),   # before the 1-day lookback
        (1, 13, cut, 1, 0, 0, 0),                # at the cut
    ], "user_id bigint, video_id bigint, time_ms bigint, is_click int, long_view int, is_like int, play_time_ms bigint")
    got = {(r["task"], r["video_id"]): r["n"] for r in positive_counts(events, cut, lookback_days=1).collect()}
    assert got == {("click", 10): 2, ("long_view", 11): 1, ("like", 11): 1}


def test_the_coverage_interval_contains_its_estimate():
    users = np.arange(40)
    shared = pd.DataFrame({"user_id": np.repeat(users, 3), "video_id": np.tile([1, 2, 3], 40), "rank": np.tile([1, 2, 3], 40)})
    own = shared.assign(video_id=100 + 3 * shared["user_id"] + shared["rank"] - 1)  # 120 distinct videos
    positives = pd.DataFrame({"user_id": [0], "video_id": [1], "task": ["click"]})
    row = compare_lists(shared, own, positives, k=3, catalog_size=1000, n_boot=200, seed=0).set_index(
        ["task", "metric"]).loc[("all", "coverage")]
    assert row["delta"] == pytest.approx(117 / 1000)
    # a resample holds ~63 % of the distinct users, so its union covers ~76 of the 120 videos: the
    # plain percentile interval lies far below the estimate; the recentred one holds it
    assert row["ci_low"] <= row["delta"] <= row["ci_high"] and row["ci_high"] - row["ci_low"] > 0
    assert row["p_value"] < 0.05


def test_compare_lists_adds_the_ips_slice_when_positives_are_weighted():
    from evaluation.lists import weight_positives

    weighted, _ = weight_positives(IPS_POSITIVES, IPS_PROPENSITIES, clip=0.25)
    table = compare_lists(IPS_LISTS, IPS_LISTS, weighted, k=3, catalog_size=100, n_boot=20)
    assert set(table["slice"]) == {"list@3", "ips_list@3"}
    ips = table[table["slice"] == "ips_list@3"].set_index(["task", "metric"])
    assert set(ips.index) == {("click", "recall"), ("click", "ndcg")}
    assert ips.loc[("click", "recall"), "control_value"] == pytest.approx((3 / 7 + 1) / 2)


def test_ab_report_lists_with_ips_from_the_days_before(spark, settings, tmp_path_factory):
    import dataclasses
    import datetime as dt


    from conf.lake import write_table
    from conf.settings import ReplaySettings
    from conf.tables import BRONZE_LOG, BRONZE_VIDEOS, CANDIDATES
    from evaluation.ab import ABConfig
    from evaluation.lists import compare_list_arms
    from evaluation.report import list_section_lines
    from features.candidates import conform_candidates
    from features.retrieval import request_time_ms
    from conf.syntax import ModelRef

    s = dataclasses.replace(settings.with_lake(str(tmp_path_factory.mktemp("ab_ips"))),
                            replay=ReplaySettings(propensity_gamma=1.0, propensity_clip=0.01))  # p = n / max n
    day, before, t = dt.date(2022, 5, 4), dt.date(2022, 5, 3), request_time_ms("2022-05-04")
    write_arm_lists(spark, s, day, {"ctl": [10, 11, 12], "trt": [12, 11, 10]})
    write_table(conform_candidates(spark.createDataFrame(
        [(f"r{u}", u, v, t, "retrieval", day) for u in (1, 2) for v in (10, 11, 12)],
        "request_id string, user_id bigint, video_id bigint, request_time_ms bigint, source string, date date")),
        s, CANDIDATES)
    # the day before: v12 clicked 9 times, v10 3 times, v11 once; one more v11 click ends after the cut
    history = ([(u, 12, t - 1000 * u, 1, 0) for u in range(5, 14)] + [(u, 10, t - 1000 * u, 1, 0) for u in range(5, 8)]
               + [(5, 11, t - 50_000, 1, 0), (6, 11, t - 10, 1, 100)])
    log = ([(u, v, ts, c, 0, 0, p, before) for u, v, ts, c, p in history]
           + [(1, 11, t + 1, 1, 0, 0, 0, day), (1, 12, t + 2, 1, 0, 0, 0, day), (2, 10, t + 3, 1, 0, 0, 0, day)])
    write_table(spark.createDataFrame(log, "user_id bigint, video_id bigint, time_ms bigint, is_click int, "
                                           "long_view int, is_like int, play_time_ms bigint, date date"), s, BRONZE_LOG)
    write_table(spark.createDataFrame([(v,) for v in range(10, 20)], "video_id bigint"), s, BRONZE_VIDEOS)
    table = compare_list_arms(spark, s, ModelRef("ctl", "1"), ModelRef("trt", "1"), ["2022-05-04"],
                              ABConfig(n_boot=30), k=2, ips=True)
    assert set(table["slice"]) == {"list@2", "ips_list@2"}
    naive = table[table["slice"] == "list@2"].set_index(["task", "metric"])
    ips = table[table["slice"] == "ips_list@2"].set_index(["task", "metric"])
    # weights 1/p = max n / n: v12 1, v10 3, v11 9 (the late click not counted: else 4.5)
    # control lists 10, 11: user 1 hits v11 of v11 + v12 (naive 1/2, IPS 9/10), user 2 hits v10
    # treatment lists 12, 11: user 1 hits both, user 2 misses
    assert naive.loc[("click", "recall"), ["control_value", "treatment_value"]].tolist() == [0.75, 0.5]
    assert ips.loc[("click", "recall"), ["control_value", "treatment_value"]].tolist() == pytest.approx([0.95, 0.5])
    assert table.attrs["ceiling"]["click"] == (1.0, 1.0)
    fit = table.attrs["propensity_fits"]["2022-05-04"]["click"]
    assert (fit.gamma, fit.n_videos, fit.fitted) == (1.0, 3, False)
    lines = list_section_lines(table)
    assert lines[0].startswith("Recall ceiling") and "click 1.0000 / 1.0000" in lines[0]
    assert any(line.startswith("- **click recall** (ips_list@2") for line in lines)
