"""``infnet sql "SELECT ..."``: query the lake's tables by name from the persistent catalog.

Read-only unless ``--allow-writes``: a statement that would change a table or the catalog
(INSERT, DELETE, UPDATE, MERGE, DROP, CREATE, ALTER, TRUNCATE, RESTORE, OPTIMIZE, VACUUM, ...)
is refused before it runs, because a stray DELETE on ``bronze_log`` leaves ``examples`` and
everything after it out of step with no job to notice. Queries, SHOW, DESCRIBE, EXPLAIN and USE run.

Tables live in the ``infnet`` database (``USE infnet`` is applied, so ``scores`` and
``infnet.scores`` both work). The embedded Derby catalog admits one JVM at a time: run queries
when no other job is running (otherwise this stops with one line, exit 2), or point the session
at a shared metastore in production.

``--engine duckdb`` (default: ``$INFNET_SQL_ENGINE`` or spark) answers without a JVM, so it runs
while jobs do: DuckDB's SQL over each named table's newest committed Delta version, read by
delta-rs (:mod:`conf.lake_sql`); only queries (SELECT, WITH, VALUES, SHOW, DESCRIBE, SUMMARIZE,
EXPLAIN), never writes. Tables by name as above; no time travel, and DuckDB's SQL dialect.

examples:
  infnet sql "SELECT model_name, count(*) FROM scores GROUP BY model_name"
  infnet sql --engine duckdb "SELECT date, count(*) AS n FROM scores GROUP BY date ORDER BY date"
  infnet sql --allow-writes "DELETE FROM quarantine WHERE run_id = 'adhoc'"
"""
from __future__ import annotations

import sys

from jobs.common import JobError, base_parser, run_job, settings_from_args

ENGINES = ("spark", "duckdb")


def build_parser():
    parser = base_parser("sql", __doc__)
    parser.add_argument("query", help="SQL statement; tables by name, e.g. SELECT * FROM scores LIMIT 5")
    parser.add_argument("--limit", type=int, default=50, help="rows to print (default 50)")
    parser.add_argument("--csv", help="also write the full result to this CSV file")
    parser.add_argument("--allow-writes", action="store_true",
                        help="run statements that change tables or the catalog (refused by default; spark only)")
    parser.add_argument("--engine", choices=ENGINES,
                        help="spark (the catalog, one JVM at a time) or duckdb (no JVM: runs beside jobs, "
                             "read-only); default $INFNET_SQL_ENGINE or spark")
    return parser


def body(spark, settings, args) -> None:
    from pyspark.errors.exceptions.captured import CapturedException

    from conf.errors import spark_error_line
    from conf.sql_guard import writing_node

    spark.sql(f"USE {settings.lake.database}")
    try:
        if not args.allow_writes:
            writes = writing_node(spark, args.query)
            if writes:
                keyword = args.query.split(None, 1)[0].upper() if args.query.strip() else ""
                raise JobError(f"refusing {keyword} (parsed as {writes}): it would change a table or the catalog; "
                               "infnet sql is read-only unless --allow-writes is given")
        result = spark.sql(args.query)
        if args.csv:
            result.toPandas().to_csv(args.csv, index=False)
        result.show(args.limit, truncate=False)
    except CapturedException as err:  # syntax, analysis and run-time errors of the statement itself
        raise JobError(spark_error_line(err)) from None


# ---------------------------------------------------------------------------------------------
# The duckdb engine: no Spark, no pyspark import
# ---------------------------------------------------------------------------------------------

def duckdb_main(prog: str, settings, args) -> int:
    """Answer ``args.query`` with :func:`conf.lake_sql.duckdb_query` and print it as Spark's
    ``show(limit, truncate=False)`` would; refusals and errors are one line, exit 2."""
    from conf.arrow_show import naive_timestamps, show_string
    from conf.lake_sql import LakeSqlError, duckdb_query

    try:
        if args.allow_writes:
            raise LakeSqlError("--allow-writes needs --engine spark: the duckdb engine only reads "
                               "(the lake is written by the jobs)")
        result = duckdb_query(settings, args.query, limit=None if args.csv else max(args.limit, 0) + 1)
        if args.csv:
            naive_timestamps(result).to_pandas().to_csv(args.csv, index=False)
    except (LakeSqlError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(show_string(result, args.limit))
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    engine = args.engine or settings.lake.sql_engine
    if engine not in ENGINES:
        print(f"{parser.prog}: error: INFNET_SQL_ENGINE={engine!r}: expected one of {', '.join(ENGINES)}",
              file=sys.stderr)
        return 2
    if engine == "duckdb":
        return duckdb_main(parser.prog, settings, args)
    return run_job(parser, body, argv, upgrade=False)  # read-only: it never writes, not even an upgrade


if __name__ == "__main__":
    sys.exit(main())
