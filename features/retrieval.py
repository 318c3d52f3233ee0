"""Retrieval candidates built by Spark: for every request (one user at one request time) up to N
candidate videos merged from named channels, each computed only from events **strictly before**
the request time.

Channels (``conf.settings.RetrievalSettings`` holds every knob):

- ``covisit``: item-to-item co-visitation. Two videos co-visit when one user clicked or long-viewed
  both within ``covisit_window_minutes`` in the ``covisit_lookback_days`` before the request time;
  an edge weighs the number of distinct users. Seeds are the user's ``covisit_seeds`` most recent
  clicked / long-viewed videos; a candidate scores ``sum_seeds weight(seed, video) * decay **
  (seed recency rank - 1)``.
- ``author``: recent videos of the authors the user engaged with (clicks, long views, likes in the
  ``author_lookback_days``): the user's ``author_top_authors`` authors by engagement count, and per
  author the ``author_videos`` videos shown most recently before the request time; a candidate
  scores ``engagements with the author / the video's recency rank within the author``.
- ``trending``: the previous 24 hours' videos by smoothed long-view rate,
  ``(long views + p * s) / (impressions + s)`` with ``p`` the published long-view rate and
  ``s = trending_prior_strength`` (a video shown once does not top the list).
- ``popular``: the videos with the most clicks in the ``popularity_lookback_days``; the fallback
  that gives a user without history (or whose channels are thin) a full request.

Merge: videos the user was shown before the request time (and the pre-window history's watched
videos) are dropped unless ``exclude_seen`` is off; each channel ranks its videos (score
descending, ``video_id`` ascending on ties); a video's retrieval score is the weighted
reciprocal-rank fusion ``sum_c weight_c / (fusion_k + rank_c)`` over the channels that proposed
it, and the request keeps the N best (ties by ``video_id``), with the sorted list of its channels.

Context: a request's ``tab`` (the app surface, a model input) is the user's most frequent tab in
the ``author_lookback_days`` before the request time, else the most frequent tab of everyone's
impressions in the 24 hours before it (models never saw a missing tab: left null it would score
every candidate with an untrained bucket).

Every function is a pure DataFrame function; the strict cut is a join condition
``event.time_ms < request_time_ms`` (tests/features/test_retrieval.py adds events at and after the
request time to a hand-built timeline and checks that nothing changes).

Label delay: an event's *labels* (is_click, long_view, is_like) are known only once its playback
has ended, so every label-based signal (covisit seeds and edges, author engagement, trending long
views, click counts of the popular channel and of the popularity baseline) also needs
``label time < request_time_ms``, the label time being the features' one rule
(``features.examples.label_visible_ms``): ``time_ms + play_time_ms`` with ``label_delay`` (by
default ``FeatureSettings().label_delay``, on), else ``time_ms``. What needs only the fact of an
impression, that a video was shown (an author's most recently shown videos, the impressions of the
trending rate, the seen-video exclusion, the request's tab), is known when it happens and keeps
the ``time_ms`` cut. Lookbacks bound ``time_ms`` in both cases. An event whose playback ends after
the request time thus counts as an impression without labels (tests/features/test_retrieval.py).

>>> request_time_ms("2022-05-04")  # 2022-05-04 00:00 in UTC+8
1651593600000
>>> request_time_ms("2022-05-04", "20:30") - request_time_ms("2022-05-04")
73800000
"""
from __future__ import annotations

import datetime as dt
from typing import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from conf.settings import FeatureSettings, RetrievalSettings
from features.candidates import T_COL, conform_candidates
from features.categorical import DAY_MS, LOCAL_TZ_OFFSET_MS
from features.examples import VISIBLE_COL, label_visible_ms
from features.statistics import RATE_PRIORS

CHANNELS = ("covisit", "author", "trending", "popular")
CHANNEL_COLUMNS = ("request_id", "video_id", "channel", "channel_score")


def parse_time_of_day(value: str) -> int:
    """``"HH:MM"`` -> milliseconds after midnight.

    >>> parse_time_of_day("08:15")
    29700000
    """
    try:
        hours, minutes = (int(v) for v in value.split(":"))
    except ValueError:
        raise ValueError(f"expected a time of day HH:MM, got {value!r}") from None
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise ValueError(f"expected a time of day HH:MM, got {value!r}")
    return (hours * 60 + minutes) * 60_000


