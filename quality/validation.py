"""The great-expectations adapter: run a suite on a prepared DataFrame, flatten GX's results into
:class:`quality.results.ExpectationOutcome` s.

An ephemeral context with ``add_spark(persist=False)`` (docs/PITFALLS.md: the persisted default ran
out of memory and then *returned* ``success=False``), so every result's exception info is read and
an expectation GX could not evaluate becomes an ``error`` outcome, never a pass.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import os
from dataclasses import replace
from typing import Any

from pyspark.sql import DataFrame

from quality.results import ERROR, FAILED, PASSED, ExpectationOutcome, to_json, error_outcome
from quality.suites import TableSuite

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

log = logging.getLogger("infnet.quality")

SAMPLE_SIZE = 5
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20}


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
        return to_json(result["observed_value"]) + (f" mismatched {to_json(details)}" if details else "")
    if "unexpected_count" in result:
        return f"{result['unexpected_count']} unexpected of {result.get('element_count')}"
    return None


def _samples(result: dict) -> tuple[Any, ...]:
    counts = result.get("partial_unexpected_counts")
    if counts:  # distinct offending values, most frequent first
        return tuple(c.get("value") for c in counts[:SAMPLE_SIZE])
    return tuple(dict.fromkeys(map(to_json, result.get("partial_unexpected_list") or [])))[:SAMPLE_SIZE]


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
