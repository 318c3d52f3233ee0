"""The examples table: one row per impression, every feature of the spec, labels and masks.

:func:`build_features` is the per-row featuriser. Training calls it through :func:`build_examples`
with the log as both the rows to featurise and the events. Scoring composes the very same feature
functions once per request / video / context key instead of once per candidate
(``features.candidate_features``, candidate rows as queries, the log as events). Both get the same
code, the same hashing and the same point-in-time cut (events with ``time_ms`` strictly below the
query's), and tests hold the two equal, so there is no train/serve skew.

The spec (:func:`build_spec`) is derivable from settings alone; the ``build_features`` job stores
it with the Delta version it writes (commit ``userMetadata``, table property and
``<lake>/feature_specs/examples/v<version>.json``) and :func:`load_feature_spec` returns the spec
that holds for any version of the table.

>>> from conf.settings import Settings
>>> spec = build_spec(Settings())
>>> spec.feature_columns[:2], spec.sequences[0].column, len(spec.categorical)
(['cat_user_id', 'cat_user_active_degree'], 'seq_click', 50)
>>> example_columns(spec)[:5]
['impression_id', 'user_id', 'video_id', 'time_ms', 'date']
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from conf.settings import FeatureSettings, Settings
from conf.tables import EXAMPLES
from features.categorical import AUTHOR_COL, DURATION_EDGES_S, LOCAL_TZ_OFFSET_MS, add_categorical, categorical_fields
from features.labels import label_columns, spec_tasks
from features.sequences import add_sequences, sequence_fields
from features.spec import FeatureSpec
from features.statistics import (COUNT_BUCKETS, LOGIT_RANGE, RATE_PRIORS, add_entity_stats, dense_stat_fields,
                                 stat_fields)
from features.vocabulary import Vocabulary

SPEC_FINGERPRINT_KEY = "feature_spec_fingerprint"
SPEC_PROPERTY = "infnet.feature_spec_fingerprint"
QUERY_COLUMNS = ("user_id", "video_id", "time_ms")  # required on query rows (tab, date optional)
EVENT_COLUMNS = ("user_id", "video_id", "time_ms", "is_click", "long_view", "is_like")
VISIBLE_COL = "_visible_ms"  # when an event's labels become known (FeatureSettings.label_delay)


def feature_settings(settings: Settings | FeatureSettings) -> FeatureSettings:
    """The feature settings of ``settings`` (the featurisers take either the full settings or these)."""
    return settings.features if isinstance(settings, Settings) else settings


def build_spec(settings: Settings | FeatureSettings, vocabulary: Vocabulary | None = None) -> FeatureSpec:
    """The feature spec for these settings (fields in column order): no data needed but the exact id
    vocabulary's sizes and version when there is one (without it every id field is described hashed)."""
    fs = feature_settings(settings)
    return FeatureSpec(
        categorical=categorical_fields(fs, vocabulary) + stat_fields(fs),
        sequences=sequence_fields(fs, vocabulary),
        dense=dense_stat_fields(fs),
        tasks=spec_tasks(fs.exposure_negatives > 0),
        hash_seed=fs.hash_seed,
        sequence_order="newest_first",
        options=feature_options(fs, vocabulary),
        extra={
            "hash": "1 + pmod(xxhash64(seed, field_name, cast(value as string)), vocab - 1); 0 = null/unseen",
            "vocabulary": ("fields with `vocabulary` set: index 1..n in the vocabulary table at "
                           "options.vocabulary_version (ids sorted by value); 0 = null or first seen after it was built"),
            "time_zone": f"UTC+{LOCAL_TZ_OFFSET_MS // 3_600_000} for hour/weekday",
            "duration_edges_s": list(DURATION_EDGES_S),
            "count_buckets": (f"1 + floor({fs.count_buckets_per_doubling} * log2(1 + n)) capped at "
                              f"{(COUNT_BUCKETS - 1) * fs.count_buckets_per_doubling}"),
            "dense": "dense_<entity>_n_prior_log1p = log1p(n); dense_<entity>_<task>_rate_logit = logit(rate); 0 for a null key",
            "rate": f"(pos + prior * {fs.rate_prior_strength}) / (n + {fs.rate_prior_strength}), "
                    f"bucketed evenly in logit over {list(LOGIT_RANGE)}",
            "rate_priors": RATE_PRIORS,
            "point_in_time": ("events visible strictly before the row's time_ms; an event is visible from "
                              + ("time_ms + play_time_ms (its labels are known when playback ends)"
                                 if fs.label_delay else "its time_ms")),
            "sequence_gap": "log1p(seconds to the row); history items use history.last_time_ms",
        },
    )