def request_time_ms(date: str | dt.date, time_of_day: str = "00:00") -> int:
    """Epoch milliseconds of ``time_of_day`` local time (UTC+8, features.categorical) on ``date``."""
    day = date if isinstance(date, dt.date) else dt.date.fromisoformat(date)
    midnight_utc = (day - dt.date(1970, 1, 1)).days * DAY_MS
    return midnight_utc - LOCAL_TZ_OFFSET_MS + parse_time_of_day(time_of_day)


def request_id_column(prefix: str, user: Column, time_ms: Column) -> Column:
    """Deterministic request id of (user, request time); ``prefix`` keeps sources apart."""
    return F.sha2(F.concat_ws(":", F.lit(prefix), user, time_ms), 256).substr(1, 24)


def active_users(log: DataFrame, date: str) -> DataFrame:
    """``user_id`` of every user with an impression on the local day before ``date``."""
    previous = dt.date.fromisoformat(date) - dt.timedelta(days=1)
    return log.where(F.col("date") == F.lit(previous)).select("user_id").distinct()


def make_requests(users: DataFrame, date: str, time_ms: int) -> DataFrame:
    """One request per user (``users.user_id``) at ``time_ms`` on ``date``."""
    return (users.where(F.col("user_id").isNotNull()).select(F.col("user_id").cast("long").alias("user_id"))
            .distinct()
            .select(request_id_column("ret", F.col("user_id"), F.lit(int(time_ms))).alias("request_id"),
                    "user_id", F.lit(int(time_ms)).cast("long").alias(T_COL),
                    F.lit(dt.date.fromisoformat(date)).alias("date")))


def sample_users(users: DataFrame, max_users: int | None) -> DataFrame:
    """At most ``max_users`` users, the same ones on every run (smallest seeded hash of the id)."""
    if not max_users:
        return users
    return users.orderBy(F.xxhash64(F.lit(12), F.col("user_id")), "user_id").limit(int(max_users))


def serving_requests(log: DataFrame, date: str, rs: RetrievalSettings, users: DataFrame | None = None,
                  max_users: int | None = None) -> DataFrame:
    """The date's requests: one per user of ``users`` (default: :func:`active_users` of ``log``),
    at most ``max_users`` of them (:func:`sample_users`), at the settings' request time."""
    users = active_users(log, date) if users is None else users
    return make_requests(sample_users(users, max_users), date, request_time_ms(date, rs.request_time))


# -- visibility: the strict cut and the label delay ----------------------------------------------

def resolve_label_delay(label_delay: bool | None) -> bool:
    """``label_delay``, or when None the features' default (``FeatureSettings().label_delay``).

    >>> resolve_label_delay(None), resolve_label_delay(False)
    (True, False)
    """
    return FeatureSettings().label_delay if label_delay is None else bool(label_delay)


def with_label_time(events: DataFrame, label_delay: bool | None = None) -> DataFrame:
    """``events`` + ``VISIBLE_COL``, when each event's labels become known (module docstring;
    ``label_delay``: :func:`resolve_label_delay`). With the delay the events need ``play_time_ms``."""
    delay = resolve_label_delay(label_delay)
    if delay and "play_time_ms" not in events.columns:
        raise ValueError("events lack play_time_ms, which the label delay needs (or pass label_delay=False)")
    return events.withColumn(VISIBLE_COL, label_visible_ms(delay))


def _cut(lookback_ms: int | None, labels: bool) -> Column:
    """``t - lookback <= time_ms < t`` and, for ``labels``, ``VISIBLE_COL < t``."""
    cond = F.col("time_ms") < F.col(T_COL)
    if labels:
        cond = cond & (F.col(VISIBLE_COL) < F.col(T_COL))
    if lookback_ms is not None:
        cond = cond & (F.col("time_ms") >= F.col(T_COL) - F.lit(int(lookback_ms)))
    return cond


def _before_times(events: DataFrame, times: DataFrame, lookback_ms: int | None, labels: bool = False) -> DataFrame:
    """Events visible at each request time ``t`` of ``times``: ``t - lookback <= time_ms < t``, and
    for ``labels`` (events from :func:`with_label_time`) labels known before ``t`` (one copy per
    request time; there are few: one per date)."""
    return events.join(F.broadcast(times), _cut(lookback_ms, labels))


def _before_requests(events: DataFrame, requests: DataFrame, lookback_ms: int | None,
                     labels: bool = False) -> DataFrame:
    """The requesting user's own events strictly before the request time (and within the lookback;
    for ``labels``, with labels known before it)."""
    r = requests.select("request_id", F.col("user_id").alias("_r_user"), T_COL)
    cond = (F.col("user_id") == F.col("_r_user")) & _cut(lookback_ms, labels)
    return events.join(r, cond).drop("_r_user")


