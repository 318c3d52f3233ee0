"""Candidate sets: one row per (request, candidate video), the contract in conf.tables.CANDIDATES_SCHEMA.

Three sources share the contract (column ``source``): ``logged`` builds requests from logged
impressions (offline replay: a user's impressions inside one fixed window of ``window_minutes``
form one request whose time is the window's first impression), ``retrieval`` is the Spark
retrieval stage (features/retrieval.py) and ``external`` an import of another system's candidate
sets (features/external_candidates.py). In every source all candidates of a request share one
user and one request time, so they are featurised at the same moment (events strictly before it)
and share the user side.

Scoring reads featurised candidates *packed by request* (:func:`pack_requests`): one row per
request holding the user side once (user fields, behaviour sequences) and the candidates as a
``list<struct>`` column. Flat rows would carry the same sequences once per candidate, and moving
them from the JVM to the Python workers was the largest cost of Spark scoring (bench/scoring.py).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from conf.schemas import CANDIDATE_SOURCES, CANDIDATES_SCHEMA
from conf.settings import CandidateSettings
from features.spec import FeatureSpec

REQUEST_COLUMN = "request_id"
T_COL = "request_time_ms"  # the request time (epoch ms), shared by every candidate of a request
PACKED_CANDIDATES = "candidates"  # the list<struct> column of the request-packed layout


def packed_layout(spec: FeatureSpec, passthrough: Sequence[str],
                  request_column: str = REQUEST_COLUMN) -> tuple[list[str], list[str]]:
    """(request-level columns, per-candidate columns) of the request-packed scoring layout.

    Request level: the request key, the user-side categorical fields and the sequence columns
    (equal for every candidate of a request). Per candidate: the other passthrough columns, the
    item / context fields and the dense values (the models read those per row, like ``cat``).

    >>> from features.spec import demo_spec
    >>> packed_layout(demo_spec(), ["request_id", "impression_id"])[1]
    ['impression_id', 'cat_video_id', 'cat_author_id', 'cat_hour', 'cat_tab']
    """
    user = [f.column for f in spec.categorical if f.side == "user"]
    sequences = [c for s in spec.sequences for c in (s.column, s.gap_column)]
    per_candidate = [c for c in passthrough if c != request_column]
    per_candidate += [f.column for f in spec.categorical
                      if f.side != "user" and f.column not in per_candidate]
    per_candidate += [f.column for f in spec.dense if f.column not in per_candidate]  # read per row by the models
    return [request_column, *[c for c in user + sequences if c not in per_candidate]], per_candidate


def pack_requests(rows: DataFrame, spec: FeatureSpec, passthrough: Sequence[str],
                  request_column: str = REQUEST_COLUMN, max_candidates_per_row: int | None = None) -> DataFrame:
    """Featurised candidate rows -> one row per request (:func:`packed_layout`).

    The request-level columns are taken from one of the request's rows: they are equal for all
    of them because every candidate of a request is featurised at the request time. A request
    with more than ``max_candidates_per_row`` candidates becomes several rows
    (:func:`split_large_requests`).
    """
    request_columns, per_candidate = packed_layout(spec, passthrough, request_column)
    packed = rows.groupBy(request_column).agg(
        *[F.first(c).alias(c) for c in request_columns[1:]],
        F.collect_list(F.struct(*per_candidate)).alias(PACKED_CANDIDATES),
    )
    return split_large_requests(packed, max_candidates_per_row)


def split_large_requests(packed: DataFrame, max_candidates_per_row: int | None) -> DataFrame:
    """Rows of a request-packed frame holding more than ``max_candidates_per_row`` candidates are
    cut into consecutive rows of at most that many, each with a copy of the request columns:
    a request too big for one row is split, never dropped or truncated (2,500 candidates with a
    cap of 1,000 -> rows of 1,000, 1,000 and 500).
    """
    if not max_candidates_per_row:
        return packed
    m = int(max_candidates_per_row)
    n = F.size(PACKED_CANDIDATES)
    pieces = F.sequence(F.lit(0), F.greatest(F.ceil(n / F.lit(m)).cast("int") - 1, F.lit(0)))
    others = [c for c in packed.columns if c != PACKED_CANDIDATES]
    return (packed.select(*others, PACKED_CANDIDATES, F.explode(pieces).alias("_piece"))
            .select(*others, F.slice(PACKED_CANDIDATES, F.col("_piece") * m + 1, m).alias(PACKED_CANDIDATES)))


def conform_candidates(df: DataFrame) -> DataFrame:
    """Select and cast to the contract's columns, in its order (absent optional columns are null)."""
    return df.select(*[
        (F.col(f.name) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name)
        for f in CANDIDATES_SCHEMA.fields
    ])


def candidates_from_impressions(log: DataFrame, window_minutes: int = CandidateSettings.logged_window_minutes) -> DataFrame:
    """Group a bronze log slice into requests (source ``logged``).

    ``request_id`` is a deterministic hash of (user_id, window start), so rebuilding a date gives
    the same ids.
    """
    window_ms = int(window_minutes) * 60_000
    bucket = F.floor(F.col("time_ms") / F.lit(window_ms))
    with_request = log.withColumn(
        "request_id", F.sha2(F.concat_ws(":", F.lit("req"), F.col("user_id"), bucket), 256).substr(1, 24)
    )
    request_time = with_request.groupBy("request_id").agg(F.min("time_ms").alias("request_time_ms"))
    out = with_request.join(request_time, "request_id").withColumn("source", F.lit("logged"))
    return conform_candidates(out)


