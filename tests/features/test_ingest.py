"""The ingest and build_features jobs on tiny files: reconciliation, quarantine, idempotent reruns,
and the feature spec stored with the examples version."""
from __future__ import annotations

import datetime as dt
import gzip

import feature_timeline as tl
import pandas as pd
import pytest

from conf.schemas import RAW_LOG_SCHEMA, RAW_USER_SCHEMA, RAW_VIDEO_SCHEMA


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
    from conf.lake import current_version, read_table
    from conf.tables import EXAMPLES
    from features.examples import build_spec, load_feature_spec
    from jobs.build_features import main

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


# ---------------------------------------------------------------------------------------------
# bad raw files: each one clear error, or counted where the user looks (an isolated lake each)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def isettings(spark, settings, tmp_path):
    from dataclasses import replace

    database = "infnet_ingest_tests"
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    return replace(settings, lake=replace(settings.lake, root=str(tmp_path / "lake"), database=database))


def _write_log(path, rows: list[dict], extra: dict[str, str] | None = None) -> str:
    cols = [f.name for f in RAW_LOG_SCHEMA.fields] + list(extra or {})
    lines = [",".join(cols)] + [",".join(str({**r, **(extra or {})}[c]) for c in cols) for r in rows]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def _ingest_body(settings, sources, capsys=None, **changes):
    """The ingest job's body on ``settings`` (an isolated lake), ``sources`` with ``changes``."""
    import argparse

    from pyspark.sql import SparkSession

    from jobs.ingest import body

    dates = changes.pop("dates", None)
    args = argparse.Namespace(dates=dates, **{k: str(v) for k, v in {**sources, **changes}.items()})
    body(SparkSession.getActiveSession(), settings, args)
    return capsys.readouterr().out if capsys else None


def test_an_empty_raw_file_says_empty(isettings, sources, tmp_path):
    from jobs.common import JobError

    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(JobError) as info:
        _ingest_body(isettings, sources, log=tmp_path / "empty.csv")
    assert str(info.value) == f"bronze_log: {tmp_path / 'empty.csv'} is empty (no header line)"
    header_only = tmp_path / "users.csv"
    header_only.write_text(",".join(f.name for f in RAW_USER_SCHEMA.fields) + "\n")
    with pytest.raises(JobError, match=r"bronze_users: .*users.csv has no data rows; bronze_users is left as it was"):
        _ingest_body(isettings, sources, users=header_only)


def test_a_truncated_gzip_is_one_clear_error(isettings, sources, tmp_path):
    from jobs.common import JobError

    rows = [dict(tl.log_rows()[i % len(tl.EVENTS)], video_id=1000 + i) for i in range(3000)]
    data = (tmp_path / "full.csv.gz")
    _write_log(data, rows)
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(JobError) as info:
        _ingest_body(isettings, sources, log=cut)
    message = str(info.value)
    assert message.startswith(f"bronze_log: cannot read {cut}: ") and "\n" not in message, message
    assert "Unexpected end of input stream" in message


def test_unknown_columns_and_mismatched_dates_are_counted(spark, isettings, sources, tmp_path, capsys):
    from conf.lake import read_table
    from conf.tables import BRONZE_LOG, INGEST_AUDIT, QUARANTINE

    rows = tl.log_rows()
    # the real log stamps events up to 2.2 h before Beijing midnight with the next day: kept
    early = dict(rows[0], date=20220426, time_ms=tl.DAY0 + 86_400_000 - 90 * 60_000, video_id=77)
    late = dict(rows[0], date=20220426, video_id=78)  # stamped 04-26 but happened on 04-25 00:00:01
    log = _write_log(tmp_path / "log.csv.gz", rows + [early, late], extra={"surprise": "x", "device": "ios"})
    out = _ingest_body(isettings, sources, capsys, log=log)
    assert ("bronze_log: read 13 = landed 12 + quarantined 1  [dates 2022-04-25,2022-04-26]  "
            "ignored raw columns: device,surprise") in out
    bronze = read_table(spark, isettings, BRONZE_LOG)
    assert {r.video_id: str(r.date) for r in bronze.where("video_id IN (77, 78)").collect()} == {77: "2022-04-26"}
    bad = read_table(spark, isettings, QUARANTINE).where("source_table = 'bronze_log'").collect()
    assert [(b.reason, b.source_row) for b in bad] == [("date_time_mismatch:date", 13)]
    audit = {r.table_name: r for r in read_table(spark, isettings, INGEST_AUDIT).collect()}
    assert audit["bronze_log"].ignored_columns == "device,surprise"
    assert audit["bronze_users"].ignored_columns is None and audit["bronze_log"].reconciled


def test_an_audit_table_of_an_older_lake_gains_the_new_column(spark, isettings, sources):
    from conf.lake import read_table, upgrade_lake, write_table
    from conf.schemas import INGEST_AUDIT_SCHEMA, schema_of
    from conf.tables import INGEST_AUDIT

    old = schema_of([f for f in INGEST_AUDIT_SCHEMA.fields if f.name != "ignored_columns"])
    row = ("old-run", "bronze_log", "f", None, 1, 1, 0, True, dt.datetime(2022, 1, 1))
    write_table(spark.createDataFrame([row], old), isettings, INGEST_AUDIT)
    assert upgrade_lake(spark, isettings) == ["ingest_audit.ignored_columns"]  # what run_job does first
    _ingest_body(isettings, sources)
    audit = read_table(spark, isettings, INGEST_AUDIT)
    assert audit.count() == 5 and audit.where("run_id = 'old-run' AND ignored_columns IS NULL").count() == 1


def test_a_requested_date_absent_from_the_log_is_refused(spark, isettings, sources):
    from conf.lake import table_exists
    from conf.tables import BRONZE_LOG
    from jobs.common import JobError

    with pytest.raises(JobError, match=r"bronze_log: .*log.csv.gz has no rows dated 2022-04-27 "):
        _ingest_body(isettings, sources, dates=["2022-04-25", "2022-04-27"])
    assert not table_exists(spark, isettings, BRONZE_LOG)  # nothing was replaced with nothing
