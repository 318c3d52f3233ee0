"""Arrow -> tensors (model/data.py): padding and truncation of lists, the reserved bucket for
null and out-of-vocabulary ids, dense columns."""
from __future__ import annotations

import pyarrow as pa
import torch

from features.spec import demo_spec
from model.data import arrow_to_batch, pad_lists

SPEC = demo_spec(seq_len=4)


def test_pad_lists_handles_nulls_and_long_lists():
    arr = pa.array([[1, 2, 3, 4, 5], None, [7, None], []], pa.list_(pa.int32()))
    assert pad_lists(arr, 3, "int64").tolist() == [[1, 2, 3], [0, 0, 0], [7, 0, 0], [0, 0, 0]]
    assert pad_lists(arr.slice(2), 3, "int64").tolist() == [[7, 0, 0], [0, 0, 0]]


def test_out_of_vocabulary_and_null_categories_map_to_reserved_bucket():
    cols = {c.column: pa.array([c.vocab_size + 5, None, 1], pa.int64()) for c in SPEC.categorical}
    for s in SPEC.sequences:
        cols[s.column] = pa.array([[999], [1], []], pa.list_(pa.int32()))
        cols[s.gap_column] = pa.array([[1.0], [2.0], []], pa.list_(pa.float32()))
    batch = arrow_to_batch(pa.table(cols), SPEC)
    assert batch["cat"][:, 0].tolist() == [0, 0, 1]
    assert batch["seq"][0, 0, 0].item() == 0 and batch["seq_gap"][0, 0, 0].item() == 0.0
    assert "label" not in batch


def test_dense_columns_become_a_float_matrix_with_nulls_as_zero():
    from dataclasses import replace

    import pyarrow as pa

    from features.spec import DenseField, demo_spec
    from model.data import arrow_to_batch, model_inputs

    spec = replace(demo_spec(seq_len=2),
                   dense=(DenseField("user_n_prior_log1p", "user"), DenseField("video_like_rate_logit", "item")))
    cols = {c.column: pa.array([1, 2]) for c in spec.categorical}
    for s in spec.sequences:
        cols[s.column], cols[s.gap_column] = pa.array([[5], []]), pa.array([[0.5], []])
    cols["dense_user_n_prior_log1p"] = pa.array([1.5, None], pa.float32())
    cols["dense_video_like_rate_logit"] = pa.array([-4.0, 2.25], pa.float64())
    batch = arrow_to_batch(pa.RecordBatch.from_pydict(cols), spec)
    assert batch["dense"].tolist() == [[1.5, -4.0], [0.0, 2.25]] and batch["dense"].dtype == torch.float32
    assert set(model_inputs(batch)) == {"cat", "seq", "seq_gap", "dense"}
    plain = arrow_to_batch(pa.RecordBatch.from_pydict(cols), demo_spec(seq_len=2))
    assert "dense" not in plain and set(model_inputs(plain)) == {"cat", "seq", "seq_gap"}
