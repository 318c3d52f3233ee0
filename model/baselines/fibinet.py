"""FiBiNET (Huang et al., RecSys 2019), multi-task: SENET field reweighting, bilinear interactions of
the raw and the reweighted embeddings, a deep MLP with towers per task, plus first-order terms.

SENET on the ``n`` field embeddings ``E``: squeeze ``z_i = mean_d e_{i,d}``, excitation
``a = ReLU(W_2 ReLU(W_1 z))`` (``W_1``: ``n -> max(1, n // reduction_ratio)``), re-weight
``v_i = a_i e_i``. Bilinear interaction of every pair ``i < j``: ``p_ij = (v_i W) * v_j``
(element-wise), with ``W`` one ``e x e`` matrix for all pairs (``"field_all"``), one per field ``i``
(``"field_each"``) or one per pair (``"field_interaction"``); it is applied to ``E`` and to the
SENET output ``V`` with separate weights. The combination layer concatenates both (``2 P e`` values,
``P = n (n - 1) / 2``) for the shared MLP; the first-order terms are
:class:`model.baselines.wide_deep.FirstOrderModel`'s (the paper's ``w_0 + sum_i w_i x_i``).

The combination grows with the square of the number of fields: on the real spec (65 fields with
the dense tokens) it is 2 x 2,080 x 16 = 66,560 inputs to the MLP.

>>> senet = SENet(n_fields=4, reduction_ratio=2)
>>> senet(torch.randn(3, 4, 5)).shape
torch.Size([3, 4, 5])
>>> BilinearInteraction(n_fields=4, dim=5, kind="field_each")(torch.randn(3, 4, 5)).shape  # 6 pairs
torch.Size([3, 6, 5])
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
from model.baselines.fm import pair_indices
from model.baselines.wide_deep import FirstOrderModel
from model.layers import MLP, TaskTowers

BilinearKind = Literal["field_all", "field_each", "field_interaction"]


class SENet(nn.Module):
    """Squeeze-excitation over fields: ``[B, n, e] -> [B, n, e]``, field ``i`` scaled by ``a_i``."""

    def __init__(self, n_fields: int, reduction_ratio: int = 3):
        super().__init__()
        hidden = max(1, n_fields // reduction_ratio)
        self.excitation = nn.Sequential(nn.Linear(n_fields, hidden, bias=False), nn.ReLU(),
                                        nn.Linear(hidden, n_fields, bias=False), nn.ReLU())

    def weights(self, x: Tensor) -> Tensor:
        """``a [B, n]``: the excitation of the squeezed fields."""
        return self.excitation(x.mean(-1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weights(x).unsqueeze(-1)


class BilinearInteraction(nn.Module):
    """``p_ij = (v_i W_?) * v_j`` for every pair ``i < j``: ``[B, n, e] -> [B, P, e]``."""

    def __init__(self, n_fields: int, dim: int, kind: BilinearKind = "field_all"):
        super().__init__()
        n_pairs = n_fields * (n_fields - 1) // 2
        shapes = {"field_all": (1, dim, dim), "field_each": (n_fields, dim, dim),
                  "field_interaction": (n_pairs, dim, dim)}
        if kind not in shapes:
            raise ValueError(f"bilinear kind must be one of {sorted(shapes)}, not {kind!r}")
        self.kind, self.n_fields = kind, n_fields
        self.weight = nn.Parameter(torch.empty(shapes[kind]))
        nn.init.uniform_(self.weight, -1 / math.sqrt(dim), 1 / math.sqrt(dim))

    def forward(self, x: Tensor) -> Tensor:
        i, j = pair_indices(x.shape[1], x.device)
        left, right = x.index_select(1, i), x.index_select(1, j)  # [B, P, e]
        if self.kind == "field_all":
            return (left @ self.weight[0]) * right
        w = self.weight.index_select(0, i) if self.kind == "field_each" else self.weight  # [P, e, e]
        return torch.einsum("bpe,pef->bpf", left, w) * right


@dataclass
class FiBiNETConfig(BaselineConfig):
    reduction_ratio: int = 3
    bilinear: BilinearKind = "field_all"
    deep_hidden: tuple[int, ...] = (256, 128)


class FiBiNET(FirstOrderModel):
    def __init__(self, spec: FeatureSpec, config: FiBiNETConfig | None = None):
        config = config or FiBiNETConfig()
        super().__init__(spec, config)
        n, e = self.n_fields, self.field_width
        self.senet = SENet(n, config.reduction_ratio)
        self.bilinear_raw = BilinearInteraction(n, e, config.bilinear)
        self.bilinear_senet = BilinearInteraction(n, e, config.bilinear)
        self.deep = MLP(2 * (n * (n - 1) // 2) * e, config.deep_hidden, dropout=config.dropout)
        self.towers = TaskTowers(self.deep.out_dim, len(spec.tasks), config.tower_hidden, config.dropout)

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        p, q = self.bilinear_raw(fields), self.bilinear_senet(self.senet(fields))
        return self.towers(self.deep(torch.cat([p, q], dim=1).flatten(1)))
