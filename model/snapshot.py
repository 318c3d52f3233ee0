"""Pinning a Delta version of a table to the Parquet files that make it up, for reading without Spark.

:func:`resolve_snapshot` asks Spark only which Parquet files hold the snapshot at ``versionAsOf``
for some dates (the Delta log is the source of truth; no row goes through Spark) and returns an
:class:`ExamplesSnapshot`; :func:`open_dataset` then opens those files with ``pyarrow.dataset``,
``date`` parsed from the hive path, local or ``s3a://`` alike (``conf.storage.arrow_filesystem``).
:mod:`model.loaders` streams the rows from there.

Deletion vectors: Parquet files of a snapshot with deletion vectors still hold the deleted rows,
so reading them directly would resurrect deletes. :func:`resolve_snapshot` compares the row count
Spark sees (deletes applied) with the Parquet row count and refuses the snapshot when they differ
(run ``REORG TABLE ... APPLY (PURGE)`` to materialise the deletes). Column mapping (physical names
differ from logical ones) is refused for the same reason.

Example::

    >>> import pyarrow.dataset as ds
    >>> date_filter(["2022-04-26", "2022-04-25"]).equals(
    ...     ds.field("date").isin(pa.array([dt.date(2022, 4, 26), dt.date(2022, 4, 25)], pa.date32())))
    True
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

DATE_COLUMN = "date"

_DATE_IN_PATH = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/")


class SnapshotError(ValueError):
    """The examples snapshot cannot be read directly from its Parquet files (the message says why)."""


@dataclass(frozen=True)
class ExamplesSnapshot:
    """The Parquet files of one Delta version of a table, restricted to some dates.

    Args:
        table_path: the table's folder (local path or ``s3a://`` URI).
        version: the Delta version the files belong to.
        dates: the ISO dates kept, sorted.
        files: the Parquet files holding those dates at ``version``.
        num_rows: rows of ``files`` on ``dates``.
    """

    table_path: str
    version: int
    dates: tuple[str, ...]
    files: tuple[str, ...]
    num_rows: int


def _normalise_dates(dates: Iterable[str | dt.date]) -> tuple[str, ...]:
    return tuple(sorted({d.isoformat() if isinstance(d, dt.date) else dt.date.fromisoformat(str(d)).isoformat()
                         for d in dates}))


def resolve_snapshot(spark, table_path: str, version: int, dates: Iterable[str | dt.date]) -> ExamplesSnapshot:
    """Pin ``table_path`` at Delta ``version`` and list the Parquet files holding ``dates``.

    Args:
        spark: the session that reads the Delta log (no row goes through it, except to count the
            rows of a table with deletion vectors).
        table_path: the table's folder; it must be partitioned by ``date``.
        version: the Delta version to pin.
        dates: the dates to keep (ISO strings or ``datetime.date``).

    Raises:
        SnapshotError: for snapshots whose files cannot be read as plain Parquet (deletion vectors,
            column mapping) and when the dates hold no rows.
    """
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    dates = _normalise_dates(dates)
    if not dates:
        raise SnapshotError("no dates given")
    df = spark.read.format("delta").option("versionAsOf", int(version)).load(table_path)
    if DATE_COLUMN not in df.columns:
        raise SnapshotError(f"{table_path} has no {DATE_COLUMN!r} partition column")
    detail = DeltaTable.forPath(spark, table_path).detail().first().asDict()
    properties = detail.get("properties") or {}
    if properties.get("delta.columnMapping.mode", "none") != "none":
        raise SnapshotError(f"{table_path} uses column mapping; its Parquet files cannot be read by column name")
    wanted = set(dates)
    files = sorted(f for f in df.inputFiles() if (m := _DATE_IN_PATH.search(f)) is None or m.group(1) in wanted)
    snapshot = ExamplesSnapshot(table_path, int(version), dates, tuple(files), 0)
    parquet_rows = open_dataset(snapshot).count_rows(filter=date_filter(dates)) if files else 0
    features = set(detail.get("tableFeatures") or [])
    if "deletionVectors" in features or properties.get("delta.enableDeletionVectors") == "true":
        spark_rows = df.where(F.col(DATE_COLUMN).isin([dt.date.fromisoformat(d) for d in dates])).count()
        if spark_rows != parquet_rows:
            raise SnapshotError(
                f"{table_path}@{version} has deletion vectors on the requested dates ({parquet_rows} rows in its "
                f"Parquet files, {spark_rows} after deletes): run `REORG TABLE delta.`{table_path}` APPLY (PURGE)` "
                "and train on the new version"
            )
    if parquet_rows == 0:
        raise SnapshotError(f"{table_path}@{version} holds no rows for dates {', '.join(dates)}")
    return ExamplesSnapshot(table_path, int(version), dates, tuple(files), int(parquet_rows))


def date_filter(dates: Sequence[str]) -> ds.Expression:
    """A pyarrow dataset filter keeping the rows whose ``date`` is one of ``dates`` (ISO strings)."""
    return ds.field(DATE_COLUMN).isin(pa.array([dt.date.fromisoformat(d) for d in dates], pa.date32()))


def _filesystem(paths: Sequence[str]) -> tuple[pafs.FileSystem, list[str]]:
    """One pyarrow filesystem for the paths (s3a:// with the lake's S3 settings: conf.storage)."""
    from conf.storage import arrow_filesystem

    fs, _ = arrow_filesystem(paths[0])
    return fs, [arrow_filesystem(p)[1] for p in paths]


def open_dataset(snapshot: ExamplesSnapshot) -> ds.Dataset:
    """The snapshot's files as one pyarrow dataset, ``date`` parsed from the hive path."""
    fs, paths = _filesystem(list(snapshot.files))
    _, base = _filesystem([snapshot.table_path])
    partitioning = ds.partitioning(pa.schema([(DATE_COLUMN, pa.date32())]), flavor="hive")
    return ds.dataset(paths, filesystem=fs, format="parquet", partitioning=partitioning,
                      partition_base_dir=base[0].rstrip("/"))
