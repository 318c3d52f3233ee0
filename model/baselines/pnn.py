"""PNN with inner products (IPNN; Qu et al., ICDM 2016), multi-task: a product layer, a deep MLP,
towers per task.

The product layer keeps the linear signals ``z`` (the ``n`` field embeddings, flattened) and adds
the quadratic signals ``p_ij = <v_i, v_j>`` of every pair ``i < j`` (``n (n - 1) / 2`` scalars);
the first hidden layer ``l_1 = ReLU(W_z z + W_p p + b)`` is the first layer of the shared MLP over
``[z, p]``, read by one tower per task. The paper's low-rank decomposition of ``W_p`` (which
exists to avoid materialising ``p``) is not needed at these sizes and left out.

>>> ProductLayer()(torch.tensor([[[1.0, 2.0], [3.0, 0.5], [-1.0, 1.0]]]))  # z (6 values) then p (3 pairs)
tensor([[ 1.0000,  2.0000,  3.0000,  0.5000, -1.0000,  1.0000,  4.0000,  1.0000, -2.5000]])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import UserState
from model.baselines.common import BaselineConfig, PooledInputModel
from model.baselines.fm import field_pairs
from model.layers import MLP, TaskTowers


class ProductLayer(nn.Module):
    """``[B, n, e] -> [B, n e + n (n - 1) / 2]``: the flattened fields, then their pairwise inner products."""

    def forward(self, fields: Tensor) -> Tensor:
        left, right = field_pairs(fields)
        return torch.cat([fields.flatten(1), (left * right).sum(-1)], dim=-1)


@dataclass
class PNNConfig(BaselineConfig):
    deep_hidden: tuple[int, ...] = (256, 128)  # the first layer is the paper's l_1 over [z, p]


class PNN(PooledInputModel):
    def __init__(self, spec: FeatureSpec, config: PNNConfig | None = None):
        config = config or PNNConfig()
        super().__init__(spec, config)
        if not config.deep_hidden:
            raise ValueError("PNN needs at least one hidden layer (l_1 reads the product layer)")
        n = self.n_fields
        self.product = ProductLayer()
        self.deep = MLP(self.input_dim + n * (n - 1) // 2, config.deep_hidden, dropout=config.dropout)
        self.towers = TaskTowers(self.deep.out_dim, len(spec.tasks), config.tower_hidden, config.dropout)

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        return self.towers(self.deep(self.product(fields)))
