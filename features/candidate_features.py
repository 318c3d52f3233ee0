"""Point-in-time features of candidate sets, computed once per key instead of once per candidate.

Every feature of the spec depends on one of three keys, so each is computed once per distinct key
with the very functions the training features use (``add_categorical``, ``add_entity_stats``,
``add_sequences``) and then joined:

- **request side** (``side == "user"`` fields: user fields and user statistics, plus the behaviour
  sequences): once per request, keyed by (user, request time);
- **item side** (``side == "item"``: video fields, video and author statistics as of the request
  time): once per (video, request time), shared by every request at that time (the retrieval
  source puts all requests of a date at one time, so a video is featurised once per date);
- **context** (hour, weekday from the request time, tab): once per (request time, tab).

A candidate's features therefore equal what :func:`features.examples.build_features` computes for
the row ``(user, video, time_ms = request time, tab)``: tests/features/test_candidate_features.py
holds the two equal, and a candidate whose request time is a logged impression's time equal to
that impression's ``examples`` row. With 200 candidates per request the user's sequences and
statistics are built once instead of 200 times, and the request-packed scoring layout
(:func:`features.candidates.packed_layout`) is assembled directly from the request rows and a
``list<struct>`` of the candidate rows, so the sequences are never copied per candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from conf.settings import FeatureSettings, Settings
from features.candidates import PACKED_CANDIDATES, REQUEST_COLUMN, T_COL, packed_layout, split_large_requests
from features.categorical import AUTHOR_COL, add_categorical
from features.examples import (VISIBLE_COL, build_spec, events_with_author, feature_events, feature_settings,
                               featuriser_vocabulary)
from features.sequences import add_sequences
from features.spec import FeatureSpec
from features.statistics import add_entity_stats
from features.vocabulary import Vocabulary

PASSTHROUGH = ("request_id", "impression_id", "user_id", "video_id")  # what scores keep of a candidate


def _side_columns(spec: FeatureSpec, side: str) -> list[str]:
    """The categorical and dense columns of one side, in spec order."""
    return [f.column for f in (*spec.categorical, *spec.dense) if f.side == side]


def _queries(df: DataFrame, user: str | None, video: str | None, tab: str | None) -> DataFrame:
    """Key rows shaped as build_features queries (user_id, video_id, time_ms, tab); the keys a
    side does not depend on are null, which the other sides' columns ignore."""
    return df.select(
        "*",
        (F.col(user) if user else F.lit(None)).cast("long").alias("user_id"),
        (F.col(video) if video else F.lit(None)).cast("long").alias("video_id"),
        F.col(T_COL).alias("time_ms"),
        (F.col(tab) if tab else F.lit(None)).cast("int").alias("tab"),
    )


def request_features(requests: DataFrame, events: DataFrame, users: DataFrame, videos: DataFrame,
                     history: DataFrame, settings: Settings | FeatureSettings,
                     vocabulary: Vocabulary | None = None) -> DataFrame:
    """One row per request (``request_id, user_id, request_time_ms``): ``request_id`` + the
    request-side columns (user fields and statistics, sequences)."""
    fs = feature_settings(settings)
    spec = build_spec(fs, vocabulary)
    q = _queries(requests.select(REQUEST_COLUMN, F.col("user_id").alias("_user"), T_COL), "_user", None, None)
    ev = feature_events(events, fs)
    rows = add_categorical(q, users, videos, fs, vocabulary)
    rows = add_entity_stats(rows, ev, "user_id", "user", fs, event_time=VISIBLE_COL)
    rows = add_sequences(rows, ev, history, fs, event_time=VISIBLE_COL, vocabulary=vocabulary)
    sequences = [c for s in spec.sequences for c in (s.column, s.gap_column)]
    return rows.select(REQUEST_COLUMN, *_side_columns(spec, "user"), *sequences)


