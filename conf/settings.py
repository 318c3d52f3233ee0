"""Typed settings with every default in one place.

Environment variables override the defaults (so spark-submit, the CLI and Airflow all see the
same values) and jobs may override them again from their flags:

- ``INFNET_LAKE``: lake root, a local folder (default ``<repo>/lake``) or ``s3a://bucket/prefix``
  (then the object-store settings below apply)
- ``INFNET_SPARK_MASTER``: Spark master, default ``local[*]``; ``local[N]``, ``local-cluster[W,C,MB]``
  (W executor JVMs of C cores and MB MiB), ``spark://host:port``, ``yarn``, ``k8s://https://...``
- ``INFNET_SHUFFLE_PARTITIONS``: ``spark.sql.shuffle.partitions``, default 8
- ``INFNET_JARS_DIR``: folder with the Delta jars resolved by ``scripts/setup.sh``
- ``INFNET_RAW_DIR``: folder the ingest job reads its raw files from by default (the landing
  zone), default the bundled KuaiRand subset ``<repo>/data/kuairand_pure_subset``
- ``INFNET_SPARK_BIND_ADDRESS``: address the driver, its block manager and every project service
  bind to, default ``127.0.0.1`` (used for local masters and masters on a loopback host)
- ``INFNET_SPARK_CONNECT_TIMEOUT``: seconds a start-up check waits for the master, the metastore
  database and the S3 endpoint before a job gives up with one line (exit 2), default 5

Metastore (``MetastoreSettings``): ``INFNET_METASTORE_URL`` empty (default) = embedded Derby beside
the lake, one JVM at a time; a JDBC URL (``jdbc:postgresql://127.0.0.1:55432/metastore``) = a shared
Hive metastore database that many jobs, ``spark-sql`` and the Thrift server use at once;
``INFNET_METASTORE_USER`` / ``INFNET_METASTORE_PASSWORD``; ``INFNET_METASTORE_JARS_DIR`` (the JDBC
driver, default ``<repo>/jars-metastore``, ``scripts/resolve_jars.sh metastore-postgres``).

Object store (``ObjectStoreSettings``, used when the lake is ``s3a://``): ``INFNET_S3_ENDPOINT``
(empty: AWS), ``INFNET_S3_ACCESS_KEY`` / ``INFNET_S3_SECRET_KEY`` (default ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``), ``INFNET_S3_REGION`` (``us-east-1``), ``INFNET_S3_PATH_STYLE``
(default on when an endpoint is set), ``INFNET_S3_RETRIES`` (3), ``INFNET_S3_JARS_DIR`` (default
``<repo>/jars-s3``, ``scripts/resolve_jars.sh object-store``).

GPU executors (cluster masters only): ``INFNET_EXECUTOR_GPUS`` (GPUs per executor, default 0 = none),
``INFNET_TASK_GPUS`` (GPUs per task, default 1), ``INFNET_GPU_DISCOVERY_SCRIPT`` (default
``<repo>/scripts/gpu-discovery.sh``, which asks ``nvidia-smi``).

Airflow: ``INFNET_POOL_SLOTS``, the slots of the pool every Spark task shares (default 1 with the
embedded Derby metastore or an ``s3a://`` lake, 2 with a shared metastore on another lake).

Project-local services (``ServiceSettings``; ``scripts/postgres.sh``, ``scripts/thrift-server.sh``,
``scripts/standalone.sh``, ``scripts/moto.sh``): ``INFNET_PG_PORT`` (55432),
``INFNET_THRIFT_PORT`` (10000), ``INFNET_THRIFT_MASTER`` (``local[2]``: the SQL endpoint's own Spark
application), ``INFNET_STANDALONE_PORT`` (7077), ``INFNET_STANDALONE_UI_PORT`` (8090),
``INFNET_STANDALONE_WORKERS`` (2) of ``INFNET_WORKER_CORES`` (1) and ``INFNET_WORKER_MEMORY`` (1g),
``INFNET_MOTO_PORT`` (5055), ``INFNET_MLFLOW_PORT`` (5056: the MLflow UI of ``scripts/mlflow.sh``).

``python -m conf.settings KEY`` prints one value for the shell scripts, e.g. ``services.pg_port``.

>>> s = Settings()
>>> s.features.seq_len
50
>>> master_kind("local-cluster[2,1,1024]"), master_kind("spark://127.0.0.1:7077"), master_kind("local[*]")
('local-cluster', 'standalone', 'local')
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA_DIR = REPO_ROOT / "data" / "kuairand_pure_subset"


# The raw files of one landing zone, by role; ingest reads ``<raw dir>/<file>`` unless a flag says otherwise.
RAW_SOURCE_FILES = {
    "log": "log_standard_4_25_to_5_04_pure.csv.gz",
    "users": "user_features_pure.csv",
    "videos": "video_features_basic_pure.csv",
    "history": "history_4_08_to_4_24_pure.parquet",
}


def raw_sources(raw_dir: str | None = None) -> dict[str, str]:
    """Default raw file per role, under ``raw_dir`` (default ``$INFNET_RAW_DIR`` or the demo data).

    >>> raw_sources("/landing")["users"]
    '/landing/user_features_pure.csv'
    """
    root = raw_dir or os.environ.get("INFNET_RAW_DIR") or str(DEMO_DATA_DIR)
    return {role: f"{root.rstrip('/')}/{name}" for role, name in RAW_SOURCE_FILES.items()}


def _default_lake() -> str:
    return os.environ.get("INFNET_LAKE", str(REPO_ROOT / "lake"))


def _env(name: str, default: str = "", *fallbacks: str):
    """A default factory: ``$name``, else the first set fallback variable, else ``default``."""
    def read() -> str:
        for key in (name, *fallbacks):
            if os.environ.get(key):
                return os.environ[key]
        return default
    return field(default_factory=read)


def _env_int(name: str, default: int):
    return field(default_factory=lambda: int(os.environ.get(name) or default))


def _env_float(name: str, default: float):
    return field(default_factory=lambda: float(os.environ.get(name) or default))


def is_object_store(uri: str) -> bool:
    """``s3a://`` / ``s3://`` lakes need the object-store profile.

    >>> is_object_store("s3a://lake/infnet"), is_object_store("/data/lake")
    (True, False)
    """
    return uri.split("://", 1)[0].lower() in ("s3a", "s3", "s3n") if "://" in uri else False


def master_kind(master: str) -> str:
    """``local`` | ``local-cluster`` | ``standalone`` | ``yarn`` | ``k8s`` (ValueError otherwise)."""
    if re.fullmatch(r"local(\[(\*|\d+)(,\d+)?\])?", master):
        return "local"
    if re.fullmatch(r"local-cluster\[\d+,\s*\d+,\s*\d+\]", master):
        return "local-cluster"
    if master.startswith("spark://"):
        return "standalone"
    if master == "yarn":
        return "yarn"
    if master.startswith("k8s://"):
        return "k8s"
    raise ValueError(f"INFNET_SPARK_MASTER {master!r} is not a Spark master: expected local[*], local[N], "
                     "local-cluster[W,C,MB], spark://host:port, yarn or k8s://https://host:port")


def master_endpoints(master: str) -> list[tuple[str, int]]:
    """(host, port) of each standalone master in ``spark://h1:p1,h2:p2``; [] for other masters.

    >>> master_endpoints("spark://127.0.0.1:7077,127.0.0.1:7078")
    [('127.0.0.1', 7077), ('127.0.0.1', 7078)]
    """
    if master_kind(master) != "standalone":
        return []
    out = []
    for part in master.removeprefix("spark://").split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"INFNET_SPARK_MASTER {master!r}: expected spark://host:port[,host:port]")
        out.append((host, int(port)))
    return out


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class LakeSettings:
    """Where tables, the catalog, model artifacts and reports live."""

    root: str = field(default_factory=_default_lake)
    database: str = "infnet"
    sql_engine: str = _env("INFNET_SQL_ENGINE", "spark")  # infnet sql's default: spark | duckdb (no JVM, read-only)
    mlflow_uri: str = _env("INFNET_MLFLOW_TRACKING_URI")  # "": SQLite under the lake (mlflow_tracking_uri)

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def table_path(self, table: str) -> str:
        return self._join("tables", table)

    @property
    def warehouse(self) -> str:
        return self._join("warehouse")

    @property
    def _local_root(self) -> Path | None:
        """The lake's folder when it is on this machine (a path or ``file:``), else None."""
        if "://" in self.root and not self.root.startswith("file:"):
            return None
        return Path(self.root.removeprefix("file:")).resolve()

    @property
    def metastore_dir(self) -> str:
        """Embedded Derby metastore folder. Derby needs a local path: beside a local lake, or
        ``INFNET_METASTORE_DIR`` when the lake is remote (production uses a metastore service)."""
        if self._local_root is None:
            return os.environ.get("INFNET_METASTORE_DIR", str(REPO_ROOT / "metastore"))
        return str(self._local_root / "metastore_db")

    @property
    def model_store(self) -> str:
        return self._join("models")

    @property
    def _local_mlflow_dir(self) -> Path:
        """SQLite needs a local file: under a local lake, else beside the remote lake's Derby folder."""
        if self._local_root is None:
            return Path(self.metastore_dir).parent / "mlflow"
        return self._local_root / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        """MLflow's tracking store of the training runs: ``$INFNET_MLFLOW_TRACKING_URI`` (another store
        or an ``http://`` MLflow server), else a SQLite database under the lake.

        >>> LakeSettings(root="/data/lake", mlflow_uri="").mlflow_tracking_uri
        'sqlite:////data/lake/mlflow/mlflow.db'
        """
        return self.mlflow_uri or f"sqlite:///{self._local_mlflow_dir / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> str:
        """Where new MLflow experiments keep their runs' artifacts (a local folder for a remote lake,
        as the SQLite default: MLflow writes object stores through boto3, which the project lacks)."""
        return (self._local_mlflow_dir / "artifacts").as_uri()

    @property
    def feature_specs(self) -> str:
        return self._join("feature_specs")

    @property
    def reports(self) -> str:
        return self._join("reports")

    @property
    def data_docs(self) -> str:
        return self._join("data_docs")

    @property
    def staging(self) -> str:
        """Scratch Parquet of a job run before its one Delta commit (never read as a table)."""
        return self._join("_staging")


