"""Build the ``candidates`` table of a date: logged replay, Spark retrieval, or an external import.

One contract for every source (conf.tables.CANDIDATES_SCHEMA, column ``source``); a run replaces
the (date, source) slice it builds, so the sources of one date live side by side.

  --source logged      requests = a user's logged impressions within --window-minutes (offline replay)
  --source retrieval   one request per user active the previous day (or --users) at the date's
                       --request-time (local UTC+8), up to --candidates-per-request videos merged from
                       the covisit / author / trending / popular channels, events strictly before the
                       request time only (features/retrieval.py); seen videos dropped unless --keep-seen
  --from PATH|TABLE    an external system's candidates (Parquet, CSV or Delta path, or a catalog table:
                       user_id, video_id [, request_id, request_time_ms, retrieval_score, channel]);
                       bad rows -> quarantine with the reason (features/external_candidates.py), an
                       ingest_audit row, and the job fails unless rows read = landed + quarantined

examples:
  infnet build_candidates --date 2022-05-03..2022-05-04
  infnet build_candidates --source retrieval --date 2022-05-04 --max-users 2000
  infnet build_candidates --from /landing/cands_2022-05-04.parquet --date 2022-05-04 --max-per-request 1000
"""
from __future__ import annotations

import sys

from conf.syntax import parse_positive_int
from jobs.common import JobError, add_dates_argument, base_parser, run_job


def build_parser():
    from conf.settings import CandidateSettings, RetrievalSettings

    rs, cs = RetrievalSettings(), CandidateSettings()
    parser = base_parser("build_candidates", __doc__)
    add_dates_argument(parser)
    parser.add_argument("--source", choices=("logged", "retrieval"), default="logged",
                        help="logged replay (default) or Spark retrieval; --from imports an external source")
    parser.add_argument("--window-minutes", type=int, default=cs.logged_window_minutes,
                        help=f"logged: request window (default {cs.logged_window_minutes})")
    parser.add_argument("--users", metavar="TABLE_OR_PATH",
                        help="retrieval: the users to serve (a user_id column; default: users active the previous day)")
    parser.add_argument("--max-users", type=parse_positive_int,
                        help="retrieval: a deterministic sample of at most this many users (default: all)")
    parser.add_argument("--candidates-per-request", type=parse_positive_int, default=rs.candidates_per_request,
                        help=f"retrieval: N per request (default {rs.candidates_per_request})")
    parser.add_argument("--request-time", default=rs.request_time, metavar="HH:MM",
                        help=f"retrieval / --from: local (UTC+8) time of the date's requests (default {rs.request_time})")
    parser.add_argument("--keep-seen", action="store_true", help="retrieval: keep videos shown before the request time")
    parser.add_argument("--from", dest="from_", metavar="PATH_OR_TABLE",
                        help="import an external candidate set for one --date (source external)")
    parser.add_argument("--format", choices=("auto", "parquet", "csv", "delta", "table"), default="auto",
                        help="--from: input format (default: from the path; a bare name is a catalog table)")
    parser.add_argument("--max-per-request", type=parse_positive_int, default=cs.external_max_per_request,
                        help=f"--from: a request with more is quarantined whole (default {cs.external_max_per_request})")
    return parser


def retrieval_for_date(spark, settings, args, date: str):
    """The retrieval candidates of ``date`` and how many requests they serve."""
    from dataclasses import replace

    from pyspark.sql import functions as F

    from conf.lake import read_table
    from conf.tables import BRONZE_HISTORY, BRONZE_LOG, BRONZE_VIDEOS
    from features.ingest import read_user_list
    from features.retrieval import retrieval_candidates, serving_requests

    rs = replace(settings.retrieval, candidates_per_request=args.candidates_per_request,
                 request_time=args.request_time, exclude_seen=not args.keep_seen)
    log_df = read_table(spark, settings, BRONZE_LOG).where(F.col("date") <= F.lit(date).cast("date"))
    users = read_user_list(spark, args.users) if args.users else None
    requests = serving_requests(log_df, date, rs, users, args.max_users).cache()
    n_requests = requests.count()
    if n_requests == 0:
        raise JobError(f"no users to serve on {date}: nobody was active on the previous day"
                       + (f" in {args.users}" if args.users else "; pass --users"))
    candidates = retrieval_candidates(log_df, read_table(spark, settings, BRONZE_VIDEOS), requests, rs,
                                      read_table(spark, settings, BRONZE_HISTORY))
    return candidates, n_requests


def import_external(spark, settings, args, date: str) -> None:
    from conf.lake import read_table, write_table
    from conf.tables import BRONZE_USERS, BRONZE_VIDEOS, CANDIDATES, INGEST_AUDIT, QUARANTINE
    from features.external_candidates import quarantine_slice
    from features.ingest import (audit_frame, external_import_refusal, external_import_summary, new_run, read_raw,
                                 split_external_import)

    run_id, at = new_run()
    raw = read_raw(spark, args.from_, CANDIDATES.name, fmt=args.format, unnamed="parquet")
    imp = split_external_import(raw, args.from_, read_table(spark, settings, BRONZE_USERS),
                                read_table(spark, settings, BRONZE_VIDEOS), date, args.max_per_request, run_id, at,
                                args.request_time)
    write_table(audit_frame(spark, [imp.audit]), settings, INGEST_AUDIT, {"run_id": run_id})
    refusal = external_import_refusal(imp, args.from_)
    if refusal:
        raise JobError(refusal)
    version = write_table(imp.landed, settings, CANDIDATES, {"date": date, "source": "external"})
    write_table(imp.quarantined, settings, QUARANTINE, quarantine_slice(date))
    print(f"build_candidates {run_id} external {date}: {external_import_summary(imp)} (candidates version {version})")
    for df in (imp.landed, imp.quarantined, imp.raw):
        df.unpersist()


def body(spark, settings, args) -> None:
    from pyspark.sql import functions as F

    from conf.lake import read_table, write_table
    from conf.tables import BRONZE_LOG, CANDIDATES
    from features.candidates import candidates_from_impressions
    from features.ingest import RawInputError, candidates_summary
    from features.retrieval import parse_time_of_day

    try:
        parse_time_of_day(args.request_time)
    except ValueError as err:
        raise JobError(f"--request-time: {err}") from None
    if args.from_:
        if len(args.dates) != 1:
            raise JobError("--from imports one date's candidates: give a single --date")
        try:
            return import_external(spark, settings, args, args.dates[0])
        except RawInputError as err:
            raise JobError(str(err)) from None
    for date in args.dates:
        n_requests = None
        if args.source == "retrieval":
            try:
                candidates, n_requests = retrieval_for_date(spark, settings, args, date)
            except RawInputError as err:  # --users names outside data: one line, the user's to fix
                raise JobError(str(err)) from None
        else:
            day = read_table(spark, settings, BRONZE_LOG).where(F.col("date") == F.lit(date).cast("date"))
            candidates = candidates_from_impressions(day, args.window_minutes)
        candidates = candidates.cache()
        if candidates.count() == 0:
            raise JobError(f"bronze_log has no impressions for {date}: run `infnet ingest --date {date}` first"
                           if args.source == "logged" else f"retrieval found no candidate for {date}")
        version = write_table(candidates, settings, CANDIDATES, {"date": date, "source": args.source})
        print(f"build_candidates {args.source} {date}: {candidates_summary(candidates, n_requests)} "
              f"(candidates version {version})")
        candidates.unpersist()


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
