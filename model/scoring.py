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

>>> from features.spec import demo_spec
>>> output_schema_ddl(demo_spec(), ["request_id"])
'request_id string, score_click double, score_like double, score_long_view double, score_play_time double'
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from conf.tables import score_column
from features.candidates import PACKED_CANDIDATES, REQUEST_COLUMN
from features.spec import FeatureSpec
from model.base import candidate_field_indices, user_field_indices
from model.data import ArrowData, arrow_to_batch, categorical_matrix, dense_matrix, model_inputs, sequence_tensors
from model.predict import Predictor, get_predictor, outputs_to_predictions


LAYOUTS = ("flat", "packed")


@dataclass(frozen=True)
class ScoringSettings:
    batch_rows: int = 1024  # Arrow batch size; ~1k rows measured fastest (PITFALLS.md)
    reuse_user_side: bool = True
    udf: str = "arrow"  # "arrow" (mapInArrow) | "pandas" (mapInPandas); same worker function
    layout: str = "flat"  # "flat": one row per candidate | "packed": one row per request (pack_requests)
    device: str = "auto"  # "auto": the task's GPU if Spark assigned one, else CUDA if present, else CPU
    torch_threads: int | None = None  # None: what Spark gives a task (OMP_NUM_THREADS / spark.task.cpus)


def output_schema_ddl(spec: FeatureSpec, passthrough: Sequence[str]) -> str:
    """The UDF's output schema: the passthrough key columns (strings) and one double per task."""
    return ", ".join([f"{c} string" for c in passthrough] + [f"{score_column(t.name)} double" for t in spec.tasks])


def _ensure_eval(predictor: Predictor) -> None:
    # Predictor loads in eval mode; eval() walks every submodule, so only call it when needed
    if predictor.model.training:
        predictor.model.eval()


def _score_shared_users(predictor: Predictor, users: ArrowData, rows: ArrowData,
                        user_index: np.ndarray) -> dict[str, np.ndarray]:
    """Score ``rows`` whose user side is row ``user_index[i]`` of ``users``, encoding each user once."""
    model, spec, device = predictor.model, predictor.spec, predictor.device
    user_fields = list(user_field_indices(spec))
    seq, gap = sequence_tensors(users, spec)
    state = model.encode_user({
        "cat_user": torch.from_numpy(categorical_matrix(users, spec, user_fields)[:, user_fields]).to(device),
        "seq": seq.to(device),
        "seq_gap": gap.to(device),
    })
    # per row, only the candidate fields: the user fields come from the user state
    cat = torch.from_numpy(categorical_matrix(rows, spec, candidate_field_indices(spec))).to(device)
    candidates = {"cat": cat}
    if spec.dense:  # dense values are read per row
        candidates["dense"] = dense_matrix(rows, spec).to(device)
    out = model(candidates, user_state=state, user_index=torch.from_numpy(user_index.reshape(-1)).to(device))
    return outputs_to_predictions(out, spec)


def _score_rows(predictor: Predictor, data: ArrowData) -> dict[str, np.ndarray]:
    """The naive path: every row converted and encoded on its own."""
    batch = arrow_to_batch(data, predictor.spec, with_labels=False)
    return outputs_to_predictions(predictor.model(model_inputs(batch, predictor.device)), predictor.spec)


@torch.no_grad()
def score_record_batch(predictor: Predictor, data: pa.RecordBatch, request_column: str = REQUEST_COLUMN,
                       reuse_user_side: bool = True) -> dict[str, np.ndarray]:
    """Per-task predictions for the flat candidate rows of ``data`` (probabilities for binary tasks)."""
    _ensure_eval(predictor)
    if not reuse_user_side or request_column not in data.schema.names or not predictor.spec.sequences:
        return _score_rows(predictor, data)
    requests = data.column(request_column).to_numpy(zero_copy_only=False)
    _, first_rows, user_index = np.unique(requests, return_index=True, return_inverse=True)
    # sequences are converted and encoded only for the first row of each request
    return _score_shared_users(predictor, data.take(pa.array(first_rows)), data, user_index)


