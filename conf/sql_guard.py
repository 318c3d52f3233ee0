"""The read-only guard of ``infnet sql`` on Spark: which node of a statement's parsed plan writes.

Parsing runs nothing (``spark.sql`` would run a command at once), so a statement that would change
a table or the catalog is refused before it runs.
"""
from __future__ import annotations

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
