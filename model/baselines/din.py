"""DIN (Zhou et al., KDD 2018), multi-task: target attention of the candidate over each behaviour
sequence, then a shared MLP with one tower per task.

For every behaviour type ``a`` an activation unit scores each item ``k`` against the candidate
embedding ``q`` from ``[q, k, q - k, q * k]``; the sequence becomes the score-weighted sum (raw
scores, as in the paper, or softmax). The candidate is the ``target_field`` (``video_id``); with
``share_item_table`` (and equal vocabularies: sequence items are hashed like ``video_id``) the
candidate and the sequence items are looked up in one item table, so "same video" means the same
vector; the gap signal is added on the sequence side only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import RankingModel, UserState
from model.baselines.common import BaselineConfig, shared_item_table, target_field_index, target_item_embedding
from model.layers import (
    MLP,
    CategoricalEmbedding,
    DenseTokens,
    SequenceEmbedding,
    TargetAttentionPooling,
    TaskTowers,
)


@dataclass
class DINConfig(BaselineConfig):
    target_field: str = "video_id"
    share_item_table: bool = True
    attention_hidden: tuple[int, ...] = (64, 32)
    attention_normalize: Literal["none", "softmax"] = "none"
    bottom_hidden: tuple[int, ...] = (512, 256)


class DIN(RankingModel):
    def __init__(self, spec: FeatureSpec, config: DINConfig | None = None):
        config = config or DINConfig()
        super().__init__(spec, config)
        self.target_index = target_field_index(spec, config.target_field, "DIN")
        e = config.embed_dim
        self.cat_embedding = CategoricalEmbedding(spec.categorical, e, config.cat_table_width)
        self.item_table = shared_item_table(spec, self.target_index, e, config.share_item_table)
        self.seq_embedding = SequenceEmbedding(spec.sequences, e, config.gap_signal, shared_table=self.item_table)
        self.attention = nn.ModuleList(TargetAttentionPooling(e, config.attention_hidden, config.attention_normalize)
                                       for _ in spec.sequences)
        self.dense_tokens = DenseTokens(len(spec.dense), e) if spec.dense else None
        self.bottom = MLP((len(spec.categorical) + len(spec.sequences) + len(spec.dense)) * e, config.bottom_hidden,
                          dropout=config.dropout)
        self.towers = TaskTowers(self.bottom.out_dim, len(spec.tasks), config.tower_hidden, config.dropout)

    def encode_user(self, batch_user: dict[str, Tensor]) -> UserState:
        tokens, mask = self.seq_embedding(batch_user["seq"], batch_user["seq_gap"])
        return {"cat_user": self.cat_embedding(batch_user["cat_user"], self.user_fields),
                "seq_tokens": tokens, "seq_mask": mask}

    def score(self, cat: Tensor, user_rows: UserState, dense: Tensor | None = None) -> Tensor:
        fields = self.embed_cat(self.cat_embedding, cat, user_rows["cat_user"])  # [B, M, e]
        target = target_item_embedding(self.item_table, self.spec, self.target_index, cat, fields)
        tokens, mask = user_rows["seq_tokens"], user_rows["seq_mask"]
        interest = torch.stack([att(target, tokens[:, a], mask[:, a]) for a, att in enumerate(self.attention)], 1)
        parts = [fields.flatten(1), interest.flatten(1)]
        if self.dense_tokens is not None:
            parts.append(self.dense_tokens(dense).flatten(1))
        return self.towers(self.bottom(torch.cat(parts, dim=1)))
