"""Score the ``candidates`` of a date with a stored model inside a pandas/Arrow UDF into ``scores``.

Candidate features are computed once per key with the training feature functions
(features/candidate_features.py: the request side once per request, the item side once per video
and request time, events strictly before the request time), from the feature spec the model was
trained on: the job refuses a model whose spec differs from the examples table's or from the one
these settings build, before anything is written. Every task is scored in Spark's Python workers
(``mapInArrow`` by default, ``mapInPandas`` with ``--udf pandas``): the model is loaded once per
worker, on the GPU when the executor has one, and the worker's model calls are sized for its
device (``RankingSettings``: 1,024 candidates on a CPU, 65,536 on a GPU; ``--batch-candidates``).
The workers receive one row per request (``--layout packed``: the user side once, the candidates
as a list; a request over ``--max-candidates-per-row`` becomes several rows) unless ``--layout flat``
sends one row per candidate.

``--model a,b`` scores several models on the same features (computed once). ``--source`` picks
the candidate source (default: every source the date has); rows of ``scores``
for the same date, model, version (and source, when given) are replaced on rerun; a CHECK
constraint keeps the binary-task scores in [0, 1]. The summary line reports candidates scored with
reserved buckets and ids mapped to 0 because they are outside the model's vocabularies.
"""
from __future__ import annotations

import datetime as dt
import logging
import sys

from jobs.common import JobError, add_dates_argument, base_parser, run_job

log = logging.getLogger("infnet.score")

KEY_TYPES = {"request_id": "string", "impression_id": "string", "user_id": "bigint", "video_id": "bigint"}


def build_parser():
    from conf.schemas import CANDIDATE_SOURCES
    from conf.settings import RankingSettings

    rk = RankingSettings()
    parser = base_parser("score", __doc__.splitlines()[0])
    parser.add_argument("--model", required=True,
                        help="NAME[@VERSION] from the model store (newest when no version); a comma list scores "
                             "several models on features computed once")
    add_dates_argument(parser)
    parser.add_argument("--source", choices=("all", *CANDIDATE_SOURCES), default="all",
                        help="candidate source to score (default: all the date has)")
    parser.add_argument("--batch-rows", type=int, default=rk.cpu_batch_candidates,
                        help=f"candidates per Arrow batch Spark ships to a worker (default {rk.cpu_batch_candidates}; "
                             "packed: about this many, in whole requests)")
    parser.add_argument("--batch-candidates", type=int,
                        help=f"candidates per model call (default by device: cpu {rk.cpu_batch_candidates}, "
                             f"cuda {rk.cuda_batch_candidates})")
    parser.add_argument("--max-candidates-per-row", type=int, default=rk.max_candidates_per_row,
                        help=f"packed: a larger request is split into rows of at most this many (default "
                             f"{rk.max_candidates_per_row})")
    parser.add_argument("--udf", choices=("arrow", "pandas"), default="arrow",
                        help="mapInArrow (default) or mapInPandas; same worker function")
    parser.add_argument("--layout", choices=("packed", "flat"), default="packed",
                        help="rows the UDF receives: one per request with the user side once (packed, default) "
                             "or one per candidate (flat)")
    parser.add_argument("--no-user-reuse", action="store_true",
                        help="encode the user side once per row instead of once per request")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    return parser


def check_model_spec(spark, settings, info, feature_version: int) -> None:
    """The model's spec must be the examples table's at ``feature_version`` *and* the spec these
    settings featurise candidates with (features are built from settings, checked by fingerprint)."""
    from features.examples import build_spec, featuriser_vocabulary, load_feature_spec
    from features.spec import FeatureSpecMismatch, check_compatible
    from model.store import check_spec

    try:
        check_spec(info, load_feature_spec(spark, settings, feature_version))
        check_compatible(info.spec, build_spec(settings, featuriser_vocabulary(spark, settings, None)), what=f"model {info.ref} vs the scoring settings' features")
    except FeatureSpecMismatch as err:
        raise JobError(f"{err}. Retrain {info.name} on the current examples or rebuild features with its spec; "
                       "nothing was written") from None


