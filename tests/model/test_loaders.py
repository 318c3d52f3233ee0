"""Batches from a pinned snapshot (model/loaders.py): padding and truncation of what was written,
a shuffle that covers every row once and is reproducible, and a training run over the stream."""
from __future__ import annotations

import torch

from features.spec import demo_spec
from model.loaders import ArrowBatches, iter_record_batches, load_tensors
from model.snapshot import resolve_snapshot

SPEC = demo_spec(seq_len=4)


def test_batches_pad_and_truncate_sequences(spark, examples):
    days = examples["days"]
    snap = resolve_snapshot(spark, examples["path"], 0, days)
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


def test_shuffled_batches_cover_every_row_once_and_are_reproducible(spark, examples):
    days = examples["days"]
    snap = resolve_snapshot(spark, examples["path"], 0, days)

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


def _small_model(spec):
    from model.registry import build_model

    return build_model("shared_bottom", spec, {"embed_dim": 8, "bottom_hidden": [16], "tower_hidden": [8]}, seed=0)


def test_training_over_streamed_batches(spark, examples):
    days = examples["days"]
    from model.train import TrainConfig, train_model

    train = ArrowBatches(resolve_snapshot(spark, examples["path"], 1, days[:2]), SPEC, batch_size=8, shuffle=True)
    valid = ArrowBatches(resolve_snapshot(spark, examples["path"], 1, days[2:]), SPEC, batch_size=32)
    result = train_model(_small_model(SPEC), SPEC, train, valid, valid,
                         TrainConfig(epochs=2, batch_size=8, progress=False, patience=5))
    assert result.metrics["train_examples"] == 2 * 40 and result.metrics["epochs_run"] == 2
    assert result.metrics["test"]["click"]["n"] > 0
