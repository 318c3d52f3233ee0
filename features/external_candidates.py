"""Candidate sets from an external retrieval system, imported under a contract.

Input rows hold ``conf.tables.EXTERNAL_CANDIDATES_SCHEMA`` as strings (``user_id``, ``video_id``;
optional ``request_id``, ``request_time_ms``, ``retrieval_score``, ``channel``).
:func:`split_external` returns the rows that land in ``candidates`` (source ``external``) and the
rows for ``quarantine`` (``conf.tables.QUARANTINE_SCHEMA``, ``source_table = 'candidates'``), every
input row in exactly one of them, so the job can reconcile ``read = landed + quarantined``.

Reasons (row checks first; a row failing one of them takes no part in the request checks):

- ``missing:<col>`` / ``unparseable:<col>``   a key is absent, a value does not cast
- ``nan:<col>`` / ``infinite:<col>``          a floating-point value (``retrieval_score``) casts to NaN
                                              or +-Infinity: it would rank nowhere (NaN) or everywhere
- ``unknown_user`` / ``unknown_video``        not in ``bronze_users`` / ``bronze_videos``
- ``request_time_outside_date``               ``request_time_ms`` is not within the imported local day
- ``request_mixes_users_or_times``            one ``request_id`` names several users or request times
- ``duplicate_key:request_id,video_id``       a second row for a (request, video) pair (the first by
                                              source position lands)
- ``over_max_per_request:<max>``              every row of a request holding more than ``max`` candidates
                                              (a request is imported whole or not at all)

Defaults: ``request_id`` = hash of (user, request time); ``request_time_ms`` = the date's request
time; ``channels`` = ``[channel]``.
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf.schemas import EXTERNAL_CANDIDATES_SCHEMA, QUARANTINE_SCHEMA
from conf.tables import CANDIDATES
from features.candidates import conform_candidates
from features.categorical import DAY_MS
from features.contracts import REASON_COL, SOURCE_FILE_COL, SOURCE_ROW_COL, conform
from features.retrieval import request_id_column, request_time_ms

QUARANTINE_SOURCE = CANDIDATES.name


def _blank(c: Column) -> Column:
    return F.coalesce(F.trim(c) == F.lit(""), F.lit(True))


def _join_reasons(*checks: Column) -> Column:
    return F.concat_ws(";", *checks)


def with_optional_columns(raw: DataFrame) -> DataFrame:
    """Add the contract's optional columns a file leaves out, as null strings."""
    for f in EXTERNAL_CANDIDATES_SCHEMA.fields:
        if f.name not in raw.columns:
            if not f.nullable:
                raise ValueError(f"external candidates lack the required column {f.name!r}; "
                                 f"contract: {EXTERNAL_CANDIDATES_SCHEMA.simpleString()}")
            raw = raw.withColumn(f.name, F.lit(None).cast("string"))
    return raw


def quarantine_slice(date: str) -> str:
    """The quarantine rows an import for ``date`` owns (a rerun replaces exactly them)."""
    return f"source_table = '{QUARANTINE_SOURCE}' AND get_json_object(raw, '$.date') = '{date}'"