def read_candidates(spark, settings, date: str, source: str):
    from pyspark.sql import functions as F

    from conf.lake import read_table
    from conf.tables import CANDIDATES

    candidates = read_table(spark, settings, CANDIDATES).where(F.col("date") == F.lit(date).cast("date"))
    if source != "all":
        if "source" not in candidates.columns:
            raise JobError("candidates has no source column (built before sources existed): "
                           f"rerun `infnet build_candidates --date {date}`")
        candidates = candidates.where(F.col("source") == source)
    return candidates


def featurise(spark, settings, candidates, max_request_time: int):
    """Per-key candidate features from the bronze tables, events before the last request time only."""
    from pyspark.sql import functions as F

    from conf.lake import read_table
    from conf.tables import BRONZE_HISTORY, BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS
    from features.candidate_features import featurise_candidates

    last_date = candidates.agg(F.max("date")).first()[0]
    # nothing at or after the latest request time is visible to any candidate: skip reading it
    events = read_table(spark, settings, BRONZE_LOG).where(
        (F.col("date") <= F.lit(last_date)) & (F.col("time_ms") < F.lit(int(max_request_time))))
    return featurise_candidates(candidates, events, read_table(spark, settings, BRONZE_USERS),
                                read_table(spark, settings, BRONZE_VIDEOS), read_table(spark, settings, BRONZE_HISTORY),
                                settings)


def prepare_tables(spark, settings) -> None:
    """Lakes built before candidate sources existed: add the new columns to ``candidates`` and
    ``scores``, marking their old rows ``logged`` (the only source there was)."""
    from conf.lake import add_missing_columns
    from conf.schemas import CANDIDATES_SCHEMA, SCORES_SOURCE_FIELD, schema_of
    from conf.tables import CANDIDATES, SCORES

    add_missing_columns(spark, settings, CANDIDATES, CANDIDATES_SCHEMA, fill={"source": "'logged'"})
    add_missing_columns(spark, settings, SCORES, schema_of([SCORES_SOURCE_FIELD]),
                        fill={"source": "'logged'"})


def load_models(spark, settings, refs: str):
    """The pinned infos of a comma list of NAME[@VERSION], each checked against the features' spec."""
    from conf.lake import current_version
    from conf.tables import EXAMPLES
    from model.store import ModelNotFound, ModelStore

    infos = []
    feature_version = current_version(spark, settings, EXAMPLES)
    for ref in (r.strip() for r in refs.split(",") if r.strip()):
        try:
            info = ModelStore(settings.lake.model_store).info(ref)
        except ModelNotFound as err:
            raise JobError(str(err)) from None
        check_model_spec(spark, settings, info, feature_version)
        infos.append(info)
    if not infos:
        raise JobError("--model names no model")
    return infos, feature_version


def body(spark, settings, args) -> None:
    from pyspark.sql import functions as F

    from conf.spark import session_conf
    from features.candidate_features import PASSTHROUGH
    from features.candidates import records_per_arrow_batch, validate_candidates
    from model.scoring import ScoringSettings

    infos, feature_version = load_models(spark, settings, args.model)
    if min(args.batch_rows, args.max_candidates_per_row, args.batch_candidates or 1) < 1:
        raise JobError("--batch-rows, --batch-candidates and --max-candidates-per-row must be >= 1")
    rk = settings.ranking
    scoring = ScoringSettings(batch_rows=args.batch_rows, reuse_user_side=not args.no_user_reuse, udf=args.udf,
                              device=args.device, layout=args.layout, batch_candidates=args.batch_candidates,
                              cpu_batch_candidates=rk.cpu_batch_candidates, cuda_batch_candidates=rk.cuda_batch_candidates)
    prepare_tables(spark, settings)

    for date in args.dates:
            candidates = read_candidates(spark, settings, date, args.source)
            try:
                validate_candidates(candidates)
            except ValueError as err:
                raise JobError(f"{err}; nothing was written") from None
            counts = candidates.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("request_id").alias("requests"),
                                    F.max("request_time_ms").alias("last"),
                                    F.sort_array(F.collect_set("source")).alias("sources")).first()
            n_candidates = counts["n"]
            if n_candidates == 0:
                flag = "" if args.source in ("all", "logged") else f" --source {args.source}"
                what = "" if args.source == "all" else f" of source {args.source}"
                raise JobError(f"candidates has no rows{what} for {date}: run `infnet build_candidates --date {date}"
                               f"{flag}` first; nothing was written")
            # features once per key and date, shared by every model scored here
            features = featurise(spark, settings, candidates, counts["last"]).cache()
            report = features.input_report()
            if scoring.layout == "packed":  # one row per request
                udf_input = features.packed(PASSTHROUGH, args.max_candidates_per_row)
            else:
                # a request's candidates sit together so the user side is encoded once per request per batch
                n_parts = max(spark.sparkContext.defaultParallelism, 1)
                udf_input = features.flat(PASSTHROUGH).repartition(n_parts, "request_id").sortWithinPartitions("request_id")
            if len(infos) > 1:
                udf_input = udf_input.cache()
            # Arrow batches of ~batch_rows candidates; the session's own setting is back after the date
            records = records_per_arrow_batch(scoring.layout, scoring.batch_rows, n_candidates, counts["requests"])
            with session_conf(spark, "spark.sql.execution.arrow.maxRecordsPerBatch", str(records)):
                for info in infos:
                    score_date(spark, settings, info, date, udf_input, candidates, counts, scoring, feature_version,
                               args.source, report)
            udf_input.unpersist()
            features.unpersist()


