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

The score job's steps on a Spark session (``infnet score``, jobs/score.py): :func:`check_model_spec`
(the model's features are the ones the candidates get), :func:`date_udf_input` (candidate
features from the bronze tables, :func:`featurise`, as the rows the UDF receives, by layout:
:func:`udf_input`) and :func:`score_date` (one model on one date into ``scores``, count checked).

>>> from features.spec import demo_spec
>>> output_schema_ddl(demo_spec(), ["request_id"])
'request_id string, score_click double, score_like double, score_long_view double, score_play_time double'
>>> output_schema_ddl(demo_spec(), ["request_id", "video_id"], {"video_id": "bigint"})[:38]
'request_id string, video_id bigint, sc'
"""
from __future__ import annotations

import contextlib
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
    # "flat": one row per candidate | "packed": one row per request (pack_requests). Flat here, the
    # shape of rows a caller builds itself; the score job's default is RankingSettings.scoring_layout
    layout: str = "flat"
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


def make_batch_scorer(artifact: str, ref: str, passthrough: Sequence[str],
                      scoring: ScoringSettings = ScoringSettings(), out_of_range=None,
                      passthrough_types: dict[str, str] | None = None) -> Callable[[Iterable], Iterator]:
    """The function for ``mapInArrow`` (``scoring.udf == "arrow"``) or ``mapInPandas``, scoring with
    the pinned version ``ref`` whose artifact folder is ``artifact`` (``ModelInfo.path``).

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
        predictor = get_predictor(artifact, ref, device)
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


# -- the score job's steps on a Spark session --------------------------------------------------------

# Spark types of the key columns the UDF passes through to ``scores`` (the rest are strings)
KEY_TYPES = {"request_id": "string", "impression_id": "string", "user_id": "bigint", "video_id": "bigint"}


class ScoringError(RuntimeError):
    """A date's scores do not match its candidates (rows lost or duplicated on the way)."""


def check_model_spec(spark, settings, info, feature_version: int) -> None:
    """The model's spec (``info``: ``model.store`` info) must be the examples table's at
    ``feature_version`` *and* the spec these settings featurise candidates with (features are
    built from settings, checked by fingerprint); else ``features.spec.FeatureSpecMismatch``
    saying what to rebuild."""
    from features.examples import build_spec, featuriser_vocabulary, load_feature_spec
    from features.spec import FeatureSpecMismatch, check_compatible
    from model.store import check_spec

    try:
        check_spec(info, load_feature_spec(spark, settings, feature_version))
        # candidates are always featurised at their request time: how the training rows were (the
        # spec's training options) and the tasks are the model's own business
        check_compatible(info.spec.serving_view(), build_spec(settings, featuriser_vocabulary(spark, settings, None))
                         .serving_view(), what=f"model {info.ref} vs the scoring settings' features")
    except FeatureSpecMismatch as err:
        raise FeatureSpecMismatch(f"{err}. Retrain {info.name} on the current examples or rebuild features with "
                                  "its spec; nothing was written") from None


def featurise(spark, settings, candidates, max_request_time: int):
    """Per-key candidate features (``features.candidate_features``) from the bronze tables,
    events before the last request time only."""
    from pyspark.sql import functions as F

    from conf.lake import read_table
    from conf.tables import BRONZE_HISTORY, BRONZE_LOG, BRONZE_USERS, BRONZE_VIDEOS
    from features.candidate_features import featurise_candidates

    last_date = candidates.agg(F.max("date")).first()[0]
    # nothing at or after the latest request time is visible to any candidate: skip reading it
    events = read_table(spark, settings, BRONZE_LOG).where(
        (F.col("date") <= F.lit(last_date)) & (F.col("time_ms") < F.lit(int(max_request_time))))
    return featurise_candidates(candidates, events, read_table(spark, settings, BRONZE_USERS),
                                read_table(spark, settings, BRONZE_VIDEOS), read_table(spark, settings, BRONZE_HISTORY),
                                settings)


def candidate_counts(candidates):
    """One row of a date's candidates: ``n`` (rows), ``requests``, ``last`` (the latest request
    time) and ``sources`` (sorted)."""
    from pyspark.sql import functions as F

    return candidates.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("request_id").alias("requests"),
                          F.max("request_time_ms").alias("last"),
                          F.sort_array(F.collect_set("source")).alias("sources")).first()


@contextlib.contextmanager
def date_udf_input(spark, settings, candidates, counts, scoring: ScoringSettings, max_candidates_per_row: int,
                   models: int = 1):
    """While open: the UDF input rows of a date's ``candidates`` (``counts``:
    :func:`candidate_counts`) and the features' reserved-bucket report. The features are computed
    once per key and date (:func:`featurise`), shared by the ``models`` scored inside, and the
    session ships Arrow batches of about ``scoring.batch_rows`` candidates; its own setting, and
    the cached features, are dropped on leaving."""
    from conf.spark import session_conf
    from features.candidates import records_per_arrow_batch

    features = featurise(spark, settings, candidates, counts["last"]).cache()
    report = features.input_report()
    rows = udf_input(spark, features, scoring.layout, max_candidates_per_row)
    if models > 1:
        rows = rows.cache()
    records = records_per_arrow_batch(scoring.layout, scoring.batch_rows, counts["n"], counts["requests"])
    try:
        with session_conf(spark, "spark.sql.execution.arrow.maxRecordsPerBatch", str(records)):
            yield rows, report
    finally:
        rows.unpersist()
        features.unpersist()


