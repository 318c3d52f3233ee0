"""A standalone cluster from the wheel (scripts/standalone.sh): master + 2 workers on 127.0.0.1,
a job's Python closures and the project's modules reach executors in other JVMs, the driver talks
to it on loopback, and the script stops every daemon it started."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

PROBE = """
import json, os
from conf.settings import Settings
from conf.spark import get_spark
spark = get_spark(Settings())
def probe(rows):
    import os
    from model.store import parse_ref  # the project's code, imported in the executor's Python
    yield (os.getpid(), parse_ref("infnet@3"), sum(rows))
out = spark.sparkContext.parallelize(range(100), 4).mapPartitions(probe).collect()
executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().keySet().toString()
print("RESULT " + json.dumps({"out": out, "executors": executors, "driver": spark.conf.get("spark.driver.host")}))
"""


def test_a_job_runs_on_a_standalone_master_with_two_workers(tmp_path):
    ports = {"INFNET_STANDALONE_PORT": free_port(), "INFNET_STANDALONE_UI_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "INFNET_SERVICES_DIR": str(tmp_path / "services"),
           "INFNET_LAKE": str(tmp_path / "lake"), "PYTHONPATH": str(REPO)}
    script = [str(REPO / "scripts" / "standalone.sh")]
    started = subprocess.run([*script, "start"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        master = subprocess.run([*script, "master-url"], env=env, capture_output=True, text=True).stdout.strip()
        assert master == f"spark://127.0.0.1:{ports['INFNET_STANDALONE_PORT']}"
        result = subprocess.run([sys.executable, "-c", PROBE], env={**env, "INFNET_SPARK_MASTER": master},
                                capture_output=True, text=True, cwd=REPO, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
        got = json.loads(line.removeprefix("RESULT "))
        assert sorted(x[2] for x in got["out"]) == [300, 925, 1550, 2175]  # 4 partitions of range(100)
        assert all(x[1] == ["infnet", 3] for x in got["out"])
        assert len({x[0] for x in got["out"]}) >= 1 and os.getpid() not in {x[0] for x in got["out"]}
        # the driver and both executors, all on loopback
        assert got["executors"].count("127.0.0.1:") == 3 and got["driver"] == "127.0.0.1", got
    finally:
        stopped = subprocess.run([*script, "stop"], env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    for port in ports.values():  # nothing left listening
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, port
