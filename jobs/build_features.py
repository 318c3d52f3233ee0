"""Build the examples table (categorical, sequence, statistical, task features) from bronze.

For each requested date, every impression becomes one row featurised from the events strictly
before it (all earlier dates of bronze_log are read, plus the pre-window history). The dates are
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

import logging
import sys
import time

from jobs.common import JobError, add_dates_argument, base_parser, parse_dates, run_job

log = logging.getLogger("infnet.build_features")


def build_parser():
    parser = base_parser("build_features", __doc__)
    add_dates_argument(parser, required=False,
                       help="date(s) to (re)build: YYYY-MM-DD, a comma list or a range a..b "
                            "(default: every date in bronze_log, rebuilding the whole table)")
    parser.add_argument("--seq-len", type=int, help="override FeatureSettings.seq_len (changes the spec)")
    parser.add_argument("--feature", action="append", default=[], metavar="KEY=VALUE", type=parse_feature_setting,
                        help="override a FeatureSettings field, e.g. rate_buckets=100, dense_stats=true, "
                             "label_delay=false, exact_vocab_max_size=0 (repeatable; changes the spec)")
    parser.add_argument("--vocabulary-until", type=parse_dates, metavar="DATE",
                        help="full rebuild: the vocabulary knows the ids of bronze_log up to this date "
                             "(default: every date); later ids map to 0 (cold start)")
    return parser


def parse_feature_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` for a FeatureSettings field, VALUE parsed as the field's type."""
    import argparse
    import dataclasses

    from conf.settings import FeatureSettings

    key, sep, value = text.partition("=")
    types = {f.name: type(getattr(FeatureSettings(), f.name)) for f in dataclasses.fields(FeatureSettings)}
    if not sep or key not in types:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY one of {sorted(types)}, got {text!r}")
    kind = types[key]
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return key, value.lower() in ("true", "1")
        return key, kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key} takes a {kind.__name__}, got {value!r}") from None


def _stored_fingerprint(spark, settings) -> str | None:
    from delta.tables import DeltaTable

    from conf.lake import table_exists
    from conf.tables import EXAMPLES
    from features.examples import SPEC_PROPERTY

    if not table_exists(spark, settings, EXAMPLES):
        return None
    detail = DeltaTable.forPath(spark, settings.lake.table_path(EXAMPLES.name)).detail().first()
    return (detail["properties"] or {}).get(SPEC_PROPERTY)


def body(spark, settings, args) -> None:
    from dataclasses import replace

    from pyspark.sql import functions as F

    from conf.lake import read_table, sql_literal, write_table
    from conf.tables import BRONZE_HISTORY, BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS, EXAMPLES
    from features.examples import (SPEC_FINGERPRINT_KEY, SPEC_PROPERTY, build_examples, build_spec,
                                   save_feature_spec, spec_commits)

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
        vocabulary = (write_vocabulary(spark, settings, bronze, videos, history, args.vocabulary_until) if full
                      else current_vocabulary(spark, settings))
    spec = build_spec(settings, vocabulary)
    fingerprint = spec.fingerprint()
    stored = _stored_fingerprint(spark, settings)
    if not full and stored is not None and stored != fingerprint:
        raise JobError(f"examples were built with feature spec {stored}, these settings give {fingerprint}; "
                       "rebuild every date (omit --date) to change the spec")
    examples, spec = build_examples(bronze, users, videos, history, settings, dates=None if full else dates,
                                    vocabulary=vocabulary)
    predicate = None if full else "date IN (" + ", ".join(f"DATE {sql_literal(d)}" for d in dates) + ")"
    meta = {SPEC_FINGERPRINT_KEY: fingerprint, "dates": ",".join(dates), "job": "build_features"}
    write_table(examples, settings, EXAMPLES, predicate, user_metadata=meta, properties={SPEC_PROPERTY: fingerprint})
    data_version = spec_commits(spark, settings)[-1][0]
    path = save_feature_spec(spark, settings, spec, data_version)
    written = read_table(spark, settings, EXAMPLES, version=data_version)
    per_date = {str(r["date"]): int(r["n"]) for r in written.where(F.col("date").isin(*dates))
                .groupBy("date").agg(F.count(F.lit(1)).alias("n")).collect()}
    expected = {d: counts[d] for d in dates}
    if per_date != expected:
        bad = {d: (per_date.get(d, 0), expected[d]) for d in dates if per_date.get(d, 0) != expected[d]}
        raise JobError(f"examples row counts differ from bronze_log (written, expected): {bad}")
    print(f"build_features: {sum(per_date.values())} rows for {len(dates)} date(s) {dates[0]}..{dates[-1]} "
          f"-> examples v{data_version}, spec {fingerprint} at {path} ({time.time() - started:.0f}s)")


def write_vocabulary(spark, settings, bronze, videos, history, until):
    """Build the vocabulary from bronze (log up to ``until``), write it, report the collisions it removes."""
    from pyspark.sql import functions as F

    from conf.lake import write_table
    from conf.tables import VOCABULARY
    from features.vocabulary import build_vocabulary, collision_report, load_vocabulary, seen_ids

    log = bronze if not until else bronze.where(F.col("date") <= F.lit(max(until)).cast("date"))
    frame = build_vocabulary(log, videos, history, settings.features)
    version = write_table(frame, settings, VOCABULARY, user_metadata={"job": "build_features",
                                                                       "until": max(until) if until else "all"})
    vocabulary = load_vocabulary(spark, settings.lake.table_path(VOCABULARY.name), version)
    report = collision_report(seen_ids(log, videos, history), settings.features)
    print("vocabulary v%d: %s" % (version, "; ".join(
        f"{field} {r['ids']} ids " + (f"exact ({vocabulary.sizes[field]} rows)" if vocabulary.has(field) else "hashed")
        + f", hashing into {r['buckets']} buckets would share a row for {r['collision_rate']:.1%}"
        for field, r in report.items())))
    return vocabulary


def current_vocabulary(spark, settings):
    from conf.tables import VOCABULARY
    from features.vocabulary import load_vocabulary

    try:
        return load_vocabulary(spark, settings.lake.table_path(VOCABULARY.name))
    except Exception:  # noqa: BLE001 - no table yet
        raise JobError("exact id vocabularies are on but there is no vocabulary table yet: "
                       "rebuild every date once (omit --date)") from None


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
