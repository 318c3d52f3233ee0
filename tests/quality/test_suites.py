"""Suites follow the feature spec, and the derived columns expose array faults as scalars."""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace

import great_expectations.expectations as gxe
import pytest

from features.spec import SequenceField, TaskField, demo_spec
from quality.suites import (
    CRITICAL,
    WARNING,
    TableSuite,
    bronze_log_suite,
    derived,
    examples_suite,
    expectation,
    prepare_for_validation,
    row_count_expectation,
)


# The unsized bands as literals (the bundled days: click 42-46 %, long_view 29-32 %, like 1.5-2.1 %)
RATE_BANDS = {"click": (0.15, 0.80), "long_view": (0.08, 0.65), "like": (0.002, 0.10)}


def _by_name(suite: TableSuite) -> dict:
    return {e.meta["name"]: e for e in suite.expectations}


def test_examples_suite_covers_every_spec_field():
    spec = demo_spec(seq_len=8)
    exps = _by_name(examples_suite(spec))
    for f in spec.categorical:
        rng = exps[f"expect_column_values_to_be_between({f.column})"]
        assert (rng.min_value, rng.max_value) == (0, f.vocab_size - 1)
        assert rng.meta["severity"] == CRITICAL
    for s in spec.sequences:
        assert exps[f"expect_column_values_to_be_between({derived(s.column, 'len')})"].max_value == s.max_len
        assert exps[f"expect_column_values_to_be_between({derived(s.column, 'max')})"].max_value == s.vocab_size - 1
        gap = exps[f"expect_column_values_to_be_between({derived(s.gap_column, 'min')})"]
        assert (gap.min_value, gap.strict_min) == (0, True) and gap.meta["column"] == s.gap_column
    for t in spec.binary_tasks:
        assert exps[f"expect_column_values_to_be_in_set({t.column})"].value_set == [0, 1]
        band = exps[f"expect_column_mean_to_be_between({t.column})"]
        assert (band.min_value, band.max_value) == RATE_BANDS[t.name]
    assert "expect_column_values_to_be_in_set(label_play_time__finite)" in exps
    assert "expect_column_values_to_be_unique(impression_id)" in exps
    columns = exps["expect_table_columns_to_match_set"].column_set
    assert set(columns) == {*spec.key_columns, *spec.feature_columns, *spec.label_columns}


def test_examples_suite_follows_a_changed_spec():
    spec = demo_spec(seq_len=8)
    grown = replace(
        spec,
        sequences=(*spec.sequences, SequenceField("follow", 77, max_len=3)),
        tasks=(*spec.tasks, TaskField("follow")),
    )
    exps = _by_name(examples_suite(grown))
    assert exps["expect_column_values_to_be_between(seq_follow__len)"].max_value == 3
    assert exps["expect_column_values_to_be_between(seq_follow__max)"].max_value == 76
    # a task without a configured band still may not be all-zero / all-one, as a warning
    band = exps["expect_column_mean_to_be_between(label_follow)"]
    assert (band.min_value, band.max_value, band.strict_min, band.meta["severity"]) == (0.0, 1.0, True, WARNING)
    assert examples_suite(grown).name != examples_suite(spec).name  # the suite names the spec fingerprint


def test_bronze_suite_guards_keys_labels_and_rates():
    exps = _by_name(bronze_log_suite())
    assert exps["expect_column_values_to_be_unique(impression_id)"].meta["severity"] == CRITICAL
    for c in ("impression_id", "user_id", "video_id", "time_ms"):
        assert f"expect_column_values_to_not_be_null({c})" in exps
    assert exps["expect_column_values_to_be_in_set(long_view)"].value_set == [0, 1]
    assert exps["expect_column_values_to_be_between(play_time_ms)"].min_value == 0
    assert exps["expect_column_values_to_be_between(tab)"].meta["severity"] == WARNING
    like = exps["expect_column_mean_to_be_between(is_like)"]
    assert like.min_value > 0 and like.max_value < 1  # catches all-zero and all-one likes
    assert like.min_value < 0.017 < like.max_value  # the real ~1.7 % rate passes


def test_suite_rejects_duplicate_names_and_unknown_severity():
    e = expectation(gxe.ExpectColumnValuesToNotBeNull, CRITICAL, "x is not null", column="x")
    with pytest.raises(ValueError, match="unique"):
        TableSuite("s", "t", (e, e.copy(deep=True)))
    bad = expectation(gxe.ExpectColumnValuesToNotBeNull, "fatal", "y is not null", column="y")
    with pytest.raises(ValueError, match="severity"):
        TableSuite("s", "t", (bad,))