def feature_options(fs: FeatureSettings, vocabulary: Vocabulary | None = None) -> dict:
    """The spec's ``options``: feature-code choices a model depends on, each only when it differs
    from what the first stored specs did (so those keep their fingerprint)."""
    options = {}
    if fs.label_delay:
        options["label_visibility"] = "end"
    if vocabulary is not None and vocabulary.sizes:
        options["vocabulary_version"] = vocabulary.version
    if fs.count_buckets_per_doubling != 1:
        options["count_buckets_per_doubling"] = fs.count_buckets_per_doubling
    if fs.feature_time != "impression":
        options["feature_time"] = fs.feature_time
    if fs.exposure_negatives > 0:
        options["exposure_negatives"] = fs.exposure_negatives
        options["exposure_space"] = "candidates+impressions" if fs.exposure_outside_candidates else "candidates"
    return options


def featuriser_vocabulary(spark: SparkSession, settings: Settings | FeatureSettings,
                          vocabulary: Vocabulary | None) -> Vocabulary | None:
    """The vocabulary the featuriser uses: the one given, else (exact ids on, full settings) the
    lake's current ``vocabulary`` table, the one the current examples were built with."""
    fs = feature_settings(settings)
    if vocabulary is not None or fs.exact_vocab_max_size <= 0 or not isinstance(settings, Settings):
        return vocabulary
    from conf.tables import VOCABULARY
    from features.vocabulary import load_vocabulary

    path = settings.lake.table_path(VOCABULARY.name)
    try:
        return load_vocabulary(spark, path)
    except Exception as err:  # noqa: BLE001 - a missing Delta table raises an AnalysisException
        raise ValueError(f"exact id vocabularies are on but {path} cannot be read ({type(err).__name__}): "
                         "run `infnet build_features` (a full rebuild writes it)") from None


def example_columns(spec: FeatureSpec) -> list[str]:
    return [*spec.key_columns, *spec.feature_columns, *spec.label_columns]


def _require(df: DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing} (has {df.columns})")


def label_visible_ms(label_delay: bool) -> Column:
    """When an event's labels (is_click, long_view, is_like) become known, as a long column: the one
    rule of ``FeatureSettings.label_delay`` that the features and the retrieval channels
    (features/retrieval.py, the popularity baseline) share. ``time_ms + play_time_ms`` (a null play
    time counts 0) with ``label_delay`` (playback has ended), else ``time_ms``; the events need
    ``play_time_ms`` only with ``label_delay``."""
    visible = (F.col("time_ms") + F.coalesce(F.col("play_time_ms"), F.lit(0))) if label_delay else F.col("time_ms")
    return visible.cast("long")


def feature_events(events: DataFrame, fs: FeatureSettings) -> DataFrame:
    """The event columns the features read + ``VISIBLE_COL``, when each event's labels become known:
    ``time_ms + play_time_ms`` with ``fs.label_delay`` (playback has ended), else ``time_ms``
    (:func:`label_visible_ms`)."""
    _require(events, EVENT_COLUMNS + (("play_time_ms",) if fs.label_delay else ()), "events")
    return events.select(*EVENT_COLUMNS, label_visible_ms(fs.label_delay).alias(VISIBLE_COL))


