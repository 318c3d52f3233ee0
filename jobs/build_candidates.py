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

import datetime as dt
import logging
import sys
import uuid

from jobs.common import JobError, add_dates_argument, base_parser, run_job

log = logging.getLogger("infnet.build_candidates")


def build_parser():
    from conf.settings import RetrievalSettings

    rs = RetrievalSettings()
    parser = base_parser("build_candidates", __doc__)
    add_dates_argument(parser)
    parser.add_argument("--source", choices=("logged", "retrieval"), default="logged",
                        help="logged replay (default) or Spark retrieval; --from imports an external source")
    parser.add_argument("--window-minutes", type=int, default=60, help="logged: request window (default 60)")
    parser.add_argument("--users", metavar="TABLE_OR_PATH",
                        help="retrieval: the users to serve (a user_id column; default: users active the previous day)")
    parser.add_argument("--max-users", type=int,
                        help="retrieval: a deterministic sample of at most this many users (default: all)")
    parser.add_argument("--candidates-per-request", type=int, default=rs.candidates_per_request,
                        help=f"retrieval: N per request (default {rs.candidates_per_request})")
    parser.add_argument("--request-time", default=rs.request_time, metavar="HH:MM",
                        help=f"retrieval / --from: local (UTC+8) time of the date's requests (default {rs.request_time})")
    parser.add_argument("--keep-seen", action="store_true",
                        help="retrieval: keep videos the user was shown before the request time")
    parser.add_argument("--from", dest="from_", metavar="PATH_OR_TABLE",
                        help="import an external candidate set for one --date (source external)")
    parser.add_argument("--format", choices=("auto", "parquet", "csv", "delta", "table"), default="auto",
                        help="--from: input format (default: from the path; a bare name is a catalog table)")
    parser.add_argument("--max-per-request", type=int, default=1000,
                        help="--from: a request with more candidates is quarantined whole (default 1000)")
    return parser


def read_table_or_path(spark, value: str, fmt: str = "auto"):
    """A catalog table (``name`` or ``db.name``) or a Parquet / CSV / Delta path, as a DataFrame of
    strings with ``_source_file`` and ``_source_row``."""
    from pyspark.sql import functions as F

    from features.contracts import SOURCE_FILE_COL, as_strings, with_source_position

    lower = value.lower().rstrip("/")
    if fmt == "auto":
        if "/" not in value and _table_exists(spark, value):
            fmt = "table"
        elif lower.endswith((".csv", ".csv.gz")):
            fmt = "csv"
        elif ".parquet" in lower or lower.endswith(".pq"):
            fmt = "parquet"
        else:
            fmt = "delta" if _is_delta(spark, value) else "parquet"
    try:
        if fmt == "table":
            df = spark.table(value).withColumn(SOURCE_FILE_COL, F.lit(value))
        elif fmt == "delta":
            df = spark.read.format("delta").load(value).withColumn(SOURCE_FILE_COL, F.lit(value))
        elif fmt == "csv":
            df = spark.read.option("header", True).csv(value)
            df = df.select("*", F.col("_metadata.file_path").alias(SOURCE_FILE_COL))
        else:
            df = spark.read.parquet(value)
            df = df.select("*", F.col("_metadata.file_path").alias(SOURCE_FILE_COL))
    except Exception as err:  # AnalysisException: path missing, not that format, ...
        if any(m in str(err) for m in ("PATH_NOT_FOUND", "does not exist", "TABLE_OR_VIEW_NOT_FOUND",
                                       "is not a Delta table")):
            raise JobError(f"{value} not found (as {fmt})") from None
        raise
    return with_source_position(as_strings(df))


def _table_exists(spark, name: str) -> bool:
    try:
        return bool(spark.catalog.tableExists(name))
    except Exception:  # noqa: BLE001 - not a valid table name: not a table
        return False


def _is_delta(spark, path: str) -> bool:
    from delta.tables import DeltaTable

    try:
        return DeltaTable.isDeltaTable(spark, path)
    except Exception:  # noqa: BLE001 - not a path Delta can look at: not Delta
        return False


