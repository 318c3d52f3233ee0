"""PLE (Tang et al., RecSys 2020): stacked CGC levels of task-specific and shared experts.

Level ``k``: task ``i``'s gate mixes its own experts and the shared ones (input: task ``i``'s
output of level ``k - 1``); the shared gate mixes every expert (input: the shared output of level
``k - 1``) and is absent at the last level. Level 1 reads the field embeddings for every input.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.baselines.common import BaselineConfig, PooledInputModel
from model.base import UserState
from model.layers import MLP, TaskTowers, last_linear


@dataclass
class PLEConfig(BaselineConfig):
    n_levels: int = 2
    n_shared_experts: int = 2
    n_task_experts: int = 1  # per task
    expert_hidden: tuple[int, ...] = (256, 128)


class CGCLevel(nn.Module):
    """One Customized Gate Control level."""

    def __init__(self, in_dim: int, n_tasks: int, cfg: PLEConfig, last: bool):
        super().__init__()
        self.n_tasks, self.n_task_experts, self.n_shared = n_tasks, cfg.n_task_experts, cfg.n_shared_experts

        def expert() -> MLP:
            return MLP(in_dim, cfg.expert_hidden, dropout=cfg.dropout)

        self.task_experts = nn.ModuleList(nn.ModuleList(expert() for _ in range(cfg.n_task_experts))
                                          for _ in range(n_tasks))
        self.shared_experts = nn.ModuleList(expert() for _ in range(cfg.n_shared_experts))
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, cfg.n_task_experts + cfg.n_shared_experts)
                                        for _ in range(n_tasks))
        self.shared_gate = None if last else nn.Linear(in_dim, n_tasks * cfg.n_task_experts + cfg.n_shared_experts)
        self.out_dim = self.shared_experts[0].out_dim if cfg.n_shared_experts else self.task_experts[0][0].out_dim

    def forward(self, task_inputs: list[Tensor], shared_input: Tensor) -> tuple[list[Tensor], Tensor | None]:
        shared = [e(shared_input) for e in self.shared_experts]
        own = [[e(x) for e in experts] for experts, x in zip(self.task_experts, task_inputs)]
        outputs = []
        for i, x in enumerate(task_inputs):
            pool = torch.stack(own[i] + shared, dim=1)  # [B, k, H]
            w = torch.softmax(self.task_gates[i](x), dim=-1).unsqueeze(-1)
            outputs.append((w * pool).sum(1))
        shared_out = None
        if self.shared_gate is not None:
            pool = torch.stack([o for task in own for o in task] + shared, dim=1)
            w = torch.softmax(self.shared_gate(shared_input), dim=-1).unsqueeze(-1)
            shared_out = (w * pool).sum(1)
        return outputs, shared_out


class PLE(PooledInputModel):
    def __init__(self, spec: FeatureSpec, config: PLEConfig | None = None):
        config = config or PLEConfig()
        super().__init__(spec, config)
        if config.n_levels < 1 or config.n_task_experts + config.n_shared_experts < 1:
            raise ValueError("PLE needs at least one level and one expert")
        n_tasks = len(spec.tasks)
        levels, width = [], self.input_dim
        for k in range(config.n_levels):
            levels.append(CGCLevel(width, n_tasks, config, last=(k == config.n_levels - 1)))
            width = levels[-1].out_dim
        self.levels = nn.ModuleList(levels)
        self.towers = TaskTowers(width, n_tasks, config.tower_hidden, config.dropout)

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        x = fields.flatten(1)
        task_inputs, shared = [x] * len(self.task_names), x
        for level in self.levels:
            task_inputs, shared = level(task_inputs, shared)
        return self.towers(torch.stack(task_inputs, dim=1))

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last level's shared experts (every task's gate reads them)."""
        return [p for e in self.levels[-1].shared_experts for p in last_linear(e).parameters()]
