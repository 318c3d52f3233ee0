"""Shared fixtures of the model tests: a hand-built examples Delta table, written once per session."""
from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from features.spec import demo_spec
from model.synthetic import synthetic_examples

DAYS = ["2022-04-25", "2022-04-26", "2022-04-27"]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core box: one intra-op thread is ~10x faster than two (modules opt in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_examples(spark, table: pa.Table, path: str, replace_date: str | None = None) -> None:
    """``table`` as a Delta table partitioned by ``date`` (overwrite, or replace one day)."""
    writer = spark.createDataFrame(table).write.format("delta").partitionBy("date")
    if replace_date is None:
        writer.mode("overwrite").save(path)
    else:
        writer.mode("overwrite").option("replaceWhere", f"date = '{replace_date}'").save(path)


@pytest.fixture(scope="session")
def write_delta():
    """:func:`write_examples`, for tests that write tables of their own."""
    return write_examples


@pytest.fixture(scope="session")
def examples(spark, settings):
    """A hand-built examples table: version 0 = three days (``days``), version 1 = 04-26 rewritten.

    Sequences are written with lengths 0..6 around ``max_len`` = 4 (the loader must pad and
    truncate whatever it gets).
    """
    path = settings.lake.table_path("examples_model_data_test")
    v0 = synthetic_examples(demo_spec(seq_len=6), 90, DAYS, seed=1)
    write_examples(spark, v0, path)
    day = v0.filter(pa.compute.equal(v0["date"], pa.scalar(pa.scalar(DAYS[1]).cast(pa.date32()))))
    v1 = synthetic_examples(demo_spec(seq_len=6), 10, [DAYS[1]], seed=2)
    write_examples(spark, v1, path, replace_date=DAYS[1])
    return {"path": path, "days": DAYS, "v0": v0, "v0_day": day, "v1_day": v1}
