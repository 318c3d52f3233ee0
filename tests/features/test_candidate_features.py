"""Scoring features computed once per key equal the per-row training features (no train/serve skew)."""
from __future__ import annotations

import feature_timeline as tl
from features.candidate_features import featurise_candidates
from features.candidates import PACKED_CANDIDATES
from features.examples import build_examples, build_features

T1 = tl.DAY0 + 3_000  # the millisecond of user 1's equal-timestamp events and exact duplicate
T2 = tl.DAY0 + 86_400_000 + 10  # the next day: every earlier event visible
CANDIDATES = [  # request, user, video, request time, tab
    ("r1", 1, 10, T1, 1), ("r1", 1, 14, T1, None), ("r1", 1, 999, T1, 1),  # 999: unknown video
    ("r2", 2, 13, T1, 2), ("r2", 2, 10, T1, 2),                            # user 2: nothing strictly before T1
    ("r3", 1, 16, T2, None), ("r3", 1, 10, T2, None),
    ("r4", 77, 12, T2, 1),                                                 # unknown user
]
SCHEMA = "request_id string, user_id bigint, video_id bigint, request_time_ms bigint, tab int"


def test_per_key_features_equal_the_per_row_training_features(spark, feature_settings):
    from pyspark.sql import functions as F

    log, users, videos, history = tl.bronze_frames(spark)
    cands = spark.createDataFrame(CANDIDATES, SCHEMA).withColumn("impression_id", F.lit(None).cast("string"))
    parts = featurise_candidates(cands, log, users, videos, history, feature_settings).cache()
    spec = parts.spec
    served = {(r["request_id"], r["video_id"]): r.asDict() for r in parts.flat().collect()}
    reference = build_features(cands.withColumnRenamed("request_time_ms", "time_ms"), log, users, videos, history,
                               feature_settings)
    expected = {(r["request_id"], r["video_id"]): r.asDict() for r in reference.collect()}
    assert served.keys() == expected.keys() and len(served) == len(CANDIDATES)
    mismatches = [(k, c) for k in expected for c in spec.feature_columns if served[k][c] != expected[k][c]]
    assert mismatches == []
    # the comparison has teeth: the two requests of user 1 see different histories
    assert served[("r1", 10)]["seq_click"] != served[("r3", 10)]["seq_click"] and served[("r3", 10)]["seq_click"]
    assert served[("r1", 10)]["cat_video_n_prior"] != served[("r3", 10)]["cat_video_n_prior"]

    # the packed layout holds the same values, a request split over rows of at most 2 candidates
    packed = parts.packed(max_candidates_per_row=2).collect()
    assert sorted(len(r[PACKED_CANDIDATES]) for r in packed) == [1, 1, 2, 2, 2]
    for r in packed:
        for cand in r[PACKED_CANDIDATES]:
            row = expected[(r["request_id"], cand["video_id"])]
            values = {**{c: r[c] for c in r.asDict() if c not in (PACKED_CANDIDATES, "request_id")}, **cand.asDict()}
            assert {c: values[c] for c in spec.feature_columns} == {c: row[c] for c in spec.feature_columns}

    report = parts.input_report()
    # ids hash whether or not the user / video is known (0 is for null only); counted per candidate
    assert report == {"reserved_user_id": 0, "reserved_video_id": 0, "reserved_hour": 0, "reserved_tab": 3,
                      "all_sequences_empty": 3}  # null tab: r1's v14 and r3's two; no history: r2's two and r4's
    parts.unpersist()


def test_a_candidate_at_a_logged_impressions_time_gets_its_examples_features(spark, feature_settings):
    """Train/serve equality: score-time features of a logged impression replayed as a candidate
    (request time = impression time) are exactly its ``examples`` row."""
    from pyspark.sql import functions as F

    log, users, videos, history = tl.bronze_frames(spark)
    examples, spec = build_examples(log, users, videos, history, feature_settings, dates=["2022-04-25"])
    cands = log.where(F.col("date") == F.lit("2022-04-25").cast("date")).select(
        F.col("impression_id").alias("request_id"), "impression_id", "user_id", "video_id",
        F.col("time_ms").alias("request_time_ms"), "tab")
    served = featurise_candidates(cands, log, users, videos, history, feature_settings).flat()
    got = {r["impression_id"]: r.asDict() for r in served.collect()}
    want = {r["impression_id"]: r.asDict() for r in examples.collect()}
    assert got.keys() == want.keys() and len(got) == len([e for e in tl.EVENTS if e[2] < 86_400_000])
    assert [(i, c) for i in want for c in spec.feature_columns if got[i][c] != want[i][c]] == []
