"""Landing outside data: one reader for raw sources, the checks made before anything is written,
and the ``ingest_audit`` rows that reconcile rows read = landed + quarantined.

Shared by the ingest job (raw log / users / videos / history) and ``build_candidates --from`` /
``--users`` (an external system's rows). The jobs parse flags, call these functions and write
what they return. Problems with the input itself (missing, empty, damaged, lacking contract
columns, lacking a requested date) raise :class:`RawInputError` with one line naming the table
and the source; the jobs print it and exit 2.

Format of a source (:func:`sniff_format`, unless one is given): a catalog table for a bare name
the catalog holds, CSV for ``*.csv`` / ``*.csv.gz``, Parquet for ``*.parquet`` / ``*.pq`` (also a
folder of part files named so), a Delta table for a Delta folder, and otherwise the caller's
``unnamed`` format (ingest: CSV, the landing zone's usual files; candidates: Parquet).

>>> row = audit_row("r1", "bronze_users", ["users.csv"], None, 3, 2, 1, None, ["note"])
>>> row.reconciled, summary_line(row)
(True, 'bronze_users: read 3 = landed 2 + quarantined 1  ignored raw columns: note')
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import astuple, dataclass
from typing import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from conf.lake import hadoop_file, sql_literal
from conf.schemas import EXTERNAL_CANDIDATES_SCHEMA, INGEST_AUDIT_SCHEMA, string_schema
from conf.tables import BRONZE_LOG, CANDIDATES
from features.contracts import (CORRUPT_COL, LOG_CONTRACT, READER_COLUMNS, SOURCE_FILE_COL, Contract, as_strings,
                                bronze_log, ignored_columns, quarantine_log_slice, raw_date_sql, split_valid,
                                with_source_position)
from features.external_candidates import split_external

class RawInputError(ValueError):
    """A source that cannot be landed as it is; the message is one line naming table and source."""


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

# What Spark says when a source is not there (a path, a catalog table, a Delta folder).
NOT_FOUND_MARKERS = ("PATH_NOT_FOUND", "does not exist", "TABLE_OR_VIEW_NOT_FOUND", "is not a Delta table")

# What a damaged raw file makes Spark's readers say (gzip/zlib streams, Parquet footers).
UNREADABLE_MARKERS = (
    "Unexpected end of input stream", "Corrupt GZIP trailer", "Not in GZIP format", "invalid block type",
    "invalid distance", "invalid stored block lengths", "incorrect header check", "is not a Parquet file",
    "Can not read value at", "FAILED_READ_FILE", "CANNOT_READ_FILE_FOOTER",
)


def unreadable_reason(err: BaseException) -> str | None:
    """One line saying why a raw file could not be read (the innermost reader error Spark reports,
    e.g. ``java.io.EOFException: Unexpected end of input stream`` for a truncated gzip), or None
    when ``err`` is not about a damaged file.

    >>> unreadable_reason(ValueError("x\\nCaused by: java.io.EOFException: Unexpected end of input stream"))
    'truncated or corrupt file (java.io.EOFException: Unexpected end of input stream)'
    >>> unreadable_reason(ValueError("[PATH_NOT_FOUND] nope")) is None
    True
    """
    text = f"{err}\n{getattr(err, '_stackTrace', '') or ''}"
    if not any(marker in text for marker in UNREADABLE_MARKERS):
        return None
    lines = [line.strip() for line in text.splitlines()]
    causes = [line.removeprefix("Caused by: ") for line in lines
              if any(marker in line for marker in UNREADABLE_MARKERS) and not line.startswith("at ")]
    detail = causes[-1] if causes else "unreadable"
    return f"truncated or corrupt file ({detail})"


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


def _file_source_missing(spark, source: str) -> bool:
    """True when nothing exists at a file source (a path, folder or glob), asked of its Hadoop
    filesystem before Spark's reader, which logs a Java stack for a missing path before it raises."""
    try:
        path, fs = hadoop_file(spark, source)
        matches = fs.globStatus(path)
    except Exception:  # noqa: BLE001 - a filesystem that cannot answer: the reader reports it
        return False
    return matches is None or len(matches) == 0


