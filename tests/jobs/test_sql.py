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


# ---------------------------------------------------------------------------------------------
# --engine duckdb: no JVM, the newest committed Delta version, read-only
# ---------------------------------------------------------------------------------------------

MIXED = """SELECT * FROM VALUES
  ('2022-05-01', 1, 'a', 1.0D, CAST(1.5 AS FLOAT), CAST(1.25 AS DECIMAL(10, 3)), true, DATE'2022-05-01',
   TIMESTAMP'2022-05-01 10:00:00.120', array(1, 2, NULL), map('k', 1.5D), named_struct('x', 1L, 'y', 'b'),
   X'0aff', 1e-5D, 'tab\there'),
  ('2022-05-02', NULL, 'ünï', 0.1D + 0.2D, NULL, NULL, NULL, NULL, NULL, array(), NULL, NULL, NULL, 12345678.9D, NULL)
  AS t(date, i, s, d, f, dec, b, dt, ts, arr, m, st, bin, d2, txt)"""


@pytest.fixture(scope="module")
def duck_lake(spark, settings, tmp_path_factory):
    """A lake of its own with ``metrics`` (partitioned by date, every kind of column) and
    ``ab_reports`` written by the jobs' write helper; the session catalog's entries are put back."""
    from dataclasses import replace

    from conf.lake import write_table
    from conf.tables import AB_REPORTS, METRICS

    own = replace(settings, lake=replace(settings.lake, root=str(tmp_path_factory.mktemp("duck_lake"))))
    names = [f"{settings.lake.database}.{t.name}" for t in (METRICS, AB_REPORTS)]
    before = {}
    for name in names:
        try:
            before[name] = spark.sql(f"DESCRIBE DETAIL {name}").first()["location"] if spark.catalog.tableExists(name) else None
        except Exception:  # noqa: BLE001 - an entry whose folder is gone: leave it gone
            before[name] = None
    write_table(spark.sql(MIXED), own, METRICS)
    write_table(spark.sql("SELECT id AS report_id, id * 10 AS v FROM range(3)"), own, AB_REPORTS)
    yield own
    for name, location in before.items():
        spark.sql(f"DROP TABLE IF EXISTS {name}")
        if location:
            spark.sql(f"CREATE TABLE {name} USING DELTA LOCATION '{location}'")


def both_engines(settings, capsys, tmp_path, *args: str) -> tuple[list[str], list]:
    """What ``--engine spark`` and ``--engine duckdb`` print for the same flags, and their CSVs."""
    import pandas as pd

    outs, csvs = [], []
    for engine in ("spark", "duckdb"):
        csv = tmp_path / f"{engine}.csv"
        assert run_sql(settings, "--engine", engine, "--csv", str(csv), *args) == 0, capsys.readouterr().err
        outs.append(capsys.readouterr().out)
        csvs.append(pd.read_csv(csv))
    return outs, csvs


def test_duckdb_gives_what_spark_gives(duck_lake, capsys, tmp_path):
    (spark_out, duck_out), _ = both_engines(duck_lake, capsys, tmp_path, "SELECT * FROM metrics ORDER BY date")
    assert duck_out == spark_out and "1.23456789E7" in spark_out and "|tab\\there|" in spark_out
    # the CSV of scalar columns (nested values are each engine's Python objects in pandas)
    (spark_out, duck_out), (spark_csv, duck_csv) = both_engines(
        duck_lake, capsys, tmp_path, "--limit", "1",
        "SELECT date, i, s, d, f, dec, b, dt, ts, d2, txt FROM infnet.metrics ORDER BY date")
    assert duck_out == spark_out and "only showing top 1 row" in duck_out
    assert duck_csv.equals(spark_csv) and len(duck_csv) == 2


DUCK_WRITES = [
    "INSERT INTO ab_reports VALUES (9, 90)", "UPDATE ab_reports SET v = 0", "DELETE FROM ab_reports",
    "CREATE TABLE x AS SELECT * FROM ab_reports", "DROP VIEW ab_reports", "ALTER VIEW ab_reports RENAME TO y",
    "COPY ab_reports TO '/tmp/sql_guard.csv'", "EXPLAIN ANALYZE COPY ab_reports TO '/tmp/sql_guard.csv'",
    "ATTACH '/tmp/sql_guard.db'", "INSTALL httpfs", "LOAD httpfs", "PRAGMA enable_profiling", "SET threads = 1",
    "EXPORT DATABASE '/tmp/sql_guard_db'", "CALL pragma_version()", "SELECT 1; DROP VIEW ab_reports",
]


@pytest.mark.parametrize("statement", DUCK_WRITES, ids=lambda s: " ".join(s.split()[:2]))
def test_duckdb_refuses_statements_that_are_not_queries(duck_lake, capsys, statement):
    assert run_sql(duck_lake, "--engine", "duckdb", statement) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sql: error: "), err
    assert "refusing" in err or "one statement at a time" in err, err


@pytest.mark.parametrize("args, expected", [
    (["--allow-writes", "DELETE FROM ab_reports"], "--allow-writes needs --engine spark"),
    (["SELEC 1"], 'Parser Error: syntax error at or near "SELEC" (line 1, column 1)'),
    (["SELECT nope FROM ab_reports"], 'Binder Error: Referenced column "nope" not found in FROM clause!'),
    (["SELECT * FROM recommendations"], "table infnet.recommendations does not exist at "),
    (["SELECT * FROM read_csv('/etc/passwd')"], "Permission Error"),  # no files outside the lake tables
])
def test_duckdb_errors_are_one_line_exit_2(duck_lake, capsys, args, expected):
    assert run_sql(duck_lake, "--engine", "duckdb", *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sql: error: " + expected), err


def test_duckdb_reads_only_committed_versions(spark, duck_lake, capsys):
    """Data files a writer has added but not committed yet (and its temporary log file) are not read."""
    import glob
    import os
    import shutil

    from conf.lake import write_table
    from conf.tables import AB_REPORTS

    path = duck_lake.lake.table_path(AB_REPORTS.name)
    data = sorted(glob.glob(os.path.join(path, "*.parquet")))
    shutil.copy(data[-1], os.path.join(path, "part-99999-uncommitted.c000.snappy.parquet"))
    with open(os.path.join(path, "_delta_log", ".00000000000000000009.json.tmp"), "w") as half:
        half.write('{"add": {"path": "part-99999-uncommitted.c000.snappy.parquet"')
    query = "SELECT count(*) AS n, sum(v) AS total FROM ab_reports"
    assert run_sql(duck_lake, "--engine", "duckdb", query) == 0, capsys.readouterr().err
    assert "|3  |30   |" in capsys.readouterr().out
    write_table(spark.sql("SELECT id AS report_id, id * 10 AS v FROM range(4)"), duck_lake, AB_REPORTS)
    assert run_sql(duck_lake, "--engine", "duckdb", query) == 0
    assert "|4  |60   |" in capsys.readouterr().out  # the next committed version


def test_duckdb_engine_starts_no_jvm(duck_lake):
    """``INFNET_SQL_ENGINE=duckdb infnet sql ...`` imports no pyspark module (so runs beside jobs)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "INFNET_SQL_ENGINE": "duckdb"}
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "jobs.cli", "sql", "--lake", duck_lake.lake.root,
                          "SELECT report_id FROM ab_reports ORDER BY report_id LIMIT 1"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "|report_id|" in out.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert "duckdb" in imported and not [m for m in imported if m.startswith(("pyspark", "py4j"))]
