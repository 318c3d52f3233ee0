"""A stored model is an MLflow pyfunc model: loaded from the registry by MLflow, and scored through
``mlflow.pyfunc.spark_udf``, it gives the scores ``infnet score``'s scorer gives (1e-6)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conf.tables import score_column
from model.registry import build_model
from model.scoring import ScoringSettings, make_batch_scorer, output_schema_ddl
from model.store import ModelStore
from tests.model.test_scoring import SPEC, candidate_batch, packed_batch

SCORES = [score_column(t.name) for t in SPEC.tasks]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = ModelStore(str(tmp_path_factory.mktemp("pyfunc_models")))
    store.save("infnet", build_model("infnet", SPEC, seed=3), SPEC, architecture="infnet")
    store.set_alias("infnet", "champion", 1)
    return store


@pytest.fixture
def registry(store, monkeypatch):
    """MLflow's default tracking / registry URI pointed at the store's registry, for ``models:/``."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.registry)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", store.registry)
    return store


def score_job_scores(store: ModelStore, data: pa.RecordBatch) -> pd.DataFrame:
    """What ``infnet score`` computes for ``data``: the packed layout with user-side reuse."""
    scorer = make_batch_scorer(store.info("infnet@1").path, "infnet@1", ["request_id", "impression_id"],
                               ScoringSettings(layout="packed"))
    out = pa.Table.from_batches(list(scorer([packed_batch(data)]))).to_pandas()
    return out.sort_values("impression_id").reset_index(drop=True)


def test_mlflow_loads_the_registered_version_with_the_job_scores(registry):
    import mlflow.pyfunc

    data = candidate_batch(seed=1)
    loaded = mlflow.pyfunc.load_model("models:/infnet@champion")
    assert loaded.metadata.get_input_schema().input_names() == SPEC.feature_columns
    scores = loaded.predict(data.to_pandas()[SPEC.feature_columns])
    expected = score_job_scores(registry, data)
    assert list(scores.columns) == SCORES
    np.testing.assert_allclose(scores[SCORES].to_numpy(), expected[SCORES].to_numpy(), rtol=0, atol=1e-6)


def test_spark_udf_gives_the_score_job_scores(spark, registry):
    import mlflow.pyfunc

    data = candidate_batch(seed=2)
    frame = spark.createDataFrame(data.to_pandas())
    udf = mlflow.pyfunc.spark_udf(spark, "models:/infnet@champion", env_manager="local",
                                  result_type=output_schema_ddl(SPEC, []))
    scored = (frame.withColumn("s", udf(*SPEC.feature_columns))
              .select("impression_id", *(f"s.{c}" for c in SCORES)).toPandas()
              .sort_values("impression_id").reset_index(drop=True))
    expected = score_job_scores(registry, data)
    assert scored["impression_id"].tolist() == expected["impression_id"].tolist()
    np.testing.assert_allclose(scored[SCORES].to_numpy(), expected[SCORES].to_numpy(), rtol=0, atol=1e-6)


def test_a_truncated_artifact_is_refused_through_mlflow_too(tmp_path, monkeypatch):
    import mlflow.pyfunc

    from model.store import WEIGHTS_FILE, CorruptModel

    store = ModelStore(str(tmp_path))
    info = store.save("infnet", build_model("infnet", SPEC, seed=0), SPEC, architecture="infnet")
    weights = f"{info.path}/{WEIGHTS_FILE}"
    with open(weights, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CorruptModel, match=WEIGHTS_FILE):
        mlflow.pyfunc.load_model(info.path)
