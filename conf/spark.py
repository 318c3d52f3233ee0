"""The one Spark session builder every job, test and benchmark uses.

Delta SQL extension + catalog, an embedded Hive metastore (Derby) under the lake folder so that a
table written by one job is visible by name to the next job and to ``spark-sql``, UTC session time,
and the venv's interpreter for Python workers.

The same settings are written by ``scripts/setup.sh`` into ``.spark-conf/spark-defaults.conf`` so
that ``scripts/spark-submit`` and ``scripts/spark-sql`` (which set ``SPARK_CONF_DIR``) see them too;
JVM-level options (jars, driver memory) only take effect from there under spark-submit.
"""
from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from conf.settings import Settings


class SetupError(RuntimeError):
    """The environment is not set up (missing jars, ...): the message says what to run."""


def delta_jars(settings: Settings) -> list[str]:
    jars = sorted(glob.glob(os.path.join(settings.spark.jars_dir, "*.jar")))
    if not any("delta-spark" in Path(j).name for j in jars):
        raise SetupError(
            f"Delta jars not found in {settings.spark.jars_dir}. Run `make setup` (scripts/setup.sh), "
            "which resolves them with Maven, or point INFNET_JARS_DIR at a folder holding them."
        )
    return jars


def spark_conf(settings: Settings) -> dict[str, str]:
    """Every Spark setting the project relies on, as plain key/value pairs."""
    metastore = settings.lake.metastore_dir
    return {
        "spark.master": settings.spark.master,
        "spark.jars": ",".join(delta_jars(settings)),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": settings.lake.warehouse,
        "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={metastore};create=true",
        "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
        "spark.hadoop.hive.metastore.schema.verification": "false",
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={Path(metastore).parent}",
        "spark.driver.memory": settings.spark.driver_memory,
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        # Delta's default of 50 tasks per snapshot made each small write take 30-80 s locally
        "spark.databricks.delta.snapshotPartitions": str(settings.spark.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        # wide contract checks made the optimizer run for minutes (constraint inference blow-up)
        "spark.sql.constraintPropagation.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(settings.spark.arrow_batch_rows),
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false",
        "spark.pyspark.python": sys.executable,
    }


def get_spark(settings: Settings | None = None, app_name: str = "infnet") -> SparkSession:
    """Build (or reuse) the project's Spark session and make sure the database exists."""
    settings = settings or Settings()
    # Python workers must run the venv's interpreter (PITFALLS.md: "No module named 'pyarrow'").
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    Path(settings.lake.metastore_dir).parent.mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.appName(app_name)
    for key, value in spark_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.enableHiveSupport().getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    ensure_database(spark, settings.lake.database)
    return spark


def ensure_database(spark: SparkSession, name: str) -> None:
    """Create the database once. ``CREATE DATABASE IF NOT EXISTS`` on an existing one logs
    "Namespace ... was created concurrently" on every run, so existence is checked first.

    This is the session's first catalog access, which boots the metastore: when the embedded
    Derby is held by another process, Hive retries and logs kilobytes of stack traces per try.
    They are silenced here; the exception that follows carries the cause (``jobs.common`` turns it
    into one line).
    """
    context = spark.sparkContext
    context.setLogLevel("FATAL")
    try:
        if not spark.catalog.databaseExists(name):
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {name}")
    finally:
        context.setLogLevel("WARN")


def write_spark_defaults(settings: Settings, path: Path) -> None:
    """Write spark-defaults.conf for spark-submit / spark-sql (called by scripts/setup.sh)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conf = spark_conf(settings)
    conf.pop("spark.master")  # the command line or the Airflow connection chooses the master
    path.write_text("".join(f"{k} {v}\n" for k, v in conf.items()))


if __name__ == "__main__":  # python -m conf.spark <out-file>
    write_spark_defaults(Settings(), Path(sys.argv[1]))
