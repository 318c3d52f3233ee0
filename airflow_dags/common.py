"""What the infnet Airflow DAGs share: paths, the Spark connection, retries, Assets, the job operator.

Airflow runs in its own venv (``.venv-airflow``, made by ``scripts/setup_airflow.sh``) because the
Spark provider pulls ``pyspark-client``, which overwrites pyspark's files and breaks pandas UDFs
(``docs/PITFALLS.md``). The DAGs therefore never import pyspark: every task runs one of
the project's jobs (``jobs/<name>.py``) in a separate process through ``SparkSubmitOperator``.

**Where jobs run.** The operator calls the project's wrapper ``scripts/spark-submit`` (absolute
path, so no PATH set-up is needed), which runs the job with the project's ``.venv`` and Spark config
(Delta, catalog, jars). The Spark *master* comes from the Airflow connection ``spark_default``
(``local[*]`` in the embedded default): the hook appends ``--master <connection>`` after the
wrapper's own default, and the last ``--master`` wins. Moving to a cluster means changing that
connection, e.g. ``airflow connections add spark_default --conn-type spark --conn-host yarn
--conn-extra '{"deploy-mode": "client"}'`` or host ``spark://master:7077`` / ``k8s://https://...``,
plus a shared metastore instead of the embedded Derby one (``INFNET_METASTORE_URL``; see ``POOL``). ``INFNET_SPARK_SUBMIT``
replaces the wrapper (e.g. ``spark-submit`` from PATH on a cluster edge node).

**Failures.** Every task retries with exponential backoff, except when the job itself says the
input is wrong: jobs exit 2 on an expected failure (``jobs.common.JobError``: a failed quality
gate, a missing partition, a bad flag), and retrying the same data cannot help, so exit 2 fails the
task at once (:class:`InfnetSparkSubmitOperator`). Default trigger rules then stop everything
downstream.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

REPO_ROOT = Path(os.environ.get("INFNET_REPO") or Path(__file__).resolve().parents[1])
# conf.settings is standard-library only, so the Airflow venv can read the lake layout and its
# defaults ($INFNET_LAKE, <repo>/lake) from the one definition. Appended: never shadows Airflow.
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))
from conf import tables  # noqa: E402
from conf.settings import Settings  # noqa: E402

SETTINGS = Settings()
SPARK_CONN_ID = "spark_default"
SPARK_SUBMIT = os.environ.get("INFNET_SPARK_SUBMIT") or str(REPO_ROOT / "scripts" / "spark-submit")

# Every Spark task of every infnet DAG shares this pool; its size is a setting
# (conf.settings.Settings.pool_slots, $INFNET_POOL_SLOTS) that scripts/setup_airflow.sh applies:
# 1 with the embedded Derby catalog, which admits ONE JVM at a time ("XSDB6: Another instance of
# Derby may have already booted the database"), so branches that look parallel (champion /
# challenger) run one after the other; 2 by default with a shared metastore (INFNET_METASTORE_URL);
# 1 again on an s3a:// lake, where Delta's default log store allows one writer per table and both
# score branches write `scores`. No DAG change is needed to move between them.
POOL = "spark_embedded"
POOL_SLOTS = SETTINGS.pool_slots

# Data interval [day, day + 1): a run fires after its day is over and `{{ ds }}` is that day.
START_DATE = dt.datetime(2022, 4, 25, tzinfo=dt.timezone.utc)  # first day of the bundled demo log

# Exit status of a job for an expected failure (jobs.common.run_job, and argparse for bad flags).
JOB_REFUSED_EXIT_CODE = 2

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "infnet",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,  # 2 min, 4 min, ... (Airflow 3.3: a multiplier, 0 = constant)
    "max_retry_delay": dt.timedelta(minutes=30),
    "execution_timeout": dt.timedelta(hours=3),
    "pool": POOL,
}

# A gate re-reads the same data and reaches the same verdict: no retries.
GATE_RETRIES = 0


# ------------------------------------------------------------------------------------------------
# Assets: one per Delta table a task publishes. The URI is the table's storage location as the
# jobs write it (conf.settings.LakeSettings.table_path), so the identity follows the lake
# ($INFNET_LAKE); the name is the catalog name (infnet.<table>) shown in the UI.
# ------------------------------------------------------------------------------------------------


def storage_uri(path: str) -> str:
    """A lake path as a URI: local folders become ``file://`` URIs, other URIs stay as they are.

    >>> storage_uri("/data/lake/tables/scores")
    'file:///data/lake/tables/scores'
    >>> storage_uri("s3a://bucket/lake/tables/scores")
    's3a://bucket/lake/tables/scores'
    """
    if "://" in path:
        return path
    return Path(path.removeprefix("file:")).resolve().as_uri()


def table_asset(table: str, settings: Settings = SETTINGS) -> Asset:
    """The Asset of one Delta table of the lake."""
    return Asset(
        name=f"{settings.lake.database}.{table}",
        uri=storage_uri(settings.lake.table_path(table)),
        group="delta",
        extra={"format": "delta", "table": f"{settings.lake.database}.{table}"},
    )


def model_store_asset(settings: Settings = SETTINGS) -> Asset:
    """The model store (``<lake>/models``): a train task adds a version under ``<name>/``."""
    return Asset(
        name=f"{settings.lake.database}.models",
        uri=storage_uri(settings.lake.model_store),
        group="model",
        extra={"format": "model-store"},
    )


# The tables the DAGs produce or read, named by conf/tables.py (which imports no pyspark).
BRONZE_LOG = table_asset(tables.BRONZE_LOG.name)
EXAMPLES = table_asset(tables.EXAMPLES.name)
CANDIDATES = table_asset(tables.CANDIDATES.name)
SCORES = table_asset(tables.SCORES.name)
METRICS = table_asset(tables.METRICS.name)
AB_REPORTS = table_asset(tables.AB_REPORTS.name)
MODELS = model_store_asset()


# ------------------------------------------------------------------------------------------------
# The operator
# ------------------------------------------------------------------------------------------------


def job_exit_code(error: BaseException, hook: Any = None) -> int | None:
    """The exit status of the failed spark-submit, from the hook's process or its error message.

    >>> job_exit_code(RuntimeError("Cannot execute: spark-submit jobs/x.py. Error code is: 2."))
    2
    >>> job_exit_code(RuntimeError("connection refused")) is None
    True
    """
    process = getattr(hook, "_submit_sp", None)
    code = getattr(process, "returncode", None)
    if isinstance(code, int):
        return code
    match = re.search(r"Error code is: (-?\d+)", str(error))
    return int(match.group(1)) if match else None


class InfnetSparkSubmitOperator(SparkSubmitOperator):
    """``SparkSubmitOperator`` for the project's jobs, with two additions:

    - a job that exits 2 (it refused its input: failed gate, missing partition, bad flag) fails the
      task without retries, since rerunning on the same data gives the same answer; any other
      failure (a JVM crash, a lost executor, a bug) keeps the retries with backoff;
    - ``event_extra`` (templated) is attached to the asset events of the task's outlets, so that a
      consumer knows which partition was published (e.g. ``{"date": "{{ ds }}"}``);
    - ``skip_on_refusal``: a refusal (exit 2) skips the task instead of failing it, for a job whose
      refusal is an answer, not an error (``promote``: the evidence does not let the candidate
      take the alias; the log says why).
    """

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "event_extra")

    def __init__(self, *, event_extra: Mapping[str, Any] | None = None, skip_on_refusal: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.event_extra = dict(event_extra or {})
        self.skip_on_refusal = skip_on_refusal

    def execute(self, context: Any) -> None:
        try:
            super().execute(context)
        except AirflowFailException:
            raise
        except AirflowException as err:
            refused = job_exit_code(err, getattr(self, "_hook", None)) == JOB_REFUSED_EXIT_CODE
            if refused and self.skip_on_refusal:
                raise AirflowSkipException(f"{self.task_id}: the job declined (exit {JOB_REFUSED_EXIT_CODE}); "
                                           "its reason is in the log above") from err
            if refused:
                raise AirflowFailException(
                    f"{self.task_id}: the job refused its input (exit {JOB_REFUSED_EXIT_CODE}); not "
                    "retrying, since the same data gives the same answer. Its message is in the log "
                    f"above. {err}"
                ) from err
            raise
        if self.event_extra and self.outlets:
            for outlet in self.outlets:
                context["outlet_events"][outlet].extra.update(self.event_extra)


def spark_job(
    task_id: str,
    job: str,
    args: Sequence[str],
    *,
    outlets: Sequence[Asset] = (),
    event_extra: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> InfnetSparkSubmitOperator:
    """One task that runs ``jobs/<job>.py <args>`` through the project's spark-submit wrapper.

    ``args`` are the job's own flags (templated: ``{{ ds }}``, ``{{ params.x }}``); ``kwargs`` go
    to the operator (``retries``, ``trigger_rule``, ...). The task is in :data:`POOL`.
    """
    application = REPO_ROOT / "jobs" / f"{job}.py"
    return InfnetSparkSubmitOperator(
        task_id=task_id,
        conn_id=SPARK_CONN_ID,
        spark_binary=SPARK_SUBMIT,
        application=str(application),
        application_args=list(args),
        name=f"infnet-{task_id}",
        outlets=list(outlets),
        event_extra=event_extra,
        # A retry must run the job again: the jobs replace their slice, so reruns are idempotent.
        durable=False,
        **kwargs,
    )


def score_and_evaluate(
    suffix: str, model: str, dates: str, event_extra: Mapping[str, Any]
) -> tuple[InfnetSparkSubmitOperator, InfnetSparkSubmitOperator]:
    """``score_<suffix>`` -> ``evaluate_<suffix>`` of ``model`` on ``dates``: the pair both DAGs run.

    Returns (score, evaluate), already chained; the caller wires what comes before and after.
    """
    score = spark_job(
        f"score_{suffix}", "score", ["--model", model, "--date", dates],
        outlets=[SCORES], event_extra={**event_extra, "model": model},
    )
    evaluate = spark_job(
        f"evaluate_{suffix}", "evaluate", ["--model", model, "--date", dates],
        outlets=[METRICS], event_extra={**event_extra, "model": model},
    )
    score >> evaluate
    return score, evaluate


# ------------------------------------------------------------------------------------------------
# Dates
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DateWindow:
    """Train and validation day ranges in the jobs' ``a..b`` form (conf.syntax.parse_dates)."""

    train: str
    valid: str


