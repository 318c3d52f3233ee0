"""Feature build time: the bundled KuaiRand log and synthetic logs at 10x / 100x rows.

    python -m bench.feature_build            # real 1x, synthetic 1x and 10x
    python -m bench.feature_build --quick    # real 1x, synthetic 1x and 3x
    python -m bench.feature_build --multiples 1 10 100

Inputs are built and cached before the clock starts; the timed part is ``build_examples`` over the
whole log, materialised with Spark's ``noop`` sink (all features computed, nothing written), so
the numbers are the feature pipeline alone. Ratios are taken against synthetic 1x from the same
run; the goal is near-linear growth (10x rows <= 12x time).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace


def _cache(*dfs):
    for df in dfs:
        df.persist()
        df.count()


def _unpersist(*dfs):
    for df in dfs:
        df.unpersist()


def real_inputs(spark):
    from conf.settings import raw_sources
    from features.contracts import (HISTORY_CONTRACT, LOG_CONTRACT, USER_CONTRACT, VIDEO_CONTRACT, bronze_log,
                                    split_valid)
    from features.ingest import read_raw

    def valid(name, contract):
        return split_valid(read_raw(spark, raw_sources()[name], contract.table, contract.columns), contract)[0]

    return (bronze_log(valid("log", LOG_CONTRACT)), valid("users", USER_CONTRACT),
            valid("videos", VIDEO_CONTRACT), valid("history", HISTORY_CONTRACT))


def time_build(spark, settings, log, users, videos, history) -> tuple[int, float]:
    from features.examples import build_examples

    _cache(log, users, videos, history)
    rows = log.count()
    start = time.perf_counter()
    examples, _ = build_examples(log, users, videos, history, settings)
    examples.write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - start
    _unpersist(log, users, videos, history)
    return rows, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench.feature_build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="real 1x, synthetic 1x and 3x")
    parser.add_argument("--multiples", type=int, nargs="+", help="synthetic multiples of 171,671 rows (default 1 10)")
    parser.add_argument("--master", default=None, help="Spark master (default: settings)")
    parser.add_argument("--no-real", action="store_true", help="skip the bundled log")
    args = parser.parse_args(argv)

    from conf.settings import Settings
    from conf.spark import get_spark
    from features.synthetic import REAL_ROWS, synthetic_data

    settings = Settings().with_lake("/tmp/infnet-bench-lake")
    if args.master:
        settings = replace(settings, spark=replace(settings.spark, master=args.master))
    spark = get_spark(settings, app_name="bench-feature-build")
    multiples = args.multiples or ([1, 3] if args.quick else [1, 10])
    results = []
    if not args.no_real:
        rows, secs = time_build(spark, settings, *real_inputs(spark))
        results.append(("kuairand 1x", 1, rows, secs))
        print(f"kuairand 1x: {rows} rows {secs:.1f}s", flush=True)
    for m in multiples:
        data = synthetic_data(spark, REAL_ROWS * m)
        rows, secs = time_build(spark, settings, data.log, data.users, data.videos, data.history)
        results.append((f"synthetic {m}x", m, rows, secs))
        print(f"synthetic {m}x: {rows} rows {secs:.1f}s", flush=True)
    base = next((r for r in results if r[0] == "synthetic 1x"), results[0])
    print(f"\nmaster={spark.sparkContext.master} cores={spark.sparkContext.defaultParallelism}")
    print(f"{'input':<16}{'rows':>12}{'seconds':>10}{'us/row':>10}{'rows x':>8}{'time x':>8}")
    for name, _, rows, secs in results:
        print(f"{name:<16}{rows:>12,}{secs:>10.1f}{secs / rows * 1e6:>10.1f}"
              f"{rows / base[2]:>8.1f}{secs / base[3]:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
