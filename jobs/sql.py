"""``infnet sql "SELECT ..."``: query the lake's tables by name from the persistent catalog.

Read-only unless ``--allow-writes``: a statement that would change a table or the catalog
(INSERT, DELETE, UPDATE, MERGE, DROP, CREATE, ALTER, TRUNCATE, RESTORE, OPTIMIZE, VACUUM, ...)
is refused before it runs, because a stray DELETE on ``bronze_log`` leaves ``examples`` and
everything after it out of step with no job to notice. Queries, SHOW, DESCRIBE, EXPLAIN and USE run.

Tables live in the ``infnet`` database (``USE infnet`` is applied, so ``scores`` and
``infnet.scores`` both work). The embedded Derby catalog admits one JVM at a time: run queries
when no other job is running (otherwise this stops with one line, exit 2), or point the session
at a shared metastore in production.

examples:
  infnet sql "SELECT model_name, count(*) FROM scores GROUP BY model_name"
  infnet sql --allow-writes "DELETE FROM quarantine WHERE run_id = 'adhoc'"
"""
from __future__ import annotations

import sys

from jobs.common import JobError, base_parser, run_job, spark_error_line

# Commands (Spark's ``Command`` plans, which run as soon as they are parsed) that only read.
READ_ONLY_COMMANDS = frozenset({
    "ShowTables", "ShowTablesExtended", "ShowTableExtended", "ShowViews", "ShowNamespaces",
    "ShowNamespacesCommand", "ShowColumns", "ShowCreateTable", "ShowTableProperties", "ShowPartitions",
    "ShowFunctions", "ShowCatalogsCommand", "ShowCurrentNamespaceCommand", "DescribeRelation",
    "DescribeColumn", "DescribeNamespace", "DescribeFunction", "DescribeQueryCommand",
    "DescribeDeltaDetailCommand", "DescribeDeltaHistory", "DescribeDeltaHistoryCommand",
    "ExplainCommand", "SetCatalogAndNamespace", "SetCommand",
})
# Plans that are not ``Command`` nodes but write, or run another statement (EXECUTE IMMEDIATE,
# SQL scripts); any other node whose name says it writes is refused too (conservative).
WRITE_STATEMENTS = frozenset({"InsertIntoStatement", "InsertIntoDir", "UnresolvedExecuteImmediate"})
WRITE_WORDS = ("Insert", "Write", "Delete", "Update", "Merge", "Drop", "Create", "Alter", "Truncate",
               "Restore", "Replace", "Overwrite", "Append", "Execute", "Compound", "Call")


def build_parser():
    parser = base_parser("sql", __doc__)
    parser.add_argument("query", help="SQL statement; tables by name, e.g. SELECT * FROM scores LIMIT 5")
    parser.add_argument("--limit", type=int, default=50, help="rows to print (default 50)")
    parser.add_argument("--csv", help="also write the full result to this CSV file")
    parser.add_argument("--allow-writes", action="store_true",
                        help="run statements that change tables or the catalog (refused by default)")
    return parser


def plan_nodes(spark, plan) -> list:
    """Every node of a parsed (unresolved) plan: children, and the plans nested in it (CTEs)."""
    from py4j.java_gateway import is_instance_of

    gateway = spark.sparkContext._gateway
    nodes, stack = [], [plan]
    while stack:
        node = stack.pop()
        nodes.append(node)
        children = node.children()
        stack += [children.apply(i) for i in range(children.size())]
        inner = node.innerChildren()
        stack += [inner.apply(i) for i in range(inner.size())
                  if is_instance_of(gateway, inner.apply(i), "org.apache.spark.sql.catalyst.plans.logical.LogicalPlan")]
    return nodes


def writing_node(spark, query: str) -> str | None:
    """The name of the first node of ``query``'s parsed plan that writes, or None when it only reads.

    Parsing runs nothing (``spark.sql`` would run a command at once). Spark's ``Command`` plans are
    allowed only when listed in ``READ_ONLY_COMMANDS``; other nodes when they are no known write
    and their name has no writing word. A syntax error raises Spark's ParseException.
    """
    from py4j.java_gateway import is_instance_of

    gateway = spark.sparkContext._gateway
    plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(query)
    for node in plan_nodes(spark, plan):
        name = node.nodeName().rstrip("$")
        if is_instance_of(gateway, node, "org.apache.spark.sql.catalyst.plans.logical.Command"):
            if name not in READ_ONLY_COMMANDS:
                return name
        elif name in WRITE_STATEMENTS or any(word in name for word in WRITE_WORDS):
            return name
    return None


def body(spark, settings, args) -> None:
    from pyspark.errors.exceptions.captured import CapturedException

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


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
