"""AutoInt (Song et al., CIKM 2019), multi-task: stacked self-attentive interacting layers over the
field embeddings, towers per task.

Interacting layer, head ``h``, field ``m``: ``a_{m,k} = softmax_k(<W_Q^h e_m, W_K^h e_k>)`` over all
fields ``k`` (``m`` included), ``e~_m^h = sum_k a_{m,k} W_V^h e_k``; the heads are concatenated and
``e_m' = ReLU(e~_m + W_Res e_m)`` (the residual, ``residual=True``). The paper does not scale the
scores; ``scaled=True`` divides them by ``sqrt(head_dim)``. The output of the last layer, flattened,
is the shared bottom read by one tower per task; ``deep_hidden`` adds AutoInt+'s parallel MLP over
the field embeddings (off by default, as in the paper's AutoInt).

>>> layer = InteractingLayer(in_dim=4, head_dim=3, n_heads=2)
>>> layer(torch.randn(5, 7, 4)).shape
torch.Size([5, 7, 6])
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import UserState
from model.baselines.common import BaselineConfig, PooledInputModel
from model.layers import MLP, TaskTowers


class InteractingLayer(nn.Module):
    """Multi-head self-attention across fields with a projected residual: ``[B, n, d] -> [B, n, H d']``."""

    def __init__(self, in_dim: int, head_dim: int, n_heads: int, residual: bool = True, scaled: bool = False):
        super().__init__()
        self.head_dim, self.n_heads, self.scaled = head_dim, n_heads, scaled
        out = head_dim * n_heads
        self.query = nn.Linear(in_dim, out, bias=False)
        self.key = nn.Linear(in_dim, out, bias=False)
        self.value = nn.Linear(in_dim, out, bias=False)
        self.residual = nn.Linear(in_dim, out, bias=False) if residual else None
        self.out_dim = out

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        heads = lambda proj: proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # noqa: E731  [B, H, n, d']
        q, k, v = heads(self.query), heads(self.key), heads(self.value)
        scores = q @ k.transpose(-1, -2)  # [B, H, n, n]
        if self.scaled:
            scores = scores / math.sqrt(self.head_dim)
        out = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, n, self.out_dim)
        if self.residual is not None:
            out = out + self.residual(x)
        return torch.relu(out)


@dataclass
class AutoIntConfig(BaselineConfig):
    n_layers: int = 2  # interacting layers (the paper: 3)
    n_heads: int = 2
    head_dim: int = 8  # d' per head (the paper: 32 with 16-wide embeddings)
    residual: bool = True
    scaled: bool = False  # divide the attention scores by sqrt(head_dim) (the paper does not)
    deep_hidden: tuple[int, ...] = ()  # AutoInt+: a parallel MLP over the field embeddings when set


class AutoInt(PooledInputModel):
    def __init__(self, spec: FeatureSpec, config: AutoIntConfig | None = None):
        config = config or AutoIntConfig()
        super().__init__(spec, config)
        if config.n_layers < 1:
            raise ValueError("AutoInt needs at least one interacting layer")
        layers, width = [], self.field_width
        for _ in range(config.n_layers):
            layers.append(InteractingLayer(width, config.head_dim, config.n_heads, config.residual, config.scaled))
            width = layers[-1].out_dim
        self.interacting = nn.ModuleList(layers)
        self.deep = MLP(self.input_dim, config.deep_hidden, dropout=config.dropout) if config.deep_hidden else None
        out = self.n_fields * width + (self.deep.out_dim if self.deep is not None else 0)
        self.towers = TaskTowers(out, len(spec.tasks), config.tower_hidden, config.dropout)

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        x = fields
        for layer in self.interacting:
            x = layer(x)
        h = x.flatten(1)
        if self.deep is not None:
            h = torch.cat([h, self.deep(fields.flatten(1))], dim=-1)
        return self.towers(h)

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last interacting layer (every task's tower reads its output)."""
        return list(self.interacting[-1].parameters())
