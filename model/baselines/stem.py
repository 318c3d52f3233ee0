"""STEM (Su et al., "STEM: Unleashing the Power of Embeddings for Multi-Task Recommendation", AAAI 2024).

Shared and Task-specific EMbeddings: every field has one shared embedding and one embedding per
task (here one table of width ``embed_dim * (T + 1)`` per field, split into ``T + 1`` slices; the
behaviour sequences likewise, mean-pooled with the same gap signal as the other baselines). A STEM
layer has task-specific experts reading their own task's embeddings and shared experts reading the
shared ones. Task ``i``'s gate, ``softmax(W_i (x_i + x_shared))``, mixes **all** experts —
"All Forward Task-specific Embedding": task ``i`` also reads the other tasks' experts in the
forward pass, but through a stop-gradient, so task ``i``'s loss never updates another task's
experts or embeddings; each task-specific embedding is trained by its own task alone, while the
shared embeddings and experts are trained by every task. Stacked layers (``n_layers`` > 1) feed
each task's output, and the shared gate's mixture of every expert, to the next layer, as in the
authors' code (github.com/LiangcaiSu/STEM); that shared gate has no stop-gradient there, so with
stacked layers every task's loss reaches every expert through the shared side. One tower per task.

>>> import torch
>>> from features.spec import demo_spec
>>> from model.base import random_batch
>>> spec = demo_spec(seq_len=4)
>>> model = STEM(spec, STEMConfig(embed_dim=4, expert_hidden=(16,)))
>>> model.cat_embedding.out_dim  # 4 tasks + the shared slice, 4 wide each
20
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
class STEMConfig(BaselineConfig):
    n_layers: int = 1
    n_shared_experts: int = 1
    n_task_experts: int = 1  # per task
    expert_hidden: tuple[int, ...] = (256, 128)
    gate_hidden: tuple[int, ...] = ()  # () = linear gate W_i x (the paper's); widths = an MLP gate


class STEMLayer(nn.Module):
    """Task-specific experts per task, shared experts, one gate per task and (below the top) a shared gate."""

    def __init__(self, in_dim: int, n_tasks: int, cfg: STEMConfig, last: bool):
        super().__init__()
        self.n_tasks, self.n_task_experts = n_tasks, cfg.n_task_experts

        def expert() -> MLP:
            return MLP(in_dim, cfg.expert_hidden, dropout=cfg.dropout)

        n_all = n_tasks * cfg.n_task_experts + cfg.n_shared_experts
        self.task_experts = nn.ModuleList(nn.ModuleList(expert() for _ in range(cfg.n_task_experts))
                                          for _ in range(n_tasks))
        self.shared_experts = nn.ModuleList(expert() for _ in range(cfg.n_shared_experts))
        self.task_gates = nn.ModuleList(MLP(in_dim, cfg.gate_hidden, n_all) for _ in range(n_tasks))
        self.shared_gate = None if last else MLP(in_dim, cfg.gate_hidden, n_all)
        self.out_dim = (self.shared_experts[0] if cfg.n_shared_experts else self.task_experts[0][0]).out_dim

    def forward(self, task_inputs: list[Tensor], shared_input: Tensor) -> tuple[list[Tensor], Tensor | None]:
        own = [torch.stack([e(x) for e in experts], dim=1) for experts, x in zip(self.task_experts, task_inputs)]
        shared = ([torch.stack([e(shared_input) for e in self.shared_experts], dim=1)]
                  if len(self.shared_experts) else [])
        outputs = []
        for i, x in enumerate(task_inputs):
            # every task's experts forward, other tasks' through a stop-gradient
            pool = torch.cat([o if j == i else o.detach() for j, o in enumerate(own)] + shared, dim=1)  # [B, n_all, H]
            w = torch.softmax(self.task_gates[i](x + shared_input), dim=-1).unsqueeze(-1)
            outputs.append((w * pool).sum(1))
        shared_out = None
        if self.shared_gate is not None:
            pool = torch.cat(own + shared, dim=1)
            w = torch.softmax(self.shared_gate(shared_input), dim=-1).unsqueeze(-1)
            shared_out = (w * pool).sum(1)
        return outputs, shared_out


class STEM(PooledInputModel):
    def __init__(self, spec: FeatureSpec, config: STEMConfig | None = None):
        config = config or STEMConfig()
        n_tasks = len(spec.tasks)
        super().__init__(spec, config, field_width=config.embed_dim * (n_tasks + 1))
        if config.n_layers < 1 or config.n_task_experts + config.n_shared_experts < 1:
            raise ValueError("STEM needs at least one layer and one expert")
        self.n_tasks = n_tasks
        layers, width = [], self.n_fields * config.embed_dim
        for k in range(config.n_layers):
            layers.append(STEMLayer(width, n_tasks, config, last=(k == config.n_layers - 1)))
            width = layers[-1].out_dim
        self.layers = nn.ModuleList(layers)
        self.towers = TaskTowers(width, n_tasks, config.tower_hidden, config.dropout)

    def split_embeddings(self, fields: Tensor) -> tuple[list[Tensor], Tensor]:
        """``[B, M + F, e (T + 1)]`` -> (task ``i``'s ``[B, (M + F) e]`` for each task, the shared one)."""
        b, n, _ = fields.shape
        parts = fields.view(b, n, self.n_tasks + 1, self.config.embed_dim)
        flat = [parts[:, :, k].flatten(1) for k in range(self.n_tasks + 1)]
        return flat[:-1], flat[-1]

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        task_inputs, shared = self.split_embeddings(fields)
        for layer in self.layers:
            task_inputs, shared = layer(task_inputs, shared)
        return self.towers(torch.stack(task_inputs, dim=1))

    def last_shared_parameters(self) -> list[nn.Parameter]:
        shared = self.layers[-1].shared_experts
        return [p for e in shared for p in last_linear(e).parameters()] or super().last_shared_parameters()
