"""Synthetic KuaiRand-shaped tables for benchmarks: same schemas as bronze, any number of rows.

Users and videos scale with the row count (the real ratio: ~6.3 impressions per user and ~23 per
video over 10 days), with skewed activity: user ranks follow ``u ** 1.5`` (the heaviest user gets
~0.1 % of the rows, like the real log's 139 of 171,671) and video popularity ``u ** 2``. Labels
come from per-user and per-video propensities so point-in-time statistics carry signal, at rates
near the real ones (click ~44 %, long_view ~31 %, like ~2 %). Every value is a hash of
(seed, row id, salt), so the data does not depend on partitioning or on the machine.

>>> round(rows_per_user() , 1), round(rows_per_video(), 1)
(6.3, 22.6)
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from conf.schemas import (
    RAW_HISTORY_SCHEMA,
    RAW_LOG_SCHEMA,
    RAW_USER_SCHEMA,
    RAW_VIDEO_SCHEMA,
    USER_CATEGORICAL,
)

REAL_ROWS, REAL_USERS, REAL_VIDEOS = 171_671, 27_285, 7_583
START = dt.datetime(2022, 4, 25, tzinfo=dt.timezone(dt.timedelta(hours=8)))
DAY_MS = 86_400_000


def rows_per_user() -> float:
    return REAL_ROWS / REAL_USERS


def rows_per_video() -> float:
    return REAL_ROWS / REAL_VIDEOS


@dataclass(frozen=True)
class SyntheticData:
    log: DataFrame  # bronze_log schema: impression_id, raw columns, date as DateType
    users: DataFrame
    videos: DataFrame
    history: DataFrame


def _uniform(seed: int, salt: str, key: Column) -> Column:
    """Deterministic U[0, 1) from (seed, salt, key)."""
    return F.pmod(F.xxhash64(F.lit(seed), F.lit(salt), key), F.lit(1 << 30)) / float(1 << 30)


def _sigmoid(x: Column) -> Column:
    return 1.0 / (1.0 + F.exp(-x))


def synthetic_log(spark: SparkSession, n_rows: int, seed: int = 7, days: int = 10, partitions: int | None = None) -> DataFrame:
    n_users = max(1, round(n_rows / rows_per_user()))
    n_videos = max(1, round(n_rows / rows_per_video()))
    start_ms = int(START.timestamp() * 1000)
    ids = spark.range(0, n_rows, numPartitions=partitions or max(2, n_rows // 500_000))
    i = F.col("id")
    u = lambda salt: _uniform(seed, salt, i)  # noqa: E731
    user = F.floor(F.pow(u("user"), 1.5) * n_users).cast("long")
    video = F.floor(F.pow(u("video"), 2.0) * n_videos).cast("long")
    time_ms = (F.lit(start_ms) + F.floor(u("time") * days * DAY_MS)).cast("long")
    df = ids.select(i, user.alias("user_id"), video.alias("video_id"), time_ms.alias("time_ms"))
    user_bias = (_uniform(seed, "ub", F.col("user_id")) - 0.5) * 3.0
    video_bias = (_uniform(seed, "vb", F.col("video_id")) - 0.5) * 2.0
    p_click = _sigmoid(user_bias + video_bias - 0.25)
    click = (u("click") < p_click).cast("int")
    long_view = (u("lv") < F.when(click == 1, 0.62).otherwise(0.07) * (1 + 0.3 * video_bias / 2)).cast("int")
    like = ((click == 1) & (u("like") < 0.04 * (1 + user_bias / 3))).cast("int")
    duration = (5000 + F.floor(_uniform(seed, "dur", F.col("video_id")) * 120_000)).cast("long")
    local = F.col("time_ms") + 8 * 3_600_000
    date_int = F.date_format(F.timestamp_millis(local), "yyyyMMdd").cast("int")
    values = {
        "user_id": F.col("user_id"), "video_id": F.col("video_id"), "date": date_int,
        "hourmin": (F.floor(F.pmod(local, F.lit(DAY_MS)) / 3_600_000) * 100).cast("int"),
        "time_ms": F.col("time_ms"), "is_click": click, "is_like": like,
        "is_follow": (u("follow") < 0.0013).cast("int"), "is_comment": (u("comment") < 0.0025).cast("int"),
        "is_forward": (u("forward") < 0.001).cast("int"), "is_hate": (u("hate") < 0.0005).cast("int"),
        "long_view": long_view,
        "play_time_ms": (F.floor(duration * u("play") * (0.3 + long_view))).cast("long"),
        "duration_ms": duration, "profile_stay_time": F.lit(0).cast("long"),
        "comment_stay_time": F.lit(0).cast("long"), "is_profile_enter": (u("profile") < 0.01).cast("int"),
        "is_rand": F.lit(0), "tab": F.when(u("tab") < 0.75, 1).otherwise(F.floor(u("tab2") * 15)).cast("int"),
    }
    cols = [values[f.name].cast(f.dataType).alias(f.name) for f in RAW_LOG_SCHEMA.fields]
    out = df.select(F.sha2(F.concat_ws(":", F.lit("syn"), F.lit(seed), i), 256).substr(1, 24).alias("impression_id"), *cols)
    return out.withColumn("date", F.to_date(F.col("date").cast("string"), "yyyyMMdd"))


def synthetic_users(spark: SparkSession, n_users: int, seed: int = 7) -> DataFrame:
    i = F.col("id")
    vals = {"user_id": i}
    for j, name in enumerate(USER_CATEGORICAL):
        cardinality = 2 + (j * 7) % 13
        vals[name] = F.floor(_uniform(seed, name, i) * cardinality).cast("string")
    for name in ("follow_user_num", "fans_user_num", "friend_user_num", "register_days"):
        vals[name] = F.floor(F.pow(_uniform(seed, name, i), 3.0) * 2000).cast("long")
    return spark.range(n_users).select(*[vals[f.name].cast(f.dataType).alias(f.name) for f in RAW_USER_SCHEMA.fields])


def synthetic_videos(spark: SparkSession, n_videos: int, seed: int = 7) -> DataFrame:
    i = F.col("id")
    u = lambda salt: _uniform(seed, salt, i)  # noqa: E731
    vals = {
        "video_id": i, "author_id": F.floor(u("author") * n_videos * 0.86),
        "video_type": F.when(u("vt") < 0.9, "NORMAL").otherwise("AD"),
        "upload_dt": F.lit("2022-04-10"), "upload_type": F.concat(F.lit("T"), F.floor(u("ut") * 14).cast("string")),
        "visible_status": F.lit("0.0"), "video_duration": 5000 + F.floor(_uniform(seed, "dur", i) * 120_000),
        "server_width": F.lit(720.0), "server_height": F.lit(1280.0), "music_id": F.floor(u("music") * n_videos * 0.95),
        "music_type": F.floor(u("mt") * 5).cast("string"), "tag": F.floor(F.pow(u("tag"), 2.0) * 110).cast("string"),
    }
    return spark.range(n_videos).select(*[vals[f.name].cast(f.dataType).alias(f.name) for f in RAW_VIDEO_SCHEMA.fields])


def synthetic_history(spark: SparkSession, n_users: int, n_videos: int, seed: int = 7, max_len: int = 50) -> DataFrame:
    i = F.col("id")
    length = F.floor(_uniform(seed, "hlen", i) * (max_len + 1)).cast("int")
    start_ms = int(START.timestamp() * 1000)

    def seq(salt: str, keep: float) -> Column:
        items = F.transform(F.sequence(F.lit(1), F.greatest(length, F.lit(1))),
                            lambda k: F.floor(F.pow(_uniform(seed, salt, i * 1000 + k), 2.0) * n_videos).cast("long"))
        kept = F.filter(items, lambda x: _uniform(seed, salt + "k", x + i) < keep)
        return F.when(length > 0, kept).otherwise(F.array().cast("array<bigint>"))

    vals = {
        "user_id": i, "history_len": length.cast("long"),
        "last_time_ms": (F.lit(start_ms) - 1 - F.floor(_uniform(seed, "hlast", i) * 5 * DAY_MS)).cast("long"),
        "watch_seq": seq("watch", 1.0), "like_seq": seq("like", 0.04), "long_watch_seq": seq("lw", 0.5),
    }
    return spark.range(n_users).select(*[vals[f.name].cast(f.dataType).alias(f.name) for f in RAW_HISTORY_SCHEMA.fields])


def synthetic_data(spark: SparkSession, n_rows: int, seed: int = 7) -> SyntheticData:
    """All four bronze tables for an ``n_rows`` log."""
    n_users = max(1, round(n_rows / rows_per_user()))
    n_videos = max(1, round(n_rows / rows_per_video()))
    return SyntheticData(
        synthetic_log(spark, n_rows, seed), synthetic_users(spark, n_users, seed),
        synthetic_videos(spark, n_videos, seed), synthetic_history(spark, n_users, n_videos, seed),
    )
