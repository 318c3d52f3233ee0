"""FM (Rendle, ICDM 2010), multi-task: per task, first-order terms + a readout of the pairwise term.

The fields are the pooled-input fields of :mod:`model.baselines.common` (``M`` categorical, one
pooled vector per sequence, one token per dense value). FM's second-order term
``sum_{i<j} <v_i, v_j>`` is computed in linear time as ``0.5 * ((sum_i v_i)^2 - sum_i v_i^2)``
summed over the embedding axis; kept as the ``embed_dim`` vector (:func:`bi_interaction`), it is
read by one tower per task. With the default ``tower_hidden=()`` a tower is one linear layer whose
weights start at 1 and bias at 0, i.e. every task starts as the classic FM
``w_0 + sum_m w_{t, cat_m} + sum_{i<j} <v_i, v_j>`` and then learns its own per-dimension weights.

Also here, for the other interaction models: :func:`bi_interaction` (NFM's Bi-Interaction pooling)
and :func:`field_pairs` (the ``i < j`` pairs of fields that AFM, PNN and FiBiNET enumerate).

>>> v = torch.tensor([[[1.0, 2.0], [3.0, 0.5], [-1.0, 1.0]]])  # [B=1, n=3, e=2]
>>> bi_interaction(v)  # v1*v2 + v1*v3 + v2*v3, per dimension
tensor([[-1.0000,  3.5000]])
>>> left, right = field_pairs(v)
>>> left.shape, (left * right).sum(-1).tolist()  # PNN's inner products <v_i, v_j>, pairs (0,1), (0,2), (1,2)
(torch.Size([1, 3, 2]), [[4.0, 1.0, -2.5]])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import UserState
from model.baselines.common import BaselineConfig
from model.baselines.wide_deep import FirstOrderModel
from model.layers import TaskTowers, last_linear


def bi_interaction(fields: Tensor) -> Tensor:
    """``[B, n, e] -> [B, e]``: ``sum_{i<j} v_i * v_j`` (element-wise), in ``O(n e)``."""
    return 0.5 * (fields.sum(1).pow(2) - fields.pow(2).sum(1))


def pair_indices(n: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """The ``n (n - 1) / 2`` pairs ``i < j`` in row-major order: ``(i, j)`` as two ``Long[P]``."""
    i, j = torch.triu_indices(n, n, offset=1, device=device)
    return i, j


def field_pairs(fields: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, n, e]`` -> ``(v_i, v_j)``, each ``[B, P, e]`` over the pairs of :func:`pair_indices`."""
    i, j = pair_indices(fields.shape[1], fields.device)
    return fields.index_select(1, i), fields.index_select(1, j)


@dataclass
class FMConfig(BaselineConfig):
    tower_hidden: tuple[int, ...] = ()  # () = a linear readout per task, starting as the classic FM sum


class FM(FirstOrderModel):
    def __init__(self, spec: FeatureSpec, config: FMConfig | None = None):
        config = config or FMConfig()
        super().__init__(spec, config)
        self.towers = TaskTowers(self.field_width, len(spec.tasks), config.tower_hidden, config.dropout)
        if not config.tower_hidden:
            for tower in self.towers.towers:
                nn.init.ones_(last_linear(tower).weight)
                nn.init.zeros_(last_linear(tower).bias)

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        return self.towers(bi_interaction(fields))

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """FM has no shared dense layer: every task's loss flows through the categorical tables."""
        return list(self.cat_embedding.tables.parameters())
