"""Build the ``candidates`` table for the days to score from the logged impressions.

One row per (request, candidate video); a request is a user's impressions within one window
(``--window-minutes``). Reruns replace the date. Any table with the same contract
(conf.tables.CANDIDATES_SCHEMA) can be scored instead.
"""
from __future__ import annotations

import logging
import sys

from jobs.common import JobError, base_parser, parse_dates, run_job

log = logging.getLogger("infnet.build_candidates")


def build_parser():
    parser = base_parser("build_candidates", __doc__.splitlines()[0])
    parser.add_argument("--date", "--dates", dest="dates", type=parse_dates, required=True,
                        help="date, comma list or range a..b (YYYY-MM-DD)")
    parser.add_argument("--window-minutes", type=int, default=60, help="request window (default 60)")
    return parser


def body(spark, settings, args) -> None:
    from pyspark.sql import functions as F

    from conf.lake import read_table, write_table
    from conf.tables import BRONZE_LOG, CANDIDATES
    from features.candidates import candidates_from_impressions

    for date in args.dates:
        day = read_table(spark, settings, BRONZE_LOG).where(F.col("date") == F.lit(date).cast("date"))
        candidates = candidates_from_impressions(day, args.window_minutes).cache()
        n = candidates.count()
        if n == 0:
            raise JobError(f"bronze_log has no impressions for {date}: run `infnet ingest --date {date}` first")
        version = write_table(candidates, settings, CANDIDATES, {"date": date})
        n_requests = candidates.select("request_id").distinct().count()
        log.info("candidates %s: %d rows in %d requests (table version %d)", date, n, n_requests, version)
        candidates.unpersist()


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
