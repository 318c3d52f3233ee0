"""Metric definitions: numpy twin vs scikit-learn, Spark vs numpy, gAUC by hand, the evaluate job."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, mean_absolute_error, r2_score, roc_auc_score, root_mean_squared_error

from evaluation.metrics import (
    LOGLOSS_EPS,
    auc_np,
    calibration_np,
    compute_metrics,
    compute_metrics_np,
    gauc_np,
    join_scores_with_labels,
    log_loss_np,
    mae_np,
    r2_np,
    rmse_np,
)
from features.spec import TaskField

TASKS = (TaskField("click"), TaskField("like"), TaskField("play_time", "regression"))


def tied_binary(rng, n=400):
    y = rng.integers(0, 2, n)
    s = np.round(np.clip(0.35 + 0.3 * y + rng.normal(0, 0.25, n), 0, 1), 1)  # 11 levels: many ties, exact 0 and 1
    return y, s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y, s = tied_binary(rng)
    assert len(np.unique(s)) < 20  # the data really has ties
    assert auc_np(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    clipped = np.clip(s, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    assert log_loss_np(y, s) == pytest.approx(log_loss(y, clipped), abs=1e-12)
    assert calibration_np(y, s) == pytest.approx(s.mean() / y.mean(), abs=1e-12)
    w = rng.integers(0, 4, len(y)).astype(float)  # bootstrap-style multiplicities
    assert auc_np(y, s, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    batch = auc_np(y, s, np.stack([w, np.ones(len(y))]))
    assert batch == pytest.approx([roc_auc_score(y, s, sample_weight=w), roc_auc_score(y, s)], abs=1e-12)


def test_auc_is_undefined_with_one_class():
    assert np.isnan(auc_np(np.ones(4), np.array([0.1, 0.2, 0.3, 0.4])))


@pytest.mark.parametrize("seed", [0, 1])
def test_regression_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = np.round(np.log1p(rng.exponential(20, 300)), 1)
    p = np.round(y + rng.normal(0, 0.8, 300), 1)
    assert mae_np(y, p) == pytest.approx(mean_absolute_error(y, p), abs=1e-12)
    assert rmse_np(y, p) == pytest.approx(root_mean_squared_error(y, p), abs=1e-12)
    assert r2_np(y, p) == pytest.approx(r2_score(y, p), abs=1e-12)
    w = rng.integers(0, 3, 300).astype(float)
    assert r2_np(y, p, w) == pytest.approx(r2_score(y, p, sample_weight=w), abs=1e-12)


# Hand-computed gAUC:
#   user 1: labels 1,0,0  scores .8,.3,.8 -> pairs (.8>.3)=1, (.8=.8)=0.5 -> AUC 1.5/2 = 0.75, n=3
#   user 2: labels 1,1,0,0 scores .9,.2,.5,.4 -> .9 beats both (2), .2 beats none -> AUC 2/4 = 0.5, n=4
#   user 3: labels 1,1 (one class) -> skipped;  user 4: label 0 (one class) -> skipped
#   gAUC = (3*0.75 + 4*0.5) / (3+4) = 4.25/7
GAUC_USERS = [1, 1, 1, 2, 2, 2, 2, 3, 3, 4]
GAUC_LABELS = [1, 0, 0, 1, 1, 0, 0, 1, 1, 0]
GAUC_SCORES = [.8, .3, .8, .9, .2, .5, .4, .6, .7, .1]
GAUC_EXPECTED = 4.25 / 7


def test_gauc_hand_computed():
    g = gauc_np(np.array(GAUC_USERS), np.array(GAUC_LABELS), np.array(GAUC_SCORES))
    assert g.value == pytest.approx(GAUC_EXPECTED, abs=1e-15)
    assert (g.n_users_used, g.n_users_skipped, g.n_rows_used) == (2, 2, 7)
    # a user drawn twice by the bootstrap counts twice its impressions
    w = np.array([2, 2, 2, 1, 1, 1, 1, 1, 1, 1], float)
    assert gauc_np(np.array(GAUC_USERS), np.array(GAUC_LABELS), np.array(GAUC_SCORES), w).value == pytest.approx(
        (6 * 0.75 + 4 * 0.5) / 10
    )


def joined_frame(seed: int = 0, n: int = 360, n_users: int = 25) -> pd.DataFrame:
    """A frame shaped like join_scores_with_labels' output, with ties, masks and a null score."""
    rng = np.random.default_rng(seed)
    pdf = pd.DataFrame({
        "user_id": rng.integers(0, n_users, n).astype("int64"),
        "tab": rng.integers(0, 3, n).astype("int64"),
        "user_active_degree": rng.integers(1, 4, n).astype("int64"),
        "new_item": rng.random(n) < 0.3,
    })
    for name in ("click", "like"):
        y, s = tied_binary(rng, n)
        pdf[f"label_{name}"], pdf[f"score_{name}"] = y.astype("int64"), s
        pdf[f"mask_{name}"] = (rng.random(n) < 0.9).astype("int64")
    y = np.round(np.log1p(rng.exponential(20, n)), 1)
    pdf["label_play_time"], pdf["score_play_time"] = y, np.round(y + rng.normal(0, 1, n), 1)
    pdf["mask_play_time"] = pdf["label_click"]  # play time only where clicked
    pdf.loc[3, "score_like"] = np.nan
    return pdf


