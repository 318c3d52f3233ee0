"""DCN-V2 (Wang et al., WWW 2021): explicit bounded-degree crosses ``x_{l+1} = x_0 * (W x_l + b) + x_l``
beside (``"parallel"``) or below (``"stacked"``) a deep MLP; per-task towers on top.

``low_rank=None`` uses full ``D x D`` matrices (the paper's default DCN-V2); an integer ``r`` uses
``W = U V^T`` (the paper's cheaper low-rank form).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.baselines.common import BaselineConfig, PooledInputModel
from model.base import UserState
from model.layers import MLP, TaskTowers


@dataclass
class DCNv2Config(BaselineConfig):
    n_cross_layers: int = 3
    low_rank: int | None = None
    deep_hidden: tuple[int, ...] = (512, 256)
    structure: Literal["parallel", "stacked"] = "parallel"


class CrossLayerV2(nn.Module):
    def __init__(self, dim: int, low_rank: int | None = None):
        super().__init__()
        if low_rank is None:
            self.w = nn.Linear(dim, dim)
        else:
            self.w = nn.Sequential(nn.Linear(dim, low_rank, bias=False), nn.Linear(low_rank, dim))

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.w(x) + x


class DCNv2(PooledInputModel):
    def __init__(self, spec: FeatureSpec, config: DCNv2Config | None = None):
        config = config or DCNv2Config()
        super().__init__(spec, config)
        if config.structure not in ("parallel", "stacked"):
            raise ValueError(f"structure must be 'parallel' or 'stacked', not {config.structure!r}")
        d = self.input_dim
        self.cross = nn.ModuleList(self.cross_layer(d, config) for _ in range(config.n_cross_layers))
        self.deep = MLP(d, config.deep_hidden, dropout=config.dropout)
        out = d + self.deep.out_dim if config.structure == "parallel" else self.deep.out_dim
        self.towers = TaskTowers(out, len(spec.tasks), config.tower_hidden, config.dropout)

    @staticmethod
    def cross_layer(dim: int, config) -> nn.Module:
        """One cross layer ``(x0, x) -> x'`` (subclasses swap in another kind: model.baselines.gdcn)."""
        return CrossLayerV2(dim, config.low_rank)

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        x0 = fields.flatten(1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        if self.config.structure == "parallel":
            h = torch.cat([x, self.deep(x0)], dim=-1)
        else:
            h = self.deep(x)
        return self.towers(h)
