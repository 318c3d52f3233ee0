"""Top-K lists: the objective, deterministic order under ties, one entry per video; the rank job
writes recommendations and the replay metrics of the model and of the two baselines."""
from __future__ import annotations

import datetime as dt

import pytest

from model.ranking import parse_objective, top_k

DAY = dt.date(2022, 5, 4)
SCORES = "request_id string, user_id bigint, video_id bigint, score_click double, score_long_view double, " \
         "score_like double, date date"
ROWS = [  # objective with click=1,long_view=1,like=1
    ("r1", 1, 10, 0.5, 0.5, 0.0, DAY),   # 1.0
    ("r1", 1, 11, 0.4, 0.5, 0.1, DAY),   # 1.0: tie with v10, v10 first
    ("r1", 1, 12, 0.3, 0.3, 0.3, DAY),   # 0.9
    ("r1", 1, 13, 0.9, 0.9, 0.2, DAY),   # 2.0
    ("r2", 2, 10, 0.1, 0.1, 0.1, DAY),   # 0.3
    ("r3a", 3, 20, 0.2, 0.2, 0.1, DAY),  # 0.5
    ("r3b", 3, 20, 0.3, 0.3, 0.1, DAY),  # 0.7: the same video in the user's second request: kept once, here
    ("r3b", 3, 21, float("nan"), 0.3, 0.1, DAY),  # NaN objective: left out
]


def test_objective_parsing_refuses_bad_terms():
    assert parse_objective("click=1,long_view=2,like=5") == (("click", 1.0), ("long_view", 2.0), ("like", 5.0))
    for bad in ("click", "click=x", "click=1,click=2", "", "=3"):
        with pytest.raises(ValueError):
            parse_objective(bad)


def test_top_k_is_deterministic_under_ties_and_keeps_a_video_once(spark):
    df = spark.createDataFrame(ROWS, SCORES)
    weights = parse_objective("click=1,long_view=1,like=1")
    for partitions in (1, 3):  # the order does not depend on how the rows are spread
        got = top_k(df.repartition(partitions), weights, k=3).orderBy("user_id", "rank").collect()
        assert [(r["user_id"], r["rank"], r["video_id"], r["request_id"]) for r in got] == [
            (1, 1, 13, "r1"), (1, 2, 10, "r1"), (1, 3, 11, "r1"), (2, 1, 10, "r2"), (3, 1, 20, "r3b")]
        assert got[0]["objective"] == pytest.approx(2.0)
    weighted = top_k(df, parse_objective("like=5"), k=1).where("user_id = 1").first()
    assert weighted["video_id"] == 12  # like-heavy objective: v12 (like 0.3) wins


def test_a_retrieval_term_blends_the_retrieval_score_in(spark):
    from pyspark.sql import functions as F

    retrieval = {10: 0.0, 11: 0.05, 12: None, 13: 0.0}  # v12 has no retrieval score: counts 0
    df = spark.createDataFrame(ROWS[:4], SCORES).withColumn(
        "retrieval_score", F.element_at(F.create_map(*[F.lit(x) for kv in retrieval.items() for x in kv]), F.col("video_id")))
    blended = top_k(df, parse_objective("click=1,long_view=1,like=1,retrieval=30"), k=4).orderBy("rank").collect()
    # v11: 1.0 + 30 * 0.05 = 2.5 overtakes v13 (2.0); v12 stays last at 0.9
    assert [(r["video_id"], round(r["objective"], 6)) for r in blended] == [(11, 2.5), (13, 2.0), (10, 1.0), (12, 0.9)]


