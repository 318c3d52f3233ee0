"""The infnet DAGs: they import, their graphs, schedules, retries, pools, templated dates and Assets.

Runs only under the Airflow venv (``.venv-airflow/bin/python -m pytest tests/airflow_dags``): the
project's ``.venv`` has no Airflow, and this module skips there. Nothing here needs the metadata
database, except the end-to-end ``dag.test()`` run, which also needs the jobs and the project's
``.venv`` (``make setup``); it runs by default (as in CI) on a user sample of the bundled data, and
``INFNET_AIRFLOW_E2E=0`` skips it for a quick local pass.
"""
from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from raw_sample import landing_zone

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "airflow_dags"
# Airflow reads its home at import: keep it inside the checkout, never ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".airflow"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

pytest.importorskip("airflow")
pytestmark = pytest.mark.airflow

from airflow.dag_processing.dagbag import DagBag  # noqa: E402
from airflow.sdk.exceptions import AirflowException, AirflowFailException  # noqa: E402

from airflow_dags import common  # noqa: E402  (the DAG files put the repo root on sys.path too)

DAILY = "infnet_daily"
TRAINING = "infnet_training"


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS_FOLDER))


@pytest.fixture(scope="module")
def daily(dagbag):
    return dagbag.dags[DAILY]


@pytest.fixture(scope="module")
def training(dagbag):
    return dagbag.dags[TRAINING]


def edges(dag) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def render(dag, task_id: str, context: dict) -> list[str]:
    task = dag.get_task(task_id)
    return task.render_template(task.application_args, context, jinja_env=dag.get_template_env())


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# ---------------------------------------------------------------------------------------- import


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == {DAILY, TRAINING}


def test_helper_modules_are_not_parsed_as_dag_files():
    ignored = (DAGS_FOLDER / ".airflowignore").read_text().split()
    assert r"common\.py" in ignored


def test_dags_survive_serialization(daily, training):
    """What the scheduler stores: a custom operator or timetable it cannot serialize fails here."""
    from airflow.serialization.serialized_objects import DagSerialization

    for dag in (daily, training):
        restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        assert set(restored.task_ids) == set(dag.task_ids)


# ---------------------------------------------------------------------------------------- daily


def test_daily_graph(daily):
    assert set(daily.task_ids) == {
        "ingest", "quality_gate_bronze_log", "build_features", "quality_gate_examples",
        "build_candidates", "score_champion", "score_challenger", "evaluate_champion",
        "evaluate_challenger", "ab_report",
    }
    assert edges(daily) == {
        ("ingest", "quality_gate_bronze_log"),
        ("quality_gate_bronze_log", "build_features"),
        ("quality_gate_bronze_log", "build_candidates"),
        ("build_features", "quality_gate_examples"),
        ("quality_gate_examples", "score_champion"),
        ("quality_gate_examples", "score_challenger"),
        ("build_candidates", "score_champion"),
        ("build_candidates", "score_challenger"),
        ("score_champion", "evaluate_champion"),
        ("score_challenger", "evaluate_challenger"),
        ("evaluate_champion", "ab_report"),
        ("evaluate_challenger", "ab_report"),
    }


def test_a_failed_gate_stops_everything_after_it(daily):
    """Default trigger rules: nothing downstream of a gate runs unless the gate succeeded."""
    for gate in ("quality_gate_bronze_log", "quality_gate_examples"):
        downstream = daily.get_task(gate).get_flat_relative_ids(upstream=False)
        assert "ab_report" in downstream and "score_champion" in downstream
        for task_id in downstream:
            assert daily.get_task(task_id).trigger_rule == "all_success", task_id


def test_daily_schedule_is_one_data_interval_per_day(daily):
    from airflow.sdk import CronDataIntervalTimetable

    assert isinstance(daily.timetable, CronDataIntervalTimetable)
    assert daily.timetable.expression == "0 0 * * *"
    assert daily.catchup is False and daily.max_active_runs == 1
    assert daily.start_date == common.START_DATE


