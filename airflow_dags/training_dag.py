"""``infnet_training``: retrain the models weekly, or as soon as a new ``examples`` partition passed
its quality gate (data-aware: the ``infnet.examples`` Asset, emitted by ``infnet_daily``).

::

    train_<model> -> first_champion_<model> --+-> score_valid_<model> ----------> evaluate_valid_<model> ----------+
    build_candidates_valid -------------------+-> score_valid_champion_<model> -> evaluate_valid_champion_<model> -+
        -> ab_report_valid_<model> -> promote_<model>

for each model in ``MODELS_TO_TRAIN`` (INFNet and the MMoE baseline). ``train`` registers a new
version of ``<name>`` in MLflow's Model Registry (its artifacts under ``models/<name>/``; the
``infnet.models`` Asset event) and points ``<name>@challenger`` at it. ``first_champion`` gives a
name its first ``@champion`` (``infnet promote --if-absent``: the first version has nothing to be
compared with; later runs leave the alias alone). The challenger and the champion are scored and
evaluated on the validation days (``scores`` / ``metrics`` under their own versions), compared by
``ab_report`` (champion = control), and ``promote`` moves ``<name>@champion`` to the challenger
only if that report shows it winning on the primary metric and losing no guard
(``conf.settings.PromotionSettings``); otherwise the task is *skipped*, not failed, and its log
says why. While the champion is the challenger (a name's first run) the report has nothing to
compare and promotion has nothing to move. The daily DAG scores ``infnet@champion`` against
``infnet@challenger`` by default.

Dates (the jobs' ``a..b`` ranges): validation = the last ``valid_days`` days up to the window end,
training = the ``train_days`` days before them. The window end is ``params.end_date`` if given,
else the newest date carried by the triggering ``examples`` events, else the run's logical date:
``airflow dags trigger infnet_training -c '{"end_date": "2022-05-04"}'`` trains on the bundled
demo days.
"""
from __future__ import annotations

import sys
from pathlib import Path

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, chain

# The repo root on sys.path (appended: never shadows Airflow) makes `airflow_dags.common` importable
# however the file is loaded (DAG processor, `airflow dags list --local`, tests).
if (_repo := str(Path(__file__).resolve().parents[1])) not in sys.path:
    sys.path.append(_repo)
from airflow_dags.common import (  # noqa: E402
    AB_REPORTS,
    CANDIDATES,
    DEFAULT_ARGS,
    EXAMPLES,
    MACROS,
    MODELS,
    START_DATE,
    score_and_evaluate,
    spark_job,
)
from conf.settings import PromotionSettings  # noqa: E402

DAG_ID = "infnet_training"
MODELS_TO_TRAIN = ("infnet", "mmoe")
PROMOTION = PromotionSettings()
WEEKLY = CronTriggerTimetable("0 3 * * 1", timezone="UTC")  # Mondays 03:00 UTC

WINDOW = "training_window(params, dag_run, triggering_asset_events)"
TRAIN_DATES = "{{ %s.train }}" % WINDOW
VALID_DATES = "{{ %s.valid }}" % WINDOW

with DAG(
    dag_id=DAG_ID,
    description="train INFNet and MMoE, compare each with its champion on the validation days, promote on evidence",
    schedule=AssetOrTimeSchedule(timetable=WEEKLY, assets=[EXAMPLES]),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,  # "newest version" must be the one this run trained
    default_args=DEFAULT_ARGS,
    user_defined_macros=MACROS,
    params={
        "end_date": Param("", type="string",
                          description="last day of the window (YYYY-MM-DD); empty: from the trigger"),
        "train_days": Param(7, type="integer", minimum=1, description="training days before validation"),
        "valid_days": Param(2, type="integer", minimum=1, description="validation days at the window end"),
    },
    tags=["infnet", "spark", "training"],
    doc_md=__doc__,
) as dag:
    candidates = spark_job(
        "build_candidates_valid", "build_candidates", ["--date", VALID_DATES],
        outlets=[CANDIDATES], event_extra={"dates": VALID_DATES},
    )
    for name in MODELS_TO_TRAIN:
        challenger, champion = f"{name}@{PROMOTION.challenger_alias}", f"{name}@{PROMOTION.champion_alias}"
        train = spark_job(
            f"train_{name}", "train",
            ["--model", name, "--train-dates", TRAIN_DATES, "--valid-dates", VALID_DATES],
            outlets=[MODELS], event_extra={"model": name, "train_dates": TRAIN_DATES},
        )
        first_champion = spark_job(
            f"first_champion_{name}", "promote",
            ["--candidate", challenger, "--alias", PROMOTION.champion_alias, "--if-absent"],
        )
        arms = []
        for suffix, model in ((f"valid_{name}", challenger), (f"valid_champion_{name}", champion)):
            score, evaluate = score_and_evaluate(suffix, model, VALID_DATES, {"dates": VALID_DATES})
            chain([first_champion, candidates], score)
            arms.append(evaluate)
        ab_report = spark_job(
            f"ab_report_valid_{name}", "ab_report",
            ["--control", champion, "--treatment", challenger, "--dates", VALID_DATES],
            outlets=[AB_REPORTS], event_extra={"dates": VALID_DATES},
        )
        promote = spark_job(
            f"promote_{name}", "promote",
            ["--candidate", challenger, "--alias", PROMOTION.champion_alias, "--against", champion,
             "--dates", VALID_DATES],
            skip_on_refusal=True,
        )
        train >> first_champion
        chain(arms, ab_report, promote)
