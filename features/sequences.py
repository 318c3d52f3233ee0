"""Behaviour sequences: the user's most recent N positive videos per behaviour, strictly before.

For each behaviour (click, long_view, like) and query row: ``seq_<b>`` = hashed video ids of the
user's earlier events with that label = 1, **newest first**, at most ``seq_len``; ``seq_<b>_gap`` =
``log1p(seconds from the event to the query)`` in the same order. "Earlier" and "the event's time"
mean when the event became visible: with ``FeatureSettings.label_delay`` (the default) an event's
label is known when its playback ends, ``time_ms + play_time_ms``, not when it started. After the in-window events come
the pre-window history items (``bronze_history``, stored oldest first, so reversed), whose gap is
taken from the history's ``last_time_ms``; history is only used when ``last_time_ms`` is strictly
before the query, so the strict cut holds for it too.

How it scales (Spark window functions only, no per-user Python):

1. positives are exploded into one row per (event, behaviour) and unioned with the query rows;
   the frame is hash-partitioned by ``user_id`` once;
2. window A, per (user, behaviour), ordered by time: each positive event gets the list of the last
   N positives up to and including itself (a bounded ``ROWS`` frame: O(rows x N));
3. window B, per user, ordered by ``(time_ms, kind, idx)`` with queries before events of the same
   millisecond: each query takes the list of the latest event strictly before it
   (``last(..., ignorenulls)`` over a running frame: O(rows)).

Equal timestamps (the impression itself, its exact duplicates, anything else in the same ms) are
never visible because queries sort before events at the same time; input order does not matter
because every order used is a total order over values (exact ties hold identical values).
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from conf.settings import FeatureSettings
from features.spec import SequenceField
from features.statistics import EVENT, KIND_COL, QUERY, point_in_time_union
from features.vocabulary import Vocabulary, hash_bucket, lookup, map_id_lists, require_vocabulary

# behaviour -> (label column of the log, list column of bronze_history)
BEHAVIOURS = {
    "click": ("is_click", "watch_seq"),
    "long_view": ("long_view", "long_watch_seq"),
    "like": ("is_like", "like_seq"),
}
ITEM_FIELD = "video_id"  # sequence items hash exactly like cat_video_id, so embeddings can be shared
BEH_COL, IDX_COL, LIST_COL = "_beh", "_idx", "_list"


def sequence_fields(fs: FeatureSettings, vocabulary: Vocabulary | None = None) -> tuple[SequenceField, ...]:
    """One field per behaviour; items index like ``cat_video_id`` (its exact vocabulary when it has one)."""
    size = vocabulary.sizes[ITEM_FIELD] if vocabulary is not None and vocabulary.has(ITEM_FIELD) else fs.video_id_buckets
    return tuple(SequenceField(b, size, max_len=fs.seq_len) for b in BEHAVIOURS)


def item_bucket(video_id: Column, fs: FeatureSettings) -> Column:
    return hash_bucket(video_id, ITEM_FIELD, fs.video_id_buckets, fs.hash_seed)


def gap(query_ms: Column, event_ms: Column) -> Column:
    """log1p(seconds from event to query), >= 0, as float."""
    seconds = F.greatest(query_ms - event_ms, F.lit(0)) / 1000.0
    return F.log1p(seconds).cast("float")


def positive_events(events: DataFrame, fs: FeatureSettings, event_time: str = "time_ms",
                    vocabulary: Vocabulary | None = None) -> DataFrame:
    """One row per (event, behaviour it is positive for): user_id, time_ms (= ``event_time``, when
    the event becomes visible), _item, _beh. Items unknown to the vocabulary (index 0) are dropped:
    0 is padding in a sequence."""
    tags = F.array(*[F.when(F.col(label) == 1, F.lit(b)) for b, (label, _) in BEHAVIOURS.items()])
    exact = vocabulary is not None and vocabulary.has(ITEM_FIELD)
    positives = events.select("user_id", F.col(event_time).alias("time_ms"), F.col("video_id"),
                              F.filter(tags, lambda t: t.isNotNull()).alias("_tags")).where(F.size("_tags") > 0)
    if exact:
        positives = lookup(positives, F.col("video_id"), ITEM_FIELD, vocabulary.frame, "_item").where(F.col("_item") > 0)
    else:
        positives = positives.withColumn("_item", item_bucket(F.col("video_id"), fs))
    return positives.select("user_id", "time_ms", "_item", F.explode("_tags").alias(BEH_COL))


def _history_items(history: DataFrame, fs: FeatureSettings, vocabulary: Vocabulary | None = None) -> DataFrame:
    """Per user: last_time_ms and, per behaviour, the history items (hashed, or vocabulary indices
    without the unknown ones) newest first."""
    if vocabulary is not None and vocabulary.has(ITEM_FIELD):
        mapped = map_id_lists(history.select("user_id", "last_time_ms", *[src for _, src in BEHAVIOURS.values()]),
                              "user_id", {src: f"_m_{b}" for b, (_, src) in BEHAVIOURS.items()}, ITEM_FIELD,
                              vocabulary.frame)
        cols = [F.reverse(F.filter(F.col(f"_m_{b}"), lambda x: x > 0)).alias(f"_h_{b}") for b in BEHAVIOURS]
        return mapped.select(F.col("user_id").alias("_h_user_id"), F.col("last_time_ms").alias("_h_time"), *cols)
    cols = [
        F.reverse(F.transform(F.coalesce(F.col(src), F.array()), lambda x: item_bucket(x, fs))).alias(f"_h_{b}")
        for b, (_, src) in BEHAVIOURS.items()
    ]
    return history.select(F.col("user_id").alias("_h_user_id"), F.col("last_time_ms").alias("_h_time"), *cols)


def add_sequences(queries: DataFrame, events: DataFrame, history: DataFrame, fs: FeatureSettings,
                  event_time: str = "time_ms", vocabulary: Vocabulary | None = None) -> DataFrame:
    """Query rows + ``seq_<b>`` (array<int>) and ``seq_<b>_gap`` (array<float>) per behaviour.

    ``event_time``: the events' column holding when an event becomes visible (default its start;
    the featuriser passes its end, ``time_ms + play_time_ms``: a positive label is only known then).
    Order and gaps use that moment. ``vocabulary``: items index like ``cat_video_id`` (required
    unless ``fs.exact_vocab_max_size`` is 0); an item the vocabulary does not know is left out."""
    require_vocabulary(fs, vocabulary, "add_sequences")
    n = fs.seq_len
    timeline = point_in_time_union(queries, positive_events(events, fs, event_time, vocabulary)).repartition("user_id")
    # window A: last N positives up to and including each event, per (user, behaviour)
    per_behaviour = Window.partitionBy("user_id", BEH_COL).orderBy("time_ms", KIND_COL, "_item")
    item = F.when(F.col(KIND_COL) == EVENT, F.struct(F.col("time_ms").alias("t"), F.col("_item").alias("i")))
    with_lists = timeline.select(
        "*",
        F.row_number().over(per_behaviour).alias(IDX_COL),
        F.collect_list(item).over(per_behaviour.rowsBetween(-(n - 1), Window.currentRow)).alias(LIST_COL),
    )
    # window B: each query takes the list of the latest event strictly before it
    running = (Window.partitionBy("user_id").orderBy("time_ms", KIND_COL, IDX_COL)
               .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    latest = [
        F.last(F.when((F.col(KIND_COL) == EVENT) & (F.col(BEH_COL) == b), F.col(LIST_COL)), ignorenulls=True)
        .over(running).alias(f"_l_{b}")
        for b in BEHAVIOURS
    ]
    at_query = with_lists.select(*queries.columns, KIND_COL, *latest).where(F.col(KIND_COL) == QUERY)
    hist = _history_items(history, fs, vocabulary)
    joined = at_query.join(hist, at_query["user_id"] == hist["_h_user_id"], "left")
    t = F.col("time_ms")
    history_ok = F.col("_h_time").isNotNull() & (F.col("_h_time") < t)
    out = [F.col(c) for c in queries.columns]
    for b in BEHAVIOURS:
        recent = F.sort_array(F.coalesce(F.col(f"_l_{b}"), F.array()), asc=False)  # newest first
        hist_items = F.when(history_ok, F.col(f"_h_{b}")).otherwise(F.array().cast("array<int>"))
        items = F.concat(F.transform(recent, lambda x: x["i"]), hist_items)
        gaps = F.concat(
            F.transform(recent, lambda x: gap(t, x["t"])),
            F.transform(hist_items, lambda _: gap(t, F.col("_h_time"))),
        )
        out.append(F.slice(items, 1, n).cast("array<int>").alias(f"seq_{b}"))
        out.append(F.slice(gaps, 1, n).cast("array<float>").alias(f"seq_{b}_gap"))
    return joined.select(*out)
