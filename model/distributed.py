"""Distributed data-parallel training with ``pyspark.ml.torch.distributor.TorchDistributor``.

``infnet train --distributed N`` runs :func:`train_distributed`: N training processes, each the
same :func:`model.train.build_and_train` loop on its own share of the training batches, the model
wrapped in ``torch.nn.parallel.DistributedDataParallel`` (gloo on CPU, nccl when the processes have
GPUs), so the gradients of every step are averaged over the N processes (an effective batch of
N x ``batch_size``). Where the processes run follows the master: on a cluster master
(``local-cluster``, ``spark://``, YARN, Kubernetes) they are N barrier tasks on the executors; with
``local[*]`` they are N processes beside the driver (TorchDistributor's local mode).

What each process does (:func:`train_worker`):

- reads the pinned snapshot's Parquet files itself (local paths, or ``s3a://`` through
  ``conf.storage`` with the S3 settings the executors get as environment variables);
- takes every N-th training batch starting at its rank (:class:`RankShard`), the same number of
  batches on every rank so that no process waits for a gradient another never sends;
- evaluates the full validation set at each evaluation, as one process would: the weights are
  identical on every rank after each step, so every rank reaches the same early-stopping decision;
- rank 0's restored best weights (CPU tensors), metrics and history are what every rank returns
  (TorchDistributor's local mode keeps whichever process writes its output last); the driver
  rebuilds the model from them and stores it like any other version.

The training loop itself is unchanged (``model/train.py``): DDP enters through the ``builder``
argument of ``build_and_train``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Any, Iterator

log = logging.getLogger("infnet.model.distributed")


class RankShard:
    """Every ``world``-th batch of ``batches`` starting at ``rank``, ``len(batches) // world`` of them.

    >>> list(RankShard(range(7), rank=1, world=2))
    [1, 3, 5]
    >>> len(RankShard(range(7), rank=0, world=2))
    3
    """

    def __init__(self, batches, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, int(rank), int(world)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches) // self.world

    def __iter__(self) -> Iterator:
        wanted = len(self)
        taken = 0
        for i, batch in enumerate(self.batches):
            if taken == wanted:
                return
            if i % self.world == self.rank:
                taken += 1
                yield batch


@dataclass
class WorkerResult:
    """What rank 0 sends back to the driver."""

    state_dict: dict
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    model_config: dict[str, Any]
    world_size: int


def _loopback(address: str | None) -> bool:
    return bool(address) and (address.startswith("127.") or address in ("localhost", "::1"))


def train_worker(model_name: str, spec, snapshots: dict, config, model_config: dict, use_gpu: bool):
    """The function every training process runs (TorchDistributor sets RANK, WORLD_SIZE, MASTER_*)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from model.loaders import ArrowBatches
    from model.registry import build_model
    from model.train import build_and_train

    if _loopback(os.environ.get("MASTER_ADDR")):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo would pick the host's outside address
    backend = "nccl" if use_gpu and torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        device = "cuda:0" if backend == "nccl" else "cpu"  # CUDA_VISIBLE_DEVICES holds this task's GPU
        config = replace(config, device=device, progress=False, num_threads=config.num_threads or 1)
        batches = {s: ArrowBatches(snap, spec, config.batch_size, shuffle=(s == "train"), seed=config.seed,
                                   shuffle_buffer_rows=config.shuffle_buffer_rows, drop_last=False)
                   for s, snap in snapshots.items()}

        def ddp_builder(name, spec_, cfg):
            model = build_model(name, spec_, cfg).to(device)
            # some models leave parameters out of a given forward (e.g. unused heads): tolerate it
            return DistributedDataParallel(model, find_unused_parameters=True)

        result = build_and_train(model_name, spec, RankShard(batches["train"], rank, world), batches["valid"],
                                 batches.get("test"), config, model_config, builder=ddp_builder)
        out = None
        if rank == 0:
            inner = result.model.module
            state = {k: v.detach().cpu() for k, v in inner.state_dict().items()}
            metrics = {**result.metrics, "world_size": world, "backend": backend}
            out = WorkerResult(state, metrics, result.history, result.model_config, world)
        # every rank returns rank 0's result: in local mode all processes write the same output file
        # and the last writer wins, so they must all write the same thing
        shared = [out]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]
    finally:
        dist.destroy_process_group()


@dataclass
class DistributedResult:
    model: Any
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    model_config: dict[str, Any]


def distributor_mode(master_kind: str) -> bool:
    """TorchDistributor's ``local_mode``: processes beside the driver for ``local[*]`` only.

    >>> distributor_mode("local"), distributor_mode("local-cluster"), distributor_mode("yarn")
    (True, False, False)
    """
    return master_kind == "local"


def train_distributed(spark, settings, model_name: str, spec, snapshots: dict, config, model_config: dict,
                      num_processes: int) -> DistributedResult:
    """Train with ``num_processes`` DDP processes; returns the model rebuilt on the driver (CPU)."""
    from pyspark.ml.torch.distributor import TorchDistributor

    from model.registry import build_model

    if num_processes < 1:
        raise ValueError(f"--distributed needs at least 1 process, got {num_processes}")
    local_mode = distributor_mode(settings.spark.kind)
    if not local_mode:
        slots = spark.sparkContext.defaultParallelism
        if num_processes > slots:
            raise ValueError(f"--distributed {num_processes} needs {num_processes} task slots at once (barrier "
                             f"tasks); the cluster {settings.spark.master} has {slots}")
    use_gpu = settings.spark.executor_gpus > 0 and not local_mode
    log.info("training %s with %d DDP processes (%s, %s)", model_name, num_processes,
             "beside the driver" if local_mode else f"as barrier tasks on {settings.spark.master}",
             "nccl" if use_gpu else "gloo")
    distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu)
    out: WorkerResult = distributor.run(train_worker, model_name, spec, snapshots, config, model_config, use_gpu)
    if out is None:
        raise RuntimeError("distributed training returned nothing from rank 0")
    model = build_model(model_name, spec, out.model_config)
    model.load_state_dict(out.state_dict)
    model.eval()
    return DistributedResult(model, out.metrics, out.history, out.model_config)
