"""A tiny synthetic examples table with learnable labels (tests, docstrings, throughput benchmarks).

Example::

    >>> from features.spec import demo_spec
    >>> spec = demo_spec(seq_len=4)
    >>> table = synthetic_examples(spec, 6, dates=("2022-04-25", "2022-04-26"))
    >>> table.num_rows, set(spec.feature_columns) | set(spec.label_columns) <= set(table.column_names)
    (6, True)
    >>> sorted({d.isoformat() for d in table["date"].to_pylist()})
    ['2022-04-25', '2022-04-26']
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from features.spec import FeatureSpec
from model.snapshot import DATE_COLUMN


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
