"""xDeepFM (Lian et al., KDD 2018), multi-task: first-order terms + CIN + a deep MLP, towers per task.

CIN (Compressed Interaction Network) on the ``n`` field embeddings ``X^0 [n, e]``: layer ``k`` has
``H_k`` feature maps, ``X^k_h = sum_{i < H_{k-1}} sum_{j < n} W^{k,h}_{ij} (X^{k-1}_i * X^0_j)``
(element-wise along the embedding axis: vector-wise interactions of bounded degree ``k + 1``), and
every layer's maps are sum-pooled over the embedding axis, ``p^k_h = sum_d X^k_{h,d}``. With
``split_half`` (the paper's reference code) half of the maps of every layer but the last feed the
next layer and the other half go to the output. The pooled ``p^+`` and the deep MLP's output are
concatenated (the shared bottom) and read by one tower per task; the first-order terms are
:class:`model.baselines.wide_deep.FirstOrderModel`'s.

>>> layer = CINLayer(n_prev=2, n_fields=3, n_maps=4)
>>> layer(torch.randn(5, 2, 8), torch.randn(5, 3, 8)).shape
torch.Size([5, 4, 8])
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import UserState
from model.baselines.common import BaselineConfig
from model.baselines.wide_deep import FirstOrderModel
from model.layers import MLP, TaskTowers, last_linear


class CINLayer(nn.Module):
    """``X^k_h = sum_{i,j} W_{h,i,j} (X^{k-1}_i * X^0_j)``: ``[B, H_{k-1}, e]``, ``[B, n, e]`` -> ``[B, H_k, e]``
    (no bias and no activation, as in the paper's equation; the model applies ``cin_activation``)."""

    def __init__(self, n_prev: int, n_fields: int, n_maps: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_maps, n_prev, n_fields))
        bound = 1.0 / math.sqrt(n_prev * n_fields)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x_prev: Tensor, x0: Tensor) -> Tensor:
        b, h_prev, e = x_prev.shape
        z = (x_prev.unsqueeze(2) * x0.unsqueeze(1)).reshape(b, h_prev * x0.shape[1], e)  # [B, H_{k-1} n, e]
        return torch.matmul(self.weight.reshape(self.weight.shape[0], -1), z)


class CIN(nn.Module):
    """Stacked :class:`CINLayer` s; ``[B, n, e]`` -> the sum-pooled output maps ``[B, out_dim]``."""

    def __init__(self, n_fields: int, layer_sizes: tuple[int, ...], split_half: bool = True,
                 activation: Literal["identity", "relu"] = "identity"):
        super().__init__()
        if not layer_sizes or (split_half and any(h % 2 for h in layer_sizes[:-1])):
            raise ValueError(f"CIN needs at least one layer (and even sizes but the last with split_half): {layer_sizes}")
        if activation not in ("identity", "relu"):
            raise ValueError(f"cin_activation must be 'identity' or 'relu', not {activation!r}")
        self.split_half, self.activation = split_half, activation
        layers, n_prev, self.out_dim = [], n_fields, 0
        for k, h in enumerate(layer_sizes):
            layers.append(CINLayer(n_prev, n_fields, h))
            last = k == len(layer_sizes) - 1
            n_prev = h // 2 if split_half and not last else h
            self.out_dim += h // 2 if split_half and not last else h
        self.layers = nn.ModuleList(layers)

    def forward(self, x0: Tensor) -> Tensor:
        x, pooled = x0, []
        for k, layer in enumerate(self.layers):
            x = layer(x, x0)
            if self.activation == "relu":
                x = torch.relu(x)
            if self.split_half and k < len(self.layers) - 1:
                x, out = x.chunk(2, dim=1)  # the first half feeds the next layer
            else:
                out = x
            pooled.append(out.sum(-1))
        return torch.cat(pooled, dim=-1)


@dataclass
class XDeepFMConfig(BaselineConfig):
    cin_layers: tuple[int, ...] = (64, 64)  # feature maps per CIN layer (the paper: 200 x 3 on Criteo)
    split_half: bool = True
    cin_activation: Literal["identity", "relu"] = "identity"
    deep_hidden: tuple[int, ...] = (256, 128)


class XDeepFM(FirstOrderModel):
    def __init__(self, spec: FeatureSpec, config: XDeepFMConfig | None = None):
        config = config or XDeepFMConfig()
        super().__init__(spec, config)
        self.cin = CIN(self.n_fields, config.cin_layers, config.split_half, config.cin_activation)
        self.deep = MLP(self.input_dim, config.deep_hidden, dropout=config.dropout)
        self.towers = TaskTowers(self.cin.out_dim + self.deep.out_dim, len(spec.tasks), config.tower_hidden,
                                 config.dropout)

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        return self.towers(torch.cat([self.cin(fields), self.deep(fields.flatten(1))], dim=-1))

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last CIN layer and the deep MLP's output layer (the towers read both)."""
        deep = list(last_linear(self.deep).parameters()) if self.config.deep_hidden else []
        return [self.cin.layers[-1].weight, *deep]