@dataclass(frozen=True)
class SparkSettings:
    master: str = field(default_factory=lambda: os.environ.get("INFNET_SPARK_MASTER", "local[*]"))
    shuffle_partitions: int = field(default_factory=lambda: int(os.environ.get("INFNET_SHUFFLE_PARTITIONS", "8")))
    driver_memory: str = "4g"
    # ~1k-row Arrow batches measured fastest for torch inside pandas UDFs (docs/PITFALLS.md)
    arrow_batch_rows: int = 1024
    jars_dir: str = field(default_factory=lambda: os.environ.get("INFNET_JARS_DIR", str(REPO_ROOT / "jars")))
    bind_address: str = _env("INFNET_SPARK_BIND_ADDRESS", "127.0.0.1")
    connect_timeout_s: float = _env_float("INFNET_SPARK_CONNECT_TIMEOUT", 5.0)
    # a job started right after another one exits can find the embedded Derby catalog still held
    # for a moment (the previous driver JVM is shutting down): wait this long before refusing
    catalog_release_wait_s: float = _env_float("INFNET_CATALOG_RELEASE_WAIT", 15.0)
    # GPU executors: cluster masters only (in local[*] the task amount fails at start-up and the
    # executor amount hangs); 0 = no GPU scheduling
    executor_gpus: int = _env_int("INFNET_EXECUTOR_GPUS", 0)
    task_gpus: float = _env_float("INFNET_TASK_GPUS", 1.0)
    gpu_discovery_script: str = _env("INFNET_GPU_DISCOVERY_SCRIPT", str(REPO_ROOT / "scripts" / "gpu-discovery.sh"))

    @property
    def kind(self) -> str:
        return master_kind(self.master)

    @property
    def on_this_machine(self) -> bool:
        """Driver and executors on this machine: a local master or a standalone one on loopback."""
        if self.kind in ("local", "local-cluster"):
            return True
        endpoints = master_endpoints(self.master)
        return bool(endpoints) and all(h in LOOPBACK_HOSTS for h, _ in endpoints)


