"""Categorical features: every field becomes one int column ``cat_<name>`` in ``[0, vocab)``.

Bucket ``0`` is reserved for null / unseen (a user missing from ``bronze_users``, a video missing
from ``bronze_videos``, an unparseable value). The id fields (user, video, author, music) map through
an exact vocabulary built from bronze (:mod:`features.vocabulary`: index ``1 .. n``, 0 for an id
first seen after it was built) unless their vocabulary would exceed
``FeatureSettings.exact_vocab_max_size``. Everything else is hashed with a seeded, deterministic
hash, ``1 + pmod(xxhash64(seed, field, value_as_string), vocab - 1)``, so the mapping needs no
dictionary, is the same in training and scoring and on any machine, and is fully described by
(seed, field name, vocab size) in the feature spec (:func:`features.vocabulary.hash_bucket`: it
lives beside the exact vocabulary, which this module imports and which never imports this one).
Hashed ids use the configured bucket counts; the low-cardinality fields hash into
``generic_buckets`` (collisions are rare and harmless there).
A few small numeric fields are mapped directly (hour, weekday, duration bucket).

Time context uses Beijing time (UTC+8), the clock of the KuaiRand logs, computed from ``time_ms``
alone so a scoring request needs nothing else.

>>> from conf.settings import FeatureSettings
>>> [f.name for f in categorical_fields(FeatureSettings())][:3]
['user_id', 'user_active_degree', 'is_lowactive_period']
>>> {f.side for f in categorical_fields(FeatureSettings())} == {"user", "item", "context"}
True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from conf.schemas import USER_CATEGORICAL
from conf.settings import FeatureSettings
from features.spec import CategoricalField
from features.vocabulary import Vocabulary, hash_bucket, lookup, require_vocabulary

LOCAL_TZ_OFFSET_MS = 8 * 3600 * 1000  # KuaiRand timestamps are Beijing time (UTC+8)
DAY_MS = 86_400_000
# video_duration (ms) bucket edges in seconds: 1 + number of edges <= duration
DURATION_EDGES_S = (7, 15, 30, 60, 120, 300, 600)

Side = Literal["user", "item", "context"]


@dataclass(frozen=True)
class CategoricalSource:
    """How one spec field is computed: its side, its vocab, and its raw value (a column of the
    enriched query rows) or, for direct mappings, the finished bucket expression."""

    name: str
    side: Side
    vocab: Callable[[FeatureSettings], int]
    raw: Callable[[], Column]
    hashed: bool = True

    def field(self, fs: FeatureSettings) -> CategoricalField:
        return CategoricalField(self.name, self.vocab(fs), side=self.side)

    def bucket(self, fs: FeatureSettings) -> Column:
        if not self.hashed:
            return F.coalesce(self.raw(), F.lit(0)).cast("int")
        return hash_bucket(self.raw(), self.name, self.vocab(fs), fs.hash_seed)


def _col(name: str) -> Callable[[], Column]:
    return lambda: F.col(name)


def _generic(fs: FeatureSettings) -> int:
    return fs.generic_buckets


def local_hour(time_ms: Column) -> Column:
    """0..23 in UTC+8."""
    return F.floor(F.pmod(time_ms + LOCAL_TZ_OFFSET_MS, F.lit(DAY_MS)) / 3_600_000).cast("int")


def local_weekday(time_ms: Column) -> Column:
    """1 = Monday .. 7 = Sunday in UTC+8 (1970-01-01 was a Thursday)."""
    days = F.floor((time_ms + LOCAL_TZ_OFFSET_MS) / F.lit(DAY_MS))
    return (F.pmod(days + 3, F.lit(7)) + 1).cast("int")


def duration_bucket(duration_ms: Column) -> Column:
    """1 .. len(DURATION_EDGES_S)+1 from the video's duration; 0 when unknown or negative."""
    seconds = duration_ms / 1000.0
    index = sum((F.when(seconds >= edge, 1).otherwise(0) for edge in DURATION_EDGES_S), F.lit(1))
    return F.when(duration_ms.isNull() | (duration_ms < 0), F.lit(0)).otherwise(index)


