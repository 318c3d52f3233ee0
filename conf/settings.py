"""Typed settings with every default in one place.

Environment variables override the defaults (so spark-submit, the CLI and Airflow all see the
same values) and jobs may override them again from their flags:

- ``INFNET_LAKE``: lake root (a local folder or any Hadoop filesystem URI), default ``<repo>/lake``
- ``INFNET_SPARK_MASTER``: Spark master, default ``local[*]``
- ``INFNET_SHUFFLE_PARTITIONS``: ``spark.sql.shuffle.partitions``, default 8
- ``INFNET_JARS_DIR``: folder with the Delta jars resolved by ``scripts/setup.sh``
- ``INFNET_RAW_DIR``: folder the ingest job reads its raw files from by default (the landing
  zone), default the bundled KuaiRand subset ``<repo>/data/kuairand_pure_subset``

>>> s = Settings()
>>> s.features.seq_len
50
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

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


@dataclass(frozen=True)
class LakeSettings:
    """Where tables, the catalog, model artifacts and reports live."""

    root: str = field(default_factory=_default_lake)
    database: str = "infnet"

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def table_path(self, table: str) -> str:
        return self._join("tables", table)

    @property
    def warehouse(self) -> str:
        return self._join("warehouse")

    @property
    def metastore_dir(self) -> str:
        """Embedded Derby metastore folder. Derby needs a local path: beside a local lake, or
        ``INFNET_METASTORE_DIR`` when the lake is remote (production uses a metastore service)."""
        if "://" in self.root and not self.root.startswith("file:"):
            return os.environ.get("INFNET_METASTORE_DIR", str(REPO_ROOT / "metastore"))
        return str(Path(self.root.removeprefix("file:")).resolve() / "metastore_db")

    @property
    def model_store(self) -> str:
        return self._join("models")

    @property
    def feature_specs(self) -> str:
        return self._join("feature_specs")

    @property
    def reports(self) -> str:
        return self._join("reports")

    @property
    def data_docs(self) -> str:
        return self._join("data_docs")


@dataclass(frozen=True)
class SparkSettings:
    master: str = field(default_factory=lambda: os.environ.get("INFNET_SPARK_MASTER", "local[*]"))
    shuffle_partitions: int = field(default_factory=lambda: int(os.environ.get("INFNET_SHUFFLE_PARTITIONS", "8")))
    driver_memory: str = "4g"
    # ~1k-row Arrow batches measured fastest for torch inside pandas UDFs (PITFALLS.md)
    arrow_batch_rows: int = 1024
    jars_dir: str = field(default_factory=lambda: os.environ.get("INFNET_JARS_DIR", str(REPO_ROOT / "jars")))


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


@dataclass(frozen=True)
class QualitySettings:
    row_count_band: float = 0.5  # partition row count within +/-50 % of the previous one
    fail_on_warning: bool = False


@dataclass(frozen=True)
class Settings:
    lake: LakeSettings = field(default_factory=LakeSettings)
    spark: SparkSettings = field(default_factory=SparkSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    quality: QualitySettings = field(default_factory=QualitySettings)

    def with_lake(self, root: str | None) -> "Settings":
        return self if not root else replace(self, lake=replace(self.lake, root=root))