def test_row_count_band_bounds():
    e = row_count_expectation(1000, 0.5, "2022-05-01")
    assert (e.min_value, e.max_value) == (500, 1500)
    assert "2022-05-01" in e.meta["check"]


def test_prepare_for_validation_derives_array_checks(spark):
    spec = demo_spec(seq_len=8)
    rows = [
        # seq_click, seq_click_gap, label_play_time
        ([3, 9, 1], [0.5, 1.0, 2.0], 1.5),  # clean
        ([], [], 0.0),  # empty sequence: no min/max, gap min null
        ([4, 2], [-0.7, 1.0], float("nan")),  # leaked event, NaN label
        ([7], [None, 2.0], None),  # null gap counts as -1; gap longer than sequence
    ]
    df = spark.createDataFrame(
        rows, "seq_click array<int>, seq_click_gap array<float>, label_play_time float"
    )
    out = prepare_for_validation(df, spec).collect()
    got = [
        (r["seq_click__len"], r["seq_click__min"], r["seq_click__max"], r["seq_click_gap__min"],
         r["seq_click_gap__size_diff"], r["label_play_time__finite"])
        for r in out
    ]
    assert got[0] == (3, 1, 9, 0.5, 0, True)
    assert got[1] == (0, None, None, None, 0, True)
    assert got[2][3] == pytest.approx(-0.7) and got[2][5] is False
    assert got[3][3] == -1.0 and got[3][4] == 1 and got[3][5] is None
    # sequences missing from the frame add no derived columns (the gate reports them instead)
    assert "seq_like__len" not in out[0].asDict()


def test_bronze_prepare_measures_hours_from_the_start_of_the_day(spark):
    """The log's days are Beijing (UTC+8) days: UTC midnight of 05-01 is 08:00 of the day."""
    suite = bronze_log_suite()
    day = dt.date(2022, 5, 1)
    midnight = int(dt.datetime(2022, 5, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
    df = spark.createDataFrame([(midnight + 90 * 60_000, day), (midnight + 5 * 86_400_000, day)], "time_ms long, date date")
    hours = [r["time_ms__hours_from_date"] for r in suite.prepare(df).collect()]
    assert hours[0] == pytest.approx(9.5) and math.isclose(hours[1], 128.0)
    band = _by_name(suite)["expect_column_values_to_be_between(time_ms__hours_from_date)"]
    assert (band.min_value, band.max_value) == (-3.0, 27.0)


def _binomial_pmf(n: int, p: float, i: int) -> float:
    return math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p))


def _at_most(n: int, p: float, k: int) -> float:
    """P(K <= k), K ~ Binomial(n, p), summed term by term (independent of scipy)."""
    return sum(_binomial_pmf(n, p, i) for i in range(k + 1))


def _more_than(n: int, p: float, k: int) -> float:
    return sum(_binomial_pmf(n, p, i) for i in range(k + 1, n + 1))


@pytest.mark.parametrize("n, band, expected_counts", [
    (33, (0.002, 0.10), (0, 11)),  # a small day: no like at all is honest
    (1000, (0.15, 0.80), (110, 846)),
    (17_000, (0.002, 0.10), (15, 1847)),  # a real day: all-zero likes still fail
])
def test_rate_band_is_a_binomial_interval_of_the_partition_size(n, band, expected_counts):
    from quality.suites import RATE_BAND_TAIL, binomial_band

    lo, hi = binomial_band(n, *band)
    assert (lo * n, hi * n) == pytest.approx(expected_counts)
    k_lo, k_hi = expected_counts
    assert RATE_BAND_TAIL == 1e-4
    # k_lo is the first count not in the lower tail of the band's lowest rate ...
    assert (k_lo == 0 or _at_most(n, band[0], k_lo - 1) < 1e-4) and _at_most(n, band[0], k_lo) >= 1e-4
    # ... and k_hi the last count not in the upper tail of its highest rate
    assert _more_than(n, band[1], k_hi) <= 1e-4 < _more_than(n, band[1], k_hi - 1)


def test_sizing_a_suite_rewrites_only_its_rate_bands():
    from quality.suites import sized_for

    suite = bronze_log_suite()
    sized = sized_for(suite, 33)
    before, after = _by_name(suite), _by_name(sized)
    assert list(before) == list(after)
    like = after["expect_column_mean_to_be_between(is_like)"]
    assert (like.min_value, like.max_value) == (0.0, pytest.approx(11 / 33)) and like.meta["severity"] == CRITICAL
    assert "at 33 rows" in like.meta["check"]
    assert after["expect_column_values_to_be_unique(impression_id)"] is before["expect_column_values_to_be_unique(impression_id)"]
