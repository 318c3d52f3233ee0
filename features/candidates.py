"""Candidate sets: one row per (request, candidate video), the contract in conf.tables.CANDIDATES_SCHEMA.

The demo builds requests from logged impressions: a user's impressions inside one fixed window
of ``window_minutes`` form one request whose time is the window's first impression, so every
candidate of a request is featurised at the same moment (events strictly before it) and shares
the user side. Any other producer only has to honour the schema.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from conf.tables import CANDIDATES_SCHEMA


def candidates_from_impressions(log: DataFrame, window_minutes: int = 60) -> DataFrame:
    """Group a bronze log slice into requests.

    ``request_id`` is a deterministic hash of (user_id, window start), so rebuilding a date gives
    the same ids.
    """
    window_ms = int(window_minutes) * 60_000
    bucket = F.floor(F.col("time_ms") / F.lit(window_ms))
    with_request = log.withColumn(
        "request_id", F.sha2(F.concat_ws(":", F.lit("req"), F.col("user_id"), bucket), 256).substr(1, 24)
    )
    request_time = with_request.groupBy("request_id").agg(F.min("time_ms").alias("request_time_ms"))
    out = with_request.join(request_time, "request_id")
    return out.select(
        *[F.col(f.name).cast(f.dataType).alias(f.name) for f in CANDIDATES_SCHEMA.fields]
    )


def validate_candidates(df: DataFrame) -> None:
    """Fail with a clear message when a table does not honour the candidates contract."""
    missing = [f.name for f in CANDIDATES_SCHEMA.fields if f.name not in df.columns]
    if missing:
        raise ValueError(f"candidates table lacks required columns {missing}; contract: {CANDIDATES_SCHEMA.simpleString()}")
