"""build_features with request-time features and the entire space: staged per date, one commit,
the scratch folder gone, a rerun gives the same table; a bad choice is one line and exit 2."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "features"))

import feature_timeline as tl  # noqa: E402


def _lake(spark, settings, tmp_path_factory):
    from conf.lake import write_table
    from conf.tables import BRONZE_HISTORY, BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS

    s = settings.with_lake(str(tmp_path_factory.mktemp("space_lake")))
    log, users, videos, history = tl.bronze_frames(spark)
    for df, table in ((log, BRONZE_LOG), (users, BRONZE_USERS), (videos, BRONZE_VIDEOS), (history, BRONZE_HISTORY)):
        write_table(df, s, table)
    return s


def test_entire_space_build_commits_once_and_reruns_to_the_same_rows(spark, settings, tmp_path_factory, capsys):
    from pathlib import Path

    from delta.tables import DeltaTable

    from jobs.build_features import main

    s = _lake(spark, settings, tmp_path_factory)
    flags = ["--lake", s.lake.root, "--seq-len", str(tl.SEQ_LEN), "--feature", "exact_vocab_max_size=0",
             "--feature", "feature_time=request", "--feature", "exposure_negatives=2"]
    assert main(flags) == 0
    out = capsys.readouterr().out
    assert f"build_features: {len(tl.EVENTS)} rows + " in out and "unshown retrieval candidates" in out
    path = s.lake.table_path("examples")
    first = sorted(map(tuple, spark.read.format("delta").load(path).collect()))
    writes = [r for r in DeltaTable.forPath(spark, path).history().collect() if r["operation"] == "WRITE"]
    assert len(writes) == 1  # every date in one commit
    assert not any(Path(s.lake.staging).rglob("*.parquet"))  # the scratch files are gone
    names = spark.read.format("delta").load(path).columns
    assert "label_exposed" in names and "mask_exposed" in names
    assert main(flags) == 0
    assert sorted(map(tuple, spark.read.format("delta").load(path).collect())) == first
    # entire space without request-time features: refused before anything runs
    assert main(["--lake", s.lake.root, "--feature", "exposure_negatives=2"]) == 2
    assert "needs feature_time='request'" in capsys.readouterr().err
