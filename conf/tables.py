"""The one definition of every table: name, keys, partitioning, and the raw input contracts.

Tables are Delta tables stored at ``<lake>/tables/<name>`` and registered in the catalog as
``<database>.<name>`` so that later jobs and ``spark-sql`` find them by name. No pyspark here (the
Airflow DAGs import these names); the column types and raw contracts live in :mod:`conf.schemas`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableDef:
    name: str
    keys: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    description: str = ""


BRONZE_LOG = TableDef("bronze_log", ("impression_id",), ("date",), "raw impressions, contract-checked")
BRONZE_USERS = TableDef("bronze_users", ("user_id",), (), "official user features")
BRONZE_VIDEOS = TableDef("bronze_videos", ("video_id",), (), "official basic video features")
BRONZE_HISTORY = TableDef("bronze_history", ("user_id",), (), "per-user behaviour before the log window")
QUARANTINE = TableDef(
    "quarantine", ("source_table", "source_file", "source_row"), ("source_table",),
    "rows that broke a contract, with the reason",
)
INGEST_AUDIT = TableDef("ingest_audit", ("run_id", "table_name"), (), "rows read = landed + quarantined, per run")
EXAMPLES = TableDef("examples", ("impression_id",), ("date",), "one row per impression: features + labels")
VOCABULARY = TableDef("vocabulary", ("field", "value"), (), "exact id -> index of the id fields (features/vocabulary.py)")
# impression_id is part of the key: a logged request can show one video twice (null when unlogged).
# Request ids of different sources never collide (each source hashes its own prefix), and every
# job replaces one (date, source) slice, so the sources of a date live side by side.
CANDIDATES = TableDef("candidates", ("request_id", "video_id", "impression_id"), ("date",), "candidate sets to score")
SCORES = TableDef(
    "scores", ("request_id", "video_id", "impression_id", "model_name", "model_version"), ("date",),
    "one score per task per candidate",
)
# One ranked list per (date, user, model@version): the top K of the user's scored candidates.
RECOMMENDATIONS = TableDef(
    "recommendations", ("date", "user_id", "model_name", "model_version", "rank"), ("date",),
    "top-K lists per user, date and model version, with every task score and the objective",
)
METRICS = TableDef("metrics", ("model_name", "model_version", "task", "metric", "slice", "date"), ("date",))
AB_REPORTS = TableDef("ab_reports", ("report_id", "task", "metric", "slice"), ())


def score_column(task) -> str:
    """The ``scores`` column of a task (a task name or a ``TaskField``): ``score_<task>``."""
    return f"score_{task if isinstance(task, str) else task.name}"


QUALITY_RESULTS = TableDef("quality_results", ("run_id", "table_name", "expectation"), ())

ALL_TABLES = (
    BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS, BRONZE_HISTORY, QUARANTINE, INGEST_AUDIT,
    EXAMPLES, VOCABULARY, CANDIDATES, SCORES, RECOMMENDATIONS, METRICS, AB_REPORTS, QUALITY_RESULTS,
)