def item_features(keys: DataFrame, events: DataFrame, users: DataFrame, videos: DataFrame,
                  settings: Settings | FeatureSettings, vocabulary: Vocabulary | None = None) -> DataFrame:
    """One row per distinct (``video_id``, ``request_time_ms``) of ``keys``: the keys + the
    item-side columns (video fields, video and author statistics as of that time)."""
    fs = feature_settings(settings)
    spec = build_spec(fs, vocabulary)
    distinct = keys.select(F.col("video_id").alias("_video"), T_COL).distinct()
    rows = add_categorical(_queries(distinct, None, "_video", None), users, videos, fs, vocabulary)
    ev = feature_events(events, fs)
    rows = add_entity_stats(rows, ev, "video_id", "video", fs, event_time=VISIBLE_COL)
    rows = add_entity_stats(rows, events_with_author(ev, videos), AUTHOR_COL, "author", fs, event_key="_e_author_id",
                            event_time=VISIBLE_COL)
    return rows.select(F.col("_video").alias("video_id"), T_COL, *_side_columns(spec, "item"))


def context_features(keys: DataFrame, users: DataFrame, videos: DataFrame,
                     settings: Settings | FeatureSettings, vocabulary: Vocabulary | None = None) -> DataFrame:
    """One row per distinct (``request_time_ms``, ``tab``) of ``keys``: the keys + the context columns."""
    fs = feature_settings(settings)
    spec = build_spec(fs, vocabulary)
    distinct = keys.select(T_COL, F.col("tab").alias("_tab")).distinct()
    rows = add_categorical(_queries(distinct, None, None, "_tab"), users, videos, fs, vocabulary)
    return rows.select(T_COL, F.col("_tab").alias("tab"), *_side_columns(spec, "context"))


