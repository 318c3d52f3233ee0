"""Offline A/B report: compare two scored model versions on the same candidates.

``infnet ab_report --control NAME@VERSION --treatment NAME@VERSION --dates a..b`` pairs the two
arms on (request_id, video_id, impression_id), attaches labels from ``examples``, and computes per task and metric
the control and treatment values, delta, relative delta, 95 % CI and p-value from a paired
bootstrap over users, plus top-K replay metrics (evaluation/ab.py). When both arms have
``recommendations`` lists on the dates (``infnet rank``), their list metrics (recall, NDCG, hit
rate @K per task, coverage; evaluation/lists.py) are compared with the same paired bootstrap over
users and added as slice ``list@K``, the IPS-weighted recall and NDCG (propensities from the log
before each date's request time, ``settings.replay``) as slice ``ips_list@K``, and the summary says
what the candidate sets allow (the recall ceiling, naive and IPS). Slice verdicts use a minimum
slice size (``--min-slice-n``) and Benjamini-Hochberg adjusted p-values (evaluation/ab.py).
Writes the ``ab_reports`` table
(a rerun of the same control, treatment and dates replaces its ``report_id``) and
``<lake>/reports/ab/<report_id>/report.html`` + ``summary.md``, then prints the summary. Two
references that pin to the same version (``infnet@champion`` and ``infnet@challenger`` before a
name's first promotion) are one line and exit 0: nothing to compare, nothing written.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from conf.syntax import dates_label, parse_int_list, parse_model_ref, parse_positive_int
from jobs.common import JobError, add_dates_argument, base_parser, run_job

log = logging.getLogger("infnet.ab_report")


def build_parser() -> argparse.ArgumentParser:
    from evaluation.ab import ABConfig

    cfg = ABConfig()
    parser = base_parser("ab_report", __doc__.splitlines()[0])
    parser.add_argument("--control", type=parse_model_ref, required=True,
                        help="A: NAME@VERSION or NAME@ALIAS (NAME alone: the newest version)")
    parser.add_argument("--treatment", type=parse_model_ref, required=True,
                        help="B: NAME@VERSION or NAME@ALIAS (NAME alone: the newest version)")
    add_dates_argument(parser)
    parser.add_argument("--n-boot", type=parse_positive_int, default=cfg.n_boot,
                        help=f"bootstrap resamples of users (default {cfg.n_boot})")
    parser.add_argument("--seed", type=int, default=cfg.seed, help=f"bootstrap seed (default {cfg.seed})")
    parser.add_argument("--k", dest="ks", type=parse_int_list, default=cfg.ks,
                        help=f"top-K cut-offs (default {','.join(map(str, cfg.ks))})")
    parser.add_argument("--max-rows", type=int, default=cfg.max_rows,
                        help=f"most labelled rows collected to the driver for the bootstrap (default {cfg.max_rows / 1e6:g}M)")
    parser.add_argument("--min-slice-n", type=int, default=cfg.min_slice_n,
                        help=f"rows a slice needs for a verdict (default {cfg.min_slice_n}; smaller: too_small)")
    parser.add_argument("--list-k", type=int,
                        help="list length for the list metrics (default: the shorter of the two arms' lists)")
    return parser


def body(spark, settings, args) -> None:
    from conf.lake import read_table, write_table, write_text
    from conf.tables import AB_REPORTS, EXAMPLES
    from evaluation.ab import ABConfig, ABInputError, ab_report_rows, ab_report_schema, report_id_for, run_ab
    from evaluation.assembly import EvaluationInputError, known_tasks, read_model_scores, read_slice_values
    from evaluation.lists import compare_list_arms
    from evaluation.report import render_html, render_markdown
    from model.store import ModelStore

    store = ModelStore.of(settings)
    args.control, args.treatment = store.pin(args.control), store.pin(args.treatment)
    if args.control == args.treatment:  # e.g. @champion and @challenger before the first promotion
        print(f"ab_report: control and treatment are both {args.control}: nothing to compare, no report written")
        return
    try:
        control_scores, _ = read_model_scores(spark, settings, args.control, args.dates)
        treatment_scores, _ = read_model_scores(spark, settings, args.treatment, args.dates)
        # the paired impression-level comparison is the logged replay; ranked lists are compared below
        control_scores = control_scores.where("source = 'logged'")
        treatment_scores = treatment_scores.where("source = 'logged'")
        tasks = known_tasks(set(control_scores.columns) & set(treatment_scores.columns))
    except EvaluationInputError as err:
        raise JobError(str(err)) from None
    config = ABConfig(n_boot=args.n_boot, seed=args.seed, ks=args.ks, max_rows=args.max_rows,
                      min_slice_n=args.min_slice_n)
    label = dates_label(args.dates)
    try:
        result = run_ab(control_scores, treatment_scores, read_table(spark, settings, EXAMPLES), tasks,
                        str(args.control), str(args.treatment), label, config,
                        slice_values=read_slice_values(spark, settings))
    except ABInputError as err:
        raise JobError(f"cannot compare {args.control} with {args.treatment} on {label}: {err}") from None

    lists = compare_list_arms(spark, settings, args.control, args.treatment, args.dates, config, args.list_k, ips=True)
    report_id = report_id_for(str(args.control), str(args.treatment), args.dates)
    report_rows = ab_report_rows(result, report_id)
    if lists is not None and len(lists):
        report_rows += ab_report_rows(dataclasses.replace(result, table=lists), report_id)
    rows = spark.createDataFrame(report_rows, ab_report_schema())
    version = write_table(rows, settings, AB_REPORTS, {"report_id": report_id},
                          user_metadata={"job": "ab_report", "report_id": report_id})
    folder = f"{settings.lake.reports.rstrip('/')}/ab/{report_id}"
    markdown = render_markdown(result, lists)
    write_text(spark, f"{folder}/report.html", render_html(result, lists))
    write_text(spark, f"{folder}/summary.md", markdown)
    log.info("ab_report %s: %d rows (table version %d), %d matched candidates",
             report_id, len(result.table), version, result.counts.matched_rows)
    print(markdown)
    print(f"report: {folder}/report.html")


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