def date_range(end: dt.date, first_offset: int, last_offset: int) -> str:
    """``end + first_offset .. end + last_offset`` in days.

    >>> date_range(dt.date(2022, 5, 4), -8, -2)
    '2022-04-26..2022-05-02'
    """
    first, last = (end + dt.timedelta(days=o) for o in (first_offset, last_offset))
    return f"{first.isoformat()}..{last.isoformat()}"


def _event_dates(triggering_asset_events: Any) -> list[str]:
    dates: list[str] = []
    values = triggering_asset_events.values() if hasattr(triggering_asset_events, "values") else []
    for events in values:
        for event in events or ():
            date = (getattr(event, "extra", None) or {}).get("date")
            if date:
                dates.append(str(date))
    return dates


def window_end(params: Mapping[str, Any], dag_run: Any, triggering_asset_events: Any = None) -> dt.date:
    """The last day a training run may use: ``params.end_date`` if set, else the newest partition
    date carried by the asset events that triggered the run, else the run's logical date (or, for
    runs without one, the day the run was queued).

    >>> window_end({"end_date": "2022-05-04"}, None).isoformat()
    '2022-05-04'
    """
    if params.get("end_date"):
        return dt.date.fromisoformat(str(params["end_date"]))
    dates = _event_dates(triggering_asset_events)
    if dates:
        return dt.date.fromisoformat(max(dates))
    when = getattr(dag_run, "logical_date", None) or dag_run.run_after
    return when.date()


def training_window(params: Mapping[str, Any], dag_run: Any, triggering_asset_events: Any = None) -> DateWindow:
    """Validation = the last ``valid_days`` days up to :func:`window_end`; training = the
    ``train_days`` days before them (no overlap: validation never sees a training day).

    >>> w = training_window({"end_date": "2022-05-04", "train_days": 7, "valid_days": 2}, None)
    >>> (w.train, w.valid)
    ('2022-04-26..2022-05-02', '2022-05-03..2022-05-04')
    """
    end = window_end(params, dag_run, triggering_asset_events)
    valid_days, train_days = int(params["valid_days"]), int(params["train_days"])
    return DateWindow(
        train=date_range(end, -(valid_days + train_days) + 1, -valid_days),
        valid=date_range(end, -valid_days + 1, 0),
    )


# Jinja macros the DAGs register (user_defined_macros) so templates can call them.
MACROS = {"training_window": training_window}
