"""Arrow -> torch: reading the ``examples`` table at a pinned Delta version, batch by batch.

Two layers, so that training and scoring share one conversion:

- :func:`arrow_to_batch` is pure: one Arrow record batch (or table) holding the feature spec's
  columns -> the model's batch dict (``cat`` Long[B, M], ``seq`` Long[B, F, N], ``seq_gap``
  Float[B, F, N], ``dense`` Float[B, K] when the spec has dense fields, plus ``label`` / ``mask``
  Float[B, T] and ``user_id`` Long[B] when present).
  Sequences are padded / truncated to ``max_len`` with 0 (newest first, so truncation keeps the
  newest items); null or out-of-range categorical values map to the reserved bucket 0.
- :func:`resolve_snapshot` + :class:`ArrowBatches` read a table *without* a pandas copy: Spark
  only resolves which Parquet files make up the snapshot at ``versionAsOf`` (the Delta log is the
  source of truth; no row goes through Spark), then ``pyarrow.dataset`` streams those files with
  hive partitioning on ``date``, column projection and a date filter.

Memory bound of :class:`ArrowBatches`: at most ``shuffle_buffer_rows + read_batch_rows`` rows are
held at once, i.e. about ``rows * (8 * M + 12 * F * N + 8 * 2T)`` bytes of tensors (≈ 1.2 KB per
row for M = 20 fields and 3 sequences of 50: 64k rows ≈ 80 MB), whatever the table size. Shuffling
is a buffer shuffle over a per-epoch random file order: exact for tables smaller than the buffer,
approximate (rows mix within a buffer) beyond.

Deletion vectors: Parquet files of a snapshot with deletion vectors still hold the deleted rows,
so reading them directly would resurrect deletes. :func:`resolve_snapshot` compares the row count
Spark sees (deletes applied) with the Parquet row count and refuses the snapshot when they differ
(run ``REORG TABLE ... APPLY (PURGE)`` to materialise the deletes). Column mapping (physical names
differ from logical ones) is refused for the same reason.

>>> import pyarrow as pa
>>> from features.spec import demo_spec
>>> spec = demo_spec(seq_len=3)
>>> cols = {c.column: pa.array([1, None]) for c in spec.categorical}
>>> for s in spec.sequences:
...     cols[s.column] = pa.array([[5, 6, 7, 8], []]); cols[s.gap_column] = pa.array([[0.5], None])
>>> b = arrow_to_batch(pa.RecordBatch.from_pydict(cols), spec)
>>> b["cat"].shape, b["seq"].shape, b["seq"][0, 0].tolist(), b["seq"][1, 0].tolist(), b["seq_gap"][0, 0].tolist()
(torch.Size([2, 6]), torch.Size([2, 3, 3]), [5, 6, 7], [0, 0, 0], [0.5, 0.0, 0.0])
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import torch

from features.spec import FeatureSpec

log = logging.getLogger("infnet.model.data")

MODEL_INPUT_KEYS = ("cat", "seq", "seq_gap")
OPTIONAL_INPUT_KEYS = ("dense",)  # present when the spec has dense fields
DATE_COLUMN = "date"
USER_COLUMN = "user_id"

ArrowData = pa.RecordBatch | pa.Table


class SnapshotError(ValueError):
    """The examples snapshot cannot be read directly from its Parquet files (the message says why)."""


# =============================================================================================
# Pure conversion
# =============================================================================================

def _column(data: ArrowData, name: str) -> pa.Array:
    try:
        col = data.column(name)
    except KeyError:
        raise KeyError(f"input lacks column {name!r} required by the feature spec") from None
    if isinstance(col, pa.ChunkedArray):
        col = pa.concat_arrays(col.chunks) if col.num_chunks != 1 else col.chunk(0)
    return col


def _has_column(data: ArrowData, name: str) -> bool:
    return name in data.schema.names


def _int_column(arr: pa.Array, vocab_size: int | None = None) -> np.ndarray:
    """Nulls -> 0; with ``vocab_size``, values outside ``[0, vocab_size)`` -> reserved bucket 0."""
    values = np.array(pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    if vocab_size is not None:
        values = np.where((values < 0) | (values >= vocab_size), 0, values)
    return values


def _float_column(arr: pa.Array) -> np.ndarray:
    if pa.types.is_boolean(arr.type):
        arr = arr.cast(pa.int8())
    return np.array(pc.fill_null(arr.cast(pa.float32()), 0).to_numpy(zero_copy_only=False), dtype=np.float32)


def pad_lists(arr: pa.Array, max_len: int, dtype) -> np.ndarray:
    """A list column -> ``[rows, max_len]`` array: first ``max_len`` items, zero padded.

    Null lists and null items become 0. Vectorised over the whole column (no Python loop per row).
    """
    n = len(arr)
    out = np.zeros((n, max_len), dtype=dtype)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(arr)  # skips null lists, honours slicing
    if len(flat) == 0:
        return out
    values = pc.fill_null(flat, 0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(n), lengths)
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(len(values)) - np.repeat(starts, lengths)
    keep = pos < max_len
    out[rows[keep], pos[keep]] = values[keep]
    return out


def _count(counts: dict[str, int] | None, key: str, n: int) -> None:
    if counts is not None and n:
        counts[key] = counts.get(key, 0) + int(n)


def categorical_matrix(data: ArrowData, spec: FeatureSpec, fields: Iterable[int] | None = None,
                       out_of_range: dict[str, int] | None = None) -> np.ndarray:
    """``Long[rows, M]`` of the spec's categorical columns (reserved bucket 0 for nulls and
    out-of-range ids). With ``fields`` (indices into ``spec.categorical``) only those columns are
    converted and the others stay 0: scoring reads the user fields from the user state instead.

    One pass per column: the range is checked with Arrow's min/max kernel (no temporary arrays
    unless a column has an id out of range), and the values are copied straight from the Arrow
    buffer into the int64 matrix (zero-copy view when the column has no nulls). Ids outside
    ``[0, vocab_size)`` are added to ``out_of_range[column]`` when a dict is given.

    >>> from features.spec import demo_spec
    >>> spec = demo_spec()
    >>> data = pa.RecordBatch.from_pydict({f.column: pa.array([1, None, f.vocab_size], pa.int32()) for f in spec.categorical})
    >>> counts = {}
    >>> categorical_matrix(data, spec, out_of_range=counts)[:, 0].tolist(), counts["cat_user_id"]
    ([1, 0, 0], 1)
    """
    out = np.zeros((data.num_rows, len(spec.categorical)), dtype=np.int64)
    if data.num_rows == 0:
        return out
    for i in (range(len(spec.categorical)) if fields is None else fields):
        field = spec.categorical[i]
        arr = _column(data, field.column)
        if not pa.types.is_integer(arr.type):
            arr = arr.cast(pa.int64())
        if arr.null_count:
            arr = pc.fill_null(arr, 0)
        bounds = pc.min_max(arr)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if low is not None and (low < 0 or high >= field.vocab_size):
            bad = pc.or_(pc.less(arr, 0), pc.greater_equal(arr, field.vocab_size))
            _count(out_of_range, field.column, pc.sum(bad).as_py())
            arr = pc.if_else(bad, 0, arr)
        out[:, i] = arr.to_numpy(zero_copy_only=False)
    return out


def sequence_tensors(data: ArrowData, spec: FeatureSpec,
                     out_of_range: dict[str, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's behaviour sequences -> ``seq`` Long[rows, F, N] and ``seq_gap`` Float[rows, F, N]
    (out-of-range items -> 0 and counted in ``out_of_range[column]``, padded positions carry no
    gap). Needs only the sequence columns."""
    seq = np.zeros((data.num_rows, len(spec.sequences), max((s.max_len for s in spec.sequences), default=0)), np.int64)
    gap = np.zeros(seq.shape, np.float32)
    for i, s in enumerate(spec.sequences):
        items = pad_lists(_column(data, s.column), s.max_len, np.int64)
        bad = (items < 0) | (items >= s.vocab_size)
        if bad.any():
            _count(out_of_range, s.column, bad.sum())
            items = np.where(bad, 0, items)
        seq[:, i, : s.max_len] = items
        gaps = pad_lists(_column(data, s.gap_column), s.max_len, np.float32)
        gap[:, i, : s.max_len] = np.where(items > 0, gaps, 0.0)  # padded positions carry no gap
    return torch.from_numpy(seq), torch.from_numpy(gap)