def udf_input(spark, features, layout: str, max_candidates_per_row: int):
    """The rows the scoring UDF receives from :func:`featurise`'s features: one per request
    (``"packed"``, a request over ``max_candidates_per_row`` split over rows) or one per candidate
    (``"flat"``)."""
    from features.candidate_features import PASSTHROUGH

    if layout == "packed":
        return features.packed(PASSTHROUGH, max_candidates_per_row)
    # a request's candidates sit together so the user side is encoded once per request per batch
    n_parts = max(spark.sparkContext.defaultParallelism, 1)
    return features.flat(PASSTHROUGH).repartition(n_parts, "request_id").sortWithinPartitions("request_id")


@dataclass(frozen=True)
class ScoredDate:
    """What :func:`score_date` wrote."""

    n_scored: int
    version: int  # of the scores table
    out_of_vocabulary: dict  # column -> ids mapped to 0 (sorted by column)


def score_date(spark, settings, info, date: str, rows, candidates, n_candidates: int, sources: Sequence[str],
               scoring: ScoringSettings, feature_version: int, source: str = "all") -> ScoredDate:
    """Score one model (``info``: ``model.store`` info) on one date's UDF input ``rows``
    (:func:`udf_input`) and replace its slice of ``scores`` (date, model, version, and ``source``
    unless ``"all"``). ``candidates``: the date's candidates, joined for their source when they
    have several (``sources``); :class:`ScoringError` unless ``n_candidates`` rows were written."""
    import datetime as dt

    from pyspark.sql import functions as F

    from conf.lake import read_table, write_table
    from conf.tables import SCORES
    from features.candidate_features import PASSTHROUGH

    out_of_range = counts_accumulator(spark)
    scorer = make_batch_scorer(info.path, info.ref, PASSTHROUGH, scoring, out_of_range, KEY_TYPES)
    ddl = output_schema_ddl(info.spec, PASSTHROUGH, KEY_TYPES)
    scored = rows.mapInPandas(scorer, ddl) if scoring.udf == "pandas" else rows.mapInArrow(scorer, ddl)
    if len(sources) == 1:  # the usual case: no join needed
        scored = scored.withColumn("source", F.lit(sources[0]))
    else:
        keys = candidates.select(F.col("request_id").alias("_c_request"), F.col("video_id").alias("_c_video"),
                                 F.col("impression_id").alias("_c_impression"), "source")
        scored = scored.join(keys, (F.col("request_id") == F.col("_c_request"))
                             & (F.col("video_id") == F.col("_c_video"))
                             & F.col("impression_id").eqNullSafe(F.col("_c_impression")))
    scores = scored.select(
        "request_id", "impression_id", "user_id", "video_id",
        F.lit(date).cast("date").alias("date"),
        F.lit(info.name).alias("model_name"), F.lit(str(info.version)).alias("model_version"),
        F.lit(feature_version).cast("long").alias("feature_version"),
        F.lit(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)).alias("scored_at"),
        *[F.col(score_column(t.name)) for t in info.spec.tasks],
        "source",
    )
    where = {"date": date, "model_name": info.name, "model_version": str(info.version)}
    if source != "all":
        where["source"] = source
    version = write_table(scores, settings, SCORES, where, merge_schema=True)  # score_exposed: entire-space models
    ensure_probability_constraint(spark, settings, [t.name for t in info.spec.binary_tasks])
    written = read_table(spark, settings, SCORES, version).where(
        (F.col("date") == F.lit(date).cast("date")) & (F.col("model_name") == info.name)
        & (F.col("model_version") == str(info.version)))
    if source != "all":
        written = written.where(F.col("source") == source)
    n_scored = written.count()
    if n_scored != n_candidates:
        raise ScoringError(f"scored {n_scored} rows for {n_candidates} candidates on {date}")
    return ScoredDate(n_scored, version, dict(sorted(out_of_range.value.items())))


def ensure_probability_constraint(spark, settings, binary_tasks) -> None:
    """Add the Delta CHECK constraint keeping binary scores in [0, 1] (once per table)."""
    from conf.lake import qualified_name
    from conf.tables import SCORES

    table = qualified_name(settings, SCORES)
    existing = {r["key"] for r in spark.sql(f"SHOW TBLPROPERTIES {table}").collect()}
    if "delta.constraints.scores_are_probabilities" in existing:
        return
    # only entire-space models score `exposed`: the others leave it null
    cond = " AND ".join(f"({score_column(t)} IS NULL OR {score_column(t)} BETWEEN 0 AND 1)" if t == "exposed"
                        else f"({score_column(t)} BETWEEN 0 AND 1)" for t in binary_tasks)
    spark.sql(f"ALTER TABLE {table} ADD CONSTRAINT scores_are_probabilities CHECK ({cond})")
