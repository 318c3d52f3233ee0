"""What the MLP-style baselines share: one config base and the pooled field-embedding input.

Input of Shared-Bottom, MMoE, OMoE, PLE, STEM, DCNv2 and DeepFM: ``M + F (+ K)`` field embeddings of
width ``embed_dim`` — the ``M`` categorical fields (one table per field, like INFNet), one vector per
behaviour sequence, the masked mean of its item embeddings (plus the same learned gap signal as
INFNet), and one token per dense value when the spec has them (:class:`~model.layers.DenseTokens`).
The user part (user fields and pooled sequences) is computed once per user.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import RankingModel, UserState
from model.layers import CategoricalEmbedding, DenseTokens, GapSignal, SequenceEmbedding, init_embedding_, masked_mean


def target_field_index(spec: FeatureSpec, field: str, model_name: str) -> int:
    """The categorical index of a target-attention model's candidate field (DIN and the sequence
    models), refusing a spec without that field or without a behaviour sequence."""
    names = [c.name for c in spec.categorical]
    if field not in names:
        raise ValueError(f"{model_name} target field {field!r} is not a categorical field of the spec")
    if not spec.sequences:
        raise ValueError(f"{model_name} needs at least one behaviour sequence in the feature spec")
    return names.index(field)


def shared_item_table(spec: FeatureSpec, target_index: int, embed_dim: int, share: bool) -> nn.Embedding | None:
    """One table for the candidate's id and the sequence items (so "same video" is the same vector),
    when ``share`` and every sequence has the candidate field's vocabulary; else None."""
    target = spec.categorical[target_index]
    if not (share and all(s.vocab_size == target.vocab_size for s in spec.sequences)):
        return None
    table = nn.Embedding(target.vocab_size, embed_dim)
    init_embedding_(table.weight)
    return table


def target_item_embedding(item_table: nn.Embedding | None, spec: FeatureSpec, target_index: int, cat: Tensor,
                          fields: Tensor) -> Tensor:
    """The candidate in the item table it shares with the sequences (cold start with an exact
    vocabulary: the table's mean row, like ``CategoricalEmbedding``), else its field embedding."""
    if item_table is None:
        return fields[:, target_index]
    ids = cat[:, target_index]
    target = item_table(ids)
    if spec.categorical[target_index].vocabulary is not None:
        target = torch.where((ids == 0).unsqueeze(-1), item_table.weight[1:].mean(0), target)
    return target


@dataclass
class BaselineConfig:
    """Fields every baseline has (the sizes a control arm of an A/B report runs with by default)."""

    embed_dim: int = 16  # width of every field embedding
    cat_table_width: int | None = None  # width of a categorical table the spec gives none for (None: embed_dim)
    gap_signal: GapSignal = "mlp"  # learned gap projection added to sequence items | "linear" | "none"
    tower_hidden: tuple[int, ...] = (64,)  # per-task tower
    dropout: float = 0.1

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists: normalise every tuple-typed field back.
        for name, value in vars(self).items():
            if isinstance(value, list):
                setattr(self, name, tuple(value))


class PooledInputModel(RankingModel):
    """Base of the baselines reading ``[B, M + F, embed_dim]`` field embeddings; subclasses
    implement :meth:`predict`."""

    def __init__(self, spec: FeatureSpec, config: BaselineConfig, field_width: int | None = None):
        """``field_width``: width of every field embedding (default ``config.embed_dim``)."""
        super().__init__(spec, config)
        e = self.field_width = field_width or config.embed_dim
        self.cat_embedding = CategoricalEmbedding(spec.categorical, e, config.cat_table_width)
        self.seq_embedding = SequenceEmbedding(spec.sequences, e, config.gap_signal) if spec.sequences else None
        self.dense_tokens = DenseTokens(len(spec.dense), e) if spec.dense else None
        self.n_fields = len(spec.categorical) + len(spec.sequences) + len(spec.dense)
        self.input_dim = self.n_fields * e

    def encode_user(self, batch_user: dict[str, Tensor]) -> UserState:
        cat_user = self.cat_embedding(batch_user["cat_user"], self.user_fields)
        if self.seq_embedding is None:
            pooled = cat_user.new_zeros((cat_user.shape[0], 0, self.field_width))
        else:
            tokens, mask = self.seq_embedding(batch_user["seq"], batch_user["seq_gap"])
            pooled = masked_mean(tokens, mask, dim=2)  # [U, F, e]
        return {"cat_user": cat_user, "seq_pooled": pooled}

    def score(self, cat: Tensor, user_rows: UserState, dense: Tensor | None = None) -> Tensor:
        parts = [self.embed_cat(self.cat_embedding, cat, user_rows["cat_user"]), user_rows["seq_pooled"]]
        if self.dense_tokens is not None:
            parts.append(self.dense_tokens(dense))  # one field per raw value, after the sequences
        return self.predict(torch.cat(parts, dim=1), cat, user_rows)

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:  # pragma: no cover
        raise NotImplementedError
