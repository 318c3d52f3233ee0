"""Rank a date's scored candidates into top-K lists per user (``recommendations``) and replay them.

``infnet rank --model NAME[@VERSION][,NAME...] --date D`` reads each model version's ``scores`` of the date's
candidates of ``--source`` (default retrieval), computes the ranking objective (``--objective``,
default ``click=1,long_view=1,like=1,popularity=2``: the expected number of positive actions given a
showing times the popularity exposure prior, (1 + the video's 7-day clicks)^2; model/ranking.py),
and writes per (date, user) the top ``--k`` (default 50) with rank, every task score, the
objective, the retrieval channel(s) and score, the model version and the feature-table version.
Ties are broken by video_id. A rerun replaces the date's lists of that model version.

Then, unless ``--no-evaluate``, when the log has the date: replay evaluation of the lists against
each user's logged positives (click, long view, like) of the date (evaluation/lists.py): recall,
NDCG and hit rate @K per task and catalog coverage, for the model and for two orders of the same
candidates (``retrieval_order``: the retrieval score; ``popularity``: clicks in the 7 days before the
request time), into ``metrics`` with slice ``list@K`` (model version ``0`` for the two baselines),
the IPS-weighted replay as slice ``ips_list@K``; then each model's lists against each baseline
(paired bootstrap over users, 95 % CI) are printed.

example:  infnet rank --model infnet --date 2022-05-04 --objective click=1,long_view=2,like=5
"""
from __future__ import annotations

import sys

from conf.syntax import parse_model_refs, parse_positive_int
from jobs.common import JobError, add_dates_argument, base_parser, run_job


def build_parser():
    from conf.settings import RankingSettings
    from model.ranking import objective_spec

    rk = RankingSettings()
    parser = base_parser("rank", __doc__)
    parser.add_argument("--model", type=parse_model_refs, required=True,
                        help="NAME@VERSION or NAME@ALIAS of the scored model (NAME alone: the newest version); a comma "
                             "list ranks "
                             "several and replays them side by side")
    add_dates_argument(parser)
    parser.add_argument("--source", choices=("retrieval", "external", "logged"), default="retrieval",
                        help="candidate source whose scores are ranked (default retrieval)")
    parser.add_argument("--k", type=parse_positive_int, default=rk.top_k, help=f"list length (default {rk.top_k})")
    parser.add_argument("--objective", default=objective_spec(rk.objective),
                        help=f"TASK=WEIGHT,... over the task scores, plus retrieval=W for W x the retrieval "
                             f"score; popularity=A multiplies the task terms by (1 + the video's 7-day clicks)^A; "
                             f"exposed*TASK=W,... (or expected_actions) multiplies them by an entire-space "
                             f"model's P(exposed) (default {objective_spec(rk.objective)})")
    parser.add_argument("--no-evaluate", action="store_true", help="write the lists only, no replay metrics")
    return parser


def body(spark, settings, args) -> None:
    from conf.lake import write_table
    from conf.tables import METRICS, RECOMMENDATIONS
    from evaluation.lists import evaluate_lists, format_list_metrics, list_metrics_frame, list_metrics_predicate
    from model.ranking import RankingInputError, objective_spec, parse_objective, ranked_lists
    from model.store import ModelStore

    try:
        weights = parse_objective(args.objective)
    except ValueError as err:
        raise JobError(f"--objective: {err}") from None
    models = [ModelStore.of(settings).pin(m) for m in args.model]
    for date in args.dates:
        for model in models:
            try:
                recs, kept, dropped, n = ranked_lists(spark, settings, model, date, args.source, weights, args.k)
            except RankingInputError as err:
                raise JobError(str(err)) from None
            version = write_table(recs, settings, RECOMMENDATIONS,
                                  {"date": date, "model_name": model.name, "model_version": model.version},
                                  user_metadata={"job": "rank", "objective": objective_spec(weights), "k": args.k},
                                  merge_schema=True)
            n_users = recs.select("user_id").distinct().count()
            print(f"rank {model} {date} ({args.source}): {kept} list entries for {n_users} users from {n} scored "
                  f"candidates, objective {objective_spec(weights)}, k={args.k}"
                  + (f"; {dropped} candidates left out for a null/NaN objective" if dropped else "")
                  + f" (recommendations version {version})")
        if args.no_evaluate:
            continue
        metrics = evaluate_lists(spark, settings, models, date, args.source, args.k)
        if metrics is None:
            print(f"rank: bronze_log has no impressions on {date}: lists not evaluated")
            continue
        write_table(list_metrics_frame(spark, metrics), settings, METRICS, list_metrics_predicate(date, models, args.k),
                    user_metadata={"job": "rank", "models": [str(m) for m in models]})
        text = format_list_metrics(metrics, args.k)
        if text:  # "" when no list rows
            print(text)


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
