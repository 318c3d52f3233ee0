"""Sequences: strictly before, newest first, truncated to N, seeded by history; order-proof."""
from __future__ import annotations

import math

import pytest

import feature_timeline as tl
from feature_timeline import SEQ_LEN, featurise

BEHAVIOURS = ("click", "long_view", "like")


@pytest.fixture(scope="module")
def item_of(spark, feature_settings):
    from pyspark.sql import functions as F

    from features.sequences import item_bucket

    videos = sorted({e[1] for e in tl.EVENTS} | {v for h in tl.HISTORY for s in h[2:] for v in s})
    df = spark.createDataFrame([(v,) for v in videos], "video_id bigint")
    mapping = dict(df.select("video_id", item_bucket(F.col("video_id"), feature_settings).alias("b")).collect())
    return mapping.__getitem__


def _logged(rows):
    return [r for k, r in rows.items() if k != "unknown"]


def test_every_sequence_matches_the_strictly_before_oracle(timeline_rows, item_of):
    checked = 0
    for row in _logged(timeline_rows):
        for b in BEHAVIOURS:
            items, gaps = tl.expected_sequence(row["user_id"], row["time_ms"], b, SEQ_LEN, item_of)
            assert row[f"seq_{b}"] == items, (row["user_id"], row["time_ms"], b)
            assert row[f"seq_{b}_gap"] == pytest.approx(gaps, rel=1e-6)
            checked += 1
    assert checked == len(tl.EVENTS) * 3


def test_equal_timestamps_and_duplicates_are_invisible(timeline_rows, item_of):
    at = {(r["user_id"], r["time_ms"] - tl.DAY0, r["video_id"]): r for r in _logged(timeline_rows)}
    hist = [item_of(v) for v in reversed(tl.HISTORY[0][2])]
    # both events of user 1 at 2000 ms see only the click at 1000 ms, then history
    for video in (11, 12):
        assert at[(1, 2_000, video)]["seq_click"] == ([item_of(10)] + hist)[:SEQ_LEN]
    # the exact duplicates at 3000 ms see the same, and never video 13 itself
    dups = [r for r in _logged(timeline_rows) if r["user_id"] == 1 and r["time_ms"] == tl.DAY0 + 3_000]
    assert len(dups) == 2 and dups[0]["seq_click"] == dups[1]["seq_click"]
    assert item_of(13) not in dups[0]["seq_click"][:3]
    # user 2's event at 3000 ms on video 13 does not see user 1's same-ms event, nor its own
    assert at[(2, 3_000, 13)]["seq_click"] == []
    # the first event of user 1 sees history only, newest first
    assert at[(1, 1_000, 10)]["seq_click"] == hist[:SEQ_LEN]


def test_newest_first_and_truncated(timeline_rows, item_of):
    row = next(r for r in _logged(timeline_rows) if r["video_id"] == 16)
    assert len(row["seq_click"]) == SEQ_LEN
    # newest by the end of playback: video 11 (2000 + 2500 ms) comes after 13 (3000 + 0)
    assert row["seq_click"][:3] == [item_of(15), item_of(11), item_of(13)]
    gaps = row["seq_click_gap"]
    assert gaps == sorted(gaps) and all(g >= 0 for g in gaps)


def test_input_order_does_not_change_any_row(spark, feature_settings, timeline_rows):
    shuffled = {r["impression_id"]: r.asDict() for r in featurise(spark, feature_settings, 1).collect()}
    assert shuffled == timeline_rows


def test_history_is_only_used_when_it_ended_strictly_before(spark, feature_settings):
    rows = featurise(spark, feature_settings, 0, history_rel=2_000).where("user_id = 1").collect()
    for r in rows:
        n_hist_visible = len(r["seq_like"]) - sum(
            1 for e in tl.EVENTS if e[0] == 1 and tl.visible_ms(e) < r["time_ms"] and e[5] == 1)
        assert n_hist_visible == (min(1, SEQ_LEN) if r["time_ms"] > tl.DAY0 + 2_000 else 0), r["time_ms"]


def test_a_label_is_visible_only_once_playback_ended(timeline_rows, item_of):
    """User 1 liked video 11 at 2000 ms and watched it until 4500 ms."""
    at = {(r["user_id"], r["time_ms"] - tl.DAY0, r["video_id"]): r for r in _logged(timeline_rows)}
    history_likes = [item_of(v) for v in reversed(tl.HISTORY[0][3])]
    assert at[(1, 3_000, 13)]["seq_like"] == history_likes[:SEQ_LEN]
    assert at[(1, 4_000, 14)]["seq_like"] == history_likes[:SEQ_LEN]
    assert at[(1, 5_000, 15)]["seq_like"][0] == item_of(11)
    assert at[(1, 5_000, 15)]["seq_like_gap"][0] == pytest.approx(math.log1p(0.5), rel=1e-6)  # 500 ms after the end
    # user 2's view of video 13 ends at 6000, exactly when its next row starts: not visible
    assert at[(2, 6_000, 10)]["seq_click"] == []