def events_with_author(events: DataFrame, videos: DataFrame) -> DataFrame:
    """Events + ``_e_author_id`` (the video's author; null when unknown) for the author statistics."""
    return events.join(
        videos.select(F.col("video_id").alias("_e_video_id"), F.col("author_id").alias("_e_author_id")),
        F.col("video_id") == F.col("_e_video_id"), "left",
    ).drop("_e_video_id")


def build_features(
    queries: DataFrame,
    events: DataFrame,
    users: DataFrame,
    videos: DataFrame,
    history: DataFrame,
    settings: Settings | FeatureSettings,
    vocabulary: Vocabulary | None = None,
) -> DataFrame:
    """Featurise ``queries`` from what happened strictly before each row's ``time_ms``.

    ``queries``: rows to featurise, at least ``user_id, video_id, time_ms`` (plus ``tab``; any other
    column, e.g. ``impression_id`` / ``request_id`` / ``date`` / labels, is passed through).
    ``events``: the labelled log (``user_id, video_id, time_ms, is_click, long_view, is_like``, and
    ``play_time_ms`` with ``label_delay``: an event is visible from ``time_ms + play_time_ms`` on).
    ``users`` / ``videos`` / ``history``: the bronze dimension tables.
    ``vocabulary``: the exact id vocabulary; by default (exact ids on) the lake's current one, read
    from ``settings`` (a :class:`Settings`; with bare :class:`FeatureSettings` pass it).
    Returns the query columns followed by every feature column of :func:`build_spec`, in order.
    """
    fs = feature_settings(settings)
    vocabulary = featuriser_vocabulary(queries.sparkSession, settings, vocabulary)
    _require(queries, QUERY_COLUMNS, "queries")
    if "tab" not in queries.columns:
        queries = queries.withColumn("tab", F.lit(None).cast("int"))
    passthrough = list(queries.columns)
    ev = feature_events(events, fs)
    rows = add_categorical(queries, users, videos, fs, vocabulary)
    rows = add_entity_stats(rows, ev, "video_id", "video", fs, event_time=VISIBLE_COL)
    rows = add_entity_stats(rows, events_with_author(ev, videos), AUTHOR_COL, "author", fs, event_key="_e_author_id",
                            event_time=VISIBLE_COL)
    rows = add_entity_stats(rows, ev, "user_id", "user", fs, event_time=VISIBLE_COL)
    rows = add_sequences(rows, ev, history, fs, event_time=VISIBLE_COL, vocabulary=vocabulary)
    spec = build_spec(fs, vocabulary)
    return rows.select(*passthrough, *spec.feature_columns)


def build_examples(
    log: DataFrame,
    users: DataFrame,
    videos: DataFrame,
    history: DataFrame,
    settings: Settings | FeatureSettings,
    dates: Sequence[str] | None = None,
    vocabulary: Vocabulary | None = None,
) -> tuple[DataFrame, FeatureSpec]:
    """One row per impression of ``log`` (restricted to ``dates`` when given), keys + features +
    labels + masks in :func:`example_columns` order, and the spec describing them.

    ``log`` is bronze_log (``impression_id``, ``date`` as DateType, the raw columns). Every earlier
    event of ``log`` is visible to the featurised rows, so pass the log up to the last date, not
    just the dates to build.
    """
    vocabulary = featuriser_vocabulary(log.sparkSession, settings, vocabulary)
    spec = build_spec(settings, vocabulary)
    queries = log
    events = log
    if dates:
        wanted = [dt.date.fromisoformat(d) for d in dates]
        queries = log.where(F.col("date").isin(*wanted))
        # events after the last wanted day are never visible; one day of slack for the time zone
        events = log.where(F.col("date") <= F.lit(max(wanted) + dt.timedelta(days=1)))
    labelled = queries.select(*spec.key_columns, "tab", *label_columns())
    featured = build_features(labelled, events, users, videos, history, settings, vocabulary)
    return featured.select(*example_columns(spec)), spec


# -- the spec stored with the table ---------------------------------------------------------------

