"""Expectation suites for the tables the pipeline gates: ``bronze_log`` and ``examples``.

A suite is a list of great-expectations 1.x expectations plus the ``prepare`` step that adds the
derived columns those expectations need. GX has no expectations over array elements, so the
examples suite checks sequences through derived scalar columns (length, min/max item, min gap,
gap-array length mismatch) computed with Spark array functions *before* GX sees the frame; a bad
array then shows up as a bad scalar with its offending value in GX's ``partial_unexpected_list``.

Each expectation carries ``meta``:

- ``name``: unique within the suite (results are matched back by it, GX reorders them);
- ``severity``: ``critical`` stops the pipeline, ``warning`` is recorded and lets it continue;
- ``column``: the table column the check is about (a derived column points at its source);
- ``check``: one human sentence for messages and data docs.

The examples suite is generated from a :class:`features.spec.FeatureSpec`, so a new categorical,
sequence or task in the spec is guarded without touching this file.

>>> from features.spec import demo_spec
>>> suite = examples_suite(demo_spec(seq_len=8))
>>> suite.table_name, len(suite.expectations) > 40
('examples', True)
>>> for e in suite.expectations:
...     if e.meta["column"] == "seq_click_gap":
...         print(e.meta["severity"], e.meta["name"])
critical expect_column_values_to_not_be_null(seq_click_gap)
critical expect_column_values_to_be_in_set(seq_click_gap__size_diff)
critical expect_column_values_to_be_between(seq_click_gap__min)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import great_expectations.expectations as gxe
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from conf.schemas import LOG_BINARY_LABELS, LOG_NON_NEGATIVE, LOG_REQUIRED, RAW_LOG_SCHEMA
from conf.tables import BRONZE_LOG, EXAMPLES
from features.contracts import hours_from_local_day, local_day_bounds_hours
from features.spec import FeatureSpec

CRITICAL = "critical"
WARNING = "warning"
SEVERITIES = (CRITICAL, WARNING)

# Sane bands for label positive *rates*, keyed by task name. The bundled KuaiRand days sit at
# click 42-46 %, long_view 29-32 %, like 1.5-2.1 %; the bands are several times wider than the
# day-to-day spread. A partition is judged by its positive *count*: the gate widens a band to the
# counts a partition of its size can honestly show when the true rate lies inside it (binomial,
# RATE_BAND_TAIL per side, :func:`binomial_band`). 33 rows at a 1.7 % like rate expect 0.6 likes,
# so none is fine there, while a 17,000-row day with no like (or no click at 60 rows) still fails.
POSITIVE_RATE_BANDS: dict[str, tuple[float, float]] = {
    "click": (0.15, 0.80),
    "long_view": (0.08, 0.65),
    "like": (0.002, 0.10),
}
RATE_BAND_TAIL = 1e-4  # chance that a partition whose rate is at the band's edge fails anyway
# The bronze column holding each task's label.
BRONZE_LABEL_OF_TASK: dict[str, str] = {"click": "is_click", "long_view": "long_view", "like": "is_like"}

TAB_DOMAIN = (0, 15)  # KuaiRand tabs seen: 0..14; one spare value before calling it corrupt
HOURMIN_DOMAIN = (0, 2359)
# time_ms must fall in its date partition's day (the log's Beijing days), give or take the ingest
# contract's tolerance (conf.tables.LOG_DATE_TOLERANCE_HOURS): ingest quarantines the rest, so a
# failure here means bronze_log was written some other way (mis-partitioned or future events).
TIME_MS_HOURS_FROM_DATE = local_day_bounds_hours()


@dataclass(frozen=True)
class TableSuite:
    """The expectations for one table and the step that derives the columns they read."""

    name: str
    table_name: str
    expectations: tuple[gxe.Expectation, ...]
    prepare: Callable[[DataFrame], DataFrame] = field(default=lambda df: df, compare=False)

    def __post_init__(self) -> None:
        names = [e.meta.get("name") for e in self.expectations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if None in names or duplicates:
            raise ValueError(f"suite {self.name}: every expectation needs a unique meta name; duplicates {duplicates}")
        bad = [n for n, e in zip(names, self.expectations) if e.meta.get("severity") not in SEVERITIES]
        if bad:
            raise ValueError(f"suite {self.name}: severity must be one of {SEVERITIES} for {bad}")

    def with_expectations(self, *extra: gxe.Expectation) -> "TableSuite":
        return TableSuite(self.name, self.table_name, (*self.expectations, *extra), self.prepare)

    def names(self) -> list[str]:
        return [e.meta["name"] for e in self.expectations]


def expectation(
    cls: type[gxe.Expectation], severity: str, check: str, *, name: str | None = None,
    meta_column: str | None = None, **kwargs: Any,
) -> gxe.Expectation:
    """Build a GX expectation with our meta. The default name is ``<gx type>(<gx column>)``,
    which is what failure messages and the quality_results table show."""
    gx_column = kwargs.get("column")
    exp = cls(**kwargs)
    name = name or (f"{exp.expectation_type}({gx_column})" if gx_column else exp.expectation_type)
    exp.meta = {"name": name, "severity": severity, "column": meta_column or gx_column or "", "check": check}
    return exp


# ---------------------------------------------------------------------------------------------
# Derived columns (the array checks GX cannot express)
# ---------------------------------------------------------------------------------------------

def derived(source: str, stat: str) -> str:
    """Name of a derived column: ``seq_click__len``, ``seq_click_gap__min``, ..."""
    return f"{source}__{stat}"


def _gap_min(gaps: Column) -> Column:
    """Smallest gap, with null or NaN gaps counted as -1 so they fail the ``>= 0`` check too."""
    cleaned = F.transform(gaps, lambda x: F.when(x.isNull() | F.isnan(x), F.lit(-1.0)).otherwise(x.cast("double")))
    return F.array_min(cleaned)


def prepare_for_validation(df: DataFrame, spec: FeatureSpec) -> DataFrame:
    """Add the derived scalar columns the examples suite checks; source columns stay untouched.

    Per sequence ``seq_<name>``: ``__len`` (size), ``__min``/``__max`` (smallest/largest item;
    null for an empty array, which GX skips), ``seq_<name>_gap__min`` (smallest gap, null/NaN
    counted as -1), ``seq_<name>_gap__size_diff`` (gap length minus sequence length). Per
    regression task: ``label_<name>__finite``. A missing source column adds nothing: the suite's
    column-set expectation names it, and the checks on its derived columns report "could not
    evaluate" (which fails the gate).
    """
    present = set(df.columns)
    new: list[Column] = []
    for s in spec.sequences:
        if s.column in present:
            seq = F.col(s.column)
            new += [
                F.size(seq).alias(derived(s.column, "len")),
                F.array_min(seq).alias(derived(s.column, "min")),
                F.array_max(seq).alias(derived(s.column, "max")),
            ]
        if s.gap_column in present:
            gap = F.col(s.gap_column)
            new.append(_gap_min(gap).alias(derived(s.gap_column, "min")))
            if s.column in present:
                new.append((F.size(gap) - F.size(F.col(s.column))).alias(derived(s.gap_column, "size_diff")))
    for t in spec.tasks:
        if t.kind == "regression" and t.column in present:
            x = F.col(t.column).cast("double")
            new.append(
                F.when(x.isNull(), F.lit(None))
                .otherwise(~(F.isnan(x) | (F.abs(x) == F.lit(math.inf))))
                .alias(derived(t.column, "finite"))
            )
    return df.select("*", *new) if new else df


def _bronze_prepare(df: DataFrame) -> DataFrame:
    """Hours from the start of the ``date`` partition's day (UTC+8, the log's days) to ``time_ms``."""
    if not {"time_ms", "date"} <= set(df.columns):
        return df
    return df.withColumn(derived("time_ms", "hours_from_date"), hours_from_local_day(F.col("date"), F.col("time_ms")))


# ---------------------------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------------------------

def _key_expectations(keys: tuple[str, ...]) -> list[gxe.Expectation]:
    if len(keys) == 1:
        return [expectation(gxe.ExpectColumnValuesToBeUnique, CRITICAL, f"{keys[0]} is unique", column=keys[0])]
    return [expectation(
        gxe.ExpectCompoundColumnsToBeUnique, CRITICAL, f"({', '.join(keys)}) is unique",
        meta_column=",".join(keys), name=f"expect_compound_columns_to_be_unique({','.join(keys)})", column_list=list(keys),
    )]


def binomial_band(n: int, rate_lo: float, rate_hi: float, tail: float = RATE_BAND_TAIL) -> tuple[float, float]:
    """The positive rates (count / n) that ``n`` rows can show, each tail below ``tail``, when the
    true rate lies in ``[rate_lo, rate_hi]``: from the ``tail`` quantile of Binomial(n, rate_lo) to
    the ``1 - tail`` quantile of Binomial(n, rate_hi).

    >>> binomial_band(33, 0.002, 0.10)  # 0 to 11 likes of 33
    (0.0, 0.3333333333333333)
    """
    from scipy.stats import binom

    return float(binom.ppf(tail, n, rate_lo)) / n, float(binom.ppf(1 - tail, n, rate_hi)) / n


def _rate_check(column: str, lo: float, hi: float, n: int | None = None) -> str:
    if n is None:
        return f"positive rate of {column} within [{lo}, {hi}]"
    band_lo, band_hi = binomial_band(n, lo, hi)
    return (f"positive rate of {column} within [{band_lo:.4g}, {band_hi:.4g}]: the counts a rate in [{lo}, {hi}] "
            f"gives at {n} rows (binomial, {RATE_BAND_TAIL:g} per side)")


def _rate_band(column: str, task: str, severity_known: str = CRITICAL) -> gxe.Expectation:
    if task in POSITIVE_RATE_BANDS:
        lo, hi = POSITIVE_RATE_BANDS[task]
        exp = expectation(
            gxe.ExpectColumnMeanToBeBetween, severity_known, _rate_check(column, lo, hi),
            column=column, min_value=lo, max_value=hi,
        )
        exp.meta["rate_band"] = [lo, hi]  # sized to the partition by sized_for() once its rows are counted
        return exp
    return expectation(
        gxe.ExpectColumnMeanToBeBetween, WARNING, f"{column} is neither all-zero nor all-one",
        column=column, min_value=0.0, max_value=1.0, strict_min=True, strict_max=True,
    )


def bronze_log_suite() -> TableSuite:
    """Keys, required columns, label domains, non-negative times, tab/hourmin domains, time near
    its date, and label positive rates of one ``bronze_log`` date partition."""
    columns = ["impression_id", *(f.name for f in RAW_LOG_SCHEMA.fields)]
    exps: list[gxe.Expectation] = [
        expectation(
            gxe.ExpectTableColumnsToMatchSet, CRITICAL, "every contract column is present",
            column_set=columns, exact_match=False,
        ),
        *_key_expectations(BRONZE_LOG.keys),
    ]
    for c in ("impression_id", *LOG_REQUIRED):
        exps.append(expectation(gxe.ExpectColumnValuesToNotBeNull, CRITICAL, f"{c} is not null", column=c))
    for c in LOG_BINARY_LABELS:
        exps.append(expectation(gxe.ExpectColumnValuesToBeInSet, CRITICAL, f"{c} in {{0, 1}}", column=c, value_set=[0, 1]))
    for c in LOG_NON_NEGATIVE:
        exps.append(expectation(gxe.ExpectColumnValuesToBeBetween, CRITICAL, f"{c} >= 0", column=c, min_value=0))
    lo, hi = TIME_MS_HOURS_FROM_DATE
    exps += [
        expectation(
            gxe.ExpectColumnValuesToBeBetween, CRITICAL,
            f"time_ms within [{lo:+.0f} h, {hi:+.0f} h] of the start of its date partition's day (UTC+8; "
            "no mis-dated or future events)",
            column=derived("time_ms", "hours_from_date"), min_value=lo, max_value=hi, meta_column="time_ms",
        ),
        expectation(
            gxe.ExpectColumnValuesToBeBetween, WARNING, f"tab within {list(TAB_DOMAIN)}",
            column="tab", min_value=TAB_DOMAIN[0], max_value=TAB_DOMAIN[1],
        ),
        expectation(
            gxe.ExpectColumnValuesToBeBetween, WARNING, f"hourmin within {list(HOURMIN_DOMAIN)}",
            column="hourmin", min_value=HOURMIN_DOMAIN[0], max_value=HOURMIN_DOMAIN[1],
        ),
    ]
    for task, column in BRONZE_LABEL_OF_TASK.items():
        exps.append(_rate_band(column, task))
    return TableSuite("bronze_log", BRONZE_LOG.name, tuple(exps), _bronze_prepare)


def examples_suite(spec: FeatureSpec) -> TableSuite:
    """Everything the models assume about ``examples``, generated from the feature spec."""
    exps: list[gxe.Expectation] = [
        expectation(
            gxe.ExpectTableColumnsToMatchSet, CRITICAL, "every key, feature and label column of the spec is present",
            column_set=[*spec.key_columns, *spec.feature_columns, *spec.label_columns], exact_match=False,
        ),
        *_key_expectations(EXAMPLES.keys),
    ]
    for c in spec.key_columns:
        exps.append(expectation(gxe.ExpectColumnValuesToNotBeNull, CRITICAL, f"{c} is not null", column=c))
    for f in spec.categorical:
        exps += [
            expectation(gxe.ExpectColumnValuesToNotBeNull, CRITICAL, f"{f.column} is not null", column=f.column),
            expectation(
                gxe.ExpectColumnValuesToBeBetween, CRITICAL, f"{f.column} in [0, {f.vocab_size})",
                column=f.column, min_value=0, max_value=f.vocab_size - 1,
            ),
        ]
    for s in spec.sequences:
        gap = s.gap_column
        exps += [
            expectation(gxe.ExpectColumnValuesToNotBeNull, CRITICAL, f"{s.column} is not null", column=s.column),
            expectation(gxe.ExpectColumnValuesToNotBeNull, CRITICAL, f"{gap} is not null", column=gap),
            expectation(
                gxe.ExpectColumnValuesToBeBetween, CRITICAL, f"{s.column} holds at most {s.max_len} items",
                column=derived(s.column, "len"), min_value=0, max_value=s.max_len, meta_column=s.column,
            ),
            expectation(
                gxe.ExpectColumnValuesToBeBetween, CRITICAL, f"{s.column} items >= 0",
                column=derived(s.column, "min"), min_value=0, meta_column=s.column,
            ),
            expectation(
                gxe.ExpectColumnValuesToBeBetween, CRITICAL, f"{s.column} items < {s.vocab_size}",
                column=derived(s.column, "max"), max_value=s.vocab_size - 1, meta_column=s.column,
            ),
            expectation(
                gxe.ExpectColumnValuesToBeInSet, CRITICAL, f"{gap} has the same length as {s.column}",
                column=derived(gap, "size_diff"), value_set=[0], meta_column=gap,
            ),
            expectation(
                gxe.ExpectColumnValuesToBeBetween, CRITICAL,
                f"{gap} > 0 and not null/NaN (a gap of 0 is an event at/after the impression: leaked sequence)",
                column=derived(gap, "min"), min_value=0, strict_min=True, meta_column=gap,
            ),
            expectation(
                gxe.ExpectColumnMeanToBeBetween, WARNING, f"{s.column} is not empty on every row",
                column=derived(s.column, "len"), min_value=0, strict_min=True, meta_column=s.column,
                name=f"expect_column_mean_to_be_between({derived(s.column, 'len')})",
            ),
        ]
    for t in spec.tasks:
        exps.append(expectation(
            gxe.ExpectColumnValuesToNotBeNull, CRITICAL, f"{t.mask_column} is not null", column=t.mask_column,
        ))
        exps.append(expectation(
            gxe.ExpectColumnValuesToBeBetween, CRITICAL, f"{t.mask_column} in [0, 1]",
            column=t.mask_column, min_value=0, max_value=1,
        ))
        if t.kind == "binary":
            exps.append(expectation(
                gxe.ExpectColumnValuesToBeInSet, CRITICAL, f"{t.column} in {{0, 1}}", column=t.column, value_set=[0, 1],
            ))
            exps.append(_rate_band(t.column, t.name))
        else:
            exps += [
                expectation(gxe.ExpectColumnValuesToBeBetween, CRITICAL, f"{t.column} >= 0", column=t.column, min_value=0),
                expectation(
                    gxe.ExpectColumnValuesToBeInSet, CRITICAL, f"{t.column} is finite (no NaN/inf)",
                    column=derived(t.column, "finite"), value_set=[True], meta_column=t.column,
                ),
            ]
    return TableSuite(f"examples@{spec.fingerprint()}", EXAMPLES.name, tuple(exps), partial(prepare_for_validation, spec=spec))


def sized_for(suite: TableSuite, n: int) -> TableSuite:
    """``suite`` with every positive-rate band turned into the binomial band of ``n`` rows
    (:func:`binomial_band`); every other expectation is kept as it is."""
    if n <= 0:
        return suite
    exps = []
    for e in suite.expectations:
        band = e.meta.get("rate_band")
        if band is None:
            exps.append(e)
            continue
        lo, hi = binomial_band(n, *band)
        sized = gxe.ExpectColumnMeanToBeBetween(column=e.column, min_value=lo, max_value=hi)
        sized.meta = {**e.meta, "check": _rate_check(e.column, *band, n=n)}
        exps.append(sized)
    return TableSuite(suite.name, suite.table_name, tuple(exps), suite.prepare)


def row_count_expectation(previous_count: int, band: float, previous_partition: str) -> gxe.Expectation:
    """Row count within ``+/- band`` of the previous partition: catches a doubled (re-appended)
    partition and a truncated one."""
    lo, hi = math.floor(previous_count * (1 - band)), math.ceil(previous_count * (1 + band))
    return expectation(
        gxe.ExpectTableRowCountToBeBetween, CRITICAL,
        f"row count within +/-{band:.0%} of partition {previous_partition} ({previous_count} rows): [{lo}, {hi}]",
        min_value=lo, max_value=hi,
    )
