"""Raw input contracts: cast string columns under a declared schema, quarantine what does not fit.

Raw files are read with every column as a string (Parquet columns are turned into strings, arrays
into JSON) so that a value that does not parse becomes a quarantine row *with a reason* instead of
a silent null. :func:`split_valid` is a pure DataFrame function: it returns the typed valid rows and
the quarantine rows (``conf.tables.QUARANTINE_SCHEMA``); every input row lands in exactly one of
them, which is what lets the ingest job reconcile ``read = landed + quarantined``.

Reasons (several per row are joined with ``;``):

- ``missing:<col>``        a required (non-nullable) column is null or empty
- ``unparseable:<col>``    a value is present but does not cast to the contract type
- ``not_binary:<col>``     a label outside {0, 1}
- ``negative:<col>``       a time / duration below zero
- ``bad_date:<col>``       a ``YYYYMMDD`` field that is not a calendar date
- ``date_time_mismatch:<col>`` the day a ``YYYYMMDD`` field names is not the day of the row's time
  (``conf.tables.LOG_DATE_UTC_OFFSET_HOURS``, give or take ``LOG_DATE_TOLERANCE_HOURS``)
- ``malformed_row``        the CSV line had the wrong number of fields
- ``duplicate_key:<cols>`` a second row for a key that must be unique (dimension tables)

>>> LOG_CONTRACT.required[:3]
('user_id', 'video_id', 'date')
>>> USER_CONTRACT.unique_key
('user_id',)
"""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf.schemas import (
    LOG_BINARY_LABELS,
    LOG_DATE_TOLERANCE_HOURS,
    LOG_DATE_UTC_OFFSET_HOURS,
    LOG_NON_NEGATIVE,
    QUARANTINE_SCHEMA,
    RAW_HISTORY_SCHEMA,
    RAW_LOG_SCHEMA,
    RAW_USER_SCHEMA,
    RAW_VIDEO_SCHEMA,
)
from conf.tables import BRONZE_HISTORY, BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS

# Bookkeeping columns the reader adds next to the raw string columns.
SOURCE_FILE_COL = "_source_file"
SOURCE_ROW_COL = "_source_row"
CORRUPT_COL = "_corrupt_record"
READER_COLUMNS = (SOURCE_FILE_COL, SOURCE_ROW_COL, CORRUPT_COL)


def ignored_columns(columns, contract_columns) -> list[str]:
    """The raw columns outside the contract (not landed anywhere), leaving out the reader's own.

    >>> ignored_columns(["user_id", "note", "_source_file"], ["user_id"])
    ['note']
    """
    known = set(contract_columns) | set(READER_COLUMNS)
    return sorted(c for c in columns if c not in known)
REASON_COL = "_reason"


@dataclass(frozen=True)
class Contract:
    """What a raw table must look like. ``schema`` is one of the ``RAW_*_SCHEMA`` of conf.tables."""

    table: str  # the bronze table the valid rows land in (also ``source_table`` in quarantine)
    schema: T.StructType
    binary: tuple[str, ...] = ()
    non_negative: tuple[str, ...] = ()
    yyyymmdd: tuple[str, ...] = ()  # int columns holding a calendar date as YYYYMMDD
    unique_key: tuple[str, ...] = ()  # keep the first row (by source position) per key
    date_of_time: tuple[str, str] | None = None  # (YYYYMMDD column, epoch-ms column) that must agree

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema.fields)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema.fields if not f.nullable)


LOG_CONTRACT = Contract(BRONZE_LOG.name, RAW_LOG_SCHEMA, LOG_BINARY_LABELS, LOG_NON_NEGATIVE, ("date",),
                        date_of_time=("date", "time_ms"))
