"""Point-in-time statistics of the user's, the video's and the author's earlier impressions.

For every query row and entity (user / video / author): the number of earlier impressions and the
smoothed click / long_view / like rates, ``(positives + prior * strength) / (count + strength)``,
bucketised into categorical tokens (``cat_<entity>_n_prior``, ``cat_<entity>_<task>_rate``; finer
with ``FeatureSettings.rate_buckets`` / ``count_buckets_per_doubling``) and, with
``FeatureSettings.dense_stats``, also given raw as dense float columns (``dense_<entity>_n_prior_log1p``
= ``log1p(n)``, ``dense_<entity>_<task>_rate_logit`` = the logit of the smoothed rate; 0 for a null key).

"Earlier" is the cut every feature of this package uses: events **visible** strictly before the
query's ``time_ms``. An event is visible from ``event_time`` on: its labels are only known when its
playback ends, so the featuriser passes ``time_ms + play_time_ms`` (``FeatureSettings.label_delay``);
the whole event moves (its impression count with its labels), so every rate is a rate over finished
impressions. It is computed in one pass per entity: queries and events are unioned into one
timeline per entity key, sorted by ``(time_ms, kind)`` with queries (kind 0) *before* events (kind 1)
of the same millisecond, and running sums over that order count exactly the events strictly
before each query. No join explodes per user, and a heavy user costs linear time.

Priors are fixed constants (the published KuaiRand-Pure rates), not estimated from the data, so
that no aggregate over the future leaks into a feature.

>>> from conf.settings import FeatureSettings
>>> [f.name for f in stat_fields(FeatureSettings())][:4]
['user_n_prior', 'user_click_rate', 'user_long_view_rate', 'user_like_rate']
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from conf.settings import FeatureSettings
from features.spec import CategoricalField, DenseField

KIND_COL = "_kind"  # 0 = query row, 1 = event row
QUERY, EVENT = 0, 1
# behaviour -> label column of the log
STAT_LABELS = {"click": "is_click", "long_view": "long_view", "like": "is_like"}
RATE_PRIORS = {"click": 0.44, "long_view": 0.31, "like": 0.017}  # KuaiRand-Pure published rates
COUNT_BUCKETS = 32  # 0 reserved, 1 + floor(log2(1 + n)) capped (one bucket per doubling; see count_buckets)
LOGIT_RANGE = (-6.0, 6.0)  # rate buckets are even in logit space: rare labels keep resolution
ENTITY_SIDES = {"user": "user", "video": "item", "author": "item"}


def count_buckets(fs: FeatureSettings) -> int:
    """Vocab of an ``n_prior`` field: 0 reserved + ``31 k + 1`` buckets (``k`` per doubling; 32 for k = 1)."""
    return (COUNT_BUCKETS - 1) * fs.count_buckets_per_doubling + 1


def stat_fields(fs: FeatureSettings) -> tuple[CategoricalField, ...]:
    fields = []
    for entity, side in ENTITY_SIDES.items():
        fields.append(CategoricalField(f"{entity}_n_prior", count_buckets(fs), side=side))
        fields += [CategoricalField(f"{entity}_{task}_rate", fs.rate_buckets + 1, side=side) for task in STAT_LABELS]
    return tuple(fields)


def dense_stat_fields(fs: FeatureSettings) -> tuple[DenseField, ...]:
    """The raw values beside the buckets (``fs.dense_stats``), in column order."""
    if not fs.dense_stats:
        return ()
    return tuple(DenseField(name, side=side) for entity, side in ENTITY_SIDES.items() for name in _dense_names(entity))


def _dense_names(entity: str) -> list[str]:
    return [f"{entity}_n_prior_log1p"] + [f"{entity}_{t}_rate_logit" for t in STAT_LABELS]


def count_bucket(n: Column, per_doubling: int = 1) -> Column:
    """1 + floor(k log2(1 + n)), capped at 31 k (k = ``per_doubling``); 0 for null."""
    log = F.log2(n.cast("double") + 1.0)
    raw = F.floor(log if per_doubling == 1 else log * per_doubling + 1e-9) + 1  # k = 1: the first specs' formula
    cap = (COUNT_BUCKETS - 1) * per_doubling
    return F.when(n.isNull(), F.lit(0)).otherwise(F.least(raw, F.lit(cap))).cast("int")


def rate_logit(rate: Column) -> Column:
    clipped = F.least(F.greatest(rate, F.lit(1e-6)), F.lit(1 - 1e-6))
    return F.log(clipped / (1 - clipped))


def rate_bucket(rate: Column, n_buckets: int) -> Column:
    """1..n_buckets, evenly spaced in logit(rate) over LOGIT_RANGE; 0 for null."""
    lo, hi = LOGIT_RANGE
    logit = rate_logit(rate)
    index = F.floor((logit - lo) / (hi - lo) * n_buckets)
    bucket = F.least(F.greatest(index, F.lit(0)), F.lit(n_buckets - 1)) + 1
    return F.when(rate.isNull(), F.lit(0)).otherwise(bucket).cast("int")


def point_in_time_union(queries: DataFrame, events: DataFrame) -> DataFrame:
    """Queries (kind 0, every column kept) and events (kind 1) in one frame; columns missing on
    either side are null. Sort a window by ``time_ms, _kind`` and an event is visible to a query
    row exactly when it precedes it: equal timestamps come after the query."""
    q = queries.withColumn(KIND_COL, F.lit(QUERY))
    e = events.withColumn(KIND_COL, F.lit(EVENT))
    return q.unionByName(e, allowMissingColumns=True)


def smoothed_rate(positives: Column, count: Column, prior: float, strength: float) -> Column:
    return (positives + F.lit(prior * strength)) / (count + F.lit(strength))


def add_entity_stats(
    queries: DataFrame, events: DataFrame, key: str, entity: str, fs: FeatureSettings,
    event_key: str | None = None, event_time: str = "time_ms",
) -> DataFrame:
    """Query rows + ``cat_<entity>_n_prior`` and ``cat_<entity>_<task>_rate`` columns.

    ``key`` names the entity column on the query rows, ``event_key`` on the events (default the
    same), ``event_time`` the events' column holding the moment the event becomes visible (default
    its start ``time_ms``). Query rows whose key is null get bucket 0 everywhere.
    """
    event_key = event_key or key
    ev = events.where(F.col(event_key).isNotNull()).select(
        F.col(event_key).alias(key), F.col(event_time).alias("time_ms"),
        *[F.col(c).cast("int").alias(f"_s_{t}") for t, c in STAT_LABELS.items()])
    earlier = (Window.partitionBy(key).orderBy("time_ms", KIND_COL)
               .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    # null keys stay in the timeline (no event shares them) so the query lineage is used once
    timeline = point_in_time_union(queries, ev)
    n = F.sum(F.when(F.col(KIND_COL) == EVENT, 1).otherwise(0)).over(earlier)
    sums = {t: F.sum(F.coalesce(F.col(f"_s_{t}"), F.lit(0))).over(earlier) for t in STAT_LABELS}
    counted = timeline.select("*", n.alias("_n"), *[s.alias(f"_p_{t}") for t, s in sums.items()]).where(
        F.col(KIND_COL) == QUERY)
    strength = fs.rate_prior_strength
    known = F.col(key).isNotNull()
    rates = {t: smoothed_rate(F.col(f"_p_{t}"), F.col("_n"), RATE_PRIORS[t], strength) for t in STAT_LABELS}
    buckets = [count_bucket(F.when(known, F.col("_n")), fs.count_buckets_per_doubling)] + [
        rate_bucket(F.when(known, rates[t]), fs.rate_buckets) for t in STAT_LABELS
    ]
    out = [b.alias(name) for b, name in zip(buckets, _bucket_names(entity))]
    if fs.dense_stats:
        raw = [F.log1p(F.col("_n").cast("double"))] + [rate_logit(rates[t]) for t in STAT_LABELS]
        out += [F.when(known, v).otherwise(F.lit(0.0)).cast("float").alias(f"dense_{name}")
                for v, name in zip(raw, _dense_names(entity))]
    return counted.select(*queries.columns, *out)


def _bucket_names(entity: str) -> list[str]:
    return [f"cat_{entity}_n_prior"] + [f"cat_{entity}_{t}_rate" for t in STAT_LABELS]

