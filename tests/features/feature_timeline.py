"""A hand-built user timeline and a plain-Python oracle for the point-in-time features.

The timeline has equal timestamps, an exact duplicate, a user with history and one without, a
video with two authors' worth of traffic, events whose playback outlasts the next impressions (their
labels become visible only when playback ends), and is fed to Spark in a scrambled order.
"""
from __future__ import annotations

import datetime as dt
import math
import random

from conf.schemas import RAW_LOG_SCHEMA

DAY0 = 1_650_816_000_000  # 2022-04-25 00:00 UTC+8

# (user, video, ms after DAY0, click, long_view, like, play_time_ms)
EVENTS = [
    (1, 10, 1_000, 1, 1, 0, 0),
    (1, 11, 2_000, 1, 0, 1, 2_500),  # liked, playback ends at 4_500: after the rows at 3_000 and 4_000
    (1, 12, 2_000, 1, 0, 0, 0),   # same millisecond as the previous one
    (1, 13, 3_000, 1, 1, 0, 0),
    (1, 13, 3_000, 1, 1, 0, 0),   # exact duplicate
    (1, 14, 4_000, 0, 0, 0, 1_000),  # ends at 5_000, when the next row starts: invisible to it
    (1, 15, 5_000, 1, 0, 1, 0),
    (1, 16, 86_400_000 + 10, 1, 1, 1, 0),  # next day
    (2, 10, 1_500, 0, 0, 0, 0),
    (2, 13, 3_000, 1, 1, 1, 3_000),  # same ms as user 1's event on the same video; ends at 6_000
    (2, 10, 6_000, 1, 0, 0, 0),   # starts the moment the previous playback ends: it does not see it
]


def visible_ms(event) -> int:
    """When an event's labels become known (absolute ms): the end of its playback."""
    return DAY0 + event[2] + event[6]
HISTORY = [  # user, last_time_ms (relative), watch_seq (oldest first), like_seq, long_watch_seq
    (1, -50_000, [90, 91, 92], [91], [92]),
]
VIDEOS = [(10, 100), (11, 100), (12, 101), (13, 101), (14, 100), (15, 102), (16, 100)]  # video, author


def log_rows() -> list[dict]:
    rows = []
    for user, video, ms, click, lv, like, play in EVENTS:
        t = DAY0 + ms
        local = dt.datetime.fromtimestamp((t + 8 * 3600_000) / 1000, dt.timezone.utc)
        rows.append(dict(
            user_id=user, video_id=video, date=int(local.strftime("%Y%m%d")), hourmin=local.hour * 100,
            time_ms=t, is_click=click, is_like=like, is_follow=0, is_comment=0, is_forward=0, is_hate=0,
            long_view=lv, play_time_ms=play, duration_ms=10_000, profile_stay_time=0,
            comment_stay_time=0, is_profile_enter=0, is_rand=0, tab=1,
        ))
    return rows


def bronze_frames(spark, shuffle_seed: int = 0):
    """(log, users, videos, history) as bronze DataFrames; log rows in a scrambled order."""
    from features.contracts import bronze_log

    rows = log_rows()
    random.Random(shuffle_seed).shuffle(rows)
    raw = spark.createDataFrame([tuple(r[f.name] for f in RAW_LOG_SCHEMA.fields) for r in rows], RAW_LOG_SCHEMA)
    log = bronze_log(raw.repartition(3))
    users = spark.createDataFrame(
        [(1, "full_active"), (2, None)], "user_id bigint, user_active_degree string"
    ).selectExpr("*", *[f"cast(null as string) as {c}" for c in _other_user_cols()])
    videos = spark.createDataFrame(
        [(v, a, "NORMAL", "2022-04-01", "T", "0", 12_000.0, 720.0, 1280.0, 5, "1", "7") for v, a in VIDEOS],
        "video_id bigint, author_id bigint, video_type string, upload_dt string, upload_type string, "
        "visible_status string, video_duration double, server_width double, server_height double, "
        "music_id bigint, music_type string, tag string",
    )
    history = spark.createDataFrame(
        [(u, 3, DAY0 + rel, w, l, lw) for u, rel, w, l, lw in HISTORY],
        "user_id bigint, history_len bigint, last_time_ms bigint, watch_seq array<bigint>, "
        "like_seq array<bigint>, long_watch_seq array<bigint>",
    )
    return log, users, videos, history


def _other_user_cols() -> list[str]:
    from conf.schemas import RAW_USER_SCHEMA

    return [f.name for f in RAW_USER_SCHEMA.fields if f.name not in ("user_id", "user_active_degree")]


# -- the oracle -----------------------------------------------------------------------------------

BEHAVIOUR_INDEX = {"click": 3, "long_view": 4, "like": 5}
HISTORY_INDEX = {"click": 2, "long_view": 4, "like": 3}


def expected_sequence(user: int, t: int, behaviour: str, n: int, item_of) -> tuple[list[int], list[float]]:
    """Items and gaps a query of ``user`` at absolute ``t`` must see: positives visible strictly before
    (playback ended), newest first (ties: larger item first), then history (newest first) if it ended
    before ``t``; gaps count from the moment each event became visible."""
    earlier = [(visible_ms(e), item_of(e[1])) for e in EVENTS
               if e[0] == user and visible_ms(e) < t and e[BEHAVIOUR_INDEX[behaviour]] == 1]
    earlier.sort(reverse=True)
    items = [i for _, i in earlier]
    gaps = [math.log1p((t - et) / 1000) for et, _ in earlier]
    for h in HISTORY:
        last = DAY0 + h[1]
        if h[0] == user and last < t:
            hist = [item_of(v) for v in reversed(h[HISTORY_INDEX[behaviour]])]
            items += hist
            gaps += [math.log1p((t - last) / 1000)] * len(hist)
    return items[:n], gaps[:n]


def expected_user_counts(user: int, t: int) -> tuple[int, int, int, int]:
    """(n, clicks, long_views, likes) of the user's events visible strictly before ``t``."""
    earlier = [e for e in EVENTS if e[0] == user and visible_ms(e) < t]
    return len(earlier), sum(e[3] for e in earlier), sum(e[4] for e in earlier), sum(e[5] for e in earlier)


SEQ_LEN = 4  # the feature tests' sequence length: small, so truncation is exercised


def featurise(spark, feature_settings, shuffle_seed: int, history_rel: int | None = None, vocabulary=None):
    """build_features over the timeline log (+ one query for an unknown user and video)."""
    from pyspark.sql import functions as F

    from features.examples import build_features

    log, users, videos, history = bronze_frames(spark, shuffle_seed)
    if history_rel is not None:
        history = history.withColumn("last_time_ms", F.lit(DAY0 + history_rel))
    queries = log.select("impression_id", "user_id", "video_id", "time_ms", "tab", "date")
    unknown = spark.createDataFrame([("unknown", 3, 999, DAY0 + 7_000, None)],
                                    "impression_id string, user_id bigint, video_id bigint, time_ms bigint, tab int")
    queries = queries.unionByName(unknown.withColumn("date", F.lit(None).cast("date")))
    return build_features(queries, log, users, videos, history, feature_settings, vocabulary)