def split_external(raw: DataFrame, users: DataFrame, videos: DataFrame, date: str, max_per_request: int,
                   run_id: str = "adhoc", at: Column | None = None,
                   time_of_day: str = "00:00") -> tuple[DataFrame, DataFrame]:
    """``(candidates, quarantine)`` from raw string rows (with ``_source_file`` / ``_source_row``
    when known); see the module docstring for the checks."""
    raw = with_optional_columns(raw)
    default_time = request_time_ms(date, time_of_day)
    day_start = request_time_ms(date)
    strings = {f.name: F.col(f"`{f.name}`").cast("string") for f in EXTERNAL_CANDIDATES_SCHEMA.fields}
    typed = {f.name: strings[f.name].try_cast(f.dataType) for f in EXTERNAL_CANDIDATES_SCHEMA.fields}
    source_file = F.col(SOURCE_FILE_COL) if SOURCE_FILE_COL in raw.columns else F.lit("<dataframe>")
    source_row = F.col(SOURCE_ROW_COL).cast("long") if SOURCE_ROW_COL in raw.columns else F.lit(None).cast("long")
    raw_json = F.to_json(F.struct(*[strings[c].alias(c) for c in strings], F.lit(date).alias("date")))

    known_users = users.select(F.col("user_id").alias("_known_user")).distinct()
    known_videos = videos.select(F.col("video_id").alias("_known_video")).distinct()
    rows = raw.select(
        *[typed[c].alias(c) for c in strings],
        *[strings[c].alias(f"_s_{c}") for c in strings],
        source_file.alias("_file"), source_row.alias("_row"), raw_json.alias("_raw"),
    )
    rows = (rows.join(F.broadcast(known_users), F.col("user_id") == F.col("_known_user"), "left")
            .join(F.broadcast(known_videos), F.col("video_id") == F.col("_known_video"), "left"))
    rows = rows.withColumn("request_time_ms", F.coalesce(F.col("request_time_ms"), F.lit(default_time)))
    rows = rows.withColumn("request_id", F.coalesce(
        F.when(~_blank(F.col("_s_request_id")), F.col("request_id")),
        request_id_column("ext", F.col("user_id"), F.col("request_time_ms"))))

    checks = []
    for f in EXTERNAL_CANDIDATES_SCHEMA.fields:
        s = F.col(f"_s_{f.name}")
        if not f.nullable:
            checks.append(F.when(_blank(s), F.lit(f"missing:{f.name}")))
        checks.append(F.when(~_blank(s) & s.try_cast(f.dataType).isNull(), F.lit(f"unparseable:{f.name}")))
        if isinstance(f.dataType, (T.DoubleType, T.FloatType)):
            value = s.try_cast(f.dataType)
            checks.append(F.when(F.isnan(value), F.lit(f"nan:{f.name}")))
            checks.append(F.when(F.abs(value) == F.lit(float("inf")), F.lit(f"infinite:{f.name}")))
    checks.append(F.when(F.col("user_id").isNotNull() & F.col("_known_user").isNull(), F.lit("unknown_user")))
    checks.append(F.when(F.col("video_id").isNotNull() & F.col("_known_video").isNull(), F.lit("unknown_video")))
    checks.append(F.when((F.col("request_time_ms") < F.lit(day_start))
                         | (F.col("request_time_ms") >= F.lit(day_start + DAY_MS)),
                         F.lit("request_time_outside_date")))
    rows = rows.withColumn(REASON_COL, _join_reasons(*checks))

    # request checks over the rows that passed the row checks
    ok = F.col(REASON_COL) == ""
    per_request = Window.partitionBy("request_id")
    mixes = ok & ((F.size(F.collect_set(F.when(ok, F.col("user_id"))).over(per_request)) > 1)
                  | (F.size(F.collect_set(F.when(ok, F.col("request_time_ms"))).over(per_request)) > 1))
    rows = rows.withColumn(REASON_COL, F.when(mixes, F.lit("request_mixes_users_or_times")).otherwise(F.col(REASON_COL)))
    ok = F.col(REASON_COL) == ""
    first = Window.partitionBy("request_id", "video_id").orderBy(F.col(REASON_COL) != "", "_file", "_row", "_raw")
    duplicate = ok & (F.row_number().over(first) > 1)
    rows = rows.withColumn(REASON_COL, F.when(duplicate, F.lit("duplicate_key:request_id,video_id"))
                           .otherwise(F.col(REASON_COL)))
    ok = F.col(REASON_COL) == ""
    size = F.sum(F.when(ok, 1).otherwise(0)).over(per_request)
    rows = rows.withColumn(REASON_COL, F.when(ok & (size > int(max_per_request)),
                                          F.lit(f"over_max_per_request:{int(max_per_request)}"))
                           .otherwise(F.col(REASON_COL)))

    landed = rows.where(F.col(REASON_COL) == "").select(
        "request_id", "user_id", "video_id", "request_time_ms", "retrieval_score",
        F.when(F.col("channel").isNotNull() & ~_blank(F.col("channel")), F.array(F.col("channel"))).alias("channels"),
        F.lit("external").alias("source"), F.lit(dt.date.fromisoformat(date)).alias("date"))
    quarantine = rows.where(F.col(REASON_COL) != "").select(
        F.lit(QUARANTINE_SOURCE).alias("source_table"), F.col("_file").alias("source_file"),
        F.col("_row").alias("source_row"), F.col(REASON_COL).alias("reason"), F.col("_raw").alias("raw"),
        F.lit(run_id).alias("run_id"),
        (at if at is not None else F.current_timestamp()).alias("ingested_at"))
    return conform_candidates(landed), conform(quarantine, QUARANTINE_SCHEMA)