def sniff_format(spark, source: str, unnamed: str = "csv") -> str:
    """``table``, ``csv``, ``parquet`` or ``delta`` for ``source`` (rules in the module docstring);
    ``unnamed`` when neither the name nor a Delta log tells."""
    lower = source.lower().rstrip("/")
    if "/" not in source and _table_exists(spark, source):
        return "table"
    if lower.endswith((".csv", ".csv.gz")):
        return "csv"
    if ".parquet" in lower or lower.endswith(".pq"):
        return "parquet"
    return "delta" if _is_delta(spark, source) else unnamed


def _read_strings(spark, source: str, fmt: str, table: str) -> DataFrame:
    if fmt == "csv":  # every column a string, and the malformed lines kept in CORRUPT_COL for quarantine
        header = spark.read.option("header", True).csv(source).columns
        if not header:
            raise RawInputError(f"{table}: {source} is empty (no header line)")
        schema = string_schema([*header, CORRUPT_COL])
        df = (spark.read.option("header", True).option("mode", "PERMISSIVE")
              .option("columnNameOfCorruptRecord", CORRUPT_COL).schema(schema).csv(source))
        return df.select("*", F.col("_metadata.file_path").alias(SOURCE_FILE_COL))
    if fmt == "parquet":
        return as_strings(spark.read.parquet(source).select("*", F.col("_metadata.file_path").alias(SOURCE_FILE_COL)))
    if fmt == "delta":
        return as_strings(spark.read.format("delta").load(source).withColumn(SOURCE_FILE_COL, F.lit(source)))
    if fmt == "table":
        return as_strings(spark.table(source).withColumn(SOURCE_FILE_COL, F.lit(source)))
    raise ValueError(f"unknown format {fmt!r}: csv, parquet, delta or table")


def read_raw(spark, source: str, table: str, required: Sequence[str] = (), fmt: str = "auto",
             unnamed: str = "csv") -> DataFrame:
    """The rows at ``source`` (a file, folder, glob, Delta folder or catalog table) as strings, with
    ``_source_file``, ``_source_row`` (and ``_corrupt_record`` for CSV). ``fmt="auto"`` sniffs the
    format (:func:`sniff_format`). A missing, empty or damaged source and a lack of the
    ``required`` columns are a :class:`RawInputError` whose message starts with ``table``."""
    fmt = sniff_format(spark, source, unnamed) if fmt == "auto" else fmt
    if fmt in ("csv", "parquet") and _file_source_missing(spark, source):
        raise RawInputError(f"{table}: source {source} not found")
    try:
        df = _read_strings(spark, source, fmt, table)
    except RawInputError:
        raise
    except Exception as err:  # AnalysisException: path missing, not a table file, ...
        if any(marker in str(err) for marker in NOT_FOUND_MARKERS):
            raise RawInputError(f"{table}: source {source} not found") from None
        reason = unreadable_reason(err)
        if reason:
            raise RawInputError(f"{table}: cannot read {source}: {reason}") from None
        raise
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise RawInputError(f"{table}: {source} lacks the contract columns {missing}; "
                            f"its columns are {[c for c in df.columns if c not in READER_COLUMNS]}")
    return with_source_position(df)


def read_user_list(spark, source: str) -> DataFrame:
    """``user_id`` (long) of a user list (a Parquet, CSV or Delta path or a catalog table with a
    ``user_id`` column; unparseable ids dropped): ``build_candidates --users``."""
    users = read_raw(spark, source, "--users", required=["user_id"], unnamed="parquet")
    return users.select(F.col("user_id").try_cast("long").alias("user_id")).where("user_id IS NOT NULL")


@dataclass
class RawInput:
    """One raw source read, cached and checked: what every table's ingest starts from."""

    contract: Contract
    path: str
    df: DataFrame  # persisted DataFrame of raw strings (unpersist when done)
    files: list[str]
    rows: int
    ignored_columns: list[str]


def load_raw(spark, path: str, contract: Contract) -> RawInput:
    """Read, cache and count one raw source before anything is written: a damaged or empty file
    is a :class:`RawInputError` here, and raw columns outside the contract are listed (they are
    not landed anywhere; the audit row names them)."""
    df = read_raw(spark, path, contract.table, contract.columns).persist()
    try:
        files = sorted(r[0] for r in df.select(SOURCE_FILE_COL).distinct().collect())
        rows = df.count()
    except Exception as err:  # the first full read: where truncated or corrupt files surface
        df.unpersist()
        reason = unreadable_reason(err)
        if reason is None:
            raise
        raise RawInputError(f"{contract.table}: cannot read {path}: {reason}") from None
    if rows == 0:
        df.unpersist()
        raise RawInputError(f"{contract.table}: {path} has no data rows; {contract.table} is left as it was")
    return RawInput(contract, path, df, files, rows, ignored_columns(df.columns, contract.columns))


