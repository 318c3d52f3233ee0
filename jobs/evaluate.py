"""Evaluate one scored model version: AUC / gAUC / LogLoss / calibration / MTL-AUC per task and slice.

Reads the ``scores`` of ``--model NAME@VERSION`` for the given date(s), joins the labels of
``examples`` on ``impression_id`` and the raw slice values of ``bronze_log`` / ``bronze_users``,
and writes the ``metrics`` table (model_name, model_version, task, metric, slice, value, n, date),
one set of rows per date. A rerun replaces that model version's rows for those dates and never
duplicates them. Definitions: evaluation/metrics.py.

What cannot be graded is counted in the same table and in the job's summary line: scores of
candidates never shown (``n_unlogged``) or without an ``examples`` row (``n_without_examples``),
and null/NaN scores (``n_invalid_scores`` per task). A model that emits any null/NaN score is not
graded at all (grading its other rows would hide the fault): only the counts are written and the
job exits 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from jobs.common import JobError, ModelRef, add_dates_argument, base_parser, parse_model_ref, pin_model_ref, run_job

log = logging.getLogger("infnet.evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("evaluate", __doc__.splitlines()[0])
    parser.add_argument("--model", type=parse_model_ref, required=True, help="NAME@VERSION of the scored model (NAME alone: the newest version)")
    add_dates_argument(parser)
    parser.add_argument("--slices", default="all,tab,user_active_degree,new_item",
                        help="comma list of slices (default: all,tab,user_active_degree,new_item)")
    return parser


def read_model_scores(spark, settings, model: ModelRef, dates: list[str]):
    """The scores of one model version on ``dates``; JobError naming the dates that have none."""
    from pyspark.sql import functions as F

    from conf.lake import read_table, table_exists
    from conf.tables import SCORES

    if not table_exists(spark, settings, SCORES):
        raise JobError(f"the scores table does not exist yet: run `infnet score --model {model} --date ...` first")
    scores = read_table(spark, settings, SCORES).where(
        (F.col("model_name") == model.name) & (F.col("model_version") == model.version)
        & F.col("date").isin([F.lit(d).cast("date") for d in dates])
    )
    found = {r["date"].isoformat(): r["n"] for r in scores.groupBy("date").agg(F.count(F.lit(1)).alias("n")).collect()}
    missing = [d for d in dates if d not in found]
    if missing:
        raise JobError(
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
        raise JobError("the scores have no score_<task> column for any known task")
    return tasks


def read_slice_values(spark, settings):
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

    metrics: object | None  # DataFrame in the metrics table's layout
    counts: object  # DataFrame in the metrics table's layout
    counts_pdf: object  # the same counts, local
    invalid: dict  # (date, task) -> null/NaN scores, only where > 0


def _with_model(df, model: ModelRef):
    from pyspark.sql import functions as F

    return df.select(
        F.lit(model.name).alias("model_name"), F.lit(model.version).alias("model_version"),
        "task", "metric", "slice", "value", "n", "date",
    )


def metrics_for_dates(spark, settings, model: ModelRef, dates: list[str], slices: tuple[str, ...]) -> Evaluation:
    """The rows of the metrics table for ``model`` on ``dates`` (small DataFrames)."""
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
        raise JobError(
            f"none of the scores of {model} on {', '.join(unlabelled)} has labels in examples "
            f"({', '.join(str(found[d]) for d in unlabelled)} rows): were the candidates logged impressions, "
            "and are those dates in the examples table?"
        )
    return Evaluation(_with_model(metrics, model), counts, counts_pdf, invalid)


def counts_line(model: ModelRef, counts_pdf) -> str:
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


def body(spark, settings, args) -> None:
    from conf.lake import slice_predicate, sql_literal, write_table
    from conf.tables import METRICS

    slices = tuple(s.strip() for s in args.slices.split(",") if s.strip())
    args.model = pin_model_ref(settings, args.model)
    result = metrics_for_dates(spark, settings, args.model, args.dates, slices)
    predicate = (
        slice_predicate({"model_name": args.model.name, "model_version": args.model.version})
        + f" AND `date` IN ({', '.join(sql_literal(d) for d in args.dates)})"
        + " AND `slice` NOT LIKE 'list@%'"  # the list metrics are `infnet rank`'s rows
    )
    rows = result.counts if result.metrics is None else result.metrics.unionByName(result.counts)
    version = write_table(rows, settings, METRICS, predicate,
                          user_metadata={"job": "evaluate", "model": str(args.model), "dates": args.dates})
    print(counts_line(args.model, result.counts_pdf))
    if result.invalid:
        where = ", ".join(f"{task} {n} on {date}" for (date, task), n in sorted(result.invalid.items()))
        raise JobError(f"{args.model} emitted null/NaN scores ({where}): not graded; the counts are in "
                       f"{settings.lake.database}.metrics (metric n_invalid_scores). Fix the model and rescore.")
    pdf = rows.toPandas()
    log.info("metrics for %s on %s: %d rows (table version %d)", args.model, ",".join(args.dates), len(pdf), version)
    print(f"metrics for {args.model} ({len(pdf)} rows, slice 'all' below):")
    print(compact_table(pdf))


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
