"""The one Spark session builder every job, test and benchmark uses.

Delta SQL extension + catalog, a persistent Hive metastore so that a table written by one job is
visible by name to the next job, to ``spark-sql`` and to the Thrift server (embedded Derby under
the lake folder by default, or a shared JDBC database: ``conf.settings.MetastoreSettings``), the
object-store profile for an ``s3a://`` lake, GPU executor resources for cluster masters, the driver
bound to 127.0.0.1 for masters on this machine, UTC session time, and the venv's interpreter for
Python workers. Before the JVM starts, :func:`check_services` checks that the master, the metastore
database and the S3 endpoint answer, so a wrong setting is one line (exit 2), never a hang.

The same settings are written by ``scripts/setup.sh`` into ``.spark-conf/spark-defaults.conf`` so
that ``scripts/spark-submit`` and ``scripts/spark-sql`` (which set ``SPARK_CONF_DIR``) see them too;
JVM-level options (jars, driver memory) only take effect from there under spark-submit.
"""
from __future__ import annotations

import atexit
import contextlib
import glob
import os
import socket
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from conf.settings import REPO_ROOT, Settings, master_endpoints


if TYPE_CHECKING:  # pyspark is imported where a session is built: the wrappers' --env stays fast
    from pyspark.sql import SparkSession


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


def _profile_jars(folder: str, profile: str, setting: str, why: str) -> list[str]:
    jars = sorted(glob.glob(os.path.join(folder, "*.jar")))
    if not jars:
        raise SetupError(f"{why} needs the {profile} jars, not found in {folder}: run "
                         f"`scripts/resolve_jars.sh {profile}` (Maven) or point {setting} at a folder holding them")
    return jars


def metastore_jars(settings: Settings) -> list[str]:
    """The JDBC driver of a shared metastore database (none for embedded Derby: the wheel has it)."""
    if settings.metastore.kind == "derby":
        return []
    return _profile_jars(settings.metastore.jars_dir, f"metastore-{settings.metastore.kind}",
                         "INFNET_METASTORE_JARS_DIR", f"INFNET_METASTORE_URL={settings.metastore.url}")


def object_store_jars(settings: Settings) -> list[str]:
    """hadoop-aws + AWS SDK modules, only for an ``s3a://`` lake (``make demo`` never needs them)."""
    if not settings.lake_on_object_store:
        return []
    return _profile_jars(settings.s3.jars_dir, "object-store", "INFNET_S3_JARS_DIR",
                         f"the lake {settings.lake.root}")


def all_jars(settings: Settings) -> list[str]:
    return [*delta_jars(settings), *metastore_jars(settings), *object_store_jars(settings)]


def metastore_conf(settings: Settings) -> dict[str, str]:
    """Embedded Derby beside the lake, or a shared JDBC metastore whose schema already exists.

    A shared database runs with ``autoCreateAll`` off: on PostgreSQL the first ``saveAsTable``
    deadlocks while DataNucleus creates tables lazily, so ``scripts/postgres.sh`` creates the Hive
    schema up front with DataNucleus SchemaTool. Schema verification stays off (the wheel's Hive
    client writes no VERSION row). Failed metastore calls retry twice, 1 s apart, so a bad
    database answers within seconds instead of Hive's 10 x 2 s.
    """
    m = settings.metastore
    if m.embedded:
        metastore = settings.lake.metastore_dir
        return {
            "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={metastore};create=true",
            "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
            "spark.hadoop.hive.metastore.schema.verification": "false",
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={Path(metastore).parent}",
        }
    conf = {
        "spark.hadoop.javax.jdo.option.ConnectionURL": m.url,
        "spark.hadoop.javax.jdo.option.ConnectionDriverName": m.driver,
        "spark.hadoop.datanucleus.schema.autoCreateAll": "false",
        "spark.hadoop.datanucleus.autoCreateSchema": "false",
        "spark.hadoop.datanucleus.fixedDatastore": "true",
        "spark.hadoop.hive.metastore.schema.verification": "false",
        "spark.hadoop.datanucleus.connectionPoolingType": "HikariCP",
        "spark.hadoop.hive.hmshandler.retry.attempts": "2",
        "spark.hadoop.hive.hmshandler.retry.interval": "1000ms",
    }
    if m.user:
        conf["spark.hadoop.javax.jdo.option.ConnectionUserName"] = m.user
    if m.password:
        conf["spark.hadoop.javax.jdo.option.ConnectionPassword"] = m.password
    return conf