def prepare_table(spark, settings) -> None:
    """Lakes built before the ``source`` column: add the new columns, mark old rows ``logged``."""
    from conf.lake import add_missing_columns
    from conf.schemas import CANDIDATES_SCHEMA
    from conf.tables import CANDIDATES

    added = add_missing_columns(spark, settings, CANDIDATES, CANDIDATES_SCHEMA, fill={"source": "'logged'"})
    if added:
        log.info("candidates: added columns %s to the existing table (older rows: source = 'logged')", added)


def sample_users(users, max_users: int | None):
    """At most ``max_users`` users, the same ones on every run (smallest seeded hash of the id)."""
    from pyspark.sql import functions as F

    if not max_users:
        return users
    return users.orderBy(F.xxhash64(F.lit(12), F.col("user_id")), "user_id").limit(int(max_users))


def retrieval_for_date(spark, settings, args, date: str):
    from dataclasses import replace

    from pyspark.sql import functions as F

    from conf.lake import read_table
    from conf.tables import BRONZE_HISTORY, BRONZE_LOG, BRONZE_VIDEOS
    from features.retrieval import active_users, make_requests, request_time_ms, retrieval_candidates

    rs = replace(settings.retrieval, candidates_per_request=args.candidates_per_request,
                 request_time=args.request_time, exclude_seen=not args.keep_seen)
    log_df = read_table(spark, settings, BRONZE_LOG).where(F.col("date") <= F.lit(date).cast("date"))
    if args.users:
        users = read_table_or_path(spark, args.users)
        if "user_id" not in users.columns:
            raise JobError(f"--users {args.users} has no user_id column (columns: {users.columns})")
        users = users.select(F.col("user_id").try_cast("long").alias("user_id")).where("user_id IS NOT NULL")
    else:
        users = active_users(log_df, date)
    users = sample_users(users, args.max_users)
    requests = make_requests(users, date, request_time_ms(date, rs.request_time)).cache()
    if requests.count() == 0:
        raise JobError(f"no users to serve on {date}: nobody was active on the previous day"
                       + (f" in {args.users}" if args.users else "; pass --users"))
    candidates = retrieval_candidates(log_df, read_table(spark, settings, BRONZE_VIDEOS), requests, rs,
                                      read_table(spark, settings, BRONZE_HISTORY))
    return candidates, requests


def summary(candidates, n_requests: int | None = None) -> str:
    """One line: rows, requests, candidates per request, the channel mix."""
    from pyspark.sql import functions as F

    stats = candidates.groupBy("request_id").agg(F.count(F.lit(1)).alias("n")).agg(
        F.count(F.lit(1)).alias("requests"), F.sum("n").alias("rows"), F.min("n").alias("min"),
        F.max("n").alias("max")).first()
    line = (f"{stats['rows'] or 0} rows in {stats['requests']} requests "
            f"({stats['min'] or 0}..{stats['max'] or 0} per request)")
    if n_requests is not None and n_requests != stats["requests"]:
        line += f"; {n_requests - stats['requests']} requests got no candidate"
    if "channels" in candidates.columns:
        mix = (candidates.select(F.explode("channels").alias("c")).groupBy("c").count().orderBy("c").collect())
        if mix:
            line += "; channel of: " + ", ".join(f"{r['c']} {r['count']}" for r in mix)
    return line