USER_SOURCES = (
    CategoricalSource("user_id", "user", lambda fs: fs.user_id_buckets, _col("user_id")),
    *(CategoricalSource(name, "user", _generic, _col(f"_u_{name}")) for name in USER_CATEGORICAL),
)
ITEM_SOURCES = (
    CategoricalSource("video_id", "item", lambda fs: fs.video_id_buckets, _col("video_id")),
    CategoricalSource("author_id", "item", lambda fs: fs.author_id_buckets, _col("_v_author_id")),
    CategoricalSource("video_type", "item", _generic, _col("_v_video_type")),
    CategoricalSource("upload_type", "item", _generic, _col("_v_upload_type")),
    CategoricalSource("music_id", "item", lambda fs: fs.music_id_buckets, _col("_v_music_id")),
    CategoricalSource("music_type", "item", _generic, _col("_v_music_type")),
    CategoricalSource("tag", "item", _generic, _col("_v_tag")),
    CategoricalSource("duration_bucket", "item", lambda fs: len(DURATION_EDGES_S) + 2,
                      lambda: duration_bucket(F.col("_v_video_duration")), hashed=False),
)
CONTEXT_SOURCES = (
    CategoricalSource("hour", "context", lambda fs: 25, lambda: local_hour(F.col("time_ms")) + 1, hashed=False),
    CategoricalSource("weekday", "context", lambda fs: 8, lambda: local_weekday(F.col("time_ms")), hashed=False),
    CategoricalSource("tab", "context", _generic, _col("tab")),
)
SOURCES = USER_SOURCES + ITEM_SOURCES + CONTEXT_SOURCES
VIDEO_COLUMNS = ("author_id", "video_type", "upload_type", "music_id", "music_type", "tag", "video_duration")
AUTHOR_COL = "_v_author_id"  # kept on the query rows for the author statistics


def categorical_fields(fs: FeatureSettings, vocabulary: Vocabulary | None = None) -> tuple[CategoricalField, ...]:
    """The spec's categorical fields; those the ``vocabulary`` holds are exact (its size, ``vocabulary`` set)."""
    fields = []
    for source in SOURCES:
        f = source.field(fs)
        if vocabulary is not None and vocabulary.has(source.name):
            f = CategoricalField(f.name, vocabulary.sizes[source.name], side=f.side, vocabulary=source.name)
        fields.append(f)
    return tuple(fields)


def with_dimensions(queries: DataFrame, users: DataFrame, videos: DataFrame) -> DataFrame:
    """Left-join the user and video attributes onto the query rows (prefixed, so they never clash
    with query columns). A missing user or video leaves nulls, which bucket to 0."""
    user_cols = [F.col(c).alias(f"_u_{c}") for c in USER_CATEGORICAL]
    u = users.select(F.col("user_id").alias("_u_user_id"), *user_cols)
    v = videos.select(F.col("video_id").alias("_v_video_id"), *[F.col(c).alias(f"_v_{c}") for c in VIDEO_COLUMNS])
    out = queries.join(u, queries["user_id"] == u["_u_user_id"], "left")
    return out.join(v, out["video_id"] == v["_v_video_id"], "left")


def add_categorical(queries: DataFrame, users: DataFrame, videos: DataFrame, fs: FeatureSettings,
                    vocabulary: Vocabulary | None = None) -> DataFrame:
    """Query rows + one ``cat_<name>`` column per field of :func:`categorical_fields`, plus the
    video's author id in ``_v_author_id`` (for the author statistics; drop it at the end).

    ``vocabulary``: the exact id vocabulary (:class:`features.vocabulary.Vocabulary`), required
    unless ``fs.exact_vocab_max_size`` is 0; fields it does not hold are hashed."""
    require_vocabulary(fs, vocabulary, "add_categorical")
    enriched = with_dimensions(queries, users, videos)
    cats = []
    for s in SOURCES:
        if vocabulary is not None and vocabulary.has(s.name):
            enriched = lookup(enriched, s.raw(), s.name, vocabulary.frame, f"_x_{s.name}")
            cats.append(F.col(f"_x_{s.name}").alias(f"cat_{s.name}"))
        else:
            cats.append(s.bucket(fs).alias(f"cat_{s.name}"))
    return enriched.select(*queries.columns, *cats, F.col(AUTHOR_COL))
