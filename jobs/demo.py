"""Run the whole pipeline end to end on the bundled KuaiRand data (what ``make demo`` does).

ingest -> quality gate (bronze) -> build_features -> quality gate (examples) -> train INFNet and
MMoE on the first days -> build the logged candidates of the held-back days -> score them with
both models -> evaluate both -> retrieval candidates for the last day (a deterministic sample of
``--rank-users`` users active the day before, 200 candidates each; ``--all-users`` for all) ->
score them with both models -> rank (top 50 per user, replay list metrics of INFNet, MMoE, the
retrieval order and popularity) -> A/B report (control MMoE, treatment INFNet: impressions and
lists) -> promote (``infnet promote``: the arm that wins the report on the primary metric without
losing a guard takes its name's ``@champion`` alias in MLflow's Model Registry; each trained version
already holds ``@challenger``). Every step is the same job a user runs by hand or Airflow schedules,
called in one process so the Spark session is reused.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

from conf.syntax import parse_dates
from jobs.common import base_parser

log = logging.getLogger("infnet.demo")


@dataclass(frozen=True)
class DemoPlan:
    """The date split of the bundled data (INFNet.md "The bar on our own data")."""

    all_dates: str = "2022-04-25..2022-05-04"
    train_dates: str = "2022-04-25..2022-05-01"
    valid_dates: str = "2022-05-02"
    test_dates: str = "2022-05-03..2022-05-04"
    control: str = "mmoe"
    treatment: str = "infnet"
    rank_date: str = "2022-05-04"  # ranked from retrieval candidates, judged on its logs
    rank_users: int = 2_000


def build_parser():
    from evaluation.ab import ABConfig

    parser = base_parser("demo", __doc__.splitlines()[0])
    for source in ("log", "users", "videos", "history"):
        parser.add_argument(f"--{source}", help=f"raw {source} file for ingest (default: the bundled KuaiRand copy)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per model (default: train's)")
    parser.add_argument("--train-flag", action="append", default=[], metavar="FLAG",
                        help="extra flag passed to every train step, e.g. --train-flag=--batch-size=512")
    parser.add_argument("--n-boot", type=int, default=ABConfig().n_boot,
                        help=f"bootstrap resamples of the A/B report (default {ABConfig().n_boot})")
    parser.add_argument("--rank-users", type=int, default=DemoPlan.rank_users,
                        help=f"users ranked from retrieval candidates on the last day (default {DemoPlan.rank_users})")
    parser.add_argument("--all-users", action="store_true",
                        help="rank every user active the day before the last day (overrides --rank-users)")
    return parser


def steps(args, plan: DemoPlan) -> list[tuple[str, list[str]]]:
    common = ["--lake", args.lake] if args.lake else []
    if args.master:
        common += ["--master", args.master]
    ingest = ["--dates", plan.all_dates]
    for source in ("log", "users", "videos", "history"):
        if getattr(args, source):
            ingest += [f"--{source}", getattr(args, source)]
    train_common = ["--train-dates", plan.train_dates, "--valid-dates", plan.valid_dates,
                    "--test-dates", plan.test_dates, "--no-progress", *args.train_flag]
    if args.epochs:
        train_common += ["--epochs", str(args.epochs)]
    out: list[tuple[str, list[str]]] = [
        ("ingest", ingest),
        ("quality_gate", ["--table", "bronze_log", "--dates", plan.all_dates]),
        ("build_features", ["--dates", plan.all_dates]),
        ("quality_gate", ["--table", "examples", "--dates", plan.all_dates]),
    ]
    for model in (plan.control, plan.treatment):
        out.append(("train", ["--model", model, *train_common]))
    both = f"{plan.control},{plan.treatment}"  # scored on features computed once
    out.append(("build_candidates", ["--dates", plan.test_dates]))
    out.append(("score", ["--model", both, "--dates", plan.test_dates, "--source", "logged"]))
    for model in (plan.control, plan.treatment):
        out.append(("evaluate", ["--model", model, "--dates", plan.test_dates]))
    sample = [] if args.all_users else ["--max-users", str(args.rank_users)]
    out.append(("build_candidates", ["--source", "retrieval", "--date", plan.rank_date, *sample]))
    out.append(("score", ["--model", both, "--date", plan.rank_date, "--source", "retrieval"]))
    out.append(("rank", ["--model", both, "--date", plan.rank_date]))
    out.append(("ab_report", ["--control", plan.control, "--treatment", plan.treatment,
                              "--dates", plan.test_dates, "--n-boot", str(args.n_boot)]))
    return [(job, flags + common) for job, flags in out]


def run_demo(argv=None, plan: DemoPlan = DemoPlan()) -> int:
    import importlib

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parse_dates(plan.all_dates)  # validates the plan
    started = time.time()
    for job, flags in steps(args, plan):
        t0 = time.time()
        rc = importlib.import_module(f"jobs.{job}").main(flags)
        if rc != 0:
            print(f"demo: step `infnet {job}` failed (exit {rc}); stopping", file=sys.stderr)
            return rc
        log.info("demo step done in %.0f s: infnet %s %s", time.time() - t0, job, " ".join(flags))
    promote_the_winner(args, plan)
    print_list_summary(args, plan)
    log.info("demo finished in %.0f s", time.time() - started)
    return 0


def promote_the_winner(args, plan: DemoPlan) -> None:
    """The promotion step: ``infnet promote --alias champion`` for the treatment, else the control,
    on the demo's A/B report; when neither wins, no alias moves and the demo says why."""
    from conf.syntax import ModelRef
    from evaluation.ab import report_id_for
    from evaluation.promotion import PromotionError
    from jobs.common import settings_from_args
    from jobs.promote import build_parser as promote_parser
    from jobs.promote import promote
    from model.store import ModelStore

    settings = settings_from_args(args)
    store = ModelStore.of(settings)
    control, treatment = (store.pin(ModelRef(m)) for m in (plan.control, plan.treatment))
    report = report_id_for(str(control), str(treatment), parse_dates(plan.test_dates))
    reasons = []
    for candidate in (treatment, control):
        flags = promote_parser().parse_args(["--candidate", str(candidate), "--report", report])
        try:
            print(f"demo: promote: {promote(settings, flags)}")
            return
        except PromotionError as err:
            reasons.append(str(err))
    print(f"demo: promote: no alias moved ({'; '.join(reasons)})")


def print_list_summary(args, plan: DemoPlan, k: int = 50) -> None:
    """The ranked lists of the last day side by side: INFNet, MMoE, retrieval order, popularity."""
    from conf.lake import read_table
    from conf.spark import get_spark
    from conf.syntax import ModelRef
    from conf.tables import METRICS
    from evaluation.lists import BASELINE_VERSION, BASELINES, format_list_metrics, replay_rows
    from jobs.common import settings_from_args
    from model.store import ModelStore

    settings = settings_from_args(args)
    orders = [ModelStore.of(settings).pin(ModelRef(m)) for m in (plan.treatment, plan.control)]
    orders += [ModelRef(b, BASELINE_VERSION) for b in BASELINES]
    rows = replay_rows(read_table(get_spark(settings), settings, METRICS), plan.rank_date, orders, k)
    if len(rows):
        print(f"\nranked lists on {plan.rank_date}, replayed on its logs:\n{format_list_metrics(rows, k)}")


def main(argv=None) -> int:
    return run_demo(argv)


if __name__ == "__main__":
    sys.exit(main())
