"""The ingest and build_features jobs on tiny files: reconciliation, quarantine, idempotent reruns,
and the feature spec stored with the examples version."""
from __future__ import annotations

import gzip

import pandas as pd
import pytest

import feature_timeline as tl
from conf.tables import RAW_LOG_SCHEMA, RAW_USER_SCHEMA, RAW_VIDEO_SCHEMA


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    cols = [f.name for f in RAW_LOG_SCHEMA.fields]
    lines = [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in tl.log_rows()]
    bad = dict(tl.log_rows()[0], is_click=3)
    lines.append(",".join(str(bad[c]) for c in cols))                         # label outside {0,1}
    lines.append(",".join(str(dict(bad, is_click=1, user_id="u9")[c]) for c in cols))  # bad number
    lines.append("1,2,3")                                                      # malformed line
    with gzip.open(d / "log.csv.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    users = pd.DataFrame([{f.name: None for f in RAW_USER_SCHEMA.fields} | {"user_id": u} for u in (1, 2, 2)])
    users.to_csv(d / "users.csv", index=False)
    videos = pd.DataFrame([{f.name: None for f in RAW_VIDEO_SCHEMA.fields} | {"video_id": v, "author_id": a}
                           for v, a in tl.VIDEOS])
    videos.to_csv(d / "videos.csv", index=False)
    pd.DataFrame([{"user_id": 1, "history_len": 3, "last_time_ms": tl.DAY0 - 10, "watch_seq": [90, 91],
                   "like_seq": [], "long_watch_seq": [91]}]).to_parquet(d / "history.parquet")
    return {"log": d / "log.csv.gz", "users": d / "users.csv", "videos": d / "videos.csv", "history": d / "history.parquet"}


def _ingest(settings, sources, *extra):
    from jobs.ingest import main

    flags = [f"--{k}={v}" for k, v in sources.items()]
    return main(["--lake", settings.lake.root, *flags, *extra])


def test_ingest_reconciles_quarantines_and_reruns_without_duplicates(spark, settings, sources):
    from pyspark.sql import functions as F

    from conf.lake import read_table
    from conf.tables import BRONZE_LOG, BRONZE_USERS, INGEST_AUDIT, QUARANTINE

    assert _ingest(settings, sources) == 0
    assert _ingest(settings, sources, "--date", "2022-04-25") == 0  # rerun of one date
    bronze = read_table(spark, settings, BRONZE_LOG)
    per_day = {str(r[0]): r[1] for r in bronze.groupBy("date").count().collect()}
    assert per_day == {"2022-04-25": len(tl.EVENTS) - 1, "2022-04-26": 1}
    assert bronze.select("impression_id").distinct().count() == len(tl.EVENTS)
    quarantine = read_table(spark, settings, QUARANTINE)
    reasons = sorted(r["reason"].split(";")[0] for r in quarantine.where("source_table = 'bronze_log'").collect())
    assert reasons == ["malformed_row", "not_binary:is_click", "unparseable:user_id"]
    assert quarantine.where("source_table = 'bronze_users'").first()["reason"] == "duplicate_key:user_id"
    assert read_table(spark, settings, BRONZE_USERS).count() == 2
    audit = read_table(spark, settings, INGEST_AUDIT)
    assert audit.count() == 8 and audit.where(~F.col("reconciled")).count() == 0
    last = audit.where("table_name = 'bronze_log' AND dates = '2022-04-25'").first()
    assert (last["rows_read"], last["rows_landed"], last["rows_quarantined"]) == (len(tl.EVENTS) - 1 + 3, len(tl.EVENTS) - 1, 3)


def test_build_features_stores_the_spec_with_the_version_and_is_deterministic(spark, settings, sources):
    from conf.lake import read_table
    from conf.tables import EXAMPLES
    from features.examples import build_spec, load_feature_spec
    from jobs.build_features import main

    from conf.lake import current_version

    assert main(["--lake", settings.lake.root]) == 0
    first_version = current_version(spark, settings, EXAMPLES)  # other tests may have written earlier versions
    first = {r["impression_id"]: r.asDict() for r in read_table(spark, settings, EXAMPLES).collect()}
    assert main(["--lake", settings.lake.root, "--date", "2022-04-26"]) == 0
    again = {r["impression_id"]: r.asDict() for r in read_table(spark, settings, EXAMPLES).collect()}
    assert again == first and len(first) == len(tl.EVENTS)
    spec = load_feature_spec(spark, settings)
    assert spec == build_spec(settings) and load_feature_spec(spark, settings, version=first_version) == spec
    props = spark.sql(f"SHOW TBLPROPERTIES delta.`{settings.lake.table_path('examples')}`").collect()
    assert {r[0]: r[1] for r in props}["infnet.feature_spec_fingerprint"] == spec.fingerprint()
    # a partial rebuild under a different spec is refused
    assert main(["--lake", settings.lake.root, "--date", "2022-04-26", "--seq-len", "7"]) == 2
