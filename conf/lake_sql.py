"""SQL over the lake's Delta tables without a JVM: delta-rs reads, DuckDB answers, in process.

``infnet sql --engine duckdb`` runs here. Every table of :mod:`conf.tables` that a query names is a
DuckDB view (``scores`` and ``infnet.scores``) over the Arrow dataset of its newest **committed**
Delta version (``deltalake.DeltaTable(path).to_pyarrow_dataset()``: the files of that version's log,
so a job writing meanwhile is never seen half-done: files it added without a commit are not read).
No catalog and no Spark: it runs while jobs hold the embedded Derby metastore.

Read-only twice over: DuckDB's own parser classifies the statement and anything but a query
(SELECT, FROM, WITH, VALUES, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN of one) is refused before it runs;
and the connection is an in-memory database with external access off (no files, no extensions)
and its configuration locked, the tables Arrow datasets DuckDB cannot write to.

>>> refused_statement("SELECT * FROM scores"), refused_statement("DELETE FROM scores")
(None, 'DELETE')
>>> refused_statement("EXPLAIN ANALYZE COPY scores TO 'x.csv'")
'COPY'
>>> duckdb_query("/nonexistent-lake", "SELECT 41 + 1 AS answer").to_pylist()
[{'answer': 42}]
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from conf.settings import LakeSettings, ObjectStoreSettings, Settings, is_object_store
from conf.tables import ALL_TABLES

# DuckDB statement types that only read (SHOW, DESCRIBE and SUMMARIZE parse as SELECT).
READ_STATEMENT_TYPES = frozenset({"SELECT", "EXPLAIN"})
_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(ANALYZE\s+)?(\([^)]*\)\s*)?", re.IGNORECASE)
_LINE_CARET = re.compile(r"^LINE (\d+): (.*)\n( *)\^", re.MULTILINE)
_MISSING_TABLE = re.compile(r'Table with name "?([A-Za-z_][A-Za-z0-9_]*)"? does not exist', re.IGNORECASE)


class LakeSqlError(ValueError):
    """An expected failure of a query (refused, syntax, unknown table, unreadable table): one line."""


@dataclass(frozen=True)
class Lake:
    """Where the tables are and how to reach an object store: from Settings, LakeSettings or a root."""

    lake: LakeSettings
    s3: ObjectStoreSettings

    @classmethod
    def of(cls, where: Settings | LakeSettings | str) -> "Lake":
        if isinstance(where, Settings):
            return cls(where.lake, where.s3)
        if isinstance(where, LakeSettings):
            return cls(where, ObjectStoreSettings())
        return cls(LakeSettings(root=str(where)), ObjectStoreSettings())


def delta_location(uri: str, s3: ObjectStoreSettings) -> tuple[str, dict[str, str]]:
    """(delta-rs table URI, storage options) of a table location as the jobs write it.

    >>> delta_location("file:/data/lake/tables/scores", ObjectStoreSettings())
    ('/data/lake/tables/scores', {})
    >>> uri, options = delta_location("s3a://bucket/lake/tables/scores", ObjectStoreSettings(
    ...     endpoint="http://127.0.0.1:5055", access_key="k", secret_key="s"))
    >>> uri, options["AWS_ENDPOINT_URL"], options["AWS_ALLOW_HTTP"]
    ('s3://bucket/lake/tables/scores', 'http://127.0.0.1:5055', 'true')
    """
    if is_object_store(uri):
        options = {"AWS_REGION": s3.region,
                   "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false" if s3.path_style_access else "true"}
        if s3.endpoint:
            endpoint = s3.endpoint if "://" in s3.endpoint else f"https://{s3.endpoint}"
            options["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        if s3.access_key and s3.secret_key:
            options["AWS_ACCESS_KEY_ID"], options["AWS_SECRET_ACCESS_KEY"] = s3.access_key, s3.secret_key
        return "s3://" + uri.split("://", 1)[1], options
    if uri.startswith("file:"):
        return re.sub(r"^file:(//)?", "", uri), {}
    if "://" in uri:
        raise LakeSqlError(f"the duckdb engine reads local and s3a:// lakes, not {uri.split('://', 1)[0]}:// "
                           "(use --engine spark)")
    return uri, {}


def refused_statement(query: str) -> str | None:
    """The DuckDB type of the first statement of ``query`` that is not a query, or None.

    Parsing runs nothing. EXPLAIN is judged by the statement it explains (EXPLAIN ANALYZE runs it).
    One statement at a time; a syntax error raises :class:`LakeSqlError`.
    """
    import duckdb

    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as err:
        raise LakeSqlError(error_line(err, query)) from None
    if not statements:
        raise LakeSqlError("no SQL statement given")
    if len(statements) > 1:
        raise LakeSqlError(f"one statement at a time ({len(statements)} given)")
    kind = statements[0].type.name
    if kind == "EXPLAIN":
        inner = _EXPLAIN.sub("", query, count=1)
        return refused_statement(inner) if inner.strip() and inner != query else kind
    return None if kind in READ_STATEMENT_TYPES else kind


def error_line(err: BaseException, query: str = "") -> str:
    """One line for a DuckDB error: its first line, the hint (``Did you mean``, candidate columns)
    and where in the statement it happened (``line L, column C``) when DuckDB points at it."""
    text = str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(err).__name__
    hints = [line for line in lines[1:] if line.startswith(("Did you mean", "Candidate bindings"))]
    where = ""
    caret = _LINE_CARET.search(text)
    if caret:
        prefix = len(f"LINE {caret[1]}: ")
        where = f" (line {caret[1]}, column {max(len(caret[3]) - prefix, 0) + 1})"
    return " ".join([first, *hints]) + where


def named_tables(query: str) -> list[str]:
    """The lake tables whose name appears as a word of ``query`` (all of them when none does:
    ``SHOW TABLES``, ``SELECT * FROM information_schema.tables``)."""
    names = [t.name for t in ALL_TABLES if re.search(rf"\b{re.escape(t.name)}\b", query, re.IGNORECASE)]
    return names or [t.name for t in ALL_TABLES]


def open_table(lake: Lake, name: str):
    """The pyarrow dataset of table ``name``'s newest committed version; None when it has no log."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri, options = delta_location(lake.lake.table_path(name), lake.s3)
    try:
        return DeltaTable(uri, storage_options=options or None).to_pyarrow_dataset()
    except TableNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - delta-rs / object-store errors of any kind: one line
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise LakeSqlError(f"cannot read table {name} at {uri}: {first}") from None