def test_ds_flows_into_every_job_date(daily):
    context = {"ds": "2022-05-03", "params": {"champion": "mmoe@2", "challenger": "infnet"}}
    for task in daily.tasks:
        args = task.application_args
        assert "{{ ds }}" in args, task.task_id
        rendered = render(daily, task.task_id, context)
        date_flag = "--dates" if task.task_id == "ab_report" else "--date"
        assert flag(rendered, date_flag) == "2022-05-03", task.task_id
    assert flag(render(daily, "score_champion", context), "--model") == "mmoe@2"
    assert flag(render(daily, "evaluate_challenger", context), "--model") == "infnet"
    ab_args = render(daily, "ab_report", context)
    assert (flag(ab_args, "--control"), flag(ab_args, "--treatment")) == ("mmoe@2", "infnet")


def test_champion_and_challenger_are_params_with_registry_alias_defaults(daily):
    params = daily.params.dump()
    assert params == {"champion": "infnet@champion", "challenger": "infnet@challenger"}


def test_a_model_reference_param_rejects_garbage(daily):
    from airflow.sdk import Param

    from airflow.sdk.exceptions import ParamValidationError

    spec = daily.params.get_param("challenger")
    assert Param(spec.value, **spec.schema).resolve("infnet@20220504") == "infnet@20220504"
    with pytest.raises(ParamValidationError, match=r"'infnet; rm -rf /' does not match"):
        Param(spec.value, **spec.schema).resolve("infnet; rm -rf /")


# ---------------------------------------------------------------------------------------- training


def test_training_graph(training):
    per_name = ("train_{}", "first_champion_{}", "score_valid_{}", "evaluate_valid_{}", "score_valid_champion_{}",
                "evaluate_valid_champion_{}", "ab_report_valid_{}", "promote_{}")
    assert set(training.task_ids) == {"build_candidates_valid"} | {t.format(n) for n in ("infnet", "mmoe") for t in per_name}
    expected = set()
    for n in ("infnet", "mmoe"):
        expected |= {("train_" + n, "first_champion_" + n), ("ab_report_valid_" + n, "promote_" + n)}
        for arm in (f"valid_{n}", f"valid_champion_{n}"):
            expected |= {("first_champion_" + n, "score_" + arm), ("build_candidates_valid", "score_" + arm),
                         ("score_" + arm, "evaluate_" + arm), ("evaluate_" + arm, "ab_report_valid_" + n)}
    assert edges(training) == expected


def test_training_compares_the_challenger_with_the_champion_and_promotes_on_that_report(training):
    context = {
        "params": {"end_date": "2022-05-04", "train_days": 7, "valid_days": 2},
        "dag_run": SimpleNamespace(logical_date=None, run_after=dt.datetime(2026, 1, 1)),
        "triggering_asset_events": {},
    }
    assert flag(render(training, "score_valid_infnet", context), "--model") == "infnet@challenger"
    assert flag(render(training, "score_valid_champion_infnet", context), "--model") == "infnet@champion"
    report = render(training, "ab_report_valid_infnet", context)
    assert (flag(report, "--control"), flag(report, "--treatment")) == ("infnet@champion", "infnet@challenger")
    promote = render(training, "promote_infnet", context)
    assert (flag(promote, "--candidate"), flag(promote, "--against"), flag(promote, "--dates")) == (
        "infnet@challenger", "infnet@champion", flag(report, "--dates"))
    assert "--if-absent" in render(training, "first_champion_mmoe", context)
    assert training.get_task("promote_infnet").skip_on_refusal
    assert not training.get_task("first_champion_infnet").skip_on_refusal


def test_training_runs_weekly_or_when_examples_pass_their_gate(training):
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    schedule = training.timetable
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert isinstance(schedule.timetable, CronTriggerTimetable)
    assert schedule.timetable.expression == "0 3 * * 1"
    assert list(schedule.asset_condition.objects) == [common.EXAMPLES]


