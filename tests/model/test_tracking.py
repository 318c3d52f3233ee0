"""MLflow tracking of a training run: what a run holds, FAILED on an error, one line when the store
cannot be written (model/tracking.py)."""
from __future__ import annotations

import pytest

from model.tracking import EXPERIMENT, TrackingError, TrainingRun, open_training_run, training_params

HISTORY = [{"epoch": 0, "step": 10, "valid": {"click": {"auc": 0.6}, "mtl_auc": 0.6}, "train_loss": 0.9},
           {"epoch": 1, "step": 20, "valid": {"click": {"auc": 0.7}, "mtl_auc": 0.7}, "train_loss": 0.8}]
METRICS = {"valid": {"click": {"auc": 0.7}, "mtl_auc": 0.7}, "test": {"click": {"auc": 0.68, "gauc": 0.55}}}


def _run(tmp_path) -> TrainingRun:
    """A run in the default store of a lake at ``tmp_path`` (SQLite under <lake>/mlflow)."""
    from conf.settings import LakeSettings, Settings

    settings = Settings(lake=LakeSettings(root=str(tmp_path / "lake"), mlflow_uri=""))
    return open_training_run(settings, "mmoe", training_params(
        "mmoe", {"lr": 0.001}, {"seq_len": 50}, {"train": ["2022-04-25", "2022-04-26"], "valid": ["2022-04-27"]}, 3))


def test_a_run_holds_params_input_history_final_metrics_and_the_model_ref(tmp_path):
    from mlflow.tracking import MlflowClient

    with _run(tmp_path) as run:
        run.log_examples_input(str(tmp_path / "tables" / "examples"), 3, "abc123", {"fields": ["user_id"]})
        run.log_result({"d": 16}, METRICS, HISTORY, "mmoe@1")
    assert run.tracking_uri == f"sqlite:///{tmp_path / 'lake' / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(run.tracking_uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == EXPERIMENT
    p = got.data.params
    assert (p["architecture"], p["train.lr"], p["features.seq_len"], p["model.d"]) == ("mmoe", "0.001", "50", "16")
    assert p["data.train_dates"] == "2022-04-25,2022-04-26" and p["data.examples_version"] == "3"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "valid.mtl_auc")] == [
        (10, 0.6), (20, 0.7), (20, 0.7)]  # two validation passes, then the stored model's metric
    assert got.data.metrics["test.click.gauc"] == 0.55 and got.data.metrics["train_loss"] == 0.8
    assert got.data.tags["infnet.model_ref"] == "mmoe@1" and "mlflow.source.git.commit" in got.data.tags
    (dataset,) = got.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest, dataset.dataset.source_type) == ("examples", "abc123", "delta_table")
    assert '"delta_table_version": 3' in dataset.dataset.source
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["feature_spec.json"]


def test_a_run_whose_training_raises_ends_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    with pytest.raises(ValueError, match="boom"):
        with _run(tmp_path) as run:
            raise ValueError("boom")
    assert MlflowClient(run.tracking_uri).get_run(run.run_id).info.status == "FAILED"


def test_a_store_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    (tmp_path / "file").write_text("not a folder")  # SQLite cannot create its database under a file
    with pytest.raises(TrackingError, match=r"^MLflow tracking store sqlite:///.*file/mlflow.db: ") as err:
        TrainingRun(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}", (tmp_path / "a").as_uri(), "x", {})
    assert "\n" not in str(err.value)


def test_the_ui_script_serves_the_lake_s_runs_on_loopback_and_stops(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import urllib.request
    from pathlib import Path

    with _run(tmp_path):
        pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "INFNET_LAKE": str(tmp_path / "lake"), "INFNET_MLFLOW_PORT": str(port),
           "INFNET_SERVICES_DIR": str(tmp_path / "services"), "INFNET_MLFLOW_TRACKING_URI": ""}
    script = str(Path(__file__).resolve().parents[2] / "scripts" / "mlflow.sh")
    start = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stderr
        assert f"UI at http://127.0.0.1:{port}" in start.stderr
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search?max_results=10"
        names = [e["name"] for e in json.load(urllib.request.urlopen(url, timeout=30))["experiments"]]
        assert EXPERIMENT in names
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, timeout=60)
    assert subprocess.run(["bash", script, "status"], env=env, capture_output=True).returncode == 3
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), 1)