def feature_spec_path(settings: Settings, version: int) -> str:
    return f"{settings.lake.feature_specs.rstrip('/')}/{EXAMPLES.name}/v{int(version)}.json"


def save_feature_spec(spark: SparkSession, settings: Settings, spec: FeatureSpec, version: int) -> str:
    """Write the spec JSON for table version ``version`` (any Hadoop filesystem); returns the path."""
    from conf.lake import write_text

    path = feature_spec_path(settings, version)
    write_text(spark, path, spec.to_json())
    return path


def stored_spec_fingerprint(spark: SparkSession, settings: Settings) -> str | None:
    """The spec fingerprint the ``examples`` table carries as a property (None: no table yet)."""
    from delta.tables import DeltaTable

    from conf.lake import table_exists

    if not table_exists(spark, settings, EXAMPLES):
        return None
    detail = DeltaTable.forPath(spark, settings.lake.table_path(EXAMPLES.name)).detail().first()
    return (detail["properties"] or {}).get(SPEC_PROPERTY)


def written_counts(written: DataFrame, spec: FeatureSpec, expected: dict[str, int]) -> tuple[dict[str, int], int]:
    """(logged rows per date, unshown rows) of the ``written`` examples over the dates of
    ``expected`` (bronze_log's impressions per date); a ``ValueError`` when a date's logged rows
    differ from bronze_log's (an impression lost or duplicated on the way)."""
    dates = sorted(expected)
    shown = F.col(spec.tasks[0].mask_column) > 0  # the logged impressions (entire space: also unshown rows)
    in_dates = written.where(F.col("date").isin(*dates))
    per_date = {str(r["date"]): int(r["n"])
                for r in in_dates.where(shown).groupBy("date").agg(F.count(F.lit(1)).alias("n")).collect()}
    if per_date != expected:
        bad = {d: (per_date.get(d, 0), expected[d]) for d in dates if per_date.get(d, 0) != expected[d]}
        raise ValueError(f"examples row counts differ from bronze_log (written, expected): {bad}")
    return per_date, in_dates.where(~shown).count()


def spec_commits(spark: SparkSession, settings: Settings) -> list[tuple[int, str]]:
    """(version, fingerprint) of every examples commit that carries a spec, oldest first."""
    from delta.tables import DeltaTable

    history = DeltaTable.forPath(spark, settings.lake.table_path(EXAMPLES.name)).history()
    found = []
    for row in history.select("version", "userMetadata").collect():
        if row["userMetadata"]:
            try:
                meta = json.loads(row["userMetadata"])
            except ValueError:
                continue
            if isinstance(meta, dict) and SPEC_FINGERPRINT_KEY in meta:
                found.append((int(row["version"]), str(meta[SPEC_FINGERPRINT_KEY])))
    return sorted(found)


def load_feature_spec(spark: SparkSession, settings: Settings, version: int | None = None) -> FeatureSpec:
    """The feature spec that describes ``examples`` at Delta ``version`` (default: current).

    It is the spec of the latest spec-carrying commit at or before ``version``; its fingerprint is
    checked against that commit's metadata so a hand-edited JSON cannot slip through.
    """
    from conf.lake import current_version

    target = current_version(spark, settings, EXAMPLES) if version is None else int(version)
    commits = [(v, fp) for v, fp in spec_commits(spark, settings) if v <= target]
    if not commits:
        raise FileNotFoundError(f"no feature spec stored for {EXAMPLES.name} at or before version {target}; "
                                "run `infnet build_features` first")
    spec_version, fingerprint = commits[-1]
    path = feature_spec_path(settings, spec_version)
    text = "\n".join(r[0] for r in spark.read.text(path, wholetext=True).collect())
    spec = FeatureSpec.from_json(text)
    if spec.fingerprint() != fingerprint:
        raise ValueError(f"{path} has fingerprint {spec.fingerprint()}, but commit {spec_version} "
                         f"of {EXAMPLES.name} recorded {fingerprint}")
    return spec