def connect(lake: Lake, tables: list[str]):
    """An in-memory DuckDB connection with ``tables`` (those that exist) as views, then sealed:
    no file or network access of its own, no extensions, no Python variables as tables, settings
    locked. Returns (connection, the names that have no table yet)."""
    import duckdb

    con = duckdb.connect(":memory:", config={
        "enable_external_access": False, "autoload_known_extensions": False,
        "autoinstall_known_extensions": False, "python_enable_replacements": False,
    })
    con.execute("SET TimeZone = 'UTC'")  # Spark's session time zone (conf/spark.py)
    con.execute(f"CREATE SCHEMA {lake.lake.database}")
    missing = []
    for name in tables:
        dataset = open_table(lake, name)
        if dataset is None:
            missing.append(name)
            continue
        con.register(name, dataset)
        con.execute(f'CREATE VIEW {lake.lake.database}."{name}" AS SELECT * FROM main."{name}"')
    con.execute("SET lock_configuration = true")
    return con, missing


def duckdb_query(lake: Settings | LakeSettings | str, query: str, limit: int | None = None):
    """Run one read-only statement over the lake's tables; the result as a ``pyarrow.Table``
    (at most ``limit`` rows when given). Refused statements and errors raise :class:`LakeSqlError`."""
    import duckdb

    kind = refused_statement(query)
    if kind:
        keyword = query.split(None, 1)[0].upper()
        raise LakeSqlError(f"refusing {keyword} (a DuckDB {kind} statement): the duckdb engine only reads; "
                           "the lake is written by the jobs")
    where = Lake.of(lake)
    con, missing = connect(where, named_tables(query))
    try:
        relation = con.sql(query)
        if relation is None:  # not a query after all: nothing to show
            raise LakeSqlError("the statement returned no result")
        return (relation.limit(limit) if limit is not None else relation).to_arrow_table()
    except duckdb.Error as err:
        unknown = _MISSING_TABLE.search(str(err))
        if unknown and unknown[1].lower() in missing:
            name = unknown[1].lower()
            raise LakeSqlError(f"table {where.lake.database}.{name} does not exist at "
                               f"{where.lake.table_path(name)}; run the job that produces it first") from None
        raise LakeSqlError(error_line(err, query)) from None
    finally:
        con.close()
