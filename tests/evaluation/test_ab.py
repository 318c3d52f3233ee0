"""Offline A/B statistics: paired bootstrap over users, top-K replay, pairing, the ab_report job."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from evaluation.ab import (
    ABConfig,
    ABInputError,
    compare_arms,
    pair_scores,
    topk_per_request,
    user_resample_counts,
    verdict,
)
from features.spec import TaskField

TASKS = (TaskField("click"), TaskField("like"), TaskField("long_view"), TaskField("play_time", "regression"))
FAST = ABConfig(n_boot=100, seed=7, slices=("tab",))


def paired_frame(seed: int = 0, n_users: int = 120, per_user: int = 12) -> pd.DataFrame:
    """Collected paired rows: B equal to A everywhere (callers then change one task of B)."""
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    pdf = pd.DataFrame({
        "user_id": np.repeat(np.arange(n_users), per_user),
        "request_id": [f"r{u}-{i // 6}" for u in range(n_users) for i in range(per_user)],  # 6 candidates each
        "video_id": rng.integers(0, 300, n),
        "tab": rng.integers(0, 2, n),
    })
    for t in TASKS:
        if t.kind == "binary":
            y = (rng.random(n) < 0.3).astype(float)
            a = np.round(np.clip(0.3 + 0.15 * (y - 0.3) + rng.normal(0, 0.2, n), 0.01, 0.99), 2)
        else:
            y = np.log1p(rng.exponential(20, n))
            a = y + rng.normal(0, 1, n)
        pdf[t.column], pdf[t.mask_column] = y, 1
        pdf[f"score_{t.name}_a"], pdf[f"score_{t.name}_b"] = a, a.copy()
    return pdf


def test_resample_counts_are_user_draws():
    counts = user_resample_counts(50, 30, seed=3)
    assert counts.shape == (30, 50)
    assert (counts.sum(axis=1) == 50).all()
    assert (counts == 0).any()  # some users left out of some resamples
    assert np.array_equal(counts, user_resample_counts(50, 30, seed=3))


def test_a_against_itself_reports_zero_deltas():
    table = compare_arms(paired_frame(), TASKS, FAST)
    assert len(table) > 20
    assert (table["delta"] == 0).all()
    assert ((table["ci_low"] <= 0) & (table["ci_high"] >= 0)).all()
    assert (table["p_value"] == 1).all()
    assert set(table.apply(verdict, axis=1)) == {"ties"}
    expected = {"auc", "gauc", "logloss", "calibration", "mae", "rmse", "r2", "mtl_auc",
                "click@5", "click@10", "like@5", "long_view@10", "ndcg@5", "ndcg@10"}
    assert expected <= set(table["metric"])
    assert {"tab=0", "tab=1"} <= set(table["slice"])


def result_row(table: pd.DataFrame, task: str, metric: str, slice_: str = "all") -> pd.Series:
    rows = table[(table["task"] == task) & (table["metric"] == metric) & (table["slice"] == slice_)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_treatment_better_on_one_task_is_detected_there_only():
    pdf = paired_frame(seed=1)
    rng = np.random.default_rng(11)
    pdf["score_click_b"] = np.clip(pdf["label_click"] + rng.normal(0, 0.35, len(pdf)), 0, 1)
    table = compare_arms(pdf, TASKS, FAST)
    click = result_row(table, "click", "auc")
    assert click["delta"] > 0.1 and click["ci_low"] > 0 and click["p_value"] < 0.05
    assert verdict(click) == "wins"
    assert verdict(result_row(table, "click", "gauc")) == "wins"
    assert verdict(result_row(table, "click", "ndcg@5")) == "wins"
    assert verdict(result_row(table, "mtl", "mtl_auc")) == "wins"
    for task, metric in (("like", "auc"), ("long_view", "auc"), ("play_time", "rmse")):
        row = result_row(table, task, metric)
        assert row["delta"] == 0 and verdict(row) == "ties"
    swapped = pdf.rename(columns={"score_click_a": "score_click_b", "score_click_b": "score_click_a"})
    assert verdict(result_row(compare_arms(swapped, TASKS[:1], FAST), "click", "auc")) == "loses"


def test_topk_per_request_by_hand():
    # request 0: scores .9 .5 .7 with labels 0 1 1 -> top-2 = [.9 (0), .7 (1)]: mean 0.5,
    #   DCG = 0/log2(2) + 1/log2(3), ideal = 1 + 1/log2(3)
    # request 1: one candidate, label 1 -> mean 1, DCG = IDCG = 1
    req = np.array([0, 0, 0, 1])
    mean_label, dcg, idcg = topk_per_request(req, np.array([1, 2, 3, 4]), np.array([.9, .5, .7, .2]),
                                             np.array([0., 1., 1., 1.]), k=2)
    assert mean_label == pytest.approx([0.5, 1.0])
    assert dcg == pytest.approx([1 / np.log2(3), 1.0])
    assert idcg == pytest.approx([1 + 1 / np.log2(3), 1.0])


# ---------------------------------------------------------------------------------------------
# Spark: pairing and the job
# ---------------------------------------------------------------------------------------------

def test_pairing_without_overlap_is_an_error(spark):
    a = pd.DataFrame({"request_id": ["r1", "r1"], "video_id": [1, 2], "impression_id": ["i1", "i2"],
                      "user_id": [1, 1], "date": [dt.date(2022, 5, 2)] * 2, "score_click": [0.1, 0.2]})
    b = a.assign(request_id="r9")
    with pytest.raises(ABInputError, match="share no"):
        pair_scores(spark.createDataFrame(a), spark.createDataFrame(b), [TaskField("click")])
    paired, counts = pair_scores(spark.createDataFrame(a), spark.createDataFrame(a.iloc[:1]), [TaskField("click")])
    assert (counts.control_rows, counts.treatment_rows, counts.matched_rows) == (2, 1, 1)
    assert {"score_click_a", "score_click_b"} <= set(paired.columns)


def test_pairing_keeps_a_video_shown_twice_in_a_request_as_two_rows(spark):
    a = pd.DataFrame({"request_id": ["r1", "r1", "r2"], "video_id": [7, 7, 7], "impression_id": ["i1", "i2", None],
                      "user_id": [1, 1, 2], "date": [dt.date(2022, 5, 2)] * 3, "score_click": [0.1, 0.2, 0.3]})
    b = a.assign(score_click=[0.5, 0.6, 0.7])
    paired, counts = pair_scores(spark.createDataFrame(a), spark.createDataFrame(b), [TaskField("click")])
    assert counts.matched_rows == 3  # not 5: (r1, 7) twice on each side must not cross
    got = sorted(paired.select("impression_id", "score_click_a", "score_click_b").collect(), key=lambda r: r[1])
    assert [tuple(r) for r in got] == [("i1", 0.1, 0.5), ("i2", 0.2, 0.6), (None, 0.3, 0.7)]


def test_ab_report_job_writes_table_and_files(spark, settings, capsys):
    from pathlib import Path

    from conf.lake import read_table, write_table
    from conf.tables import AB_REPORTS, EXAMPLES, SCORES
    from evaluation.ab import report_id_for
    from jobs import ab_report

    day = dt.date(2022, 6, 1)
    pdf = paired_frame(seed=2, n_users=30, per_user=6)
    pdf["impression_id"] = [f"ab-{i}" for i in range(len(pdf))]
    examples = pdf[["impression_id", "user_id", "video_id"]].assign(date=day, cat_tab=pdf["tab"],
                                                                     cat_user_active_degree=1)
    for t in TASKS:  # the same column types as tests/evaluation/test_metrics.py writes
        label = pdf[t.column] if t.kind == "regression" else pdf[t.column].astype("int64")
        examples[t.column], examples[t.mask_column] = label, 1
    examples = examples[[*examples.columns[:6], *[t.column for t in TASKS], *[t.mask_column for t in TASKS]]]
    write_table(spark.createDataFrame(examples), settings, EXAMPLES, {"date": day.isoformat()})
    arms = []
    for arm, (name, version) in (("a", ("abctl", "1")), ("b", ("abtrt", "1"))):
        s = pdf[["request_id", "impression_id", "user_id", "video_id"]].assign(
            date=day, model_name=name, model_version=version, feature_version=1, scored_at=pd.Timestamp("2022-06-02"))
        for t in TASKS:
            s[f"score_{t.name}"] = pdf[f"score_{t.name}_a"]
        if arm == "b":
            s["score_like"] = np.clip(pdf["label_like"] * 0.8 + 0.1, 0, 1)
        arms.append(s)
    write_table(spark.createDataFrame(pd.concat(arms)), settings, SCORES, {"date": day.isoformat()})

    argv = ["--lake", settings.lake.root, "--control", "abctl@1", "--treatment", "abtrt@1",
            "--dates", "2022-06-01", "--n-boot", "50", "--k", "3"]
    try:
        assert ab_report.main(argv) == 0
        out = capsys.readouterr().out
        assert "**like**: B wins on auc" in out and "**click**: B ties" in out
        rid = report_id_for("abctl@1", "abtrt@1", ["2022-06-01"])
        folder = Path(settings.lake.reports) / "ab" / rid
        assert (folder / "report.html").stat().st_size > 10_000
        assert "B wins" in (folder / "summary.md").read_text()
        rows = read_table(spark, settings, AB_REPORTS).where(f"report_id = '{rid}'").toPandas()
        assert len(rows) > 20 and not rows.duplicated(["task", "metric", "slice"]).any()
        assert rows.set_index(["task", "metric", "slice"]).loc[("like", "auc", "all"), "verdict"] == "wins"
        missing = ab_report.main(argv[:-6] + ["--dates", "2022-06-03"])
        assert missing == 2 and "no scores for model abctl@1 on 2022-06-03" in capsys.readouterr().err
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", str(settings.spark.shuffle_partitions))


def test_one_version_against_itself_is_one_line_and_writes_nothing(spark, settings, capsys):
    from conf.lake import read_table
    from conf.tables import AB_REPORTS
    from evaluation.ab import report_id_for
    from jobs import ab_report

    argv = ["--lake", settings.lake.root, "--control", "abctl@1", "--treatment", "abctl@1", "--dates", "2022-06-01"]
    assert ab_report.main(argv) == 0
    assert "both abctl@1: nothing to compare, no report written" in capsys.readouterr().out
    rid = report_id_for("abctl@1", "abctl@1", ["2022-06-01"])
    if spark.catalog.tableExists(f"{settings.lake.database}.{AB_REPORTS.name}"):
        assert read_table(spark, settings, AB_REPORTS).where(f"report_id = '{rid}'").count() == 0


def test_the_report_slices_by_the_raw_values(spark):
    """The per-slice rows (and the report's per-slice plot) used to read ``tab=98``,
    ``user_active_degree=778``: the hashed buckets of examples. They name raw values now."""
    from evaluation.ab import run_ab
    from evaluation.metrics import raw_slice_values

    task = TaskField("click")
    pdf = paired_frame(seed=3, n_users=40, per_user=6)
    pdf["impression_id"] = [f"raw-{i}" for i in range(len(pdf))]
    day = dt.date(2022, 6, 5)
    arm = lambda col: spark.createDataFrame(pdf[["request_id", "video_id", "impression_id", "user_id"]].assign(  # noqa: E731
        date=day, score_click=pdf[col]))
    examples = spark.createDataFrame(pdf[["impression_id", "video_id"]].assign(
        date=day, label_click=pdf["label_click"].astype("int64"), mask_click=1, cat_tab=pdf["tab"] + 97))
    log = spark.createDataFrame(pdf[["impression_id", "user_id"]].assign(tab=pdf["tab"].astype("int32")))
    users = spark.createDataFrame(pd.DataFrame({"user_id": range(40), "user_active_degree": ["full_active", "UNKNOWN"] * 20}))
    config = ABConfig(n_boot=20, seed=1, ks=(3,), slices=("tab", "user_active_degree"))
    result = run_ab(arm("score_click_a"), arm("score_click_b"), examples, [task], "a@1", "b@1", "2022-06-05", config,
                    slice_values=raw_slice_values(log, users))
    slices = set(result.table.loc[result.table["slice"] != "all", "slice"])
    assert slices == {"tab=0", "tab=1", "user_active_degree=full_active", "user_active_degree=UNKNOWN"}
    per_slice = result.table.set_index("slice").loc["user_active_degree=full_active"]
    assert per_slice["n"] == 20 * 6 and per_slice["n_users"] == 20


# ---------------------------------------------------------------------------------------------
# slice verdicts: minimum size and Benjamini-Hochberg; logged lists per (user, date)
# ---------------------------------------------------------------------------------------------

def test_benjamini_hochberg_on_hand_examples():
    from evaluation.ab import benjamini_hochberg

    # m = 5: p * m / rank = .025, .0275, .0333, .05, .13; every one already below the next
    assert benjamini_hochberg([0.04, 0.005, 0.13, 0.011, 0.02]) == pytest.approx([0.05, 0.025, 0.13, 0.0275, 0.1 / 3])
    # the step-up: .035 * 5 / 3 = .0583 is lowered to the next one's .04 * 5 / 4 = .05
    assert benjamini_hochberg([0.01, 0.02, 0.035, 0.04, 0.5]) == pytest.approx([0.05, 0.05, 0.05, 0.05, 0.5])
    # NaN stays NaN and does not count; values are capped at 1
    got = benjamini_hochberg([0.6, float("nan"), 0.9])
    assert got[0] == pytest.approx(0.9) and np.isnan(got[1]) and got[2] == pytest.approx(0.9)
    assert benjamini_hochberg([0.7, 0.8, 0.9]) == pytest.approx([0.9, 0.9, 0.9])


def test_slice_verdicts_need_a_minimum_size_and_survive_bh():
    from evaluation.ab import TOO_SMALL, ci_verdict

    pdf = paired_frame(seed=4, n_users=120, per_user=12)
    rng = np.random.default_rng(5)
    pdf["tab"] = np.where(pdf["user_id"] < 60, 0, 1)  # two big slices, 720 rows each
    pdf.loc[pdf["user_id"] == 0, "tab"] = 10  # user 0: 12 rows, and there B is far better
    small = (pdf["tab"] == 10).to_numpy()
    pdf.loc[small, "score_click_b"] = np.clip(pdf.loc[small, "label_click"] + rng.normal(0, 0.1, small.sum()), 0, 1)
    tasks = (TaskField("click"),)
    table = compare_arms(pdf, tasks, ABConfig(n_boot=100, seed=7, slices=("tab",), ks=(3,), min_slice_n=100))
    tab10 = result_row(table, "click", "auc", "tab=10")
    assert tab10["n"] == 12 and ci_verdict(tab10) == "wins"  # the CI alone would paint it a win
    assert verdict(tab10) == TOO_SMALL and np.isnan(tab10["p_adjusted"])
    for sl in ("tab=0", "tab=1"):  # B = A there
        row = result_row(table, "click", "auc", sl)
        assert verdict(row) == "ties" and row["p_adjusted"] == pytest.approx(1.0)
    # without the minimum, tab=10 joins the family of 3 (the other two p = 1): rank 1 of 3, so its
    # adjusted p is 3 x p; p is the smallest possible, 2 / (B + 1) over the B = 60 resamples that drew
    # user 0 (the others have no AUC for the slice): 3 x 2 / 61 = .098, a tie
    loose = compare_arms(pdf, tasks, ABConfig(n_boot=100, seed=7, slices=("tab",), ks=(3,), min_slice_n=0))
    tab10 = result_row(loose, "click", "auc", "tab=10")
    assert tab10["p_value"] == pytest.approx(2 / 61) and ci_verdict(tab10) == "wins"
    assert tab10["p_adjusted"] == pytest.approx(3 * tab10["p_value"]) and verdict(tab10) == "ties"
    # with more resamples the same slice is a win after the adjustment
    fine = compare_arms(pdf, tasks, ABConfig(n_boot=400, seed=7, slices=("tab",), ks=(3,), min_slice_n=0))
    assert verdict(result_row(fine, "click", "auc", "tab=10")) == "wins"


def test_logged_lists_are_a_users_impressions_of_a_date():
    # each user: two logged requests of one candidate each on 05-03 (no ranking inside a request),
    # and on 05-04 one more request of two candidates
    rows = []
    for u in range(30):
        rows += [(u, f"{u}-a", 1, "2022-05-03", 0.0, 0.9, 0.1), (u, f"{u}-b", 2, "2022-05-03", 1.0, 0.1, 0.9),
                 (u, f"{u}-c", 3, "2022-05-04", 1.0, 0.2, 0.8), (u, f"{u}-c", 4, "2022-05-04", 0.0, 0.8, 0.2)]
    pdf = pd.DataFrame(rows, columns=["user_id", "request_id", "video_id", "date", "label_click", "score_click_a",
                                      "score_click_b"]).assign(mask_click=1)
    table = compare_arms(pdf, (TaskField("click"),), ABConfig(n_boot=50, seed=0, ks=(1,), slices=()))
    row = result_row(table, "click", "click@1")
    # per (user, date): 60 lists of two; A puts the unclicked video first in each, B the clicked one
    assert row["n"] == 60 and row["n_users"] == 30
    assert (row["control_value"], row["treatment_value"]) == (0.0, 1.0) and verdict(row) == "wins"
    assert result_row(table, "click", "ndcg@1")["treatment_value"] == 1.0
    # without dates a user's rows are one list: 30 lists of four
    assert result_row(compare_arms(pdf.drop(columns="date"), (TaskField("click"),),
                                   ABConfig(n_boot=20, ks=(1,), slices=())), "click", "click@1")["n"] == 30
