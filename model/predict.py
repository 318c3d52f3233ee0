"""Predict with a stored model: columns in (Arrow, pandas or numpy), per-task probabilities out.

Used by the scoring UDF and by the accuracy benchmark. :func:`get_predictor` caches one loaded
model per (artifact folder, reference, device) per process, so a Spark Python worker that is reused loads
its model once (docs/PITFALLS.md: "A module-level model cache ... loaded the model once per worker").

Outputs: ``{task: float32 array}`` in the spec's task order; a binary task gives
``sigmoid(logit)``, a regression task the raw model output (e.g. ``log1p`` seconds of play time).

``tests/model/test_store.py`` shows the round trip: save -> ``load_predictor`` -> ``predict``.
"""
from __future__ import annotations

import threading
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from features.spec import FeatureSpec, check_compatible
from model.data import arrow_to_batch, model_inputs


def to_arrow(columns: Any, spec: FeatureSpec) -> pa.RecordBatch | pa.Table:
    """Arrow record batch / table, pandas DataFrame or ``{column: array}`` -> Arrow, spec columns only."""
    if isinstance(columns, (pa.RecordBatch, pa.Table)):
        return columns
    needed = spec.feature_columns
    try:
        import pandas as pd

        if isinstance(columns, pd.DataFrame):
            missing = [c for c in needed if c not in columns.columns]
            if missing:
                raise KeyError(f"input lacks feature columns {missing}")
            return pa.RecordBatch.from_pandas(columns[needed], preserve_index=False)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(columns, Mapping):
        missing = [c for c in needed if c not in columns]
        if missing:
            raise KeyError(f"input lacks feature columns {missing}")
        arrays = {}
        for c in needed:
            v = columns[c]
            if isinstance(v, np.ndarray) and v.ndim == 2:  # [rows, max_len] matrix -> list column
                v = list(v)
            arrays[c] = pa.array(v)
        return pa.RecordBatch.from_pydict(arrays)
    raise TypeError(f"cannot predict from {type(columns).__name__}: give Arrow, pandas or a dict of arrays")


def outputs_to_predictions(outputs: torch.Tensor, spec: FeatureSpec) -> dict[str, np.ndarray]:
    out = {}
    for i, task in enumerate(spec.tasks):
        col = outputs[:, i]
        out[task.name] = (torch.sigmoid(col) if task.kind == "binary" else col).float().cpu().numpy()
    return out


@torch.no_grad()
def predict_columns(model: nn.Module, spec: FeatureSpec, columns: Any, device: torch.device | str = "cpu",
                    chunk_rows: int = 8192) -> dict[str, np.ndarray]:
    """Per-task predictions of ``model`` for the rows of ``columns`` (chunked to bound memory)."""
    data = to_arrow(columns, spec)
    model.eval()
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, max(data.num_rows, 1), chunk_rows):
        piece = data.slice(start, chunk_rows)
        if piece.num_rows == 0 and data.num_rows:
            break
        batch = arrow_to_batch(piece, spec, with_labels=False)
        parts.append(outputs_to_predictions(model(model_inputs(batch, device)), spec))
    return {t.name: np.concatenate([p[t.name] for p in parts]) for t in spec.tasks}


class Predictor:
    """A loaded stored model plus its spec; ``predict(columns)`` -> ``{task: probabilities}``."""

    def __init__(self, model: nn.Module, info, device: torch.device | str = "cpu") -> None:
        self.model, self.info, self.device = model.eval(), info, torch.device(device)
        self.spec: FeatureSpec = info.spec

    @property
    def ref(self) -> str:
        return self.info.ref

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.spec.tasks]

    def check_spec(self, actual: FeatureSpec) -> None:
        """Raise ``FeatureSpecMismatch`` unless ``actual`` is the spec the model was trained on."""
        check_compatible(self.spec, actual, what=f"model {self.ref}")

    def predict(self, columns: Any, chunk_rows: int = 8192) -> dict[str, np.ndarray]:
        return predict_columns(self.model, self.spec, columns, self.device, chunk_rows)


def load_predictor(store_root: str, ref: str, device: str = "cpu",
                   expected_spec: FeatureSpec | None = None, builder=None) -> Predictor:
    """Load ``name@version``, ``name@alias`` (or the newest ``name``) from the store at
    ``store_root`` (its registry in the root: ``model.store.ModelStore``) as a :class:`Predictor`."""
    from model.store import ModelStore

    model, info = ModelStore(store_root).load(ref, map_location=device, expected_spec=expected_spec, builder=builder)
    return Predictor(model, info, device)


_CACHE: dict[tuple[str, str, str], Predictor] = {}
_LOCK = threading.Lock()


def get_predictor(artifact: str, ref: str, device: str = "cpu") -> Predictor:
    """Process-wide cached :class:`Predictor` of a pinned version (the scoring UDF's entry point):
    ``artifact`` is the version's artifact folder (``ModelInfo.path``, resolved by the driver) and
    ``ref`` its ``name@version``, so an executor reads the files and never asks the registry."""
    from model.store import load_artifact

    key = (artifact, ref, device)
    with _LOCK:
        if key not in _CACHE:
            model, info = load_artifact(artifact, ref, map_location=device)
            _CACHE[key] = Predictor(model, info, device)
        return _CACHE[key]
