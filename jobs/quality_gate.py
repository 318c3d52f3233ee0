"""Run the great-expectations quality gate on date partitions of ``examples`` or ``bronze_log``.

Exits 2 with a message naming the table, partition, failed expectation(s) and a few offending
values when a critical expectation fails or cannot be evaluated; failed warnings are logged and
recorded but do not stop the pipeline. Every run replaces its partition's rows in the
``quality_results`` table and writes an HTML page under ``<lake>/data_docs/`` (see index.html).

examples:
  infnet quality_gate --table bronze_log --date 2022-05-01
  infnet quality_gate --table examples --date 2022-04-25..2022-05-04
"""
from __future__ import annotations

import logging
import sys

from jobs.common import JobError, add_dates_argument, base_parser, run_job

log = logging.getLogger("infnet.quality_gate")

TABLE_CHOICES = ("examples", "bronze_log")


def build_parser():
    parser = base_parser("quality_gate", __doc__)
    parser.add_argument("--table", choices=TABLE_CHOICES, required=True, help="table to check")
    add_dates_argument(parser, help="date partition, comma list or range a..b (YYYY-MM-DD)")
    parser.add_argument("--spec-version", type=int, default=None,
                        help="examples only: feature spec version to check against (default: latest)")
    return parser


def suite_for(spark, settings, table: str, spec_version: int | None):
    from quality.suites import bronze_log_suite, examples_suite

    if table == "bronze_log":
        return bronze_log_suite()
    from features.examples import load_feature_spec  # lazily: written by the features stage

    return examples_suite(load_feature_spec(spark, settings, version=spec_version))


def body(spark, settings, args) -> None:
    from pyspark.sql import functions as F

    from conf.lake import read_table
    from conf.tables import BRONZE_LOG, EXAMPLES
    from quality.gate import run_gate
    from quality.results import QualityGateFailed

    table = {"examples": EXAMPLES, "bronze_log": BRONZE_LOG}[args.table]
    suite = suite_for(spark, settings, args.table, args.spec_version)
    for date in args.dates:
        partition = read_table(spark, settings, table).where(F.col("date") == F.lit(date).cast("date"))
        if partition.limit(1).count() == 0:
            producer = "ingest" if args.table == "bronze_log" else "build_features"
            raise JobError(f"{table.name} has no rows for {date}: run `infnet {producer} --date {date}` first")
        try:
            result = run_gate(spark, settings, table, partition, date, suite)
        except QualityGateFailed as failed:
            raise JobError(str(failed)) from None
        log.info("%s; report %s", result.summary(), result.docs_path)


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
