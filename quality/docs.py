"""Data docs: one self-contained HTML page per gate run plus ``index.html`` under ``<lake>/data_docs``.

GX's own data docs are not used: they need a store-backed context (we validate through an
ephemeral one, docs/PITFALLS.md) and their pages load Bootstrap, jQuery and Font Awesome from CDNs,
so they render unstyled or broken on an offline machine. These pages inline their CSS, have no
JavaScript, and list every expectation with its outcome.

Layout: ``<data_docs>/<table>/<partition>/<run_id>.html``; ``index.html`` lists the latest run of
every table partition (from the ``quality_results`` table), newest first, with links.

>>> page = render_run_page(_example_result())
>>> "expect_column_values_to_not_be_null(user_id)" in page and "FAILED" in page
True
"""
from __future__ import annotations

import datetime as dt
import html
import json
from typing import Any, Sequence

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from conf.lake import read_table, table_exists, write_text
from conf.settings import Settings
from conf.tables import QUALITY_RESULTS
from quality.results import ERROR, FAILED, PASSED, ExpectationOutcome, GateResult

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em} table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3} tr.passed td.status{color:#1a7f37} tr.failed td.status,tr.error td.status{color:#b42318;font-weight:bold}
tr.failed.warning td.status{color:#b26b00} .badge{padding:2px 8px;border-radius:4px;color:#fff}
.PASSED{background:#1a7f37} .FAILED{background:#b42318} code{font-size:.95em;word-break:break-all}
"""


def run_page_relpath(table_name: str, partition: str, run_id: str) -> str:
    return f"{table_name}/{partition}/{run_id}.html"


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _cell(value: Any) -> str:
    return "" if value is None else html.escape(str(value))


def render_run_page(result: GateResult) -> str:
    """Every expectation of one run: status, severity, column, check, counts, offending values."""
    verdict = "PASSED" if result.passed else "FAILED"
    previous = (
        f"{result.previous_count} rows in partition {result.previous_partition}"
        if result.previous_partition else "none (row-count band not checked)"
    )
    head = (
        f"<h1>Quality gate: {html.escape(result.table_name)} / {html.escape(result.partition)} "
        f"<span class=\"badge {verdict}\">{verdict}</span></h1>\n"
        f"<p>{_cell(result.summary())}</p>\n<ul><li>run: <code>{_cell(result.run_id)}</code></li>"
        f"<li>suite: <code>{_cell(result.suite)}</code></li><li>evaluated at (UTC): {_cell(result.evaluated_at)}</li>"
        f"<li>rows: {_cell(result.row_count)}</li><li>previous partition: {_cell(previous)}</li></ul>\n"
        "<p><a href=\"../../index.html\">all runs</a></p>\n"
    )
    order = {"error": 0, "failed": 1, "passed": 2}
    rows = []
    for o in sorted(result.outcomes, key=lambda o: (order[o.status], o.severity != "critical")):
        samples = json.dumps(list(o.sample_values), default=str) if o.sample_values else ""
        rows.append(
            f"<tr class=\"{o.status} {o.severity}\"><td class=\"status\">{o.status.upper()}</td>"
            f"<td>{o.severity}</td><td><code>{_cell(o.expectation)}</code></td><td>{_cell(o.column)}</td>"
            f"<td>{_cell(o.check)}</td><td>{_cell(o.unexpected_count)}</td><td>{_cell(o.element_count)}</td>"
            f"<td><code>{_cell(o.observed)}</code></td><td><code>{_cell(samples)}</code></td>"
            f"<td>{_cell(o.error)}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>status</th><th>severity</th><th>expectation</th><th>column</th><th>check</th>"
        "<th>unexpected</th><th>rows</th><th>observed</th><th>sample values</th><th>error</th></tr></thead>\n"
        f"<tbody>\n{chr(10).join(rows)}\n</tbody></table>"
    )
    return _page(f"{result.table_name} {result.partition} quality", head + table)


def render_index(runs: Sequence[dict]) -> str:
    """One row per run (dicts with run_id, table_name, partition, evaluated_at, n, passed,
    critical_failed, warnings_failed, errors), newest first."""
    rows = []
    for r in sorted(runs, key=lambda r: (str(r["evaluated_at"]), r["run_id"]), reverse=True):
        ok = r["critical_failed"] == 0 and r["errors"] == 0
        link = run_page_relpath(r["table_name"], r["partition"], r["run_id"])
        rows.append(
            f"<tr class=\"{'passed' if ok else 'failed'}\"><td class=\"status\">{'PASSED' if ok else 'FAILED'}</td>"
            f"<td>{_cell(r['table_name'])}</td><td>{_cell(r['partition'])}</td><td>{_cell(r['evaluated_at'])}</td>"
            f"<td>{r['passed']}/{r['n']}</td><td>{r['critical_failed']}</td><td>{r['warnings_failed']}</td>"
            f"<td>{r['errors']}</td><td><a href=\"{html.escape(link)}\">{_cell(r['run_id'])}</a></td></tr>"
        )
    body = (
        "<h1>Quality gate runs</h1><p>Latest run of every table partition (from <code>quality_results</code>).</p>\n"
        "<table><thead><tr><th>status</th><th>table</th><th>partition</th><th>evaluated at (UTC)</th>"
        "<th>passed</th><th>critical failed</th><th>warnings</th><th>not evaluated</th><th>run</th></tr></thead>\n"
        f"<tbody>\n{chr(10).join(rows)}\n</tbody></table>"
    )
    return _page("Quality gate runs", body)


def latest_runs(spark: SparkSession, settings: Settings) -> list[dict]:
    """Per run summary of the ``quality_results`` table (it keeps the latest run per partition)."""
    if not table_exists(spark, settings, QUALITY_RESULTS):
        return []
    df = read_table(spark, settings, QUALITY_RESULTS)
    is_ = lambda cond: F.sum(F.when(cond, 1).otherwise(0))  # noqa: E731
    summary = df.groupBy("run_id", "table_name", "partition").agg(
        F.max("evaluated_at").alias("evaluated_at"),
        F.count(F.lit(1)).alias("n"),
        is_(F.col("status") == "passed").alias("passed"),
        is_((F.col("status") == "failed") & (F.col("severity") == "critical")).alias("critical_failed"),
        is_((F.col("status") == "failed") & (F.col("severity") == "warning")).alias("warnings_failed"),
        is_(F.col("status") == "error").alias("errors"),
    )
    return [r.asDict() for r in summary.collect()]


def write_data_docs(spark: SparkSession, settings: Settings, result: GateResult) -> str:
    """Write the run's page and refresh the index; returns the page's location."""
    root = settings.lake.data_docs.rstrip("/")
    page = f"{root}/{run_page_relpath(result.table_name, result.partition, result.run_id)}"
    write_text(spark, page, render_run_page(result))
    write_text(spark, f"{root}/index.html", render_index(latest_runs(spark, settings)))
    return page


def _example_result() -> GateResult:
    """A tiny hand-made result for the doctest."""
    return GateResult(
        run_id="r1", table_name="bronze_log", partition="2022-05-01", suite="bronze_log",
        evaluated_at=dt.datetime(2022, 5, 2), row_count=3, outcomes=(
            ExpectationOutcome("expect_column_values_to_not_be_null(user_id)", "user_id", "critical", FAILED, 1, 3,
                               "1 unexpected of 3", (None,), "user_id is not null"),
            ExpectationOutcome("expect_column_values_to_be_unique(impression_id)", "impression_id", "critical", PASSED),
            ExpectationOutcome("expect_column_values_to_not_be_null(x)", "x", "critical", ERROR, error="no column x"),
        ),
    )