def _positive(events: DataFrame, *labels: str) -> DataFrame:
    cond = None
    for label in labels:
        c = F.col(label) == 1
        cond = c if cond is None else (cond | c)
    return events.where(cond)


def _top(df: DataFrame, partition: Sequence[str], order: Sequence[Column], n: int, rank_col: str = "_rank") -> DataFrame:
    w = Window.partitionBy(*partition).orderBy(*order)
    return df.withColumn(rank_col, F.row_number().over(w)).where(F.col(rank_col) <= int(n))


# -- channels -------------------------------------------------------------------------------------

def covisit_channel(events: DataFrame, requests: DataFrame, rs: RetrievalSettings,
                    label_delay: bool | None = None) -> DataFrame:
    """``CHANNEL_COLUMNS`` rows of the co-visitation channel (seeds and edges: positives whose labels
    are known before the request time)."""
    lookback = rs.covisit_lookback_days * DAY_MS
    positives = _positive(with_label_time(events, label_delay), "is_click", "long_view").select(
        "user_id", "video_id", "time_ms", VISIBLE_COL)
    times = requests.select(T_COL).distinct()
    seen = _before_times(positives, times, lookback, labels=True)
    a = seen.select(T_COL, "user_id", F.col("video_id").alias("_a"), F.col("time_ms").alias("_ta"))
    b = seen.select(F.col(T_COL).alias("_tb_req"), F.col("user_id").alias("_ub"), F.col("video_id").alias("_b"),
                    F.col("time_ms").alias("_tb"))
    window_ms = rs.covisit_window_minutes * 60_000
    pairs = a.join(b, (F.col(T_COL) == F.col("_tb_req")) & (F.col("user_id") == F.col("_ub"))
                   & (F.col("_a") != F.col("_b")) & (F.abs(F.col("_ta") - F.col("_tb")) <= F.lit(window_ms)))
    graph = pairs.groupBy(T_COL, "_a", "_b").agg(F.countDistinct("user_id").alias("_w"))
    graph = _top(graph, [T_COL, "_a"], [F.col("_w").desc(), F.col("_b")], rs.covisit_neighbours).select(
        F.col(T_COL).alias("_gt"), "_a", "_b", "_w")
    mine = _before_requests(positives, requests, lookback, labels=True).groupBy("request_id", T_COL, "video_id").agg(
        F.max("time_ms").alias("_last"))
    seeds = _top(mine, ["request_id"], [F.col("_last").desc(), F.col("video_id").desc()], rs.covisit_seeds, "_seed_rank")
    joined = seeds.join(graph, (F.col(T_COL) == F.col("_gt")) & (F.col("video_id") == F.col("_a")))
    weight = F.col("_w") * F.pow(F.lit(float(rs.covisit_seed_decay)), F.col("_seed_rank") - 1)
    return (joined.groupBy("request_id", F.col("_b").alias("video_id")).agg(F.sum(weight).alias("channel_score"))
            .select("request_id", "video_id", F.lit("covisit").alias("channel"), "channel_score"))


def author_channel(events: DataFrame, videos: DataFrame, requests: DataFrame, rs: RetrievalSettings,
                   label_delay: bool | None = None) -> DataFrame:
    """``CHANNEL_COLUMNS`` rows of the engaged-authors channel (engagements: labels known before the
    request time; an author's shown videos: impressions before it)."""
    lookback = rs.author_lookback_days * DAY_MS
    authors = videos.select(F.col("video_id").alias("_v"), F.col("author_id")).where(F.col("author_id").isNotNull())
    with_author = with_label_time(events, label_delay).join(authors, F.col("video_id") == F.col("_v")).drop("_v")
    engaged = (_before_requests(_positive(with_author, "is_click", "long_view", "is_like"), requests, lookback,
                                labels=True)
               .groupBy("request_id", T_COL, "author_id")
               .agg(F.count(F.lit(1)).alias("_n"), F.max("time_ms").alias("_last")))
    engaged = _top(engaged, ["request_id"], [F.col("_n").desc(), F.col("_last").desc(), F.col("author_id")],
                   rs.author_top_authors)
    times = requests.select(T_COL).distinct()
    shown = (_before_times(with_author.select("video_id", "author_id", "time_ms"), times, lookback)
             .groupBy(T_COL, "author_id", "video_id").agg(F.max("time_ms").alias("_shown")))
    recent = _top(shown, [T_COL, "author_id"], [F.col("_shown").desc(), F.col("video_id").desc()],
                  rs.author_videos, "_video_rank")
    joined = engaged.select("request_id", F.col(T_COL).alias("_t"), F.col("author_id").alias("_au"), "_n").join(
        recent, (F.col("_t") == F.col(T_COL)) & (F.col("_au") == F.col("author_id")))
    return joined.select("request_id", "video_id", F.lit("author").alias("channel"),
                         (F.col("_n") / F.col("_video_rank")).cast("double").alias("channel_score"))