def dense_matrix(data: ArrowData, spec: FeatureSpec) -> torch.Tensor:
    """``Float[rows, K]`` of the spec's dense columns (raw values, nulls -> 0)."""
    if not spec.dense:
        return torch.zeros((data.num_rows, 0))
    return torch.from_numpy(np.stack([_float_column(_column(data, f.column)) for f in spec.dense], axis=1))


def arrow_to_batch(data: ArrowData, spec: FeatureSpec, with_labels: bool | None = None,
                   out_of_range: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Arrow columns of ``spec`` -> the model batch dict (CPU tensors).

    ``with_labels``: None adds ``label``/``mask`` when every task's columns are present, True
    requires them, False skips them. ``user_id`` is added when present (for gAUC), and is ignored
    by the models. ``out_of_range``: a dict that counts ids mapped to 0 per column.
    """
    cat = categorical_matrix(data, spec, out_of_range=out_of_range)
    seq, gap = sequence_tensors(data, spec, out_of_range)
    batch = {"cat": torch.from_numpy(cat), "seq": seq, "seq_gap": gap}
    if spec.dense:
        batch["dense"] = dense_matrix(data, spec)
    has_labels = all(_has_column(data, c) for c in spec.label_columns)
    if with_labels and not has_labels:
        missing = [c for c in spec.label_columns if not _has_column(data, c)]
        raise KeyError(f"input lacks label columns {missing}")
    if has_labels and with_labels is not False:
        labels, masks = [], []
        for t in spec.tasks:
            label_arr = _column(data, t.column)
            mask = _float_column(_column(data, t.mask_column)) * (~np.asarray(label_arr.is_null())).astype(np.float32)
            labels.append(_float_column(label_arr))
            masks.append(mask)
        batch["label"] = torch.from_numpy(np.stack(labels, axis=1))
        batch["mask"] = torch.from_numpy(np.stack(masks, axis=1))
    if _has_column(data, USER_COLUMN):
        batch["user_id"] = torch.from_numpy(_int_column(_column(data, USER_COLUMN)))
    return batch


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """The part of a batch a model reads, moved to ``device``."""
    keys = MODEL_INPUT_KEYS + tuple(k for k in OPTIONAL_INPUT_KEYS if k in batch)
    return {k: (batch[k].to(device, non_blocking=True) if device is not None else batch[k]) for k in keys}


def slice_batch(batch: dict[str, torch.Tensor], index: torch.Tensor | slice) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in batch.items()}


def concat_batches(batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def columns_for(spec: FeatureSpec, with_labels: bool = True, extra: Iterable[str] = (USER_COLUMN,)) -> list[str]:
    cols = list(spec.feature_columns) + (spec.label_columns if with_labels else []) + list(extra)
    return list(dict.fromkeys(cols))


# =============================================================================================
# Snapshot resolution (Spark reads the Delta log only) and streaming (pyarrow)
# =============================================================================================

@dataclass(frozen=True)
class ExamplesSnapshot:
    """The Parquet files of one Delta version of a table, restricted to some dates."""

    table_path: str
    version: int
    dates: tuple[str, ...]
    files: tuple[str, ...]
    num_rows: int

    def to_dict(self) -> dict:
        return {"table_path": self.table_path, "version": self.version, "dates": list(self.dates),
                "num_files": len(self.files), "num_rows": self.num_rows}


_DATE_IN_PATH = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/")


def _normalise_dates(dates: Iterable[str | dt.date]) -> tuple[str, ...]:
    return tuple(sorted({d.isoformat() if isinstance(d, dt.date) else dt.date.fromisoformat(str(d)).isoformat()
                         for d in dates}))


def resolve_snapshot(spark, table_path: str, version: int, dates: Iterable[str | dt.date]) -> ExamplesSnapshot:
    """Pin ``table_path`` at Delta ``version`` and list the Parquet files holding ``dates``.

    Raises :class:`SnapshotError` for snapshots whose files cannot be read as plain Parquet
    (deletion vectors, column mapping) and when the dates hold no rows.
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


def iter_record_batches(snapshot: ExamplesSnapshot, columns: Sequence[str], batch_rows: int = 65_536,
                        file_order: Sequence[int] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream the snapshot's rows for its dates, ``columns`` only, file by file."""
    dataset = open_dataset(snapshot)
    fragments = list(dataset.get_fragments(filter=date_filter(snapshot.dates)))
    fragments.sort(key=lambda f: f.path)
    if file_order is not None:
        fragments = [fragments[i] for i in file_order if i < len(fragments)]
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise SnapshotError(f"{snapshot.table_path}@{snapshot.version} lacks columns {missing}")
    for fragment in fragments:
        yield from fragment.to_batches(columns=list(columns), filter=date_filter(snapshot.dates), batch_size=batch_rows)


class ArrowBatches(torch.utils.data.IterableDataset):
    """Model batches streamed from a snapshot; a shuffle buffer when ``shuffle``.

    Iterate directly (``for batch in ArrowBatches(...)``) or wrap in
    ``DataLoader(ds, batch_size=None)``. ``set_epoch(e)`` changes the shuffle (seeded by
    ``seed + e``), so a run is reproducible and epochs differ.
    """

    def __init__(
        self,
        snapshot: ExamplesSnapshot,
        spec: FeatureSpec,
        batch_size: int = 1024,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer_rows: int = 65_536,
        drop_last: bool = False,
        with_labels: bool = True,
        read_batch_rows: int = 16_384,
    ) -> None:
        super().__init__()
        self.snapshot, self.spec = snapshot, spec
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.shuffle_buffer_rows = max(int(shuffle_buffer_rows), self.batch_size)
        self.drop_last, self.with_labels, self.read_batch_rows = drop_last, with_labels, int(read_batch_rows)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = self.snapshot.num_rows
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _emit(self, buffer: list[pa.RecordBatch], gen: torch.Generator | None, final: bool):
        table = pa.Table.from_batches(buffer)
        batch = arrow_to_batch(table, self.spec, with_labels=self.with_labels)
        n = table.num_rows
        order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
        full = n - n % self.batch_size
        for start in range(0, full, self.batch_size):
            yield slice_batch(batch, order[start:start + self.batch_size]), None
        rest = order[full:]
        if len(rest) and final and not self.drop_last:
            yield slice_batch(batch, rest), None
        elif len(rest) and not final:
            yield None, table.take(pa.array(rest.numpy()))  # carried into the next buffer

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        columns = columns_for(self.spec, self.with_labels, extra=())
        if USER_COLUMN not in columns:
            columns.append(USER_COLUMN)
        gen, file_order = None, None
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            file_order = list(range(len(self.snapshot.files)))
            random.Random(self.seed * 100_003 + self.epoch).shuffle(file_order)
        limit = self.shuffle_buffer_rows if self.shuffle else self.batch_size
        buffer: list[pa.RecordBatch] = []
        rows = 0
        for rb in iter_record_batches(self.snapshot, columns, self.read_batch_rows, file_order):
            if rb.num_rows == 0:
                continue
            buffer.append(rb)
            rows += rb.num_rows
            if rows >= limit:
                carry = None
                for out, rest in self._emit(buffer, gen, final=False):
                    if out is not None:
                        yield out
                    else:
                        carry = rest
                buffer = carry.to_batches() if carry is not None else []
                rows = sum(b.num_rows for b in buffer)
        if buffer:
            for out, _ in self._emit(buffer, gen, final=True):
                if out is not None:
                    yield out


def load_tensors(snapshot: ExamplesSnapshot, spec: FeatureSpec, with_labels: bool = True,
                 read_batch_rows: int = 65_536) -> dict[str, torch.Tensor]:
    """The whole snapshot as in-memory tensors, built batch by batch from Arrow (no pandas).

    Peak memory ≈ the tensors themselves plus one Arrow read batch; use it for evaluation sets and
    small tables, :class:`ArrowBatches` otherwise.
    """
    columns = columns_for(spec, with_labels, extra=())
    if USER_COLUMN not in columns:
        columns.append(USER_COLUMN)
    parts = [arrow_to_batch(rb, spec, with_labels=with_labels)
             for rb in iter_record_batches(snapshot, columns, read_batch_rows) if rb.num_rows]
    if not parts:
        raise SnapshotError(f"{snapshot.table_path}@{snapshot.version} holds no rows for {snapshot.dates}")
    return concat_batches(parts)


class TensorBatches:
    """In-memory tensors cut into (optionally shuffled) batches; same interface as ArrowBatches."""

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int = 1024, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False) -> None:
        self.tensors, self.batch_size, self.shuffle, self.seed, self.drop_last = tensors, int(batch_size), shuffle, seed, drop_last
        self.epoch = 0
        self.num_rows = len(next(iter(tensors.values())))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_rows // self.batch_size if self.drop_last else -(-self.num_rows // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n = self.num_rows
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
                 if self.shuffle else torch.arange(n))
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            yield slice_batch(self.tensors, order[start:start + self.batch_size])


