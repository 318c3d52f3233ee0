"""The one end-to-end run: ``infnet demo`` as a user runs it, on a user sample of the real log.

It runs in its own process (its own JVM, lake and Derby catalog), then a second process proves
the catalog is persistent by querying the tables by name with ``infnet sql``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conf.settings import DEMO_DATA_DIR

pytestmark = pytest.mark.e2e
USER_SAMPLE_MODULO = 40  # ~700 users, ~4k impressions over the 10 days


def run_cli(*args: str, timeout: int = 2400) -> subprocess.CompletedProcess:
    env = {**os.environ, "INFNET_SPARK_MASTER": "local[2]", "INFNET_SHUFFLE_PARTITIONS": "2"}
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    log = pd.read_csv(DEMO_DATA_DIR / "log_standard_4_25_to_5_04_pure.csv.gz")
    sample = log[log.user_id % USER_SAMPLE_MODULO == 0]
    sample.to_csv(work / "log.csv.gz", index=False)
    lake = work / "lake"
    # batches of 128 for up to 4 epochs: the default 1024-row batches give the ~3k training rows of
    # this sample 3 steps per epoch, after which both models still rank clicks at chance
    result = run_cli("demo", "--lake", str(lake), "--log", str(work / "log.csv.gz"), "--epochs", "4",
                     "--train-flag=--batch-size=128", "--n-boot", "20")
    assert result.returncode == 0, f"demo failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return lake, len(sample), result


def test_demo_lands_every_table_with_reconciled_counts(spark, demo_lake):
    lake, n_sample, _ = demo_lake
    read = lambda name: spark.read.format("delta").load(str(lake / "tables" / name))  # noqa: E731
    assert read("bronze_log").count() == n_sample
    assert read("examples").count() == n_sample
    test_days = read("candidates").where("source = 'logged'")
    n_candidates = test_days.count()
    assert n_candidates == read("bronze_log").where("date >= '2022-05-03'").count() > 0
    scores = read("scores")
    assert sorted(r[0] for r in scores.select("model_name").distinct().collect()) == ["infnet", "mmoe"]
    for model in ("infnet", "mmoe"):
        assert scores.where(f"model_name = '{model}' AND source = 'logged'").count() == n_candidates
    assert scores.where("score_click < 0 OR score_click > 1 OR score_like IS NULL").count() == 0
    metrics = read("metrics").where("slice = 'all' AND metric = 'auc' AND task = 'click'")
    assert metrics.count() == 2 * 2  # two models x two test dates
    assert read("ab_reports").count() > 0
    assert read("quality_results").where("success = false AND severity = 'critical'").count() == 0


def test_demo_ranks_retrieval_candidates_into_recommendations(spark, demo_lake):
    from pyspark.sql import functions as F

    lake, _, result = demo_lake
    read = lambda name: spark.read.format("delta").load(str(lake / "tables" / name))  # noqa: E731
    retrieval = read("candidates").where("source = 'retrieval'")
    active = read("bronze_log").where("date = '2022-05-03'").select("user_id").distinct().count()
    requests = retrieval.select("request_id").distinct().count()
    assert 0 < requests <= active  # one request per user active the day before (fewer: all seen)
    assert retrieval.groupBy("request_id").count().where("count > 200").count() == 0
    assert retrieval.where("date != '2022-05-04' OR size(channels) = 0").count() == 0
    for model in ("infnet", "mmoe"):
        assert read("scores").where(f"model_name = '{model}' AND source = 'retrieval'").count() == retrieval.count()
    recs = read("recommendations")
    per_user = recs.groupBy("model_name", "user_id").agg(F.count(F.lit(1)).alias("n"), F.max("rank").alias("last"),
                                                         F.countDistinct("video_id").alias("videos"))
    assert per_user.where("n > 50 OR n != last OR n != videos").count() == 0  # ranks 1..n, each video once
    assert sorted(r[0] for r in recs.select("model_name").distinct().collect()) == ["infnet", "mmoe"]
    ordered = recs.where("model_name = 'infnet'").select("user_id", "rank", "objective").toPandas()
    ordered = ordered.sort_values(["user_id", "rank"])
    assert (ordered.groupby("user_id")["objective"].diff().dropna() <= 0).all()  # best first
    lists = read("metrics").where("slice = 'list@50' AND date = '2022-05-04'")
    names = {r[0] for r in lists.select("model_name").distinct().collect()}
    assert names == {"infnet", "mmoe", "retrieval_order", "popularity"}
    recall = {r["model_name"]: r["value"] for r in lists.where("task = 'click' AND metric = 'recall'").collect()}
    assert all(0 <= v <= 1 for v in recall.values()) and max(recall.values()) > 0
    assert read("ab_reports").where("slice = 'list@50'").count() > 0
    assert "ranked lists on 2022-05-04" in result.stdout


def test_evaluate_rerun_keeps_the_list_metrics(spark, demo_lake):
    lake, _, _ = demo_lake
    lists = lambda: spark.read.format("delta").load(str(lake / "tables" / "metrics")).where(  # noqa: E731
        "slice = 'list@50' AND model_name = 'infnet'").count()
    before = lists()
    result = run_cli("evaluate", "--lake", str(lake), "--model", "infnet@challenger", "--date", "2022-05-04")
    assert result.returncode == 0, result.stderr[-4000:]
    assert lists() == before > 0
    assert "infnet@1" in result.stdout  # the alias pinned to the version it names


def test_demo_writes_the_ab_report_and_models(demo_lake):
    lake, _, result = demo_lake
    reports = list((lake / "reports" / "ab").glob("*/summary.md"))
    assert len(reports) == 1
    summary = reports[0].read_text()
    assert all(task in summary for task in ("click", "like", "long_view"))
    assert "<img" in (reports[0].parent / "report.html").read_text()
    assert sorted(p.name for p in (lake / "models").iterdir() if not p.name.startswith(".")) == ["infnet", "mmoe"]
    # each training is an MLflow run in the lake's SQLite store, finished, with its test metrics
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{lake / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("infnet-train").experiment_id])
    assert sorted(r.data.tags["infnet.model_ref"] for r in runs) == ["infnet@1", "mmoe@1"]
    assert all(r.info.status == "FINISHED" and "test.mtl_auc" in r.data.metrics for r in runs)
    # ... whose model is a registered version linked to it, @challenger; the promotion step gave the
    # report's winner @champion, or said why it moved nothing
    versions = {v.name: v for m in ("infnet", "mmoe") for v in client.search_model_versions(f"name = '{m}'")}
    assert {n: v.run_id for n, v in versions.items()} == {r.data.tags["infnet.model_ref"][:-2]: r.info.run_id for r in runs}
    aliases = {m.name: {a: int(v) for a, v in m.aliases.items()} for m in client.search_registered_models()}
    assert all(aliases[n]["challenger"] == 1 for n in ("infnet", "mmoe"))
    promoted = [line for line in result.stdout.splitlines() if line.startswith("demo: promote: ")]
    champions = [n for n in ("infnet", "mmoe") if "champion" in aliases[n]]
    assert len(promoted) == 1, result.stdout[-3000:]
    if champions:
        assert len(champions) == 1 and promoted[0].startswith(f"demo: promote: {champions[0]}@champion -> version 1")
    else:
        assert promoted[0].startswith("demo: promote: no alias moved (not promoted: infnet@1 ")


def test_the_catalog_persists_for_sql_in_a_new_process(demo_lake):
    lake, _, _ = demo_lake
    result = run_cli("sql", "--lake", str(lake),
                     "SELECT model_name, count(*) AS n FROM scores GROUP BY model_name ORDER BY model_name")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "infnet" in result.stdout and "mmoe" in result.stdout
    bad = run_cli("sql", "--lake", str(lake), "SELECT * FROM no_such_table")
    assert bad.returncode == 2 and "no_such_table" in bad.stderr.lower()


def test_rescoring_a_date_with_flat_rows_replaces_it_with_the_same_scores(spark, demo_lake):
    lake, _, _ = demo_lake
    scores = lambda: (spark.read.format("delta").load(str(lake / "tables" / "scores"))  # noqa: E731
                      .where("model_name = 'infnet' AND date = '2022-05-03'")
                      .select("impression_id", "score_click", "score_like").toPandas()
                      .sort_values("impression_id").reset_index(drop=True))
    packed = scores()
    result = run_cli("score", "--lake", str(lake), "--model", "infnet", "--date", "2022-05-03",
                     "--layout", "flat", "--udf", "pandas")
    assert result.returncode == 0, result.stderr[-4000:]
    flat = scores()
    assert len(flat) == len(packed) > 0 and flat["impression_id"].tolist() == packed["impression_id"].tolist()
    pd.testing.assert_frame_equal(flat, packed, rtol=1e-5, atol=1e-6)


def test_the_trained_models_beat_chance_and_a_popularity_ranking(spark, demo_lake):
    """Counting metric rows says nothing about learning. On the held-out days each model's click
    AUC (both days pooled, from its scores and the examples' labels, scored with scikit-learn) must
    beat 0.5 by two standard errors (Hanley-McNeil) and beat ranking by the video's click count or
    smoothed click rate on the earlier days."""
    import math

    from pyspark.sql import functions as F
    from sklearn.metrics import roc_auc_score

    lake, _, _ = demo_lake
    read = lambda name: spark.read.format("delta").load(str(lake / "tables" / name))  # noqa: E731
    examples = read("examples")
    popularity = (examples.where("date < '2022-05-03'").groupBy("video_id")
                  .agg(F.sum("label_click").alias("clicks"), F.count(F.lit(1)).alias("shown")))
    rows = (read("scores").join(examples.select("impression_id", "label_click"), "impression_id")
            .join(popularity, "video_id", "left").fillna(0, ["clicks", "shown"])
            .select("model_name", "label_click", "score_click", "clicks", "shown").toPandas())
    assert sorted(rows["model_name"].unique()) == ["infnet", "mmoe"]
    seen = {}
    for model, part in rows.groupby("model_name"):
        y = part["label_click"]
        auc = roc_auc_score(y, part["score_click"])
        popular = max(roc_auc_score(y, part["clicks"]), roc_auc_score(y, (part["clicks"] + 1) / (part["shown"] + 2)))
        pos, neg = int(y.sum()), int(len(y) - y.sum())
        q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
        se = math.sqrt((auc * (1 - auc) + (pos - 1) * (q1 - auc**2) + (neg - 1) * (q2 - auc**2)) / (pos * neg))
        seen[model] = (round(auc, 4), round(popular, 4), round(se, 4), len(y))
        assert auc > 0.5 + 2 * se and auc > popular, f"click AUC, popularity AUC, SE, rows: {seen}"


def test_scoring_with_a_truncated_weights_file_is_one_line_and_writes_nothing(demo_lake):
    import json
    import shutil

    lake, _, _ = demo_lake
    # a pre-registry store's folder layout: the store registers it on first use (model/store.py)
    broken = lake / "models" / "broken" / "000001"
    [mmoe] = [p for p in (lake / "models" / "mmoe").iterdir() if (p / "info.json").exists()]
    shutil.copytree(mmoe, broken)
    info = json.loads((broken / "info.json").read_text())
    (broken / "info.json").write_text(json.dumps({**info, "name": "broken"}))
    weights = broken / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:1000])  # as a failed copy leaves it
    log_before = sorted((lake / "tables" / "scores" / "_delta_log").glob("*.json"))
    result = run_cli("score", "--lake", str(lake), "--model", "broken", "--date", "2022-05-03", "--source", "logged")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines[-1].startswith("score: error: broken@1: "), result.stderr[-3000:]
    assert "weights.pt is not the file that was saved (1,000 bytes" in lines[-1] and "Traceback" not in result.stderr
    assert sorted((lake / "tables" / "scores" / "_delta_log").glob("*.json")) == log_before
    shutil.rmtree(broken.parent)
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{lake / 'mlflow' / 'mlflow.db'}").delete_registered_model("broken")
