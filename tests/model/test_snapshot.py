"""Pinning ``examples`` at a Delta version (model/snapshot.py): the version's files, the date
filter, refusal of deletion vectors."""
from __future__ import annotations

import pytest

from features.spec import demo_spec
from model.loaders import iter_record_batches
from model.snapshot import SnapshotError, resolve_snapshot
from model.synthetic import synthetic_examples


def _ids(snapshot) -> list[str]:
    return sorted(i for rb in iter_record_batches(snapshot, ["impression_id"]) for i in rb.column(0).to_pylist())


def test_snapshot_pins_the_delta_version(spark, examples):
    days = examples["days"]
    old = resolve_snapshot(spark, examples["path"], 0, [days[1]])
    new = resolve_snapshot(spark, examples["path"], 1, [days[1]])
    assert old.num_rows == 30 and new.num_rows == 10
    assert _ids(old) == sorted(examples["v0_day"]["impression_id"].to_pylist())
    assert _ids(new) == sorted(examples["v1_day"]["impression_id"].to_pylist())


def test_snapshot_filters_dates(spark, examples):
    days = examples["days"]
    snap = resolve_snapshot(spark, examples["path"], 1, [days[0], days[2]])
    dates = {d.isoformat() for rb in iter_record_batches(snap, ["date"]) for d in rb.column(0).to_pylist()}
    assert dates == {days[0], days[2]} and snap.num_rows == 60
    assert all(f"date={days[1]}" not in f for f in snap.files)
    with pytest.raises(SnapshotError, match="no rows"):
        resolve_snapshot(spark, examples["path"], 1, ["2022-05-01"])


def test_deletion_vectors_are_refused(spark, settings, write_delta):
    day = ["2022-04-25"]
    path = settings.lake.table_path("examples_model_dv_test")
    write_delta(spark, synthetic_examples(demo_spec(seq_len=4), 20, day, seed=5), path)
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    spark.sql(f"DELETE FROM delta.`{path}` WHERE user_id % 2 = 0")
    resolve_snapshot(spark, path, 1, day)  # before the delete: fine
    with pytest.raises(SnapshotError, match="deletion vectors"):
        resolve_snapshot(spark, path, 2, day)
