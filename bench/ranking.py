"""The nightly ranking job end to end on a lake: build retrieval candidates -> score -> top K -> replay.

Runs the real jobs in one process (one Spark session, as ``make demo`` does) for every user active
the day before ``--date`` (or ``--max-users`` of them) and prints seconds per stage and candidates
per second. The lake must hold the bronze tables, ``examples`` (its spec) and a trained model
(``make demo`` or ``infnet ingest``/``build_features``/``train`` first). Usage::

    .venv/bin/python -m bench.ranking --lake lake --date 2022-05-04                 # all users
    .venv/bin/python -m bench.ranking --lake lake --date 2022-05-04 --max-users 2000
    .venv/bin/python -m bench.ranking --lake lake --max-users 500 --compare-featurise

``--compare-featurise`` also times, on the same candidates, the per-key featurisation the score job
runs (features/candidate_features.py, packed) against the per-row one it replaced
(``build_features`` on every candidate row, then ``pack_requests``), both written to Spark's
``noop`` sink, side by side.

``--json PATH`` also writes the figures (:mod:`bench.figures`): ``total_seconds``, ``stage_seconds``
(per stage: ``seconds`` and ``candidates_per_s``), ``candidates``, ``requests``, ``list_entries``,
``cores``, the load average at the start and the end, and the run's settings. One run of the job
is one repeat (it takes minutes); ``--repeats N`` runs the whole job N times and adds the
per-stage median, min and max (``stage_seconds.<stage>.repeats``), the medians at the top level.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import replace
import sys
import time

from bench.figures import Figures, summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--date", default="2022-05-04")
    parser.add_argument("--model", default="infnet")
    parser.add_argument("--max-users", type=int, help="a deterministic sample of users (default: all)")
    parser.add_argument("--candidates-per-request", type=int, default=200)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--compare-featurise", action="store_true",
                        help="also time per-key vs per-row featurisation of the same candidates")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the whole job (each stage's median, min, max)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON (see the module docstring)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    if "://" not in args.lake:  # the catalog stores locations: a relative path would resolve against the warehouse
        args.lake = os.path.abspath(args.lake)

    from pyspark.sql import functions as F

    from conf.lake import read_table
    from conf.spark import get_spark
    from conf.tables import CANDIDATES, RECOMMENDATIONS
    from evaluation.lists import evaluate_lists, format_list_metrics
    from conf.settings import Settings
    from conf.syntax import ModelRef, parse_ref
    from jobs.cli import main as infnet  # the stages timed are the jobs as users run them: `infnet <job>`
    from model.store import ModelStore

    common = ["--lake", args.lake, "--master", args.master]
    sample = ["--max-users", str(args.max_users)] if args.max_users else []
    stages = [
        ("build candidates (retrieval)", ["build_candidates", "--source", "retrieval", "--date", args.date,
                                          "--candidates-per-request", str(args.candidates_per_request), *sample]),
        ("score", ["score", "--model", args.model, "--date", args.date, "--source", "retrieval"]),
        ("top K (rank --no-evaluate)", ["rank", "--model", args.model, "--date", args.date, "--no-evaluate"]),
    ]
    figures = Figures("bench.ranking", vars(args))
    runs: list[dict[str, float]] = []
    for _ in range(args.repeats):
        seconds = {}
        for name, flags in stages:
            t0 = time.perf_counter()
            rc = infnet([*flags, *common])
            seconds[name] = time.perf_counter() - t0
            if rc != 0:
                print(f"bench.ranking: stage {name!r} failed (exit {rc})", file=sys.stderr)
                return rc

        settings = Settings().with_lake(args.lake)
        settings = replace(settings, spark=replace(settings.spark, master=args.master))
        spark = get_spark(settings)
        name, version = parse_ref(args.model)
        if version is None:
            name, version = ModelStore.of(settings).resolve(name)
        model = ModelRef(name, str(version))
        t0 = time.perf_counter()
        metrics = evaluate_lists(spark, settings, [model], args.date, "retrieval", settings.ranking.top_k)
        seconds["replay evaluation"] = time.perf_counter() - t0
        runs.append(seconds)
    day = F.col("date") == F.lit(args.date).cast("date")
    cands = read_table(spark, settings, CANDIDATES).where(day & (F.col("source") == "retrieval"))
    n_candidates, n_requests = cands.count(), cands.select("request_id").distinct().count()
    n_listed = read_table(spark, settings, RECOMMENDATIONS).where(
        day & (F.col("model_name") == model.name) & (F.col("model_version") == model.version)).count()

    print(f"\nranking job for {args.date}, {model}, {args.master}, {os.cpu_count()} cores: {n_requests:,} requests, "
          f"{n_candidates:,} candidates, {n_listed:,} list entries"
          + (f"; median (min-max) of {len(runs)} runs" if len(runs) > 1 else ""))
    for name, s in job_figures(figures, runs, n_candidates, n_requests, n_listed, str(model)).items():
        spread = f"  ({s['min']:.1f}-{s['max']:.1f})" if len(runs) > 1 else ""
        print(f"  {name:<30} {s['median']:8.1f} s   {n_candidates / s['median']:>10,.0f} candidates/s{spread}")
    figures.write(args.json)
    if metrics is not None:
        print(format_list_metrics(metrics, settings.ranking.top_k))
    if args.compare_featurise:
        compare_featurise(spark, settings, cands, n_candidates)
    return 0


def job_figures(figures: Figures, runs: list[dict[str, float]], n_candidates: int, n_requests: int,
                n_listed: int, model: str) -> dict[str, dict]:
    """Put one ranking job's figures into ``figures`` (the keys a checking script reads) and return
    the summary per stage and ``total``. ``runs``: seconds per stage, one dict per run of the job.

    >>> fig = Figures("bench.ranking")
    >>> out = job_figures(fig, [{"score": 4.0, "top K": 1.0}, {"score": 6.0, "top K": 1.0}], 100, 2, 10, "m@1")
    >>> fig.data["total_seconds"], fig.data["stage_seconds"]["score"]["seconds"], fig.data["candidates"]
    (6.0, 5.0, 100)
    """
    stages = {name: summary([run[name] for run in runs]) for name in runs[0]}
    total = summary([sum(run.values()) for run in runs])
    figures.data.update({
        "model": model, "candidates": n_candidates, "requests": n_requests, "list_entries": n_listed,
        "total_seconds": total["median"],
        "candidates_per_s": n_candidates / total["median"] if total["median"] else None,
        "stage_seconds": {name: {"seconds": s["median"], "candidates_per_s": n_candidates / s["median"]
                                 if s["median"] else None, **s} for name, s in stages.items()},
    })
    figures.seconds("total", total["repeats"])
    for name, s in stages.items():
        figures.seconds(name, s["repeats"])
    return {**stages, "total": total}


def compare_featurise(spark, settings, candidates, n_candidates: int) -> None:
    """Seconds of per-key (the score job) vs per-row (build_features + pack_requests) features."""
    from pyspark.sql import functions as F

    from conf.lake import read_table
    from conf.tables import BRONZE_HISTORY, BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS
    from features.candidate_features import PASSTHROUGH, featurise_candidates
    from features.candidates import pack_requests
    from features.examples import build_features, build_spec

    last = candidates.agg(F.max("request_time_ms"), F.max("date")).first()
    events = read_table(spark, settings, BRONZE_LOG).where(
        (F.col("date") <= F.lit(last[1])) & (F.col("time_ms") < F.lit(int(last[0]))))
    dims = [read_table(spark, settings, t) for t in (BRONZE_USERS, BRONZE_VIDEOS, BRONZE_HISTORY)]
    spec = build_spec(settings)

    def per_key():
        return featurise_candidates(candidates, events, *dims, settings).packed(PASSTHROUGH)

    def per_row():
        rows = build_features(candidates.withColumnRenamed("request_time_ms", "time_ms"), events, *dims, settings)
        return pack_requests(rows.select(*PASSTHROUGH, *spec.feature_columns), spec, PASSTHROUGH)

    seconds = {}
    for name, build in (("per key (infnet score)", per_key), ("per row (build_features)", per_row)):
        t0 = time.perf_counter()
        build().write.format("noop").mode("overwrite").save()
        seconds[name] = time.perf_counter() - t0
    key, row = seconds["per key (infnet score)"], seconds["per row (build_features)"]
    print(f"\nfeaturise {n_candidates:,} candidates, packed per request: per key {key:.1f} s, per row {row:.1f} s "
          f"-> per key {row / key:.2f}x faster")


if __name__ == "__main__":
    sys.exit(main())