JDBC_DRIVERS = {"postgresql": "org.postgresql.Driver", "mysql": "com.mysql.cj.jdbc.Driver",
                "mariadb": "org.mariadb.jdbc.Driver", "derby": "org.apache.derby.jdbc.EmbeddedDriver"}


@dataclass(frozen=True)
class MetastoreSettings:
    """The Hive metastore: embedded Derby beside the lake (``url`` empty) or a shared JDBC database.

    >>> m = MetastoreSettings(url="jdbc:postgresql://127.0.0.1:55432/metastore")
    >>> m.embedded, m.kind, m.driver, m.endpoint
    (False, 'postgresql', 'org.postgresql.Driver', ('127.0.0.1', 55432))
    """

    url: str = _env("INFNET_METASTORE_URL")
    user: str = _env("INFNET_METASTORE_USER")
    password: str = _env("INFNET_METASTORE_PASSWORD")
    jars_dir: str = _env("INFNET_METASTORE_JARS_DIR", str(REPO_ROOT / "jars-metastore"))

    @property
    def embedded(self) -> bool:
        return not self.url

    @property
    def kind(self) -> str:
        if self.embedded:
            return "derby"
        match = re.match(r"jdbc:([a-z0-9]+):", self.url)
        if not match:
            raise ValueError(f"INFNET_METASTORE_URL {self.url!r} is not a JDBC URL "
                             "(expected e.g. jdbc:postgresql://127.0.0.1:55432/metastore)")
        return match.group(1)

    @property
    def driver(self) -> str:
        if self.kind not in JDBC_DRIVERS:
            raise ValueError(f"INFNET_METASTORE_URL {self.url!r}: no JDBC driver known for {self.kind!r} "
                             f"(known: {', '.join(JDBC_DRIVERS)})")
        return JDBC_DRIVERS[self.kind]

    @property
    def endpoint(self) -> tuple[str, int] | None:
        """(host, port) of a networked metastore database; None for embedded ones."""
        if self.embedded or self.kind == "derby":
            return None
        parsed = urlparse(self.url[len("jdbc:"):])
        defaults = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
        try:
            port = parsed.port
        except ValueError:
            raise ValueError(f"INFNET_METASTORE_URL {self.url!r} has a bad port") from None
        if not parsed.hostname:
            raise ValueError(f"INFNET_METASTORE_URL {self.url!r} names no host")
        return parsed.hostname, port or defaults.get(self.kind, 0)


