"""Land raw logs, users, videos and history into bronze Delta tables, quarantining bad rows.

Every raw file (CSV, CSV.gz or Parquet) is read with all columns as strings and cast under its
contract (features/contracts.py over conf/tables.py); rows that break it go to `quarantine` with the
reason, the source file and row. For every table the job stores an `ingest_audit` row and fails
unless rows read = rows landed + rows quarantined.

  bronze_log      the dates given (--date / --dates, default: every date in the file) are replaced
                  (Delta replaceWhere); quarantine rows of those dates are replaced with them
  bronze_users    whole-table overwrite
  bronze_videos   whole-table overwrite
  bronze_history  whole-table overwrite

Raw files default to $INFNET_RAW_DIR (the landing zone; default the bundled demo data).

example:  infnet ingest --dates 2022-04-25..2022-04-26 --lake /tmp/lake
"""
from __future__ import annotations

import datetime as dt
import logging
import sys
import uuid

from conf.settings import raw_sources
from jobs.common import JobError, base_parser, parse_dates, run_job

log = logging.getLogger("infnet.ingest")


def build_parser():
    parser = base_parser("ingest", __doc__)
    parser.add_argument("--date", "--dates", dest="dates", type=parse_dates,
                        help="log date(s) to land: YYYY-MM-DD, a comma list or a range a..b "
                             "(default: every date in the log file)")
    for name, path in raw_sources().items():  # $INFNET_RAW_DIR or the bundled demo data
        parser.add_argument(f"--{name}", default=path,
                            help=f"{name} file, folder or glob: CSV, CSV.gz or Parquet (default: {path})")
    return parser