def score_date(spark, settings, info, date, udf_input, candidates, counts, scoring, feature_version, source,
               report) -> None:
    """Score one model on one date's prepared UDF input, write its slice of ``scores``, check the
    count and print the summary line."""
    from pyspark.sql import functions as F

    from conf.lake import read_table, write_table
    from conf.tables import SCORES
    from features.candidate_features import PASSTHROUGH
    from model.scoring import counts_accumulator, make_batch_scorer, output_schema_ddl, score_column

    out_of_range = counts_accumulator(spark)
    scorer = make_batch_scorer(settings.lake.model_store, info.ref, PASSTHROUGH, scoring, out_of_range, KEY_TYPES)
    ddl = output_schema_ddl(info.spec, PASSTHROUGH, KEY_TYPES)
    scored = udf_input.mapInPandas(scorer, ddl) if scoring.udf == "pandas" else udf_input.mapInArrow(scorer, ddl)
    if len(counts["sources"]) == 1:  # the usual case: no join needed
        scored = scored.withColumn("source", F.lit(counts["sources"][0]))
    else:
        sources = candidates.select(F.col("request_id").alias("_c_request"), F.col("video_id").alias("_c_video"),
                                    F.col("impression_id").alias("_c_impression"), "source")
        scored = scored.join(sources, (F.col("request_id") == F.col("_c_request"))
                             & (F.col("video_id") == F.col("_c_video"))
                             & F.col("impression_id").eqNullSafe(F.col("_c_impression")))
    scores = scored.select(
        "request_id", "impression_id", "user_id", "video_id",
        F.lit(date).cast("date").alias("date"),
        F.lit(info.name).alias("model_name"), F.lit(str(info.version)).alias("model_version"),
        F.lit(feature_version).cast("long").alias("feature_version"),
        F.lit(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)).alias("scored_at"),
        *[F.col(score_column(t.name)) for t in info.spec.tasks],
        "source",
    )
    where = {"date": date, "model_name": info.name, "model_version": str(info.version)}
    if source != "all":
        where["source"] = source
    version = write_table(scores, settings, SCORES, where)
    ensure_probability_constraint(spark, settings, [t.name for t in info.spec.binary_tasks])
    written = read_table(spark, settings, SCORES, version).where(
        (F.col("date") == F.lit(date).cast("date")) & (F.col("model_name") == info.name)
        & (F.col("model_version") == str(info.version)))
    if source != "all":
        written = written.where(F.col("source") == source)
    n_scored = written.count()
    if n_scored != counts["n"]:
        raise JobError(f"scored {n_scored} rows for {counts['n']} candidates on {date}")
    mapped = dict(sorted(out_of_range.value.items()))
    print(f"score {info.ref} {date} ({', '.join(counts['sources'])}): {n_scored} candidates in "
          f"{counts['requests']} requests scored (scores version {version}); reserved buckets: {report}; "
          f"ids outside the vocabulary mapped to 0: {mapped or 'none'}")


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
