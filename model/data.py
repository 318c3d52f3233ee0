"""Arrow -> torch: the pure conversion shared by training, evaluation and scoring.

:func:`arrow_to_batch` turns one Arrow record batch (or table) holding the feature spec's columns
into the model's batch dict: ``cat`` Long[B, M], ``seq`` Long[B, F, N], ``seq_gap`` Float[B, F, N],
``dense`` Float[B, K] when the spec has dense fields, plus ``label`` / ``mask`` Float[B, T] and
``user_id`` Long[B] when present. Sequences are padded / truncated to ``max_len`` with 0 (newest
first, so truncation keeps the newest items); null or out-of-range categorical values map to the
reserved bucket 0. Nothing here reads files: :mod:`model.snapshot` pins a Delta version and
:mod:`model.loaders` streams it through these functions.

Example::

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

from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from features.spec import FeatureSpec

MODEL_INPUT_KEYS = ("cat", "seq", "seq_gap")
OPTIONAL_INPUT_KEYS = ("dense",)  # present when the spec has dense fields
USER_COLUMN = "user_id"

ArrowData = pa.RecordBatch | pa.Table


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
    """The rows ``index`` of every tensor of ``batch``."""
    return {k: v[index] for k, v in batch.items()}


def concat_batches(batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batches with the same keys -> one batch, rows in order."""
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def columns_for(spec: FeatureSpec, with_labels: bool = True, extra: Iterable[str] = (USER_COLUMN,)) -> list[str]:
    """The columns :func:`arrow_to_batch` reads for ``spec`` (labels and masks when ``with_labels``)
    plus ``extra``, each once, in that order."""
    cols = list(spec.feature_columns) + (spec.label_columns if with_labels else []) + list(extra)
    return list(dict.fromkeys(cols))
