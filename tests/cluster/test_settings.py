"""Cluster settings: one typed home with environment overrides, read by the session builder, the
wrappers and the Airflow pool; a wrong setting is one line naming it, in bounded time."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conf.settings import MetastoreSettings, ObjectStoreSettings, Settings, master_kind
from conf.spark import SetupError, check_services, spark_conf

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jar_dirs(tmp_path):
    """Stand-in profile folders holding one (empty) jar each: spark_conf only lists them."""
    dirs = {}
    for name in ("jars-metastore", "jars-s3"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}-probe.jar").write_bytes(b"")
        dirs[name] = str(tmp_path / name)
    return dirs


def test_environment_overrides_reach_every_setting(monkeypatch):
    monkeypatch.setenv("INFNET_METASTORE_URL", "jdbc:postgresql://127.0.0.1:6543/hms")
    monkeypatch.setenv("INFNET_METASTORE_USER", "u")
    monkeypatch.setenv("INFNET_LAKE", "s3a://bucket/prefix")
    monkeypatch.setenv("INFNET_S3_ENDPOINT", "http://127.0.0.1:5055")
    monkeypatch.setenv("INFNET_SPARK_MASTER", "local-cluster[2,1,1024]")
    monkeypatch.setenv("INFNET_EXECUTOR_GPUS", "1")
    s = Settings()
    assert (s.metastore.kind, s.metastore.endpoint, s.metastore.user) == ("postgresql", ("127.0.0.1", 6543), "u")
    assert s.lake_on_object_store and s.lake.table_path("scores") == "s3a://bucket/prefix/tables/scores"
    assert s.s3.endpoint_address == ("127.0.0.1", 5055) and s.s3.path_style_access
    assert s.spark.kind == "local-cluster" and s.spark.on_this_machine and s.spark.executor_gpus == 1


@pytest.mark.parametrize("master, kind, here", [
    ("local[*]", "local", True), ("local[2]", "local", True), ("local-cluster[2,1,1024]", "local-cluster", True),
    ("spark://127.0.0.1:7077", "standalone", True), ("spark://head:7077", "standalone", False),
    ("yarn", "yarn", False), ("k8s://https://api:6443", "k8s", False),
])
def test_master_kinds(master, kind, here):
    spark = replace(Settings().spark, master=master)
    assert (master_kind(master), spark.on_this_machine) == (kind, here)


def test_a_master_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="INFNET_SPARK_MASTER 'local\\[two\\]'"):
        master_kind("local[two]")


def test_embedded_derby_is_the_default(settings):
    conf = spark_conf(settings)
    assert conf["spark.hadoop.javax.jdo.option.ConnectionURL"].startswith("jdbc:derby:;databaseName=")
    assert conf["spark.hadoop.datanucleus.schema.autoCreateAll"] == "true"
    assert not any(k.startswith("spark.hadoop.fs.s3a.") for k in conf)
    assert "jars-s3" not in conf["spark.jars"] and "jars-metastore" not in conf["spark.jars"]


def test_a_shared_postgres_metastore_runs_without_lazy_schema_creation(settings, jar_dirs):
    s = replace(settings, metastore=MetastoreSettings(url="jdbc:postgresql://127.0.0.1:55432/metastore", user="infnet",
                                                      password="pw", jars_dir=jar_dirs["jars-metastore"]))
    conf = spark_conf(s)
    assert conf["spark.hadoop.javax.jdo.option.ConnectionURL"] == "jdbc:postgresql://127.0.0.1:55432/metastore"
    assert conf["spark.hadoop.javax.jdo.option.ConnectionDriverName"] == "org.postgresql.Driver"
    assert conf["spark.hadoop.datanucleus.schema.autoCreateAll"] == "false"  # deadlocks on Postgres
    assert conf["spark.hadoop.javax.jdo.option.ConnectionPassword"] == "pw"
    assert "derby.system.home" not in conf.get("spark.driver.extraJavaOptions", "")
    probe = str(Path(jar_dirs["jars-metastore"]) / "jars-metastore-probe.jar")
    assert probe in conf["spark.driver.extraClassPath"].split(os.pathsep)
    # Delta on the driver's class path too (the Thrift server's delta-io/delta#705 trap)
    assert any("delta-spark" in j for j in conf["spark.driver.extraClassPath"].split(os.pathsep))


def test_missing_profile_jars_name_the_script_that_resolves_them(settings, tmp_path):
    s = replace(settings, metastore=MetastoreSettings(url="jdbc:postgresql://127.0.0.1:55432/m",
                                                      jars_dir=str(tmp_path / "none")))
    with pytest.raises(SetupError, match="scripts/resolve_jars.sh metastore-postgres"):
        spark_conf(s)
    s3 = replace(settings.with_lake("s3a://b/lake"), s3=ObjectStoreSettings(jars_dir=str(tmp_path / "none")))
    with pytest.raises(SetupError, match="scripts/resolve_jars.sh object-store"):
        spark_conf(s3)


def test_an_s3a_lake_gets_the_object_store_profile(settings, jar_dirs):
    s = replace(settings.with_lake("s3a://bucket/lake"),
                s3=ObjectStoreSettings(endpoint="http://127.0.0.1:5055", access_key="k", secret_key="s",
                                       jars_dir=jar_dirs["jars-s3"]))
    conf = spark_conf(s)
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:5055"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.access.key"] == "k"
    assert "jars-s3-probe.jar" in conf["spark.jars"]
    assert conf["spark.executorEnv.INFNET_S3_ENDPOINT"] == "http://127.0.0.1:5055"  # pyarrow in the workers
    assert conf["spark.sql.warehouse.dir"] == "s3a://bucket/lake/warehouse"


def test_gpu_resources_only_for_cluster_masters(settings):
    gpu = replace(settings.spark, executor_gpus=1, task_gpus=0.5, gpu_discovery_script="/x/discover.sh")
    local = spark_conf(replace(settings, spark=replace(gpu, master="local[2]")))
    assert not any("resource.gpu" in k for k in local)  # the task amount fails in local[*]
    cluster = spark_conf(replace(settings, spark=replace(gpu, master="local-cluster[2,1,1024]")))
    assert cluster["spark.executor.resource.gpu.amount"] == "1"
    assert cluster["spark.task.resource.gpu.amount"] == "0.5"
    assert cluster["spark.executor.resource.gpu.discoveryScript"] == "/x/discover.sh"
    assert cluster["spark.worker.resource.gpu.amount"] == "1"  # local-cluster's in-JVM workers
    remote = spark_conf(replace(settings, spark=replace(gpu, master="yarn")))
    assert "spark.worker.resource.gpu.amount" not in remote and remote["spark.executor.resource.gpu.amount"] == "1"


def test_driver_binds_to_loopback_for_masters_on_this_machine(settings):
    for master in ("local[2]", "local-cluster[2,1,1024]", "spark://127.0.0.1:7077"):
        conf = spark_conf(replace(settings, spark=replace(settings.spark, master=master)))
        assert (conf["spark.driver.bindAddress"], conf["spark.driver.host"]) == ("127.0.0.1", "127.0.0.1"), master
    remote = spark_conf(replace(settings, spark=replace(settings.spark, master="spark://head:7077")))
    assert "spark.driver.bindAddress" not in remote  # executors elsewhere must reach the driver


def test_the_session_and_its_block_manager_listen_on_loopback(spark):
    """Issue 14 item 4: the running session's driver and block manager are bound to 127.0.0.1."""
    assert spark.conf.get("spark.driver.bindAddress") == "127.0.0.1"
    assert spark.conf.get("spark.driver.host") == "127.0.0.1"
    block_manager = spark.sparkContext._jsc.sc().env().blockManager().blockManagerId()  # noqa: SLF001
    assert block_manager.host() == "127.0.0.1"


