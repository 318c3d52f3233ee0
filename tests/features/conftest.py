"""Shared fixtures of the feature tests: the hand-built timeline, featurised once per session."""
from __future__ import annotations

from dataclasses import replace

import pytest

SEQ_LEN = 4  # small, so truncation is exercised


@pytest.fixture(scope="session")
def feature_settings(settings):
    """Hashed ids (the point-in-time oracles are written for them); test_vocabulary.py covers exact ids."""
    return replace(settings.features, seq_len=SEQ_LEN, exact_vocab_max_size=0)


def featurise(spark, feature_settings, shuffle_seed: int, history_rel: int | None = None, vocabulary=None):
    """build_features over the timeline log (+ one query for an unknown user and video)."""
    from pyspark.sql import functions as F

    import feature_timeline as tl
    from features.examples import build_features

    log, users, videos, history = tl.bronze_frames(spark, shuffle_seed)
    if history_rel is not None:
        history = history.withColumn("last_time_ms", F.lit(tl.DAY0 + history_rel))
    queries = log.select("impression_id", "user_id", "video_id", "time_ms", "tab", "date")
    unknown = spark.createDataFrame([("unknown", 3, 999, tl.DAY0 + 7_000, None)],
                                    "impression_id string, user_id bigint, video_id bigint, time_ms bigint, tab int")
    queries = queries.unionByName(unknown.withColumn("date", F.lit(None).cast("date")))
    return build_features(queries, log, users, videos, history, feature_settings, vocabulary)


@pytest.fixture(scope="session")
def timeline_rows(spark, feature_settings):
    """impression_id -> featurised row (as a dict)."""
    return {r["impression_id"]: r.asDict() for r in featurise(spark, feature_settings, 0).collect()}
