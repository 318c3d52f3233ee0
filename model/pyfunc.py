"""MLflow's ``python_function`` flavour of a stored model: what ``mlflow.pyfunc.load_model`` and
``mlflow.pyfunc.spark_udf`` load from the registry (``models:/infnet@champion``).

Every artifact folder :meth:`model.store.ModelStore.save` writes is also an MLflow model: beside
``weights.pt``, ``feature_spec.json`` and ``info.json`` it holds an ``MLmodel`` file whose pyfunc
flavour names this module as its loader. The folder *is* the model: nothing is copied into an
``artifacts/`` subfolder, so MLflow and ``infnet score`` read the same bytes, and loading goes
through the store's own checks (the weights' SHA-256, the spec's fingerprint, the architecture).

The signature is the flat candidate layout (``model.scoring``'s ``flat``): the spec's categorical
columns (int32), each behaviour sequence and its gaps (arrays of int32 / float32), the dense values
(float32) in; one ``score_<task>`` (float64) per task out, the columns ``infnet score`` writes.
``predict`` scores each row on its own (no request grouping: MLflow hands it rows, not requests);
its scores equal those of ``infnet score``'s packed scorer with user-side reuse within 1e-6, loaded
from the registry and through ``spark_udf`` alike (tests/model/test_pyfunc.py).

>>> from features.spec import demo_spec
>>> sig = model_signature(demo_spec())
>>> sig.inputs.input_names()[:2], sig.outputs.input_names()
(['cat_user_id', 'cat_user_active_degree'], ['score_click', 'score_like', 'score_long_view', 'score_play_time'])
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from conf.tables import score_column
from features.spec import FeatureSpec

LOADER_MODULE = "model.pyfunc"
MLMODEL_FILE = "MLmodel"
# the label a model loaded through MLflow carries in messages: MLflow hands the loader a folder,
# not the registry version it came from
PYFUNC_LABEL = "pyfunc"


def model_signature(spec: FeatureSpec):
    """The ``ModelSignature`` of ``spec``'s flat candidate layout (inputs) and score columns (outputs)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    inputs = [ColSpec("integer", c.column) for c in spec.categorical]
    for s in spec.sequences:
        inputs += [ColSpec(Array("integer"), s.column), ColSpec(Array("float"), s.gap_column)]
    inputs += [ColSpec("float", d.column) for d in spec.dense]
    outputs = [ColSpec("double", score_column(t.name)) for t in spec.tasks]
    return ModelSignature(Schema(inputs), Schema(outputs))


def mlmodel_yaml(spec: FeatureSpec) -> str:
    """The ``MLmodel`` text of an artifact folder holding a model of ``spec``."""
    from mlflow.models import Model
    from mlflow.pyfunc import add_to_model

    mlmodel = Model(signature=model_signature(spec))
    add_to_model(mlmodel, loader_module=LOADER_MODULE)
    return mlmodel.to_yaml()


class StoredModelPyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps: ``predict(DataFrame)`` -> ``score_<task>`` columns."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor

    def predict(self, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        predictions = self.predictor.predict(model_input)  # the spec's columns, Arrow-converted, chunked
        return pd.DataFrame({score_column(t): np.asarray(v, np.float64) for t, v in predictions.items()})


def _load_pyfunc(data_path: str) -> StoredModelPyfunc:
    """MLflow's entry point: ``data_path`` is the (downloaded) artifact folder."""
    from model.predict import Predictor
    from model.scoring import choose_device
    from model.store import INFO_FILE, load_artifact

    name = json.loads((Path(data_path) / INFO_FILE).read_text())["name"]
    device = choose_device()  # the task's GPU when Spark assigned one, else CUDA when present, else the CPU
    model, info = load_artifact(str(data_path), f"{name}@{PYFUNC_LABEL}", map_location=device)
    return StoredModelPyfunc(Predictor(model, info, device))