def object_store_conf(settings: Settings) -> dict[str, str]:
    """s3a settings for an object-store lake, and the same settings for executors' Python (pyarrow)."""
    if not settings.lake_on_object_store:
        return {}
    s3 = settings.s3
    conf = {
        "spark.hadoop.fs.s3a.endpoint.region": s3.region,
        "spark.hadoop.fs.s3a.path.style.access": str(s3.path_style_access).lower(),
        # bounded: an endpoint that does not answer fails a job in seconds, never hangs it
        "spark.hadoop.fs.s3a.attempts.maximum": str(s3.retries),
        "spark.hadoop.fs.s3a.retry.limit": str(s3.retries),
        "spark.hadoop.fs.s3a.retry.interval": "500ms",
        "spark.hadoop.fs.s3a.connection.establish.timeout": f"{int(settings.spark.connect_timeout_s * 1000)}ms",
        "spark.hadoop.fs.s3a.connection.timeout": "60000ms",
    }
    if s3.endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = s3.endpoint
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(s3.scheme == "https").lower()
    if s3.access_key and s3.secret_key:
        conf["spark.hadoop.fs.s3a.access.key"] = s3.access_key
        conf["spark.hadoop.fs.s3a.secret.key"] = s3.secret_key
        conf["spark.hadoop.fs.s3a.aws.credentials.provider"] = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
    # Python workers read the model store and training files with pyarrow (conf.storage)
    for key, value in s3.env().items():
        conf[f"spark.executorEnv.{key}"] = value
    return conf


def network_conf(settings: Settings) -> dict[str, str]:
    """Driver and block manager on ``bind_address`` (127.0.0.1) when everything runs on this machine.

    A remote cluster must reach the driver, so there the host is left to Spark (or set
    ``spark.driver.host`` in the cluster's own config).
    """
    if not settings.spark.on_this_machine:
        return {}
    address = settings.spark.bind_address
    return {"spark.driver.bindAddress": address, "spark.driver.host": address}


def gpu_conf(settings: Settings) -> dict[str, str]:
    """GPU scheduling for cluster masters only: executors ask for ``executor_gpus`` found by the
    discovery script, each task for ``task_gpus``; the scoring worker reads its assignment from
    ``TaskContext.resources()`` (``model.scoring.choose_device``). Never for ``local[*]``: the task
    amount fails there at start-up and executor amounts hang."""
    spark = settings.spark
    if spark.executor_gpus <= 0 or spark.kind == "local":
        return {}
    conf = {
        "spark.executor.resource.gpu.amount": str(spark.executor_gpus),
        "spark.executor.resource.gpu.discoveryScript": spark.gpu_discovery_script,
        "spark.task.resource.gpu.amount": f"{spark.task_gpus:g}",
    }
    if spark.kind == "local-cluster":  # its workers run inside the driver's JVM and read this conf
        conf["spark.worker.resource.gpu.amount"] = str(spark.executor_gpus)
        conf["spark.worker.resource.gpu.discoveryScript"] = spark.gpu_discovery_script
    return conf


