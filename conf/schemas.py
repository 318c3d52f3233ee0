"""Column types: the raw input contracts and the schemas of the tables whose rows the jobs build
themselves (not derived from a DataFrame). The one place with ``StructType``s.

Table names, keys and partitioning live in :mod:`conf.tables` (no pyspark there).
"""
from __future__ import annotations

from pyspark.sql import types as T

QUALITY_RESULTS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("table_name", T.StringType(), False),
    T.StructField("partition", T.StringType(), False),
    T.StructField("suite", T.StringType(), False),
    T.StructField("expectation", T.StringType(), False),
    T.StructField("column", T.StringType(), True),
    T.StructField("severity", T.StringType(), False),
    T.StructField("status", T.StringType(), False),  # passed | failed | error (could not evaluate)
    T.StructField("success", T.BooleanType(), False),
    T.StructField("unexpected_count", T.LongType(), True),
    T.StructField("element_count", T.LongType(), True),
    T.StructField("observed", T.StringType(), True),
    T.StructField("sample_values", T.StringType(), True),  # JSON list of offending values
    T.StructField("check", T.StringType(), True),
    T.StructField("error", T.StringType(), True),
    T.StructField("evaluated_at", T.TimestampType(), False),
])

# ---------------------------------------------------------------------------------------------
# Raw input contracts. Everything is read as string first and cast under these contracts, so that
# an unparseable value becomes a quarantine row with a reason instead of a silent null.
# ---------------------------------------------------------------------------------------------

LOG_BINARY_LABELS = (
    "is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view",
    "is_profile_enter", "is_rand",
)
LOG_NON_NEGATIVE = ("time_ms", "play_time_ms", "duration_ms", "profile_stay_time", "comment_stay_time")

RAW_LOG_SCHEMA = T.StructType([
    T.StructField("user_id", T.LongType(), False),
    T.StructField("video_id", T.LongType(), False),
    T.StructField("date", T.IntegerType(), False),  # YYYYMMDD as published
    T.StructField("hourmin", T.IntegerType(), True),
    T.StructField("time_ms", T.LongType(), False),
    T.StructField("is_click", T.IntegerType(), False),
    T.StructField("is_like", T.IntegerType(), False),
    T.StructField("is_follow", T.IntegerType(), False),
    T.StructField("is_comment", T.IntegerType(), False),
    T.StructField("is_forward", T.IntegerType(), False),
    T.StructField("is_hate", T.IntegerType(), False),
    T.StructField("long_view", T.IntegerType(), False),
    T.StructField("play_time_ms", T.LongType(), False),
    T.StructField("duration_ms", T.LongType(), True),
    T.StructField("profile_stay_time", T.LongType(), True),
    T.StructField("comment_stay_time", T.LongType(), True),
    T.StructField("is_profile_enter", T.IntegerType(), True),
    T.StructField("is_rand", T.IntegerType(), True),
    T.StructField("tab", T.IntegerType(), True),
])
LOG_REQUIRED = tuple(f.name for f in RAW_LOG_SCHEMA.fields if not f.nullable)
# The log's ``date`` is the calendar day of ``time_ms`` in Beijing time (UTC+8), give or take: on
# the bundled log 1,539 of 171,671 rows carry the next day while still up to 2.18 h before
# midnight (99 % of them within 0.87 h); none trails. Rows farther than the tolerance from their
# day are quarantined (``date_time_mismatch:date``): partitions and gates go by ``date``, features
# by ``time_ms``, so such a row would sit in one day and act in another.
LOG_DATE_UTC_OFFSET_HOURS = 8
LOG_DATE_TOLERANCE_HOURS = 3