@dataclass(frozen=True)
class ObjectStoreSettings:
    """S3-compatible storage for an ``s3a://`` lake (hadoop-aws for Spark, pyarrow for Python)."""

    endpoint: str = _env("INFNET_S3_ENDPOINT")
    access_key: str = _env("INFNET_S3_ACCESS_KEY", "", "AWS_ACCESS_KEY_ID")
    secret_key: str = _env("INFNET_S3_SECRET_KEY", "", "AWS_SECRET_ACCESS_KEY")
    region: str = _env("INFNET_S3_REGION", "us-east-1")
    path_style: str = _env("INFNET_S3_PATH_STYLE")  # "" = on when an endpoint is set
    retries: int = _env_int("INFNET_S3_RETRIES", 3)
    jars_dir: str = _env("INFNET_S3_JARS_DIR", str(REPO_ROOT / "jars-s3"))

    @property
    def path_style_access(self) -> bool:
        return self.path_style.lower() in ("1", "true", "yes") if self.path_style else bool(self.endpoint)

    @property
    def scheme(self) -> str:
        return urlparse(self.endpoint).scheme or "https" if self.endpoint else "https"

    @property
    def endpoint_address(self) -> tuple[str, int]:
        """(host, port) the S3 client connects to (AWS's regional endpoint when none is set).

        >>> ObjectStoreSettings(endpoint="http://127.0.0.1:5055").endpoint_address
        ('127.0.0.1', 5055)
        """
        if not self.endpoint:
            return f"s3.{self.region}.amazonaws.com", 443
        parsed = urlparse(self.endpoint if "://" in self.endpoint else f"https://{self.endpoint}")
        if not parsed.hostname:
            raise ValueError(f"INFNET_S3_ENDPOINT {self.endpoint!r} names no host")
        return parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)

    def env(self) -> dict[str, str]:
        """These settings as the environment variables that rebuild them (for executors' Python)."""
        values = {"INFNET_S3_ENDPOINT": self.endpoint, "INFNET_S3_ACCESS_KEY": self.access_key,
                  "INFNET_S3_SECRET_KEY": self.secret_key, "INFNET_S3_REGION": self.region,
                  "INFNET_S3_PATH_STYLE": "true" if self.path_style_access else "false"}
        return {k: v for k, v in values.items() if v}


