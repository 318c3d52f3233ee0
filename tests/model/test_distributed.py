"""Distributed training with TorchDistributor (DDP, gloo on CPU): rank-sharded batches, the same
loop as one process, and a model that reaches the single-process validation AUC."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from features.spec import demo_spec
from model.distributed import RankShard, distributor_mode, train_distributed
from model.snapshot import ExamplesSnapshot
from model.synthetic import synthetic_examples
from model.train import TrainConfig

SPEC = demo_spec(seq_len=5)
SMALL = {"embed_dim": 8, "bottom_hidden": [16], "tower_hidden": [8]}


def snapshot(folder: Path, day: str, rows: int, seed: int) -> ExamplesSnapshot:
    """A one-file, one-day examples snapshot in the Delta table layout (``date=<day>/part.parquet``)."""
    table = synthetic_examples(SPEC, rows, dates=(day,), seed=seed)
    part = folder / f"date={day}" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(table, part)
    return ExamplesSnapshot(str(folder), 0, (day,), (str(part),), rows)


def test_rank_shards_cover_the_batches_once_and_evenly():
    shards = [list(RankShard(range(11), rank, 3)) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # 3 each: no rank waits on a missing step
    assert sorted(sum(shards, [])) == list(range(9))


def test_processes_run_beside_the_driver_only_for_local_masters():
    assert distributor_mode("local") and not distributor_mode("local-cluster")


@pytest.mark.slow
def test_two_ddp_processes_train_to_the_single_process_auc(spark, settings, tmp_path):
    from model.loaders import ArrowBatches
    from model.train import build_and_train

    snapshots = {"train": snapshot(tmp_path / "t", "2022-04-25", 4096, 0),
                 "valid": snapshot(tmp_path / "v", "2022-04-26", 1024, 1)}
    config = TrainConfig(epochs=3, batch_size=128, lr=0.01, patience=3, progress=False, num_threads=1, seed=3)
    result = train_distributed(spark, settings, "shared_bottom", SPEC, snapshots, config, SMALL, 2)
    assert result.metrics["world_size"] == 2 and result.metrics["backend"] == "gloo"
    # half the steps of one process: each step averages two ranks' batches
    assert result.metrics["steps"] == result.metrics["epochs_run"] * (4096 // 128 // 2)
    single = build_and_train("shared_bottom", SPEC, *(ArrowBatches(s, SPEC, 128, shuffle=(k == "train"), seed=3)
                                                       for k, s in snapshots.items()), config=config,
                             model_config=SMALL)
    two, one = result.metrics["valid"]["mtl_auc"], single.metrics["valid"]["mtl_auc"]
    assert two > 0.6 and abs(two - one) < 0.03, (two, one)
    # the driver got rank 0's weights: they score the validation rows as the metrics say
    assert isinstance(result.model, torch.nn.Module) and not result.model.training