USER_CONTRACT = Contract(BRONZE_USERS.name, RAW_USER_SCHEMA, unique_key=("user_id",))
VIDEO_CONTRACT = Contract(BRONZE_VIDEOS.name, RAW_VIDEO_SCHEMA, unique_key=("video_id",))
HISTORY_CONTRACT = Contract(
    BRONZE_HISTORY.name, RAW_HISTORY_SCHEMA, non_negative=("history_len", "last_time_ms"),
    unique_key=("user_id",),
)


def as_strings(df: DataFrame) -> DataFrame:
    """Turn typed columns (Parquet) into the raw string form the contracts parse: arrays and
    structs as JSON, everything else with a plain string cast."""
    cols = []
    for f in df.schema.fields:
        c = F.col(f"`{f.name}`")
        if isinstance(f.dataType, (T.ArrayType, T.StructType, T.MapType)):
            cols.append(F.to_json(c).alias(f.name))
        elif isinstance(f.dataType, T.StringType):
            cols.append(c)
        else:
            cols.append(c.cast("string").alias(f.name))
    return df.select(*cols)


def _parse(raw: Column, data_type: T.DataType, for_check: bool = False) -> Column:
    """The contract value of a raw string. ``for_check`` builds a *different but equivalent*
    expression (on ``trim(raw)``, which the casts ignore anyway) for the checks: if the checks
    reused the very expressions that the valid projection aliases, Catalyst's constraint
    propagation would multiply every check by every alias (2^columns constraints, an optimizer
    that never returns)."""
    value = F.trim(raw) if for_check else raw
    if isinstance(data_type, T.StringType):
        return value
    if isinstance(data_type, (T.ArrayType, T.StructType, T.MapType)):
        return F.from_json(value, data_type)
    return value.try_cast(data_type)


def _is_blank(raw: Column) -> Column:
    return F.coalesce(F.trim(raw) == F.lit(""), F.lit(True))


def _reasons(contract: Contract, raw: dict[str, Column], has_corrupt: bool) -> Column:
    checked = {f.name: _parse(raw[f.name], f.dataType, for_check=True) for f in contract.schema.fields}
    checks: list[Column] = []
    if has_corrupt:
        checks.append(F.when(F.col(CORRUPT_COL).isNotNull(), F.lit("malformed_row")))
    for f in contract.schema.fields:
        r, p = raw[f.name], checked[f.name]
        if not f.nullable:
            checks.append(F.when(_is_blank(r), F.lit(f"missing:{f.name}")))
        checks.append(F.when(~_is_blank(r) & p.isNull(), F.lit(f"unparseable:{f.name}")))
    for name in contract.binary:
        checks.append(F.when(~checked[name].isin(0, 1), F.lit(f"not_binary:{name}")))
    for name in contract.non_negative:
        checks.append(F.when(checked[name] < 0, F.lit(f"negative:{name}")))
    for name in contract.yyyymmdd:
        checks.append(F.when(checked[name].isNotNull() & yyyymmdd_to_date(checked[name]).isNull(),
                             F.lit(f"bad_date:{name}")))
    if contract.date_of_time:
        date_col, time_col = contract.date_of_time
        hours = hours_from_local_day(yyyymmdd_to_date(checked[date_col]), checked[time_col])
        lo, hi = local_day_bounds_hours()
        checks.append(F.when((checked[time_col] >= 0) & ((hours < lo) | (hours >= hi)),  # negative: already named
                             F.lit(f"date_time_mismatch:{date_col}")))
    # concat_ws skips nulls: an empty string means the row passed every check
    return F.concat_ws(";", *checks)


def local_day_bounds_hours() -> tuple[float, float]:
    """Hours from the start of a log row's local day within which its ``time_ms`` must fall:
    the day itself, widened by the tolerance on both sides.

    >>> local_day_bounds_hours()
    (-3.0, 27.0)
    """
    return -float(LOG_DATE_TOLERANCE_HOURS), 24.0 + LOG_DATE_TOLERANCE_HOURS


