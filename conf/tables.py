"""The one definition of every table: name, keys, partitioning, and the raw input contracts.

Tables are Delta tables stored at ``<lake>/tables/<name>`` and registered in the catalog as
``<database>.<name>`` so that later jobs and ``spark-sql`` find them by name.
"""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import types as T


@dataclass(frozen=True)
class TableDef:
    name: str
    keys: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    description: str = ""


BRONZE_LOG = TableDef("bronze_log", ("impression_id",), ("date",), "raw impressions, contract-checked")
BRONZE_USERS = TableDef("bronze_users", ("user_id",), (), "official user features")
BRONZE_VIDEOS = TableDef("bronze_videos", ("video_id",), (), "official basic video features")
BRONZE_HISTORY = TableDef("bronze_history", ("user_id",), (), "per-user behaviour before the log window")
QUARANTINE = TableDef(
    "quarantine", ("source_table", "source_file", "source_row"), ("source_table",),
    "rows that broke a contract, with the reason",
)
INGEST_AUDIT = TableDef("ingest_audit", ("run_id", "table_name"), (), "rows read = landed + quarantined, per run")
EXAMPLES = TableDef("examples", ("impression_id",), ("date",), "one row per impression: features + labels")
VOCABULARY = TableDef("vocabulary", ("field", "value"), (), "exact id -> index of the id fields (features/vocabulary.py)")
# impression_id is part of the key: a logged request can show one video twice (null when unlogged)
CANDIDATES = TableDef("candidates", ("request_id", "video_id", "impression_id"), ("date",), "candidate sets to score")
SCORES = TableDef(
    "scores", ("request_id", "video_id", "impression_id", "model_name", "model_version"), ("date",),
    "one score per task per candidate",
)
METRICS = TableDef("metrics", ("model_name", "model_version", "task", "metric", "slice", "date"), ("date",))
AB_REPORTS = TableDef("ab_reports", ("report_id", "task", "metric", "slice"), ())


def score_column(task) -> str:
    """The ``scores`` column of a task (a task name or a ``TaskField``): ``score_<task>``."""
    return f"score_{task if isinstance(task, str) else task.name}"


QUALITY_RESULTS = TableDef("quality_results", ("run_id", "table_name", "expectation"), ())

ALL_TABLES = (
    BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS, BRONZE_HISTORY, QUARANTINE, INGEST_AUDIT,
    EXAMPLES, VOCABULARY, CANDIDATES, SCORES, METRICS, AB_REPORTS, QUALITY_RESULTS,
)

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

# Any table with this contract can be scored (the demo builds it from logged impressions).
CANDIDATES_SCHEMA = T.StructType([
    T.StructField("request_id", T.StringType(), False),
    T.StructField("impression_id", T.StringType(), True),  # set when the candidate was logged
    T.StructField("user_id", T.LongType(), False),
    T.StructField("video_id", T.LongType(), False),
    T.StructField("request_time_ms", T.LongType(), False),
    T.StructField("tab", T.IntegerType(), True),
    T.StructField("date", T.DateType(), False),
])
