"""``infnet sql``: read-only unless asked, and every failing statement is one line with exit 2."""
from __future__ import annotations

import logging

import pytest

GUARD = "sql_guard"  # a tiny table of the test lake's catalog that the refused statements target


@pytest.fixture(scope="module")
def guarded(spark, settings, tmp_path_factory):
    location = tmp_path_factory.mktemp("sql_guard")
    db = settings.lake.database
    spark.sql(f"DROP TABLE IF EXISTS {db}.{GUARD}")
    spark.sql(f"CREATE TABLE {db}.{GUARD} USING DELTA LOCATION '{location}' AS "
              "SELECT id, CAST(id * 10 AS BIGINT) AS v FROM range(5)")
    yield f"{db}.{GUARD}"
    spark.sql(f"DROP TABLE IF EXISTS {db}.{GUARD}")


def run_sql(settings, *args: str) -> int:
    from jobs.sql import main

    return main(["--lake", settings.lake.root, *args])


WRITES = [
    f"DELETE FROM {GUARD} WHERE id = 1",
    f"DROP TABLE {GUARD}",
    f"INSERT INTO {GUARD} VALUES (9, 90)",
    f"INSERT OVERWRITE {GUARD} SELECT * FROM {GUARD} WHERE id = 0",
    f"WITH x AS (SELECT 7 AS id, 70L AS v) INSERT INTO {GUARD} SELECT * FROM x",
    f"UPDATE {GUARD} SET v = 0",
    f"MERGE INTO {GUARD} t USING (SELECT 1 AS id) s ON t.id = s.id WHEN MATCHED THEN DELETE",
    f"ALTER TABLE {GUARD} ADD COLUMNS (w INT)",
    f"ALTER TABLE {GUARD} SET TBLPROPERTIES ('x' = 'y')",
    f"CREATE TABLE sql_guard_copy AS SELECT * FROM {GUARD}",
    f"TRUNCATE TABLE {GUARD}",
    f"RESTORE TABLE {GUARD} TO VERSION AS OF 0",
    f"OPTIMIZE {GUARD}",
    f"VACUUM {GUARD}",
    f"EXECUTE IMMEDIATE 'DELETE FROM {GUARD}'",
    f"BEGIN DELETE FROM {GUARD}; END",
    "CREATE DATABASE sql_guard_db",
    "INSERT OVERWRITE DIRECTORY '/tmp/sql_guard_dir' USING parquet SELECT 1",
]


@pytest.mark.parametrize("statement", WRITES, ids=lambda s: " ".join(s.split()[:2]))
def test_statements_that_write_are_refused_by_default(spark, settings, guarded, capsys, statement):
    before = sorted(tuple(r) for r in spark.table(guarded).collect())
    assert run_sql(settings, statement) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "read-only unless --allow-writes" in err, err
    assert err.startswith(f"sql: error: refusing {statement.split()[0].upper()}")
    assert sorted(tuple(r) for r in spark.table(guarded).collect()) == before
    assert spark.catalog.tableExists(guarded) and not spark.catalog.tableExists(f"{settings.lake.database}.sql_guard_copy")


@pytest.mark.parametrize("statement", [
    f"SELECT count(*) AS n FROM {GUARD}",
    f"WITH x AS (SELECT * FROM {GUARD}) SELECT max(v) FROM x WHERE id IN (SELECT id FROM {GUARD})",
    "SHOW TABLES", f"DESCRIBE {GUARD}", f"DESCRIBE HISTORY {GUARD}", f"DESCRIBE DETAIL {GUARD}",
    f"EXPLAIN DELETE FROM {GUARD}", f"SHOW TBLPROPERTIES {GUARD}", "VALUES (1, 2)", f"TABLE {GUARD}",
    f"SELECT * FROM {GUARD} VERSION AS OF 0",
], ids=lambda s: " ".join(s.split()[:2]))
def test_reading_statements_run(settings, guarded, capsys, statement):
    assert run_sql(settings, statement) == 0, capsys.readouterr().err
    assert "+" in capsys.readouterr().out  # the result table was printed


def test_writes_run_with_the_flag(spark, settings, guarded, capsys):
    assert run_sql(settings, "--allow-writes", f"DELETE FROM {GUARD} WHERE id = 4") == 0, capsys.readouterr().err
    assert sorted(r.id for r in spark.table(guarded).collect()) == [0, 1, 2, 3]
    assert run_sql(settings, "--allow-writes", f"INSERT INTO {GUARD} VALUES (4, 40)") == 0
    assert spark.table(guarded).count() == 5


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.mark.parametrize("statement, expected", [
    # a syntax error used to print "sql: error: " and nothing else
    ("SELEC * FROM x", "[PARSE_SYNTAX_ERROR] Syntax error at or near 'SELEC'. SQLSTATE: 42601 (line 1, column 1)"),
    (f"SELECT id FROM {GUARD}\nWHERE nope > 1",
     "[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column, variable, or function parameter with name `nope` cannot be "
     "resolved. Did you mean one of the following? [`id`, `v`]. SQLSTATE: 42703 (line 2, column 7, at `nope`)"),
    ("SELECT * FROM no_such_table", "[TABLE_OR_VIEW_NOT_FOUND] The table or view `no_such_table` cannot be found."),
    # run-time failures used to give a Python traceback and exit 1
    (f"SELECT 9223372036854775807L + id FROM {GUARD}",
     "[ARITHMETIC_OVERFLOW] overflow. Use 'try_add' to tolerate overflow and return NULL instead. If necessary "
     "set \"spark.sql.ansi.enabled\" to \"false\" to bypass this error. SQLSTATE: 22003 "
     "(line 1, column 8, at `9223372036854775807L + id`)"),
    (f"SELECT CAST(concat('x', id) AS INT) FROM {GUARD}", "[CAST_INVALID_INPUT] The value 'x0' of the type"),
])
def test_a_failing_statement_is_one_line_exit_2(settings, guarded, capsys, statement, expected):
    from pyspark.logger import PySparkLogger

    json_log = Records()  # PySpark logs each captured error as a kB JSON record before our line
    logger = PySparkLogger.getLogger("SQLQueryContextLogger")
    logger.addHandler(json_log)
    try:
        assert run_sql(settings, statement) == 2
    finally:
        logger.removeHandler(json_log)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("sql: error: " + expected), err
    assert json_log.records == []
