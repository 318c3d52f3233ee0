"""Offline ranking metrics: one definition each, as a Spark version and a numpy twin.

The Spark version (:func:`compute_metrics`) aggregates on the executors and only brings the small
per-(task, slice) aggregates to the driver. The numpy twin (:func:`auc_np`, :func:`gauc_np`, ...)
lives in :mod:`model.metrics` (no Spark, so training reads it too) and is what the paired bootstrap
(``evaluation.ab``) and the tests use; the tests hold both to 1e-9 and to scikit-learn.

Definitions (every metric is computed on a task's rows whose ``mask_<task>`` is set and whose
score and label are not null):

- **AUC**: the Mann-Whitney statistic, ties counted half:
  ``sum_{i pos, j neg} ([s_i > s_j] + 0.5 [s_i = s_j]) / (P * N)``. Computed exactly from counts per
  distinct score and the cumulative number of negatives below it; undefined (null / NaN) when the
  rows hold one class only.
- **gAUC**: per-user AUC averaged with each user's number of impressions as weight,
  ``sum_u n_u AUC_u / sum_u n_u``, over the users that have both a positive and a negative label for
  the task. Users whose labels are all one class have no AUC: they are skipped and counted
  (``gauc_users_skipped``; ``gauc_users_used`` counts the others; ``n`` of the ``gauc`` row is the
  impressions of the used users).
- **LogLoss**: mean of ``-(y log p + (1-y) log(1-p))`` with ``p`` clipped to ``[1e-7, 1-1e-7]``.
- **calibration**: mean prediction / mean label (1.0 is calibrated; undefined with no positives).
- **MTL-AUC**: the mean of the binary tasks' AUCs in a slice (task ``mtl``, metric ``mtl_auc``).
- Regression tasks (``play_time``: the score is a prediction of ``log1p(play seconds)`` and is
  compared with the label as is): **MAE**, **RMSE**, **R²** = ``1 - SSE / SST`` (undefined when the
  labels are constant).

Slices: ``all`` plus one value per ``tab``, per user activity degree and new-vs-returning item
(``new_item=true``: the video has no impression in ``examples`` before the scored date). Tab and
activity degree are the raw values the user knows, from ``bronze_log`` and ``bronze_users``
(:func:`raw_slice_values`), never the hashed buckets the model sees. The slice column of the
output reads ``all``, ``tab=1``, ``user_active_degree=full_active``, ``new_item=true``.

What the metrics cannot grade is counted (:func:`score_counts`, task ``all`` / per task, slice
``all``): ``n_scored``, ``n_unlogged`` (candidates never shown: no label), ``n_without_examples``
(an impression id with no ``examples`` row: the join drops it), ``n_invalid_scores`` (null or
NaN scores of a task; the evaluate job refuses to grade a model that emits any).

>>> float(auc_np(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.4, 0.8])))
0.875
>>> g = gauc_np(np.array([1, 1, 2, 2, 3]), np.array([0, 1, 0, 1, 1]), np.array([.2, .1, .3, .9, .5]))
>>> float(g.value), g.n_users_used, g.n_users_skipped
(0.5, 2, 1)
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from conf.schemas import METRICS_SCHEMA, with_leading_fields
from conf.tables import score_column  # noqa: F401 - re-exported for evaluation.ab
from features.spec import TaskField
from model.metrics import (  # noqa: F401 - the numpy twins, re-exported for evaluation.ab and the tests
    LOGLOSS_EPS,
    GaucResult,
    auc_np,
    calibration_np,
    gauc_np,
    log_loss_np,
    mae_np,
    r2_np,
    rmse_np,
)

DEFAULT_SLICES = ("all", "tab", "user_active_degree", "new_item")
# slice name -> column that join_scores_with_labels() adds; any other name is used as a column as is
SLICE_COLUMNS = {"tab": "tab", "user_active_degree": "user_active_degree", "new_item": "new_item"}
# slice columns taken from the raw (bronze) values, keyed by impression: raw_slice_values()
RAW_SLICE_COLUMNS = ("tab", "user_active_degree")
COUNT_TASK = "all"  # the task of the count rows that concern every task (n_scored, ...)
BINARY_METRICS = ("auc", "gauc", "gauc_users_used", "gauc_users_skipped", "logloss", "calibration")
REGRESSION_METRICS = ("mae", "rmse", "r2")
MTL_TASK = "mtl"



def tasks_in_columns(columns: Iterable[str], known: Sequence[TaskField]) -> list[TaskField]:
    """The tasks of ``known`` that have a ``score_<task>`` column, in ``known``'s order."""
    cols = set(columns)
    return [t for t in known if score_column(t) in cols]