def trending_videos(events: DataFrame, times: DataFrame, rs: RetrievalSettings, depth: int,
                    label_delay: bool | None = None) -> DataFrame:
    """(request_time_ms, video_id, channel_score) of the ``depth`` videos with the highest smoothed
    long-view rate in the 24 hours before each request time (every impression of those hours counts;
    its long view only when known before the request time)."""
    s, prior = float(rs.trending_prior_strength), RATE_PRIORS["long_view"]
    day = _before_times(with_label_time(events, label_delay).select("video_id", "time_ms", "long_view", VISIBLE_COL),
                        times, DAY_MS)
    known = F.when(F.col(VISIBLE_COL) < F.col(T_COL), F.col("long_view").cast("double")).otherwise(F.lit(0.0))
    rates = day.groupBy(T_COL, "video_id").agg(
        ((F.sum(known) + F.lit(prior * s)) / (F.count(F.lit(1)) + F.lit(s))).alias("channel_score"))
    return _top(rates, [T_COL], [F.col("channel_score").desc(), F.col("video_id")], depth).drop("_rank")


def click_counts(events: DataFrame, times: DataFrame, lookback_days: int, label_delay: bool | None = None) -> DataFrame:
    """(request_time_ms, video_id, clicks) of every video clicked in the ``lookback_days`` before
    each request time of ``times``, counting clicks known before it (the popularity the channel and
    the popularity baseline use; ``label_delay`` None: the features' default, on)."""
    clicks = _before_times(_positive(with_label_time(events, label_delay), "is_click").select(
        "video_id", "time_ms", VISIBLE_COL), times, lookback_days * DAY_MS, labels=True)
    return clicks.groupBy(T_COL, "video_id").agg(F.count(F.lit(1)).cast("double").alias("clicks"))


def popular_videos(events: DataFrame, times: DataFrame, rs: RetrievalSettings, depth: int,
                   label_delay: bool | None = None) -> DataFrame:
    """(request_time_ms, video_id, channel_score) of the ``depth`` most clicked videos in the
    ``popularity_lookback_days`` before each request time (:func:`click_counts`)."""
    counts = click_counts(events, times, rs.popularity_lookback_days, label_delay).withColumnRenamed(
        "clicks", "channel_score")
    return _top(counts, [T_COL], [F.col("channel_score").desc(), F.col("video_id")], depth).drop("_rank")


def _global_channel(per_time: DataFrame, requests: DataFrame, name: str) -> DataFrame:
    return (requests.select("request_id", T_COL).join(per_time, T_COL)
            .select("request_id", "video_id", F.lit(name).alias("channel"), "channel_score"))


def request_tabs(events: DataFrame, requests: DataFrame, rs: RetrievalSettings) -> DataFrame:
    """(request_id, tab): the user's most frequent tab before the request time, else the day's
    most frequent tab before it (ties: the smaller tab); see the module docstring (impressions only:
    no label delay)."""
    shown = events.where(F.col("tab").isNotNull()).select("user_id", "time_ms", "tab")
    mine = (_before_requests(shown, requests, rs.author_lookback_days * DAY_MS)
            .groupBy("request_id", "tab").agg(F.count(F.lit(1)).alias("_n")))
    mine = _top(mine, ["request_id"], [F.col("_n").desc(), F.col("tab")], 1).select("request_id", F.col("tab").alias("_own"))
    times = requests.select(T_COL).distinct()
    day = _before_times(shown.select("time_ms", "tab"), times, DAY_MS).groupBy(T_COL, "tab").agg(
        F.count(F.lit(1)).alias("_n"))
    day = _top(day, [T_COL], [F.col("_n").desc(), F.col("tab")], 1).select(T_COL, F.col("tab").alias("_day"))
    return (requests.select("request_id", T_COL).join(mine, "request_id", "left").join(day, T_COL, "left")
            .select("request_id", F.coalesce("_own", "_day").cast("int").alias("tab")))