def test_training_dates_from_params(training):
    context = {
        "params": {"end_date": "2022-05-04", "train_days": 7, "valid_days": 2},
        "dag_run": SimpleNamespace(logical_date=None, run_after=dt.datetime(2026, 1, 1)),
        "triggering_asset_events": {},
    }
    args = render(training, "train_infnet", context)
    assert flag(args, "--model") == "infnet"
    assert flag(args, "--train-dates") == "2022-04-26..2022-05-02"
    assert flag(args, "--valid-dates") == "2022-05-03..2022-05-04"
    for task_id in ("build_candidates_valid", "score_valid_mmoe", "evaluate_valid_mmoe"):
        assert flag(render(training, task_id, context), "--date") == "2022-05-03..2022-05-04"


def test_training_window_follows_the_triggering_partition_else_the_run_date():
    params = {"end_date": "", "train_days": 3, "valid_days": 1}
    events = {common.EXAMPLES: [SimpleNamespace(extra={"date": "2022-05-01"}),
                                SimpleNamespace(extra={"date": "2022-05-02"})]}
    run = SimpleNamespace(logical_date=None, run_after=dt.datetime(2026, 3, 9, 3, tzinfo=dt.timezone.utc))
    by_event = common.training_window(params, run, events)
    assert (by_event.train, by_event.valid) == ("2022-04-29..2022-05-01", "2022-05-02..2022-05-02")
    by_time = common.training_window(params, run, {})
    assert by_time.valid == "2026-03-09..2026-03-09"


# ---------------------------------------------------------------------------------------- every task


@pytest.mark.parametrize("dag_id", [DAILY, TRAINING])
def test_every_task_runs_a_job_through_the_project_wrapper(dagbag, dag_id):
    from jobs.cli import JOBS  # standard library only

    for task in dagbag.dags[dag_id].tasks:
        assert isinstance(task, common.InfnetSparkSubmitOperator), task.task_id
        assert task._conn_id == "spark_default"
        app = Path(task.application)
        assert app.parent == REPO / "jobs" and app.stem in JOBS, task.task_id
        assert task._spark_binary == str(REPO / "scripts" / "spark-submit")


PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"
PARSE_ARGS = """
import importlib, json, sys
failures = {}
for task_id, job, args in json.load(sys.stdin):
    try:
        importlib.import_module(f"jobs.{job}").build_parser().parse_args(args)
    except SystemExit as exit:
        failures[task_id] = f"exit {exit.code}: jobs/{job}.py {' '.join(args)}"
print(json.dumps(failures))
"""


@pytest.mark.skipif(not PROJECT_PYTHON.exists(), reason="needs the project's .venv (make setup)")
def test_every_rendered_command_line_is_accepted_by_its_job(daily, training):
    """The flags the DAGs pass are the flags the jobs define: each task's rendered arguments go
    through its job's own argparse parser, in the project's venv (the jobs import pyspark)."""
    import json
    import subprocess

    daily_ctx = {"ds": "2022-05-03", "params": daily.params.dump()}
    training_ctx = {
        "params": {**training.params.dump(), "end_date": "2022-05-04"},
        "dag_run": SimpleNamespace(logical_date=None, run_after=None), "triggering_asset_events": {},
    }
    calls = [
        (f"{dag.dag_id}.{t.task_id}", Path(t.application).stem, render(dag, t.task_id, ctx))
        for dag, ctx in ((daily, daily_ctx), (training, training_ctx)) for t in dag.tasks
    ]
    out = subprocess.run(
        [str(PROJECT_PYTHON), "-c", PARSE_ARGS], input=json.dumps(calls), cwd=REPO,
        capture_output=True, text=True, check=True,
    )
    refused = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert refused == KNOWN_BARE_NAME_REFUSALS, out.stderr[-2000:]


