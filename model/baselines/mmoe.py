"""MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task over them, one tower per task."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.baselines.common import BaselineConfig, PooledInputModel
from model.base import UserState
from model.layers import MLP, TaskTowers, last_linear


@dataclass
class MMoEConfig(BaselineConfig):
    n_experts: int = 4
    expert_hidden: tuple[int, ...] = (256, 128)


class MMoE(PooledInputModel):
    def __init__(self, spec: FeatureSpec, config: MMoEConfig | None = None):
        config = config or MMoEConfig()
        super().__init__(spec, config)
        n_tasks = len(spec.tasks)
        self.experts = nn.ModuleList(MLP(self.input_dim, config.expert_hidden, dropout=config.dropout)
                                     for _ in range(config.n_experts))
        self.gates = nn.Linear(self.input_dim, n_tasks * config.n_experts)  # all task gates in one matmul
        self.towers = TaskTowers(self.experts[0].out_dim, n_tasks, config.tower_hidden, config.dropout)

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        x = fields.flatten(1)
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, H]
        gates = torch.softmax(self.gates(x).view(x.shape[0], -1, len(self.experts)), dim=-1)  # [B, T, E]
        return self.towers(gates @ experts)  # [B, T, H] -> [B, T]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [p for e in self.experts for p in last_linear(e).parameters()]
