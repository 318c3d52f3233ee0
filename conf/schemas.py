"""Spark schemas of the tables whose rows the jobs build themselves (not derived from a DataFrame).

Table names, keys and partitioning live in :mod:`conf.tables`; this module holds the column types.
"""
from __future__ import annotations

from pyspark.sql import types as T

QUALITY_RESULTS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("table_name", T.StringType(), False),
    T.StructField("partition", T.StringType(), False),
    T.StructField("suite", T.StringType(), False),
    T.StructField("expectation", T.StringType(), False),
    T.StructField("column", T.StringType(), True),
    T.StructField("severity", T.StringType(), False),
    T.StructField("status", T.StringType(), False),  # passed | failed | error (could not evaluate)
    T.StructField("success", T.BooleanType(), False),
    T.StructField("unexpected_count", T.LongType(), True),
    T.StructField("element_count", T.LongType(), True),
    T.StructField("observed", T.StringType(), True),
    T.StructField("sample_values", T.StringType(), True),  # JSON list of offending values
    T.StructField("check", T.StringType(), True),
    T.StructField("error", T.StringType(), True),
    T.StructField("evaluated_at", T.TimestampType(), False),
])