def read_raw(spark, path: str, contract):
    """The file(s) at ``path`` as strings, with ``_source_file``, ``_source_row`` (and
    ``_corrupt_record`` for CSV). Missing contract columns are a :class:`JobError`."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from features.contracts import CORRUPT_COL, SOURCE_FILE_COL, as_strings, with_source_position

    is_parquet = ".parquet" in path.lower() or path.lower().endswith(".pq")
    try:
        if is_parquet:
            typed = spark.read.parquet(path).select("*", F.col("_metadata.file_path").alias(SOURCE_FILE_COL))
            df = as_strings(typed)
        else:
            header = spark.read.option("header", True).csv(path).columns
            schema = T.StructType([T.StructField(c, T.StringType()) for c in header]
                                  + [T.StructField(CORRUPT_COL, T.StringType())])
            df = (spark.read.option("header", True).option("mode", "PERMISSIVE")
                  .option("columnNameOfCorruptRecord", CORRUPT_COL).schema(schema).csv(path))
            df = df.select("*", F.col("_metadata.file_path").alias(SOURCE_FILE_COL))
    except Exception as err:  # AnalysisException: path missing, not a table file, ...
        if "PATH_NOT_FOUND" in str(err) or "does not exist" in str(err):
            raise JobError(f"{contract.table}: source {path} not found") from None
        raise
    missing = [c for c in contract.columns if c not in df.columns]
    if missing:
        raise JobError(f"{contract.table}: {path} lacks the contract columns {missing}; "
                       f"its columns are {[c for c in df.columns if not c.startswith('_')]}")
    return with_source_position(df)


def _audit_row(run_id, table, files, dates, read, landed, quarantined, at):
    return (run_id, table, ",".join(files), ",".join(dates) if dates else None,
            int(read), int(landed), int(quarantined), read == landed + quarantined, at)


def ingest_log(spark, settings, path: str, dates: list[str] | None, run_id: str, at) -> tuple:
    from pyspark.sql import functions as F

    from conf.lake import read_table, sql_literal, write_table
    from conf.tables import BRONZE_LOG, QUARANTINE
    from features.contracts import (LOG_CONTRACT, SOURCE_FILE_COL, bronze_log, quarantine_log_slice,
                                    raw_date_sql, split_valid)

    raw = read_raw(spark, path, LOG_CONTRACT).persist()
    files = sorted(r[0] for r in raw.select(SOURCE_FILE_COL).distinct().collect())
    raw = raw.withColumn("_claimed_date", F.expr(raw_date_sql("`date`")))
    valid, bad = split_valid(raw, LOG_CONTRACT, run_id, F.lit(at).cast("timestamp"))
    if not dates:
        dates = sorted(str(r[0]) for r in raw.select("_claimed_date").distinct().collect() if r[0] is not None)
    if not dates:
        raise JobError(f"bronze_log: no readable date in {path}")
    wanted = [dt.date.fromisoformat(d) for d in dates]
    in_scope = F.col("_claimed_date").isin(*wanted) | F.col("_claimed_date").isNull()
    rows_read = raw.where(in_scope).count()

    landed_df = bronze_log(valid).where(F.col("date").isin(*wanted))
    bad_slice = quarantine_log_slice(dates, files)
    bad_df = bad.where(F.expr(bad_slice))
    rows_quarantined = bad_df.count()
    date_predicate = "date IN (" + ", ".join(f"DATE {sql_literal(d)}" for d in dates) + ")"
    write_table(landed_df, settings, BRONZE_LOG, date_predicate)
    write_table(bad_df, settings, QUARANTINE, bad_slice)
    rows_landed = read_table(spark, settings, BRONZE_LOG).where(F.col("date").isin(*wanted)).count()
    raw.unpersist()
    return _audit_row(run_id, BRONZE_LOG.name, files, dates, rows_read, rows_landed, rows_quarantined, at)


def ingest_dimension(spark, settings, path: str, contract, table, run_id: str, at) -> tuple:
    from pyspark.sql import functions as F

    from conf.lake import read_table, sql_literal, write_table
    from conf.tables import QUARANTINE
    from features.contracts import SOURCE_FILE_COL, split_valid

    raw = read_raw(spark, path, contract).persist()
    files = sorted(r[0] for r in raw.select(SOURCE_FILE_COL).distinct().collect())
    rows_read = raw.count()
    valid, bad = split_valid(raw, contract, run_id, F.lit(at).cast("timestamp"))
    bad = bad.persist()
    rows_quarantined = bad.count()
    write_table(valid, settings, table)
    write_table(bad, settings, QUARANTINE, f"source_table = {sql_literal(table.name)}")
    rows_landed = read_table(spark, settings, table).count()
    bad.unpersist()
    raw.unpersist()
    return _audit_row(run_id, table.name, files, None, rows_read, rows_landed, rows_quarantined, at)


def body(spark, settings, args) -> None:
    from conf.lake import write_table
    from conf.tables import BRONZE_HISTORY, BRONZE_USERS, BRONZE_VIDEOS, INGEST_AUDIT
    from features.contracts import HISTORY_CONTRACT, INGEST_AUDIT_SCHEMA, USER_CONTRACT, VIDEO_CONTRACT

    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [ingest_log(spark, settings, args.log, args.dates, run_id, at)]
    for path, contract, table in (
        (args.users, USER_CONTRACT, BRONZE_USERS),
        (args.videos, VIDEO_CONTRACT, BRONZE_VIDEOS),
        (args.history, HISTORY_CONTRACT, BRONZE_HISTORY),
    ):
        rows.append(ingest_dimension(spark, settings, path, contract, table, run_id, at))
    write_table(spark.createDataFrame(rows, INGEST_AUDIT_SCHEMA), settings, INGEST_AUDIT, {"run_id": run_id})
    broken = []
    for r in rows:
        line = (f"{r[1]}: read {r[4]} = landed {r[5]} + quarantined {r[6]}"
                + (f"  [dates {r[3]}]" if r[3] else "") + ("" if r[7] else "  MISMATCH"))
        print(f"ingest {run_id} {line}")
        if not r[7]:
            broken.append(line)
    if broken:
        raise JobError("row counts do not reconcile (stored in ingest_audit, run " + run_id + "): " + "; ".join(broken))


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