def pack_adjacent_rows(rows: pa.Table | pa.RecordBatch, spec: FeatureSpec, passthrough: Sequence[str],
                       request_column: str = REQUEST_COLUMN) -> pa.Table:
    """The Arrow twin of :func:`pack_requests` for rows whose requests are contiguous (no shuffle).

    >>> from features.spec import demo_spec
    >>> spec = demo_spec()
    >>> flat = pa.table({"request_id": ["a", "a", "b"], "impression_id": ["1", "2", "3"],
    ...                  **{f.column: [f.vocab_size - 1] * 3 for f in spec.categorical},
    ...                  **{c: [[1], [1], [2]] for s in spec.sequences for c in (s.column, s.gap_column)}})
    >>> packed = pack_adjacent_rows(flat, spec, ["request_id", "impression_id"])
    >>> packed.num_rows, packed.column("candidates").to_pylist()[0][1]["impression_id"]
    (2, '2')
    """
    table = pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows
    request_columns, per_candidate = packed_layout(spec, passthrough, request_column)
    keys = table.column(request_column).combine_chunks()
    changes = np.flatnonzero(pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)).to_numpy(zero_copy_only=False))
    starts = np.concatenate([[0], changes + 1]) if len(keys) else np.zeros(0, np.int64)
    if len(np.unique(keys.take(pa.array(starts)).to_numpy(zero_copy_only=False))) != len(starts):
        raise ValueError(f"rows of one {request_column} are not adjacent: sort them first (or use pack_requests)")
    offsets = pa.array(np.concatenate([starts, [len(keys)]]).astype(np.int32))
    candidates = pa.StructArray.from_arrays([table.column(c).combine_chunks() for c in per_candidate],
                                            names=per_candidate)
    columns = [table.column(c).combine_chunks().take(pa.array(starts)) for c in request_columns]
    return pa.table([*columns, pa.ListArray.from_arrays(offsets, candidates)],
                    names=[*request_columns, PACKED_CANDIDATES])


def unpack_requests(data: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray]:
    """A request-packed batch -> (its candidates as flat rows, the request row of each candidate).

    >>> cands = pa.array([[{"video_id": 1}, {"video_id": 2}], [{"video_id": 3}]])
    >>> rows, request_row = unpack_requests(pa.RecordBatch.from_arrays([pa.array(["r1", "r2"]), cands],
    ...                                                               [REQUEST_COLUMN, PACKED_CANDIDATES]))
    >>> rows.column("video_id").to_pylist(), request_row.tolist()
    ([1, 2, 3], [0, 0, 1])
    """
    packed = data.column(PACKED_CANDIDATES)
    rows = pa.RecordBatch.from_struct_array(pc.list_flatten(packed))
    return rows, pc.list_parent_indices(packed).to_numpy(zero_copy_only=False).astype(np.int64)  # writable copy


def records_per_arrow_batch(layout: str, candidates_per_batch: int, n_candidates: int, n_requests: int) -> int:
    """Spark's ``arrow.maxRecordsPerBatch`` for about ``candidates_per_batch`` candidates per batch:
    records are candidates in the flat layout and requests in the packed one.

    >>> records_per_arrow_batch("packed", 1024, n_candidates=20_000, n_requests=100)  # 200 per request
    5
    >>> records_per_arrow_batch("flat", 1024, n_candidates=20_000, n_requests=100)
    1024
    """
    if layout != "packed":
        return candidates_per_batch
    per_request = max(n_candidates / max(n_requests, 1), 1.0)
    return max(round(candidates_per_batch / per_request), 1)


def validate_candidates(df: DataFrame) -> None:
    """Fail with a clear message when a table does not honour the candidates contract.

    Beyond the columns: no null keys, and every request has one user and one request time, which
    is what lets scoring encode a request's user side once (a request id reused for two users
    would otherwise score the second user's candidates with the first user's history).
    """
    missing = [f.name for f in CANDIDATES_SCHEMA.fields if f.name not in df.columns]
    if missing:
        raise ValueError(f"candidates table lacks required columns {missing}; contract: {CANDIDATES_SCHEMA.simpleString()}")
    required = [f.name for f in CANDIDATES_SCHEMA.fields if not f.nullable and f.name != "date"]
    known = F.col("source").isin(*CANDIDATE_SOURCES)
    counts = df.agg(*[F.sum(F.col(c).isNull().cast("long")).alias(c) for c in required],
                    F.sum((~known).cast("long")).alias("_unknown_source")).first()
    bad = {c: int(counts[c]) for c in required if counts[c]}
    if bad:
        raise ValueError(f"candidates has null values in required columns (rows per column): {bad}")
    if counts["_unknown_source"]:
        raise ValueError(f"candidates has {counts['_unknown_source']} rows whose source is not one of {CANDIDATE_SOURCES}")
    mixed = (df.groupBy(REQUEST_COLUMN)
             .agg(F.countDistinct("user_id").alias("users"), F.countDistinct("request_time_ms").alias("times"))
             .where("users > 1 OR times > 1"))
    example = mixed.orderBy(REQUEST_COLUMN).first()
    if example is not None:
        raise ValueError(
            f"{mixed.count()} request(s) of candidates mix users or request times, e.g. {REQUEST_COLUMN} "
            f"{example[REQUEST_COLUMN]!r} ({example['users']} users, {example['times']} request times): "
            "a request is one user at one moment"
        )
