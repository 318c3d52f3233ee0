"""What a gate run produced: one outcome per expectation, the run's result, its rows in
``quality_results`` and its failure message. No great-expectations and no gate logic here, so
the data docs and the gate both read these types without importing each other.

>>> o = ExpectationOutcome("expect_column_values_to_not_be_null(user_id)", "user_id", CRITICAL, FAILED, 1, 3,
...                        "1 unexpected of 3", (None,), "user_id is not null")
>>> o.describe()
'expect_column_values_to_not_be_null(user_id) [critical]: 1 of 3 rows unexpected (33.3%), e.g. [null] -- user_id is not null'
"""
from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from conf.lake import write_table
from conf.schemas import QUALITY_RESULTS_SCHEMA
from conf.settings import Settings
from conf.tables import QUALITY_RESULTS
from quality.suites import CRITICAL, WARNING

PASSED, FAILED, ERROR = "passed", "failed", "error"  # ERROR: GX could not evaluate the expectation


def to_json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)



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
                seen += f", e.g. {to_json(list(self.sample_values))}"
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



def error_outcome(name: str, message: str) -> ExpectationOutcome:
    return ExpectationOutcome(name, "", CRITICAL, ERROR, check="the suite could run at all", error=message)



def new_run_id(table_name: str, partition: str, now: dt.datetime) -> str:
    return f"{table_name}-{partition}-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"



def results_frame(spark: SparkSession, result: GateResult) -> DataFrame:
    rows = [
        (
            result.run_id, result.table_name, result.partition, result.suite, o.expectation, o.column, o.severity,
            o.status, o.success, o.unexpected_count, o.element_count, o.observed,
            to_json(list(o.sample_values)), o.check, o.error, result.evaluated_at,
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
