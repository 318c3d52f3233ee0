"""Evaluate one scored model version: AUC / gAUC / LogLoss / calibration / MTL-AUC per task and slice.

Reads the ``scores`` of ``--model NAME@VERSION`` for the given date(s), joins the labels of
``examples`` on ``impression_id`` and the raw slice values of ``bronze_log`` / ``bronze_users``,
and writes the ``metrics`` table (model_name, model_version, task, metric, slice, value, n, date),
one set of rows per date. A rerun replaces that model version's rows for those dates and never
duplicates them. Definitions: evaluation/metrics.py.

What cannot be graded is counted in the same table and in the job's summary line: scores of
candidates never shown (``n_unlogged``) or without an ``examples`` row (``n_without_examples``),
and null/NaN scores (``n_invalid_scores`` per task). A model that emits any null/NaN score is not
graded at all (grading its other rows would hide the fault): only the counts are written and the
job exits 2. Reading and grading: evaluation/assembly.py.
"""
from __future__ import annotations

import argparse
import logging
import sys

from conf.syntax import parse_model_ref
from jobs.common import JobError, add_dates_argument, base_parser, run_job

log = logging.getLogger("infnet.evaluate")


def build_parser() -> argparse.ArgumentParser:
    from evaluation.metrics import DEFAULT_SLICES

    parser = base_parser("evaluate", __doc__.splitlines()[0])
    parser.add_argument("--model", type=parse_model_ref, required=True,
                        help="NAME@VERSION or NAME@ALIAS of the scored model (NAME alone: the newest version)")
    add_dates_argument(parser)
    parser.add_argument("--slices", default=",".join(DEFAULT_SLICES),
                        help=f"comma list of slices (default: {','.join(DEFAULT_SLICES)})")
    return parser


def body(spark, settings, args) -> None:
    from conf.lake import slice_predicate, sql_literal, write_table
    from conf.tables import METRICS
    from evaluation.assembly import EvaluationInputError, compact_table, counts_line, metrics_for_dates
    from model.store import ModelStore

    slices = tuple(s.strip() for s in args.slices.split(",") if s.strip())
    args.model = ModelStore.of(settings).pin(args.model)
    try:
        result = metrics_for_dates(spark, settings, args.model, args.dates, slices)
    except EvaluationInputError as err:
        raise JobError(str(err)) from None
    predicate = (
        slice_predicate({"model_name": args.model.name, "model_version": args.model.version})
        + f" AND `date` IN ({', '.join(sql_literal(d) for d in args.dates)})"
        + " AND `slice` NOT LIKE 'list@%'"  # the list metrics are `infnet rank`'s rows
    )
    rows = result.counts if result.metrics is None else result.metrics.unionByName(result.counts)
    version = write_table(rows, settings, METRICS, predicate,
                          user_metadata={"job": "evaluate", "model": str(args.model), "dates": args.dates})
    print(counts_line(args.model, result.counts_pdf))
    if result.invalid:
        where = ", ".join(f"{task} {n} on {date}" for (date, task), n in sorted(result.invalid.items()))
        raise JobError(f"{args.model} emitted null/NaN scores ({where}): not graded; the counts are in "
                       f"{settings.lake.database}.metrics (metric n_invalid_scores). Fix the model and rescore.")
    pdf = rows.toPandas()
    log.info("metrics for %s on %s: %d rows (table version %d)", args.model, ",".join(args.dates), len(pdf), version)
    print(f"metrics for {args.model} ({len(pdf)} rows, slice 'all' below):")
    print(compact_table(pdf))


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