def spark_conf(settings: Settings) -> dict[str, str]:
    """Every Spark setting the project relies on, as plain key/value pairs."""
    try:
        settings.spark.kind, settings.metastore.kind  # noqa: B018 - validates the two settings
    except ValueError as err:
        raise SetupError(str(err)) from None
    jars = all_jars(settings)
    conf = {
        "spark.master": settings.spark.master,
        "spark.jars": ",".join(jars),
        # also on the driver's own class path: the Thrift server's queries fail after the next
        # Delta commit when Delta is only in spark.jars (delta-io/delta#705), and the metastore
        # client loads the JDBC driver from there
        "spark.driver.extraClassPath": os.pathsep.join(jars),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": settings.lake.warehouse,
        **metastore_conf(settings),
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
        # the status store keeps every finished query's plan text even with the UI off: a driver that
        # runs thousands of queries (the test session, the Thrift server) ran out of heap for broadcasts
        "spark.sql.ui.retainedExecutions": "50",
        "spark.ui.retainedJobs": "200",
        "spark.ui.retainedStages": "200",
        "spark.pyspark.python": sys.executable,
        # executors in other JVMs (local-cluster, standalone on this machine) import the project
        # from the checkout, like the driver
        "spark.executorEnv.PYTHONPATH": os.pathsep.join(dict.fromkeys(
            p for p in (str(REPO_ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)) if p)),
        **object_store_conf(settings),
        **network_conf(settings),
        **gpu_conf(settings),
    }
    return conf


