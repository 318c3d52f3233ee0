"""Offline A/B report: compare two scored model versions on the same candidates.

``infnet ab_report --control NAME@VERSION --treatment NAME@VERSION --dates a..b`` pairs the two
arms on (request_id, video_id, impression_id), attaches labels from ``examples``, and computes per task and metric
the control and treatment values, delta, relative delta, 95 % CI and p-value from a paired
bootstrap over users, plus top-K replay metrics (evaluation/ab.py). When both arms have
``recommendations`` lists on the dates (``infnet rank``), their list metrics (recall, NDCG, hit
rate @K per task, coverage; evaluation/lists.py) are compared with the same paired bootstrap over
users and added as slice ``list@K``. Writes the ``ab_reports`` table
(a rerun of the same control, treatment and dates replaces its ``report_id``) and
``<lake>/reports/ab/<report_id>/report.html`` + ``summary.md``, then prints the summary.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from jobs.common import JobError, add_dates_argument, base_parser, parse_model_ref, pin_model_ref, run_job
from jobs.evaluate import known_tasks, read_model_scores, read_slice_values

log = logging.getLogger("infnet.ab_report")


def _int_list(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(v) for v in value.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {value!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"K must be >= 1: {value!r}")
    return ks


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("ab_report", __doc__.splitlines()[0])
    parser.add_argument("--control", type=parse_model_ref, required=True, help="A: NAME@VERSION (NAME alone: the newest version)")
    parser.add_argument("--treatment", type=parse_model_ref, required=True, help="B: NAME@VERSION (NAME alone: the newest version)")
    add_dates_argument(parser)
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of users (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--k", dest="ks", type=_int_list, default=(5, 10), help="top-K cut-offs (default 5,10)")
    parser.add_argument("--max-rows", type=int, default=2_000_000,
                        help="most labelled rows collected to the driver for the bootstrap (default 2M)")
    parser.add_argument("--list-k", type=int,
                        help="list length for the list metrics (default: the shorter of the two arms' lists)")
    return parser


def compare_list_arms(spark, settings, control, treatment, dates: list[str], config, k: int | None = None):
    """A/B rows of the two arms' ``recommendations`` lists on ``dates`` (None when an arm has none):
    users of different dates count as different units of the bootstrap."""
    import pandas as pd
    from pyspark.sql import functions as F

    from conf.lake import read_table, table_exists
    from conf.tables import BRONZE_LOG, BRONZE_VIDEOS, CANDIDATES, RECOMMENDATIONS
    from evaluation.lists import compare_lists, logged_positives

    if not table_exists(spark, settings, RECOMMENDATIONS):
        return None
    in_dates = F.col("date").isin([F.lit(d).cast("date") for d in dates])
    recs = read_table(spark, settings, RECOMMENDATIONS).where(in_dates)
    arms = {}
    for arm, ref in (("a", control), ("b", treatment)):
        arms[arm] = recs.where((F.col("model_name") == ref.name) & (F.col("model_version") == ref.version)).select(
            "date", "user_id", "video_id", "rank", "source").toPandas()
        if arms[arm].empty:
            return None
    k = k or int(min(arms["a"]["rank"].max(), arms["b"]["rank"].max()))
    sources = sorted(set(arms["a"]["source"]) | set(arms["b"]["source"]))
    candidates = read_table(spark, settings, CANDIDATES).where(in_dates & F.col("source").isin(sources))
    log_days = read_table(spark, settings, BRONZE_LOG).where(in_dates)
    positives = []
    for date in dates:
        day = F.col("date") == F.lit(date).cast("date")
        pos = logged_positives(log_days.where(day), candidates.where(day).select("user_id", "request_time_ms"))
        positives.append(pos.toPandas().assign(date=pd.Timestamp(date).date()))
    positives = pd.concat(positives, ignore_index=True)

    def keyed(df):  # one bootstrap unit per (date, user)
        return df.assign(user_id=df["date"].astype(str) + ":" + df["user_id"].astype(str))

    catalog = read_table(spark, settings, BRONZE_VIDEOS).count()
    return compare_lists(keyed(arms["a"]), keyed(arms["b"]), keyed(positives), k, catalog, config.n_boot,
                         config.seed, config.confidence)


def dates_label(dates: list[str]) -> str:
    """``a..b`` for a contiguous range, else the comma list."""
    import datetime as dt

    days = [dt.date.fromisoformat(d) for d in dates]
    contiguous = all((b - a).days == 1 for a, b in zip(days, days[1:]))
    return f"{dates[0]}..{dates[-1]}" if contiguous and len(dates) > 1 else ",".join(dates)


def body(spark, settings, args) -> None:
    from conf.lake import read_table, write_table, write_text
    from conf.tables import AB_REPORTS, EXAMPLES
    from evaluation.ab import ABConfig, ABInputError, ab_report_rows, ab_report_schema, report_id_for, run_ab
    from evaluation.report import render_html, render_markdown

    if args.n_boot < 1:
        raise JobError("--n-boot must be >= 1")
    args.control, args.treatment = pin_model_ref(settings, args.control), pin_model_ref(settings, args.treatment)
    control_scores, _ = read_model_scores(spark, settings, args.control, args.dates)
    treatment_scores, _ = read_model_scores(spark, settings, args.treatment, args.dates)
    if "source" in control_scores.columns and "source" in treatment_scores.columns:
        # the paired impression-level comparison is the logged replay; ranked lists are compared below
        control_scores = control_scores.where("source = 'logged'")
        treatment_scores = treatment_scores.where("source = 'logged'")
    tasks = known_tasks(set(control_scores.columns) & set(treatment_scores.columns))
    config = ABConfig(n_boot=args.n_boot, seed=args.seed, ks=args.ks, max_rows=args.max_rows)
    label = dates_label(args.dates)
    try:
        result = run_ab(control_scores, treatment_scores, read_table(spark, settings, EXAMPLES), tasks,
                        str(args.control), str(args.treatment), label, config,
                        slice_values=read_slice_values(spark, settings))
    except ABInputError as err:
        raise JobError(f"cannot compare {args.control} with {args.treatment} on {label}: {err}") from None

    lists = compare_list_arms(spark, settings, args.control, args.treatment, args.dates, config, args.list_k)
    report_id = report_id_for(str(args.control), str(args.treatment), args.dates)
    report_rows = ab_report_rows(result, report_id)
    if lists is not None and len(lists):
        report_rows += ab_report_rows(dataclasses.replace(result, table=lists), report_id)
    rows = spark.createDataFrame(report_rows, ab_report_schema())
    version = write_table(rows, settings, AB_REPORTS, {"report_id": report_id},
                          user_metadata={"job": "ab_report", "report_id": report_id})
    folder = f"{settings.lake.reports.rstrip('/')}/ab/{report_id}"
    markdown = render_markdown(result)
    page = render_html(result)
    if lists is not None and len(lists):
        from evaluation.lists import summary_lines
        from evaluation.report import _table_html

        markdown += "\n## Ranked lists (replay on the logged positives of the date)\n\n" + "\n".join(
            summary_lines(lists)) + "\n"
        page = page.replace("</body>", "<h2>Ranked lists (replay on the logged positives of the date)</h2>"
                            + _table_html(lists) + "</body>")
    write_text(spark, f"{folder}/report.html", page)
    write_text(spark, f"{folder}/summary.md", markdown)
    log.info("ab_report %s: %d rows (table version %d), %d matched candidates",
             report_id, len(result.table), version, result.counts.matched_rows)
    print(markdown)
    print(f"report: {folder}/report.html")


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
