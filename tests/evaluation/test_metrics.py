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


def examples_pdf() -> pd.DataFrame:
    """Two days of impressions: 8 users x 5 videos per day; videos 0-4 on day 1, 2-6 on day 2."""
    rows = []
    for day, videos in ((D1, range(0, 5)), (D2, range(2, 7))):
        for user in range(8):
            for v in videos:
                rows.append(dict(impression_id=f"{day}-{user}-{v}", user_id=user, video_id=v, date=day,
                                 cat_tab=v % 2 + 1, cat_user_active_degree=user % 3 + 1,
                                 label_click=int((user + v) % 3 == 0), label_like=int((user * v) % 4 == 1),
                                 label_long_view=int((user + 2 * v) % 3 == 1),
                                 label_play_time=float(np.log1p((user + v) % 7 * 10.0))))
    pdf = pd.DataFrame(rows)
    for t in ALL_TASKS:
        pdf[t.mask_column] = 1
    return pdf


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


def test_join_attaches_labels_slices_and_new_item(spark):
    ex = examples_pdf()
    sc = scores_pdf(ex, "m", "1", D2)
    sc.loc[0, "impression_id"] = None  # a candidate never shown: no label, dropped
    joined = join_scores_with_labels(spark.createDataFrame(sc), spark.createDataFrame(ex), ALL_TASKS).toPandas()
    assert len(joined) == len(sc) - 1
    assert {"label_click", "mask_play_time", "tab", "user_active_degree", "new_item"} <= set(joined.columns)
    new_by_video = joined.groupby("video_id")["new_item"].first().to_dict()
    # videos 2-4 were shown on D1 (returning), 5-6 first appear on D2 (new)
    assert new_by_video == {2: False, 3: False, 4: False, 5: True, 6: True}


@pytest.fixture(scope="module")
def lake_with_scores(spark, settings):
    from conf.lake import write_table
    from conf.tables import EXAMPLES, SCORES

    ex = examples_pdf()
    write_table(spark.createDataFrame(ex), settings, EXAMPLES)
    scores = pd.concat([scores_pdf(ex, "ctl", "1", D2, seed=1), scores_pdf(ex, "trt", "2", D2, seed=2),
                        scores_pdf(ex, "ctl", "1", D1, seed=3)])
    write_table(spark.createDataFrame(scores), settings, SCORES)
    yield settings
    # the jobs' get_spark() re-applies the default shuffle partitions to the shared test session
    spark.conf.set("spark.sql.shuffle.partitions", str(settings.spark.shuffle_partitions))


def test_evaluate_job_reruns_replace_rows(spark, lake_with_scores, capsys):
    from conf.lake import read_table, write_table
    from conf.tables import METRICS
    from jobs import evaluate

    settings = lake_with_scores
    other = pd.DataFrame([dict(model_name="other", model_version="9", task="click", metric="auc", slice="all",
                               value=0.5, n=10, date=D2)])
    write_table(spark.createDataFrame(other).selectExpr(
        "model_name", "model_version", "task", "metric", "slice", "value", "n", "date"), settings, METRICS)
    argv = ["--lake", settings.lake.root, "--model", "ctl@1", "--dates", "2022-05-01..2022-05-02"]
    assert evaluate.main(argv) == 0
    first = read_table(spark, settings, METRICS).toPandas()
    assert evaluate.main(argv) == 0
    assert "mtl_auc" in capsys.readouterr().out
    again = read_table(spark, settings, METRICS).toPandas()
    assert len(again) == len(first) > 100
    assert not again.duplicated(["model_name", "model_version", "task", "metric", "slice", "date"]).any()
    assert len(again[again["model_name"] == "other"]) == 1  # another model's rows are left alone
    ctl = again[again["model_name"] == "ctl"]
    assert set(ctl["date"].astype(str)) == {"2022-05-01", "2022-05-02"}
    aucs = ctl[(ctl["slice"] == "all") & (ctl["metric"] == "auc")]
    assert len(aucs) == 2 * 3 and aucs["value"].between(0, 1).all()  # 3 binary tasks x 2 dates


def test_evaluate_job_missing_scores_is_a_clear_error(lake_with_scores, capsys):
    from jobs import evaluate

    rc = evaluate.main(["--lake", lake_with_scores.lake.root, "--model", "trt@2", "--date", "2022-05-01"])
    assert rc == 2
    assert "no scores for model trt@2 on 2022-05-01" in capsys.readouterr().err