def seen_videos(events: DataFrame, requests: DataFrame, history: DataFrame | None = None) -> DataFrame:
    """(request_id, video_id) the user was shown strictly before the request time (the impression's
    ``time_ms``: no label delay), plus the pre-window history's watched videos when that history
    ended before it."""
    shown = _before_requests(events.select("user_id", "video_id", "time_ms"), requests, None).select(
        "request_id", "video_id")
    if history is None:
        return shown.distinct()
    h = history.select(F.col("user_id").alias("_h_user"), "last_time_ms", F.explode("watch_seq").alias("video_id"))
    r = requests.select("request_id", "user_id", T_COL)
    older = r.join(h, (F.col("user_id") == F.col("_h_user")) & (F.col("last_time_ms") < F.col(T_COL)))
    return shown.unionByName(older.select("request_id", F.col("video_id").cast("long"))).distinct()


def channel_candidates(events: DataFrame, videos: DataFrame, requests: DataFrame,
                       rs: RetrievalSettings = RetrievalSettings(), label_delay: bool | None = None) -> DataFrame:
    """Every channel's proposals, ``CHANNEL_COLUMNS`` (several rows per video when several
    channels propose it), before exclusion and merging."""
    times = requests.select(T_COL).distinct()
    depth = rs.candidates_per_request + rs.global_margin
    return (covisit_channel(events, requests, rs, label_delay)
            .unionByName(author_channel(events, videos, requests, rs, label_delay))
            .unionByName(_global_channel(trending_videos(events, times, rs, depth, label_delay), requests, "trending"))
            .unionByName(_global_channel(popular_videos(events, times, rs, depth, label_delay), requests, "popular")))


def merge_channels(proposals: DataFrame, requests: DataFrame, rs: RetrievalSettings = RetrievalSettings(),
                   seen: DataFrame | None = None) -> DataFrame:
    """Channel proposals -> candidate rows of the contract (source ``retrieval``): drop ``seen``
    (request_id, video_id) pairs, rank within each channel, fuse ranks, keep the N best
    (``requests`` may carry a ``tab`` for its candidates)."""
    weights = dict(rs.channel_weights)
    unknown = sorted(set(CHANNELS) - set(weights))
    if unknown:
        raise ValueError(f"RetrievalSettings.channel_weights lacks channels {unknown}")
    if seen is not None:
        proposals = proposals.join(seen, ["request_id", "video_id"], "left_anti")
    ranked = _top(proposals, ["request_id", "channel"], [F.col("channel_score").desc(), F.col("video_id")],
                  rs.candidates_per_request, "_channel_rank")
    weight = F.coalesce(*[F.when(F.col("channel") == c, F.lit(float(w))) for c, w in weights.items()], F.lit(0.0))
    fused = ranked.groupBy("request_id", "video_id").agg(
        F.sum(weight / (F.lit(float(rs.fusion_k)) + F.col("_channel_rank"))).alias("retrieval_score"),
        F.array_sort(F.collect_set("channel")).alias("channels"))
    best = _top(fused, ["request_id"], [F.col("retrieval_score").desc(), F.col("video_id")],
                rs.candidates_per_request).drop("_rank")
    context = ["tab"] if "tab" in requests.columns else []
    out = best.join(requests.select("request_id", "user_id", T_COL, "date", *context), "request_id")
    return conform_candidates(out.withColumn("source", F.lit("retrieval")))


def retrieval_candidates(events: DataFrame, videos: DataFrame, requests: DataFrame,
                         rs: RetrievalSettings = RetrievalSettings(), history: DataFrame | None = None,
                         label_delay: bool | None = None) -> DataFrame:
    """Candidate rows (``conf.tables.CANDIDATES_SCHEMA``, source ``retrieval``) for ``requests``
    (``request_id, user_id, request_time_ms, date``) from the labelled log ``events``
    (``user_id, video_id, time_ms, is_click, long_view, is_like``, and ``play_time_ms`` with the
    label delay) and ``videos`` (``video_id, author_id``); ``history`` (bronze_history) adds
    pre-window watched videos to the exclusions; ``label_delay`` (None: the features' default, on):
    see the module docstring. When ``events`` has ``tab`` and ``requests`` has none, each request
    gets one (:func:`request_tabs`)."""
    delay = resolve_label_delay(label_delay)
    needed = ("user_id", "video_id", "time_ms", "is_click", "long_view", "is_like") + (
        ("play_time_ms",) if delay else ())
    missing = [c for c in needed if c not in events.columns]
    if missing:
        raise ValueError(f"events lack columns {missing}")
    if "tab" in events.columns and "tab" not in requests.columns:
        requests = requests.join(request_tabs(events, requests, rs), "request_id", "left")
    events = events.select(*needed)
    seen = seen_videos(events, requests, history) if rs.exclude_seen else None
    return merge_channels(channel_candidates(events, videos, requests, rs, delay), requests, rs, seen)