# =============================================================================================
# Synthetic examples (tests, docstrings, throughput benchmarks)
# =============================================================================================

def synthetic_examples(spec: FeatureSpec, n_rows: int, dates: Sequence[str] = ("2022-04-25",), seed: int = 0,
                       n_users: int = 20) -> pa.Table:
    """A tiny examples table with ``spec``'s columns plus the key columns, labels learnable from features.

    Sequences have random lengths in ``0..max_len`` (padded with 0 up to ``max_len`` as the
    features stage writes them); the binary labels depend on the parity of ``cat_<first field>``
    and on the first sequence's newest item, so a model can beat AUC 0.5.
    """
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {}
    users = rng.integers(1, n_users + 1, n_rows)
    cols["impression_id"] = pa.array([f"i{seed}_{k}" for k in range(n_rows)])
    cols["user_id"] = pa.array(users, pa.int64())
    cols["video_id"] = pa.array(rng.integers(1, 1000, n_rows), pa.int64())
    cols["time_ms"] = pa.array(1_650_844_800_000 + np.arange(n_rows, dtype=np.int64) * 1000, pa.int64())
    cols[DATE_COLUMN] = pa.array([dt.date.fromisoformat(dates[k % len(dates)]) for k in range(n_rows)], pa.date32())
    for c in spec.categorical:
        values = users % c.vocab_size if c.name == "user_id" else rng.integers(1, c.vocab_size, n_rows)
        cols[c.column] = pa.array(values, pa.int32())
    for s in spec.sequences:
        lengths = rng.integers(0, s.max_len + 1, n_rows)
        items = np.where(np.arange(s.max_len)[None, :] < lengths[:, None], rng.integers(1, s.vocab_size, (n_rows, s.max_len)), 0)
        gaps = np.where(items > 0, np.sort(rng.random((n_rows, s.max_len)) * 10, axis=1), 0.0).astype(np.float32)
        cols[s.column] = pa.array(list(items.astype(np.int32)), pa.list_(pa.int32()))
        cols[s.gap_column] = pa.array(list(gaps), pa.list_(pa.float32()))
    for f in spec.dense:
        cols[f.column] = pa.array(rng.normal(0, 2, n_rows).astype(np.float32), pa.float32())
    first = np.asarray(cols[spec.categorical[0].column]) if spec.categorical else np.zeros(n_rows)
    newest = np.asarray(cols[spec.sequences[0].column].to_pylist(), dtype=np.int64)[:, 0] if spec.sequences else np.zeros(n_rows)
    signal = 1.5 * (first % 2) + 1.0 * (newest % 3 == 0) - 1.0
    for i, t in enumerate(spec.tasks):
        if t.kind == "binary":
            label = (rng.random(n_rows) < 1 / (1 + np.exp(-(signal + 0.3 * i)))).astype(np.float32)
        else:
            label = np.maximum(0.0, signal + rng.normal(0, 0.5, n_rows)).astype(np.float32)
        cols[t.column] = pa.array(label, pa.float32())
        cols[t.mask_column] = pa.array(rng.random(n_rows) < 0.95, pa.bool_())
    return pa.table(cols)