# =============================================================================================
# Spark: join and compute
# =============================================================================================

def raw_slice_values(bronze_log: DataFrame, bronze_users: DataFrame | None = None) -> DataFrame:
    """``impression_id``, ``tab`` and ``user_active_degree`` as the raw data has them (tab 1,
    ``full_active``): what the slices of the metrics and the A/B report name."""
    log = bronze_log.select("impression_id", "user_id", "tab")
    if bronze_users is None:
        return log.select("impression_id", "tab", F.lit(None).cast("string").alias("user_active_degree"))
    users = bronze_users.select(F.col("user_id").alias("_u_user_id"), "user_active_degree")
    return (log.join(users, F.col("user_id") == F.col("_u_user_id"), "left")
            .select("impression_id", "tab", "user_active_degree"))


def join_scores_with_labels(
    scores_df: DataFrame,
    examples_df: DataFrame,
    tasks: Sequence[TaskField],
    slice_values: DataFrame | None = None,
) -> DataFrame:
    """Attach labels, masks and slice columns to scored candidates.

    Inner join on ``impression_id``: candidates that were never shown (null impression id) have no
    label and cannot be evaluated offline (:func:`score_counts` counts them). Keeps every column of
    ``scores_df`` and adds ``label_<task>``, ``mask_<task>``, the raw slice columns of
    ``slice_values`` (:func:`raw_slice_values`; left join, so an impression without them keeps its
    row with null slices) and ``new_item`` (boolean: the video has no impression in ``examples``
    before the scored ``date``).
    """
    missing = [c for t in tasks for c in (t.column, t.mask_column) if c not in examples_df.columns]
    if missing:
        raise ValueError(f"examples lacks label columns {missing}")
    label_cols = [F.col(c) for t in tasks for c in (t.column, t.mask_column)]
    labels = examples_df.select(F.col("impression_id").alias("_ex_impression_id"), *label_cols)
    first_seen = examples_df.groupBy(F.col("video_id").alias("_fs_video_id")).agg(
        F.min("date").alias("_first_seen_date")
    )
    joined = (
        scores_df.where(F.col("impression_id").isNotNull())
        .join(labels, F.col("impression_id") == F.col("_ex_impression_id"), "inner")
        .join(first_seen, F.col("video_id") == F.col("_fs_video_id"), "left")
    )
    if slice_values is not None:
        raw = slice_values.select(F.col("impression_id").alias("_sv_impression_id"),
                                  *[c for c in RAW_SLICE_COLUMNS if c in slice_values.columns])
        joined = joined.join(raw, F.col("impression_id") == F.col("_sv_impression_id"), "left").drop("_sv_impression_id")
    new_item = F.coalesce(~(F.col("_first_seen_date") < F.col("date")), F.lit(True))
    return joined.withColumn("new_item", new_item).drop("_ex_impression_id", "_fs_video_id", "_first_seen_date")


def _invalid(score: Column) -> Column:
    return score.isNull() | F.isnan(score.cast("double"))


