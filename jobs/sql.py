"""``infnet sql "SELECT ..."``: query the lake's tables by name from the persistent catalog.

Tables live in the ``infnet`` database (``USE infnet`` is applied, so ``scores`` and
``infnet.scores`` both work). The embedded Derby catalog admits one JVM at a time: run queries
when no other job is running, or point the session at a shared metastore in production.
"""
from __future__ import annotations

import sys

from jobs.common import JobError, base_parser, run_job


def build_parser():
    parser = base_parser("sql", __doc__.splitlines()[0])
    parser.add_argument("query", help="SQL statement; tables by name, e.g. SELECT * FROM scores LIMIT 5")
    parser.add_argument("--limit", type=int, default=50, help="rows to print (default 50)")
    parser.add_argument("--csv", help="also write the full result to this CSV file")
    return parser


def body(spark, settings, args) -> None:
    from pyspark.errors import AnalysisException, ParseException

    spark.sql(f"USE {settings.lake.database}")
    try:
        result = spark.sql(args.query)
    except (AnalysisException, ParseException) as err:
        raise JobError(str(err).splitlines()[0]) from None
    if args.csv:
        result.toPandas().to_csv(args.csv, index=False)
    result.show(args.limit, truncate=False)


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