@dataclass
class CandidateFeatures:
    """The three per-key frames and the candidates they describe.

    ``flat()`` / ``packed()`` assemble what the scorer reads; ``input_report()`` counts candidates
    scored with reserved buckets. Cache the frames (``cache()``) when more than one of them is used.
    """

    spec: FeatureSpec
    candidates: DataFrame  # the candidate rows (request_id, user_id, video_id, request_time_ms, tab, ...)
    requests: DataFrame  # request_id + request-side columns
    items: DataFrame  # video_id, request_time_ms + item-side columns
    context: DataFrame  # request_time_ms, tab + context columns

    def cache(self) -> "CandidateFeatures":
        for df in (self.requests, self.items, self.context):
            df.cache()
        return self

    def unpersist(self) -> None:
        for df in (self.requests, self.items, self.context):
            df.unpersist()

    def candidate_rows(self, passthrough: Sequence[str] = PASSTHROUGH) -> DataFrame:
        """Candidates + their item-side and context columns (the request side not yet joined)."""
        extra = [c for c in passthrough if c not in self.candidates.columns]
        if extra:
            raise ValueError(f"candidates lack passthrough columns {extra}")
        c = self.candidates.select(*dict.fromkeys([*passthrough, T_COL, "tab"]))
        items = self.items.withColumnRenamed("video_id", "_i_video").withColumnRenamed(T_COL, "_i_time")
        context = self.context.withColumnRenamed(T_COL, "_c_time").withColumnRenamed("tab", "_c_tab")
        joined = (c.join(items, (F.col("video_id") == F.col("_i_video")) & (F.col(T_COL) == F.col("_i_time")), "left")
                  .join(F.broadcast(context), (F.col(T_COL) == F.col("_c_time")) & F.col("tab").eqNullSafe(F.col("_c_tab")),
                        "left"))
        return joined.drop("_i_video", "_i_time", "_c_time", "_c_tab")

    def flat(self, passthrough: Sequence[str] = PASSTHROUGH) -> DataFrame:
        """One row per candidate: ``passthrough`` + every feature column in spec order."""
        rows = self.candidate_rows(passthrough).join(self.requests, REQUEST_COLUMN, "left")
        return rows.select(*passthrough, *self.spec.feature_columns)

    def packed(self, passthrough: Sequence[str] = PASSTHROUGH, max_candidates_per_row: int | None = None) -> DataFrame:
        """One row per request in the layout of :func:`features.candidates.packed_layout`, built
        from the request rows and the candidates' item/context rows (no per-candidate copy of the
        request side); requests over ``max_candidates_per_row`` are split into several rows."""
        request_columns, per_candidate = packed_layout(self.spec, passthrough)
        rows = self.candidate_rows(passthrough)
        # the models read dense values per row: the request side's few floats travel per candidate
        user_dense = [f.column for f in self.spec.dense if f.side == "user"]
        if user_dense:
            rows = rows.join(self.requests.select(REQUEST_COLUMN, *user_dense), REQUEST_COLUMN, "left")
        lists = (rows.groupBy(REQUEST_COLUMN)
                 .agg(F.collect_list(F.struct(*per_candidate)).alias(PACKED_CANDIDATES)))
        packed = self.requests.select(*request_columns).join(lists, REQUEST_COLUMN)
        return split_large_requests(packed, max_candidates_per_row)

    def input_report(self) -> dict[str, int]:
        """Candidates scored with a reserved bucket (unknown user / video, no hour or tab) and with
        every sequence empty, counted per candidate from the per-key frames."""
        per_request = self.candidates.groupBy(REQUEST_COLUMN).agg(F.count(F.lit(1)).alias("_n"))
        per_item = self.candidates.groupBy("video_id", T_COL).agg(F.count(F.lit(1)).alias("_n"))
        per_context = self.candidates.groupBy(T_COL, "tab").agg(F.count(F.lit(1)).alias("_n"))
        checks = []  # (report key, frame name, condition)
        for field in self.spec.categorical:
            if field.name in ("user_id", "video_id", "tab", "hour"):
                frame = {"user": "requests", "item": "items", "context": "context"}[field.side]
                checks.append((f"reserved_{field.name}", frame, F.col(field.column) == 0))
        if self.spec.sequences:
            empty = None
            for s in self.spec.sequences:
                e = F.coalesce(F.size(s.column), F.lit(0)) <= 0
                empty = e if empty is None else (empty & e)
            checks.append(("all_sequences_empty", "requests", empty))
        per_context = per_context.withColumnRenamed(T_COL, "_p_time").withColumnRenamed("tab", "_p_tab")
        frames = {
            "requests": self.requests.join(per_request, REQUEST_COLUMN),
            "items": self.items.join(per_item, ["video_id", T_COL]),
            "context": self.context.join(per_context, (F.col(T_COL) == F.col("_p_time"))
                                         & F.col("tab").eqNullSafe(F.col("_p_tab"))),
        }
        out: dict[str, int] = {}
        for name in ("requests", "items", "context"):
            mine = [(k, cond) for k, f, cond in checks if f == name]
            if not mine:
                continue
            row = frames[name].agg(*[F.sum(F.when(cond, F.col("_n")).otherwise(0)).alias(k) for k, cond in mine]).first()
            out.update({k: int(row[k] or 0) for k, _ in mine})
        return out


def featurise_candidates(candidates: DataFrame, events: DataFrame, users: DataFrame, videos: DataFrame,
                         history: DataFrame, settings: Settings | FeatureSettings,
                         vocabulary: Vocabulary | None = None) -> CandidateFeatures:
    """The per-key features of ``candidates`` (the contract's columns) from ``events`` (the
    labelled log: ``user_id, video_id, time_ms, is_click, long_view, is_like``, ``play_time_ms``
    with label delay) visible strictly before each request time, and the bronze dimension tables.
    ``vocabulary``: as for :func:`features.examples.build_features` (default: the lake's current one
    when exact ids are on)."""
    fs = feature_settings(settings)
    vocabulary = featuriser_vocabulary(candidates.sparkSession, settings, vocabulary)
    if "tab" not in candidates.columns:
        candidates = candidates.withColumn("tab", F.lit(None).cast("int"))
    requests = candidates.select(REQUEST_COLUMN, "user_id", T_COL).dropDuplicates([REQUEST_COLUMN])
    return CandidateFeatures(
        spec=build_spec(fs, vocabulary),
        candidates=candidates,
        requests=request_features(requests, events, users, videos, history, fs, vocabulary),
        items=item_features(candidates, events, users, videos, fs, vocabulary),
        context=context_features(candidates, users, videos, fs, vocabulary),
    )
