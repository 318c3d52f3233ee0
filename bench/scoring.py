"""Scoring benchmarks, every ratio measured side by side in one run (issues 4 and 12).

1. Spark (``mapInArrow`` and ``mapInPandas`` on ``local[T]``) vs the same model called directly
   in one Python process with ``T`` torch threads, both reading the same Parquet file of synthetic
   featurised candidates (goal: packed Spark >= 0.9x direct at 200 candidates per request), for
   both input layouts: ``packed`` (one row per request, the user side once: what ``infnet score``
   sends) and ``flat`` (one row per candidate); plus ``mapInArrow`` that only receives the rows,
   which shows what Spark's side (Parquet scan, row -> Arrow conversion, transfer) costs, and
   Spark packing flat rows itself (``pack_requests``: a shuffle) before scoring.
2. User-side reuse vs naive, ``--per-request`` candidates per request (default 200; goal >= 3x at
   1 thread), with ``T`` torch threads and with 1 (what one Spark task runs: ``spark.task.cpus`` = 1
   -> OMP_NUM_THREADS = 1), and at 1 thread the reuse path with INFNet's block-2 keys copied per
   candidate (``fold_sequence_gate = False``) beside the folded one (:class:`model.layers.GatedKeys`).
3. INFNet vs MMoE per candidate on the same packed calls (``--profile-candidates`` per call), the
   model alone, 1 thread, and where the time goes: exclusive time per stage (:class:`StageTimer`).
4. Candidates per model call (in process, packed, 1 thread): the rate at each of ``--call-sizes``
   (what ``RankingSettings.cpu_batch_candidates`` is chosen from), and at ``--call-candidates``
   (default 65,536, the GPU default) the end-to-end path (Arrow batch -> predictions: conversion,
   user state, model) vs the model alone on tensors already built (goal: end to end >= 50 % of the
   model-alone rate).
5. INFNet vs MMoE vs PLE scoring cost on the same flat rows.
6. HSTU's cost per candidate at ``--per-request`` candidates per request, side by side on the same
   rows (the first ``--hstu-rows`` of the flat file): M-FALCON (the history's layers once per
   request, the candidates appended as targets: the user-side reuse path) vs one candidate at a
   time (every candidate runs the whole history through the layers: the naive path) vs INFNet with
   user-side reuse.
7. Spark (above), unless ``--skip-spark``.

Every in-process figure is ``--repeats`` rounds (default 3) of all its arms in turn
(:func:`bench.figures.interleaved`): printed as median (min-max), a ratio taken per round before its
median. ``--json PATH`` writes them all (:class:`bench.figures.Figures`: ``cores``, load average,
settings, ``rates`` / ``ratios`` / ``seconds`` with their repeats, the per-stage profile), with the
medians a script checks at the top level: ``reuse_vs_naive_1thread``,
``infnet_vs_mmoe_time_per_candidate``, ``fold_vs_copy_1thread``, ``end_to_end_vs_model_alone``,
``sweep_best_call_candidates_1thread``.

Candidates are synthetic rows with the real feature spec's shape (``features.examples.build_spec``):
the point here is the scoring path, not the feature build. Usage::

    .venv/bin/python -m bench.scoring            # 1M candidates, 200 per request
    .venv/bin/python -m bench.scoring --quick    # 100k candidates
    .venv/bin/python -m bench.scoring --quick --skip-spark --json /tmp/scoring.json
    .venv/bin/python -m bench.scoring --device cuda   # on a GPU machine
"""
from __future__ import annotations

import functools

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from bench.figures import Figures, fmt, interleaved, per_round, summary
from conf.settings import RankingSettings, Settings
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
SECTIONS = ("reuse", "profile", "calls", "models", "hstu")


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


@functools.lru_cache(maxsize=None)
def artifact_of(store: str, ref: str) -> str:
    """The artifact folder of ``ref`` in the benchmark's store (its registry in the store root)."""
    return ModelStore(store).info(ref).path


