"""Retrieval candidates: channels on a hand-built timeline, the strict cut at the request time,
the label delay (labels known when playback ends), deduplication, exclusion of seen videos, the
popularity fallback, the fused score by hand."""
from __future__ import annotations

import datetime as dt

import pytest

from conf.schemas import CANDIDATES_SCHEMA
from conf.settings import RetrievalSettings
from features.retrieval import active_users, make_requests, request_time_ms, retrieval_candidates

DATE = "2022-05-04"
T = request_time_ms(DATE)
H, MIN = 3_600_000, 60_000
RS = RetrievalSettings(candidates_per_request=6, global_margin=2)
# video -> author: A wrote v4, v5, v6, v12; B wrote v1; C wrote the rest
AUTHORS = {1: "B", 2: "C", 3: "C", 4: "A", 5: "A", 6: "A", 7: "C", 8: "C", 9: "C", 10: "C", 11: "C", 12: "A"}


def ev(user, video, t, click=0, long_view=0, like=0, play=0):
    local_day = dt.date(1970, 1, 1) + dt.timedelta(milliseconds=t + 8 * H)
    return (user, video, t, click, long_view, like, local_day, play)


PAST = [
    ev(2, 1, T - 3 * H, click=1), ev(2, 2, T - 3 * H + 10 * MIN, click=1),      # co-visit v1-v2
    ev(5, 1, T - 5 * H, click=1), ev(5, 2, T - 5 * H + MIN, click=1),           # v1-v2 again (weight 2)
    ev(4, 1, T - 2 * H, click=1), ev(4, 3, T - 2 * H + 5 * MIN, click=1),       # v1-v3
    ev(1, 1, T - H, click=1), ev(1, 4, T - 30 * MIN, click=1),                  # user 1's seeds, authors B and A
    ev(6, 5, T - 10 * MIN), ev(6, 6, T - 20 * H),                               # author A's other videos shown
    *[ev(6, 7, T - 6 * H + i, long_view=1) for i in range(10)],                 # v7 trends
    *[ev(6, 8, T - 48 * H + i, click=1) for i in range(20)],                    # v8 is popular (not in the last 24 h)
]
FUTURE = [  # at or after the request time: none of them may change anything
    ev(1, 9, T, click=1), ev(1, 2, T),                                          # a seed and a "seen" video at T
    ev(7, 1, T + 1_000, click=1), ev(7, 11, T + 2_000, click=1),                # a co-visit edge v1-v11
    ev(6, 12, T),                                                               # author A shows v12
    *[ev(6, 11, T + i, long_view=1) for i in range(30)],                        # v11 would trend
    *[ev(6, 12, T + 5 * MIN + i, click=1) for i in range(30)],                  # v12 would be popular
    ev(3, 3, T, click=1),                                                       # user 3 "sees" v3
]


def frames(spark, events, history_last_u3=T):
    e = spark.createDataFrame(events, "user_id bigint, video_id bigint, time_ms bigint, is_click int, "
                                      "long_view int, is_like int, date date, play_time_ms bigint")
    videos = spark.createDataFrame([(v, ord(a)) for v, a in AUTHORS.items()], "video_id bigint, author_id bigint")
    history = spark.createDataFrame(
        [(1, T - 100 * 86_400_000, [10]), (3, history_last_u3, [3])],  # user 3's history ends AT T: not before
        "user_id bigint, last_time_ms bigint, watch_seq array<bigint>")
    return e, videos, history


def run(spark, events, rs=RS, users=(1, 3), label_delay=None):
    e, videos, history = frames(spark, events)
    requests = make_requests(spark.createDataFrame([(u,) for u in users], "user_id bigint"), DATE, T)
    rows = retrieval_candidates(e, videos, requests, rs, history, label_delay=label_delay).collect()
    return {(r["user_id"], r["video_id"]): r for r in rows}, rows


@pytest.fixture(scope="module")
def past(spark):
    return run(spark, PAST)


def test_candidates_honour_the_contract_dedup_and_n(past):
    by_key, rows = past
    assert len(by_key) == len(rows)  # one row per (request, video)
    assert {r["source"] for r in rows} == {"retrieval"}
    assert all(r["impression_id"] is None and r["request_time_ms"] == T for r in rows)
    assert all(r["date"] == dt.date(2022, 5, 4) for r in rows)
    assert list(rows[0].asDict()) == [f.name for f in CANDIDATES_SCHEMA.fields]
    per_user = {u: sum(1 for k in by_key if k[0] == u) for u in (1, 3)}
    assert per_user == {1: 6, 3: 6}  # user 1: exactly 6 unseen proposals; user 3: 8, cut to N = 6
    assert all(r["channels"] == sorted(set(r["channels"])) for r in rows)


