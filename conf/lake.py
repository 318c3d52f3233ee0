"""Reading and writing the lake's Delta tables with idempotent semantics.

Every write goes through :func:`write_table`: it writes to ``<lake>/tables/<name>``, replaces
exactly the slice being (re)computed (``replaceWhere``) so reruns never duplicate rows, and
registers the table in the catalog (``<database>.<name>``) for SQL.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from conf.settings import Settings
from conf.tables import TableDef

log = logging.getLogger("infnet.lake")


def qualified_name(settings: Settings, table: TableDef) -> str:
    return f"{settings.lake.database}.{table.name}"


def table_exists(spark: SparkSession, settings: Settings, table: TableDef) -> bool:
    return DeltaTable.isDeltaTable(spark, settings.lake.table_path(table.name))


def sql_literal(value: Any) -> str:
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def slice_predicate(slice_values: dict[str, Any]) -> str:
    """``{"date": "2022-05-01", "model_name": "infnet"}`` -> ``date = '2022-05-01' AND ...``."""
    return " AND ".join(f"`{k}` = {sql_literal(v)}" for k, v in slice_values.items())


def write_table(
    df: DataFrame,
    settings: Settings,
    table: TableDef,
    replace_slice: dict[str, Any] | str | None = None,
    user_metadata: dict[str, Any] | None = None,
    properties: dict[str, str] | None = None,
    merge_schema: bool = False,
) -> int:
    """Write ``df`` into ``table``, replacing ``replace_slice`` (or the whole table when None).

    ``replace_slice`` is a column->value dict (or a SQL predicate) that every row of ``df`` must
    satisfy; Delta enforces it, so a rerun for the same slice replaces exactly that slice.
    ``merge_schema`` lets a slice write add the nullable columns a newer release gave the table
    (older rows read them as null) instead of failing on the schema of a lake written before.
    Returns the new Delta version of the table.
    """
    spark = df.sparkSession
    path = settings.lake.table_path(table.name)
    writer = df.write.format("delta").mode("overwrite")
    if table.partition_by:
        writer = writer.partitionBy(*table.partition_by)
    if replace_slice is not None and table_exists(spark, settings, table):
        predicate = replace_slice if isinstance(replace_slice, str) else slice_predicate(replace_slice)
        writer = writer.option("replaceWhere", predicate)
    elif replace_slice is None:
        writer = writer.option("overwriteSchema", "true")
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    if user_metadata:
        writer = writer.option("userMetadata", json.dumps(user_metadata, sort_keys=True))
    writer.save(path)
    register_table(spark, settings, table)
    if properties:
        props = ", ".join(f"{sql_literal(k)} = {sql_literal(v)}" for k, v in properties.items())
        spark.sql(f"ALTER TABLE {qualified_name(settings, table)} SET TBLPROPERTIES ({props})")
    return current_version(spark, settings, table)


def register_table(spark: SparkSession, settings: Settings, table: TableDef) -> None:
    """Register the table's location in the catalog; re-point an entry left by another lake."""
    name, path = qualified_name(settings, table), settings.lake.table_path(table.name)
    try:
        exists = spark.catalog.tableExists(name)
    except Exception:  # noqa: BLE001 - Delta cannot load an entry whose folder is gone: re-point it below
        exists = True
    if exists:
        try:
            location = spark.sql(f"DESCRIBE DETAIL {name}").first()["location"]
        except Exception:  # noqa: BLE001 - its folder is gone: re-point it below
            location = ""
        if location.rstrip("/").removeprefix("file:") == path.rstrip("/").removeprefix("file:"):
            return
        spark.sql(f"DROP TABLE {name}")  # external table: drops the catalog entry only, not the data
    spark.sql(f"CREATE TABLE {name} USING DELTA LOCATION {sql_literal(path)}")


def read_table(
    spark: SparkSession, settings: Settings, table: TableDef, version: int | None = None
) -> DataFrame:
    """Read a table, optionally pinned to a Delta version (time travel)."""
    path = settings.lake.table_path(table.name)
    if not table_exists(spark, settings, table):
        raise FileNotFoundError(
            f"table {qualified_name(settings, table)} does not exist at {path}; run the job that produces it first"
        )
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    return reader.load(path)


