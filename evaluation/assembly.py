"""What the evaluation grades, assembled from the lake: one model version's ``scores`` on some
dates, the tasks they score, the raw slice values of every impression, and with the labels of
``examples`` joined on, the ``metrics`` rows of the evaluate job (:func:`metrics_for_dates`).

The evaluate and the ab_report jobs read their scores through here. Anything the lake lacks for
that (no scores table, no scores of the model on a date, no known task, no labels) is an
:class:`EvaluationInputError` naming the job to run first.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

log = logging.getLogger("infnet.evaluate")


class EvaluationInputError(ValueError):
    """The lake lacks what an evaluation needs (scores of the model, known tasks, labels)."""


def read_model_scores(spark, settings, model, dates: list[str]) -> tuple[DataFrame, dict[str, int]]:
    """The scores of one model version (``model``: a pinned reference with ``name`` and
    ``version``) on ``dates``, and their row count per date; :class:`EvaluationInputError` naming
    the dates that have none."""
    from conf.lake import read_table, table_exists
    from conf.tables import SCORES

    if not table_exists(spark, settings, SCORES):
        raise EvaluationInputError(f"the scores table does not exist yet: run `infnet score --model {model} --date ...` first")
    scores = read_table(spark, settings, SCORES).where(
        (F.col("model_name") == model.name) & (F.col("model_version") == model.version)
        & F.col("date").isin([F.lit(d).cast("date") for d in dates])
    )
    found = {r["date"].isoformat(): r["n"] for r in scores.groupBy("date").agg(F.count(F.lit(1)).alias("n")).collect()}
    missing = [d for d in dates if d not in found]
    if missing:
        raise EvaluationInputError(
            f"no scores for model {model} on {', '.join(missing)}: run `infnet score --model {model} "
            f"--date {missing[0]}` first (or check the model name and version)"
        )
    return scores, found


def known_tasks(scores_columns):
    """The tasks that have a score column, with their kind from the task list every spec carries
    (``features.labels.TASKS``: tasks do not depend on settings)."""
    from evaluation.metrics import tasks_in_columns
    from features.labels import TASKS

    tasks = tasks_in_columns(scores_columns, TASKS)
    if not tasks:
        raise EvaluationInputError("the scores have no score_<task> column for any known task")
    return tasks


def read_slice_values(spark, settings) -> DataFrame | None:
    """Raw tab / activity degree per impression from the bronze tables (None, with a warning,
    when ``bronze_log`` is absent: the metrics then have no tab or activity slices)."""
    from conf.lake import read_table, table_exists
    from conf.tables import BRONZE_LOG, BRONZE_USERS
    from evaluation.metrics import raw_slice_values

    if not table_exists(spark, settings, BRONZE_LOG):
        log.warning("bronze_log is absent: no tab / user_active_degree slices")
        return None
    users = read_table(spark, settings, BRONZE_USERS) if table_exists(spark, settings, BRONZE_USERS) else None
    return raw_slice_values(read_table(spark, settings, BRONZE_LOG), users)


@dataclass(frozen=True)
class Evaluation:
    """What the evaluate job writes: the graded metrics (None when refused) and the count rows."""

    metrics: DataFrame | None  # in the metrics table's layout
    counts: DataFrame  # in the metrics table's layout
    counts_pdf: object  # the same counts, local (pandas)
    invalid: dict  # (date, task) -> null/NaN scores, only where > 0


def _with_model(df: DataFrame, model) -> DataFrame:
    return df.select(
        F.lit(model.name).alias("model_name"), F.lit(model.version).alias("model_version"),
        "task", "metric", "slice", "value", "n", "date",
    )


def metrics_for_dates(spark, settings, model, dates: list[str], slices: tuple[str, ...]) -> Evaluation:
    """The rows of the metrics table for ``model`` on ``dates`` (small DataFrames). A model with
    any null/NaN score is not graded (grading its other rows would hide the fault): only the
    counts come back, with ``invalid`` set."""
    from conf.lake import read_table
    from conf.tables import EXAMPLES
    from evaluation.metrics import SLICE_COLUMNS, compute_metrics, join_scores_with_labels, score_counts

    scores, found = read_model_scores(spark, settings, model, dates)
    tasks = known_tasks(scores.columns)
    examples = read_table(spark, settings, EXAMPLES)
    counts = _with_model(score_counts(scores, examples, tasks, group_by=("date",)), model)
    counts_pdf = counts.toPandas()
    bad = counts_pdf[(counts_pdf["metric"] == "n_invalid_scores") & (counts_pdf["n"] > 0)]
    invalid = {(str(r.date), r.task): int(r.n) for r in bad.itertuples()}
    if invalid:
        return Evaluation(None, counts, counts_pdf, invalid)
    joined = join_scores_with_labels(scores, examples, tasks, read_slice_values(spark, settings))
    usable = tuple(s for s in slices if s == "all" or SLICE_COLUMNS.get(s, s) in joined.columns)
    if usable != slices:
        log.warning("slices %s are not available; skipped", sorted(set(slices) - set(usable)))
    metrics = compute_metrics(joined, tasks, usable, group_by=("date",))
    evaluated = {r["date"].isoformat() for r in metrics.select("date").distinct().collect()}
    unlabelled = [d for d in dates if d not in evaluated]
    if unlabelled:
        raise EvaluationInputError(
            f"none of the scores of {model} on {', '.join(unlabelled)} has labels in examples "
            f"({', '.join(str(found[d]) for d in unlabelled)} rows): were the candidates logged impressions, "
            "and are those dates in the examples table?"
        )
    return Evaluation(_with_model(metrics, model), counts, counts_pdf, invalid)


def counts_line(model, counts_pdf) -> str:
    """``evaluate infnet@1: 812 scores; not graded: 3 never shown, 2 without an examples row,
    0 null/NaN`` (summed over the dates; null/NaN over the tasks too)."""
    total = counts_pdf.groupby("metric")["n"].sum()
    return (f"evaluate {model}: {int(total.get('n_scored', 0))} scores; not graded: "
            f"{int(total.get('n_unlogged', 0))} never shown, "
            f"{int(total.get('n_without_examples', 0))} without an examples row, "
            f"{int(total.get('n_invalid_scores', 0))} null/NaN")


def compact_table(metrics_pdf) -> str:
    """Slice ``all`` as task x metric with one column per date."""
    overall = metrics_pdf[metrics_pdf["slice"] == "all"]
    wide = overall.pivot_table(index=["task", "metric"], columns="date", values="value", aggfunc="first")
    return wide.to_string(float_format=lambda x: f"{x:.4f}")
