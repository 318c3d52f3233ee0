"""Scoring inside Spark workers: user-side reuse is exact; both input layouts (flat, packed by request)
and both UDF kinds give the same scores."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from features.candidates import PACKED_CANDIDATES, pack_adjacent_rows, pack_requests
from features.spec import demo_spec
from model.base import random_batch, repeat_users
from model.predict import load_predictor
from model.registry import MODEL_NAMES, build_model
from model.scoring import (ScoringSettings, make_batch_scorer, output_schema_ddl, score_packed_batch,
                           score_record_batch)
from model.store import ModelStore

SPEC = demo_spec(seq_len=6)
# 9 candidate rows in 3 requests: rows of one request share the user side of its first row
REQUEST_OF_ROW = [0, 0, 0, 1, 1, 2, 2, 2, 2]


def candidate_batch(seed: int = 0) -> pa.RecordBatch:
    batch = repeat_users(random_batch(SPEC, len(REQUEST_OF_ROW), seed=seed, with_labels=False), SPEC,
                         [REQUEST_OF_ROW.index(r) for r in REQUEST_OF_ROW])
    columns = {"request_id": pa.array([f"r{r}" for r in REQUEST_OF_ROW]),
               "impression_id": pa.array([f"i{i}" for i in range(len(REQUEST_OF_ROW))]),
               "user_id": pa.array([100 + r for r in REQUEST_OF_ROW], pa.int64()),
               "video_id": pa.array(range(len(REQUEST_OF_ROW)), pa.int64())}
    for i, field in enumerate(SPEC.categorical):
        columns[field.column] = pa.array(batch["cat"][:, i].numpy().astype(np.int32))
    for a, s in enumerate(SPEC.sequences):
        seq, gap = batch["seq"][:, a].numpy(), batch["seq_gap"][:, a].numpy()
        lengths = (seq > 0).sum(1)
        columns[s.column] = pa.array([list(map(int, row[:n])) for row, n in zip(seq, lengths)], pa.list_(pa.int32()))
        columns[s.gap_column] = pa.array([list(map(float, row[:n])) for row, n in zip(gap, lengths)],
                                         pa.list_(pa.float32()))
    return pa.RecordBatch.from_pydict(columns)


def packed_batch(data: pa.RecordBatch, passthrough=("request_id", "impression_id")) -> pa.RecordBatch:
    return pack_adjacent_rows(data, SPEC, passthrough).to_batches()[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("models"))
    for name in MODEL_NAMES:
        ModelStore(root).save(name, build_model(name, SPEC, seed=0), SPEC, architecture=name)
    return root


def artifact(store: str, ref: str) -> str:
    """The artifact folder the score job's driver hands the scorer for ``ref``."""
    return ModelStore(store).info(ref).path


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_user_side_reuse_gives_the_naive_scores(store, name):
    predictor = load_predictor(store, name)
    data = candidate_batch()
    reused = score_record_batch(predictor, data, reuse_user_side=True)
    naive = score_record_batch(predictor, data, reuse_user_side=False)
    for task in naive:
        np.testing.assert_allclose(reused[task], naive[task], rtol=1e-5, atol=1e-6)
    binary = [t.name for t in SPEC.binary_tasks]
    assert all(((reused[t] >= 0) & (reused[t] <= 1)).all() for t in binary)
    assert np.ptp(reused["click"]) > 0  # different candidates get different scores


@pytest.mark.parametrize("name", ["infnet", "mmoe", "din"])
@pytest.mark.parametrize("reuse", [True, False])
def test_packed_requests_give_the_flat_scores(store, name, reuse):
    predictor = load_predictor(store, name)
    data = candidate_batch(seed=1)
    packed = packed_batch(data)
    assert packed.num_rows == 3 and "cat_user_id" in packed.schema.names and "cat_video_id" not in packed.schema.names
    rows, request_of_row, scores = score_packed_batch(predictor, packed, reuse_user_side=reuse)
    assert rows.column("impression_id").to_pylist() == data.column("impression_id").to_pylist()
    assert request_of_row.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    flat = score_record_batch(predictor, data, reuse_user_side=False)
    for task in flat:
        np.testing.assert_allclose(scores[task], flat[task], rtol=1e-5, atol=1e-6)


