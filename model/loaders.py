"""Model batches from a pinned snapshot (streamed, shuffled) or from tensors in memory.

- :class:`ArrowBatches` streams an :class:`~model.snapshot.ExamplesSnapshot` with
  ``pyarrow.dataset`` (column projection, the snapshot's date filter, no pandas copy) and converts
  each buffer with :func:`model.data.arrow_to_batch`;
- :func:`load_tensors` reads a whole snapshot into tensors (evaluation sets, small tables);
- :class:`TensorBatches` cuts tensors already in memory into batches with the same interface.

All three batch sources are re-iterable and take ``set_epoch(e)``: the shuffle is seeded by
``seed`` and the epoch, so a run is reproducible and epochs differ.

Memory bound of :class:`ArrowBatches`: at most ``shuffle_buffer_rows + read_batch_rows`` rows are
held at once, i.e. about ``rows * (8 * M + 12 * F * N + 8 * 2T)`` bytes of tensors (≈ 1.2 KB per
row for M = 20 fields and 3 sequences of 50: 64k rows ≈ 80 MB), whatever the table size. Shuffling
is a buffer shuffle over a per-epoch random file order: exact for tables smaller than the buffer,
approximate (rows mix within a buffer) beyond.

Example::

    >>> from features.spec import demo_spec
    >>> from model.data import arrow_to_batch
    >>> from model.synthetic import synthetic_examples
    >>> spec = demo_spec(seq_len=4)
    >>> batches = TensorBatches(arrow_to_batch(synthetic_examples(spec, 10), spec), batch_size=4, shuffle=True)
    >>> len(batches), [b["cat"].shape[0] for b in batches], batches.__iter__().__next__()["seq"].shape
    (3, [4, 4, 2], torch.Size([4, 3, 4]))
"""
from __future__ import annotations

import random
from typing import Iterator, Sequence

import pyarrow as pa
import torch

from features.spec import FeatureSpec
from model.data import arrow_to_batch, columns_for, concat_batches, slice_batch
from model.snapshot import ExamplesSnapshot, SnapshotError, date_filter, open_dataset


def iter_record_batches(snapshot: ExamplesSnapshot, columns: Sequence[str], batch_rows: int = 65_536,
                        file_order: Sequence[int] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream the snapshot's rows for its dates, ``columns`` only, file by file.

    Args:
        snapshot: the pinned files and dates to read.
        columns: the columns to project.
        batch_rows: the most rows of one yielded record batch.
        file_order: indices into the snapshot's files sorted by path (None: that order).

    Raises:
        SnapshotError: when the files lack one of ``columns``.
    """
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
    ``seed`` and ``e``), so a run is reproducible and epochs differ.

    Args:
        snapshot: the pinned files and dates to read.
        spec: the feature spec the batches follow (:func:`model.data.arrow_to_batch`).
        batch_size: rows per batch (the last one may be smaller unless ``drop_last``).
        shuffle: shuffle the file order and the rows within a buffer of ``shuffle_buffer_rows``.
        seed: the seed of the shuffle, with the epoch.
        shuffle_buffer_rows: rows converted and shuffled together (at least ``batch_size``).
        drop_last: drop the last, smaller batch.
        with_labels: read and return ``label`` / ``mask``.
        read_batch_rows: rows of one Arrow read.
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
        columns = columns_for(self.spec, self.with_labels)
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
    columns = columns_for(spec, with_labels)
    parts = [arrow_to_batch(rb, spec, with_labels=with_labels)
             for rb in iter_record_batches(snapshot, columns, read_batch_rows) if rb.num_rows]
    if not parts:
        raise SnapshotError(f"{snapshot.table_path}@{snapshot.version} holds no rows for {snapshot.dates}")
    return concat_batches(parts)


class TensorBatches:
    """In-memory tensors cut into (optionally shuffled) batches; same interface as ArrowBatches."""

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int = 1024, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False) -> None:
        self.tensors, self.batch_size, self.shuffle = tensors, int(batch_size), shuffle
        self.seed, self.drop_last = seed, drop_last
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