@dataclass(frozen=True)
class ServiceSettings:
    """Ports of the project-local services the scripts start, all bound to ``host``."""

    host: str = _env("INFNET_SPARK_BIND_ADDRESS", "127.0.0.1")
    pg_port: int = _env_int("INFNET_PG_PORT", 55432)
    pg_database: str = "metastore"
    pg_user: str = "infnet"
    thrift_port: int = _env_int("INFNET_THRIFT_PORT", 10000)
    # the Thrift server is a Spark application of its own: small, local, queries only
    thrift_master: str = _env("INFNET_THRIFT_MASTER", "local[2]")
    thrift_driver_memory: str = _env("INFNET_THRIFT_DRIVER_MEMORY", "1g")
    standalone_port: int = _env_int("INFNET_STANDALONE_PORT", 7077)
    standalone_ui_port: int = _env_int("INFNET_STANDALONE_UI_PORT", 8090)  # Airflow's UI has 8080
    standalone_workers: int = _env_int("INFNET_STANDALONE_WORKERS", 2)
    worker_cores: int = _env_int("INFNET_WORKER_CORES", 1)
    worker_memory: str = _env("INFNET_WORKER_MEMORY", "1g")
    moto_port: int = _env_int("INFNET_MOTO_PORT", 5055)
    mlflow_port: int = _env_int("INFNET_MLFLOW_PORT", 5056)  # scripts/mlflow.sh: the MLflow UI
    state_dir: str = _env("INFNET_SERVICES_DIR", str(REPO_ROOT / ".services"))

    @property
    def pg_url(self) -> str:
        return f"jdbc:postgresql://{self.host}:{self.pg_port}/{self.pg_database}"


@dataclass(frozen=True)
class FeatureSettings:
    """Feature construction knobs; they are written into the feature spec of every build."""

    seq_len: int = 50
    user_id_buckets: int = 50_000
    video_id_buckets: int = 20_000
    author_id_buckets: int = 20_000
    music_id_buckets: int = 20_000
    generic_buckets: int = 1_000
    hash_seed: int = 42
    # Stats smoothing: rate = (positives + prior * strength) / (count + strength)
    rate_prior_strength: float = 20.0
    rate_buckets: int = 20
    count_buckets_per_doubling: int = 1  # n_prior bucket = 1 + floor(k * log2(1 + n)), capped at 31 k
    # also the raw values (log1p counts, logit rates) as dense_* float columns: chosen on the valid day
    # (every arm tried gained: INFNet +.0008, MMoE +.0023, LightGBM +.0017 mean valid AUC; finer buckets did not)
    dense_stats: bool = True
    # An event's labels (like, long view, play time) are known when its playback ends: later rows see
    # the event from time_ms + play_time_ms on (sequences and statistics). False: from time_ms (a leak).
    label_delay: bool = True
    # Ids of user_id / video_id / author_id / music_id map through an exact vocabulary built from bronze
    # (features/vocabulary.py) when a field has at most this many ids (+ the reserved 0); larger fields,
    # and every field when 0, hash into the bucket counts above. 0 by default: on the valid day exact
    # ids scored below hashed ones for INFNet (mean valid AUC -.0051 / -.0060 on two seeds; README "Accuracy").
    exact_vocab_max_size: int = 0
    # When a training row's features are taken (features/space.py): "impression" = just before the
    # row's own impression (statistics and sequences updated within the day); "request" = as of its
    # date's request time (RetrievalSettings.request_time), what the nightly job sees when it scores.
    feature_time: str = "impression"
    # Entire-space training (features/space.py, needs feature_time="request"): > 0 adds an `exposed`
    # task over the date's retrieval candidates plus its impressions, keeping at most this many unshown
    # candidates per request (each weighted by unshown / kept in mask_exposed, so P(exposed) stays
    # calibrated); 0 = impressions only, no exposure task.
    exposure_negatives: int = 0
    # The exposure task's positives: False = the shown candidates only, so `exposed` is P(shown | the
    # video is a retrieval candidate), what ranking a candidate set needs; True = also the impressions
    # retrieval missed (the whole space; on the valid day its exposure head learned "not retrieved"
    # and ranked the candidates below random: README "Ranking real candidate sets").
    exposure_outside_candidates: bool = False


