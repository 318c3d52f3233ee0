"""The torch-rechub adapter of bench.accuracy's external arms (bench/external.py) on tiny batches."""
from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from features.spec import demo_spec
from model.base import random_batch
from model.data import arrow_to_batch, model_inputs
from model.loaders import TensorBatches
from model.synthetic import synthetic_examples
from model.train import TrainConfig, build_and_train, set_seed

external = pytest.importorskip("bench.external")
pytest.importorskip("torch_rechub", reason="torch-rechub is pinned in requirements.lock")

SPEC = demo_spec(seq_len=5)


@pytest.mark.parametrize("architecture", external.ARCHITECTURES)
def test_adapter_returns_their_model_as_logits(architecture):
    from torch_rechub.basic.layers import PredictionLayer

    torch.manual_seed(0)
    model = external.RechubModel(SPEC, architecture).eval()
    batch = random_batch(SPEC, 6)
    logits = model(batch)
    assert logits.shape == (6, len(SPEC.tasks))
    kinds = ["classification" if t.kind == "binary" else "regression" for t in SPEC.tasks]
    model.model.predict_layers = torch.nn.ModuleList(PredictionLayer(k) for k in kinds)  # theirs, as shipped
    theirs = model(batch)
    binary = torch.tensor([t.kind == "binary" for t in SPEC.tasks])
    torch.testing.assert_close(torch.sigmoid(logits[:, binary]), theirs[:, binary])
    torch.testing.assert_close(logits[:, ~binary], theirs[:, ~binary])


@pytest.mark.parametrize("architecture", external.ARCHITECTURES)
def test_adapter_trains_with_our_trainer(architecture):
    rows = lambda n, seed: TensorBatches(arrow_to_batch(synthetic_examples(SPEC, n, seed=seed), SPEC), 64)  # noqa: E731
    valid = rows(128, 1)
    result = build_and_train(architecture, SPEC, rows(256, 0), valid, None,
                             TrainConfig(epochs=1, progress=False), builder=external.build)
    assert result.metrics["steps"] == 4
    # the reported valid MTL-AUC is the mean of the binary tasks' AUCs of the returned model,
    # recomputed here with scikit-learn from its own predictions
    result.model.eval()
    with torch.no_grad():
        outputs = torch.cat([result.model(model_inputs(b, "cpu")) for b in valid]).numpy()
    labels = torch.cat([b["label"] for b in valid]).numpy()
    masks = torch.cat([b["mask"] for b in valid]).numpy() > 0
    aucs = [roc_auc_score(labels[masks[:, i], i], outputs[masks[:, i], i])
            for i, t in enumerate(SPEC.tasks) if t.kind == "binary"]
    assert result.metrics["valid"]["mtl_auc"] == pytest.approx(float(np.mean(aucs)), abs=1e-9)
    set_seed(TrainConfig().seed)  # what build_and_train does before it builds the model
    initial = external.RechubModel(SPEC, architecture).state_dict()
    trained = result.model.state_dict()
    assert set(initial) == set(trained)
    assert any(not torch.equal(initial[k], trained[k].cpu()) for k in initial)  # the step moved weights


def test_unknown_architecture_and_docstring():
    with pytest.raises(ValueError, match="unknown torch-rechub architecture"):
        external.RechubModel(SPEC, "dcn")
    result = doctest.testmod(external)
    assert result.attempted > 0 and result.failed == 0