def test_pool_slots_follow_the_metastore_and_the_lake():
    derby = Settings(metastore=MetastoreSettings(url=""), pool_slots_override=None)
    shared = replace(derby, metastore=MetastoreSettings(url="jdbc:postgresql://127.0.0.1:55432/m"))
    assert derby.pool_slots == 1
    assert shared.with_lake("/data/lake").pool_slots == 2
    assert shared.with_lake("s3a://b/lake").pool_slots == 1  # one writer per table on S3
    assert replace(shared, pool_slots_override=4).pool_slots == 4
    with pytest.raises(ValueError, match="INFNET_POOL_SLOTS=3 needs a shared metastore"):
        replace(derby, pool_slots_override=3).pool_slots  # noqa: B018


@pytest.mark.parametrize("setting", ["INFNET_SPARK_MASTER", "INFNET_METASTORE_URL", "INFNET_S3_ENDPOINT"])
def test_a_service_that_does_not_answer_is_named(settings, jar_dirs, setting):
    port = closed_port()
    s = replace(settings, spark=replace(settings.spark, connect_timeout_s=2))
    if setting == "INFNET_SPARK_MASTER":
        s = replace(s, spark=replace(s.spark, master=f"spark://127.0.0.1:{port}"))
    elif setting == "INFNET_METASTORE_URL":
        s = replace(s, metastore=MetastoreSettings(url=f"jdbc:postgresql://127.0.0.1:{port}/m",
                                                   jars_dir=jar_dirs["jars-metastore"]))
    else:
        s = replace(s.with_lake("s3a://b/lake"), s3=ObjectStoreSettings(endpoint=f"http://127.0.0.1:{port}",
                                                                        jars_dir=jar_dirs["jars-s3"]))
    with pytest.raises(SetupError, match=f"^{setting} .*does not answer at 127.0.0.1:{port}"):
        check_services(s)