def score_counts(
    scores_df: DataFrame, examples_df: DataFrame, tasks: Sequence[TaskField], group_by: Sequence[str] = ("date",)
) -> DataFrame:
    """What the metrics cannot grade, counted per ``group_by`` in the metrics' long format:
    task ``all``: ``n_scored``, ``n_unlogged`` (null impression id), ``n_without_examples``
    (impression id absent from ``examples``); per task: ``n_invalid_scores`` (null or NaN).
    ``value`` and ``n`` both hold the count; slice ``all``. One Spark pass, a small local result."""
    group_by = list(group_by)
    known = examples_df.select(F.col("impression_id").alias("_ex_impression_id")).distinct()
    logged = F.col("impression_id").isNotNull()
    flagged = scores_df.join(known, F.col("impression_id") == F.col("_ex_impression_id"), "left")
    sums = flagged.groupBy(*group_by).agg(
        F.count(F.lit(1)).alias("n_scored"),
        F.sum((~logged).cast("long")).alias("n_unlogged"),
        F.sum((logged & F.col("_ex_impression_id").isNull()).cast("long")).alias("n_without_examples"),
        *[F.sum(_invalid(F.col(score_column(t))).cast("long")).alias(f"_invalid_{t.name}") for t in tasks],
    ).collect()
    rows = []
    for r in sums:
        head = tuple(r[g] for g in group_by)
        rows += [(*head, COUNT_TASK, m, "all", float(r[m]), int(r[m])) for m in ("n_scored", "n_unlogged", "n_without_examples")]
        rows += [(*head, t.name, "n_invalid_scores", "all", float(r[f"_invalid_{t.name}"]), int(r[f"_invalid_{t.name}"]))
                 for t in tasks]
    schema = with_leading_fields([scores_df.schema[g] for g in group_by], METRICS_SCHEMA)
    return scores_df.sparkSession.createDataFrame(rows, schema)


def _slice_exprs(slices: Sequence[str]) -> list:
    exprs = []
    for name in slices:
        if name == "all":
            exprs.append(F.lit("all"))
            continue
        col = F.col(SLICE_COLUMNS.get(name, name))
        exprs.append(F.concat(F.lit(f"{name}="), F.coalesce(col.cast("string"), F.lit("null"))))
    return exprs


def _task_rows(df: DataFrame, task: TaskField, slices: Sequence[str], group_by: Sequence[str]) -> DataFrame:
    """One row per (evaluable impression, slice value) of ``task``: groups, task, slice, user, y, s."""
    valid = (
        F.coalesce(F.col(task.mask_column).cast("boolean"), F.lit(False))
        & F.col(task.column).isNotNull()
        & F.col(score_column(task)).isNotNull()
        & ~F.isnan(F.col(task.column).cast("double"))
        & ~F.isnan(F.col(score_column(task)).cast("double"))
    )
    return df.where(valid).select(
        *group_by,
        F.lit(task.name).alias("task"),
        F.explode(F.array(*_slice_exprs(slices))).alias("slice"),
        F.col("user_id"),
        F.col(task.column).cast("double").alias("y"),
        F.col(score_column(task)).cast("double").alias("s"),
    )


def _auc_parts(long: DataFrame, keys: list[str]) -> DataFrame:
    """Mann-Whitney pieces per ``keys``: U (ties half), P, N from counts per distinct score."""
    per_score = long.groupBy(*keys, "s").agg(F.sum("y").alias("pos"), F.sum(1.0 - F.col("y")).alias("neg"))
    below = Window.partitionBy(*keys).orderBy("s").rowsBetween(Window.unboundedPreceding, -1)
    per_score = per_score.withColumn("neg_below", F.coalesce(F.sum("neg").over(below), F.lit(0.0)))
    return per_score.groupBy(*keys).agg(
        F.sum(F.col("pos") * (F.col("neg_below") + 0.5 * F.col("neg"))).alias("u"),
        F.sum("pos").alias("p"),
        F.sum("neg").alias("n_neg"),
    )


