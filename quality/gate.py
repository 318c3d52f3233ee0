"""The quality gate: validate one table partition against its suite, record, and stop on critical errors.

:func:`run_gate` runs every expectation of a :class:`quality.suites.TableSuite` on one GX batch (an
ephemeral context and ``add_spark(persist=False)``, PITFALLS.md; a cheap pass for the verdicts,
then a detailed pass for what failed, see :func:`validate`), plus a row-count band against the
table's previous partition, then

1. writes one row per expectation into the ``quality_results`` Delta table, replacing the rows of
   the same table + partition (a rerun never duplicates them),
2. writes a self-contained HTML page for the run and refreshes ``<lake>/data_docs/index.html``,
3. raises :class:`QualityGateFailed` when a critical expectation failed or *any* expectation could
   not be evaluated (GX returns ``success=False`` with exception info instead of raising, e.g. for a
   missing column: a check that did not run is a failed check). Failed warnings are recorded and
   the run continues (unless ``settings.quality.fail_on_warning``).

The failure message names the table, partition, expectation and a few offending values, e.g.::

    quality gate FAILED for examples partition 2022-05-01 (run ...): 1 critical expectation(s) failed
      - expect_column_values_to_be_between(seq_click_gap__min) [critical]: 2 of 1000 rows
        unexpected (0.2%), e.g. [0.0, -1.0] -- seq_click_gap > 0 and not null/NaN (a gap of 0 is ...

Positive-rate bands are sized to the partition's row count before validation (binomial
intervals, ``quality.suites.sized_for``).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf.lake import qualified_name, read_table, table_exists, write_table
from conf.settings import Settings
from conf.tables import ALL_TABLES, QUALITY_RESULTS, TableDef
from quality.suites import CRITICAL, WARNING, TableSuite, row_count_expectation, sized_for

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

log = logging.getLogger("infnet.quality")

PASSED, FAILED, ERROR = "passed", "failed", "error"  # ERROR: GX could not evaluate the expectation
SAMPLE_SIZE = 5
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20}

QUALITY_RESULTS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("table_name", T.StringType(), False),
    T.StructField("partition", T.StringType(), False),
    T.StructField("suite", T.StringType(), False),
    T.StructField("expectation", T.StringType(), False),
    T.StructField("column", T.StringType(), True),
    T.StructField("severity", T.StringType(), False),
    T.StructField("status", T.StringType(), False),  # passed | failed | error (could not evaluate)
    T.StructField("success", T.BooleanType(), False),
    T.StructField("unexpected_count", T.LongType(), True),
    T.StructField("element_count", T.LongType(), True),
    T.StructField("observed", T.StringType(), True),
    T.StructField("sample_values", T.StringType(), True),  # JSON list of offending values
    T.StructField("check", T.StringType(), True),
    T.StructField("error", T.StringType(), True),
    T.StructField("evaluated_at", T.TimestampType(), False),
])


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result, flattened for messages, the results table and data docs."""

    expectation: str
    column: str
    severity: str
    status: str
    unexpected_count: int | None = None
    element_count: int | None = None
    observed: str | None = None
    sample_values: tuple[Any, ...] = ()
    check: str = ""
    error: str | None = None

    @property
    def success(self) -> bool:
        return self.status == PASSED

    def describe(self) -> str:
        """``<expectation> on <column> [severity]: <what was seen>``, one line."""
        where = f" on {self.column}" if self.column and self.column not in self.expectation else ""
        head = f"{self.expectation}{where} [{self.severity}]"
        if self.status == ERROR:
            return f"{head}: could not evaluate: {self.error}"
        if self.unexpected_count is not None:
            pct = f" ({100.0 * self.unexpected_count / self.element_count:.3g}%)" if self.element_count else ""
            seen = f"{self.unexpected_count} of {self.element_count} rows unexpected{pct}"
            if self.sample_values:
                seen += f", e.g. {_json(list(self.sample_values))}"
        else:
            seen = f"observed {self.observed}"
        return f"{head}: {seen} -- {self.check}"