def test_each_channel_finds_what_the_timeline_says(past):
    by_key, _ = past
    assert "covisit" in by_key[(1, 2)]["channels"] and "covisit" in by_key[(1, 3)]["channels"]
    assert "author" in by_key[(1, 5)]["channels"]
    assert "trending" in by_key[(3, 7)]["channels"] and "popular" in by_key[(3, 2)]["channels"]


def test_seen_videos_are_excluded_unless_kept(spark, past):
    by_key, _ = past
    assert (1, 1) not in by_key and (1, 4) not in by_key  # user 1 clicked v1 and v4 before T
    assert (1, 10) not in by_key  # pre-window history
    kept, _ = run(spark, PAST, RetrievalSettings(candidates_per_request=20, global_margin=2, exclude_seen=False))
    assert (1, 1) in kept and (1, 4) in kept


def test_a_user_without_history_gets_the_popularity_channel(past):
    by_key, _ = past
    user3 = [r for (u, _), r in by_key.items() if u == 3]
    assert {c for r in user3 for c in r["channels"]} == {"popular", "trending"}
    # v3: trending rank 2 (after v7; 6.2/21 ties v4..v6, smaller id first), popular rank 4 (20, 4, 2, 1 clicks)
    assert by_key[(3, 3)]["channels"] == ["popular", "trending"]
    assert by_key[(3, 3)]["retrieval_score"] == pytest.approx(0.5 / 62 + 0.25 / 64)
    # v8 is popular only (not shown in the last 24 h): 0.25 / 61 ranks below the 6 best
    assert (3, 8) not in by_key


def test_fused_score_by_hand(past):
    """v2 for user 1, ranks after excluding v1 and v4: covisit 1 (1.8 vs v3's 0.9); popular 2
    (v8 20 clicks, v2 2); trending 5 (v7 .54, then v3, v5, v6 at 6.2/21, then v2 at 6.2/22)."""
    by_key, _ = past
    assert by_key[(1, 2)]["channels"] == ["covisit", "popular", "trending"]
    assert by_key[(1, 2)]["retrieval_score"] == pytest.approx(1.0 / 61 + 0.25 / 62 + 0.5 / 65)


def test_nothing_at_or_after_the_request_time_is_used(spark, past):
    _, before = past
    _, with_future = run(spark, PAST + FUTURE)
    key = lambda r: (r["user_id"], r["video_id"])  # noqa: E731
    assert sorted((key(r), r["channels"], r["retrieval_score"]) for r in with_future) == \
        sorted((key(r), r["channels"], r["retrieval_score"]) for r in before)


def test_active_users_are_the_previous_days(spark):
    e, _, _ = frames(spark, PAST + FUTURE)
    # local day before 2022-05-04: the events between T - 24 h and T
    expected = sorted({r[0] for r in PAST if T - 24 * H <= r[2] < T})
    assert sorted(r[0] for r in active_users(e, DATE).collect()) == expected
    requests = make_requests(active_users(e, DATE), DATE, T).collect()
    assert len({r["request_id"] for r in requests}) == len(expected)


def test_a_request_gets_the_users_usual_tab_else_the_days(spark):
    from pyspark.sql import functions as F

    from features.retrieval import request_tabs

    tabs = {(1, 1): 4, (1, 4): 4, (2, 1): 1, (2, 2): 1, (5, 1): 1, (5, 2): 2}  # (user, video) -> tab
    e, _, _ = frames(spark, PAST + [ev(1, 9, T, click=1)] * 3)  # user 1 at T: not before, ignored
    tab = F.coalesce(*[F.when((F.col("user_id") == u) & (F.col("video_id") == v), F.lit(t)) for (u, v), t in tabs.items()],
                     F.when(F.col("time_ms") >= T, F.lit(9)), F.lit(None).cast("int"))
    requests = make_requests(spark.createDataFrame([(1,), (3,)], "user_id bigint"), DATE, T)
    got = {r["request_id"]: r["tab"] for r in request_tabs(e.withColumn("tab", tab), requests, RS).collect()}
    by_user = {r["user_id"]: got[r["request_id"]] for r in requests.collect()}
    # user 1: tab 4 twice; user 3 has no impression: the day's most frequent tab (1: three times, 4 twice, 2 once)
    assert by_user == {1: 4, 3: 1}


# -- the label delay: an event's labels are known when its playback ends -----------------------------
LATE, EARLY = 45 * MIN, 5 * MIN  # every probe below starts 10..40 min before T: ends after / before T


