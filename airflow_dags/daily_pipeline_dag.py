"""``infnet_daily``: one day of logs from raw files to an A/B report, in Airflow.

::

    ingest -> quality_gate_bronze_log -> build_features -> quality_gate_examples --+
                                  \\-> build_candidates ---------------------------+
        +-> score_champion   -> evaluate_champion   --+
        +-> score_challenger -> evaluate_challenger --+-> ab_report

- Each run covers one data interval ``[day, day + 1)`` and ``{{ ds }}`` (that day) is passed as
  ``--date`` (``--dates`` to ``ab_report``); every job replaces exactly its day's slice, so
  retries, reruns and backfills (``airflow backfill create --dag-id infnet_daily --from-date
  2022-04-25 --to-date 2022-05-04``) never duplicate rows.
- The champion (control) and challenger (treatment) are DAG params, ``name``, ``name@version`` or
  ``name@alias`` (MLflow registry aliases), by default ``infnet@champion`` (the version serving,
  moved by the training DAG's ``promote`` on evidence) and ``infnet@challenger`` (the newest
  trained): ``airflow dags trigger infnet_daily -c '{"champion": "mmoe"}'`` compares with the
  newest MMoE instead. Without a version the jobs take the newest registered one; while the two
  aliases name one version, the A/B report says so and writes nothing. A param is checked against
  ``conf.syntax.MODEL_REF_PATTERN``, the rule the jobs parse with, so a run the DAG accepts is not
  refused by its jobs (``mmoe@latest`` is refused at trigger time).
- All Spark tasks share the pool ``spark_embedded`` of one slot: the embedded Derby metastore
  admits one JVM at a time, so the two scoring branches run one after the other (common.POOL).
- A quality gate that fails exits 2: the task fails without retries and nothing downstream runs.
  The ``bronze_log`` and ``examples`` asset events are emitted by the gates, not by the jobs that
  write the tables, so a consumer (``infnet_training``) is only triggered by a partition that
  passed its gate.
"""
from __future__ import annotations

import sys
from pathlib import Path

from airflow.sdk import DAG, CronDataIntervalTimetable, Param, chain

# The repo root on sys.path (appended: never shadows Airflow) makes `airflow_dags.common` importable
# however the file is loaded (DAG processor, `airflow dags list --local`, tests).
if (_repo := str(Path(__file__).resolve().parents[1])) not in sys.path:
    sys.path.append(_repo)
from airflow_dags.common import (  # noqa: E402
    AB_REPORTS,
    BRONZE_LOG,
    CANDIDATES,
    DEFAULT_ARGS,
    EXAMPLES,
    GATE_RETRIES,
    START_DATE,
    score_and_evaluate,
    spark_job,
)
from conf.settings import PromotionSettings  # noqa: E402
from conf.syntax import MODEL_REF_PATTERN  # noqa: E402  (the jobs' own rule: name or name@version)

DAG_ID = "infnet_daily"
DAY = "{{ ds }}"
PROMOTION = PromotionSettings()

with DAG(
    dag_id=DAG_ID,
    description="ingest -> features -> quality gates -> score champion & challenger -> evaluate -> A/B report",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,  # days in order: the gates compare a partition with the previous one
    default_args=DEFAULT_ARGS,
    params={
        "champion": Param(f"infnet@{PROMOTION.champion_alias}", type="string", pattern=MODEL_REF_PATTERN,
                          description="control arm of the A/B report: name, name@version or name@alias"),
        "challenger": Param(f"infnet@{PROMOTION.challenger_alias}", type="string", pattern=MODEL_REF_PATTERN,
                            description="treatment arm of the A/B report: name, name@version or name@alias"),
    },
    tags=["infnet", "spark", "daily"],
    doc_md=__doc__,
) as dag:
    ingest = spark_job("ingest", "ingest", ["--date", DAY])
    gate_bronze = spark_job(
        "quality_gate_bronze_log", "quality_gate", ["--table", "bronze_log", "--date", DAY],
        outlets=[BRONZE_LOG], event_extra={"date": DAY}, retries=GATE_RETRIES,
    )
    build_features = spark_job("build_features", "build_features", ["--date", DAY])
    gate_examples = spark_job(
        "quality_gate_examples", "quality_gate", ["--table", "examples", "--date", DAY],
        outlets=[EXAMPLES], event_extra={"date": DAY}, retries=GATE_RETRIES,
    )
    build_candidates = spark_job(
        "build_candidates", "build_candidates", ["--date", DAY],
        outlets=[CANDIDATES], event_extra={"date": DAY},
    )
    evaluations = []
    for arm in ("champion", "challenger"):
        model = "{{ params.%s }}" % arm
        score, evaluate = score_and_evaluate(arm, model, DAY, {"date": DAY})
        chain([gate_examples, build_candidates], score)
        evaluations.append(evaluate)
    ab_report = spark_job(
        "ab_report", "ab_report",
        ["--control", "{{ params.champion }}", "--treatment", "{{ params.challenger }}", "--dates", DAY],
        outlets=[AB_REPORTS], event_extra={"date": DAY},
    )

    chain(ingest, gate_bronze, build_features, gate_examples)
    gate_bronze >> build_candidates
    evaluations >> ab_report