def run_job(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {**os.environ, "INFNET_SPARK_CONNECT_TIMEOUT": "3", **env}
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, env=full,
                          cwd=REPO, timeout=timeout)


@pytest.mark.parametrize("setting", ["INFNET_SPARK_MASTER", "INFNET_METASTORE_URL", "INFNET_S3_ENDPOINT",
                                     "INFNET_SPARK_MASTER=bad"])
def test_a_job_with_a_wrong_setting_exits_2_with_one_line_quickly(tmp_path, jar_dirs, setting):
    """Bad input: a master that does not answer, a wrong metastore URL, an unreachable S3 endpoint
    or a master that is not one: one line naming the setting, exit 2, seconds, no JVM started."""
    port = closed_port()
    env = {"INFNET_LAKE": str(tmp_path / "lake"), "INFNET_METASTORE_JARS_DIR": jar_dirs["jars-metastore"],
           "INFNET_S3_JARS_DIR": jar_dirs["jars-s3"]}
    if setting == "INFNET_SPARK_MASTER":
        env["INFNET_SPARK_MASTER"] = f"spark://127.0.0.1:{port}"
    elif setting == "INFNET_SPARK_MASTER=bad":
        env["INFNET_SPARK_MASTER"] = "local-cluster[2]"
    elif setting == "INFNET_METASTORE_URL":
        env["INFNET_METASTORE_URL"] = f"jdbc:postgresql://127.0.0.1:{port}/metastore"
    else:
        env.update(INFNET_LAKE="s3a://bucket/lake", INFNET_S3_ENDPOINT=f"http://127.0.0.1:{port}")
    started = time.monotonic()
    result = run_job(env, "sql", "SELECT 1")
    elapsed = time.monotonic() - started
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and setting.split("=")[0] in lines[0], lines
    assert "Traceback" not in result.stderr
    assert elapsed < 60, elapsed


def test_under_spark_submit_the_command_line_master_wins(tmp_path):
    """The Airflow hook appends the connection's --master after the wrapper's: the job must run on
    it, not on the environment's default that the session builder would otherwise set again."""
    probe = tmp_path / "probe.py"
    probe.write_text("from conf.spark import get_spark\nfrom conf.settings import Settings\n"
                     "print('MASTER', get_spark(Settings()).sparkContext.master)\n")
    env = {k: v for k, v in os.environ.items() if k != "INFNET_SPARK_MASTER"}
    env.update(INFNET_LAKE=str(tmp_path / "lake"), PYTHONPATH=str(REPO))
    result = subprocess.run([str(REPO / "scripts" / "spark-submit"), "--master", "local[1]", str(probe)], env=env,
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MASTER local[1]" in result.stdout
