"""Exact id vocabularies: every id seen in bronze gets its own embedding row, instead of a hash bucket.

Hashing 24k users into 50k buckets and 7.5k videos into 20k makes roughly a third of the ids share
a row with another id (:func:`collision_report` measures it). An exact vocabulary maps each id seen in
``bronze_log`` (up to a cut date) or in the pre-window ``bronze_history`` to ``1 .. n`` (ids sorted by
value, so a rebuild over the same ids gives the same indices); ``0`` stays the reserved index for a
null and for an id first seen after the vocabulary was built (models give it a cold-start row, the
mean of the field's table: :class:`model.layers.CategoricalEmbedding`). A field whose vocabulary
would exceed ``FeatureSettings.exact_vocab_max_size`` keeps the seeded hash (the setting at 0 hashes
every field).

The ``vocabulary`` Delta table (``field, value, index``; ``value`` is the id as a string) is written
by ``build_features`` on a full rebuild, and its Delta version goes into the feature spec
(``options["vocabulary_version"]``, with each exact field's ``vocabulary`` and ``vocab_size``): the
featuriser reads that same version for training rows and for scoring candidates, so the product
maps ids one way, and a model built on another vocabulary is refused like any spec mismatch.

The seeded hash every field without a vocabulary goes through (:func:`hash_bucket`, used by
:mod:`features.categorical` and :mod:`features.sequences`) is defined here too, so that
:func:`collision_report` can compare the two mappings while this module imports neither of those.

>>> EXACT_FIELDS
('user_id', 'video_id', 'author_id', 'music_id')
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from conf.settings import FeatureSettings

EXACT_FIELDS = ("user_id", "video_id", "author_id", "music_id")  # the id fields that hashed into big tables
FIELD, VALUE, INDEX = "field", "value", "index"
HISTORY_LISTS = ("watch_seq", "like_seq", "long_watch_seq")


def hash_bucket(value: Column, field: str, vocab_size: int, seed: int) -> Column:
    """Seeded deterministic bucket in ``1 .. vocab_size-1`` for non-null values, ``0`` for null.

    Works inside higher-order functions (``F.transform``) too, so sequence items hash exactly
    like the ``video_id`` field.
    """
    as_text = value.cast("string")
    hashed = F.pmod(F.xxhash64(F.lit(int(seed)), F.lit(field), as_text), F.lit(vocab_size - 1)) + 1
    return F.when(as_text.isNull() | (F.trim(as_text) == ""), F.lit(0)).otherwise(hashed).cast("int")


@dataclass(frozen=True)
class Vocabulary:
    """A vocabulary frame (``field, value, index``) with its sizes (``{field: ids + 1}``) and the
    Delta version it was read at (None: not stored yet)."""

    frame: DataFrame
    sizes: dict
    version: int | None = None

    @classmethod
    def of(cls, frame: DataFrame, version: int | None = None) -> "Vocabulary":
        return cls(frame, vocabulary_sizes(frame), version)

    def has(self, field: str) -> bool:
        return field in self.sizes


def hashed_buckets(fs: FeatureSettings) -> dict[str, int]:
    """The bucket count each exact-able field hashes into when it has no vocabulary."""
    return {"user_id": fs.user_id_buckets, "video_id": fs.video_id_buckets,
            "author_id": fs.author_id_buckets, "music_id": fs.music_id_buckets}


def seen_ids(log: DataFrame, videos: DataFrame, history: DataFrame) -> DataFrame:
    """``field, value`` (distinct, value as string) of every id seen in ``log`` and ``history``: users
    and videos of the impressions and of the pre-window history, and the authors and music of those
    videos (from ``videos``)."""
    hist_videos = history.select(F.explode(F.concat(*[F.coalesce(F.col(c), F.array().cast("array<bigint>"))
                                                      for c in HISTORY_LISTS])).alias("video_id"))
    users = log.select("user_id").unionByName(history.select("user_id"))
    video_ids = log.select("video_id").unionByName(hist_videos).distinct()
    attrs = video_ids.join(videos.select("video_id", "author_id", "music_id"), "video_id", "left")
    parts = [users.select(F.lit("user_id").alias(FIELD), F.col("user_id").cast("string").alias(VALUE)),
             video_ids.select(F.lit("video_id").alias(FIELD), F.col("video_id").cast("string").alias(VALUE)),
             attrs.select(F.lit("author_id").alias(FIELD), F.col("author_id").cast("string").alias(VALUE)),
             attrs.select(F.lit("music_id").alias(FIELD), F.col("music_id").cast("string").alias(VALUE))]
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out.where(F.col(VALUE).isNotNull() & (F.trim(F.col(VALUE)) != "")).distinct()


def build_vocabulary(log: DataFrame, videos: DataFrame, history: DataFrame, fs: FeatureSettings) -> DataFrame:
    """``field, value, index``: ids seen in ``log`` / ``history`` numbered ``1 .. n`` per field (by value,
    numerically when the value is a number); fields above ``fs.exact_vocab_max_size`` ids are left out
    (they stay hashed). Pass the log up to the cut the vocabulary should know."""
    from pyspark.sql import Window

    ids = seen_ids(log, videos, history)
    sizes = ids.groupBy(FIELD).count()
    small = sizes.where(F.col("count") + 1 <= F.lit(int(fs.exact_vocab_max_size))).select(FIELD)
    order = Window.partitionBy(FIELD).orderBy(F.col(VALUE).cast("decimal(38,0)").asc_nulls_last(), F.col(VALUE))
    return (ids.join(small, FIELD, "left_semi")
            .select(FIELD, VALUE, F.row_number().over(order).cast("int").alias(INDEX)))


def vocabulary_sizes(vocabulary: DataFrame | None) -> dict[str, int]:
    """``{field: ids + 1}`` (the reserved 0 included) of each field the vocabulary holds."""
    if vocabulary is None:
        return {}
    return {r[FIELD]: int(r["n"]) + 1 for r in vocabulary.groupBy(FIELD).agg(F.max(INDEX).alias("n")).collect()}


def lookup(df: DataFrame, value: Column, field: str, vocabulary: DataFrame, out: str) -> DataFrame:
    """``df`` + ``out``: the vocabulary index of ``value`` for ``field`` (0 for null / unknown)."""
    one = F.broadcast(vocabulary.where(F.col(FIELD) == field)
                      .select(F.col(VALUE).alias(f"_v_{out}"), F.col(INDEX).alias(f"_i_{out}")))
    keyed = df.withColumn(f"_k_{out}", value.cast("string"))
    joined = keyed.join(one, F.col(f"_k_{out}") == F.col(f"_v_{out}"), "left")
    return joined.withColumn(out, F.coalesce(F.col(f"_i_{out}"), F.lit(0)).cast("int")).drop(
        f"_k_{out}", f"_v_{out}", f"_i_{out}")


def map_id_lists(df: DataFrame, key: str, columns: Mapping[str, str], field: str, vocabulary: DataFrame) -> DataFrame:
    """Map each ``array<id>`` column ``src`` of ``df`` to ``array<int>`` ``columns[src]`` of vocabulary
    indices, order kept (unknown ids -> 0). ``key`` identifies the rows of ``df`` (unique)."""
    one = F.broadcast(vocabulary.where(F.col(FIELD) == field).select(F.col(VALUE).alias("_mv"), F.col(INDEX).alias("_mi")))
    out = df
    for src, dst in columns.items():
        items = (df.select(key, F.posexplode(F.coalesce(F.col(src), F.array().cast("array<bigint>"))).alias("_p", "_x"))
                 .join(one, F.col("_x").cast("string") == F.col("_mv"), "left")
                 .groupBy(key)
                 .agg(F.sort_array(F.collect_list(F.struct("_p", F.coalesce("_mi", F.lit(0)).alias("_m")))).alias("_l"))
                 .select(F.col(key).alias(f"_key_{dst}"), F.transform("_l", lambda s: s["_m"]).cast("array<int>").alias(dst)))
        out = (out.join(items, out[key] == items[f"_key_{dst}"], "left").drop(f"_key_{dst}")
               .withColumn(dst, F.coalesce(F.col(dst), F.array().cast("array<int>"))))
    return out


def load_vocabulary(spark: SparkSession, table_path: str, version: int | None = None) -> Vocabulary:
    """The vocabulary table at ``version`` (default: current), read by path."""
    from delta.tables import DeltaTable

    if version is None:
        version = int(DeltaTable.forPath(spark, table_path).history(1).select("version").first()[0])
    frame = spark.read.format("delta").option("versionAsOf", int(version)).load(table_path)
    return Vocabulary.of(frame, int(version))


def require_vocabulary(fs: FeatureSettings, vocabulary: "Vocabulary | None", what: str) -> None:
    """A clear error when exact ids are on but no vocabulary was given (hashing instead would make
    ids disagree with the model's)."""
    if vocabulary is None and fs.exact_vocab_max_size > 0:
        raise ValueError(f"{what}: exact id vocabularies are on (FeatureSettings.exact_vocab_max_size = "
                         f"{fs.exact_vocab_max_size}) but no vocabulary was given: pass vocabulary= "
                         "(features.vocabulary.load_vocabulary / build_vocabulary), or set it to 0 to hash every id")


def collision_report(ids: DataFrame, fs: FeatureSettings) -> dict[str, dict[str, float]]:
    """Per field: ids seen, and the share of them whose hash bucket holds another seen id too.

    ``ids``: ``field, value`` as :func:`seen_ids` returns; the hashed layout is the seeded hash of
    :func:`hash_bucket` into the field's bucket count.
    """
    buckets = hashed_buckets(fs)
    out = {}
    for field, n_buckets in buckets.items():
        hashed = ids.where(F.col(FIELD) == field).select(hash_bucket(F.col(VALUE), field, n_buckets, fs.hash_seed).alias("b"))
        per_bucket = hashed.groupBy("b").count()
        row = per_bucket.agg(F.sum("count").alias("ids"),
                             F.sum(F.when(F.col("count") > 1, F.col("count")).otherwise(0)).alias("shared")).first()
        n = int(row["ids"] or 0)
        out[field] = {"ids": n, "buckets": n_buckets, "ids_sharing_a_bucket": int(row["shared"] or 0),
                      "collision_rate": (int(row["shared"] or 0) / n) if n else 0.0}
    return out


def write_vocabulary(spark: SparkSession, settings, log: DataFrame, videos: DataFrame, history: DataFrame,
                     until: list[str] | None) -> tuple[Vocabulary, str]:
    """Build the vocabulary from bronze (``log`` up to the last date of ``until``, every date when
    None), write it as the ``vocabulary`` table's next version (``settings``: conf.settings.Settings)
    and return it with a one-line report of the collisions it removes."""
    from conf.lake import write_table
    from conf.tables import VOCABULARY

    if until:
        log = log.where(F.col("date") <= F.lit(max(until)).cast("date"))
    version = write_table(build_vocabulary(log, videos, history, settings.features), settings, VOCABULARY,
                          user_metadata={"job": "build_features", "until": max(until) if until else "all"})
    vocabulary = load_vocabulary(spark, settings.lake.table_path(VOCABULARY.name), version)
    report = collision_report(seen_ids(log, videos, history), settings.features)
    return vocabulary, format_collision_report(report, vocabulary)


def format_collision_report(report: dict[str, dict[str, float]], vocabulary: "Vocabulary") -> str:
    """One line: per field, its ids, exact or hashed, and the share a hash would make collide.

    >>> v = Vocabulary(frame=None, sizes={"video_id": 3}, version=1)
    >>> format_collision_report({"video_id": {"ids": 2, "buckets": 10, "collision_rate": 0.5}}, v)
    'video_id 2 ids exact (3 rows), hashing into 10 buckets would share a row for 50.0%'
    """
    return "; ".join(
        f"{field} {r['ids']} ids " + (f"exact ({vocabulary.sizes[field]} rows)" if vocabulary.has(field) else "hashed")
        + f", hashing into {r['buckets']} buckets would share a row for {r['collision_rate']:.1%}"
        for field, r in report.items())