# ---------------------------------------------------------------------------------------------
# What a log ingest lands, and the external candidate import
# ---------------------------------------------------------------------------------------------

@dataclass
class LogIngest:
    """The log rows of the dates an ingest replaces, split and counted, before anything is written."""

    dates: list[str]  # the dates asked for, or every date the file holds
    rows_read: int  # raw rows claiming one of the dates, plus those whose date cannot be read
    landed: DataFrame  # bronze_log rows of the dates
    quarantined: DataFrame
    rows_quarantined: int
    landed_slice: str  # the bronze_log replaceWhere predicate: the dates
    quarantine_slice: str  # the quarantine replaceWhere predicate (features.contracts.quarantine_log_slice)


def plan_log_ingest(raw: RawInput, dates: list[str] | None, run_id: str, at: dt.datetime) -> LogIngest:
    """Split the log under its contract and keep the ``dates`` (default: every date the file
    holds). A requested date the file does not hold is a :class:`RawInputError`: replacing that
    partition with nothing would silently delete it."""
    claimed = raw.df.withColumn("_claimed_date", F.expr(raw_date_sql("`date`")))
    valid, bad = split_valid(claimed, LOG_CONTRACT, run_id, F.lit(at).cast("timestamp"))
    present = sorted(str(r[0]) for r in claimed.select("_claimed_date").distinct().collect() if r[0] is not None)
    if not present:
        raise RawInputError(f"{BRONZE_LOG.name}: no readable date in {raw.path}")
    absent = [d for d in dates or [] if d not in present]
    if absent:
        raise RawInputError(f"{BRONZE_LOG.name}: {raw.path} has no rows dated {', '.join(absent)} "
                            f"(it holds {present[0]}..{present[-1]}); nothing was written")
    dates = dates or present
    wanted = [dt.date.fromisoformat(d) for d in dates]
    in_scope = F.col("_claimed_date").isin(*wanted) | F.col("_claimed_date").isNull()
    rows_read = claimed.where(in_scope).count()
    bad_slice = quarantine_log_slice(dates, raw.files)
    quarantined = bad.where(F.expr(bad_slice))
    return LogIngest(dates, rows_read, bronze_log(valid).where(F.col("date").isin(*wanted)), quarantined,
                     quarantined.count(), "date IN (" + ", ".join(f"DATE {sql_literal(d)}" for d in dates) + ")",
                     bad_slice)


@dataclass
class ExternalImport:
    """An external candidate set split under its contract (cached: unpersist when done)."""

    raw: DataFrame
    landed: DataFrame  # candidates rows, source external
    quarantined: DataFrame
    audit: AuditRow


def split_external_import(raw: DataFrame, source: str, users: DataFrame, videos: DataFrame, date: str,
                          max_per_request: int, run_id: str, at: dt.datetime, time_of_day: str) -> ExternalImport:
    """Cache and count the raw rows of ``source`` (from :func:`read_raw`), split them with
    features.external_candidates.split_external and build the audit row. A contract the input
    cannot meet (a required column missing) is a :class:`RawInputError`."""
    raw = raw.cache()
    rows_read = raw.count()
    files = sorted(r[0] for r in raw.select(SOURCE_FILE_COL).distinct().collect())
    try:
        landed, bad = split_external(raw, users, videos, date, max_per_request, run_id,
                                     F.lit(at).cast("timestamp"), time_of_day)
    except ValueError as err:
        raise RawInputError(f"{source}: {err}") from None
    landed, bad = landed.cache(), bad.cache()
    # columns of the import outside the contract are not landed: the audit row names them
    ignored = ignored_columns(raw.columns, EXTERNAL_CANDIDATES_SCHEMA.fieldNames())
    audit = audit_row(run_id, CANDIDATES.name, files or [source], [date], rows_read, landed.count(), bad.count(),
                      at, ignored)
    return ExternalImport(raw, landed, bad, audit)


