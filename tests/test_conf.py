"""The shared core: settings, table writes with replaceWhere, catalog registration."""
from conf.lake import current_version, read_table, write_table
from conf.tables import ALL_TABLES, TableDef


def test_table_names_are_unique():
    names = [t.name for t in ALL_TABLES]
    assert len(names) == len(set(names))


def test_rerun_of_a_slice_replaces_it_and_is_visible_by_name(spark, settings):
    table = TableDef("t_conf_probe", ("k",), ("date",))
    day1 = spark.createDataFrame([(1, "2022-05-01"), (2, "2022-05-01")], "k long, date string")
    day2 = spark.createDataFrame([(3, "2022-05-02")], "k long, date string")
    write_table(day1, settings, table, {"date": "2022-05-01"})
    write_table(day2, settings, table, {"date": "2022-05-02"})
    write_table(day1, settings, table, {"date": "2022-05-01"})  # rerun: replace, never duplicate
    assert read_table(spark, settings, table).count() == 3
    assert spark.sql(f"SELECT count(*) FROM {settings.lake.database}.t_conf_probe").first()[0] == 3
    assert read_table(spark, settings, table, version=0).count() == 2
    assert current_version(spark, settings, table) == 2


def test_a_table_moved_to_another_lake_is_re_pointed_in_the_catalog(spark, settings, tmp_path):
    from dataclasses import replace

    table = TableDef("t_conf_moved", ("k",))
    other = replace(settings, lake=replace(settings.lake, root=str(tmp_path / "other_lake")))
    write_table(spark.createDataFrame([(1,)], "k long"), settings, table)
    write_table(spark.createDataFrame([(1,), (2,)], "k long"), other, table)
    assert spark.sql(f"SELECT count(*) FROM {settings.lake.database}.t_conf_moved").first()[0] == 2


def test_session_conf_puts_the_previous_value_back_even_when_the_block_fails(spark):
    import pytest

    from conf.spark import session_conf

    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    with pytest.raises(RuntimeError):
        with session_conf(spark, key, "7"):
            assert spark.conf.get(key) == "7"
            raise RuntimeError("scoring failed")
    assert spark.conf.get(key) == before
    unset_key = "spark.infnet.test.unset"
    with session_conf(spark, unset_key, "x"):
        assert spark.conf.get(unset_key) == "x"
    assert spark.conf.get(unset_key, None) is None
