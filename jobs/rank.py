"""Rank a date's scored candidates into top-K lists per user (``recommendations``) and replay them.

``infnet rank --model NAME[@VERSION][,NAME...] --date D`` reads each model version's ``scores`` of the date's
candidates of ``--source`` (default retrieval), computes the ranking objective (``--objective``,
default ``click=1,long_view=1,like=1``: the expected number of positive actions; model/ranking.py),
and writes per (date, user) the top ``--k`` (default 50) with rank, every task score, the
objective, the retrieval channel(s) and score, the model version and the feature-table version.
Ties are broken by video_id. A rerun replaces the date's lists of that model version.

Then, unless ``--no-evaluate``, when the log has the date: replay evaluation of the lists against
each user's logged positives (click, long view, like) of the date (evaluation/lists.py): recall,
NDCG and hit rate @K per task and catalog coverage, for the model and for two orders of the same
candidates (``retrieval_order``: the retrieval score; ``popularity``: clicks in the 7 days before the
request time), into ``metrics`` with slice ``list@K`` (model version ``0`` for the two baselines).

example:  infnet rank --model infnet --date 2022-05-04 --objective click=1,long_view=2,like=5
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys

from jobs.common import JobError, add_dates_argument, base_parser, parse_model_ref, pin_model_ref, run_job

log = logging.getLogger("infnet.rank")

BASELINES = ("retrieval_order", "popularity")
BASELINE_VERSION = "0"


def build_parser():
    from conf.settings import RankingSettings
    from model.ranking import objective_spec

    rk = RankingSettings()
    parser = base_parser("rank", __doc__)
    parser.add_argument("--model", type=parse_model_refs, required=True,
                        help="NAME@VERSION of the scored model (NAME alone: the newest version); a comma list ranks "
                             "several and replays them side by side")
    add_dates_argument(parser)
    parser.add_argument("--source", choices=("retrieval", "external", "logged"), default="retrieval",
                        help="candidate source whose scores are ranked (default retrieval)")
    parser.add_argument("--k", type=int, default=rk.top_k, help=f"list length (default {rk.top_k})")
    parser.add_argument("--objective", default=objective_spec(rk.objective),
                        help=f"TASK=WEIGHT,... over the task scores, plus retrieval=W for W x the retrieval "
                             f"score (default {objective_spec(rk.objective)})")
    parser.add_argument("--no-evaluate", action="store_true", help="write the lists only, no replay metrics")
    return parser


def parse_model_refs(value: str):
    """``infnet,mmoe@2`` -> [ModelRef, ...]."""
    refs = [parse_model_ref(v.strip()) for v in value.split(",") if v.strip()]
    if not refs:
        raise argparse.ArgumentTypeError(f"expected NAME[@VERSION][,...], got {value!r}")
    return refs


def ranked_lists(spark, settings, model, date: str, source: str, weights, k: int):
    """The recommendations rows of one date (a DataFrame in RECOMMENDATIONS_SCHEMA order) and the
    count of scored candidates left out for a null / NaN objective."""
    from pyspark.sql import functions as F

    from conf.lake import read_table, table_exists
    from conf.schemas import RECOMMENDATIONS_SCHEMA
    from conf.tables import CANDIDATES, SCORES
    from model.ranking import RETRIEVAL_TERM, objective_column, objective_spec, top_k

    if not table_exists(spark, settings, SCORES):
        raise JobError(f"the scores table does not exist yet: run `infnet score --model {model} --date {date}` first")
    scores = read_table(spark, settings, SCORES).where(
        (F.col("date") == F.lit(date).cast("date")) & (F.col("model_name") == model.name)
        & (F.col("model_version") == model.version))
    if "source" in scores.columns:
        scores = scores.where(F.col("source") == source)
    elif source != "logged":
        scores = scores.limit(0)
    if scores.limit(1).count() == 0:
        raise JobError(f"no scores of {model} for {source} candidates on {date}: run `infnet build_candidates "
                       f"--source {source} --date {date}` and `infnet score --model {model} --source {source} "
                       f"--date {date}` first")
    missing = [t for t, _ in weights if t != RETRIEVAL_TERM and f"score_{t}" not in scores.columns]
    if missing:
        raise JobError(f"--objective names tasks without scores: {missing}")
    meta = (read_table(spark, settings, CANDIDATES)
            .where((F.col("date") == F.lit(date).cast("date")) & (F.col("source") == source))
            .groupBy(F.col("request_id").alias("_m_request"), F.col("video_id").alias("_m_video"))
            .agg(F.first("channels").alias("channels"), F.max("retrieval_score").alias("retrieval_score")))
    rows = scores.join(meta, (F.col("request_id") == F.col("_m_request")) & (F.col("video_id") == F.col("_m_video")),
                       "left").withColumn("objective", objective_column(weights).cast("double")).cache()
    n = rows.count()
    dropped = rows.where(F.col("objective").isNull() | F.isnan("objective")).count()
    best = top_k(rows, weights, k).cache()
    kept = best.count()
    rows.unpersist()
    out = best.select(
        *[(F.col(f.name) if f.name in best.columns else F.lit(None)).cast(f.dataType).alias(f.name)
          for f in RECOMMENDATIONS_SCHEMA.fields
          if f.name not in ("objective_spec", "ranked_at", "source", "model_name", "model_version")],
        F.lit(model.name).alias("model_name"), F.lit(model.version).alias("model_version"),
        F.lit(source).alias("source"), F.lit(objective_spec(weights)).alias("objective_spec"),
        F.lit(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)).alias("ranked_at"),
    )
    return out.select(*[F.col(f.name).cast(f.dataType) for f in RECOMMENDATIONS_SCHEMA.fields]), kept, dropped, n


def evaluate_lists(spark, settings, models, date: str, source: str, k: int):
    """``metrics`` rows (a pandas frame) of the models' lists (``models``: ModelRefs) and the two
    baselines, or None when the log has no impressions on the date."""
    import pandas as pd
    from pyspark.sql import functions as F

    from conf.lake import read_table
    from conf.tables import BRONZE_LOG, BRONZE_VIDEOS, CANDIDATES, RECOMMENDATIONS
    from evaluation.lists import logged_positives, per_user_metrics, summarise, top_k_per_user
    from features.retrieval import T_COL, click_counts

    day = F.col("date") == F.lit(date).cast("date")
    log_all = read_table(spark, settings, BRONZE_LOG)
    log_day = log_all.where(day)
    if log_day.limit(1).count() == 0:
        return None
    candidates = read_table(spark, settings, CANDIDATES).where(day & (F.col("source") == source))
    requests = candidates.select("user_id", T_COL).distinct()
    positives = logged_positives(log_day, requests).toPandas()
    catalog = read_table(spark, settings, BRONZE_VIDEOS).count()
    recs = read_table(spark, settings, RECOMMENDATIONS)
    lists = {(m.name, m.version): recs.where(day & (F.col("model_name") == m.name) & (F.col("model_version") == m.version))
             .select("user_id", "video_id", "rank") for m in models}
    if candidates.where(F.col("retrieval_score").isNotNull()).limit(1).count():
        lists[("retrieval_order", BASELINE_VERSION)] = top_k_per_user(candidates, [F.col("retrieval_score").desc()], k)
    times = candidates.select(T_COL).distinct()
    events = log_all.where(F.col("date") <= F.lit(date).cast("date"))
    pop = click_counts(events, times, settings.retrieval.popularity_lookback_days)
    with_pop = candidates.join(pop, [T_COL, "video_id"], "left").fillna({"clicks": 0.0})
    lists[("popularity", BASELINE_VERSION)] = top_k_per_user(with_pop, [F.col("clicks").desc()], k)
    frames = []
    for (name, version), lst in lists.items():
        pdf = lst.toPandas()
        summary = summarise(per_user_metrics(pdf, positives, k), pdf, catalog, k)
        summary["model_name"], summary["model_version"] = name, version
        frames.append(summary)
    out = pd.concat(frames, ignore_index=True)
    out["date"] = dt.date.fromisoformat(date)
    return out


def print_list_metrics(pdf, k: int) -> None:
    pdf = pdf.assign(model=lambda d: d["model_name"] + "@" + d["model_version"].astype(str))
    wide = pdf.assign(column=lambda d: d["task"] + " " + d["metric"]).pivot_table(
        index="model", columns="column", values="value", aggfunc="first")
    order = [c for t in ("click", "long_view", "like") for c in (f"{t} recall", f"{t} ndcg", f"{t} hit_rate")
             if c in wide.columns] + [c for c in ("all coverage",) if c in wide.columns]
    n_users = pdf[(pdf["task"] == "click") & (pdf["metric"] == "recall")].set_index("model")["n"]
    print(f"list metrics @{k} (users with a logged positive: {', '.join(f'{m} {n}' for m, n in n_users.items())}):")
    print(wide[order].to_string(float_format=lambda x: f"{x:.4f}"))


def body(spark, settings, args) -> None:
    from conf.lake import sql_literal, write_table
    from conf.tables import METRICS, RECOMMENDATIONS
    from evaluation.lists import list_slice
    from model.ranking import objective_spec, parse_objective

    try:
        weights = parse_objective(args.objective)
    except ValueError as err:
        raise JobError(f"--objective: {err}") from None
    if args.k < 1:
        raise JobError("--k must be >= 1")
    models = [pin_model_ref(settings, m) for m in args.model]
    for date in args.dates:
        for model in models:
            recs, kept, dropped, n = ranked_lists(spark, settings, model, date, args.source, weights, args.k)
            version = write_table(recs, settings, RECOMMENDATIONS,
                                  {"date": date, "model_name": model.name, "model_version": model.version},
                                  user_metadata={"job": "rank", "objective": objective_spec(weights), "k": args.k})
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
        ours = " OR ".join(f"(`model_name` = {sql_literal(m.name)} AND `model_version` = {sql_literal(m.version)})"
                           for m in models)
        names = ", ".join(sql_literal(b) for b in BASELINES)
        predicate = (f"`date` = {sql_literal(date)} AND `slice` = {sql_literal(list_slice(args.k))} AND "
                     f"({ours} OR `model_name` IN ({names}))")
        columns = ["model_name", "model_version", "task", "metric", "slice", "value", "n", "date"]
        rows = spark.createDataFrame(metrics[columns],
                                     "model_name string, model_version string, task string, metric string, "
                                     "slice string, value double, n long, date date")
        write_table(rows, settings, METRICS, predicate,
                    user_metadata={"job": "rank", "models": [str(m) for m in models]})
        print_list_metrics(metrics, args.k)


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
