"""Why like gAUC sits below 0.5: single features scored as if they were models, AUC vs gAUC.

    python -m bench.like_gauc --lake <lake> [--examples-version N]

Reads the ``examples`` rows of the valid and test days (the split of bench.accuracy) and prints,
for a few point-in-time features, the AUC of like over all rows and the gAUC (per user, users with
both classes on the day's rows). It also prints how much the user's smoothed like rate moves from
one impression to the user's next after a like and after no like. A feature with a high AUC and a
gAUC far below 0.5 ranks users well and a user's own impressions backwards: any model that leans on
it inherits the inversion within users.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from bench.accuracy import TEST, VALID

FEATURES = {  # printed name -> column of examples (dense raw values: no bucket ties)
    "user like rate": "dense_user_like_rate_logit",
    "user click rate": "dense_user_click_rate_logit",
    "user impressions so far": "dense_user_n_prior_log1p",
    "video like rate": "dense_video_like_rate_logit",
    "author like rate": "dense_author_like_rate_logit",
}


def feature_table(df: pd.DataFrame) -> pd.DataFrame:
    """AUC and gAUC of like for every feature of FEATURES plus the position in the user's day."""
    from model.metrics import auc_np, gauc_np

    rows = []
    order = df.groupby(["user_id", "date"]).time_ms.rank(method="first")
    scores = {**{name: df[col] for name, col in FEATURES.items()}, "position in the user's day": order}
    y, users = df.label_like.to_numpy(), df.user_id.to_numpy()
    for name, score in scores.items():
        s = score.to_numpy().astype(float)
        g = gauc_np(users, y, s)
        rows.append({"feature": name, "auc": auc_np(y, s), "gauc": float(g.value), "users": g.n_users_used,
                     "rows": g.n_rows_used})
    return pd.DataFrame(rows)


def rate_moves(df: pd.DataFrame) -> tuple[float, float]:
    """Mean change of the user's like-rate logit to the user's next impression, after a like and after none."""
    ordered = df.sort_values(["user_id", "time_ms"])
    col = FEATURES["user like rate"]
    step = ordered.groupby("user_id")[col].shift(-1) - ordered[col]
    return float(step[ordered.label_like == 1].mean()), float(step[ordered.label_like == 0].mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lake", required=True)
    p.add_argument("--examples-version", type=int, help="Delta version of examples (default: latest)")
    args = p.parse_args(argv)

    from pyspark.sql import functions as F

    from conf.settings import Settings
    from conf.spark import get_spark
    from conf.syntax import parse_dates

    settings = Settings().with_lake(args.lake)
    spark = get_spark(settings)
    reader = spark.read.format("delta")
    if args.examples_version is not None:
        reader = reader.option("versionAsOf", args.examples_version)
    days = parse_dates(VALID) + parse_dates(TEST)
    examples = reader.load(settings.lake.table_path("examples"))
    missing = [c for c in FEATURES.values() if c not in examples.columns]
    if missing:
        raise SystemExit(f"examples lack {missing}: build features with dense_stats=true")
    df = (examples.where(F.col("date").cast("string").isin(days))
          .select("user_id", "time_ms", F.col("date").cast("string").alias("date"), "label_like",
                  *FEATURES.values()).toPandas())
    after_like, after_none = rate_moves(df)
    print(f"user like-rate logit, change to the user's next impression: after a like {after_like:+.3f}, "
          f"after no like {after_none:+.3f}")
    for label, part in (("valid " + VALID, df[df.date.isin(parse_dates(VALID))]),
                        ("test " + TEST, df[df.date.isin(parse_dates(TEST))])):
        table = feature_table(part.reset_index(drop=True))
        print(f"\n{label}: like AUC / gAUC of single features ({int(np.max(table.users))} users with a like "
              f"and a non-like, {int(np.max(table.rows))} of their rows)")
        for r in table.itertuples():
            print(f"  {r.feature:<28} AUC {r.auc:.4f}   gAUC {r.gauc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