# Every rendered command line must parse: evaluate/ab_report resolve a bare NAME to the newest version.
KNOWN_BARE_NAME_REFUSALS: set[str] = set()


def test_the_wrapper_is_executable():
    assert os.stat(common.SPARK_SUBMIT).st_mode & stat.S_IXUSR


@pytest.mark.parametrize("dag_id", [DAILY, TRAINING])
def test_every_task_retries_with_backoff_in_the_one_slot_pool(dagbag, dag_id):
    for task in dagbag.dags[dag_id].tasks:
        assert task.pool == "spark_embedded", task.task_id
        assert task.pool_slots == 1
        if task.task_id.startswith("quality_gate"):
            assert task.retries == 0, task.task_id  # a gate gives the same verdict on the same data
        else:
            assert task.retries >= 2, task.task_id
            assert task.retry_exponential_backoff == 2.0
            assert task.max_retry_delay == dt.timedelta(minutes=30)


def test_the_pool_size_is_the_setting_and_setup_applies_it():
    from conf.settings import Settings

    assert common.POOL_SLOTS == Settings().pool_slots
    setup = (REPO / "scripts" / "setup_airflow.sh").read_text()
    assert "-m conf.settings pool_slots" in setup and 'pools set spark_embedded "$SLOTS"' in setup