def stored_predictor(store: str, ref: str, device: str):
    return get_predictor(artifact_of(store, ref), ref, device)


def direct(store: str, ref: str, path: str, n_candidates: int, batch_rows: int, reuse: bool, device: str,
           layout: str = "flat", max_rows: int | None = None) -> float:
    """Candidates/s of the model called in this process, reading the same Parquet file batch by batch.

    ``batch_rows`` counts file rows: candidates for ``flat``, requests for ``packed``. ``max_rows``
    (flat only): stop after the batch that reaches that many rows (the rate is over the rows read).
    """
    predictor = stored_predictor(store, ref, device)
    source = pq.ParquetFile(path)

    def score(batch: pa.RecordBatch) -> None:
        if layout == "packed":
            score_packed_batch(predictor, batch, reuse_user_side=reuse)
        else:
            score_record_batch(predictor, batch, reuse_user_side=reuse)

    score(next(source.iter_batches(batch_size=batch_rows)))  # warm-up
    t0 = time.perf_counter()
    read = 0
    for b in source.iter_batches(batch_size=batch_rows):
        score(b)
        read += b.num_rows
        if max_rows is not None and read >= max_rows:
            break
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return rate(n_candidates if max_rows is None else read, time.perf_counter() - t0)


def packed_calls(path: str, per_request: int, call_candidates: int, max_calls: int) -> list[pa.RecordBatch]:
    """Up to ``max_calls`` packed batches of about ``call_candidates`` candidates from the packed file."""
    table = pq.read_table(path).combine_chunks()
    n_requests = max(call_candidates // per_request, 1)
    calls = table.to_batches(max_chunksize=n_requests)[:max_calls]
    return [b for b in calls if b.num_rows == n_requests] or calls[:1]


def call_size_rate(store: str, ref: str, calls: list[pa.RecordBatch], device: str) -> float:
    """Candidates/s of score_packed_batch over ``calls`` (after one warm-up call)."""
    predictor = stored_predictor(store, ref, device)
    score_packed_batch(predictor, calls[0])
    n = sum(len(c.column("candidates").flatten()) for c in calls)
    t0 = time.perf_counter()
    for c in calls:
        score_packed_batch(predictor, c)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return rate(n, time.perf_counter() - t0)


def built_inputs(predictor, calls: list[pa.RecordBatch], device: str) -> list[tuple[dict, dict, Tensor]]:
    """Per packed call: ``(user batch, candidate batch, user_index)`` tensors on ``device``, built
    once (untimed) so that a timed loop runs the model alone."""
    spec = predictor.spec
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
    return inputs


@torch.no_grad()
def run_model_alone(model, inputs) -> int:
    """``encode_user`` + the candidate part over every call; returns the candidates scored."""
    for user, candidates, index in inputs:
        model(candidates, user_state=model.encode_user(user), user_index=index).cpu()
    return sum(len(i[2]) for i in inputs)


def model_alone_rate(store: str, ref: str, calls: list[pa.RecordBatch], device: str) -> float:
    """Candidates/s of the model alone on the same calls: the inputs are converted and moved to
    the device first (untimed), then only ``encode_user`` + the candidate part run (timed)."""
    predictor = stored_predictor(store, ref, device)
    inputs = built_inputs(predictor, calls, device)
    run_model_alone(predictor.model, inputs[:1])  # warm-up
    t0 = time.perf_counter()
    n = run_model_alone(predictor.model, inputs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return rate(n, time.perf_counter() - t0)


class StageTimer:
    """Exclusive wall time per named stage of a model call, from forward hooks (no model change).

    Stages are the model's submodules down to the pieces of a block (INFNet: each cross-attention,
    gate and norm of each block; MMoE: the experts, the gates, the towers), plus INFNet's
    ``_cat_proxy`` (``phi_cat``: its first layer is a plain ``F.linear``, no module of its own).
    A stage's time excludes the stages it calls; what no stage covers is the phase's "(glue)"
    (concatenations, index maps, RowGroups packing). ``phase`` prefixes the labels: ``user`` for
    ``encode_user``, ``candidates`` for the candidate part. Hook overhead is microseconds per call,
    negligible against calls of thousands of candidates.
    """

    CONTAINERS = (nn.ModuleList, nn.ModuleDict)

    def __init__(self, model: nn.Module):
        self.model = model
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []
        self.phase = ""
        self.handles = []
        for label, module in self._stages(model):
            self.handles.append(module.register_forward_pre_hook(lambda *_, label=label: self.enter(label)))
            self.handles.append(module.register_forward_hook(lambda *_: self.exit()))
        self._restore: list = []
        if hasattr(model, "_cat_proxy"):
            self._wrap(model, "_cat_proxy", lambda *_: "phi_cat (C~: its candidate-side first layer, then 256 -> m d)")
        if hasattr(model, "blocks"):  # INFNet: the block's cross-attentions, fused by key set
            from model import infnet as infnet_module
            from model.layers import GatedKeys

            n_c = len(model.spec.categorical) + len(model.spec.dense)
            for i, block in enumerate(model.blocks):
                self._wrap(block, "_attend", lambda *_, i=i: f"blocks.{i}: CA query / value projections")

            def keys_kind(q, keys, key_mask=None, groups=None, *_):
                if isinstance(keys, GatedKeys):
                    return "S' = LN(S * gamma), folded (GatedKeys)"
                return "S (one row per user)" if groups is not None else ("C" if keys.shape[1] == n_c else "T")
            self._wrap(infnet_module, "attend_keys", lambda *a, **k: f"{self._block()}: softmax pass over "
                       + keys_kind(*a, **k), module=True)

    def _block(self) -> str:
        """The innermost block whose attentions are running (from the stack's labels)."""
        for label, _ in reversed(self.stack):
            if "blocks." in label:
                return label.split(": ")[1].split(":")[0].split(".ca")[0]
        return "blocks.?"

    def _wrap(self, owner, attr: str, label_of, module: bool = False) -> None:
        original = getattr(owner, attr)

        def timed(*a, **k):
            self.enter(label_of(*a, **k))
            try:
                return original(*a, **k)
            finally:
                self.exit()
        setattr(owner, attr, timed)
        self._restore.append((owner, attr, original, module))

    @classmethod
    def _stages(cls, model: nn.Module, prefix: str = "", depth: int = 0):
        for name, child in model.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, cls.CONTAINERS) or type(child).__name__ == "INFNetBlock":
                if depth < 3:
                    yield from cls._stages(child, full + ".", depth + 1)
            elif isinstance(model, nn.ModuleList) and type(model) is nn.ModuleList:
                yield re.sub(r"\.\d+$", "[*]", full), child  # experts.0..3 -> experts[*]
            else:
                yield full, child

    def enter(self, label: str) -> None:
        now = time.perf_counter()
        if self.stack:
            self.totals[self.stack[-1][0]] += now - self.stack[-1][1]
        self.stack.append([f"{self.phase}: {label}", now])

    def exit(self) -> None:
        now = time.perf_counter()
        label, start = self.stack.pop()
        self.totals[label] += now - start
        if self.stack:
            self.stack[-1][1] = now

    @torch.no_grad()
    def run(self, inputs) -> int:
        """One pass over ``inputs`` (:func:`built_inputs`), timed by stage; returns the candidates."""
        for user, candidates, index in inputs:
            self.phase = "user"
            self.enter("(glue)")
            state = self.model.encode_user(user)
            self.exit()
            self.phase = "candidates"
            self.enter("(glue)")
            self.model(candidates, user_state=state, user_index=index).cpu()
            self.exit()
        return sum(len(i[2]) for i in inputs)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for owner, attr, original, module in reversed(self._restore):
            if module:
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)  # the instance's wrapper: back to the class's method


