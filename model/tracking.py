"""MLflow Tracking of training runs: every ``infnet train`` is one run of the experiment
:data:`EXPERIMENT` in the lake's tracking store (``LakeSettings.mlflow_tracking_uri``: SQLite under
the lake unless ``INFNET_MLFLOW_TRACKING_URI`` names another store or an MLflow server), with

- parameters: the architecture, the model config (``model.*``), the training config (``train.*``,
  task weights included), the feature settings (``features.*``) and the date split (``data.*``);
- the input: ``examples`` as a Delta dataset at the pinned version, digest = the feature spec's
  fingerprint; the feature spec itself as the artifact ``feature_spec.json``;
- metrics: each validation pass as ``valid.<task>.<metric>`` (and ``train_loss``) at its step, and the
  final ``valid.*`` / ``test.*`` of the stored model;
- tags: the code revision (``mlflow.source.git.commit``) and the model store reference
  (``infnet.model_ref``) once stored.

The run opens before training (a store that does not answer fails the job before hours of
training, :class:`TrackingError`) and ends FINISHED, or FAILED when training raised.
``scripts/mlflow.sh start`` serves the UI over the same store.

>>> flat_metrics({"click": {"auc": 0.71, "n": 10}, "mtl_auc": 0.7, "note": "x"}, "valid")
{'valid.click.auc': 0.71, 'valid.click.n': 10.0, 'valid.mtl_auc': 0.7}
"""
from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

EXPERIMENT = "infnet-train"
RUN_ID_KEY = "mlflow_run_id"  # where the model store's info.json keeps the run of a stored model


class TrackingError(RuntimeError):
    """The MLflow tracking store did not answer or refused a write (the message names the store)."""


def flat_metrics(values: dict[str, Any], prefix: str) -> dict[str, float]:
    """The finite numeric leaves of a nested metrics dict, as ``prefix.key.subkey``."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def flat_params(values: dict[str, Any], prefix: str) -> dict[str, str]:
    """``prefix.key`` -> str(value) for a config dict (lists and dicts as their text)."""
    return {f"{prefix}.{key}": str(value) for key, value in values.items()}


def _quiet() -> None:
    # the SQLite store logs its schema migrations at INFO on first use, alembic each step
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@functools.lru_cache(maxsize=8)
def mlflow_client(uri: str):
    """One ``MlflowClient`` per store URI and process, tracking and registry on the same store (a
    SQLite file's folder created first: SQLite creates the file, not its folder)."""
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    _quiet()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


class TrainingRun:
    """One training run in the tracking store (see the module docstring); use as a context
    manager: the run ends FINISHED, or FAILED when the block raises."""

    def __init__(self, tracking_uri: str, artifact_location: str, run_name: str, params: dict[str, str],
                 tags: dict[str, str] | None = None):
        self.tracking_uri = tracking_uri
        try:
            self.client = mlflow_client(tracking_uri)
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = experiment.experiment_id if experiment else self._create_experiment(artifact_location)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags or {}).info.run_id
        except Exception as err:  # noqa: BLE001 - the store is outside us: whatever it raises is its answer
            raise TrackingError(self._describe(err)) from None
        self.log_params(params)  # a TrackingError of its own

    def _create_experiment(self, artifact_location: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(EXPERIMENT, artifact_location=artifact_location)
        except MlflowException:  # another run created it meanwhile
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id

    def _describe(self, err: Exception) -> str:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return f"MLflow tracking store {self.tracking_uri}: {first[:300]}"

    def _call(self, method: str, *args, **kwargs):
        try:
            return getattr(self.client, method)(self.run_id, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - as in __init__
            raise TrackingError(self._describe(err)) from None

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        self._call("log_batch", params=[Param(k, v[:6000]) for k, v in params.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._call("log_batch", metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_examples_input(self, table_path: str, version: int, spec_fingerprint: str, spec_json: dict) -> None:
        """``examples`` at ``version`` as the run's training input, and the feature spec as an artifact."""
        from mlflow.data.delta_dataset_source import DeltaDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        dataset = MetaDataset(source=DeltaDatasetSource(path=table_path, delta_table_version=version),
                              name="examples", digest=spec_fingerprint)._to_mlflow_entity()
        self._call("log_inputs", [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])
        self._call("log_dict", spec_json, "feature_spec.json")

    def log_history(self, history: list[dict[str, Any]]) -> None:
        """Each validation pass of the training loop at its optimiser step."""
        for entry in history:
            values = flat_metrics(entry.get("valid") or {}, "valid")
            if "train_loss" in entry:
                values["train_loss"] = float(entry["train_loss"])
            self.log_metrics(values, step=int(entry.get("step", 0)))

    def log_result(self, model_config: dict[str, Any], metrics: dict[str, Any], history: list[dict[str, Any]],
                   model_ref: str) -> None:
        """After training: the model config in force, each validation pass, the stored model's final
        ``valid.*`` / ``test.*`` metrics (at the last step) and its model store reference."""
        self.log_params(flat_params(model_config, "model"))
        self.log_history(history)
        last_step = int(history[-1].get("step", 0)) if history else 0
        final = {**flat_metrics(metrics.get("valid") or {}, "valid"), **flat_metrics(metrics.get("test") or {}, "test")}
        self.log_metrics(final, step=last_step)
        self._call("set_tag", "infnet.model_ref", model_ref)

    def __enter__(self) -> "TrainingRun":
        return self

    def __exit__(self, kind, err, tb) -> None:
        try:
            self.client.set_terminated(self.run_id, "FAILED" if kind else "FINISHED")
        except Exception:
            if kind is None:
                raise
            # the block's own error is the one to report; the run stays RUNNING in the store


def training_params(architecture: str, train_config: dict[str, Any], feature_settings: dict[str, Any],
                    splits: dict[str, list[str]], examples_version: int) -> dict[str, str]:
    """The parameters a run is opened with (the model config follows in :meth:`TrainingRun.log_result`).

    >>> training_params("mmoe", {"lr": 0.001}, {"seq_len": 50}, {"train": ["2022-04-25"]}, 3)["data.train_dates"]
    '2022-04-25'
    """
    return {"architecture": architecture, **flat_params(train_config, "train"), **flat_params(feature_settings, "features"),
            **{f"data.{split}_dates": ",".join(dates) for split, dates in splits.items()},
            "data.examples_version": str(examples_version)}


def open_training_run(settings, run_name: str, params: dict[str, str]) -> TrainingRun:
    """A :class:`TrainingRun` in ``settings``' tracking store, tagged with the code revision."""
    from model.store import code_revision

    return TrainingRun(settings.lake.mlflow_tracking_uri, settings.lake.mlflow_artifacts, run_name, params,
                       {"mlflow.source.git.commit": code_revision(), "mlflow.source.name": "infnet train"})