def test_spark_matches_numpy_and_sklearn(spark):
    pdf = joined_frame()
    spark_rows = compute_metrics(spark.createDataFrame(pdf), TASKS).toPandas()
    numpy_rows = compute_metrics_np(pdf, TASKS)
    assert len(spark_rows) == len(numpy_rows) > 100
    merged = spark_rows.merge(numpy_rows, on=["task", "metric", "slice"], suffixes=("_spark", "_np"), validate="1:1")
    assert len(merged) == len(numpy_rows)
    assert (merged["n_spark"] == merged["n_np"]).all()
    assert (merged["value_spark"].isna() == merged["value_np"].isna()).all()
    both = merged.dropna(subset=["value_np"])
    assert np.abs(both["value_spark"] - both["value_np"]).max() < 1e-9
    expected_slices = {"all", "tab=0", "tab=1", "tab=2", "user_active_degree=1", "new_item=true", "new_item=false"}
    assert expected_slices <= set(spark_rows["slice"])
    # slice "all" against scikit-learn
    click = pdf[pdf["mask_click"] == 1]
    got = spark_rows.set_index(["task", "metric", "slice"])["value"]
    assert got[("click", "auc", "all")] == pytest.approx(roc_auc_score(click["label_click"], click["score_click"]), abs=1e-9)
    played = pdf[pdf["mask_play_time"] == 1]
    assert got[("play_time", "rmse", "all")] == pytest.approx(
        root_mean_squared_error(played["label_play_time"], played["score_play_time"]), abs=1e-9)
    assert got[("mtl", "mtl_auc", "all")] == pytest.approx(
        (got[("click", "auc", "all")] + got[("like", "auc", "all")]) / 2, abs=1e-12)


def test_spark_gauc_hand_computed(spark):
    pdf = pd.DataFrame({"user_id": GAUC_USERS, "label_click": GAUC_LABELS, "score_click": GAUC_SCORES, "mask_click": 1})
    rows = compute_metrics(spark.createDataFrame(pdf), [TaskField("click")], ("all",)).toPandas()
    got = rows.set_index("metric")
    assert got.loc["gauc", "value"] == pytest.approx(GAUC_EXPECTED, abs=1e-12)
    assert got.loc["gauc", "n"] == 7
    assert got.loc["gauc_users_used", "value"] == 2 and got.loc["gauc_users_skipped", "value"] == 2


