"""Land raw logs, users, videos and history into bronze Delta tables, quarantining bad rows.

Every raw file (CSV, CSV.gz or Parquet) is read with all columns as strings and cast under its
contract (features/contracts.py over conf/tables.py); rows that break it go to `quarantine` with the
reason, the source file and row. For every table the job stores an `ingest_audit` row and fails
unless rows read = rows landed + rows quarantined. Raw columns outside the contract are not
landed; the audit row (`ignored_columns`) and the summary line name them.

Every source is read and checked before anything is written: a missing, empty (no header, or no
data rows) or damaged (truncated gzip, bad Parquet) file, a file lacking contract columns, or a
requested date the log does not hold stops the job with one line (exit 2) and changes nothing.

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
from dataclasses import dataclass

from conf.settings import raw_sources
from jobs.common import JobError, add_dates_argument, base_parser, run_job

log = logging.getLogger("infnet.ingest")


def build_parser():
    parser = base_parser("ingest", __doc__)
    add_dates_argument(parser, required=False,
                       help="log date(s) to land: YYYY-MM-DD, a comma list or a range a..b "
                            "(default: every date in the log file)")
    for name, path in raw_sources().items():  # $INFNET_RAW_DIR or the bundled demo data
        parser.add_argument(f"--{name}", default=path,
                            help=f"{name} file, folder or glob: CSV, CSV.gz or Parquet (default: {path})")
    return parser


def read_raw(spark, path: str, contract):
    """The file(s) at ``path`` as strings, with ``_source_file``, ``_source_row`` (and
    ``_corrupt_record`` for CSV). A missing or empty file and missing contract columns are a
    :class:`JobError`."""
    from pyspark.sql import functions as F

    from conf.schemas import string_schema
    from features.contracts import CORRUPT_COL, READER_COLUMNS, SOURCE_FILE_COL, as_strings, with_source_position

    is_parquet = ".parquet" in path.lower() or path.lower().endswith(".pq")
    try:
        if is_parquet:
            typed = spark.read.parquet(path).select("*", F.col("_metadata.file_path").alias(SOURCE_FILE_COL))
            df = as_strings(typed)
        else:
            header = spark.read.option("header", True).csv(path).columns
            if not header:
                raise JobError(f"{contract.table}: {path} is empty (no header line)")
            schema = string_schema([*header, CORRUPT_COL])
            df = (spark.read.option("header", True).option("mode", "PERMISSIVE")
                  .option("columnNameOfCorruptRecord", CORRUPT_COL).schema(schema).csv(path))
            df = df.select("*", F.col("_metadata.file_path").alias(SOURCE_FILE_COL))
    except JobError:
        raise
    except Exception as err:  # AnalysisException: path missing, not a table file, ...
        if "PATH_NOT_FOUND" in str(err) or "does not exist" in str(err):
            raise JobError(f"{contract.table}: source {path} not found") from None
        reason = unreadable_reason(err)
        if reason:
            raise JobError(f"{contract.table}: cannot read {path}: {reason}") from None
        raise
    missing = [c for c in contract.columns if c not in df.columns]
    if missing:
        raise JobError(f"{contract.table}: {path} lacks the contract columns {missing}; "
                       f"its columns are {[c for c in df.columns if c not in READER_COLUMNS]}")
    return with_source_position(df)


# What a damaged raw file makes Spark's readers say (gzip/zlib streams, Parquet footers).
UNREADABLE_MARKERS = (
    "Unexpected end of input stream", "Corrupt GZIP trailer", "Not in GZIP format", "invalid block type",
    "invalid distance", "invalid stored block lengths", "incorrect header check", "is not a Parquet file",
    "Can not read value at", "FAILED_READ_FILE", "CANNOT_READ_FILE_FOOTER",
)


def unreadable_reason(err: BaseException) -> str | None:
    """One line saying why a raw file could not be read (the innermost reader error Spark reports,
    e.g. ``java.io.EOFException: Unexpected end of input stream`` for a truncated gzip), or None
    when ``err`` is not about a damaged file."""
    text = f"{err}\n{getattr(err, '_stackTrace', '') or ''}"
    if not any(marker in text for marker in UNREADABLE_MARKERS):
        return None
    lines = [line.strip() for line in text.splitlines()]
    causes = [line.removeprefix("Caused by: ") for line in lines
              if any(marker in line for marker in UNREADABLE_MARKERS) and not line.startswith("at ")]
    detail = causes[-1] if causes else "unreadable"
    return f"truncated or corrupt file ({detail})"


@dataclass
class RawInput:
    """One raw source read, cached and checked: what every table's ingest starts from."""

    contract: object
    path: str
    df: object  # persisted DataFrame of raw strings (unpersist when done)
    files: list[str]
    rows: int
    ignored_columns: list[str]


def load_raw(spark, path: str, contract) -> RawInput:
    """Read, cache and count one raw source before anything is written: a damaged or empty file
    stops the job here with one line, and raw columns outside the contract are listed (they are
    not landed anywhere; the audit row names them)."""
    from features.contracts import SOURCE_FILE_COL, ignored_columns

    df = read_raw(spark, path, contract).persist()
    try:
        files = sorted(r[0] for r in df.select(SOURCE_FILE_COL).distinct().collect())
        rows = df.count()
    except Exception as err:  # the first full read: where truncated or corrupt files surface
        df.unpersist()
        reason = unreadable_reason(err)
        if reason is None:
            raise
        raise JobError(f"{contract.table}: cannot read {path}: {reason}") from None
    if rows == 0:
        df.unpersist()
        raise JobError(f"{contract.table}: {path} has no data rows; {contract.table} is left as it was")
    ignored = ignored_columns(df.columns, contract.columns)
    return RawInput(contract, path, df, files, rows, ignored)


