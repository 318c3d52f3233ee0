"""Score the ``candidates`` of a date with a stored model inside a pandas/Arrow UDF into ``scores``.

Candidates get their point-in-time features from the same ``features.examples.build_features``
the training examples come from (events strictly before the request time), then every task is
scored in Spark's Python workers (``mapInArrow`` by default, ``mapInPandas`` with ``--udf pandas``):
the model is loaded once per worker, on the GPU when the executor has one. The workers receive one
row per request (``--layout packed``: the user side once, the candidates as a list) unless
``--layout flat`` sends one row per candidate. Rows of ``scores`` for
the same date, model and version are replaced on rerun; a CHECK constraint keeps the binary-task
scores in [0, 1].
"""
from __future__ import annotations

import datetime as dt
import logging
import sys

from jobs.common import JobError, base_parser, parse_dates, run_job

log = logging.getLogger("infnet.score")

PASSTHROUGH = ("request_id", "impression_id", "user_id", "video_id")


def build_parser():
    parser = base_parser("score", __doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="NAME[@VERSION] from the model store (newest when no version)")
    parser.add_argument("--date", "--dates", dest="dates", type=parse_dates, required=True,
                        help="date, comma list or range a..b (YYYY-MM-DD)")
    parser.add_argument("--batch-rows", type=int, default=1024,
                        help="candidates per UDF call (default 1024; packed: about this many, in whole requests)")
    parser.add_argument("--udf", choices=("arrow", "pandas"), default="arrow",
                        help="mapInArrow (default) or mapInPandas; same worker function")
    parser.add_argument("--layout", choices=("packed", "flat"), default="packed",
                        help="rows the UDF receives: one per request with the user side once (packed, default) "
                             "or one per candidate (flat)")
    parser.add_argument("--no-user-reuse", action="store_true",
                        help="encode the user side once per row instead of once per request")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    return parser


def featurise_candidates(spark, settings, candidates):
    """Point-in-time features of candidate rows: the training feature code with candidates as queries."""
    from pyspark.sql import functions as F

    from conf.lake import read_table
    from conf.tables import BRONZE_HISTORY, BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS
    from features.examples import build_features

    last_date = candidates.agg(F.max("date")).first()[0]
    events = read_table(spark, settings, BRONZE_LOG).where(F.col("date") <= F.lit(last_date))
    queries = candidates.withColumnRenamed("request_time_ms", "time_ms")
    return build_features(
        queries, events,
        read_table(spark, settings, BRONZE_USERS), read_table(spark, settings, BRONZE_VIDEOS),
        read_table(spark, settings, BRONZE_HISTORY), settings,
    )


def input_report(features, spec) -> dict[str, int]:
    """Counts of rows scored with reserved buckets: unknown ids, empty sequences, null context."""
    from pyspark.sql import functions as F

    checks = {}
    for field in spec.categorical:
        if field.name in ("user_id", "video_id", "tab", "hour"):
            checks[f"reserved_{field.name}"] = F.sum((F.col(field.column) == 0).cast("long"))
    if spec.sequences:
        empty = None
        for s in spec.sequences:
            e = F.coalesce(F.size(s.column), F.lit(0)) <= 0
            empty = e if empty is None else (empty & e)
        checks["all_sequences_empty"] = F.sum(empty.cast("long"))
    row = features.agg(*[v.alias(k) for k, v in checks.items()]).first()
    return {k: int(row[k] or 0) for k in checks}