def import_external(spark, settings, args, date: str) -> None:
    from pyspark.sql import functions as F

    from conf.lake import read_table, write_table
    from conf.schemas import EXTERNAL_CANDIDATES_SCHEMA, INGEST_AUDIT_SCHEMA
    from conf.tables import BRONZE_USERS, BRONZE_VIDEOS, CANDIDATES, INGEST_AUDIT, QUARANTINE
    from features.contracts import SOURCE_FILE_COL, ignored_columns
    from features.external_candidates import quarantine_slice, split_external

    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    raw = read_table_or_path(spark, args.from_, args.format).cache()
    rows_read = raw.count()
    files = sorted(r[0] for r in raw.select(SOURCE_FILE_COL).distinct().collect())
    try:
        landed, bad = split_external(raw, read_table(spark, settings, BRONZE_USERS),
                                     read_table(spark, settings, BRONZE_VIDEOS), date, args.max_per_request,
                                     run_id, F.lit(at).cast("timestamp"), args.request_time)
    except ValueError as err:
        raise JobError(f"{args.from_}: {err}") from None
    landed, bad = landed.cache(), bad.cache()
    n_landed, n_bad = landed.count(), bad.count()
    reconciled = rows_read == n_landed + n_bad
    # columns of the import outside the contract are not landed: the audit row names them
    ignored = ",".join(ignored_columns(raw.columns, EXTERNAL_CANDIDATES_SCHEMA.fieldNames())) or None
    audit = [(run_id, CANDIDATES.name, ",".join(files) or args.from_, date, rows_read, n_landed, n_bad, reconciled, at,
              ignored)]
    write_table(spark.createDataFrame(audit, INGEST_AUDIT_SCHEMA), settings, INGEST_AUDIT, {"run_id": run_id},
                merge_schema=True)  # an audit table written before `ignored_columns` existed gains it
    if not reconciled:
        raise JobError(f"candidates from {args.from_}: read {rows_read} != landed {n_landed} + quarantined {n_bad}; "
                       f"nothing written (audit run {run_id})")
    if n_landed == 0:
        reasons = bad.groupBy("reason").count().orderBy(F.desc("count")).limit(3).collect()
        raise JobError(f"no candidate of {args.from_} passed the contract ({n_bad} quarantined, e.g. "
                       + ", ".join(f"{r['reason']} x{r['count']}" for r in reasons) + ")")
    version = write_table(landed, settings, CANDIDATES, {"date": date, "source": "external"})
    write_table(bad, settings, QUARANTINE, quarantine_slice(date))
    print(f"build_candidates {run_id} external {date}: read {rows_read} = landed {n_landed} + quarantined {n_bad}"
          + (f" ({', '.join(f'{r[0]} x{r[1]}' for r in bad.groupBy('reason').count().collect())})" if n_bad else "")
          + f"; {summary(landed)} (candidates version {version})")
    landed.unpersist()
    bad.unpersist()
    raw.unpersist()


def body(spark, settings, args) -> None:
    from pyspark.sql import functions as F

    from conf.lake import read_table, write_table
    from conf.tables import BRONZE_LOG, CANDIDATES
    from features.candidates import candidates_from_impressions
    from features.retrieval import parse_time_of_day

    try:
        parse_time_of_day(args.request_time)
    except ValueError as err:
        raise JobError(f"--request-time: {err}") from None
    if args.candidates_per_request < 1 or args.max_per_request < 1:
        raise JobError("--candidates-per-request and --max-per-request must be >= 1")
    prepare_table(spark, settings)
    if args.from_:
        if len(args.dates) != 1:
            raise JobError("--from imports one date's candidates: give a single --date")
        import_external(spark, settings, args, args.dates[0])
        return
    for date in args.dates:
        n_requests = None
        if args.source == "retrieval":
            candidates, requests = retrieval_for_date(spark, settings, args, date)
            n_requests = requests.count()
        else:
            day = read_table(spark, settings, BRONZE_LOG).where(F.col("date") == F.lit(date).cast("date"))
            candidates = candidates_from_impressions(day, args.window_minutes)
        candidates = candidates.cache()
        n = candidates.count()
        if n == 0:
            raise JobError(f"bronze_log has no impressions for {date}: run `infnet ingest --date {date}` first"
                           if args.source == "logged" else f"retrieval found no candidate for {date}")
        version = write_table(candidates, settings, CANDIDATES, {"date": date, "source": args.source})
        print(f"build_candidates {args.source} {date}: {summary(candidates, n_requests)} (candidates version {version})")
        candidates.unpersist()


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