# ---------------------------------------------------------------------------------------------
# join + the evaluate job
# ---------------------------------------------------------------------------------------------

D1, D2 = dt.date(2022, 5, 1), dt.date(2022, 5, 2)
ALL_TASKS = (TaskField("click"), TaskField("like"), TaskField("long_view"), TaskField("play_time", "regression"))
DEGREES = ("full_active", "high_active", "UNKNOWN")  # raw bronze_users values, by user % 3


def examples_pdf() -> pd.DataFrame:
    """Two days of impressions: 8 users x 5 videos per day; videos 0-4 on day 1, 2-6 on day 2.
    The hashed slice columns hold bucket numbers unlike any raw value (what the model sees)."""
    rows = []
    for day, videos in ((D1, range(0, 5)), (D2, range(2, 7))):
        for user in range(8):
            for v in videos:
                rows.append(dict(impression_id=f"{day}-{user}-{v}", user_id=user, video_id=v, date=day,
                                 cat_tab=v % 2 + 97, cat_user_active_degree=user % 3 + 777,
                                 label_click=int((user + v) % 3 == 0), label_like=int((user * v) % 4 == 1),
                                 label_long_view=int((user + 2 * v) % 3 == 1),
                                 label_play_time=float(np.log1p((user + v) % 7 * 10.0))))
    pdf = pd.DataFrame(rows)
    for t in ALL_TASKS:
        pdf[t.mask_column] = 1
    return pdf