def _answers(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` accepts a TCP connection within ``timeout`` s, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer within {timeout:g} s"
    except OSError as err:
        return err.strerror or str(err)


def check_services(settings: Settings) -> None:
    """Fail fast, naming the setting, when the master, the metastore database or the S3 endpoint
    does not answer: Spark itself would retry for minutes or hang."""
    timeout = settings.spark.connect_timeout_s
    try:
        masters = master_endpoints(settings.spark.master)
        metastore = settings.metastore.endpoint
        s3 = settings.s3.endpoint_address if settings.lake_on_object_store else None
    except ValueError as err:
        raise SetupError(str(err)) from None
    for host, port in masters:
        if why := _answers(host, port, timeout):
            raise SetupError(f"INFNET_SPARK_MASTER {settings.spark.master} does not answer at {host}:{port} ({why}); "
                             "start it (scripts/standalone.sh start) or fix the setting")
    if metastore:
        host, port = metastore
        if why := _answers(host, port, timeout):
            raise SetupError(f"INFNET_METASTORE_URL {settings.metastore.url} does not answer at {host}:{port} ({why}); "
                             "start it (scripts/postgres.sh start) or fix the setting")
    if s3:
        host, port = s3
        if why := _answers(host, port, timeout):
            setting = f"INFNET_S3_ENDPOINT {settings.s3.endpoint}" if settings.s3.endpoint else \
                f"the S3 endpoint of INFNET_LAKE {settings.lake.root}"
            raise SetupError(f"{setting} does not answer at {host}:{port} ({why}); fix the setting or start the store")


def check_metastore(spark: SparkSession, settings: Settings) -> None:
    """One cheap catalog call, so that a metastore that answers but refuses (wrong database, user,
    password, no schema) is one line naming the setting instead of a Hive stack trace."""
    if settings.metastore.embedded:
        return
    try:
        spark.catalog.listDatabases()
    except Exception as err:  # noqa: BLE001 - py4j / analysis errors of any kind: summarised below
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise SetupError(f"INFNET_METASTORE_URL {settings.metastore.url}: the metastore refused the session "
                         f"({first[:300]}); check the database, user, password and that scripts/postgres.sh "
                         "created the Hive schema") from None


def submitted_master(settings: Settings) -> Settings:
    """Under ``spark-submit`` the command line's ``--master`` (the Airflow connection's, appended
    after the wrapper's) wins over a master that merely came from the environment default; the
    builder would otherwise override it. A master set explicitly (a job's ``--master``) stays."""
    from dataclasses import replace

    if not os.environ.get("PYSPARK_GATEWAY_PORT"):  # not launched by spark-submit
        return settings
    if settings.spark.master != os.environ.get("INFNET_SPARK_MASTER", "local[*]"):
        return settings
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # noqa: SLF001 - connects to spark-submit's JVM: its properties
    submitted = SparkConf().get("spark.master", None)
    if not submitted or submitted == settings.spark.master:
        return settings
    return replace(settings, spark=replace(settings.spark, master=submitted))


def local_spark_home(settings: Settings) -> Path:
    """A Spark home for ``local-cluster``: links to the wheel's ``bin``, ``jars``, ``python``, ... and
    a ``work`` folder of its own (``<services.state_dir>/spark-home``). The in-JVM workers write each
    executor's files under ``$SPARK_HOME/work``, which would otherwise be inside the venv."""
    import pyspark

    wheel = Path(pyspark.__file__).resolve().parent
    home = Path(settings.services.state_dir) / "spark-home"
    (home / "work").mkdir(parents=True, exist_ok=True)
    for entry in wheel.iterdir():
        link = home / entry.name
        if entry.name != "work" and not link.exists():
            try:
                link.symlink_to(entry)
            except FileExistsError:  # another process made it first
                pass
    return home


def get_spark(settings: Settings | None = None, app_name: str = "infnet") -> SparkSession:
    """Build (or reuse) the project's Spark session and make sure the database exists."""
    from pyspark.sql import SparkSession

    settings = submitted_master(settings or Settings())
    conf = spark_conf(settings)
    check_services(settings)
    # Python workers must run the venv's interpreter (docs/PITFALLS.md: "No module named 'pyarrow'").
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if settings.spark.on_this_machine:  # the JVM (and local-cluster workers) bind here
        os.environ.setdefault("SPARK_LOCAL_IP", settings.spark.bind_address)
    if settings.spark.kind == "local-cluster" and "SPARK_HOME" not in os.environ:
        os.environ["SPARK_HOME"] = str(local_spark_home(settings))
    if settings.metastore.embedded:
        Path(settings.lake.metastore_dir).parent.mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.enableHiveSupport().getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if settings.spark.kind != "local":
        # stop executors before the interpreter exits: otherwise the (local-cluster) master
        # relaunches the executors it sees dying during the JVM's shutdown, with errors in the log
        atexit.register(spark.stop)
    check_metastore(spark, settings)
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text("".join(f"{k} {v}\n" for k, v in conf.items()))
    tmp.replace(path)  # atomic: parallel wrappers never read half a file


def submit_environment(settings: Settings) -> dict[str, str]:
    """What ``scripts/spark-submit`` / ``spark-sql`` / ``thrift-server.sh`` run with: a Spark config
    folder written from the current settings (one per distinct config, under ``.spark-conf/``), the
    master, and ``SPARK_LOCAL_IP`` for masters on this machine. Checks the services first."""
    import hashlib

    conf = spark_conf(settings)
    check_services(settings)
    text = "".join(f"{k} {v}\n" for k, v in sorted(conf.items()) if k != "spark.master")
    folder = REPO_ROOT / ".spark-conf" / hashlib.sha256(text.encode()).hexdigest()[:16]
    if not (folder / "spark-defaults.conf").exists():
        write_spark_defaults(settings, folder / "spark-defaults.conf")
    env = {"SPARK_CONF_DIR": str(folder), "INFNET_SPARK_MASTER": settings.spark.master,
           "INFNET_DRIVER_CLASS_PATH": conf["spark.driver.extraClassPath"]}
    if settings.spark.on_this_machine:
        env["SPARK_LOCAL_IP"] = settings.spark.bind_address
    return env


def main(argv: list[str]) -> int:
    """``python -m conf.spark <out-file>``: write spark-defaults.conf (scripts/setup.sh);
    ``python -m conf.spark --env``: shell assignments for the wrappers (exit 2 with one line on a
    bad setting or a service that does not answer)."""
    import shlex

    try:
        if argv[:1] == ["--env"]:
            for key, value in submit_environment(Settings()).items():
                print(f"export {key}={shlex.quote(value)}")
        else:
            write_spark_defaults(Settings(), Path(argv[0]))
    except SetupError as err:
        print(f"infnet: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


@contextlib.contextmanager
def session_conf(spark: "SparkSession", key: str, value: str):
    """Set a runtime SQL conf of ``spark`` for the ``with`` block and put the previous value back
    (unset when there was none), also when the block raises."""
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)
