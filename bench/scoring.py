"""Scoring benchmarks, every ratio measured side by side in one run (issues 4 and 12).

1. Spark (``mapInArrow`` and ``mapInPandas`` on ``local[T]``) vs the same model called directly
   in one Python process with ``T`` torch threads, both reading the same Parquet file of synthetic
   featurised candidates (goal: packed Spark >= 0.9x direct at 200 candidates per request), for
   both input layouts: ``packed`` (one row per request, the user side once: what ``infnet score``
   sends) and ``flat`` (one row per candidate); plus ``mapInArrow`` that only receives the rows,
   which shows what Spark's side (Parquet scan, row -> Arrow conversion, transfer) costs, and
   Spark packing flat rows itself (``pack_requests``: a shuffle) before scoring.
2. User-side reuse vs naive, ``--per-request`` candidates per request (default 200; goal >= 5x at
   1 thread), with ``T`` torch threads and with 1 (what one Spark task runs: ``spark.task.cpus`` = 1
   -> OMP_NUM_THREADS = 1).
3. Candidates per model call (in process, packed): the rate at several call sizes (what
   ``RankingSettings.cpu_batch_candidates`` is chosen from), and at ``--call-candidates`` (default
   65,536, the GPU default) the end-to-end path (Arrow batch -> predictions: conversion, user
   state, model) vs the model alone on tensors already built (goal: end to end >= 50 % of the
   model-alone rate).
4. INFNet vs MMoE vs PLE scoring cost on the same candidates.

Candidates are synthetic rows with the real feature spec's shape (``features.examples.build_spec``):
the point here is the scoring path, not the feature build. Usage::

    .venv/bin/python -m bench.scoring            # 1M candidates, 200 per request
    .venv/bin/python -m bench.scoring --quick    # 100k candidates
    .venv/bin/python -m bench.scoring --device cuda   # on a GPU machine
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from conf.settings import Settings
from features.candidates import pack_adjacent_rows, pack_requests, unpack_requests
from features.examples import build_spec
from features.spec import FeatureSpec
from model.predict import get_predictor
from model.registry import build_model
from model.base import candidate_field_indices, user_field_indices
from model.data import categorical_matrix, dense_matrix, sequence_tensors
from model.scoring import (ScoringSettings, make_batch_scorer, output_schema_ddl, score_packed_batch,
                           score_record_batch)
from model.store import ModelStore

PASSTHROUGH = ["request_id", "impression_id"]


def synthetic_candidates(spec: FeatureSpec, n_rows: int, per_request: int, seed: int = 0) -> pa.Table:
    """``n_rows`` featurised candidates, ``per_request`` per request sharing one user side."""
    rng = np.random.default_rng(seed)
    n_requests = -(-n_rows // per_request)
    request_of_row = np.repeat(np.arange(n_requests), per_request)[:n_rows]
    cols: dict[str, pa.Array] = {
        "request_id": pa.array(np.char.add("r", request_of_row.astype(str))),
        "impression_id": pa.array(np.char.add("i", np.arange(n_rows).astype(str))),
    }
    for field in spec.categorical:
        per = n_requests if field.side == "user" else n_rows
        values = rng.integers(0, field.vocab_size, per, dtype=np.int32)
        cols[field.column] = pa.array(values[request_of_row] if field.side == "user" else values)
    for s in spec.sequences:
        lengths = rng.integers(0, s.max_len + 1, n_requests)[request_of_row]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        items = rng.integers(1, s.vocab_size, offsets[-1], dtype=np.int32)
        gaps = np.abs(rng.normal(8, 2, offsets[-1])).astype(np.float32)
        cols[s.column] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(items))
        cols[s.gap_column] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(gaps))
    for d in spec.dense:
        per = n_requests if d.side == "user" else n_rows
        values = rng.normal(0, 1, per).astype(np.float32)
        cols[d.column] = pa.array(values[request_of_row] if d.side == "user" else values)
    return pa.table(cols)


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def direct(store: str, ref: str, path: str, n_candidates: int, batch_rows: int, reuse: bool, device: str,
           layout: str = "flat") -> float:
    """Candidates/s of the model called in this process, reading the same Parquet file batch by batch.

    ``batch_rows`` counts file rows: candidates for ``flat``, requests for ``packed``.
    """
    predictor = get_predictor(store, ref, device)
    source = pq.ParquetFile(path)

    def score(batch: pa.RecordBatch) -> None:
        if layout == "packed":
            score_packed_batch(predictor, batch, reuse_user_side=reuse)
        else:
            score_record_batch(predictor, batch, reuse_user_side=reuse)

    score(next(source.iter_batches(batch_size=batch_rows)))  # warm-up
    t0 = time.perf_counter()
    for b in source.iter_batches(batch_size=batch_rows):
        score(b)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return rate(n_candidates, time.perf_counter() - t0)


def packed_calls(path: str, per_request: int, call_candidates: int, max_calls: int) -> list[pa.RecordBatch]:
    """Up to ``max_calls`` packed batches of about ``call_candidates`` candidates from the packed file."""
    table = pq.read_table(path).combine_chunks()
    n_requests = max(call_candidates // per_request, 1)
    calls = table.to_batches(max_chunksize=n_requests)[:max_calls]
    return [b for b in calls if b.num_rows == n_requests] or calls[:1]


def call_size_rate(store: str, ref: str, calls: list[pa.RecordBatch], device: str) -> float:
    """Candidates/s of score_packed_batch over ``calls`` (after one warm-up call)."""
    predictor = get_predictor(store, ref, device)
    score_packed_batch(predictor, calls[0])
    n = sum(len(c.column("candidates").flatten()) for c in calls)
    t0 = time.perf_counter()
    for c in calls:
        score_packed_batch(predictor, c)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return rate(n, time.perf_counter() - t0)


@torch.no_grad()
def model_alone_rate(store: str, ref: str, calls: list[pa.RecordBatch], device: str) -> float:
    """Candidates/s of the model alone on the same calls: the inputs are converted and moved to
    the device first (untimed), then only ``encode_user`` + the candidate part run (timed)."""
    predictor = get_predictor(store, ref, device)
    model, spec = predictor.model, predictor.spec
    user_fields = list(user_field_indices(spec))
    inputs = []
    for c in calls:
        rows, user_index = unpack_requests(c)
        seq, gap = sequence_tensors(c, spec)
        user = {"cat_user": torch.from_numpy(categorical_matrix(c, spec, user_fields)[:, user_fields]).to(device),
                "seq": seq.to(device), "seq_gap": gap.to(device)}
        candidates = {"cat": torch.from_numpy(categorical_matrix(rows, spec, candidate_field_indices(spec))).to(device)}
        if spec.dense:
            candidates["dense"] = dense_matrix(rows, spec).to(device)
        inputs.append((user, candidates, torch.from_numpy(user_index).to(device)))

    def run(user, candidates, index):
        return model(candidates, user_state=model.encode_user(user), user_index=index).cpu()

    run(*inputs[0])
    n = sum(len(i[2]) for i in inputs)
    t0 = time.perf_counter()
    for i in inputs:
        run(*i)
    return rate(n, time.perf_counter() - t0)


def _drain(batches):
    """A mapInArrow function that scores nothing: what moving the rows to Python costs."""
    for _ in batches:
        pass
    return iter(())


def spark_rate(spark, path: str, n_candidates: int, store: str, ref: str, spec: FeatureSpec, udf: str,
               batch_rows: int, device: str, layout: str = "flat", pack_in_spark: bool = False) -> float:
    """Candidates/s of ``udf`` ("arrow", "pandas", or "transfer": mapInArrow that only receives the rows).

    ``pack_in_spark``: read the flat file and pack it with :func:`pack_requests` (a shuffle) first.
    """
    df = spark.read.parquet(path)
    if pack_in_spark:
        df = pack_requests(df, spec, PASSTHROUGH)
    ddl = output_schema_ddl(spec, PASSTHROUGH)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))

    def mapped(rows):
        if udf == "transfer":
            return rows.mapInArrow(_drain, ddl)
        scorer = make_batch_scorer(store, ref, PASSTHROUGH,
                                   ScoringSettings(batch_rows=batch_rows, udf=udf, device=device, layout=layout))
        return rows.mapInPandas(scorer, ddl) if udf == "pandas" else rows.mapInArrow(scorer, ddl)

    # warm-up on a 1 % sample with the same partitions: every worker starts and loads the model
    mapped(df.sample(fraction=0.01, seed=0)).write.format("noop").mode("overwrite").save()
    t0 = time.perf_counter()
    mapped(df).write.format("noop").mode("overwrite").save()
    return rate(n_candidates, time.perf_counter() - t0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100k rows")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="Spark tasks = torch threads")
    parser.add_argument("--per-request", type=int, default=200)
    parser.add_argument("--batch-rows", type=int, default=1024)
    parser.add_argument("--call-candidates", type=int, default=65_536,
                        help="candidates per model call of the end-to-end vs model-alone ratio (default 65,536)")
    parser.add_argument("--call-sizes", default="256,1024,4096,16384",
                        help="candidates per call compared in process (default 256,1024,4096,16384)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-spark", action="store_true")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with the JVM's output
    n_rows = 100_000 if args.quick else args.rows

    spec = build_spec(Settings())
    work = tempfile.mkdtemp(prefix="bench-scoring-")
    store = os.path.join(work, "models")
    for name in ("infnet", "mmoe", "ple"):
        ModelStore(store).save(name, build_model(name, spec, seed=0), spec, architecture=name)
    table = synthetic_candidates(spec, n_rows, args.per_request)
    flat = os.path.join(work, "candidates.parquet")
    packed = os.path.join(work, "requests.parquet")
    pq.write_table(table, flat, row_group_size=max(n_rows // (4 * args.threads), 1024))
    requests = pack_adjacent_rows(table, spec, PASSTHROUGH)
    pq.write_table(requests, packed, row_group_size=max(requests.num_rows // (4 * args.threads), 16))
    del table, requests  # every path reads the files
    request_batch = max(args.batch_rows // args.per_request, 1)  # packed batches of ~batch_rows candidates
    print(f"{n_rows:,} synthetic candidates, {args.per_request}/request, spec with {len(spec.categorical)} "
          f"categorical fields and {len(spec.sequences)} sequences of {spec.sequences[0].max_len}; "
          f"batch {args.batch_rows} rows ({request_batch} requests when packed), device {args.device}, "
          f"{args.threads} threads; files: flat {os.path.getsize(flat) / 2**20:,.0f} MiB, "
          f"packed {os.path.getsize(packed) / 2**20:,.0f} MiB")

    torch.set_num_threads(args.threads)
    results: dict[str, float] = {}
    results["direct reuse"] = direct(store, "infnet@1", flat, n_rows, args.batch_rows, True, args.device)
    results["direct naive"] = direct(store, "infnet@1", flat, n_rows, args.batch_rows, False, args.device)
    print(f"\n[reuse] INFNet in one process, {args.threads} torch threads, {args.per_request} candidates per "
          f"request: user-side reuse {results['direct reuse']:,.0f} rows/s, naive {results['direct naive']:,.0f} "
          f"rows/s -> {results['direct reuse'] / results['direct naive']:.2f}x")
    if args.threads > 1:
        # What one Spark task runs: PySpark gives a Python worker OMP_NUM_THREADS = spark.task.cpus
        # (default 1) and the scoring UDF keeps it, so executors parallelise over tasks, not inside one.
        torch.set_num_threads(1)
        one = {reuse: direct(store, "infnet@1", flat, n_rows, args.batch_rows, reuse, args.device)
               for reuse in (True, False)}
        torch.set_num_threads(args.threads)
        print(f"[reuse] the same with 1 torch thread (one Spark task with spark.task.cpus=1): reuse {one[True]:,.0f} "
              f"rows/s, naive {one[False]:,.0f} rows/s -> {one[True] / one[False]:.2f}x (goal >= 5x at 200 per request)")
    results["direct packed"] = direct(store, "infnet@1", packed, n_rows, request_batch, True, args.device, "packed")
    print(f"[layout] INFNet in one process reading the packed file: {results['direct packed']:,.0f} candidates/s "
          f"({results['direct packed'] / results['direct reuse']:.2f}x the flat file with reuse)")

    print(f"\n[calls] INFNet in one process, packed, {args.threads} torch threads: candidates/s by candidates "
          "per model call")
    for size in (int(v) for v in args.call_sizes.split(",") if v):
        calls = packed_calls(packed, args.per_request, size, max_calls=max(4, 65_536 // size))
        print(f"  {size:>7,} per call: {call_size_rate(store, 'infnet@1', calls, args.device):>10,.0f} candidates/s")
    calls = packed_calls(packed, args.per_request, args.call_candidates, max_calls=4)
    n_call = len(calls[0].column("candidates").flatten())
    end_to_end = call_size_rate(store, "infnet@1", calls, args.device)
    alone = model_alone_rate(store, "infnet@1", calls, args.device)
    print(f"[calls] {n_call:,} candidates per call ({len(calls)} calls): end to end (Arrow batch -> predictions) "
          f"{end_to_end:,.0f} candidates/s, model alone on built tensors {alone:,.0f} -> {end_to_end / alone:.2f} "
          "of the model-alone rate (goal >= 0.5)")

    print("\n[models] direct, flat, user-side reuse, rows/s and cost relative to INFNet:")
    for name in ("infnet", "mmoe", "ple"):
        r = results["direct reuse"] if name == "infnet" else direct(store, f"{name}@1", flat, n_rows, args.batch_rows,
                                                                    True, args.device)
        params = sum(p.numel() for p in get_predictor(store, f"{name}@1", args.device).model.parameters())
        print(f"  {name:<7} {r:>10,.0f} rows/s   {results['direct reuse'] / r:5.2f}x INFNet's time per row   "
              f"{params:,} params")

    if args.skip_spark:
        return
    from dataclasses import replace

    from conf.spark import get_spark

    base = Settings().with_lake(os.path.join(work, "lake"))
    settings = replace(base, spark=replace(base.spark, master=f"local[{args.threads}]",
                                           arrow_batch_rows=args.batch_rows))
    spark = get_spark(settings, "bench-scoring")

    def run(label: str, path: str, udf: str, layout: str, baseline: str, pack_in_spark: bool = False) -> None:
        # about 2 splits per task whatever the file's size (the packed file is much smaller)
        spark.conf.set("spark.sql.files.maxPartitionBytes", str(max(os.path.getsize(path) // (2 * args.threads), 1)))
        batch = request_batch if layout == "packed" else args.batch_rows
        r = spark_rate(spark, path, n_rows, store, "infnet@1", spec, udf, batch, args.device, layout, pack_in_spark)
        print(f"  {label:<58} {r:>9,.0f} candidates/s -> {r / results[baseline]:.2f}x {baseline}"
              + ("" if udf == "transfer" else " (goal >= 0.9x packed, 0.8x flat)"))

    print(f"\n[spark] local[{args.threads}] vs the same model in one process with {args.threads} torch threads "
          "on the same file:")
    run("packed file, mapInArrow (what infnet score runs)", packed, "arrow", "packed", "direct packed")
    run("packed file, mapInPandas", packed, "pandas", "packed", "direct packed")
    run("flat file, mapInArrow", flat, "arrow", "flat", "direct reuse")
    run("flat file, mapInPandas", flat, "pandas", "flat", "direct reuse")
    run("flat file packed by Spark (pack_requests shuffle), mapInArrow", flat, "arrow", "packed", "direct packed",
        pack_in_spark=True)
    print("  Spark's own share: mapInArrow receiving the rows without scoring them")
    run("packed file, receive only", packed, "transfer", "packed", "direct packed")
    run("flat file, receive only", flat, "transfer", "flat", "direct reuse")
    spark.stop()


if __name__ == "__main__":
    main()