def reason_counts(quarantined: DataFrame, limit: int | None = None) -> list[tuple[str, int]]:
    """``(reason, rows)`` of quarantine rows, the most frequent first (``limit`` of them)."""
    counts = quarantined.groupBy("reason").count().orderBy(F.desc("count"))
    return [(r["reason"], r["count"]) for r in (counts.limit(limit) if limit else counts).collect()]


def external_import_refusal(imp: ExternalImport, source: str) -> str | None:
    """Why the import must not be written (counts that do not reconcile, or nothing passed the
    contract), or None."""
    a = imp.audit
    if not a.reconciled:
        return (f"candidates from {source}: read {a.rows_read} != landed {a.rows_landed} + quarantined "
                f"{a.rows_quarantined}; nothing written (audit run {a.run_id})")
    if a.rows_landed == 0:
        return (f"no candidate of {source} passed the contract ({a.rows_quarantined} quarantined, e.g. "
                + ", ".join(f"{reason} x{n}" for reason, n in reason_counts(imp.quarantined, 3)) + ")")
    return None


def external_import_summary(imp: ExternalImport) -> str:
    """One line: rows read = landed + quarantined (with the reasons), and the landed set."""
    a, reasons = imp.audit, reason_counts(imp.quarantined)
    return (f"read {a.rows_read} = landed {a.rows_landed} + quarantined {a.rows_quarantined}"
            + (f" ({', '.join(f'{r} x{n}' for r, n in reasons)})" if reasons else "")
            + f"; {candidates_summary(imp.landed)}")


def candidates_summary(candidates: DataFrame, n_requests: int | None = None) -> str:
    """One line about a candidate set a run lands: rows, requests, candidates per request, the
    channel mix, and how many of ``n_requests`` (the requests served, when known) got none."""
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


# ---------------------------------------------------------------------------------------------
# ingest_audit rows
# ---------------------------------------------------------------------------------------------

def new_run() -> tuple[str, dt.datetime]:
    """``(run_id, at)`` of one run: an id sorting by its UTC start time (with a random suffix, so
    two runs of one second differ) and the naive UTC timestamp its audit and quarantine rows carry."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8], now.replace(tzinfo=None)


@dataclass(frozen=True)
class AuditRow:
    """One ``ingest_audit`` row: the fields are conf.schemas.INGEST_AUDIT_SCHEMA's columns, in order."""

    run_id: str
    table_name: str
    source_file: str  # comma list of the files read
    dates: str | None  # comma list of the dates landed (log and candidates only)
    rows_read: int
    rows_landed: int
    rows_quarantined: int
    reconciled: bool  # rows_read == rows_landed + rows_quarantined
    ingested_at: dt.datetime
    ignored_columns: str | None  # comma list of the raw columns outside the contract (None: none)


def audit_row(run_id: str, table: str, files: Sequence[str], dates: Sequence[str] | None, read: int, landed: int,
              quarantined: int, at: dt.datetime, ignored: Sequence[str]) -> AuditRow:
    """The audit row of one table in one run; ``reconciled`` says whether read = landed + quarantined."""
    return AuditRow(run_id, table, ",".join(files), ",".join(dates) if dates else None, int(read), int(landed),
                    int(quarantined), read == landed + quarantined, at, ",".join(ignored) or None)


def audit_frame(spark, rows: Sequence[AuditRow]) -> DataFrame:
    """The rows as an ``ingest_audit`` DataFrame (INGEST_AUDIT_SCHEMA)."""
    return spark.createDataFrame([astuple(r) for r in rows], INGEST_AUDIT_SCHEMA)


def summary_line(row: AuditRow) -> str:
    """``bronze_log: read 13 = landed 12 + quarantined 1  [dates ...]  ignored raw columns: x,y``
    (``  MISMATCH`` at the end when the counts do not reconcile)."""
    return (f"{row.table_name}: read {row.rows_read} = landed {row.rows_landed} + quarantined {row.rows_quarantined}"
            + (f"  [dates {row.dates}]" if row.dates else "")
            + (f"  ignored raw columns: {row.ignored_columns}" if row.ignored_columns else "")
            + ("" if row.reconciled else "  MISMATCH"))