def test_packed_scorer_emits_one_row_per_candidate(store):
    scorer = make_batch_scorer(artifact(store, "infnet@1"), "infnet@1", ["request_id", "impression_id"],
                               ScoringSettings(layout="packed"))
    data = candidate_batch()
    packed = packed_batch(data)
    empty_request = packed.slice(0, 1).set_column(  # a request with no candidates yields nothing
        packed.schema.get_field_index(PACKED_CANDIDATES), PACKED_CANDIDATES,
        pa.array([[]], packed.schema.field(PACKED_CANDIDATES).type))
    out = pa.Table.from_batches(list(scorer(iter([packed.slice(0, 2), empty_request, packed.slice(2)]))))
    assert out.column("request_id").to_pylist() == [f"r{r}" for r in REQUEST_OF_ROW]
    assert out.column("impression_id").to_pylist() == data.column("impression_id").to_pylist()
    flat = score_record_batch(load_predictor(store, "infnet@1"), data, reuse_user_side=False)
    np.testing.assert_allclose(out.column("score_like").to_numpy(), flat["like"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not adjacent"):
        pack_adjacent_rows(data.take(pa.array([0, 3, 1])), SPEC, ["request_id"])
    with pytest.raises(ValueError, match="layout"):
        make_batch_scorer(artifact(store, "infnet@1"), "infnet@1", ["request_id"], ScoringSettings(layout="wide"))


def test_batch_scorer_splits_nothing_and_keeps_keys(store):
    scorer = make_batch_scorer(artifact(store, "infnet@1"), "infnet@1", ["request_id", "impression_id"])
    data = candidate_batch()
    out = list(scorer(iter([data.slice(0, 4), data.slice(4)])))  # a request split across batches
    merged = pa.Table.from_batches(out)
    assert merged.column("impression_id").to_pylist() == data.column("impression_id").to_pylist()
    whole = score_record_batch(load_predictor(store, "infnet@1"), data, reuse_user_side=False)
    np.testing.assert_allclose(merged.column("score_like").to_numpy(), whole["like"], rtol=1e-5, atol=1e-6)


def test_arrow_and_pandas_udfs_score_alike_in_spark(spark, store):
    data = candidate_batch(seed=3)
    df = spark.createDataFrame(pa.Table.from_batches([data]).to_pandas()).repartition(2, "request_id")
    passthrough = ["request_id", "impression_id"]
    ddl = output_schema_ddl(SPEC, passthrough)
    by_arrow = df.mapInArrow(make_batch_scorer(artifact(store, "mmoe@1"), "mmoe@1", passthrough), ddl).toPandas()
    by_pandas = df.mapInPandas(
        make_batch_scorer(artifact(store, "mmoe@1"), "mmoe@1", passthrough, ScoringSettings(udf="pandas")), ddl).toPandas()
    a = by_arrow.sort_values("impression_id").reset_index(drop=True)
    p = by_pandas.sort_values("impression_id").reset_index(drop=True)
    assert len(a) == len(REQUEST_OF_ROW)
    np.testing.assert_allclose(a["score_click"], p["score_click"], rtol=1e-6)
    direct = score_record_batch(load_predictor(store, "mmoe@1"), data, reuse_user_side=False)
    order = np.argsort(np.array([f"i{i}" for i in range(len(REQUEST_OF_ROW))]))
    np.testing.assert_allclose(a["score_click"], direct["click"][order], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("udf", ["arrow", "pandas"])
def test_spark_packs_requests_and_scores_them_like_flat_rows(spark, store, udf):
    data = candidate_batch(seed=5)
    passthrough = ["request_id", "impression_id"]
    flat = spark.createDataFrame(pa.Table.from_batches([data]).to_pandas()).repartition(3)
    packed = pack_requests(flat, SPEC, passthrough)
    assert packed.count() == len(set(REQUEST_OF_ROW))
    scorer = make_batch_scorer(artifact(store, "infnet@1"), "infnet@1", passthrough, ScoringSettings(udf=udf, layout="packed"))
    ddl = output_schema_ddl(SPEC, passthrough)
    mapped = packed.mapInPandas(scorer, ddl) if udf == "pandas" else packed.mapInArrow(scorer, ddl)
    out = mapped.toPandas().set_index("impression_id").sort_index()
    direct = score_record_batch(load_predictor(store, "infnet@1"), data, reuse_user_side=False)
    order = np.argsort(np.array(data.column("impression_id").to_pylist()))
    assert out.index.tolist() == sorted(data.column("impression_id").to_pylist())
    assert out["request_id"].tolist() == [f"r{REQUEST_OF_ROW[i]}" for i in order]
    np.testing.assert_allclose(out["score_click"], direct["click"][order], rtol=1e-5, atol=1e-6)


class Recorder:
    """Stands in for a Spark accumulator: what the scorer adds."""

    def __init__(self):
        self.value = {}

    def add(self, counts):
        for k, v in counts.items():
            self.value[k] = self.value.get(k, 0) + v


@pytest.mark.parametrize("device, expected_calls", [("cuda:0", [5, 4]), ("cpu", [3, 2, 4])])
def test_the_model_call_size_follows_the_device(store, monkeypatch, device, expected_calls):
    """A faked CUDA worker gathers Spark's small batches up to cuda_batch_candidates per call; a CPU
    worker scores them at cpu_batch_candidates; requests are never split and the scores are equal."""
    import model.scoring as scoring

    calls = []
    original = scoring.score_packed_batch

    def recording(predictor, data, *args, **kwargs):
        calls.append(len(data.column(PACKED_CANDIDATES).flatten()))
        return original(predictor, data, *args, **kwargs)

    monkeypatch.setattr(scoring, "choose_device", lambda requested: device)
    monkeypatch.setattr(scoring, "get_predictor", lambda artifact, ref, dev: load_predictor(store, ref))  # the CPU model
    monkeypatch.setattr(scoring, "score_packed_batch", recording)
    data = candidate_batch()
    packed = packed_batch(data)  # one Spark batch per request: 3, 2 and 4 candidates
    settings = ScoringSettings(layout="packed", cpu_batch_candidates=2, cuda_batch_candidates=5)
    scorer = make_batch_scorer(artifact(store, "infnet@1"), "infnet@1", ["request_id", "impression_id"], settings)
    out = pa.Table.from_batches(list(scorer(iter([packed.slice(i, 1) for i in range(3)]))))
    assert calls == expected_calls
    assert scoring.batch_candidates_for("cuda", ScoringSettings()) == 65_536  # the GPU default
    flat = score_record_batch(load_predictor(store, "infnet@1"), data, reuse_user_side=False)
    np.testing.assert_allclose(out.column("score_click").to_numpy(), flat["click"], rtol=1e-5, atol=1e-6)


def test_out_of_range_ids_are_mapped_to_zero_and_counted(store):
    data = candidate_batch(seed=2)
    video = SPEC.categorical[[f.name for f in SPEC.categorical].index("video_id")]
    bad_video = data.column(video.column).to_pylist()
    bad_video[0], bad_video[4] = video.vocab_size + 3, -1
    clicks = data.column("seq_click").to_pylist()
    for row in (0, 1, 2):  # request r0's user side (its rows share it)
        clicks[row] = [SPEC.sequences[0].vocab_size, *clicks[row][1:]]
    bad = data.set_column(data.schema.get_field_index(video.column), video.column, pa.array(bad_video, pa.int32()))
    bad = bad.set_column(bad.schema.get_field_index("seq_click"), "seq_click", pa.array(clicks, pa.list_(pa.int32())))
    zeroed_video = [0 if v < 0 or v >= video.vocab_size else v for v in bad_video]
    clean = bad.set_column(bad.schema.get_field_index(video.column), video.column, pa.array(zeroed_video, pa.int32()))
    clean = clean.set_column(clean.schema.get_field_index("seq_click"), "seq_click",
                             pa.array([[0 if i >= SPEC.sequences[0].vocab_size else i for i in row] for row in clicks],
                                      pa.list_(pa.int32())))
    recorder = Recorder()
    scorer = make_batch_scorer(artifact(store, "infnet@1"), "infnet@1", ["request_id", "video_id"],
                               ScoringSettings(layout="packed"),
                               out_of_range=recorder, passthrough_types={"video_id": "bigint"})
    out = pa.Table.from_batches(list(scorer(iter([packed_batch(bad, ("request_id", "video_id"))]))))
    assert recorder.value == {video.column: 2, "seq_click": 1}  # r0's user side is converted once
    assert out.schema.field("video_id").type == pa.int64() and out.column("video_id").to_pylist() == list(range(9))
    expected = score_record_batch(load_predictor(store, "infnet@1"), clean, reuse_user_side=False)
    np.testing.assert_allclose(out.column("score_click").to_numpy(), expected["click"], rtol=1e-5, atol=1e-6)


def test_dense_inputs_score_the_same_in_both_layouts_with_and_without_reuse(tmp_path):
    """A spec with dense fields: the dense values travel per candidate (packed) or per row (flat)."""
    from dataclasses import replace

    from features.spec import DenseField

    spec = replace(SPEC, dense=(DenseField("user_n_prior_log1p", "user"), DenseField("video_like_rate_logit", "item")))
    root = str(tmp_path)
    ModelStore(root).save("infnet", build_model("infnet", spec, seed=0), spec, architecture="infnet")
    predictor = load_predictor(root, "infnet")
    data = candidate_batch(seed=3)
    rng = np.random.default_rng(0)
    for f in spec.dense:
        data = data.append_column(f.column, pa.array(rng.normal(0, 2, data.num_rows).astype(np.float32)))
    naive = score_record_batch(predictor, data, reuse_user_side=False)
    reused = score_record_batch(predictor, data, reuse_user_side=True)
    packed = pack_adjacent_rows(data, spec, ("request_id", "impression_id")).to_batches()[0]
    _, _, from_packed = score_packed_batch(predictor, packed, reuse_user_side=True)
    for task in naive:
        np.testing.assert_allclose(reused[task], naive[task], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(from_packed[task], naive[task], rtol=1e-5, atol=1e-6)
    moved = data.set_column(data.schema.get_field_index("dense_video_like_rate_logit"), "dense_video_like_rate_logit",
                            pa.array(np.full(data.num_rows, 5.0, np.float32)))
    assert np.abs(score_record_batch(predictor, moved)["click"] - naive["click"]).max() > 1e-6


def test_score_date_writes_one_score_row_per_candidate_with_its_source(spark, settings, tmp_path_factory):
    """The score job's step in process (tiny model, request-packed input of one date): the date's
    slice of ``scores`` holds every candidate once, with the model version, the feature version,
    each candidate's own source and the scores of the model called directly; the table gets its
    [0, 1] constraint; a count that does not match the candidates is a ScoringError."""
    from pyspark.sql import functions as F

    from conf.lake import qualified_name, read_table
    from conf.tables import SCORES
    from features.candidate_features import PASSTHROUGH
    from model.scoring import ScoringError, candidate_counts, score_date

    s = settings.with_lake(str(tmp_path_factory.mktemp("score_date_lake")))
    ModelStore(s.lake.model_store).save("infnet", build_model("infnet", SPEC, seed=0), SPEC, architecture="infnet")
    info = ModelStore(s.lake.model_store).info("infnet@1")
    data = candidate_batch(seed=4)
    flat = spark.createDataFrame(pa.Table.from_batches([data]).to_pandas())
    candidates = flat.select(*PASSTHROUGH, F.lit(1_000).cast("long").alias("request_time_ms"),
                             F.when(F.col("request_id") == "r2", "logged").otherwise("retrieval").alias("source"))
    counts = candidate_counts(candidates)
    assert (counts["n"], counts["requests"], counts["last"], counts["sources"]) == (9, 3, 1_000, ["logged", "retrieval"])
    rows = pack_requests(flat, SPEC, PASSTHROUGH)
    done = score_date(spark, s, info, "2022-05-04", rows, candidates, counts["n"], counts["sources"],
                      ScoringSettings(layout="packed"), feature_version=3)
    assert done.n_scored == 9 and done.out_of_vocabulary == {}
    got = read_table(spark, s, SCORES).orderBy("impression_id").toPandas()
    assert got["impression_id"].tolist() == sorted(data.column("impression_id").to_pylist())
    assert set(zip(got["model_name"], got["model_version"], got["feature_version"])) == {("infnet", "1", 3)}
    assert got["source"].tolist() == ["logged" if r == "r2" else "retrieval" for r in got["request_id"]]
    direct = score_record_batch(load_predictor(s.lake.model_store, "infnet@1"), data, reuse_user_side=False)
    order = np.argsort(np.array(data.column("impression_id").to_pylist()))
    np.testing.assert_allclose(got["score_click"], direct["click"][order], rtol=1e-5, atol=1e-6)
    properties = {r["key"] for r in spark.sql(f"SHOW TBLPROPERTIES {qualified_name(s, SCORES)}").collect()}
    assert "delta.constraints.scores_are_probabilities" in properties
    with pytest.raises(ScoringError, match="scored 9 rows for 10 candidates"):
        score_date(spark, s, info, "2022-05-04", rows, candidates, 10, ["retrieval"], ScoringSettings(layout="packed"),
                   feature_version=3, source="retrieval")
