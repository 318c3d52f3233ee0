"""GPU executors without a GPU: Spark schedules fake GPU addresses (the discovery script's test
mode) on local-cluster; tasks see their address and the scoring worker picks it, falling back to
the CPU with one log line when torch sees no CUDA."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from model import scoring

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def task_with_gpu(monkeypatch):
    """A Spark task context whose resources say GPU 3 was assigned."""
    import pyspark

    ctx = SimpleNamespace(resources=lambda: {"gpu": SimpleNamespace(name="gpu", addresses=["3"])})
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: ctx))
    monkeypatch.setattr(scoring.choose_device, "_warned", False, raising=False)


def test_the_worker_uses_the_gpu_spark_assigned(task_with_gpu, monkeypatch):
    monkeypatch.setattr(scoring.torch.cuda, "is_available", lambda: True)
    assert scoring.assigned_gpu() == "3"
    assert scoring.choose_device("auto") == "cuda:3"
    assert scoring.choose_device("cpu") == "cpu"  # an explicit --device wins


def test_without_cuda_the_worker_scores_on_cpu_and_says_so_once(task_with_gpu, monkeypatch, caplog):
    monkeypatch.setattr(scoring.torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="infnet.scoring"):
        assert [scoring.choose_device() for _ in range(3)] == ["cpu"] * 3
    lines = [r.getMessage() for r in caplog.records if r.name == "infnet.scoring"]
    assert lines == ["Spark assigned GPU 3 to this task but torch sees no CUDA device: scoring on the CPU"]


def test_outside_a_task_nothing_is_assigned():
    assert scoring.assigned_gpu() is None


PROBE = """
import json
from conf.settings import Settings
from conf.spark import get_spark
from model.scoring import assigned_gpu, choose_device
spark = get_spark(Settings())
def probe(rows):
    import torch
    yield (assigned_gpu(), choose_device("auto"), torch.cuda.is_available())
print("RESULT " + json.dumps(spark.sparkContext.parallelize(range(4), 4).mapPartitions(probe).collect()))
print("CONF " + json.dumps({k: spark.conf.get(k) for k in ("spark.executor.resource.gpu.amount",
                                                             "spark.task.resource.gpu.amount")}))
"""


@pytest.mark.slow
def test_tasks_on_local_cluster_see_their_gpu_address(tmp_path):
    env = {**os.environ, "INFNET_SPARK_MASTER": "local-cluster[2,1,1024]", "INFNET_LAKE": str(tmp_path / "lake"),
           "INFNET_EXECUTOR_GPUS": "1", "INFNET_TASK_GPUS": "1", "INFNET_FAKE_GPU_ADDRESSES": "7",
           "INFNET_SERVICES_DIR": str(tmp_path / "services"), "PYTHONPATH": str(REPO)}
    env.pop("SPARK_HOME", None)
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("RESULT", "CONF")))
    assert json.loads(lines["CONF"]) == {"spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "1"}
    # every task got the executor's GPU 7; no CUDA here, so each worker chose the CPU
    assert json.loads(lines["RESULT"]) == [["7", "cpu", False]] * 4
    stderr_files = list((tmp_path / "services" / "spark-home" / "work").rglob("stderr"))
    said = [f for f in stderr_files if "Spark assigned GPU 7 to this task but torch sees no CUDA" in f.read_text()]
    assert said, "no executor logged the CPU fallback"
