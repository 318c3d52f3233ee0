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

import sys

from conf.syntax import parse_positive_int
from jobs.common import JobError, add_dates_argument, base_parser, run_job


def build_parser():
    from conf.schemas import CANDIDATE_SOURCES
    from conf.settings import RankingSettings

    rk = RankingSettings()
    parser = base_parser("score", __doc__.splitlines()[0])
    parser.add_argument("--model", required=True,
                        help="NAME[@VERSION|@ALIAS] from the model registry (newest when neither); a comma list scores "
                             "several models on features computed once")
    add_dates_argument(parser)
    parser.add_argument("--source", choices=("all", *CANDIDATE_SOURCES), default="all",
                        help="candidate source to score (default: all the date has)")
    parser.add_argument("--batch-rows", type=parse_positive_int, default=rk.cpu_batch_candidates,
                        help=f"candidates per Arrow batch Spark ships to a worker (default {rk.cpu_batch_candidates}; "
                             "packed: about this many, in whole requests)")
    parser.add_argument("--batch-candidates", type=parse_positive_int,
                        help=f"candidates per model call (default by device: cpu {rk.cpu_batch_candidates}, "
                             f"cuda {rk.cuda_batch_candidates})")
    parser.add_argument("--max-candidates-per-row", type=parse_positive_int, default=rk.max_candidates_per_row,
                        help=f"packed: a larger request is split into rows of at most this many (default "
                             f"{rk.max_candidates_per_row})")
    parser.add_argument("--udf", choices=("arrow", "pandas"), default="arrow",
                        help="mapInArrow (default) or mapInPandas; same worker function")
    parser.add_argument("--layout", choices=("packed", "flat"), default=rk.scoring_layout,
                        help="rows the UDF receives: one per request with the user side once (packed) or one per "
                             f"candidate (flat); default {rk.scoring_layout}")
    parser.add_argument("--no-user-reuse", action="store_true",
                        help="encode the user side once per row instead of once per request")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    return parser


def read_candidates(spark, settings, date: str, source: str):
    from pyspark.sql import functions as F

    from conf.lake import read_table
    from conf.tables import CANDIDATES

    candidates = read_table(spark, settings, CANDIDATES).where(F.col("date") == F.lit(date).cast("date"))
    if source != "all":
        candidates = candidates.where(F.col("source") == source)
    return candidates


def load_models(spark, settings, refs: str):
    """The pinned infos of a comma list of NAME[@VERSION], each checked against the features' spec."""
    from conf.lake import current_version
    from conf.tables import EXAMPLES
    from features.spec import FeatureSpecMismatch
    from model.scoring import check_model_spec
    from model.store import CorruptModel, ModelNotFound, ModelStore, build_from_weights

    infos = []
    feature_version = current_version(spark, settings, EXAMPLES)
    store = ModelStore.of(settings)
    for ref in (r.strip() for r in refs.split(",") if r.strip()):
        try:
            info = store.info(ref)
            check_model_spec(spark, settings, info, feature_version)
            build_from_weights(info)  # a bad artifact fails here once, not in every Python worker
        except (ModelNotFound, FeatureSpecMismatch, CorruptModel) as err:
            raise JobError(str(err)) from None
        infos.append(info)
    if not infos:
        raise JobError("--model names no model")
    return infos, feature_version


def body(spark, settings, args) -> None:
    from features.candidates import validate_candidates
    from model.scoring import (ScoringError, ScoringSettings, candidate_counts, date_udf_input,
                               score_date)

    infos, feature_version = load_models(spark, settings, args.model)
    rk = settings.ranking
    scoring = ScoringSettings(batch_rows=args.batch_rows, reuse_user_side=not args.no_user_reuse, udf=args.udf,
                              device=args.device, layout=args.layout, batch_candidates=args.batch_candidates,
                              cpu_batch_candidates=rk.cpu_batch_candidates, cuda_batch_candidates=rk.cuda_batch_candidates)

    for date in args.dates:
        candidates = read_candidates(spark, settings, date, args.source)
        try:
            validate_candidates(candidates)
        except ValueError as err:
            raise JobError(f"{err}; nothing was written") from None
        counts = candidate_counts(candidates)
        if counts["n"] == 0:
            flag = "" if args.source in ("all", "logged") else f" --source {args.source}"
            what = "" if args.source == "all" else f" of source {args.source}"
            raise JobError(f"candidates has no rows{what} for {date}: run `infnet build_candidates --date {date}"
                           f"{flag}` first; nothing was written")
        with date_udf_input(spark, settings, candidates, counts, scoring, args.max_candidates_per_row,
                            len(infos)) as (rows, report):
            for info in infos:
                try:
                    done = score_date(spark, settings, info, date, rows, candidates, counts["n"], counts["sources"],
                                      scoring, feature_version, args.source)
                except ScoringError as err:
                    raise JobError(str(err)) from None
                print(f"score {info.ref} {date} ({', '.join(counts['sources'])}): {done.n_scored} candidates in "
                      f"{counts['requests']} requests scored (scores version {done.version}); reserved buckets: "
                      f"{report}; ids outside the vocabulary mapped to 0: {done.out_of_vocabulary or 'none'}")


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