def _aggregates(long: DataFrame, keys: list[str], binary_names: list[str]) -> DataFrame:
    """Sums, AUC parts and gAUC parts per ``keys`` joined into one small frame (one collect)."""
    pc = F.least(F.greatest(F.col("s"), F.lit(LOGLOSS_EPS)), F.lit(1.0 - LOGLOSS_EPS))
    sums = long.groupBy(*keys).agg(
        F.count(F.lit(1)).alias("n"),
        F.sum("y").alias("sum_y"),
        F.sum("s").alias("sum_s"),
        F.sum(-(F.col("y") * F.log(pc) + (1.0 - F.col("y")) * F.log(1.0 - pc))).alias("sum_ll"),
        F.sum(F.abs(F.col("s") - F.col("y"))).alias("sum_ae"),
        F.sum((F.col("s") - F.col("y")) ** 2).alias("sse"),
        F.sum(F.col("y") * F.col("y")).alias("sum_yy"),
    )
    if not binary_names:
        return sums
    in_binary = long.where(F.col("task").isin(binary_names))
    per_user = _auc_parts(in_binary, keys + ["user_id"])
    used = (F.col("p") > 0) & (F.col("n_neg") > 0)
    n_u = F.col("p") + F.col("n_neg")
    gauc = per_user.groupBy(*keys).agg(
        F.sum(F.when(used, n_u * F.col("u") / (F.col("p") * F.col("n_neg")))).alias("gauc_num"),
        F.sum(F.when(used, n_u)).alias("gauc_den"),
        F.count(F.when(used, True)).alias("users_used"),
        F.count(F.when(~used, True)).alias("users_skipped"),
    )
    return sums.join(_auc_parts(in_binary, keys), keys, "left").join(gauc, keys, "left")


def compute_metrics(
    df: DataFrame,
    tasks: Sequence[TaskField],
    slices: Sequence[str] = DEFAULT_SLICES,
    group_by: Sequence[str] = (),
) -> DataFrame:
    """Every metric of every task per slice, long format ``(task, metric, slice, value, n)``.

    ``df`` is the output of :func:`join_scores_with_labels` (``user_id``, ``score_<task>``,
    ``label_<task>``, ``mask_<task>`` and the slice columns). ``group_by`` (e.g. ``("date",)``)
    computes everything per value of those columns too, in the same pass, and prefixes them to the
    output. Aggregation runs in Spark; the AUC window holds one (group, task, slice)'s *distinct
    scores* in one partition (exact, no sampling) and the gAUC window one user's. Only the
    per-(group, task, slice) aggregates reach the driver (one collect), where MTL-AUC (a mean of a
    few numbers) is added; the result is a small local DataFrame.
    """
    spark = df.sparkSession
    group_by = list(group_by)
    schema = with_leading_fields([df.schema[g] for g in group_by], METRICS_SCHEMA)
    if not tasks:
        return spark.createDataFrame([], schema)
    binary_names = [t.name for t in tasks if t.kind == "binary"]
    long = None
    for t in tasks:
        part = _task_rows(df, t, slices, group_by)
        long = part if long is None else long.unionByName(part)
    long = long.persist()
    try:
        aggregates = _aggregates(long, group_by + ["task", "slice"], binary_names).collect()
    finally:
        long.unpersist()
    rows: list[tuple] = []
    for r in aggregates:
        head = tuple(r[g] for g in group_by)
        task, sl, n = r["task"], r["slice"], int(r["n"])
        if task in binary_names:
            auc = r["u"] / (r["p"] * r["n_neg"]) if r["p"] > 0 and r["n_neg"] > 0 else None
            gauc = r["gauc_num"] / r["gauc_den"] if r["gauc_den"] else None
            used, skipped = int(r["users_used"] or 0), int(r["users_skipped"] or 0)
            metrics = [
                ("auc", auc, n), ("gauc", gauc, int(r["gauc_den"] or 0)),
                ("gauc_users_used", float(used), used), ("gauc_users_skipped", float(skipped), skipped),
                ("logloss", r["sum_ll"] / n, n),
                ("calibration", r["sum_s"] / r["sum_y"] if r["sum_y"] else None, n),
            ]
        else:
            sst = r["sum_yy"] - r["sum_y"] ** 2 / n
            r2 = 1.0 - r["sse"] / sst if sst > 1e-12 * max(1.0, r["sum_yy"]) else None
            metrics = [("mae", r["sum_ae"] / n, n), ("rmse", math.sqrt(r["sse"] / n), n), ("r2", r2, n)]
        rows += [(*head, task, metric, sl, value, count) for metric, value, count in metrics]
    rows += _mtl_rows(rows, len(group_by))
    rows.sort(key=lambda r: tuple(str(x) for x in r[: len(group_by)]) + (r[-5], r[-3], r[-4]))
    return spark.createDataFrame(rows, schema)


