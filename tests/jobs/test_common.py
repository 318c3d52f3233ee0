"""What every job shares: the catalog held by another job is one line and exit 2, Spark's errors
read as one line, and a run on an existing catalog logs no "created concurrently" warning."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conf.errors import catalog_in_use_message, derby_held_by_another_process, is_catalog_in_use_error

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: int = 600, catalog_wait: str = "1") -> subprocess.CompletedProcess:
    env = {**os.environ, "INFNET_SPARK_MASTER": "local[1]", "INFNET_SHUFFLE_PARTITIONS": "1",
           "INFNET_CATALOG_RELEASE_WAIT": catalog_wait}
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_a_second_job_on_a_held_catalog_is_one_line_and_exit_2(spark, settings):
    """The test session's JVM has booted the Derby catalog of the test lake: a job started in a
    second process on the same lake used to print 23k lines of stack traces and exit 1."""
    assert spark.catalog.databaseExists(settings.lake.database)  # the metastore is booted here
    assert derby_held_by_another_process(settings.lake.metastore_dir)
    started = time.monotonic()
    result = run_cli("sql", "--lake", settings.lake.root, "SELECT 1", timeout=120, catalog_wait="3")
    assert result.returncode == 2
    assert result.stderr.strip() == f"sql: error: {catalog_in_use_message(settings.lake.metastore_dir)}"
    assert result.stdout == ""
    assert time.monotonic() - started >= 3  # it waited for a job that might be exiting before refusing


def test_a_stale_lock_file_is_not_a_held_catalog(tmp_path):
    """Derby leaves dbex.lck behind when killed: only a held OS lock means another process."""
    (tmp_path / "dbex.lck").write_bytes(b"\x00\x00\x00\x00")
    assert not derby_held_by_another_process(str(tmp_path))
    assert not derby_held_by_another_process(str(tmp_path / "never_booted"))


def test_derby_refusal_is_recognised_through_the_exception_chain():
    cause = RuntimeError("java.sql.SQLException: Failed to start database\n"
                         "Caused by: ERROR XSDB6: Another instance of Derby may have already booted the database")
    try:
        try:
            raise cause
        except RuntimeError as inner:
            raise ValueError("Unable to instantiate SessionHiveMetaStoreClient") from inner
    except ValueError as outer:
        assert is_catalog_in_use_error(outer)
    assert not is_catalog_in_use_error(ValueError("Unable to instantiate SessionHiveMetaStoreClient"))


@pytest.mark.slow
def test_losing_the_race_for_the_catalog_is_one_line_too(settings):
    """When the other job boots Derby after our probe, the metastore start fails inside Spark
    (XSDB6): still one line and exit 2, with the metastore's retries kept off the terminal."""
    code = (
        "import sys, conf.errors as c\n"
        "c.derby_held_by_another_process = lambda _: False  # lose the race: the probe saw no holder\n"
        "from jobs.sql import main\n"
        f"sys.exit(main(['--lake', {settings.lake.root!r}, 'SELECT 1']))\n"
    )
    env = {**os.environ, "INFNET_SPARK_MASTER": "local[1]", "INFNET_SHUFFLE_PARTITIONS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"sql: error: {catalog_in_use_message(settings.lake.metastore_dir)}"
    # what is left is the JVM's start-up banner (a handful of lines), not the 23k of the retries
    assert len(lines) < 15 and not any("XSDB6" in line or "\tat " in line for line in lines), result.stderr


@contextlib.contextmanager
def jvm_log(spark):
    """Collect what the JVM's log4j prints while the block runs (a StringWriter appender on root)."""
    jvm = spark._jvm
    core = jvm.org.apache.logging.log4j.core
    writer = jvm.java.io.StringWriter()
    context = jvm.org.apache.logging.log4j.LogManager.getContext(False)
    config = context.getConfiguration()
    layout = core.layout.PatternLayout.newBuilder().withPattern("%p %c{1}: %m%n").build()
    appender = core.appender.WriterAppender.newBuilder().setName("test-capture").setTarget(writer).setLayout(layout).build()
    appender.start()
    config.addAppender(appender)
    config.getRootLogger().addAppender(appender, None, None)
    context.updateLoggers()
    lines: list[str] = []
    try:
        yield lines
    finally:
        config.getRootLogger().removeAppender("test-capture")
        context.updateLoggers()
        appender.stop()
        lines += str(writer.toString()).splitlines()


def test_an_existing_database_is_not_created_again(spark, settings):
    from conf.spark import get_spark

    with jvm_log(spark) as logged:
        spark.sql("SELECT 1").collect()  # control: the capture works while nothing warns
        spark.sparkContext._jvm.org.apache.logging.log4j.LogManager.getLogger("infnet.test").warn("probe")
        assert get_spark(settings) is spark  # what every job does first, on the existing database
    assert "WARN test: probe" in logged
    assert [line for line in logged if "Namespace" in line] == []  # was "Namespace infnet was created concurrently"
    assert spark.catalog.databaseExists(settings.lake.database)