USER_CATEGORICAL = (
    "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
    "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range",
    *(f"onehot_feat{i}" for i in range(18)),
)
RAW_USER_SCHEMA = T.StructType(
    [T.StructField("user_id", T.LongType(), False)]
    + [T.StructField(c, T.StringType(), True) for c in USER_CATEGORICAL]
    + [T.StructField(c, T.LongType(), True) for c in
       ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")]
)

RAW_VIDEO_SCHEMA = T.StructType([
    T.StructField("video_id", T.LongType(), False),
    T.StructField("author_id", T.LongType(), True),
    T.StructField("video_type", T.StringType(), True),
    T.StructField("upload_dt", T.StringType(), True),
    T.StructField("upload_type", T.StringType(), True),
    T.StructField("visible_status", T.StringType(), True),
    T.StructField("video_duration", T.DoubleType(), True),
    T.StructField("server_width", T.DoubleType(), True),
    T.StructField("server_height", T.DoubleType(), True),
    T.StructField("music_id", T.LongType(), True),
    T.StructField("music_type", T.StringType(), True),
    T.StructField("tag", T.StringType(), True),
])

RAW_HISTORY_SCHEMA = T.StructType([
    T.StructField("user_id", T.LongType(), False),
    T.StructField("history_len", T.LongType(), True),
    T.StructField("last_time_ms", T.LongType(), True),
    T.StructField("watch_seq", T.ArrayType(T.LongType()), True),
    T.StructField("like_seq", T.ArrayType(T.LongType()), True),
    T.StructField("long_watch_seq", T.ArrayType(T.LongType()), True),
])

QUARANTINE_SCHEMA = T.StructType([
    T.StructField("source_table", T.StringType(), False),
    T.StructField("source_file", T.StringType(), False),
    T.StructField("source_row", T.LongType(), True),
    T.StructField("reason", T.StringType(), False),
    T.StructField("raw", T.StringType(), True),  # the row as JSON of its raw string values
    T.StructField("run_id", T.StringType(), False),
    T.StructField("ingested_at", T.TimestampType(), False),
])

# Where a candidate set comes from: the logged impressions of the day (offline replay), the Spark
# retrieval stage (features/retrieval.py) or an external retrieval system's import.
CANDIDATE_SOURCES = ("logged", "retrieval", "external")

# One contract for every source: any table with it can be scored.
CANDIDATES_SCHEMA = T.StructType([
    T.StructField("request_id", T.StringType(), False),
    T.StructField("impression_id", T.StringType(), True),  # set when the candidate was logged
    T.StructField("user_id", T.LongType(), False),
    T.StructField("video_id", T.LongType(), False),
    T.StructField("request_time_ms", T.LongType(), False),
    T.StructField("tab", T.IntegerType(), True),
    T.StructField("source", T.StringType(), False),  # one of CANDIDATE_SOURCES
    T.StructField("channels", T.ArrayType(T.StringType()), True),  # retrieval channel(s) that proposed it
    T.StructField("retrieval_score", T.DoubleType(), True),  # the retrieval stage's own order (higher first)
    T.StructField("date", T.DateType(), False),
])

# What an external retrieval system hands over (infnet build_candidates --from): read as strings and
# cast under this contract like the raw log; the optional columns are derived when absent.
EXTERNAL_CANDIDATES_SCHEMA = T.StructType([
    T.StructField("user_id", T.LongType(), False),
    T.StructField("video_id", T.LongType(), False),
    T.StructField("request_id", T.StringType(), True),  # default: one request per user and request time
    T.StructField("request_time_ms", T.LongType(), True),  # default: the date's request time (--request-time)
    T.StructField("retrieval_score", T.DoubleType(), True),
    T.StructField("channel", T.StringType(), True),
])

RECOMMENDATIONS_SCHEMA = T.StructType([
    T.StructField("date", T.DateType(), False),
    T.StructField("user_id", T.LongType(), False),
    T.StructField("model_name", T.StringType(), False),
    T.StructField("model_version", T.StringType(), False),
    T.StructField("rank", T.IntegerType(), False),  # 1 = best
    T.StructField("video_id", T.LongType(), False),
    T.StructField("objective", T.DoubleType(), False),
    T.StructField("score_click", T.DoubleType(), True),
    T.StructField("score_like", T.DoubleType(), True),
    T.StructField("score_long_view", T.DoubleType(), True),
    T.StructField("score_play_time", T.DoubleType(), True),
    T.StructField("score_exposed", T.DoubleType(), True),  # entire-space models only (features/space.py)
    T.StructField("channels", T.ArrayType(T.StringType()), True),
    T.StructField("retrieval_score", T.DoubleType(), True),
    T.StructField("request_id", T.StringType(), False),
    T.StructField("source", T.StringType(), False),
    T.StructField("objective_spec", T.StringType(), False),  # e.g. "click=1,long_view=1,like=1"
    T.StructField("feature_version", T.LongType(), True),  # examples version the scores were featurised at
    T.StructField("ranked_at", T.TimestampType(), False),
])

# One row per ingest run and table: rows read = landed + quarantined (features/contracts.py).
INGEST_AUDIT_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("table_name", T.StringType(), False),
    T.StructField("source_file", T.StringType(), False),
    T.StructField("dates", T.StringType(), True),  # comma list of the dates landed (log only)
    T.StructField("rows_read", T.LongType(), False),
    T.StructField("rows_landed", T.LongType(), False),
    T.StructField("rows_quarantined", T.LongType(), False),
    T.StructField("reconciled", T.BooleanType(), False),
    T.StructField("ingested_at", T.TimestampType(), False),
    # raw columns outside the contract, not landed anywhere (comma list; null: none)
    T.StructField("ignored_columns", T.StringType(), True),
])

# One metric value per (task, metric, slice); the evaluation prefixes its grouping columns
# (model, version, date) with ``with_leading_fields``.
METRICS_SCHEMA = T.StructType([
    T.StructField("task", T.StringType(), False),
    T.StructField("metric", T.StringType(), False),
    T.StructField("slice", T.StringType(), False),
    T.StructField("value", T.DoubleType(), True),  # null: undefined (one class only, ...)
    T.StructField("n", T.LongType(), False),
])

SCORES_SOURCE_FIELD = T.StructField("source", T.StringType())  # scores written before sources existed lack it

_AB_DOUBLES = ("control_value", "treatment_value", "delta", "rel_delta", "ci_low", "ci_high", "p_value")
AB_REPORTS_SCHEMA = T.StructType(
    [T.StructField(c, T.StringType(), False) for c in ("report_id", "control", "treatment", "dates")]
    + [T.StructField(c, T.StringType(), False) for c in ("task", "metric", "slice", "verdict")]
    + [T.StructField(c, T.DoubleType(), True) for c in _AB_DOUBLES]
    + [T.StructField(c, T.LongType(), False) for c in ("n", "n_users", "matched_rows")]
    + [T.StructField(c, T.IntegerType(), False) for c in ("n_boot", "seed")]
    + [T.StructField("created_at", T.TimestampType(), False)]
)


def with_leading_fields(fields, schema: T.StructType) -> T.StructType:
    """``schema`` with ``fields`` (StructFields, e.g. a DataFrame's grouping columns) in front."""
    return T.StructType([*fields, *schema.fields])


def schema_of(fields) -> T.StructType:
    """A StructType of the given StructFields (for schemas assembled at run time)."""
    return T.StructType(list(fields))


def string_schema(columns) -> T.StructType:
    """Every column a nullable string: how raw files are read before their contract casts them."""
    return T.StructType([T.StructField(c, T.StringType()) for c in columns])
