"""Exact id vocabularies: built from bronze, read by the featuriser, 0 for unseen ids, a size threshold."""
from __future__ import annotations

from dataclasses import replace

import pytest

import feature_timeline as tl
from feature_timeline import featurise


@pytest.fixture(scope="module")
def exact(feature_settings):
    return replace(feature_settings, exact_vocab_max_size=1_000_000)


@pytest.fixture(scope="module")
def day0_vocabulary(spark, exact):
    """Built from the first day of the log only: video 16 (next day) is first seen after it."""
    from pyspark.sql import functions as F

    from features.vocabulary import Vocabulary, build_vocabulary

    log, _, videos, history = tl.bronze_frames(spark)
    frame = build_vocabulary(log.where(F.col("date") == F.lit("2022-04-25").cast("date")), videos, history, exact)
    return Vocabulary.of(frame.cache(), version=7)


def test_ids_are_numbered_by_value_per_field(day0_vocabulary):
    rows = day0_vocabulary.frame.collect()
    by_field = {}
    for r in rows:
        by_field.setdefault(r["field"], {})[r["value"]] = r["index"]
    assert by_field["user_id"] == {"1": 1, "2": 2}
    # log videos of day 0, then the history's 90..92, numerically (not "10" < "9")
    assert by_field["video_id"] == {str(v): i + 1 for i, v in enumerate([10, 11, 12, 13, 14, 15, 90, 91, 92])}
    assert by_field["author_id"] == {"100": 1, "101": 2, "102": 3}  # history videos have no author row
    assert by_field["music_id"] == {"5": 1}
    assert day0_vocabulary.sizes == {"user_id": 3, "video_id": 10, "author_id": 4, "music_id": 2}


def test_the_featuriser_maps_ids_through_the_vocabulary_and_unseen_ones_to_0(spark, exact, day0_vocabulary):
    rows = {r["impression_id"]: r.asDict() for r in featurise(spark, exact, 0, vocabulary=day0_vocabulary).collect()}
    index = {v: i + 1 for i, v in enumerate([10, 11, 12, 13, 14, 15, 90, 91, 92])}
    for key, r in rows.items():
        if key == "unknown":
            assert (r["cat_user_id"], r["cat_video_id"], r["cat_author_id"]) == (0, 0, 0)  # user 3, video 999
        elif r["video_id"] == 16:  # first seen the next day: unseen by this vocabulary
            assert r["cat_video_id"] == 0 and r["cat_author_id"] == 1  # its author (100) is known
        else:
            assert r["cat_video_id"] == index[r["video_id"]] and r["cat_user_id"] == r["user_id"]
    last = next(r for r in rows.values() if r["video_id"] == 16)
    # sequence items are the same indices, newest first, then the history's (90, 91, 92 -> 7, 8, 9)
    assert last["seq_click"] == [index[15], index[11], index[13], index[13]]
    assert rows[next(k for k, r in rows.items() if r.get("time_ms") == tl.DAY0 + 1_000)]["seq_click"] == [9, 8, 7]
    from features.examples import build_spec

    spec = build_spec(exact, day0_vocabulary)
    video = next(f for f in spec.categorical if f.name == "video_id")
    assert (video.vocab_size, video.vocabulary) == (10, "video_id") and spec.sequences[0].vocab_size == 10
    assert spec.options["vocabulary_version"] == 7
    hashed_tag = next(f for f in spec.categorical if f.name == "tag")
    assert hashed_tag.vocabulary is None


def test_an_item_unknown_to_the_vocabulary_is_left_out_of_sequences(spark, exact, day0_vocabulary):
    from features.vocabulary import Vocabulary

    without_13 = Vocabulary.of(day0_vocabulary.frame.where("NOT (field = 'video_id' AND value = '13')"))
    rows = featurise(spark, exact, 0, vocabulary=without_13).where("video_id = 16").collect()
    assert 4 not in rows[0]["seq_click"] and 0 not in rows[0]["seq_click"]  # 13 had index 4; never padding


def test_fields_above_the_size_threshold_stay_hashed(spark, exact):
    from features.vocabulary import Vocabulary, build_vocabulary

    log, _, videos, history = tl.bronze_frames(spark)
    small = Vocabulary.of(build_vocabulary(log, videos, history, replace(exact, exact_vocab_max_size=4)))
    assert set(small.sizes) == {"user_id", "author_id", "music_id"}  # 10 videos + 0 > 4


def test_exact_ids_without_a_vocabulary_are_a_clear_error(spark, exact):
    log, users, videos, _ = tl.bronze_frames(spark)
    from features.categorical import add_categorical

    with pytest.raises(ValueError, match="no vocabulary was given"):
        add_categorical(log, users, videos, exact)


def test_collision_report_counts_ids_sharing_a_bucket(spark, exact):
    from features.vocabulary import collision_report

    ids = spark.createDataFrame([("user_id", str(i)) for i in range(1, 101)], "field string, value string")
    crowded = collision_report(ids, replace(exact, user_id_buckets=11))["user_id"]  # 100 ids, 10 buckets
    assert crowded["ids"] == 100 and crowded["ids_sharing_a_bucket"] == 100 and crowded["collision_rate"] == 1.0
    roomy = collision_report(ids, replace(exact, user_id_buckets=10_000_000))["user_id"]
    assert roomy["collision_rate"] < 0.05
