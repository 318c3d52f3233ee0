"""Scoring candidate sets with a stored model: the function that runs inside Spark's Python workers.

:func:`score_record_batch` scores one Arrow batch of featurised candidates. With
``reuse_user_side`` the user side (user categorical fields + behaviour sequences) is converted and
encoded once per request of the batch instead of once per candidate row: every candidate of a
request is featurised at the same request time, so their user sides are identical by construction.
The scores equal the naive per-row path (tests/model/test_scoring.py) and cost less (bench/scoring.py).
:func:`score_packed_batch` does the same for requests packed by
:func:`features.candidates.pack_requests` (the user side shipped once per request, not once per
candidate): what ``infnet score`` uses, because moving flat rows' repeated sequences from the JVM
to Python cost more than scoring them.

:func:`make_batch_scorer` wraps it as the iterator function given to ``DataFrame.mapInArrow`` or
``mapInPandas``: the model is loaded once per Python worker (module-level cache in
:mod:`model.predict`), on the task's GPU when Spark assigned one (``spark.task.resource.gpu.amount``)
or when CUDA is present, else on the CPU with the thread count Spark gives the task.

Batch size follows the device: Spark ships Arrow batches of about ``batch_rows`` candidates (what
moves rows to Python fastest), and the worker gathers them into model calls of
``cpu_batch_candidates`` on a CPU or ``cuda_batch_candidates`` (tens of thousands) on a GPU
(:func:`batch_candidates_for`, :func:`gather_batches`), so a GPU is not fed 1k-candidate calls.
Categorical and sequence ids outside their vocabulary are mapped to the reserved 0 *and counted*
(per column, in the ``out_of_range`` accumulator the score job reports).

>>> from features.spec import demo_spec
>>> output_schema_ddl(demo_spec(), ["request_id"])
'request_id string, score_click double, score_like double, score_long_view double, score_play_time double'
>>> output_schema_ddl(demo_spec(), ["request_id", "video_id"], {"video_id": "bigint"})[:38]
'request_id string, video_id bigint, sc'
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
from pyspark.accumulators import AccumulatorParam

from conf.settings import RankingSettings
from conf.tables import score_column
from features.candidates import PACKED_CANDIDATES, REQUEST_COLUMN, unpack_requests
from features.spec import FeatureSpec
from model.base import candidate_field_indices, user_field_indices
from model.data import ArrowData, arrow_to_batch, categorical_matrix, dense_matrix, model_inputs, sequence_tensors
from model.predict import Predictor, get_predictor, outputs_to_predictions


LAYOUTS = ("flat", "packed")
_RANKING = RankingSettings()
ARROW_TYPES = {"string": pa.string(), "bigint": pa.int64(), "int": pa.int32(), "double": pa.float64()}


@dataclass(frozen=True)
class ScoringSettings:
    batch_rows: int = _RANKING.cpu_batch_candidates  # candidates per Arrow batch Spark ships (~1k measured fastest)
    reuse_user_side: bool = True
    udf: str = "arrow"  # "arrow" (mapInArrow) | "pandas" (mapInPandas); same worker function
    layout: str = "flat"  # "flat": one row per candidate | "packed": one row per request (pack_requests)
    device: str = "auto"  # "auto": the task's GPU if Spark assigned one, else CUDA if present, else CPU
    torch_threads: int | None = None  # None: what Spark gives a task (OMP_NUM_THREADS / spark.task.cpus)
    batch_candidates: int | None = None  # candidates per model call; None: by device (below)
    cpu_batch_candidates: int = _RANKING.cpu_batch_candidates
    cuda_batch_candidates: int = _RANKING.cuda_batch_candidates


def batch_candidates_for(device: str | torch.device, scoring: ScoringSettings = ScoringSettings()) -> int:
    """Candidates per model call on ``device``: ``batch_candidates`` when set, else the device's default.

    >>> batch_candidates_for("cuda:0"), batch_candidates_for("cpu")
    (65536, 1024)
    """
    if scoring.batch_candidates:
        return int(scoring.batch_candidates)
    return scoring.cuda_batch_candidates if str(device).startswith("cuda") else scoring.cpu_batch_candidates


def candidate_count(data: pa.RecordBatch, layout: str) -> int:
    """Candidates in a batch: its rows (flat) or the total length of its candidate lists (packed)."""
    return len(data.column(PACKED_CANDIDATES).flatten()) if layout == "packed" else data.num_rows


def gather_batches(batches: Iterable[pa.RecordBatch], target: int, layout: str) -> Iterator[pa.RecordBatch]:
    """Concatenate consecutive batches until each holds at least ``target`` candidates (the last
    one may hold fewer); a batch already that large passes through as is. Rows are never split,
    so a request stays in one model call."""
    pending: list[pa.RecordBatch] = []
    n = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        n += candidate_count(batch, layout)
        if n >= target:
            yield _concat(pending)
            pending, n = [], 0
    if pending:
        yield _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def output_schema_ddl(spec: FeatureSpec, passthrough: Sequence[str], types: dict[str, str] | None = None) -> str:
    """The UDF's output schema: the passthrough key columns (``types[c]``, default string) and
    one double per task."""
    types = types or {}
    return ", ".join([f"{c} {types.get(c, 'string')}" for c in passthrough]
                     + [f"{score_column(t.name)} double" for t in spec.tasks])


def _ensure_eval(predictor: Predictor) -> None:
    # Predictor loads in eval mode; eval() walks every submodule, so only call it when needed
    if predictor.model.training:
        predictor.model.eval()


def _score_shared_users(predictor: Predictor, users: ArrowData, rows: ArrowData,
                        user_index: np.ndarray, out_of_range: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Score ``rows`` whose user side is row ``user_index[i]`` of ``users``, encoding each user once."""
    model, spec, device = predictor.model, predictor.spec, predictor.device
    user_fields = list(user_field_indices(spec))
    seq, gap = sequence_tensors(users, spec, out_of_range)
    state = model.encode_user({
        "cat_user": torch.from_numpy(categorical_matrix(users, spec, user_fields, out_of_range)[:, user_fields]).to(device),
        "seq": seq.to(device),
        "seq_gap": gap.to(device),
    })
    # per row, only the candidate fields: the user fields come from the user state
    cat = torch.from_numpy(categorical_matrix(rows, spec, candidate_field_indices(spec), out_of_range)).to(device)
    candidates = {"cat": cat}
    if spec.dense:  # dense values are read per row
        candidates["dense"] = dense_matrix(rows, spec).to(device)
    out = model(candidates, user_state=state, user_index=torch.from_numpy(user_index.reshape(-1)).to(device))
    return outputs_to_predictions(out, spec)


