"""Evaluate one scored model version: AUC / gAUC / LogLoss / calibration / MTL-AUC per task and slice.

Reads the ``scores`` of ``--model NAME@VERSION`` for the given date(s), joins the labels of
``examples`` on ``impression_id``, and writes the ``metrics`` table (model_name, model_version,
task, metric, slice, value, n, date), one set of rows per date. A rerun replaces that model
version's rows for those dates and never duplicates them. Definitions: evaluation/metrics.py.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from jobs.common import JobError, ModelRef, base_parser, parse_dates, parse_model_ref, pin_model_ref, run_job

log = logging.getLogger("infnet.evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("evaluate", __doc__.splitlines()[0])
    parser.add_argument("--model", type=parse_model_ref, required=True, help="NAME@VERSION of the scored model (NAME alone: the newest version)")
    parser.add_argument("--date", "--dates", dest="dates", type=parse_dates, required=True,
                        help="date, comma list or range a..b (YYYY-MM-DD)")
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
    """The tasks that have a score column, with their kind from the feature spec's task list."""
    from evaluation.metrics import tasks_in_columns
    from conf.settings import Settings
    from features.examples import build_spec

    tasks = tasks_in_columns(scores_columns, build_spec(Settings()).tasks)
    if not tasks:
        raise JobError("the scores have no score_<task> column for any known task")
    return tasks


def metrics_for_dates(spark, settings, model: ModelRef, dates: list[str], slices: tuple[str, ...]):
    """The rows of the metrics table for ``model`` on ``dates`` (a small DataFrame)."""
    from pyspark.sql import functions as F

    from conf.lake import read_table
    from conf.tables import EXAMPLES
    from evaluation.metrics import SLICE_COLUMNS, compute_metrics, join_scores_with_labels

    scores, found = read_model_scores(spark, settings, model, dates)
    tasks = known_tasks(scores.columns)
    joined = join_scores_with_labels(scores, read_table(spark, settings, EXAMPLES), tasks)
    usable = tuple(s for s in slices if s == "all" or SLICE_COLUMNS.get(s, s) in joined.columns)
    if usable != slices:
        log.warning("slices %s are not available from examples; skipped", sorted(set(slices) - set(usable)))
    metrics = compute_metrics(joined, tasks, usable, group_by=("date",))
    evaluated = {r["date"].isoformat() for r in metrics.select("date").distinct().collect()}
    unlabelled = [d for d in dates if d not in evaluated]
    if unlabelled:
        raise JobError(
            f"none of the scores of {model} on {', '.join(unlabelled)} has labels in examples "
            f"({', '.join(str(found[d]) for d in unlabelled)} rows): were the candidates logged impressions, "
            "and are those dates in the examples table?"
        )
    return metrics.select(
        F.lit(model.name).alias("model_name"), F.lit(model.version).alias("model_version"),
        "task", "metric", "slice", "value", "n", "date",
    )


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
    rows = metrics_for_dates(spark, settings, args.model, args.dates, slices)
    predicate = (
        slice_predicate({"model_name": args.model.name, "model_version": args.model.version})
        + f" AND `date` IN ({', '.join(sql_literal(d) for d in args.dates)})"
        + " AND `slice` NOT LIKE 'list@%'"  # the list metrics are `infnet rank`'s rows
    )
    version = write_table(rows, settings, METRICS, predicate,
                          user_metadata={"job": "evaluate", "model": str(args.model), "dates": args.dates})
    pdf = rows.toPandas()
    log.info("metrics for %s on %s: %d rows (table version %d)", args.model, ",".join(args.dates), len(pdf), version)
    print(f"metrics for {args.model} ({len(pdf)} rows, slice 'all' below):")
    print(compact_table(pdf))


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
