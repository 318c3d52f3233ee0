"""bench.like_gauc: the single-feature AUC / gAUC table on a tiny hand-built day."""
import pandas as pd
import pytest

from bench.like_gauc import FEATURES, feature_table, rate_moves


def _day() -> pd.DataFrame:
    # two users, four impressions each; the user like rate drops a little after each non-like and
    # jumps after a like, so the liked impression holds the user's lowest rate of the day
    rows = []
    for user, base in ((1, 0.0), (2, 1.0)):
        rates = [base + 0.2, base + 0.1, base, base + 0.8]  # the like is the third impression
        for i, rate in enumerate(rates):
            rows.append({"user_id": user, "time_ms": 1000 * i, "date": "2022-05-03", "label_like": int(i == 2),
                         **{col: 0.0 for col in FEATURES.values()}, FEATURES["user like rate"]: rate})
    return pd.DataFrame(rows)


def test_a_rate_that_jumps_after_each_like_ranks_the_users_own_likes_last():
    table = feature_table(_day()).set_index("feature")
    assert table.loc["user like rate", "gauc"] == pytest.approx(0.0)  # every liked row below its user's others
    assert table.loc["user like rate", "users"] == 2 and table.loc["user like rate", "rows"] == 8
    assert table.loc["position in the user's day", "gauc"] == pytest.approx(2 / 3)
    after_like, after_none = rate_moves(_day())
    assert after_like == pytest.approx(0.8) and after_none == pytest.approx(-0.1)
