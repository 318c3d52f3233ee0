"""DeepFM (Guo et al., IJCAI 2017), multi-task: per task, first-order terms + FM + a deep tower.

Fields are the ``M`` categorical embeddings plus one pooled vector per behaviour sequence. The
second-order term is FM's ``0.5 * ((sum_f v_f)^2 - sum_f v_f^2)`` kept as an ``embed_dim`` vector and
read by each task through its own weights (initialised to 1, i.e. the classic FM sum); first-order
weights are one scalar per categorical value and task (and one weight per dense value and task,
whose dense tokens join the FM fields). The deep part is a shared MLP with one tower per task.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.baselines.common import BaselineConfig, PooledInputModel
from model.base import UserState
from model.layers import MLP, CategoricalEmbedding, TaskTowers


@dataclass
class DeepFMConfig(BaselineConfig):
    deep_hidden: tuple[int, ...] = (400, 400, 400)


class DeepFM(PooledInputModel):
    def __init__(self, spec: FeatureSpec, config: DeepFMConfig | None = None):
        config = config or DeepFMConfig()
        super().__init__(spec, config)
        n_tasks = len(spec.tasks)
        self.first_order = CategoricalEmbedding(spec.categorical, n_tasks, use_spec_widths=False)
        self.first_order_dense = nn.Linear(len(spec.dense), n_tasks, bias=False) if spec.dense else None
        self.fm_weight = nn.Parameter(torch.ones(n_tasks, config.embed_dim))
        self.deep = MLP(self.input_dim, config.deep_hidden, dropout=config.dropout)
        self.towers = TaskTowers(self.deep.out_dim, n_tasks, config.tower_hidden, config.dropout)

    def encode_user(self, batch_user: dict[str, Tensor]) -> UserState:
        state = super().encode_user(batch_user)
        state["cat_user_first_order"] = self.first_order(batch_user["cat_user"], self.user_fields)
        return state

    def score(self, cat: Tensor, user_rows: UserState, dense: Tensor | None = None) -> Tensor:
        out = super().score(cat, user_rows, dense)
        return out if self.first_order_dense is None else out + self.first_order_dense(dense)  # w_k x_k per task

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        first = self.embed_cat(self.first_order, cat, user_rows["cat_user_first_order"]).sum(1)  # [B, T]
        fm = 0.5 * (fields.sum(1).pow(2) - fields.pow(2).sum(1))  # [B, e]
        return first + fm @ self.fm_weight.t() + self.towers(self.deep(fields.flatten(1)))