def delay_timeline(play, labels=True):
    """Settled events (play 0) and four probes of play time ``play``; ``labels=False`` zeroes the
    probes' labels (an impression without labels)."""
    on = int(labels)
    return [
        ev(2, 4, T - 3 * H, click=1), ev(2, 2, T - 3 * H + 10 * MIN, click=1),  # edge v4-v2
        ev(1, 4, T - 10 * MIN, click=on, play=play),                          # probe A: user 1's seed, author A
        ev(6, 5, T - H),                                                      # author A shows v5
        ev(3, 3, T - 40 * MIN, click=1), ev(3, 7, T - 20 * MIN, click=on, play=play),  # probe B: edge v3-v7
        ev(4, 3, T - 5 * H, click=1),                                         # user 4's seed v3
        ev(5, 2, T - 5 * H, like=1), ev(6, 8, T - 10 * MIN, play=play),       # user 5 likes author C; C shows v8
        ev(6, 9, T - 30 * MIN, long_view=on, play=play),                      # probe C: v9's long view
        ev(7, 10, T - 10 * MIN, click=on, play=play),                         # probe D: a click on v10
    ]


def signals(spark, events, label_delay):
    """Each label-based signal of the channels, and the seen videos, keyed by user / video."""
    from features.retrieval import author_channel, click_counts, covisit_channel, seen_videos, trending_videos

    e, videos, _ = frames(spark, events)
    requests = make_requests(spark.createDataFrame([(u,) for u in (1, 3, 4, 5)], "user_id bigint"), DATE, T)
    user = {r["request_id"]: r["user_id"] for r in requests.collect()}
    times = requests.select("request_time_ms").distinct()
    per_request = lambda df: {(user[r["request_id"]], r["video_id"]): r["channel_score"]  # noqa: E731
                              for r in df.collect()}
    return {
        "covisit": per_request(covisit_channel(e, requests, RS, label_delay)),
        "author": per_request(author_channel(e, videos, requests, RS, label_delay)),
        "trending": {r["video_id"]: r["channel_score"]
                     for r in trending_videos(e, times, RS, 50, label_delay).collect()},
        "clicks": {r["video_id"]: r["clicks"] for r in click_counts(e, times, 7, label_delay).collect()},
        "seen": {(user[r["request_id"]], r["video_id"]) for r in seen_videos(e, requests).collect()},
    }


def test_labels_whose_playback_ends_after_the_request_time_are_not_used(spark):
    from features.statistics import RATE_PRIORS

    late, early = signals(spark, delay_timeline(LATE), None), signals(spark, delay_timeline(EARLY), None)
    p, s = RATE_PRIORS["long_view"], RS.trending_prior_strength
    # playback ended before T: every probe's labels count
    assert {(1, 2), (4, 7)} <= set(early["covisit"])                    # seed v4 -> v2; edge v3-v7
    assert (1, 5) in early["author"] and (5, 8) in early["author"]      # user 1 engaged author A (v4)
    assert early["trending"][9] == pytest.approx((1 + p * s) / (1 + s))
    assert early["clicks"][10] == 1 and early["clicks"][4] == 2
    # playback ends after T: no seed, no edge, no engagement, no long view, no click
    assert not any(u == 1 for u, _ in late["covisit"]) and (4, 7) not in late["covisit"]
    assert not any(u == 1 for u, _ in late["author"])
    assert late["author"][(3, 8)] == early["author"][(3, 8)] / 2      # user 3: author C engaged once, not twice
    assert late["trending"][9] == pytest.approx(p * s / (1 + s))       # the impression counts, not its long view
    assert 10 not in late["clicks"] and late["clicks"][4] == 1
    # the fact of an impression is known when it happens: author C's v8, user 1's seen v4
    user5 = lambda sig: {k: v for k, v in sig["author"].items() if k[0] == 5}  # noqa: E731
    assert (5, 8) in late["author"] and user5(late) == user5(early)
    assert late["seen"] == early["seen"] and (1, 4) in late["seen"]
    # label_delay off: the old cut at time_ms, playback ignored
    assert signals(spark, delay_timeline(LATE), False) == signals(spark, delay_timeline(EARLY), False) == early


def test_a_late_event_counts_as_an_impression_without_labels(spark):
    users = (1, 3, 4, 5)

    def key(rows):
        return sorted((r["user_id"], r["video_id"], r["channels"], r["retrieval_score"]) for r in rows)
    late = key(run(spark, delay_timeline(LATE), users=users)[1])
    assert late == key(run(spark, delay_timeline(LATE, labels=False), users=users)[1])
    assert late != key(run(spark, delay_timeline(EARLY), users=users)[1])
    assert key(run(spark, delay_timeline(LATE), users=users, label_delay=False)[1]) == \
        key(run(spark, delay_timeline(EARLY), users=users)[1])


def test_the_label_delay_needs_play_time(spark):
    e, videos, _ = frames(spark, PAST)
    requests = make_requests(spark.createDataFrame([(1,)], "user_id bigint"), DATE, T)
    with pytest.raises(ValueError, match="play_time_ms"):
        retrieval_candidates(e.drop("play_time_ms"), videos, requests, RS)
    assert retrieval_candidates(e.drop("play_time_ms"), videos, requests, RS, label_delay=False).count() > 0