def _audit_row(run_id, table, raw: RawInput, dates, read, landed, quarantined, at):
    return (run_id, table, ",".join(raw.files), ",".join(dates) if dates else None,
            int(read), int(landed), int(quarantined), read == landed + quarantined, at,
            ",".join(raw.ignored_columns) or None)


def ingest_log(spark, settings, raw: RawInput, dates: list[str] | None, run_id: str, at) -> tuple:
    from pyspark.sql import functions as F

    from conf.lake import read_table, sql_literal, write_table
    from conf.tables import BRONZE_LOG, QUARANTINE
    from features.contracts import LOG_CONTRACT, bronze_log, quarantine_log_slice, raw_date_sql, split_valid

    claimed = raw.df.withColumn("_claimed_date", F.expr(raw_date_sql("`date`")))
    valid, bad = split_valid(claimed, LOG_CONTRACT, run_id, F.lit(at).cast("timestamp"))
    present = sorted(str(r[0]) for r in claimed.select("_claimed_date").distinct().collect() if r[0] is not None)
    if not present:
        raise JobError(f"bronze_log: no readable date in {raw.path}")
    absent = [d for d in dates or [] if d not in present]
    if absent:  # replacing those partitions with nothing would silently delete them
        raise JobError(f"bronze_log: {raw.path} has no rows dated {', '.join(absent)} "
                       f"(it holds {present[0]}..{present[-1]}); nothing was written")
    dates = dates or present
    wanted = [dt.date.fromisoformat(d) for d in dates]
    in_scope = F.col("_claimed_date").isin(*wanted) | F.col("_claimed_date").isNull()
    rows_read = claimed.where(in_scope).count()

    landed_df = bronze_log(valid).where(F.col("date").isin(*wanted))
    bad_slice = quarantine_log_slice(dates, raw.files)
    bad_df = bad.where(F.expr(bad_slice))
    rows_quarantined = bad_df.count()
    date_predicate = "date IN (" + ", ".join(f"DATE {sql_literal(d)}" for d in dates) + ")"
    write_table(landed_df, settings, BRONZE_LOG, date_predicate)
    write_table(bad_df, settings, QUARANTINE, bad_slice)
    rows_landed = read_table(spark, settings, BRONZE_LOG).where(F.col("date").isin(*wanted)).count()
    return _audit_row(run_id, BRONZE_LOG.name, raw, dates, rows_read, rows_landed, rows_quarantined, at)


def ingest_dimension(spark, settings, raw: RawInput, table, run_id: str, at) -> tuple:
    from pyspark.sql import functions as F

    from conf.lake import read_table, sql_literal, write_table
    from conf.tables import QUARANTINE
    from features.contracts import split_valid

    valid, bad = split_valid(raw.df, raw.contract, run_id, F.lit(at).cast("timestamp"))
    bad = bad.persist()
    rows_quarantined = bad.count()
    write_table(valid, settings, table)
    write_table(bad, settings, QUARANTINE, f"source_table = {sql_literal(table.name)}")
    rows_landed = read_table(spark, settings, table).count()
    bad.unpersist()
    return _audit_row(run_id, table.name, raw, None, raw.rows, rows_landed, rows_quarantined, at)


def summary_line(row: tuple) -> str:
    """``bronze_log: read 13 = landed 12 + quarantined 1  [dates ...]  ignored raw columns: x,y``."""
    return (f"{row[1]}: read {row[4]} = landed {row[5]} + quarantined {row[6]}"
            + (f"  [dates {row[3]}]" if row[3] else "")
            + (f"  ignored raw columns: {row[9]}" if row[9] else "")
            + ("" if row[7] else "  MISMATCH"))


def body(spark, settings, args) -> None:
    from conf.lake import write_table
    from conf.schemas import INGEST_AUDIT_SCHEMA
    from conf.tables import BRONZE_HISTORY, BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS, INGEST_AUDIT
    from features.contracts import HISTORY_CONTRACT, LOG_CONTRACT, USER_CONTRACT, VIDEO_CONTRACT

    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    sources = [(args.log, LOG_CONTRACT, BRONZE_LOG), (args.users, USER_CONTRACT, BRONZE_USERS),
               (args.videos, VIDEO_CONTRACT, BRONZE_VIDEOS), (args.history, HISTORY_CONTRACT, BRONZE_HISTORY)]
    raws = []
    try:
        for path, contract, _ in sources:  # every source is read and checked before anything is written
            raws.append(load_raw(spark, path, contract))
        rows = [ingest_log(spark, settings, raws[0], args.dates, run_id, at)]
        rows += [ingest_dimension(spark, settings, raw, table, run_id, at)
                 for raw, (_, _, table) in zip(raws[1:], sources[1:])]
    finally:
        for raw in raws:
            raw.df.unpersist()
    write_table(spark.createDataFrame(rows, INGEST_AUDIT_SCHEMA), settings, INGEST_AUDIT, {"run_id": run_id},
                merge_schema=True)  # lakes written before ``ignored_columns`` existed gain it
    broken = []
    for r in rows:
        line = summary_line(r)
        print(f"ingest {run_id} {line}")
        if not r[7]:
            broken.append(line)
    if broken:
        raise JobError("row counts do not reconcile (stored in ingest_audit, run " + run_id + "): " + "; ".join(broken))


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