def test_setup_sets_the_pool_from_the_settings(tmp_path):
    """scripts/setup_airflow.sh's pool step with a shared metastore: two slots (Derby: one)."""
    env = {**os.environ, "INFNET_METASTORE_URL": "jdbc:postgresql://127.0.0.1:55432/metastore"}
    env.pop("INFNET_POOL_SLOTS", None)
    env.pop("INFNET_LAKE", None)
    out = subprocess.run([str(REPO / ".venv-airflow" / "bin" / "python"), "-m", "conf.settings", "pool_slots"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr
    bad = subprocess.run([str(REPO / ".venv-airflow" / "bin" / "python"), "-m", "conf.settings", "pool_slots"],
                         cwd=REPO, env={**env, "INFNET_METASTORE_URL": "", "INFNET_POOL_SLOTS": "3"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "INFNET_POOL_SLOTS=3 needs a shared metastore" in bad.stderr


def test_the_connection_chooses_the_master_after_the_wrapper(monkeypatch):
    """The hook puts the connection's ``--master`` on the wrapper's command line; spark-submit keeps
    the last ``--master``, so the connection beats the wrapper's local[*] default."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "spark://head:7077", "extra": {}}'
    )
    hook = SparkSubmitHook(conn_id=common.SPARK_CONN_ID, spark_binary=common.SPARK_SUBMIT,
                           application_args=["--date", "2022-05-03"])
    cmd = hook._build_spark_submit_command(str(REPO / "jobs" / "ingest.py"))
    assert cmd[0] == common.SPARK_SUBMIT
    assert cmd[cmd.index("--master") + 1] == "spark://head:7077"
    assert cmd[-3:] == [str(REPO / "jobs" / "ingest.py"), "--date", "2022-05-03"]


# ---------------------------------------------------------------------------------------- failures


def _operator_failing_with(monkeypatch, code: int):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    def fail(self, context):
        raise AirflowException(f"Cannot execute: spark-submit jobs/quality_gate.py. Error code is: {code}.")

    monkeypatch.setattr(SparkSubmitOperator, "execute", fail)
    return common.spark_job("gate", "quality_gate", ["--date", "2022-05-03"])


def test_a_job_that_refuses_its_input_fails_without_retries(monkeypatch):
    op = _operator_failing_with(monkeypatch, 2)
    with pytest.raises(AirflowFailException, match="refused its input"):
        op.execute({})


def test_a_declined_promotion_skips_the_task(monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    op = _operator_failing_with(monkeypatch, 2)
    op.skip_on_refusal = True
    with pytest.raises(AirflowSkipException, match="declined"):
        op.execute({})


def test_any_other_job_failure_is_left_to_the_retries(monkeypatch):
    op = _operator_failing_with(monkeypatch, 1)
    with pytest.raises(AirflowException) as err:
        op.execute({})
    assert not isinstance(err.value, AirflowFailException)


def test_job_exit_code_prefers_the_process_status():
    hook = SimpleNamespace(_submit_sp=SimpleNamespace(returncode=137))
    assert common.job_exit_code(RuntimeError("Error code is: 2."), hook) == 137


def test_success_tags_the_asset_events_with_the_partition(monkeypatch):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    monkeypatch.setattr(SparkSubmitOperator, "execute", lambda self, context: None)
    op = common.spark_job("gate", "quality_gate", [], outlets=[common.EXAMPLES], event_extra={"date": "2022-05-03"})
    events = {common.EXAMPLES: SimpleNamespace(extra={})}
    op.execute({"outlet_events": events})
    assert events[common.EXAMPLES].extra == {"date": "2022-05-03"}


# ---------------------------------------------------------------------------------------- assets


def test_outlets_declare_each_published_table(daily, training):
    def outlets(dag):
        return {t.task_id: [a.name for a in t.outlets] for t in dag.tasks if t.outlets}

    assert outlets(daily) == {
        "quality_gate_bronze_log": ["infnet.bronze_log"],  # published once it passed its gate
        "quality_gate_examples": ["infnet.examples"],
        "build_candidates": ["infnet.candidates"],
        "score_champion": ["infnet.scores"], "score_challenger": ["infnet.scores"],
        "evaluate_champion": ["infnet.metrics"], "evaluate_challenger": ["infnet.metrics"],
        "ab_report": ["infnet.ab_reports"],
    }
    assert outlets(training) == {
        "build_candidates_valid": ["infnet.candidates"],
        **{f"train_{n}": ["infnet.models"] for n in ("infnet", "mmoe")},
        **{f"score_{a}_{n}": ["infnet.scores"] for n in ("infnet", "mmoe") for a in ("valid", "valid_champion")},
        **{f"evaluate_{a}_{n}": ["infnet.metrics"] for n in ("infnet", "mmoe") for a in ("valid", "valid_champion")},
        **{f"ab_report_valid_{n}": ["infnet.ab_reports"] for n in ("infnet", "mmoe")},
    }


def test_asset_uris_are_the_tables_storage_locations():
    from conf.settings import Settings

    lake = Settings().lake
    assert common.EXAMPLES.uri == Path(lake.table_path("examples")).resolve().as_uri()
    assert common.MODELS.uri == Path(lake.model_store).resolve().as_uri()
    assert common.storage_uri("s3a://b/lake/tables/x") == "s3a://b/lake/tables/x"


def test_the_dags_read_table_names_from_conf_tables_without_pyspark():
    """conf.tables is importable in the Airflow venv (no pyspark there) and names the assets."""
    from conf import tables
    ours = {a.extra["table"].split(".", 1)[1] for a in (
        common.BRONZE_LOG, common.EXAMPLES, common.CANDIDATES, common.SCORES, common.METRICS,
        common.AB_REPORTS)}
    assert ours == {"bronze_log", "examples", "candidates", "scores", "metrics", "ab_reports"}
    assert ours <= {t.name for t in tables.ALL_TABLES}


# ---------------------------------------------------------------------------------------- end to end

E2E = os.environ.get("INFNET_AIRFLOW_E2E", "1") != "0"
LOCAL_SPARK = '{"conn_type": "spark", "host": "local[2]", "extra": {"deploy-mode": "client"}}'


def _day(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.timezone.utc)


def _retire_stale_assets() -> None:
    """Deactivate our asset names that are active under another URI (a lake used before).

    An asset name can be active with one URI only; the scheduler's orphanage pass retires the old
    ones, but ``dag.test()`` runs no scheduler, so a metadata DB that once saw another lake would
    fail every task with ``AirflowInactiveAssetInInletOrOutletException`` (apache/airflow#51644).
    """
    from airflow.models.asset import AssetActive
    from airflow.utils.session import create_session

    ours = {a.name: a.uri for a in (common.BRONZE_LOG, common.EXAMPLES, common.CANDIDATES, common.SCORES,
                                    common.METRICS, common.AB_REPORTS, common.MODELS)}
    with create_session() as session:
        for row in session.query(AssetActive).filter(AssetActive.name.in_(list(ours))):
            if row.uri != ours[row.name]:
                session.delete(row)


@pytest.mark.e2e
@pytest.mark.skipif(not E2E, reason="INFNET_AIRFLOW_E2E=0")
def test_dag_test_runs_the_pipeline_on_the_demo_data(dagbag, tmp_path, monkeypatch):
    """A fresh lake: two days of logs, a training run on them, then the full daily DAG on day 3.

    ~25 Spark jobs in a row, each a spark-submit (JVM start) as the scheduler would run them.
    """
    from airflow.utils.state import DagRunState

    lake = tmp_path / "lake"
    monkeypatch.setenv("INFNET_LAKE", str(lake))
    monkeypatch.setenv("INFNET_RAW_DIR", str(landing_zone(tmp_path / "landing")))
    monkeypatch.setenv("INFNET_SHUFFLE_PARTITIONS", "2")
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", LOCAL_SPARK)
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")
    _retire_stale_assets()
    daily, training = dagbag.dags[DAILY], dagbag.dags[TRAINING]
    history_days = ["2022-04-25", "2022-04-26"]
    day = "2022-04-27"

    def states(run) -> dict[str, str]:
        return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}

    for d in history_days:  # no model yet: the model tasks are marked successful, not run
        run = daily.test(logical_date=_day(d), mark_success_pattern=r"(score|evaluate|ab_report).*")
        assert run.state == DagRunState.SUCCESS, states(run)
    # The first versions: each name's first champion is its challenger, so the champion arm's
    # scoring and the report (nothing to compare) are marked successful, not run.
    run = training.test(
        logical_date=_day(history_days[-1]),
        run_conf={"end_date": history_days[-1], "train_days": 1, "valid_days": 1},
        mark_success_pattern=r"(score_valid_champion|evaluate_valid_champion|ab_report_valid)_.*",
    )
    assert run.state == DagRunState.SUCCESS, states(run)
    assert {t: s for t, s in states(run).items() if t.startswith(("first_champion", "promote"))} == {
        f"{t}_{n}": "success" for t in ("first_champion", "promote") for n in ("infnet", "mmoe")}
    assert sorted(p.name for p in (lake / "models").iterdir() if not p.name.startswith(".")) == ["infnet", "mmoe"]
    # registry aliases as DAG params: MMoE's champion against INFNet's challenger (version 1 each)
    run = daily.test(logical_date=_day(day), run_conf={"champion": "mmoe@champion"})
    assert run.state == DagRunState.SUCCESS, states(run)
    assert set(states(run).values()) == {"success"}, states(run)

    # The scored rows by name from the persistent catalog, as a user would query them after the run.
    query = (f"SELECT model_name, count(*) AS n FROM scores WHERE date = '{day}' "
             "GROUP BY model_name ORDER BY model_name")
    result = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "jobs.cli", "sql", query],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "infnet" in result.stdout and "mmoe" in result.stdout, result.stdout
    assert list((lake / "reports" / "ab").glob("*/summary.md"))


def test_docstring_examples_run():
    """The DAG helpers' ``>>>`` examples (the main suite's tests/test_doctests.py cannot import Airflow)."""
    import doctest

    result = doctest.testmod(common)
    assert result.attempted > 0 and result.failed == 0
