"""One session-scoped local Spark session over a throw-away lake, shared by every Spark test."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# jobs' main() called inside tests builds its settings from these: keep them at the tests' size
os.environ.setdefault("INFNET_SPARK_MASTER", "local[2]")
os.environ.setdefault("INFNET_SHUFFLE_PARTITIONS", "2")


@pytest.fixture(scope="session")
def settings(tmp_path_factory):
    from conf.settings import Settings

    base = Settings().with_lake(str(tmp_path_factory.mktemp("lake")))
    return replace(base, spark=replace(base.spark, master="local[2]", shuffle_partitions=2, driver_memory="4g"))


@pytest.fixture(scope="session")
def spark(settings):
    from conf.spark import get_spark

    session = get_spark(settings, app_name="infnet-tests")
    yield session
    session.stop()


@pytest.fixture(scope="module", autouse=True)
def _release_cached_data():
    """After each test module, drop what the shared session keeps cached: Delta caches a snapshot of
    every table it has read (persisted RDDs in storage memory), and hundreds of tests' throw-away lakes
    filled the 4 GB driver until a later build could not get execution memory or broadcast a table."""
    yield
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is None:
        return
    session._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()
    session.catalog.clearCache()