def test_the_exposure_objective_multiplies_the_task_terms_by_p_exposed(spark):
    from pyspark.sql import functions as F

    exposed = {10: 0.9, 11: 0.1, 12: 0.5, 13: 0.2}
    df = spark.createDataFrame(ROWS[:4], SCORES).withColumn(
        "score_exposed", F.element_at(F.create_map(*[F.lit(x) for kv in exposed.items() for x in kv]), F.col("video_id")))
    weights = parse_objective("expected_actions")
    assert weights == parse_objective("exposed*click=1,long_view=1,like=1")
    got = top_k(df, weights, k=4).orderBy("rank").collect()
    # v10: .9 x 1.0 = .9; v12: .5 x .9 = .45; v13: .2 x 2.0 = .4; v11: .1 x 1.0 = .1
    assert [(r["video_id"], round(r["objective"], 6)) for r in got] == [(10, 0.9), (12, 0.45), (13, 0.4), (11, 0.1)]
    with_retrieval = top_k(df.withColumn("retrieval_score", F.lit(0.01)), parse_objective(
        "exposed*click=1,long_view=1,like=1,retrieval=10"), k=1).first()
    assert round(with_retrieval["objective"], 6) == 1.0  # the retrieval term is added outside the product
    for bad in ("exposed*", "a=1*click=1", "exposed*,"):
        with pytest.raises(ValueError):
            parse_objective(bad)


def test_a_popularity_prior_multiplies_the_task_terms(spark):
    from pyspark.sql import functions as F

    clicks = {10: 0.0, 11: 3.0, 13: 1.0}  # v12 has no count: 0 clicks
    df = spark.createDataFrame(ROWS[:4], SCORES).withColumn(
        "popularity_clicks", F.element_at(F.create_map(*[F.lit(x) for kv in clicks.items() for x in kv]), F.col("video_id")))
    got = top_k(df, parse_objective("click=1,long_view=1,like=1,popularity=0.5"), k=4).orderBy("rank").collect()
    # v11: 1.0 x 4^.5 = 2; v13: 2.0 x 2^.5; v10: 1.0 x 1; v12: .9 x 1
    assert [(r["video_id"], round(r["objective"], 6)) for r in got] == [
        (13, round(2 * 2 ** 0.5, 6)), (11, 2.0), (10, 1.0), (12, 0.9)]
    assert top_k(df, parse_objective("click=1,long_view=1,like=1,popularity=0"), k=1).first()["video_id"] == 13
    for bad in ("popularity=1", "popularity=1,retrieval=2", "exposed*popularity=1"):
        with pytest.raises(ValueError, match="TASK=WEIGHT"):
            parse_objective(bad)


