"""Point-in-time statistics: the same strict cut as the sequences, bucketed as documented."""
from __future__ import annotations

import math

import pytest

import feature_timeline as tl
from features.statistics import COUNT_BUCKETS, LOGIT_RANGE, RATE_PRIORS


def count_bucket(n: int) -> int:
    return min(1 + math.floor(math.log2(n + 1) + 1e-9), COUNT_BUCKETS - 1)


def rate_bucket(pos: int, n: int, prior: float, strength: float, buckets: int) -> int:
    r = (pos + prior * strength) / (n + strength)
    r = min(max(r, 1e-6), 1 - 1e-6)
    lo, hi = LOGIT_RANGE
    return min(max(math.floor((math.log(r / (1 - r)) - lo) / (hi - lo) * buckets), 0), buckets - 1) + 1


def _expected(entity_of, key, t):
    earlier = [e for e in tl.EVENTS if entity_of(e) == key and tl.visible_ms(e) < t]
    return len(earlier), sum(e[3] for e in earlier), sum(e[4] for e in earlier), sum(e[5] for e in earlier)


def test_user_video_author_stats_count_only_strictly_earlier_events(timeline_rows, feature_settings):
    author = dict(tl.VIDEOS)
    entities = {
        "user": (lambda e: e[0], lambda r: r["user_id"]),
        "video": (lambda e: e[1], lambda r: r["video_id"]),
        "author": (lambda e: author[e[1]], lambda r: author[r["video_id"]]),
    }
    fs = feature_settings
    for key, row in timeline_rows.items():
        if key == "unknown":
            continue
        for entity, (of_event, of_row) in entities.items():
            n, clicks, lvs, likes = _expected(of_event, of_row(row), row["time_ms"])
            assert row[f"cat_{entity}_n_prior"] == count_bucket(n), (entity, row["time_ms"])
            for task, pos in (("click", clicks), ("long_view", lvs), ("like", likes)):
                want = rate_bucket(pos, n, RATE_PRIORS[task], fs.rate_prior_strength, fs.rate_buckets)
                assert row[f"cat_{entity}_{task}_rate"] == want, (entity, task, row["time_ms"])


def test_hand_checked_counts(timeline_rows):
    by = {(r["user_id"], r["time_ms"] - tl.DAY0, r["video_id"]): r for k, r in timeline_rows.items() if k != "unknown"}
    assert by[(1, 1_000, 10)]["cat_user_n_prior"] == count_bucket(0) == 1
    # 1000 and 2000 (video 12); not video 11, whose playback ends at 4500; not the duplicate
    assert by[(1, 3_000, 13)]["cat_user_n_prior"] == count_bucket(2)
    assert by[(1, 5_000, 15)]["cat_user_n_prior"] == count_bucket(5)  # 11 counts once ended; 14 ends at 5000
    assert by[(2, 3_000, 13)]["cat_video_n_prior"] == count_bucket(0)  # user 1's same-ms view is invisible
    assert by[(2, 6_000, 10)]["cat_video_n_prior"] == count_bucket(2)
    # user 2's view of video 13 ended at exactly 6000: invisible to its own next row at 6000
    assert by[(2, 6_000, 10)]["cat_user_n_prior"] == count_bucket(1)


def test_unknown_author_is_bucket_zero(timeline_rows):
    row = timeline_rows["unknown"]
    assert all(row[f"cat_author_{s}"] == 0 for s in ("n_prior", "click_rate", "long_view_rate", "like_rate"))
    assert row["cat_user_n_prior"] == count_bucket(0) and row["cat_video_n_prior"] == count_bucket(0)


def test_labels_count_from_the_end_of_playback_and_the_switch_restores_the_old_cut(spark, feature_settings):
    """Video 11 (liked, 2000 + 2500 ms of playback) is invisible to user 1's rows at 3000 and 4000 and
    visible at 5000; with ``label_delay=False`` it is visible from 3000 on (the old, leaky cut)."""
    from dataclasses import replace

    from feature_timeline import featurise

    fs = feature_settings
    def like_bucket(likes, n):
        return rate_bucket(likes, n, RATE_PRIORS["like"], fs.rate_prior_strength, fs.rate_buckets)

    delayed = {r["time_ms"] - tl.DAY0: r for r in featurise(spark, fs, 0).where("user_id = 1").collect()}
    assert delayed[3_000]["cat_user_like_rate"] == like_bucket(0, 2)
    assert delayed[4_000]["cat_user_like_rate"] == like_bucket(0, 4)
    assert delayed[5_000]["cat_user_like_rate"] == like_bucket(1, 5)
    leaky = {r["time_ms"] - tl.DAY0: r for r in featurise(spark, replace(fs, label_delay=False), 0)
             .where("user_id = 1").collect()}
    assert leaky[3_000]["cat_user_like_rate"] == like_bucket(1, 3)
    assert leaky[3_000]["cat_user_like_rate"] != delayed[3_000]["cat_user_like_rate"]


def test_finer_buckets_and_raw_dense_values(spark, feature_settings):
    """k buckets per doubling of the count, 100 rate buckets, and the raw log1p(n) / logit(rate) beside them."""
    from dataclasses import replace

    from feature_timeline import featurise

    fs = replace(feature_settings, count_buckets_per_doubling=4, rate_buckets=100, dense_stats=True)
    rows = {r["impression_id"]: r.asDict() for r in featurise(spark, fs, 0).collect()}
    author = dict(tl.VIDEOS)
    for key, row in rows.items():
        if key == "unknown":
            assert row["dense_author_n_prior_log1p"] == 0.0 and row["cat_author_n_prior"] == 0
            continue
        n, clicks, _, likes = _expected(lambda e: author[e[1]], author[row["video_id"]], row["time_ms"])
        assert row["cat_author_n_prior"] == min(1 + math.floor(4 * math.log2(n + 1) + 1e-9), 124)
        assert row["dense_author_n_prior_log1p"] == pytest.approx(math.log1p(n), rel=1e-6)
        rate = (likes + RATE_PRIORS["like"] * fs.rate_prior_strength) / (n + fs.rate_prior_strength)
        assert row["dense_author_like_rate_logit"] == pytest.approx(math.log(rate / (1 - rate)), rel=1e-5)
        assert row["cat_author_like_rate"] == rate_bucket(likes, n, RATE_PRIORS["like"], fs.rate_prior_strength, 100)