def current_version(spark: SparkSession, settings: Settings, table: TableDef) -> int:
    history = DeltaTable.forPath(spark, settings.lake.table_path(table.name)).history(1)
    return int(history.select("version").first()[0])


def hadoop_file(spark: SparkSession, uri: str):
    """(Hadoop ``Path``, its ``FileSystem``) of a local path or any Hadoop filesystem URI."""
    jvm = spark.sparkContext._jvm  # noqa: SLF001 - Hadoop FS is only reachable through the JVM
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())  # noqa: SLF001


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    """Write a text file to a local path or any Hadoop filesystem URI (like the lake itself)."""
    if "://" not in uri or uri.startswith("file:"):
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    hadoop_path, fs = hadoop_file(spark, uri)
    stream = fs.create(hadoop_path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def add_missing_columns(spark: SparkSession, settings: Settings, table: TableDef, schema,
                        fill: dict[str, str] | None = None) -> list[str]:
    """Bring an existing table written before a contract grew up to date: add the columns of
    ``schema`` (a StructType) it lacks, as nullable columns, and set them on the old rows to the
    SQL expressions of ``fill``. Returns the added column names (none when the table is absent)."""
    if not table_exists(spark, settings, table):
        return []
    have = {c.lower() for c in read_table(spark, settings, table).columns}
    missing = [f for f in schema.fields if f.name.lower() not in have]
    if not missing:
        return []
    register_table(spark, settings, table)
    name = qualified_name(settings, table)
    spark.sql(f"ALTER TABLE {name} ADD COLUMNS ({', '.join(f'`{f.name}` {f.dataType.simpleString()}' for f in missing)})")
    sets = [f"`{f.name}` = {fill[f.name]}" for f in missing if fill and f.name in fill]
    if sets:
        spark.sql(f"UPDATE {name} SET {', '.join(sets)}")
    return [f.name for f in missing]


def stage_parts(spark: SparkSession, parts, folder: str) -> DataFrame:
    """Write each ``(name, make_frame)`` of ``parts`` as scratch Parquet under ``folder/name``, one
    Spark plan at a time, and return them read back as one DataFrame, so that a table built from
    plans too large to run at once still gets one commit: a crash leaves only scratch files, never
    a half-written table. The caller removes ``folder`` (:func:`remove_path`) once it has written."""
    names = []
    for name, make_frame in parts:
        started = time.time()
        make_frame().write.mode("overwrite").parquet(f"{folder}/{name}")
        log.info("staged %s in %.0f s", name, time.time() - started)
        names.append(name)
    return spark.read.parquet(*[f"{folder}/{n}" for n in names])


def upgrade_lake(spark: SparkSession, settings: Settings) -> list[str]:
    """Bring an older lake's tables to the current schema, the one place that knows how: every
    job calls it once before it reads (``jobs.common.run_job``), so no job keeps a branch for an
    old layout. Today: ``candidates`` and ``scores`` written before candidate sources existed gain
    ``source``, their old rows marked ``logged`` (the only source there was); ``ingest_audit``
    written before ``ignored_columns`` gains it (null on the old rows). Returns what was added as
    ``table.column`` (nothing on a current or an empty lake: a few catalog look-ups)."""
    from conf.schemas import CANDIDATES_SCHEMA, INGEST_AUDIT_SCHEMA, SCORES_SOURCE_FIELD, schema_of
    from conf.tables import CANDIDATES, INGEST_AUDIT, SCORES

    added = []
    for table, schema in ((CANDIDATES, CANDIDATES_SCHEMA), (SCORES, schema_of([SCORES_SOURCE_FIELD])),
                          (INGEST_AUDIT, INGEST_AUDIT_SCHEMA)):
        added += [f"{table.name}.{column}" for column in
                  add_missing_columns(spark, settings, table, schema, fill={"source": "'logged'"})]
    return added


def remove_path(spark: SparkSession, uri: str) -> None:
    """Delete a folder (recursively) on a local path or any Hadoop filesystem URI; absent is fine."""
    hadoop_path, fs = hadoop_file(spark, uri)
    if fs.exists(hadoop_path):
        fs.delete(hadoop_path, True)
