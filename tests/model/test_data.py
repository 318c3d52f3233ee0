"""Reading ``examples`` at a pinned Delta version into tensors: version pinning, date filter, padding,
shuffling, refusal of deletion vectors, and a training run over the streamed batches."""
from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from features.spec import demo_spec
from model.data import (
    ArrowBatches,
    SnapshotError,
    arrow_to_batch,
    iter_record_batches,
    load_tensors,
    pad_lists,
    resolve_snapshot,
    synthetic_examples,
)

SPEC = demo_spec(seq_len=4)
DAYS = ["2022-04-25", "2022-04-26", "2022-04-27"]


def _write(spark, table: pa.Table, path: str, replace_date: str | None = None) -> None:
    writer = spark.createDataFrame(table).write.format("delta").partitionBy("date")
    if replace_date is None:
        writer.mode("overwrite").save(path)
    else:
        writer.mode("overwrite").option("replaceWhere", f"date = '{replace_date}'").save(path)


@pytest.fixture(scope="module")
def examples(spark, settings):
    """A hand-built examples table: version 0 = three days, version 1 = 04-26 rewritten.

    Sequences are written with lengths 0..6 around ``max_len`` = 4 (the loader must pad and
    truncate whatever it gets).
    """
    path = settings.lake.table_path("examples_model_data_test")
    v0 = synthetic_examples(demo_spec(seq_len=6), 90, DAYS, seed=1)
    _write(spark, v0, path)
    day = v0.filter(pa.compute.equal(v0["date"], pa.scalar(pa.scalar(DAYS[1]).cast(pa.date32()))))
    v1 = synthetic_examples(demo_spec(seq_len=6), 10, [DAYS[1]], seed=2)
    _write(spark, v1, path, replace_date=DAYS[1])
    return {"path": path, "v0": v0, "v0_day": day, "v1_day": v1}


def _ids(snapshot) -> list[str]:
    return sorted(i for rb in iter_record_batches(snapshot, ["impression_id"]) for i in rb.column(0).to_pylist())


def test_snapshot_pins_the_delta_version(spark, examples):
    old = resolve_snapshot(spark, examples["path"], 0, [DAYS[1]])
    new = resolve_snapshot(spark, examples["path"], 1, [DAYS[1]])
    assert old.num_rows == 30 and new.num_rows == 10
    assert _ids(old) == sorted(examples["v0_day"]["impression_id"].to_pylist())
    assert _ids(new) == sorted(examples["v1_day"]["impression_id"].to_pylist())


def test_snapshot_filters_dates(spark, examples):
    snap = resolve_snapshot(spark, examples["path"], 1, [DAYS[0], DAYS[2]])
    dates = {d.isoformat() for rb in iter_record_batches(snap, ["date"]) for d in rb.column(0).to_pylist()}
    assert dates == {DAYS[0], DAYS[2]} and snap.num_rows == 60
    assert all(f"date={DAYS[1]}" not in f for f in snap.files)
    with pytest.raises(SnapshotError, match="no rows"):
        resolve_snapshot(spark, examples["path"], 1, ["2022-05-01"])


def test_batches_pad_and_truncate_sequences(spark, examples):
    snap = resolve_snapshot(spark, examples["path"], 0, DAYS)
    tensors = load_tensors(snap, SPEC)
    assert tensors["seq"].shape == (90, 3, 4) and tensors["seq_gap"].shape == (90, 3, 4)
    assert tensors["cat"].shape == (90, len(SPEC.categorical)) and tensors["cat"].dtype == torch.int64
    # reference: the first max_len items of each written list, zero padded
    by_id = {r["impression_id"]: r for r in examples["v0"].to_pylist()}
    ids = [i for rb in iter_record_batches(snap, ["impression_id"]) for i in rb.column(0).to_pylist()]
    for row, impression in enumerate(ids):
        written = [x for x in by_id[impression]["seq_click"] if x][:4]
        assert tensors["seq"][row, 0].tolist() == written + [0] * (4 - len(written))
        assert bool((tensors["seq_gap"][row, 0][len(written):] == 0).all())
    assert tensors["label"].shape == (90, 4) and set(tensors["mask"].unique().tolist()) <= {0.0, 1.0}


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


def test_shuffled_batches_cover_every_row_once_and_are_reproducible(spark, examples):
    snap = resolve_snapshot(spark, examples["path"], 0, DAYS)

    def epoch_users(seed: int, epoch: int):
        batches = ArrowBatches(snap, SPEC, batch_size=16, shuffle=True, seed=seed, shuffle_buffer_rows=32,
                               read_batch_rows=8)
        batches.set_epoch(epoch)
        out = list(batches)
        assert sum(len(b["cat"]) for b in out) == 90 and len(out) == len(batches)
        return torch.cat([b["cat"] for b in out])

    a, b, c = epoch_users(3, 0), epoch_users(3, 0), epoch_users(3, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = torch.cat([b["cat"] for b in ArrowBatches(snap, SPEC, batch_size=16)])
    assert sorted(map(tuple, a.tolist())) == sorted(map(tuple, plain.tolist()))  # same rows, other order


def test_deletion_vectors_are_refused(spark, settings):
    path = settings.lake.table_path("examples_model_dv_test")
    _write(spark, synthetic_examples(demo_spec(seq_len=4), 20, DAYS[:1], seed=5), path)
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    spark.sql(f"DELETE FROM delta.`{path}` WHERE user_id % 2 = 0")
    resolve_snapshot(spark, path, 1, DAYS[:1])  # before the delete: fine
    with pytest.raises(SnapshotError, match="deletion vectors"):
        resolve_snapshot(spark, path, 2, DAYS[:1])


def _small_model(spec):
    from model.registry import build_model

    return build_model("shared_bottom", spec, {"embed_dim": 8, "bottom_hidden": [16], "tower_hidden": [8]}, seed=0)


def test_training_over_streamed_batches(spark, examples):
    from model.train import TrainConfig, train_model

    train = ArrowBatches(resolve_snapshot(spark, examples["path"], 1, DAYS[:2]), SPEC, batch_size=8, shuffle=True)
    valid = ArrowBatches(resolve_snapshot(spark, examples["path"], 1, DAYS[2:]), SPEC, batch_size=32)
    result = train_model(_small_model(SPEC), SPEC, train, valid, valid,
                         TrainConfig(epochs=2, batch_size=8, progress=False, patience=5))
    assert result.metrics["train_examples"] == 2 * 40 and result.metrics["epochs_run"] == 2
    assert result.metrics["test"]["click"]["n"] > 0


def test_dense_columns_become_a_float_matrix_with_nulls_as_zero():
    from dataclasses import replace

    import pyarrow as pa

    from features.spec import DenseField, demo_spec
    from model.data import arrow_to_batch, model_inputs

    spec = replace(demo_spec(seq_len=2), dense=(DenseField("user_n_prior_log1p", "user"), DenseField("video_like_rate_logit", "item")))
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