def _mtl_rows(rows: list[tuple], n_groups: int = 0) -> list[tuple]:
    """MTL-AUC per (group, slice): the mean of the defined binary-task AUCs; n = the largest task's n."""
    by_slice: dict[tuple, list[tuple[float, int]]] = {}
    for row in rows:
        head, (_task, metric, sl, value, n) = row[:n_groups], row[n_groups:]
        if metric == "auc" and value is not None and not (isinstance(value, float) and math.isnan(value)):
            by_slice.setdefault((*head, sl), []).append((value, n))
    return [
        (*key[:-1], MTL_TASK, "mtl_auc", key[-1], float(np.mean([v for v, _ in vals])), max(n for _, n in vals))
        for key, vals in by_slice.items()
    ]




def slice_label(name: str, value) -> str:
    """How a slice value reads in the output (``tab=3``, ``new_item=true``), as Spark writes it."""
    if name == "all":
        return "all"
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return f"{name}=null"
    if isinstance(value, (bool, np.bool_)):
        return f"{name}={str(bool(value)).lower()}"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return f"{name}={int(value)}"
    return f"{name}={value}"


def compute_metrics_np(
    pdf: pd.DataFrame, tasks: Sequence[TaskField], slices: Sequence[str] = DEFAULT_SLICES
) -> pd.DataFrame:
    """The numpy twin of :func:`compute_metrics` on a pandas frame (same columns, same output)."""
    rows: list[tuple] = []
    for task in tasks:
        mask = pdf[task.mask_column].fillna(0).astype(bool) & pdf[task.column].notna() & pdf[score_column(task)].notna()
        part = pdf[mask]
        for name in slices:
            groups = [("all", part)] if name == "all" else [
                (slice_label(name, key), sub)
                for key, sub in part.groupby(SLICE_COLUMNS.get(name, name), dropna=False)
            ]
            for sl, sub in groups:
                y, s, n = sub[task.column].to_numpy(float), sub[score_column(task)].to_numpy(float), len(sub)
                if n == 0:
                    continue
                if task.kind == "binary":
                    g = gauc_np(sub["user_id"].to_numpy(), y, s)
                    rows += [
                        (task.name, "auc", sl, auc_np(y, s), n),
                        (task.name, "gauc", sl, g.value, g.n_rows_used),
                        (task.name, "gauc_users_used", sl, float(g.n_users_used), g.n_users_used),
                        (task.name, "gauc_users_skipped", sl, float(g.n_users_skipped), g.n_users_skipped),
                        (task.name, "logloss", sl, log_loss_np(y, s), n),
                        (task.name, "calibration", sl, calibration_np(y, s), n),
                    ]
                else:
                    rows += [
                        (task.name, "mae", sl, mae_np(y, s), n),
                        (task.name, "rmse", sl, rmse_np(y, s), n),
                        (task.name, "r2", sl, r2_np(y, s), n),
                    ]
    rows = [(t, m, sl, None if v is None or math.isnan(v) else float(v), int(n)) for t, m, sl, v, n in rows]
    rows += _mtl_rows(rows)
    out = pd.DataFrame(rows, columns=[f.name for f in METRICS_SCHEMA.fields])
    return out.sort_values(["task", "slice", "metric"], ignore_index=True)