def bronze_pdfs(examples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The raw values behind the hashed slices: tab = video % 2, activity degree by user % 3."""
    log = examples[["impression_id", "user_id", "date"]].assign(tab=(examples["video_id"] % 2).astype("int32"))
    users = pd.DataFrame({"user_id": range(8), "user_active_degree": [DEGREES[u % 3] for u in range(8)]})
    return log, users


def scores_pdf(examples: pd.DataFrame, model: str, version: str, day: dt.date, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    part = examples[examples["date"] == day]
    out = pd.DataFrame({
        "request_id": [f"r-{u}-{day}" for u in part["user_id"]],
        "impression_id": part["impression_id"].to_numpy(),
        "user_id": part["user_id"].to_numpy(), "video_id": part["video_id"].to_numpy(), "date": day,
        "model_name": model, "model_version": version, "feature_version": 1,
        "scored_at": pd.Timestamp("2022-05-10"),
    })
    for t in ALL_TASKS:
        noise = rng.normal(0, 0.3, len(part))
        base = part[t.column].to_numpy(float)
        out[f"score_{t.name}"] = base + noise if t.kind == "regression" else np.clip(0.3 + 0.4 * base + noise, 0.01, 0.99)
    return out


def test_join_attaches_labels_raw_slices_and_new_item(spark):
    from evaluation.metrics import raw_slice_values

    ex = examples_pdf()
    sc = scores_pdf(ex, "m", "1", D2)
    sc.loc[0, "impression_id"] = None  # a candidate never shown: no label, dropped
    log, users = bronze_pdfs(ex)
    slices = raw_slice_values(spark.createDataFrame(log), spark.createDataFrame(users))
    joined = join_scores_with_labels(spark.createDataFrame(sc), spark.createDataFrame(ex), ALL_TASKS, slices).toPandas()
    assert len(joined) == len(sc) - 1
    assert {"label_click", "mask_play_time", "tab", "user_active_degree", "new_item"} <= set(joined.columns)
    new_by_video = joined.groupby("video_id")["new_item"].first().to_dict()
    # videos 2-4 were shown on D1 (returning), 5-6 first appear on D2 (new)
    assert new_by_video == {2: False, 3: False, 4: False, 5: True, 6: True}
    # the raw values, not the hashed buckets 97/98 and 777..779 of examples
    assert joined.groupby("video_id")["tab"].first().to_dict() == {2: 0, 3: 1, 4: 0, 5: 1, 6: 0}
    assert joined.groupby("user_id")["user_active_degree"].first().to_dict() == {u: DEGREES[u % 3] for u in range(8)}


@pytest.fixture(scope="module")
def lake_with_scores(spark, settings, tmp_path_factory):
    """An isolated lake and catalog database: examples, raw slice sources and three score sets."""
    from dataclasses import replace

    from conf.lake import write_table
    from conf.tables import BRONZE_LOG, BRONZE_USERS, EXAMPLES, SCORES

    database = "infnet_evaluation_tests"
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    esettings = replace(settings, lake=replace(settings.lake, root=str(tmp_path_factory.mktemp("eval_lake")),
                                               database=database))
    ex = examples_pdf()
    write_table(spark.createDataFrame(ex), esettings, EXAMPLES)
    log, users = bronze_pdfs(ex)
    write_table(spark.createDataFrame(log), esettings, BRONZE_LOG)
    write_table(spark.createDataFrame(users), esettings, BRONZE_USERS)
    scores = pd.concat([scores_pdf(ex, "ctl", "1", D2, seed=1), scores_pdf(ex, "trt", "2", D2, seed=2),
                        scores_pdf(ex, "ctl", "1", D1, seed=3)])
    write_table(spark.createDataFrame(scores), esettings, SCORES)
    yield esettings
    # the jobs' get_spark() re-applies the default shuffle partitions to the shared test session
    spark.conf.set("spark.sql.shuffle.partitions", str(settings.spark.shuffle_partitions))


def run_evaluate(esettings, *argv: str) -> int:
    """The evaluate job as `infnet evaluate` runs it, on the isolated lake and database."""
    from jobs.common import run_job
    from jobs.evaluate import body, build_parser

    argv = ["--lake", esettings.lake.root, *argv]  # the session's settings; the body gets esettings (its database)
    return run_job(build_parser(), lambda spark, _, args: body(spark, esettings, args), argv)


def test_evaluate_job_reruns_replace_rows(spark, lake_with_scores, capsys):
    from conf.lake import read_table, write_table
    from conf.tables import METRICS

    settings = lake_with_scores
    other = pd.DataFrame([dict(model_name="other", model_version="9", task="click", metric="auc", slice="all",
                               value=0.5, n=10, date=D2)])
    write_table(spark.createDataFrame(other).selectExpr(
        "model_name", "model_version", "task", "metric", "slice", "value", "n", "date"), settings, METRICS)
    argv = ["--model", "ctl@1", "--dates", "2022-05-01..2022-05-02"]
    assert run_evaluate(settings, *argv) == 0
    first = read_table(spark, settings, METRICS).toPandas()
    assert run_evaluate(settings, *argv) == 0
    out = capsys.readouterr().out
    assert "mtl_auc" in out
    assert "evaluate ctl@1: 80 scores; not graded: 0 never shown, 0 without an examples row, 0 null/NaN" in out
    again = read_table(spark, settings, METRICS).toPandas()
    assert len(again) == len(first) > 100
    assert not again.duplicated(["model_name", "model_version", "task", "metric", "slice", "date"]).any()
    assert len(again[again["model_name"] == "other"]) == 1  # another model's rows are left alone
    ctl = again[again["model_name"] == "ctl"]
    assert set(ctl["date"].astype(str)) == {"2022-05-01", "2022-05-02"}
    # every AUC is the one scikit-learn gives on that day's rows
    ex = examples_pdf()
    aucs = ctl[(ctl["slice"] == "all") & (ctl["metric"] == "auc")].set_index(["date", "task"])["value"]
    assert len(aucs) == 2 * 3  # 3 binary tasks x 2 dates
    for day, seed in ((D1, 3), (D2, 1)):
        scored = scores_pdf(ex, "ctl", "1", day, seed=seed).merge(ex, on="impression_id")
        for task in ("click", "like", "long_view"):
            expected = roc_auc_score(scored[f"label_{task}"], scored[f"score_{task}"])
            assert aucs[(day, task)] == pytest.approx(expected, abs=1e-12)
    # slices name the raw values the user knows, never the hashed buckets
    slices = set(ctl["slice"])
    assert slices == {"all", "tab=0", "tab=1", "user_active_degree=full_active", "user_active_degree=high_active",
                      "user_active_degree=UNKNOWN", "new_item=true", "new_item=false"}
    counts = ctl[ctl["metric"].str.startswith("n_")].set_index(["date", "task", "metric"])["n"]
    assert counts[(D2, "all", "n_scored")] == 40 and counts[(D2, "all", "n_without_examples")] == 0
    assert counts[(D1, "like", "n_invalid_scores")] == 0


def test_scores_the_metrics_cannot_grade_are_counted(spark, lake_with_scores, capsys):
    """Unlogged candidates and impression ids without an examples row used to vanish in the join."""
    from conf.lake import read_table, write_table
    from conf.tables import METRICS, SCORES

    settings = lake_with_scores
    sc = scores_pdf(examples_pdf(), "gap", "1", D2, seed=4)
    sc.loc[:2, "impression_id"] = None  # 3 candidates never shown
    sc.loc[3:4, "impression_id"] = ["gone-1", "gone-2"]  # 2 impressions with no examples row
    write_table(spark.createDataFrame(sc), settings, SCORES, {"date": D2.isoformat(), "model_name": "gap"})
    assert run_evaluate(settings, "--model", "gap@1", "--date", "2022-05-02") == 0
    assert "evaluate gap@1: 40 scores; not graded: 3 never shown, 2 without an examples row, 0 null/NaN" \
        in capsys.readouterr().out
    rows = read_table(spark, settings, METRICS).where("model_name = 'gap'").toPandas()
    counts = rows[rows["task"] == "all"].set_index("metric")["value"].to_dict()
    assert counts == {"n_scored": 40.0, "n_unlogged": 3.0, "n_without_examples": 2.0}
    assert rows.set_index(["task", "metric", "slice"]).loc[("click", "auc", "all"), "n"] == 35


def test_null_or_nan_scores_are_counted_and_not_graded(spark, lake_with_scores, capsys):
    """A model emitting NaN used to be graded on its other rows."""
    from conf.lake import read_table, write_table
    from conf.tables import METRICS, SCORES

    settings = lake_with_scores
    sc = scores_pdf(examples_pdf(), "nan", "1", D2, seed=5)
    sc.loc[[1, 7], "score_click"] = np.nan
    sc.loc[4, "score_play_time"] = None
    write_table(spark.createDataFrame(sc), settings, SCORES, {"date": D2.isoformat(), "model_name": "nan"})
    assert run_evaluate(settings, "--model", "nan@1", "--date", "2022-05-02") == 2
    captured = capsys.readouterr()
    assert "not graded: 0 never shown, 0 without an examples row, 3 null/NaN" in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(
        "evaluate: error: nan@1 emitted null/NaN scores (click 2 on 2022-05-02, play_time 1 on 2022-05-02): not graded"), err
    rows = read_table(spark, settings, METRICS).where("model_name = 'nan'").toPandas()
    invalid = rows[rows["metric"] == "n_invalid_scores"].set_index("task")["n"].to_dict()
    assert invalid == {"click": 2, "like": 0, "long_view": 0, "play_time": 1}
    assert not rows["metric"].isin(["auc", "gauc", "logloss", "rmse"]).any()  # nothing graded


def test_evaluate_job_missing_scores_is_a_clear_error(lake_with_scores, capsys):
    rc = run_evaluate(lake_with_scores, "--model", "trt@2", "--date", "2022-05-01")
    assert rc == 2
    assert "no scores for model trt@2 on 2022-05-01" in capsys.readouterr().err