def test_rank_job_writes_lists_and_replay_metrics(spark, settings, tmp_path_factory, capsys):
    from pyspark.sql import functions as F

    from conf.lake import write_table
    from conf.tables import BRONZE_LOG, BRONZE_VIDEOS, CANDIDATES, SCORES as SCORES_TABLE
    from features.candidates import conform_candidates
    from features.retrieval import request_time_ms
    from jobs.rank import main

    s = settings.with_lake(str(tmp_path_factory.mktemp("rank_lake")))
    t = request_time_ms("2022-05-04")
    scores = (spark.createDataFrame(ROWS[:5], SCORES)
              .withColumn("impression_id", F.lit(None).cast("string")).withColumn("model_name", F.lit("m"))
              .withColumn("model_version", F.lit("1")).withColumn("feature_version", F.lit(7).cast("long"))
              .withColumn("score_play_time", F.lit(1.0)).withColumn("source", F.lit("retrieval")))
    write_table(scores, s, SCORES_TABLE)
    cands = conform_candidates(spark.createDataFrame(ROWS[:5], SCORES).select(
        "request_id", "user_id", "video_id", F.lit(t).cast("long").alias("request_time_ms"), "date",
        F.lit("retrieval").alias("source"), F.array(F.lit("popular")).alias("channels"),
        (F.lit(100.0) - F.col("video_id")).alias("retrieval_score")))  # retrieval order: smaller id first
    write_table(cands, s, CANDIDATES)
    log = spark.createDataFrame(  # user 1 clicks v11 on the date, v13 was clicked the day before (popularity)
        [(1, 11, t + 5, 1, 0, 0, 0, DAY), (2, 13, t - 5, 1, 0, 0, 0, DAY - dt.timedelta(days=1)),
         (9, 13, t - 9, 1, 0, 0, 0, DAY - dt.timedelta(days=1))],
        "user_id bigint, video_id bigint, time_ms bigint, is_click int, long_view int, is_like int, "
        "play_time_ms bigint, date date")
    write_table(log, s, BRONZE_LOG)
    write_table(spark.createDataFrame([(v,) for v in range(10, 30)], "video_id bigint"), s, BRONZE_VIDEOS)

    assert main(["--lake", s.lake.root, "--model", "m@1", "--date", "2022-05-04", "--k", "2"]) == 0
    recs = spark.read.format("delta").load(s.lake.table_path("recommendations")).orderBy("user_id", "rank").collect()
    assert [(r["user_id"], r["rank"], r["video_id"]) for r in recs] == [(1, 1, 13), (1, 2, 10), (2, 1, 10)]
    assert recs[0]["channels"] == ["popular"] and recs[0]["feature_version"] == 7
    # the default objective: the task scores times the popularity prior, (1 + 2)^2 for v13
    assert {r["objective_spec"] for r in recs} == {"click=1,long_view=1,like=1,popularity=2"}
    assert recs[0]["objective"] == pytest.approx(2.0 * 9)
    rows = spark.read.format("delta").load(s.lake.table_path("metrics")).collect()
    metrics = {(r["model_name"], r["task"], r["metric"]): r for r in rows if r["slice"] == "list@2"}
    # user 1's only positive, v11: not in the model's top 2 (13, 10); first in the retrieval
    # order? no: 10 (score 90) then 11 (89) -> rank 2, NDCG 1/log2(3); popularity puts v13 first, then 10
    assert metrics[("m", "click", "recall")]["value"] == 0.0 and metrics[("m", "click", "recall")]["n"] == 1
    assert metrics[("retrieval_order", "click", "ndcg")]["value"] == pytest.approx(0.6309298, rel=1e-6)
    assert metrics[("popularity", "click", "hit_rate")]["value"] == 0.0
    assert metrics[("m", "all", "coverage")]["value"] == pytest.approx(2 / 20)
    assert {r["slice"] for r in metrics.values()} == {"list@2"} and {r["slice"] for r in rows} == {"list@2", "ips_list@2"}
    ips = {(r["model_name"], r["task"], r["metric"]): r["value"] for r in rows if r["slice"] == "ips_list@2"}
    # one positive per user: the IPS replay equals the naive one; the ceiling: v11 is among user 1's candidates
    assert ips[("retrieval_order", "click", "ndcg")] == pytest.approx(0.6309298, rel=1e-6)
    assert ips[("m", "click", "recall_ceiling")] == 1.0 == metrics[("m", "click", "recall_ceiling")]["value"]
    out = capsys.readouterr().out
    assert "list metrics @2" in out and "3 list entries for 2 users" in out
    assert "IPS-weighted list metrics @2" in out and "propensities click: gamma" in out
    assert "m@1 - popularity" in out and "m@1 - retrieval_order" in out  # each model against each baseline
    # idempotent: a rerun replaces the lists and the metrics
    assert main(["--lake", s.lake.root, "--model", "m@1", "--date", "2022-05-04", "--k", "2"]) == 0
    assert spark.read.format("delta").load(s.lake.table_path("recommendations")).count() == 3
    assert spark.read.format("delta").load(s.lake.table_path("metrics")).count() == len(rows)
    assert main(["--lake", s.lake.root, "--model", "m@1", "--date", "2022-05-04", "--objective", "click=x"]) == 2
    # the popularity prior counts v13's 2 clicks of the day before the request time: 2.0 x (1 + 2)^1
    assert main(["--lake", s.lake.root, "--model", "m@1", "--date", "2022-05-04", "--k", "2", "--no-evaluate",
                 "--objective", "click=1,long_view=1,like=1,popularity=1"]) == 0
    recs = spark.read.format("delta").load(s.lake.table_path("recommendations")).orderBy("user_id", "rank").collect()
    assert [(r["user_id"], r["video_id"], round(r["objective"], 6)) for r in recs] == [
        (1, 13, 6.0), (1, 10, 1.0), (2, 10, 0.3)]
    assert {r["objective_spec"] for r in recs} == {"click=1,long_view=1,like=1,popularity=1"}
