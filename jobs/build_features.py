"""Build the examples table (categorical, sequence, statistical, task features) from bronze.

For each requested date, every impression becomes one row featurised from the events strictly
before it (all earlier dates of bronze_log are read, plus the pre-window history); with
--feature feature_time=request, from the events before the date's request time, by the score job's
featuriser, and with --feature exposure_negatives=N also N unshown retrieval candidates per request
and the `exposed` task (entire-space training, features/space.py). The dates are
replaced in `examples` (Delta replaceWhere); without --date the whole table is rebuilt.

The feature spec is stored with the Delta version written: in the commit's userMetadata
(fingerprint), as table property infnet.feature_spec_fingerprint and as
<lake>/feature_specs/examples/v<version>.json (features.examples.load_feature_spec reads it back).
A partial rebuild with settings that change the spec is refused: rebuild all dates instead.

Exact id vocabularies (features/vocabulary.py): a full rebuild first writes the `vocabulary` table
from bronze (ids of bronze_log up to --vocabulary-until, default every date, and of bronze_history)
and builds every row with it; its Delta version goes into the spec. A partial rebuild reuses the
current vocabulary (an id first seen since maps to 0). The job prints how many ids each field has
and how many of them a hash into the configured buckets would have made share a row.

example:  infnet build_features --date 2022-05-04 --lake /tmp/lake
"""
from __future__ import annotations

import sys
import time
import uuid

from conf.settings import parse_feature_override
from conf.syntax import flag_type, parse_dates
from jobs.common import JobError, add_dates_argument, base_parser, run_job


def build_parser():
    parser = base_parser("build_features", __doc__)
    add_dates_argument(parser, required=False,
                       help="date(s) to (re)build: YYYY-MM-DD, a comma list or a range a..b "
                            "(default: every date in bronze_log, rebuilding the whole table)")
    parser.add_argument("--seq-len", type=int, help="override FeatureSettings.seq_len (changes the spec)")
    parser.add_argument("--feature", action="append", default=[], metavar="KEY=VALUE", type=flag_type(parse_feature_override),
                        help="override a FeatureSettings field, e.g. rate_buckets=100, dense_stats=true, "
                             "label_delay=false, exact_vocab_max_size=0 (repeatable; changes the spec)")
    parser.add_argument("--vocabulary-until", type=parse_dates, metavar="DATE",
                        help="full rebuild: the vocabulary knows the ids of bronze_log up to this date "
                             "(default: every date); later ids map to 0 (cold start)")
    return parser


def body(spark, settings, args) -> None:
    from dataclasses import replace

    from pyspark.sql import functions as F

    from conf.lake import read_table, remove_path, sql_literal, stage_parts, write_table
    from conf.tables import BRONZE_HISTORY, BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS, EXAMPLES
    from features.examples import (SPEC_FINGERPRINT_KEY, SPEC_PROPERTY, build_examples, build_spec, example_columns,
                                   featuriser_vocabulary, save_feature_spec, spec_commits, stored_spec_fingerprint,
                                   written_counts)
    from features.space import build_request_examples, check_feature_time
    from features.vocabulary import write_vocabulary

    if args.seq_len:
        settings = replace(settings, features=replace(settings.features, seq_len=args.seq_len))
    if args.feature:
        settings = replace(settings, features=replace(settings.features, **dict(args.feature)))
    started = time.time()
    bronze = read_table(spark, settings, BRONZE_LOG)
    counts = {str(r["date"]): int(r["n"]) for r in bronze.groupBy("date").agg(F.count(F.lit(1)).alias("n")).collect()}
    if not counts:
        raise JobError("bronze_log is empty: run `infnet ingest` first")
    full = not args.dates
    dates = sorted(counts) if full else args.dates
    missing = [d for d in dates if d not in counts]
    if missing:
        raise JobError(f"bronze_log has no rows for {missing}: run `infnet ingest --dates {missing[0]}..{missing[-1]}` first")
    users, videos = read_table(spark, settings, BRONZE_USERS), read_table(spark, settings, BRONZE_VIDEOS)
    history = read_table(spark, settings, BRONZE_HISTORY)
    vocabulary = None
    if settings.features.exact_vocab_max_size > 0:
        try:
            if full:
                vocabulary, report = write_vocabulary(spark, settings, bronze, videos, history, args.vocabulary_until)
                print(f"vocabulary v{vocabulary.version}: {report}")
            else:
                vocabulary = featuriser_vocabulary(spark, settings, None)
        except ValueError as err:  # no vocabulary table yet
            raise JobError(f"{err}; or rebuild every date once (omit --date)") from None
    try:
        check_feature_time(settings.features)
    except ValueError as err:
        raise JobError(f"--feature: {err}") from None
    spec = build_spec(settings, vocabulary)
    fingerprint = spec.fingerprint()
    stored = stored_spec_fingerprint(spark, settings)
    if not full and stored is not None and stored != fingerprint:
        raise JobError(f"examples were built with feature spec {stored}, these settings give {fingerprint}; "
                       "rebuild every date (omit --date) to change the spec")
    staging = None
    if settings.features.feature_time == "request":
        staging = f"{settings.lake.staging.rstrip('/')}/build_features/{uuid.uuid4().hex[:12]}"
        # one date per Spark plan (ten in one plan ran a 4 GB driver out of heap), staged, one commit
        parts = ((d, lambda d=d: build_request_examples(bronze, users, videos, history, settings, [d], spec, vocabulary))
                 for d in dates)
        examples = stage_parts(spark, parts, staging).select(*example_columns(spec))
    else:
        examples, spec = build_examples(bronze, users, videos, history, settings, dates=None if full else dates,
                                        vocabulary=vocabulary)
    predicate = None if full else "date IN (" + ", ".join(f"DATE {sql_literal(d)}" for d in dates) + ")"
    meta = {SPEC_FINGERPRINT_KEY: fingerprint, "dates": ",".join(dates), "job": "build_features"}
    try:
        write_table(examples, settings, EXAMPLES, predicate, user_metadata=meta, properties={SPEC_PROPERTY: fingerprint})
    finally:
        if staging:
            remove_path(spark, staging)
    data_version = spec_commits(spark, settings)[-1][0]
    path = save_feature_spec(spark, settings, spec, data_version)
    try:
        per_date, unshown = written_counts(read_table(spark, settings, EXAMPLES, version=data_version), spec,
                                           {d: counts[d] for d in dates})
    except ValueError as err:
        raise JobError(str(err)) from None
    space = f" + {unshown} unshown retrieval candidates (entire space)" if unshown else ""
    print(f"build_features: {sum(per_date.values())} rows{space} for {len(dates)} date(s) {dates[0]}..{dates[-1]} "
          f"(features as of the {settings.features.feature_time} time) -> examples v{data_version}, spec "
          f"{fingerprint} at {path} ({time.time() - started:.0f}s)")


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
