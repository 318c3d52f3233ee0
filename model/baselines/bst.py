"""BST (Chen et al., "Behavior Sequence Transformer for E-commerce Recommendation in Alibaba", DLP-KDD 2019), multi-task.

Implemented. The ``sequence`` behaviour type (default ``click``), its ``max_len`` most recent items,
plus the target item form one sequence ``[target, v_1, ..., v_L]`` (newest first). Each item is its
embedding (the item table the candidate shares, as DIN) plus its "position" embedding, which the
paper defines as the time gap ``pos(v_i) = t(v_t) - t(v_i)``: here the learned gap signal of
:class:`~model.layers.SequenceEmbedding` applied to our ``seq_gap`` (``log1p`` seconds before the
row; the target's gap is 0). One Transformer layer (:class:`TransformerLayer`: multi-head
self-attention, ``softmax(Q K^T / sqrt(d_h)) V`` per head, output projection, residual + LayerNorm,
a LeakyReLU feed-forward, residual + LayerNorm, the paper's post-norm layer) maps the sequence; the
outputs are flattened (``pooling="flatten"``, the paper's concatenation; padded positions are zero)
or averaged over the valid positions (``"mean"``) and concatenated with every categorical field
embedding, the masked means of the other behaviour sequences and the dense tokens into the bottom
MLP and the task towers.

User-side reuse. Every history position attends to the target, so the layer's output depends on the
candidate everywhere; only the history-only parts go in :meth:`BST.encode_user`: the history tokens
and their per-head queries, keys and values. :meth:`BST.score` projects the target token, appends
its key / value to the history's, runs the attention for all ``1 + L`` queries and the rest of the
layer, once per candidate row.

What our data cannot follow: sequences hold video ids only (the paper's items carry item id +
category); one behaviour type is the transformer's sequence, the other types enter as masked means;
the paper's MLP uses LeakyReLU (ours ReLU, like every baseline here) and 20 items (``max_len``).

>>> import torch
>>> from features.spec import demo_spec
>>> from model.base import random_batch
>>> spec = demo_spec(seq_len=4)
>>> model = BST(spec, BSTConfig(embed_dim=8)).eval()
>>> model(random_batch(spec, 3)).shape, model.length
(torch.Size([3, 4]), 4)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import UserState
from model.baselines.dien import SequenceModelBase, SequenceModelConfig


def scaled_dot_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """``softmax(q k^T / sqrt(d)) v`` per head: ``q [..., Q, d]``, ``k [..., K, d]``, ``v [..., K, e]``,
    ``key_mask`` bool broadcastable to ``[..., Q, K]`` (True = valid) -> ``[..., Q, e]``; a query with no
    valid key gets uniform (finite) weights, which the caller masks."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min / 2)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class TransformerLayer(nn.Module):
    """A post-norm Transformer encoder layer with a key padding mask (BST's; DSIN's session
    interest extractor)::

        S  = LayerNorm(X + Dropout(MultiHead(X) W_O))
        Y  = LayerNorm(S + Dropout(W_2 LeakyReLU(W_1 S)))

    Split in three steps so that projections of history-only tokens can be cached:
    :meth:`project` (``X -> Q, K, V``, ``[B, H, L, d_h]`` each), :meth:`attend` (heads, masked softmax,
    output projection) and :meth:`finish` (the residuals, norms and feed-forward).
    """

    def __init__(self, dim: int, n_heads: int = 2, ffn_hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        hidden = ffn_hidden or 4 * dim
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, L, d]`` -> per-head ``Q, K, V`` ``[B, H, L, d_h]``."""
        b, length, _ = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        """Multi-head attention with the output projection -> ``[B, L, d]``."""
        mask = None if key_mask is None else key_mask[:, None, None, :]
        heads = scaled_dot_attention(q, k, v, mask)  # [B, H, L, d_h]
        return self.out(heads.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.dim))

    def finish(self, x: Tensor, attended: Tensor) -> Tensor:
        s = self.norm1(x + self.dropout(attended))
        return self.norm2(s + self.dropout(self.ffn(s)))

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``x [B, L, d]``, ``key_mask [B, L]`` -> ``[B, L, d]`` (padded positions are not zeroed)."""
        return self.finish(x, self.attend(*self.project(x), key_mask))


@dataclass
class BSTConfig(SequenceModelConfig):
    """BST sizes and the paper's choices as options."""

    sequence: str = "click"  # the behaviour type in the transformer's sequence
    max_len: int = 20  # most recent items of the sequence (paper: 20); capped by the spec's max_len
    n_heads: int = 2  # paper: 8 (with a wider embedding)
    ffn_hidden: int | None = None  # feed-forward width (None: 4 x embed_dim)
    pooling: Literal["flatten", "mean"] = "flatten"  # paper: the outputs concatenated


class BST(SequenceModelBase):
    model_name = "BST"

    def __init__(self, spec: FeatureSpec, config: BSTConfig | None = None):
        config = config or BSTConfig()
        super().__init__(spec, config)
        if config.pooling not in ("flatten", "mean"):
            raise ValueError(f"unknown BST pooling {config.pooling!r}")
        e = config.embed_dim
        self.seq_index = self.sequence_index(config.sequence)
        self.length = min(config.max_len, spec.sequences[self.seq_index].max_len)
        self.transformer = TransformerLayer(e, config.n_heads, config.ffn_hidden, config.dropout)
        out_dim = (1 + self.length) * e if config.pooling == "flatten" else e
        self.build_head(out_dim, tuple(a for a in range(len(spec.sequences)) if a != self.seq_index))

    def encode_user(self, batch_user: dict[str, Tensor]) -> UserState:
        _, _, tokens, mask = self.embed_sequences(batch_user)
        history, m = tokens[:, self.seq_index, :self.length], mask[:, self.seq_index, :self.length]
        if history.shape[1] < self.length:  # a batch padded to fewer items than max_len
            history = F.pad(history, (0, 0, 0, self.length - history.shape[1]))
            m = F.pad(m, (0, self.length - m.shape[1]))
        q, k, v = self.transformer.project(history)
        return {**self.common_state(batch_user, tokens, mask), "history": history, "history_mask": m,
                "history_q": q, "history_k": k, "history_v": v}

    def target_token(self, target: Tensor) -> Tensor:
        """The target item plus the gap signal at gap 0 (it is the request's own item)."""
        if self.seq_embedding.gap is not None:
            target = target + self.seq_embedding.gap(target.new_zeros(target.shape[0]))
        return target

    def score(self, cat: Tensor, user_rows: UserState, dense: Tensor | None = None) -> Tensor:
        fields = self.embed_cat(self.cat_embedding, cat, user_rows["cat_user"])
        target = self.target_token(self.target_embedding(cat, fields)).unsqueeze(1)  # [B, 1, e]
        tq, tk, tv = self.transformer.project(target)
        q = torch.cat([tq, user_rows["history_q"]], dim=2)
        k = torch.cat([tk, user_rows["history_k"]], dim=2)
        v = torch.cat([tv, user_rows["history_v"]], dim=2)
        mask = torch.cat([user_rows["history_mask"].new_ones((cat.shape[0], 1)), user_rows["history_mask"]], dim=1)
        x = torch.cat([target, user_rows["history"]], dim=1)
        out = self.transformer.finish(x, self.transformer.attend(q, k, v, mask))
        out = out * mask.unsqueeze(-1).to(out.dtype)  # padded positions: zero
        pooled = out.flatten(1) if self.config.pooling == "flatten" else out.sum(1) / mask.sum(1, keepdim=True)
        return self.head(fields, [pooled], user_rows, dense)
