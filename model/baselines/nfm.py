"""NFM (He & Chua, SIGIR 2017), multi-task: first-order terms + an MLP over Bi-Interaction pooling.

Bi-Interaction pooling turns the ``n`` field embeddings into one ``e``-vector,
``f_BI = sum_{i<j} v_i * v_j = 0.5 * ((sum_i v_i)^2 - sum_i v_i^2)`` (:func:`model.baselines.fm.bi_interaction`),
followed by dropout (the paper's regulariser on this layer; its batch normalisation is left out,
so the candidates of one request do not share batch statistics) and the shared MLP (the paper: one
hidden layer works best), read by one tower per task. The first-order terms are
:class:`model.baselines.wide_deep.FirstOrderModel`'s.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import UserState
from model.baselines.common import BaselineConfig
from model.baselines.fm import bi_interaction
from model.baselines.wide_deep import FirstOrderModel
from model.layers import MLP, TaskTowers


@dataclass
class NFMConfig(BaselineConfig):
    deep_hidden: tuple[int, ...] = (64,)  # the MLP over f_BI (at least one layer)


class NFM(FirstOrderModel):
    def __init__(self, spec: FeatureSpec, config: NFMConfig | None = None):
        config = config or NFMConfig()
        super().__init__(spec, config)
        if not config.deep_hidden:
            raise ValueError("NFM needs at least one hidden layer over the Bi-Interaction vector (FM has none)")
        self.bi_dropout = nn.Dropout(config.dropout)
        self.deep = MLP(self.field_width, config.deep_hidden, dropout=config.dropout)
        self.towers = TaskTowers(self.deep.out_dim, len(spec.tasks), config.tower_hidden, config.dropout)

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        return self.towers(self.deep(self.bi_dropout(bi_interaction(fields))))