def body(spark, settings, args) -> None:
    from pyspark.sql import functions as F

    from conf.lake import qualified_name, read_table, write_table
    from conf.tables import CANDIDATES, EXAMPLES, SCORES
    from features.candidates import pack_requests, validate_candidates
    from features.examples import load_feature_spec
    from features.spec import FeatureSpecMismatch
    from model.scoring import ScoringSettings, make_batch_scorer, output_schema_ddl, score_column
    from model.store import ModelNotFound, check_spec, load_info

    store = settings.lake.model_store
    try:
        info = load_info(store, args.model)
    except ModelNotFound as err:
        raise JobError(str(err)) from None
    ref = info.ref  # pinned: every worker loads this exact version
    feature_version = int(spark.sql(f"DESCRIBE HISTORY {qualified_name(settings, EXAMPLES)} LIMIT 1").first()["version"])
    try:
        check_spec(info, load_feature_spec(spark, settings, feature_version))
    except FeatureSpecMismatch as err:
        raise JobError(f"{err}. Retrain {info.name} on the current examples or rebuild features with its spec.") from None
    scoring = ScoringSettings(batch_rows=args.batch_rows, reuse_user_side=not args.no_user_reuse,
                              udf=args.udf, device=args.device, layout=args.layout)

    # Arrow batches count UDF input rows (requests when packed): set per date, restored after
    batch_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    session_batch_rows = spark.conf.get(batch_key)
    try:
        for date in args.dates:
            candidates = read_table(spark, settings, CANDIDATES).where(F.col("date") == F.lit(date).cast("date"))
            try:
                validate_candidates(candidates)
            except ValueError as err:
                raise JobError(f"{err}; nothing was written") from None
            counts = candidates.agg(F.count(F.lit(1)).alias("n"),
                                    F.countDistinct("request_id").alias("requests")).first()
            n_candidates = counts["n"]
            if n_candidates == 0:
                raise JobError(f"candidates has no rows for {date}: run `infnet build_candidates --date {date}`; "
                               "nothing was written")
            features = featurise_candidates(spark, settings, candidates).cache()
            log.info("score %s %s: %d candidates; scored with reserved buckets: %s",
                     ref, date, n_candidates, input_report(features, info.spec))
            rows = features.select(*PASSTHROUGH, *info.spec.feature_columns)
            if scoring.layout == "packed":
                # one row per request: Arrow batches of ~batch_rows candidates
                per_request = max(n_candidates / max(counts["requests"], 1), 1.0)
                records_per_batch = max(round(scoring.batch_rows / per_request), 1)
                udf_input = pack_requests(rows, info.spec, PASSTHROUGH)
            else:
                # a request's candidates sit together so the user side is encoded once per request per batch
                records_per_batch = scoring.batch_rows
                n_parts = max(spark.sparkContext.defaultParallelism, 1)
                udf_input = rows.repartition(n_parts, "request_id").sortWithinPartitions("request_id")
            spark.conf.set(batch_key, str(records_per_batch))
            scorer = make_batch_scorer(store, ref, PASSTHROUGH, scoring)
            ddl = output_schema_ddl(info.spec, PASSTHROUGH)
            scored = udf_input.mapInPandas(scorer, ddl) if scoring.udf == "pandas" else udf_input.mapInArrow(scorer, ddl)
            scores = scored.select(
                F.col("request_id"), F.col("impression_id"),
                F.col("user_id").cast("long"), F.col("video_id").cast("long"),
                F.lit(date).cast("date").alias("date"),
                F.lit(info.name).alias("model_name"), F.lit(str(info.version)).alias("model_version"),
                F.lit(feature_version).cast("long").alias("feature_version"),
                F.lit(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)).alias("scored_at"),
                *[F.col(score_column(t.name)) for t in info.spec.tasks],
            )
            version = write_table(scores, settings, SCORES,
                                  {"date": date, "model_name": info.name, "model_version": str(info.version)})
            ensure_probability_constraint(spark, settings, [t.name for t in info.spec.binary_tasks])
            n_scored = read_table(spark, settings, SCORES, version).where(
                (F.col("date") == F.lit(date).cast("date")) & (F.col("model_name") == info.name)
                & (F.col("model_version") == str(info.version))).count()
            if n_scored != n_candidates:
                raise JobError(f"scored {n_scored} rows for {n_candidates} candidates on {date}")
            log.info("scores %s %s: %d rows (scores version %d)", ref, date, n_scored, version)
            features.unpersist()
    finally:
        spark.conf.set(batch_key, session_batch_rows)


def ensure_probability_constraint(spark, settings, binary_tasks) -> None:
    """Add the Delta CHECK constraint keeping binary scores in [0, 1] (once per table)."""
    from conf.lake import qualified_name
    from conf.tables import SCORES
    from model.scoring import score_column

    table = qualified_name(settings, SCORES)
    existing = {r["key"] for r in spark.sql(f"SHOW TBLPROPERTIES {table}").collect()}
    if "delta.constraints.scores_are_probabilities" in existing:
        return
    cond = " AND ".join(f"({score_column(t)} BETWEEN 0 AND 1)" for t in binary_tasks)
    spark.sql(f"ALTER TABLE {table} ADD CONSTRAINT scores_are_probabilities CHECK ({cond})")


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