def parse_feature_override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` for a :class:`FeatureSettings` field, VALUE parsed as the field's type (a
    ``ValueError`` naming the valid keys or the type otherwise).

    >>> parse_feature_override("dense_stats=false"), parse_feature_override("seq_len=20")
    (('dense_stats', False), ('seq_len', 20))
    """
    key, sep, value = text.partition("=")
    types = {f.name: type(getattr(FeatureSettings(), f.name)) for f in dataclasses.fields(FeatureSettings)}
    if not sep or key not in types:
        raise ValueError(f"expected KEY=VALUE with KEY one of {sorted(types)}, got {text!r}")
    kind = types[key]
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{key} takes a bool, got {value!r}")
        return key, value.lower() in ("true", "1")
    try:
        return key, kind(value)
    except ValueError:
        raise ValueError(f"{key} takes a {kind.__name__}, got {value!r}") from None


@dataclass(frozen=True)
class QualitySettings:
    row_count_band: float = 0.5  # partition row count within +/-50 % of the previous one
    fail_on_warning: bool = False


@dataclass(frozen=True)
class RetrievalSettings:
    """The Spark retrieval stage (features/retrieval.py): channels and how they merge.

    Every channel reads only events strictly before the request time; lookbacks bound the work.
    """

    candidates_per_request: int = 200
    request_time: str = "00:00"  # local time (UTC+8) of the date's one request per user
    covisit_lookback_days: int = 7
    covisit_window_minutes: int = 60  # two positives of one user this close co-visit
    covisit_seeds: int = 20  # the user's most recent clicked / long-viewed videos used as seeds
    covisit_neighbours: int = 50  # kept per seed video (highest co-visit count first)
    covisit_seed_decay: float = 0.9  # a seed's weight: decay ** (recency rank - 1)
    author_lookback_days: int = 30
    author_top_authors: int = 10  # the user's most engaged authors
    author_videos: int = 20  # most recently shown videos per author
    trending_prior_strength: float = 20.0  # smoothing of the previous 24 h long-view rate
    popularity_lookback_days: int = 7
    global_margin: int = 100  # trending / popularity fetch N + margin, so exclusions still leave N
    fusion_k: float = 60.0  # reciprocal-rank fusion: sum_c weight_c / (k + rank_c)
    channel_weights: tuple[tuple[str, float], ...] = (
        ("covisit", 1.0), ("author", 1.0), ("trending", 0.5), ("popular", 0.25))
    exclude_seen: bool = True  # drop videos the user was shown before the request time


@dataclass(frozen=True)
class CandidateSettings:
    """The candidate sets beside retrieval's (``infnet build_candidates --source logged`` / ``--from``)."""

    logged_window_minutes: int = 60  # logged replay: a request = a user's impressions in one such window
    external_max_per_request: int = 1000  # --from: a request with more candidates is quarantined whole


@dataclass(frozen=True)
class RankingSettings:
    """Scoring at ranking shape and the published lists."""

    # candidates per model call in a scoring worker, by device; Spark ships Arrow batches of about
    # cpu_batch_candidates and a CUDA worker gathers them up to cuda_batch_candidates (bench/scoring.py)
    cpu_batch_candidates: int = 1024
    cuda_batch_candidates: int = 65_536
    max_candidates_per_row: int = 4096  # a larger request is split into rows of at most this many
    # rows the score job's UDF receives: "packed" = one per request, the user side once (moving flat
    # rows' repeated sequences from the JVM to Python cost more than scoring them); "flat" = one per candidate
    scoring_layout: str = "packed"
    top_k: int = 50
    # objective = sum_t weight_t * score_t over the binary task probabilities (the expected number
    # of positive actions given a showing: click + long view + like), times the popularity exposure
    # prior (1 + the video's 7-day clicks)^2 (model/ranking.py): 2 is the smallest exponent at which
    # neither INFNet's nor MMoE's lists lose to popularity on the valid day (README, "Lists")
    objective: tuple[tuple[str, float], ...] = (("click", 1.0), ("long_view", 1.0), ("like", 1.0), ("popularity", 2.0))


@dataclass(frozen=True)
class ReplaySettings:
    """The debiased (IPS) list replay (evaluation/lists.py): item propensities
    ``p = max(propensity_clip, (n / max n) ^ ((gamma + 1) / 2))`` from each video's positives in the
    ``propensity_lookback_days`` before the ranked date's request time."""

    propensity_lookback_days: int = 7
    propensity_clip: float = 0.01  # lower bound of a propensity (the most popular video has 1)
    propensity_fit_min_count: int = 3  # videos with fewer positives stay out of the exponent fit
    propensity_gamma: float | None = None  # None: fit gamma per task and date; a number: use it


@dataclass(frozen=True)
class PromotionSettings:
    """``infnet promote``: which A/B result moves a registry alias (evaluation/promotion.py), and the
    aliases the jobs set. Metrics are ``task:metric`` rows of the report's overall slice."""

    primary: str = "click:auc"  # the candidate must win here (CI above zero in its favour)
    guards: tuple[str, ...] = ("long_view:auc", "like:auc")  # ... and lose on none of these
    champion_alias: str = "champion"  # what promote moves by default; the daily DAG's control
    challenger_alias: str = "challenger"  # each new version of a name gets it (infnet train)


@dataclass(frozen=True)
class Settings:
    lake: LakeSettings = field(default_factory=LakeSettings)
    spark: SparkSettings = field(default_factory=SparkSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    quality: QualitySettings = field(default_factory=QualitySettings)
    metastore: MetastoreSettings = field(default_factory=MetastoreSettings)
    s3: ObjectStoreSettings = field(default_factory=ObjectStoreSettings)
    services: ServiceSettings = field(default_factory=ServiceSettings)
    pool_slots_override: int | None = field(
        default_factory=lambda: int(os.environ["INFNET_POOL_SLOTS"]) if os.environ.get("INFNET_POOL_SLOTS") else None)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    candidates: CandidateSettings = field(default_factory=CandidateSettings)
    ranking: RankingSettings = field(default_factory=RankingSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    promotion: PromotionSettings = field(default_factory=PromotionSettings)

    def with_lake(self, root: str | None) -> "Settings":
        return self if not root else replace(self, lake=replace(self.lake, root=root))

    @property
    def mlflow_tracking_uri(self) -> str:
        """``python -m conf.settings mlflow_tracking_uri``: the lake's MLflow store (:class:`LakeSettings`)."""
        return self.lake.mlflow_tracking_uri

    @property
    def lake_on_object_store(self) -> bool:
        return is_object_store(self.lake.root)

    @property
    def pool_slots(self) -> int:
        """Slots of the Airflow pool every Spark task shares (``INFNET_POOL_SLOTS``).

        Embedded Derby admits one JVM: 1, and more is an error. An ``s3a://`` lake: 1 by default,
        because Delta's default S3 log store allows one writer per table and the DAGs' parallel
        branches (score champion / challenger) write the same table. Otherwise 2.

        >>> Settings(metastore=MetastoreSettings(url=""), pool_slots_override=None).pool_slots
        1
        """
        if self.pool_slots_override is not None:
            if self.pool_slots_override < 1:
                raise ValueError(f"INFNET_POOL_SLOTS must be >= 1, got {self.pool_slots_override}")
            if self.metastore.embedded and self.pool_slots_override > 1:
                raise ValueError(f"INFNET_POOL_SLOTS={self.pool_slots_override} needs a shared metastore "
                                 "(INFNET_METASTORE_URL): embedded Derby admits one Spark JVM at a time")
            return self.pool_slots_override
        return 1 if self.metastore.embedded or self.lake_on_object_store else 2


def setting(path: str, settings: Settings | None = None) -> str:
    """One value by dotted path, for shell scripts: ``setting("services.pg_port")``.

    >>> setting("services.host", Settings(services=ServiceSettings(host="127.0.0.1")))
    '127.0.0.1'
    """
    value: object = settings or Settings()
    for part in path.split("."):
        value = getattr(value, part)
    return str(value)


if __name__ == "__main__":  # python -m conf.settings services.pg_port [more.keys ...]
    try:
        print("\n".join(setting(key) for key in sys.argv[1:]))
    except (AttributeError, ValueError) as err:
        print(f"conf.settings: {err}", file=sys.stderr)
        sys.exit(2)
