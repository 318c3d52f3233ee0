"""The quality gate: validate one table partition against its suite, record, and stop on critical errors.

:func:`run_gate` runs every expectation of a :class:`quality.suites.TableSuite` on one GX batch
(:func:`quality.validation.validate`: a cheap pass for the verdicts, then a detailed pass for what
failed), plus a row-count band against the table's previous partition, then

1. writes one row per expectation into the ``quality_results`` Delta table, replacing the rows of
   the same table + partition (a rerun never duplicates them; :mod:`quality.results`),
2. writes a self-contained HTML page for the run and refreshes ``<lake>/data_docs/index.html``
   (:mod:`quality.docs`),
3. raises :class:`quality.results.QualityGateFailed` when a critical expectation failed or *any*
   expectation could not be evaluated (GX returns ``success=False`` with exception info instead of
   raising, e.g. for a missing column: a check that did not run is a failed check). Failed warnings
   are recorded and the run continues (unless ``settings.quality.fail_on_warning``).

The failure message names the table, partition, expectation and a few offending values, e.g.::

    quality gate FAILED for examples partition 2022-05-01 (run ...): 1 critical expectation(s) failed
      - expect_column_values_to_be_between(seq_click_gap__min) [critical]: 2 of 1000 rows
        unexpected (0.2%), e.g. [0.0, -1.0] -- seq_click_gap > 0 and not null/NaN (a gap of 0 is ...

Positive-rate bands are sized to the partition's row count before validation (binomial
intervals, ``quality.suites.sized_for``).
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import replace

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from conf.lake import qualified_name, read_table, table_exists
from conf.settings import Settings
from conf.tables import QUALITY_RESULTS, TableDef
from quality.docs import write_data_docs
from quality.results import GateResult, QualityGateFailed, error_outcome, failure_message, new_run_id, record_results
from quality.suites import TableSuite, row_count_expectation, sized_for
from quality.validation import validate

log = logging.getLogger("infnet.quality")


def previous_partition_count(
    spark: SparkSession, settings: Settings, table: TableDef, partition: str
) -> tuple[str, int] | None:
    """``(partition, rows)`` of the latest partition before ``partition`` in the stored table
    (normally the day before; a gap in days falls back to the last day present), or None when
    the table, its partitioning or an earlier partition does not exist."""
    if not table.partition_by or not table_exists(spark, settings, table):
        return None
    column = table.partition_by[0]
    stored = read_table(spark, settings, table)
    bound = F.lit(partition).cast(stored.schema[column].dataType)
    latest = (  # one query; Parquet row counts of the partition column come from file footers
        stored.where(F.col(column) < bound).groupBy(column).count().orderBy(F.col(column).desc()).limit(1).first()
    )
    return None if latest is None else (str(latest[column]), int(latest["count"]))


class _Stopwatch:
    """Seconds per phase, logged so a slow gate shows where its time goes."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self._last = round(now - self._last, 2), now

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.laps.items())


def run_gate(
    spark: SparkSession,
    settings: Settings,
    table: TableDef,
    df: DataFrame,
    partition: str,
    suite: TableSuite,
    *,
    write_docs: bool = True,
) -> GateResult:
    """Validate ``df`` (one partition of ``table``) and record the outcome.

    Raises :class:`QualityGateFailed` (after recording) on a critical failure or an expectation
    that could not be evaluated; returns the :class:`GateResult` otherwise (warnings included).
    """
    evaluated_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    table_name = table.name
    run_id = new_run_id(table_name, partition, evaluated_at)
    clock = _Stopwatch()
    previous = previous_partition_count(spark, settings, table, partition)
    if previous is not None:
        suite = suite.with_expectations(row_count_expectation(previous[1], settings.quality.row_count_band, previous[0]))
    clock.lap("previous_partition")
    row_count: int | None = None
    prepared: DataFrame | None = None
    try:
        prepared = suite.prepare(df).cache()
        row_count = prepared.count()
        suite = sized_for(suite, row_count)  # positive-rate bands follow the partition's size
        clock.lap("prepare")
        outcomes = validate(prepared, suite, row_count)
        clock.lap("validate")
    except Exception as err:  # noqa: BLE001 - a suite that cannot even prepare its columns fails the gate
        log.exception("preparing %s for validation failed", suite.name)
        outcomes = [error_outcome("prepare_for_validation", f"{type(err).__name__}: {err}")]
    finally:
        if prepared is not None:
            prepared.unpersist()
    result = GateResult(
        run_id=run_id, table_name=table_name, partition=partition, suite=suite.name, evaluated_at=evaluated_at,
        row_count=row_count, outcomes=tuple(outcomes),
        previous_partition=previous[0] if previous else None, previous_count=previous[1] if previous else None,
        fail_on_warning=settings.quality.fail_on_warning,
    )
    record_results(spark, settings, result)
    clock.lap("record_results")
    if write_docs:
        result = replace(result, docs_path=write_data_docs(spark, settings, result))
        clock.lap("data_docs")
    # the caller prints the one summary line; the details are in quality_results and the data docs
    log.debug("quality gate timings (s) for %s %s: %s", table_name, partition, clock)
    log.debug("quality gate %s", result.summary())
    for o in result.failed_warnings:
        log.debug("quality warning on %s %s: %s", table_name, partition, o.describe())
    if not result.passed:
        raise QualityGateFailed(failure_message(result, results_table=qualified_name(settings, QUALITY_RESULTS)), result)
    return result