def hours_from_local_day(day: Column, time_ms: Column) -> Column:
    """Hours from the start of ``day`` (in the log's UTC+8 time) to ``time_ms``; session time zone free."""
    local_ms = time_ms + F.lit(LOG_DATE_UTC_OFFSET_HOURS * 3_600_000)
    return (local_ms - F.unix_date(day).cast("long") * F.lit(86_400_000)) / F.lit(3_600_000.0)


def yyyymmdd_to_date(col: Column) -> Column:
    """20220425 -> DATE 2022-04-25; null for anything that is not a calendar date."""
    return F.try_to_date(F.lpad(col.cast("string"), 8, "0"), "yyyyMMdd")


def split_valid(
    df_raw_strings: DataFrame,
    contract: Contract,
    run_id: str = "adhoc",
    ingested_at: Column | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Split raw string rows into ``(valid, quarantine)``.

    ``valid`` has exactly the contract's columns, cast to its types (nothing else).
    ``quarantine`` follows ``QUARANTINE_SCHEMA``: the reason(s), the source file and row (from the
    optional ``_source_file`` / ``_source_row`` columns) and the raw values as JSON.
    Missing contract columns are an error for the whole input (raised as ``ValueError``).
    """
    missing = [c for c in contract.columns if c not in df_raw_strings.columns]
    if missing:
        raise ValueError(f"input for {contract.table} lacks contract columns {missing}; "
                         f"got {df_raw_strings.columns}")
    has_corrupt = CORRUPT_COL in df_raw_strings.columns
    not_strings = [f.name for f in df_raw_strings.schema.fields
                   if f.name in contract.columns and not isinstance(f.dataType, T.StringType)]
    if not_strings:
        raise ValueError(f"split_valid takes raw strings (see as_strings); {not_strings} are not")
    raw = {c: F.col(f"`{c}`") for c in contract.columns}
    source_file = F.col(SOURCE_FILE_COL) if SOURCE_FILE_COL in df_raw_strings.columns else F.lit("<dataframe>")
    source_row = F.col(SOURCE_ROW_COL).cast("long") if SOURCE_ROW_COL in df_raw_strings.columns else F.lit(None).cast("long")
    checked = df_raw_strings.select(
        *[raw[c] for c in contract.columns],
        F.to_json(F.struct(*contract.columns)).alias("_raw"),
        source_file.alias(SOURCE_FILE_COL),
        source_row.alias(SOURCE_ROW_COL),
        _reasons(contract, raw, has_corrupt).alias(REASON_COL),
    )
    if contract.unique_key:
        first = Window.partitionBy(*contract.unique_key).orderBy(
            F.col(REASON_COL) != "", SOURCE_FILE_COL, SOURCE_ROW_COL, "_raw")
        rank = F.row_number().over(first)
        dup = F.when((rank > 1) & (F.col(REASON_COL) == ""), F.lit("duplicate_key:" + ",".join(contract.unique_key)))
        checked = checked.withColumn(REASON_COL, F.concat_ws(";", F.when(F.col(REASON_COL) != "", F.col(REASON_COL)), dup))
    # strings pass through as the same attribute (an alias would feed constraint propagation too)
    valid = checked.where(F.col(REASON_COL) == "").select(*[
        F.col(f.name) if isinstance(f.dataType, T.StringType) else _parse(F.col(f.name), f.dataType).alias(f.name)
        for f in contract.schema.fields])
    quarantine = checked.where(F.col(REASON_COL) != "").select(
        F.lit(contract.table).alias("source_table"),
        F.col(SOURCE_FILE_COL).alias("source_file"),
        F.col(SOURCE_ROW_COL).alias("source_row"),
        F.col(REASON_COL).alias("reason"),
        F.col("_raw").alias("raw"),
        F.lit(run_id).alias("run_id"),
        (ingested_at if ingested_at is not None else F.current_timestamp()).alias("ingested_at"),
    )
    return valid, conform(quarantine, QUARANTINE_SCHEMA)


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Select and cast ``df`` to ``schema`` (column order and types)."""
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def impression_id(df: DataFrame) -> Column:
    """Deterministic impression id: sha2 of (user_id, video_id, time_ms, occurrence).

    ``occurrence`` numbers the rows sharing (user_id, video_id, time_ms), ordered by all their other
    columns; rows that still tie are exact duplicates, so which one gets which number does not
    change the result. Rerunning the ingest gives the same ids whatever the input order.
    """
    keys = ("user_id", "video_id", "time_ms")
    others = [c for c in df.columns if c not in keys]
    occurrence = F.row_number().over(Window.partitionBy(*keys).orderBy(*others))
    return F.sha2(F.concat_ws(":", F.lit("imp"), *[F.col(k) for k in keys], occurrence), 256).substr(1, 24)


def bronze_log(valid_log: DataFrame) -> DataFrame:
    """Valid typed log rows -> bronze_log rows: ``impression_id`` first, ``date`` as DateType."""
    with_id = valid_log.withColumn("impression_id", impression_id(valid_log))
    cols = ["impression_id"] + [c for c in valid_log.columns]
    return with_id.select(*cols).withColumn("date", yyyymmdd_to_date(F.col("date")))


def with_source_position(df: DataFrame) -> DataFrame:
    """Add ``_source_row``: the 1-based data row number inside its file (``_source_file``).

    Scales like the read itself (no global sort): rows of one file are contiguous inside a scan
    partition, so the number is the row's offset in its partition segment plus the sizes of the
    file's earlier segments. Exact for unsplit files (gzip, small files) and for split files
    whose splits Spark lays out in file order. Cache the result: it relies on the scan's order.
    """
    mid = F.monotonically_increasing_id()
    tagged = df.withColumn("_mid", mid).withColumn("_pid", F.shiftright(F.col("_mid"), 33))
    segments = tagged.groupBy(SOURCE_FILE_COL, "_pid").agg(
        F.min("_mid").alias("_seg_start"), F.count(F.lit(1)).alias("_seg_rows"))
    earlier = Window.partitionBy(SOURCE_FILE_COL).orderBy("_pid").rowsBetween(Window.unboundedPreceding, -1)
    segments = segments.withColumn("_seg_offset", F.coalesce(F.sum("_seg_rows").over(earlier), F.lit(0)))
    return (
        tagged.join(F.broadcast(segments), [SOURCE_FILE_COL, "_pid"])
        .withColumn(SOURCE_ROW_COL, F.col("_mid") - F.col("_seg_start") + F.col("_seg_offset") + 1)
        .drop("_mid", "_pid", "_seg_start", "_seg_rows", "_seg_offset")
    )


# One row per (ingest run, table): the reconciliation the ingest job stores in ``ingest_audit``.


def raw_date_sql(column: str) -> str:
    """SQL for the calendar date a raw YYYYMMDD string claims (null when unreadable); the same
    parse as :func:`yyyymmdd_to_date`, usable in a Delta ``replaceWhere``."""
    return (f"try_to_date(lpad(cast(try_cast({column} AS INT) AS STRING), 8, '0'), 'yyyyMMdd')")


def quarantine_log_slice(dates: list[str], source_files: list[str]) -> str:
    """The quarantine rows a log ingest for ``dates`` owns: rows whose raw ``date`` is one of the
    dates, plus the rows of these files whose date cannot be read (each run rewrites those, so
    they are never duplicated)."""
    from conf.lake import sql_literal

    claimed = raw_date_sql("get_json_object(raw, '$.date')")
    in_dates = ", ".join(f"DATE {sql_literal(d)}" for d in dates) or "NULL"
    files = ", ".join(sql_literal(f) for f in source_files) or "NULL"
    return (f"source_table = {sql_literal(LOG_CONTRACT.table)} AND ({claimed} IN ({in_dates}) "
            f"OR ({claimed} IS NULL AND source_file IN ({files})))")