@dataclass(frozen=True)
class GateResult:
    run_id: str
    table_name: str
    partition: str
    suite: str
    evaluated_at: dt.datetime
    row_count: int | None
    outcomes: tuple[ExpectationOutcome, ...]
    previous_partition: str | None = None
    previous_count: int | None = None
    docs_path: str | None = None
    fail_on_warning: bool = field(default=False, compare=False)

    @property
    def errors(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if o.status == ERROR]

    @property
    def failed_critical(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if o.status == FAILED and o.severity == CRITICAL]

    @property
    def failed_warnings(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if o.status == FAILED and o.severity == WARNING]

    @property
    def blocking(self) -> list[ExpectationOutcome]:
        """What stops the pipeline: evaluation errors, critical failures (and warnings if configured)."""
        return self.errors + self.failed_critical + (self.failed_warnings if self.fail_on_warning else [])

    @property
    def passed(self) -> bool:
        return not self.blocking

    def summary(self) -> str:
        n_ok = sum(o.success for o in self.outcomes)
        return (
            f"{self.table_name} partition {self.partition}: {'PASSED' if self.passed else 'FAILED'} "
            f"({n_ok}/{len(self.outcomes)} expectations passed, {len(self.failed_critical)} critical failed, "
            f"{len(self.failed_warnings)} warnings, {len(self.errors)} could not be evaluated; "
            f"{self.row_count} rows; run {self.run_id})"
        )


class QualityGateFailed(RuntimeError):
    """A critical expectation failed or could not be evaluated; ``.result`` holds everything."""

    def __init__(self, message: str, result: GateResult):
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------------------------------------
# GX validation and result parsing
# ---------------------------------------------------------------------------------------------

def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _exception_message(info: dict | None) -> str | None:
    """GX 1.x puts either one flat ``{raised_exception, exception_message}`` dict or one such
    dict per failed metric into ``exception_info``."""
    if not info:
        return None
    if "raised_exception" in info:
        return (info.get("exception_message") or "unknown error") if info.get("raised_exception") else None
    messages = [
        v.get("exception_message") or "unknown error"
        for v in info.values() if isinstance(v, dict) and v.get("raised_exception")
    ]
    return "; ".join(dict.fromkeys(messages)) or None


def _observed(result: dict) -> str | None:
    if "observed_value" in result:
        details = result.get("details", {}).get("mismatched")
        return _json(result["observed_value"]) + (f" mismatched {_json(details)}" if details else "")
    if "unexpected_count" in result:
        return f"{result['unexpected_count']} unexpected of {result.get('element_count')}"
    return None


def _samples(result: dict) -> tuple[Any, ...]:
    counts = result.get("partial_unexpected_counts")
    if counts:  # distinct offending values, most frequent first
        return tuple(c.get("value") for c in counts[:SAMPLE_SIZE])
    return tuple(dict.fromkeys(map(_json, result.get("partial_unexpected_list") or [])))[:SAMPLE_SIZE]


