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
# impression_id is part of the key: a logged request can show one video twice (null when unlogged).
# Request ids of different sources never collide (each source hashes its own prefix), and every
# job replaces one (date, source) slice, so the sources of a date live side by side.
CANDIDATES = TableDef("candidates", ("request_id", "video_id", "impression_id"), ("date",), "candidate sets to score")
SCORES = TableDef(
    "scores", ("request_id", "video_id", "impression_id", "model_name", "model_version"), ("date",),
    "one score per task per candidate",
)
# One ranked list per (date, user, model@version): the top K of the user's scored candidates.
RECOMMENDATIONS = TableDef(
    "recommendations", ("date", "user_id", "model_name", "model_version", "rank"), ("date",),
    "top-K lists per user, date and model version, with every task score and the objective",
)
METRICS = TableDef("metrics", ("model_name", "model_version", "task", "metric", "slice", "date"), ("date",))
AB_REPORTS = TableDef("ab_reports", ("report_id", "task", "metric", "slice"), ())


def score_column(task) -> str:
    """The ``scores`` column of a task (a task name or a ``TaskField``): ``score_<task>``."""
    return f"score_{task if isinstance(task, str) else task.name}"


QUALITY_RESULTS = TableDef("quality_results", ("run_id", "table_name", "expectation"), ())

ALL_TABLES = (
    BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS, BRONZE_HISTORY, QUARANTINE, INGEST_AUDIT,
    EXAMPLES, VOCABULARY, CANDIDATES, SCORES, RECOMMENDATIONS, METRICS, AB_REPORTS, QUALITY_RESULTS,
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
    T.StructField("channels", T.ArrayType(T.StringType()), True),
    T.StructField("retrieval_score", T.DoubleType(), True),
    T.StructField("request_id", T.StringType(), False),
    T.StructField("source", T.StringType(), False),
    T.StructField("objective_spec", T.StringType(), False),  # e.g. "click=1,long_view=1,like=1"
    T.StructField("feature_version", T.LongType(), True),  # examples version the scores were featurised at
    T.StructField("ranked_at", T.TimestampType(), False),
])
