"""AFM (Xiao et al., IJCAI 2017), multi-task: first-order terms + attention-pooled pairwise interactions.

Every pair ``i < j`` of the ``n`` field embeddings gives ``v_i * v_j`` (element-wise); an attention
network scores it, ``a'_ij = h^T ReLU(W (v_i * v_j) + b)`` (``attention_dim`` = the paper's
attention factor ``t``), ``a = softmax(a')`` over the pairs, and the pooled vector
``f = sum_{i<j} a_ij (v_i * v_j)`` (``[B, e]``) is the shared bottom. The paper reads it with one
vector ``p`` (``p^T f``): the default ``tower_hidden=()`` is that linear readout, one per task.
The first-order terms are :class:`model.baselines.wide_deep.FirstOrderModel`'s.

>>> pool = AttentionPairPooling(dim=4, attention_dim=3)
>>> pool(torch.randn(2, 5, 4)).shape
torch.Size([2, 4])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import UserState
from model.baselines.common import BaselineConfig
from model.baselines.fm import field_pairs
from model.baselines.wide_deep import FirstOrderModel
from model.layers import TaskTowers


class AttentionPairPooling(nn.Module):
    """``[B, n, e] -> [B, e]``: the attention-weighted sum of the pairwise products ``v_i * v_j``."""

    def __init__(self, dim: int, attention_dim: int = 16, dropout: float = 0.0):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(dim, attention_dim), nn.ReLU(), nn.Linear(attention_dim, 1, bias=False))
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def products(fields: Tensor) -> Tensor:
        """``[B, P, e]``: ``v_i * v_j`` for every pair ``i < j``."""
        left, right = field_pairs(fields)
        return left * right

    def weights(self, products: Tensor) -> Tensor:
        """``a [B, P]``: the softmax over the pairs of the attention scores ``h^T ReLU(W x + b)``."""
        return torch.softmax(self.attention(products).squeeze(-1), dim=-1)

    def forward(self, fields: Tensor) -> Tensor:
        products = self.products(fields)
        return self.dropout((self.weights(products).unsqueeze(-1) * products).sum(1))


@dataclass
class AFMConfig(BaselineConfig):
    attention_dim: int = 16  # the attention factor t
    tower_hidden: tuple[int, ...] = ()  # () = the paper's linear readout p^T f, one per task


class AFM(FirstOrderModel):
    def __init__(self, spec: FeatureSpec, config: AFMConfig | None = None):
        config = config or AFMConfig()
        super().__init__(spec, config)
        self.pooling = AttentionPairPooling(self.field_width, config.attention_dim, config.dropout)
        self.towers = TaskTowers(self.field_width, len(spec.tasks), config.tower_hidden, config.dropout)

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        return self.towers(self.pooling(fields))

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The attention network (the pooled vector every tower reads is weighted by it)."""
        return list(self.pooling.attention.parameters())