def outcome_from_gx(meta: dict, gx_result: Any) -> ExpectationOutcome:
    """Flatten one ``ExpectationValidationResult`` (matched to its expectation by ``meta``)."""
    result = dict(gx_result.result or {})
    error = _exception_message(gx_result.exception_info)
    status = ERROR if error else (PASSED if gx_result.success else FAILED)
    samples = tuple(_plain(v) for v in _samples(result))
    return ExpectationOutcome(
        expectation=meta["name"], column=meta.get("column", ""), severity=meta["severity"], status=status,
        unexpected_count=_int_or_none(result.get("unexpected_count")),
        element_count=_int_or_none(result.get("element_count")),
        observed=_observed(result), sample_values=samples, check=meta.get("check", ""), error=error,
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _plain(value: Any) -> Any:
    """JSON-friendly sample value (numpy scalars, dates, NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


def error_outcome(name: str, message: str) -> ExpectationOutcome:
    return ExpectationOutcome(name, "", CRITICAL, ERROR, check="the suite could run at all", error=message)


def is_row_level(exp: Any) -> bool:
    """Map expectations judge rows (not null, in set, unique ...); the others judge an aggregate."""
    from great_expectations.expectations.expectation import (
        ColumnMapExpectation,
        ColumnPairMapExpectation,
        MulticolumnMapExpectation,
    )

    return isinstance(exp, (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation))


def _gx_validate(batch: Any, name: str, expectations: list, result_format: dict) -> dict[str, Any]:
    import great_expectations as gx

    gx_suite = gx.ExpectationSuite(name=name, expectations=[e.copy(deep=True) for e in expectations])
    validation = batch.validate(gx_suite, result_format=result_format)
    return {r.expectation_config.meta.get("name"): r for r in validation.results}


def _merge(verdict: ExpectationOutcome, detail: ExpectationOutcome | None, exp: Any,
           row_count: int | None) -> ExpectationOutcome:
    """The first pass decides the status; the second pass (if run) supplies counts and samples."""
    if detail is None:
        strict = getattr(exp, "mostly", 1.0) in (None, 1, 1.0)
        if verdict.status == PASSED and is_row_level(exp) and strict:  # passed without ``mostly``: 0 unexpected
            return replace(verdict, unexpected_count=0, element_count=row_count, observed=f"0 unexpected of {row_count}")
        return verdict
    if detail.status == ERROR:
        return replace(verdict, error=f"details unavailable: {detail.error}")
    return replace(detail, status=verdict.status)


def validate(df: DataFrame, suite: TableSuite, row_count: int | None = None) -> list[ExpectationOutcome]:
    """Run every expectation of ``suite`` on ``df`` (already prepared); results in suite order.

    Two GX ``validate()`` calls on one batch: a ``BOOLEAN_ONLY`` pass over everything (GX bundles
    the row-level counts into a few Spark jobs: 9 jobs for the 59-expectation demo examples
    suite, against 113 with ``SUMMARY``, which collects offending values per expectation), then
    a ``SUMMARY`` pass over the failed expectations (offending values for the message) and the
    aggregate ones (their observed value for the record). An expectation without a result, or
    whose metrics raised, is an ``error`` outcome; a ``validate()`` that raises becomes one.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    try:
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = context.data_sources.add_spark(name="infnet", persist=False)
        batch_definition = source.add_dataframe_asset(name=suite.table_name).add_batch_definition_whole_dataframe("partition")
        batch = batch_definition.get_batch(batch_parameters={"dataframe": df})
        first = _gx_validate(batch, suite.name, list(suite.expectations), {"result_format": "BOOLEAN_ONLY"})
        verdicts: list[ExpectationOutcome] = []
        for exp in suite.expectations:
            gx_result = first.get(exp.meta["name"])
            if gx_result is None:
                verdicts.append(replace(
                    error_outcome(exp.meta["name"], "GX returned no result for this expectation"),
                    column=exp.meta.get("column", ""), severity=exp.meta["severity"], check=exp.meta.get("check", ""),
                ))
            else:
                verdicts.append(outcome_from_gx(exp.meta, gx_result))
        detail_exps = [
            e for e, v in zip(suite.expectations, verdicts)
            if v.status == FAILED or (v.status == PASSED and not is_row_level(e))
        ]
        details = _gx_validate(batch, suite.name, detail_exps, RESULT_FORMAT) if detail_exps else {}
    except Exception as err:  # noqa: BLE001 - any failure to validate is a failed gate, recorded
        log.exception("GX validation of %s failed", suite.name)
        return [error_outcome("validate", f"{type(err).__name__}: {err}")]
    outcomes = []
    for exp, verdict in zip(suite.expectations, verdicts):
        gx_detail = details.get(exp.meta["name"])
        detail = outcome_from_gx(exp.meta, gx_detail) if gx_detail is not None else None
        outcomes.append(_merge(verdict, detail, exp, row_count))
    return outcomes


# ---------------------------------------------------------------------------------------------
# Previous partition, results table, message
# ---------------------------------------------------------------------------------------------

TABLES_BY_NAME: dict[str, TableDef] = {t.name: t for t in ALL_TABLES}


def previous_partition_count(
    spark: SparkSession, settings: Settings, table_name: str, partition: str
) -> tuple[str, int] | None:
    """``(partition, rows)`` of the latest partition before ``partition`` in the stored table
    (normally the day before; a gap in days falls back to the last day present), or None when
    the table, its partitioning or an earlier partition does not exist."""
    table = TABLES_BY_NAME.get(table_name)
    if table is None or not table.partition_by or not table_exists(spark, settings, table):
        return None
    column = table.partition_by[0]
    stored = read_table(spark, settings, table)
    bound = F.lit(partition).cast(stored.schema[column].dataType)
    latest = (  # one query; Parquet row counts of the partition column come from file footers
        stored.where(F.col(column) < bound).groupBy(column).count().orderBy(F.col(column).desc()).limit(1).first()
    )
    return None if latest is None else (str(latest[column]), int(latest["count"]))


def new_run_id(table_name: str, partition: str, now: dt.datetime) -> str:
    return f"{table_name}-{partition}-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def results_frame(spark: SparkSession, result: GateResult) -> DataFrame:
    rows = [
        (
            result.run_id, result.table_name, result.partition, result.suite, o.expectation, o.column, o.severity,
            o.status, o.success, o.unexpected_count, o.element_count, o.observed,
            _json(list(o.sample_values)), o.check, o.error, result.evaluated_at,
        )
        for o in result.outcomes
    ]
    return spark.createDataFrame(rows, QUALITY_RESULTS_SCHEMA)


def record_results(spark: SparkSession, settings: Settings, result: GateResult) -> int:
    """Replace this table+partition's rows in ``quality_results``; returns the Delta version."""
    return write_table(
        results_frame(spark, result), settings, QUALITY_RESULTS,
        {"table_name": result.table_name, "partition": result.partition},
        user_metadata={"run_id": result.run_id},
    )


def failure_message(result: GateResult, per_kind: int = 10, results_table: str = "quality_results") -> str:
    lines = [f"quality gate FAILED for {result.table_name} partition {result.partition} (run {result.run_id})"]
    for title, items in (
        ("could not be evaluated (treated as failed)", result.errors),
        ("critical expectation(s) failed", result.failed_critical),
        ("warning(s) failed (fail_on_warning is set)", result.failed_warnings if result.fail_on_warning else []),
    ):
        if items:
            lines.append(f"{len(items)} {title}:")
            lines += [f"  - {o.describe()}" for o in items[:per_kind]]
            if len(items) > per_kind:
                lines.append(f"  ... and {len(items) - per_kind} more")
    lines.append(
        f"details: SELECT * FROM {results_table} WHERE run_id = '{result.run_id}'"
        + (f"; report {result.docs_path}" if result.docs_path else "")
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------

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
    table_name: str,
    df: DataFrame,
    partition: str,
    suite: TableSuite,
    *,
    write_docs: bool = True,
) -> GateResult:
    """Validate ``df`` (one partition of ``table_name``) and record the outcome.

    Raises :class:`QualityGateFailed` (after recording) on a critical failure or an expectation
    that could not be evaluated; returns the :class:`GateResult` otherwise (warnings included).
    """
    evaluated_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    run_id = new_run_id(table_name, partition, evaluated_at)
    clock = _Stopwatch()
    previous = previous_partition_count(spark, settings, table_name, partition)
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
        from quality.docs import write_data_docs

        result = replace(result, docs_path=write_data_docs(spark, settings, result))
        clock.lap("data_docs")
    log.info("quality gate timings (s) for %s %s: %s", table_name, partition, clock)
    log.info("quality gate %s", result.summary())
    for o in result.failed_warnings:
        log.warning("quality warning on %s %s: %s", table_name, partition, o.describe())
    if not result.passed:
        raise QualityGateFailed(failure_message(result, results_table=qualified_name(settings, QUALITY_RESULTS)), result)
    return result