def _score_rows(predictor: Predictor, data: ArrowData, out_of_range: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """The naive path: every row converted and encoded on its own."""
    batch = arrow_to_batch(data, predictor.spec, with_labels=False, out_of_range=out_of_range)
    return outputs_to_predictions(predictor.model(model_inputs(batch, predictor.device)), predictor.spec)


@torch.no_grad()
def score_record_batch(predictor: Predictor, data: pa.RecordBatch, request_column: str = REQUEST_COLUMN,
                       reuse_user_side: bool = True, out_of_range: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Per-task predictions for the flat candidate rows of ``data`` (probabilities for binary tasks).

    ``out_of_range``: a dict counting, per column, the ids mapped to 0 because they are outside the
    field's vocabulary (with user-side reuse a request's user side is counted once).
    """
    _ensure_eval(predictor)
    if not reuse_user_side or request_column not in data.schema.names or not predictor.spec.sequences:
        return _score_rows(predictor, data, out_of_range)
    requests = data.column(request_column).to_numpy(zero_copy_only=False)
    _, first_rows, user_index = np.unique(requests, return_index=True, return_inverse=True)
    # sequences are converted and encoded only for the first row of each request
    return _score_shared_users(predictor, data.take(pa.array(first_rows)), data, user_index, out_of_range)


@torch.no_grad()
def score_packed_batch(predictor: Predictor, data: pa.RecordBatch, reuse_user_side: bool = True,
                       out_of_range: dict[str, int] | None = None,
                       ) -> tuple[pa.RecordBatch, np.ndarray, dict[str, np.ndarray]]:
    """Score a request-packed batch (:func:`features.candidates.pack_requests`).

    Returns the candidates as flat rows, the request row of each, and per-task predictions in
    that order. Naive mode repeats the request columns on every candidate row first (what the
    flat layout ships), so both modes score identical inputs.
    """
    _ensure_eval(predictor)
    rows, user_index = unpack_requests(data)
    if reuse_user_side and predictor.spec.sequences:
        return rows, user_index, _score_shared_users(predictor, data, rows, user_index, out_of_range)
    request_side = data.drop_columns([PACKED_CANDIDATES]).take(pa.array(user_index))
    flat = pa.RecordBatch.from_arrays([*request_side.columns, *rows.columns],
                                      names=[*request_side.schema.names, *rows.schema.names])
    return rows, user_index, _score_rows(predictor, flat, out_of_range)


def assigned_gpu() -> str | None:
    """The GPU address Spark assigned to the running task (``TaskContext.resources()["gpu"]``), or
    None outside a task or when the cluster schedules no GPUs."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None
        return gpus.addresses[0] if gpus is not None and gpus.addresses else None
    except Exception:  # noqa: BLE001 - no resource info in this Spark task: nothing assigned
        return None


def choose_device(requested: str = "auto") -> str:
    """The device for this Python worker: the GPU Spark assigned to the task (``cuda:<address>``),
    else CUDA's default device, else the CPU. A task assigned a GPU in a worker where torch sees no
    CUDA scores on the CPU and says so once per worker process (one log line)."""
    if requested != "auto":
        return requested
    gpu = assigned_gpu()
    if torch.cuda.is_available():
        return f"cuda:{gpu}" if gpu is not None else "cuda"
    if gpu is not None and not getattr(choose_device, "_warned", False):
        import logging

        logging.getLogger("infnet.scoring").warning(
            "Spark assigned GPU %s to this task but torch sees no CUDA device: scoring on the CPU", gpu)
        choose_device._warned = True  # type: ignore[attr-defined]
    return "cpu"


def make_batch_scorer(store_root: str, ref: str, passthrough: Sequence[str],
                      scoring: ScoringSettings = ScoringSettings(), out_of_range=None,
                      passthrough_types: dict[str, str] | None = None) -> Callable[[Iterable], Iterator]:
    """The function for ``mapInArrow`` (``scoring.udf == "arrow"``) or ``mapInPandas``.

    Input batches are flat candidate rows (``scoring.layout == "flat"``: the passthrough columns
    and the spec's feature columns) or requests packed by :func:`features.candidates.pack_requests`
    (``"packed"``); they are gathered into model calls of :func:`batch_candidates_for` the
    worker's device. Output batches are flat: the passthrough columns (typed by
    ``passthrough_types``, DDL names, default string; a packed batch's request-level columns are
    repeated per candidate) and ``score_<task>`` columns, one row per candidate.
    ``out_of_range``: anything with ``add(dict)`` (a Spark accumulator of dicts) receives, per
    model call, the count of out-of-vocabulary ids per column.
    """
    if scoring.layout not in LAYOUTS:
        raise ValueError(f"unknown scoring layout {scoring.layout!r}; expected one of {LAYOUTS}")
    use_pandas = scoring.udf == "pandas"
    types = {c: ARROW_TYPES[(passthrough_types or {}).get(c, "string")] for c in passthrough}

    def score_batches(batches: Iterable) -> Iterator:
        if scoring.torch_threads:
            torch.set_num_threads(scoring.torch_threads)
        elif os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
        device = choose_device(scoring.device)
        predictor = get_predictor(store_root, ref, device)
        arrow = (pa.RecordBatch.from_pandas(b, preserve_index=False) for b in batches) if use_pandas else batches
        for data in gather_batches(arrow, batch_candidates_for(device, scoring), scoring.layout):
            counts: dict[str, int] = {}
            if scoring.layout == "packed":
                rows, request_of_row, predictions = score_packed_batch(predictor, data, scoring.reuse_user_side, counts)
                if rows.num_rows == 0:  # requests without candidates
                    continue
                take = pa.array(request_of_row)
                columns = {c: (data.column(c).take(take) if c in data.schema.names else rows.column(c))
                           for c in passthrough}
            else:
                predictions = score_record_batch(predictor, data, reuse_user_side=scoring.reuse_user_side,
                                                 out_of_range=counts)
                columns = {c: data.column(c) for c in passthrough}
            if out_of_range is not None and counts:
                out_of_range.add(counts)
            columns = {c: v.cast(types[c]) for c, v in columns.items()}
            columns.update({score_column(t): pa.array(v.astype(np.float64)) for t, v in predictions.items()})
            out = pa.RecordBatch.from_pydict(columns)
            yield out.to_pandas() if use_pandas else out

    return score_batches


class CountsParam(AccumulatorParam):
    """Accumulates ``{key: int}`` dicts (Spark merges the workers' counts by key)."""

    def zero(self, value):
        return {}

    def addInPlace(self, a, b):
        for k, v in b.items():
            a[k] = a.get(k, 0) + v
        return a


def counts_accumulator(spark):
    """A Spark accumulator of ``{column: count}`` for :func:`make_batch_scorer`'s ``out_of_range``.

    Counted where the ids are mapped, in the workers; a task Spark re-runs counts again."""
    return spark.sparkContext.accumulator({}, CountsParam())
