"""Land raw logs, users, videos and history into bronze Delta tables, quarantining bad rows.

Every raw file (CSV, CSV.gz or Parquet) is read with all columns as strings (features/ingest.py)
and cast under its contract (features/contracts.py over conf/tables.py); rows that break it go to
`quarantine` with the reason, the source file and row. For every table the job stores an
`ingest_audit` row and fails unless rows read = rows landed + rows quarantined. Raw columns outside
the contract are not landed; the audit row (`ignored_columns`) and the summary line name them.

Every source is read and checked before anything is written: a missing, empty (no header, or no
data rows) or damaged (truncated gzip, bad Parquet) file, a file lacking contract columns, or a
requested date the log does not hold stops the job with one line (exit 2) and changes nothing.

  bronze_log      the dates given (--date / --dates, default: every date in the file) are replaced
                  (Delta replaceWhere); quarantine rows of those dates are replaced with them
  bronze_users    whole-table overwrite
  bronze_videos   whole-table overwrite
  bronze_history  whole-table overwrite

Raw files default to $INFNET_RAW_DIR (the landing zone; default the bundled demo data).

example:  infnet ingest --dates 2022-04-25..2022-04-26 --lake /tmp/lake
"""
from __future__ import annotations

import sys

from conf.settings import raw_sources
from jobs.common import JobError, add_dates_argument, base_parser, run_job


def build_parser():
    parser = base_parser("ingest", __doc__)
    add_dates_argument(parser, required=False,
                       help="log date(s) to land: YYYY-MM-DD, a comma list or a range a..b "
                            "(default: every date in the log file)")
    for name, path in raw_sources().items():  # $INFNET_RAW_DIR or the bundled demo data
        parser.add_argument(f"--{name}", default=path,
                            help=f"{name} file, folder or glob: CSV, CSV.gz or Parquet (default: {path})")
    return parser


def ingest_log(spark, settings, raw, dates: list[str] | None, run_id: str, at):
    """Replace the log dates (every date of the file by default) and their quarantine rows."""
    from conf.lake import read_table, write_table
    from conf.tables import BRONZE_LOG, QUARANTINE
    from features.ingest import audit_row, plan_log_ingest

    plan = plan_log_ingest(raw, dates, run_id, at)
    write_table(plan.landed, settings, BRONZE_LOG, plan.landed_slice)
    write_table(plan.quarantined, settings, QUARANTINE, plan.quarantine_slice)
    rows_landed = read_table(spark, settings, BRONZE_LOG).where(plan.landed_slice).count()
    return audit_row(run_id, BRONZE_LOG.name, raw.files, plan.dates, plan.rows_read, rows_landed,
                     plan.rows_quarantined, at, raw.ignored_columns)


def ingest_dimension(spark, settings, raw, table, run_id: str, at):
    """Overwrite a dimension table and replace its quarantine rows."""
    from pyspark.sql import functions as F

    from conf.lake import read_table, sql_literal, write_table
    from conf.tables import QUARANTINE
    from features.contracts import split_valid
    from features.ingest import audit_row

    valid, bad = split_valid(raw.df, raw.contract, run_id, F.lit(at).cast("timestamp"))
    bad = bad.persist()
    rows_quarantined = bad.count()
    write_table(valid, settings, table)
    write_table(bad, settings, QUARANTINE, f"source_table = {sql_literal(table.name)}")
    rows_landed = read_table(spark, settings, table).count()
    bad.unpersist()
    return audit_row(run_id, table.name, raw.files, None, raw.rows, rows_landed, rows_quarantined, at,
                     raw.ignored_columns)


def body(spark, settings, args) -> None:
    from conf.lake import write_table
    from conf.tables import BRONZE_HISTORY, BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS, INGEST_AUDIT
    from features.contracts import HISTORY_CONTRACT, LOG_CONTRACT, USER_CONTRACT, VIDEO_CONTRACT
    from features.ingest import RawInputError, audit_frame, load_raw, new_run, summary_line

    run_id, at = new_run()
    sources = [(args.log, LOG_CONTRACT, BRONZE_LOG), (args.users, USER_CONTRACT, BRONZE_USERS),
               (args.videos, VIDEO_CONTRACT, BRONZE_VIDEOS), (args.history, HISTORY_CONTRACT, BRONZE_HISTORY)]
    raws = []
    try:
        for path, contract, _ in sources:  # every source is read and checked before anything is written
            raws.append(load_raw(spark, path, contract))
        rows = [ingest_log(spark, settings, raws[0], args.dates, run_id, at)]
        rows += [ingest_dimension(spark, settings, raw, table, run_id, at)
                 for raw, (_, _, table) in zip(raws[1:], sources[1:])]
    except RawInputError as err:
        raise JobError(str(err)) from None
    finally:
        for raw in raws:
            raw.df.unpersist()
    write_table(audit_frame(spark, rows), settings, INGEST_AUDIT, {"run_id": run_id})
    broken = []
    for r in rows:
        line = summary_line(r)
        print(f"ingest {run_id} {line}")
        if not r.reconciled:
            broken.append(line)
    if broken:
        raise JobError("row counts do not reconcile (stored in ingest_audit, run " + run_id + "): " + "; ".join(broken))


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
