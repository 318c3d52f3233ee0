"""OMoE, the one-gate mixture of experts (the MMoE paper's baseline, Ma et al., KDD 2018).

Shared experts as in :class:`~model.baselines.mmoe.MMoE`, but ONE softmax gate over them, shared by
every task: all tasks read the same mixture, and only their towers differ. It is what MMoE's
per-task gates are measured against; the STEM paper lists it among the multi-task baselines.

>>> import torch
>>> from features.spec import demo_spec
>>> from model.base import random_batch
>>> spec = demo_spec(seq_len=4)
>>> model = OMoE(spec, OMoEConfig(n_experts=3, expert_hidden=(16,)))
>>> model(random_batch(spec, 5)).shape
torch.Size([5, 4])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import UserState
from model.baselines.common import BaselineConfig, PooledInputModel
from model.layers import MLP, TaskTowers, last_linear


@dataclass
class OMoEConfig(BaselineConfig):
    n_experts: int = 4
    expert_hidden: tuple[int, ...] = (256, 128)


class OMoE(PooledInputModel):
    def __init__(self, spec: FeatureSpec, config: OMoEConfig | None = None):
        config = config or OMoEConfig()
        super().__init__(spec, config)
        self.experts = nn.ModuleList(MLP(self.input_dim, config.expert_hidden, dropout=config.dropout)
                                     for _ in range(config.n_experts))
        self.gate = nn.Linear(self.input_dim, config.n_experts)  # the one gate
        self.towers = TaskTowers(self.experts[0].out_dim, len(spec.tasks), config.tower_hidden, config.dropout)

    def mixture(self, x: Tensor) -> Tensor:
        """``Σ_e softmax(W x + b)_e · expert_e(x)``: ``[B, H]``, the same for every task."""
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, H]
        gate = torch.softmax(self.gate(x), dim=-1)  # [B, E]
        return (gate.unsqueeze(-1) * experts).sum(1)

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        return self.towers(self.mixture(fields.flatten(1)))  # every tower reads the one mixture

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [p for e in self.experts for p in last_linear(e).parameters()]