def stage_profile(model: nn.Module, inputs, repeats: int) -> tuple[dict[str, list[float]], int]:
    """Seconds per stage over ``inputs``, one list of ``repeats`` values per stage, and the candidates per pass."""
    timer = StageTimer(model)
    try:
        timer.run(inputs[:1])  # warm-up
        runs, n = [], 0
        for _ in range(repeats):
            timer.totals.clear()
            n = timer.run(inputs)
            runs.append(dict(timer.totals))
    finally:
        timer.close()
    labels = sorted({k for r in runs for k in r})
    return {k: [r.get(k, 0.0) for r in runs] for k in labels}, n


def print_profile(name: str, stages: dict[str, list[float]], n: int, figures: Figures) -> float:
    """The table of one model's stages (µs per candidate, medians of the repeats); returns the total."""
    totals = [sum(v[i] for v in stages.values()) for i in range(len(next(iter(stages.values()))))]
    total_us = statistics.median(totals) * 1e6 / n
    print(f"  {name}: {total_us:,.2f} us per candidate in all (the stages' sum, median of {len(totals)} passes)")
    rows = sorted(stages.items(), key=lambda kv: -statistics.median(kv[1]))
    out = {}
    for label, values in rows:
        us = statistics.median(values) * 1e6 / n
        out[label] = {**summary([v * 1e6 / n for v in values]), "share": us / total_us}
        if us / total_us >= 0.005:
            print(f"    {label:<72} {us:8.2f} us  {100 * us / total_us:5.1f} %")
    figures.data.setdefault("profile", {})[name] = {"us_per_candidate": summary([t * 1e6 / n for t in totals]),
                                                    "stages_us_per_candidate": out, "candidates_per_pass": n}
    return total_us


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
        scorer = make_batch_scorer(artifact_of(store, ref), ref, PASSTHROUGH,
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
    parser.add_argument("--quick", action="store_true", help="100k rows, shorter repeats (see the flags below)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="Spark tasks = torch threads")
    parser.add_argument("--per-request", type=int, default=200)
    parser.add_argument("--batch-rows", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every repeated measurement (median, min, max)")
    parser.add_argument("--reuse-rows", type=int,
                        help="flat rows each reuse / naive / model arm reads per repeat (default all; --quick 20,000)")
    parser.add_argument("--profile-candidates", type=int, default=4096,
                        help="candidates per model call of the INFNet vs MMoE profile (1 thread)")
    parser.add_argument("--profile-calls", type=int, default=4, help="model calls per repeat of the profile")
    parser.add_argument("--shapes", default="n_heads=1;cat_proxy_hidden=64;n_heads=1,cat_proxy_hidden=64;d=16",
                        help="INFNet shapes timed beside the default in the profile (';' between shapes, ',' "
                             "between fields; '' for none): cost only, a shape is chosen on the valid day's AUC")
    parser.add_argument("--call-candidates", type=int, default=65_536,
                        help="candidates per model call of the end-to-end vs model-alone ratio (default 65,536)")
    parser.add_argument("--call-sizes", default="256,512,1024,2048,4096,8192,16384",
                        help="candidates per call compared in process, 1 torch thread (the sweep)")
    parser.add_argument("--sweep-candidates", type=int,
                        help="candidates each call size scores per repeat (default 65,536; --quick 16,384)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hstu-rows", type=int, default=20_000,
                        help="candidates HSTU's arms score (its one-at-a-time arm runs every history per candidate)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"which in-process sections run (default all: {','.join(SECTIONS)})")
    parser.add_argument("--skip-hstu", action="store_true")
    parser.add_argument("--skip-spark", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="also write every figure (repeats, medians, cores) as JSON")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with the JVM's output
    n_rows = 100_000 if args.quick else args.rows
    reuse_rows = args.reuse_rows or (20_000 if args.quick else None)
    sweep_candidates = args.sweep_candidates or (16_384 if args.quick else 65_536)
    figures = Figures("bench.scoring", {**vars(args), "rows": n_rows, "reuse_rows": reuse_rows,
                                        "sweep_candidates": sweep_candidates})
    try:
        _run(args, n_rows, reuse_rows, sweep_candidates, figures)
    finally:
        figures.write(args.json)


def _run(args, n_rows: int, reuse_rows: int | None, sweep_candidates: int, figures: Figures) -> None:
    spec = build_spec(Settings())
    work = tempfile.mkdtemp(prefix="bench-scoring-")
    store = os.path.join(work, "models")
    for name in ("infnet", "mmoe", "ple", "hstu"):
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
          f"{args.threads} threads, {os.cpu_count()} cores, load average {figures.data['load_average']['start']}; "
          f"files: flat {os.path.getsize(flat) / 2**20:,.0f} MiB, packed {os.path.getsize(packed) / 2**20:,.0f} MiB; "
          f"every figure: median (min-max) of {args.repeats} interleaved repeats")
    infnet = stored_predictor(store, "infnet@1", args.device).model

    def flat_arm(ref: str, reuse: bool, fold: bool = True):
        def arm() -> float:
            infnet.fold_sequence_gate = fold
            try:
                return direct(store, ref, flat, n_rows, args.batch_rows, reuse, args.device, max_rows=reuse_rows)
            finally:
                infnet.fold_sequence_gate = True
        return arm

    sections = set(args.sections.split(",")) - ({"hstu"} if args.skip_hstu else set())
    if not args.skip_spark and "reuse" not in sections:
        raise SystemExit("bench.scoring: the Spark section compares against the reuse section's rates: "
                         "add reuse to --sections or give --skip-spark")
    # -- user-side reuse vs naive ----------------------------------------------------------------
    rows_read = f"the first {reuse_rows:,} rows of the flat file" if reuse_rows else "the flat file"
    thread_counts = sorted({args.threads, 1}, reverse=True) if "reuse" in sections else []
    reuse_rates: dict[int, dict] = {}
    for threads in thread_counts:
        # 1 thread is what one Spark task runs: PySpark gives a Python worker OMP_NUM_THREADS =
        # spark.task.cpus (default 1) and the scoring UDF keeps it.
        torch.set_num_threads(threads)
        arms = {"reuse": flat_arm("infnet@1", True), "naive": flat_arm("infnet@1", False)}
        if threads == 1:
            arms["reuse, S' copied per candidate (no fold)"] = flat_arm("infnet@1", True, fold=False)
        runs = interleaved(arms, args.repeats)
        reuse_rates[threads] = figures.rate(f"infnet_reuse_{threads}thread", runs["reuse"], unit="rows/s")
        figures.rate(f"infnet_naive_{threads}thread", runs["naive"], unit="rows/s")
        ratio = figures.ratio(f"reuse_vs_naive_{threads}thread", per_round(runs["reuse"], runs["naive"]),
                              top_level=True)
        print(f"\n[reuse] INFNet in one process, {threads} torch thread(s), {args.per_request} candidates per request, "
              f"{rows_read}: user-side reuse {fmt(summary(runs['reuse']))} rows/s, naive "
              f"{fmt(summary(runs['naive']))} -> {fmt(ratio, 2)}x (goal >= 3x at 1 thread)")
        if threads == 1:
            no_fold = runs["reuse, S' copied per candidate (no fold)"]
            figures.rate("infnet_reuse_no_fold_1thread", no_fold, unit="rows/s")
            fold = figures.ratio("fold_vs_copy_1thread", per_round(runs["reuse"], no_fold), top_level=True)
            print(f"[reuse] the block-2 keys S' = LN(S * gamma) folded (GatedKeys) vs copied per candidate: "
                  f"{fmt(summary(runs['reuse']))} vs {fmt(summary(no_fold))} rows/s -> {fmt(fold, 2)}x")
    torch.set_num_threads(args.threads)
    if "reuse" in sections:
        _layout(args, figures, store, packed, n_rows, request_batch, reuse_rates)
    if "profile" in sections:
        _profile(args, figures, spec, store, packed, infnet)
    if "calls" in sections:
        _calls(args, figures, store, packed, sweep_candidates)
    if "models" in sections:
        _models(args, figures, store, flat_arm, rows_read)
    if "hstu" in sections:
        _hstu(args, figures, store, flat, n_rows)
    if not args.skip_spark:
        _spark(args, figures, spec, work, store, flat, packed, n_rows, request_batch, reuse_rates)


def _layout(args, figures, store, packed, n_rows, request_batch, reuse_rates) -> None:
    packed_rate = figures.rate("infnet_packed_file", interleaved(
        {"p": lambda: direct(store, "infnet@1", packed, n_rows, request_batch, True, args.device, "packed")},
        args.repeats)["p"])
    print(f"[layout] INFNet in one process reading the packed file, {args.threads} threads: {fmt(packed_rate)} "
          + (f"candidates/s ({packed_rate['median'] / reuse_rates[args.threads]['median']:.2f}x the flat file with "
             "reuse)" if args.threads in reuse_rates else "candidates/s"))


def _profile(args, figures, spec, store, packed, infnet) -> None:
    """INFNet vs MMoE (and INFNet's --shapes) per candidate: the same packed calls, 1 thread, the
    model alone; then the per-stage tables."""
    torch.set_num_threads(1)
    calls = packed_calls(packed, args.per_request, args.profile_candidates, max_calls=args.profile_calls)
    n_profile = sum(len(c.column("candidates").flatten()) for c in calls)
    models = {"infnet": infnet, "mmoe": stored_predictor(store, "mmoe@1", args.device).model}
    inputs = built_inputs(stored_predictor(store, "infnet@1", args.device), calls, args.device)

    def alone(model: nn.Module, fold: bool = True):
        def arm() -> float:
            infnet.fold_sequence_gate = fold
            try:
                t0 = time.perf_counter()
                n = run_model_alone(model, inputs)
                return (time.perf_counter() - t0) * 1e6 / n  # us per candidate
            finally:
                infnet.fold_sequence_gate = True
        return arm

    shapes = {}
    for text in (t for t in args.shapes.split(";") if t.strip()):
        overrides = {k.strip(): int(v) for k, v in (kv.split("=") for kv in text.split(","))}
        shapes[f"infnet {text}"] = build_model("infnet", spec, overrides, seed=0).eval()
    for model in [*models.values(), *shapes.values()]:
        run_model_alone(model, inputs[:1])  # warm-up
    runs = interleaved({"infnet": alone(models["infnet"]), "infnet, no fold": alone(models["infnet"], fold=False),
                        "mmoe": alone(models["mmoe"]), **{name: alone(m) for name, m in shapes.items()}},
                       args.repeats)
    print(f"\n[profile] the model alone (encode_user + candidate part) on {len(calls)} packed calls of "
          f"{n_profile // len(calls):,} candidates ({args.per_request} per request), 1 torch thread, us per candidate:")
    for name, values in runs.items():
        figures.seconds(f"{re.sub(r'[^a-z0-9=]+', '_', name)}_us_per_candidate", values, unit="us/candidate")
        vs_mmoe = statistics.median(per_round(values, runs["mmoe"]))
        if name in shapes:
            figures.ratio(f"{re.sub(r'[^a-z0-9=]+', '_', name)}_vs_mmoe_time_per_candidate", per_round(values, runs["mmoe"]))
        print(f"  {name:<44} {fmt(summary(values), 2):>30} us   {vs_mmoe:5.2f}x MMoE's"
              + ("   (shape proposal: cost only, needs the valid-day AUC)" if name in shapes else ""))
    vs = figures.ratio("infnet_vs_mmoe_time_per_candidate", per_round(runs["infnet"], runs["mmoe"]), top_level=True)
    print(f"  INFNet's time per candidate over MMoE's: {fmt(vs, 2)}x (goal <= 1.0x; "
          f"without the fold {statistics.median(per_round(runs['infnet, no fold'], runs['mmoe'])):.2f}x)")
    print("[profile] where the time goes (exclusive time per stage, medians of the repeats; stages under 0.5 % omitted):")
    for name, model in models.items():
        stages, n = stage_profile(model, inputs, args.repeats)
        print_profile(name, stages, n, figures)


def _calls(args, figures, store, packed, sweep_candidates) -> None:
    """Candidates per model call (the CPU default), 1 thread; then end to end vs the model alone."""
    torch.set_num_threads(1)
    sizes = [int(v) for v in args.call_sizes.split(",") if v]
    sweep_calls = {size: packed_calls(packed, args.per_request, size, max_calls=max(1, sweep_candidates // size))
                   for size in sizes}
    runs = interleaved({size: (lambda c=c: call_size_rate(store, "infnet@1", c, args.device))
                        for size, c in sweep_calls.items()}, args.repeats)
    print(f"\n[calls] INFNet end to end in one process (score_packed_batch), packed, 1 torch thread (one Spark task): "
          f"candidates/s by candidates per model call, ~{sweep_candidates:,} candidates per size and repeat "
          f"(RankingSettings.cpu_batch_candidates = {RankingSettings().cpu_batch_candidates:,})")
    best = max(sizes, key=lambda size: statistics.median(runs[size]))
    for size in sizes:
        s = figures.rate(f"calls_{size}_1thread", runs[size])
        print(f"  {size:>7,} per call: {fmt(s):>34} candidates/s   spread {100 * s['spread']:4.1f} %"
              + ("   <- best median" if size == best else ""))
    figures.data["sweep_best_call_candidates_1thread"] = best
    torch.set_num_threads(args.threads)
    calls = packed_calls(packed, args.per_request, args.call_candidates, max_calls=4)
    n_call = len(calls[0].column("candidates").flatten())
    runs = interleaved({"end to end": lambda: call_size_rate(store, "infnet@1", calls, args.device),
                        "alone": lambda: model_alone_rate(store, "infnet@1", calls, args.device)}, args.repeats)
    figures.rate("end_to_end_call", runs["end to end"], call_candidates=n_call)
    figures.rate("model_alone_call", runs["alone"], call_candidates=n_call)
    e2e = figures.ratio("end_to_end_vs_model_alone", per_round(runs["end to end"], runs["alone"]), top_level=True)
    print(f"[calls] {n_call:,} candidates per call ({len(calls)} calls), {args.threads} threads: end to end (Arrow "
          f"batch -> predictions) {fmt(summary(runs['end to end']))} candidates/s, model alone on built tensors "
          f"{fmt(summary(runs['alone']))} -> {fmt(e2e, 2)} of the model-alone rate (goal >= 0.5)")


def _models(args, figures, store, flat_arm, rows_read) -> None:
    """Models side by side on the flat file."""
    torch.set_num_threads(args.threads)
    print(f"\n[models] direct, flat, user-side reuse, {args.threads} threads, {rows_read}: rows/s and cost per row "
          "relative to INFNet:")
    runs = interleaved({name: flat_arm(f"{name}@1", True) for name in ("infnet", "mmoe", "ple")}, args.repeats)
    for name, values in runs.items():
        figures.rate(f"{name}_reuse_flat", values, unit="rows/s")
        cost = figures.ratio(f"{name}_vs_infnet_time_per_row", per_round(runs["infnet"], values))
        params = sum(p.numel() for p in stored_predictor(store, f"{name}@1", args.device).model.parameters())
        print(f"  {name:<7} {fmt(summary(values)):>30} rows/s   {fmt(cost, 2)}x INFNet's time per row   {params:,} params")


def _hstu(args, figures, store, flat, n_rows) -> None:
    """HSTU's cost per candidate (one run each: its one-at-a-time arm is slow)."""
    torch.set_num_threads(args.threads)
    hstu_rows = min(n_rows, args.hstu_rows)
    print(f"\n[hstu] cost per candidate, {args.per_request} candidates per request, the first {hstu_rows:,} rows "
          f"of the flat file, {torch.get_num_threads()} torch threads (one run each):")
    arms = {"HSTU, M-FALCON (history once per request, candidates as targets)": ("hstu@1", True),
            "HSTU, one candidate at a time (the history per candidate)": ("hstu@1", False),
            "INFNet, user-side reuse": ("infnet@1", True)}
    costs = {label: 1e6 / direct(store, ref, flat, n_rows, args.batch_rows, reuse, args.device, max_rows=hstu_rows)
             for label, (ref, reuse) in arms.items()}
    mfalcon = next(iter(costs.values()))
    for (label, us), key in zip(costs.items(), ("hstu_mfalcon", "hstu_one_at_a_time", "infnet_reuse")):
        figures.seconds(f"hstu_section_{key}_us_per_candidate", [us], unit="us/candidate")
        print(f"  {label:<66} {us:>9,.1f} us/candidate   {us / mfalcon:6.2f}x M-FALCON's")


def _spark(args, figures, spec, work, store, flat, packed, n_rows, request_batch, reuse_rates) -> None:
    from dataclasses import replace

    from conf.spark import get_spark

    base = Settings().with_lake(os.path.join(work, "lake"))
    settings = replace(base, spark=replace(base.spark, master=f"local[{args.threads}]",
                                           arrow_batch_rows=args.batch_rows))
    spark = get_spark(settings, "bench-scoring")
    baselines = {"direct packed": figures.data["rates"]["infnet_packed_file"]["median"],
                 "direct reuse": reuse_rates[args.threads]["median"]}

    def run(label: str, key: str, path: str, udf: str, layout: str, baseline: str, pack_in_spark: bool = False) -> None:
        # about 2 splits per task whatever the file's size (the packed file is much smaller)
        spark.conf.set("spark.sql.files.maxPartitionBytes", str(max(os.path.getsize(path) // (2 * args.threads), 1)))
        batch = request_batch if layout == "packed" else args.batch_rows
        r = spark_rate(spark, path, n_rows, store, "infnet@1", spec, udf, batch, args.device, layout, pack_in_spark)
        figures.rate(f"spark_{key}", [r])
        figures.ratio(f"spark_{key}_vs_{baseline.replace(' ', '_')}", [r / baselines[baseline]])
        print(f"  {label:<58} {r:>9,.0f} candidates/s -> {r / baselines[baseline]:.2f}x {baseline} (median)"
              + ("" if udf == "transfer" else " (goal >= 0.9x packed, 0.8x flat)"))

    print(f"\n[spark] local[{args.threads}] vs the same model in one process with {args.threads} torch threads "
          "on the same file (one Spark run each):")
    run("packed file, mapInArrow (what infnet score runs)", "packed_arrow", packed, "arrow", "packed", "direct packed")
    run("packed file, mapInPandas", "packed_pandas", packed, "pandas", "packed", "direct packed")
    run("flat file, mapInArrow", "flat_arrow", flat, "arrow", "flat", "direct reuse")
    run("flat file, mapInPandas", "flat_pandas", flat, "pandas", "flat", "direct reuse")
    run("flat file packed by Spark (pack_requests shuffle), mapInArrow", "spark_packed_arrow", flat, "arrow", "packed",
        "direct packed", pack_in_spark=True)
    print("  Spark's own share: mapInArrow receiving the rows without scoring them")
    run("packed file, receive only", "packed_receive", packed, "transfer", "packed", "direct packed")
    run("flat file, receive only", "flat_receive", flat, "transfer", "flat", "direct reuse")
    spark.stop()


if __name__ == "__main__":
    main()
