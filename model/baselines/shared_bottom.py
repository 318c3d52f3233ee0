"""Shared-Bottom (Caruana 1997): one MLP shared by all tasks, one tower per task."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from features.spec import FeatureSpec
from model.baselines.common import BaselineConfig, PooledInputModel
from model.base import UserState
from model.layers import MLP, TaskTowers


@dataclass
class SharedBottomConfig(BaselineConfig):
    bottom_hidden: tuple[int, ...] = (512, 256)


class SharedBottom(PooledInputModel):
    def __init__(self, spec: FeatureSpec, config: SharedBottomConfig | None = None):
        config = config or SharedBottomConfig()
        super().__init__(spec, config)
        self.bottom = MLP(self.input_dim, config.bottom_hidden, dropout=config.dropout)
        self.towers = TaskTowers(self.bottom.out_dim, len(spec.tasks), config.tower_hidden, config.dropout)

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        return self.towers(self.bottom(fields.flatten(1)))
