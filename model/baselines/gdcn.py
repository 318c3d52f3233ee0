"""GDCN (Wang et al., CIKM 2023), multi-task: a gated cross network beside (``"parallel"``, GDCN-P,
the paper's best) or below (``"stacked"``, GDCN-S) a deep MLP; towers per task.

Gated cross layer: ``c_{l+1} = c_0 * (W_c c_l + b) * sigmoid(W_g c_l) + c_l`` (element-wise
products): DCN-V2's cross with an information gate that learns which crosses of order ``l + 1`` to
keep. The input ``c_0`` is the flattened field embeddings (sequences pooled as in
:mod:`model.baselines.common`). The paper's field-level dimension optimisation (per-field embedding
widths chosen from a trained model) is not implemented: the fields share ``embed_dim``.

>>> layer = GatedCrossLayer(6)
>>> x0 = torch.randn(2, 6)
>>> layer(x0, x0).shape
torch.Size([2, 6])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.baselines.common import BaselineConfig
from model.baselines.dcnv2 import DCNv2


class GatedCrossLayer(nn.Module):
    """``c_0 * (W_c c + b) * sigmoid(W_g c) + c`` for ``[B, D]`` inputs."""

    def __init__(self, dim: int):
        super().__init__()
        self.cross = nn.Linear(dim, dim)  # W_c, b
        self.gate = nn.Linear(dim, dim, bias=False)  # W_g

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.cross(x) * torch.sigmoid(self.gate(x)) + x


@dataclass
class GDCNConfig(BaselineConfig):
    n_cross_layers: int = 3
    deep_hidden: tuple[int, ...] = (256, 128)
    structure: Literal["parallel", "stacked"] = "parallel"


class GDCN(DCNv2):
    """DCN-V2's parallel / stacked network with gated cross layers."""

    def __init__(self, spec: FeatureSpec, config: GDCNConfig | None = None):
        super().__init__(spec, config or GDCNConfig())

    @staticmethod
    def cross_layer(dim: int, config) -> nn.Module:
        return GatedCrossLayer(dim)