def unpack_requests(data: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray]:
    """A request-packed batch -> (its candidates as flat rows, the request row of each candidate)."""
    packed = data.column(PACKED_CANDIDATES)
    rows = pa.RecordBatch.from_struct_array(pc.list_flatten(packed))
    return rows, pc.list_parent_indices(packed).to_numpy(zero_copy_only=False).astype(np.int64)  # writable copy


@torch.no_grad()
def score_packed_batch(predictor: Predictor, data: pa.RecordBatch,
                       reuse_user_side: bool = True) -> tuple[pa.RecordBatch, np.ndarray, dict[str, np.ndarray]]:
    """Score a request-packed batch (:func:`features.candidates.pack_requests`).

    Returns the candidates as flat rows, the request row of each, and per-task predictions in
    that order. Naive mode repeats the request columns on every candidate row first (what the
    flat layout ships), so both modes score identical inputs.
    """
    _ensure_eval(predictor)
    rows, user_index = unpack_requests(data)
    if reuse_user_side and predictor.spec.sequences:
        return rows, user_index, _score_shared_users(predictor, data, rows, user_index)
    request_side = data.drop_columns([PACKED_CANDIDATES]).take(pa.array(user_index))
    flat = pa.RecordBatch.from_arrays([*request_side.columns, *rows.columns],
                                      names=[*request_side.schema.names, *rows.schema.names])
    return rows, user_index, _score_rows(predictor, flat)


def choose_device(requested: str = "auto") -> str:
    """The device for this Python worker: Spark's GPU assignment first, then CUDA, then CPU."""
    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "cpu"
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None
        if gpus is not None and gpus.addresses:
            return f"cuda:{gpus.addresses[0]}"
    except Exception:  # noqa: BLE001 - outside Spark, or no resource info: fall through
        pass
    return "cuda"


def make_batch_scorer(store_root: str, ref: str, passthrough: Sequence[str],
                      scoring: ScoringSettings = ScoringSettings()) -> Callable[[Iterable], Iterator]:
    """The function for ``mapInArrow`` (``scoring.udf == "arrow"``) or ``mapInPandas``.

    Input batches are flat candidate rows (``scoring.layout == "flat"``: the passthrough columns
    and the spec's feature columns) or requests packed by :func:`features.candidates.pack_requests`
    (``"packed"``); output batches are flat: the passthrough columns and ``score_<task>`` columns,
    one row per candidate.
    """
    if scoring.layout not in LAYOUTS:
        raise ValueError(f"unknown scoring layout {scoring.layout!r}; expected one of {LAYOUTS}")
    use_pandas = scoring.udf == "pandas"

    def score_batches(batches: Iterable) -> Iterator:
        if scoring.torch_threads:
            torch.set_num_threads(scoring.torch_threads)
        elif os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
        predictor = get_predictor(store_root, ref, choose_device(scoring.device))
        for batch in batches:
            data = pa.RecordBatch.from_pandas(batch, preserve_index=False) if use_pandas else batch
            if data.num_rows == 0:
                continue
            if scoring.layout == "packed":
                rows, request_of_row, predictions = score_packed_batch(predictor, data, scoring.reuse_user_side)
                if rows.num_rows == 0:  # requests without candidates
                    continue
                columns = {c: (data.column(c).take(pa.array(request_of_row)) if c == REQUEST_COLUMN else rows.column(c))
                           for c in passthrough}
            else:
                predictions = score_record_batch(predictor, data, reuse_user_side=scoring.reuse_user_side)
                columns = {c: data.column(c) for c in passthrough}
            columns = {c: v.cast(pa.string()) for c, v in columns.items()}
            columns.update({score_column(t): pa.array(v.astype(np.float64)) for t, v in predictions.items()})
            out = pa.RecordBatch.from_pydict(columns)
            yield out.to_pandas() if use_pandas else out

    return score_batches
