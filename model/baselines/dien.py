"""DIEN (Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction", AAAI 2019), multi-task.

Implemented. The ``sequence`` behaviour type (default ``click``), oldest first, goes through the
interest extractor GRU (``h_t``, hidden width = ``embed_dim``); the interest evolution layer is an
AUGRU (:class:`AUGRUCell`) whose update gate is scaled by the target attention score
``a_t = softmax_t(h_t W e_a)`` (the paper's bilinear attention, over the valid steps only)::

    u'_t = a_t * u_t,    h'_t = (1 - u'_t) * h'_{t-1} + u'_t * h~_t

Its last state ``h'_T`` joins every categorical field embedding, the masked means of the other
behaviour sequences and the dense tokens in a shared bottom MLP with one tower per task (as DIN).

Auxiliary loss (paper eq. 3): the extractor state ``h_t`` should score the next behaviour
``e[t+1]`` above a negative ``ê[t+1]`` with ``sigma(<h_t, e>)`` (the paper's inner product, so the
auxiliary loss has no parameters of its own)::

    L_aux = -mean_{valid t} [ log sigma(<h_t, e[t+1]>) + log(1 - sigma(<h_t, ê[t+1]>)) ]

Negatives: our data has no sampled non-clicked sequence, so ``ê[t+1]`` is the item at the same
chronological step of **another row of the batch** (rows rolled by one; pairs where that item is
padding or the same video are skipped). Items enter the auxiliary loss as raw item embeddings
(without the gap signal, which would tell rows apart by time rather than by item).

Training: in training mode every forward sets ``model.aux_loss`` (``aux_weight * L_aux``, a scalar
tensor in the graph; ``None`` in eval mode), and :func:`model.train.train_step` adds a model's
``aux_loss`` to the task loss (after the criterion and the Pareto step).

User-side reuse: the extractor states (and the auxiliary loss) depend on the history alone and are
computed in :meth:`DIEN.encode_user`; the attention and the AUGRU depend on the target and run in
:meth:`DIEN.score`, once per candidate row.

What our data cannot follow: no negative (non-clicked) sequence (batch negatives instead, above);
sequences hold video ids only (the paper's behaviours carry goods id + category); one behaviour
type runs through the GRUs, the other types enter as masked means (the paper has one sequence).

This module also holds the scaffold the four sequence baselines share (:class:`SequenceModelBase`:
field / item / sequence embeddings, the target embedding, the bottom + towers) and their
sequence helpers (:func:`compact`, :func:`chronological`, :func:`masked_softmax`).

>>> import torch
>>> from features.spec import demo_spec
>>> from model.base import random_batch
>>> spec = demo_spec(seq_len=4)
>>> model = DIEN(spec, DIENConfig(embed_dim=8)).train()
>>> out = model(random_batch(spec, 6, seed=0))
>>> out.shape, model.aux_loss.dim(), bool(model.aux_loss >= 0)
(torch.Size([6, 4]), 0, True)
>>> _ = model.eval()(random_batch(spec, 6, seed=0)); model.aux_loss is None
True
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from features.spec import FeatureSpec
from model.base import RankingModel, UserState
from model.baselines.common import BaselineConfig, shared_item_table, target_field_index, target_item_embedding
from model.layers import MLP, CategoricalEmbedding, DenseTokens, SequenceEmbedding, TaskTowers, masked_mean

# =============================================================================================
# Sequence helpers shared by DIEN, DSIN, SIM and BST
# =============================================================================================


def compact(seq: Tensor, gap: Tensor) -> tuple[Tensor, Tensor]:
    """Valid items (id > 0) moved to the front of the last axis, their order kept (newest first):
    padding anywhere in a row then only ever trails it.

    >>> compact(torch.tensor([[0, 4, 0, 5]]), torch.tensor([[9.0, 1.0, 9.0, 2.0]]))
    (tensor([[4, 5, 0, 0]]), tensor([[1., 2., 0., 0.]]))
    """
    order = torch.sort((seq <= 0).to(torch.int8), dim=-1, stable=True).indices
    seq = seq.gather(-1, order)
    return seq, torch.where(seq > 0, gap.gather(-1, order), torch.zeros_like(gap))


def chronological(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Newest-first ``x [B, N, d]`` with a valid prefix ``mask [B, N]`` -> oldest first, valid prefix
    kept at the front (``[B, N, d]``, zeros at padding), and the mask of that layout.

    >>> x = torch.tensor([[[1.0], [2.0], [3.0], [0.0]]])
    >>> y, m = chronological(x, torch.tensor([[True, True, True, False]]))
    >>> y.flatten().tolist(), m.tolist()
    ([3.0, 2.0, 1.0, 0.0], [[True, True, True, False]])
    """
    n = mask.sum(-1, keepdim=True)  # [B, 1]
    steps = torch.arange(mask.shape[-1], device=mask.device)
    index = (n - 1 - steps).clamp_min(0)  # [B, N]
    valid = steps < n
    out = x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return out * valid.unsqueeze(-1).to(out.dtype), valid


def rnn_over_prefix(rnn: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """A batch-first RNN's states over ``x [U, N, e]`` whose valid steps (``mask [U, N]``) are a
    prefix, packed so that padding never enters a state; zero at the padding."""
    lengths = mask.sum(-1).clamp_min(1).cpu()
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    states, _ = pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=x.shape[1])
    return states * mask.unsqueeze(-1).to(states.dtype)


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis where ``mask``; weight 0 elsewhere, all zeros (not NaN) for a
    row without a valid position."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min / 2)
    return torch.softmax(scores, dim=-1) * mask.to(scores.dtype) * mask.any(-1, keepdim=True).to(scores.dtype)


class BilinearAttention(nn.Module):
    """``a_t = softmax_t(k_t W q)`` over the valid keys (DIEN's interest-evolution attention, DSIN's
    session-interest attentions). ``keys [B, L, dk]``, ``query [B, dq]``, ``mask [B, L]`` -> ``[B, L]``."""

    def __init__(self, key_dim: int, query_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(key_dim, query_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, keys: Tensor, query: Tensor, mask: Tensor) -> Tensor:
        scores = torch.einsum("bld,de,be->bl", keys, self.weight, query)
        return masked_softmax(scores, mask)


# =============================================================================================
# The scaffold of the sequence baselines
# =============================================================================================

@dataclass
class SequenceModelConfig(BaselineConfig):
    """Fields the sequence baselines (DIEN, DSIN, SIM, BST) share with DIN."""

    target_field: str = "video_id"  # the candidate's item id (the attention query / target token)
    share_item_table: bool = True  # candidate id and sequence items in one table (equal vocabularies)
    bottom_hidden: tuple[int, ...] = (512, 256)  # shared bottom MLP before the task towers (as DIN)


class SequenceModelBase(RankingModel):
    """Field embeddings, one item table shared by the candidate and the sequences (when the
    vocabularies match, as DIN), sequence tokens with the gap signal, dense tokens, and the head:
    ``[fields, extra parts, pooled other sequences, dense tokens] -> bottom MLP -> task towers``.

    Subclasses build their sequence module, then call :meth:`build_head` (registered last, so
    that the bottom's last Linear is the GradNorm layer)."""

    model_name = "sequence model"

    def __init__(self, spec: FeatureSpec, config: SequenceModelConfig):
        super().__init__(spec, config)
        self.target_index = target_field_index(spec, config.target_field, self.model_name)
        e = config.embed_dim
        self.cat_embedding = CategoricalEmbedding(spec.categorical, e, config.cat_table_width)
        self.item_table = shared_item_table(spec, self.target_index, e, config.share_item_table)
        self.seq_embedding = SequenceEmbedding(spec.sequences, e, config.gap_signal, shared_table=self.item_table)
        self.dense_tokens = DenseTokens(len(spec.dense), e) if spec.dense else None
        self.pooled_sequences: tuple[int, ...] = ()

    def sequence_index(self, name: str) -> int:
        names = [s.name for s in self.spec.sequences]
        if name not in names:
            raise ValueError(f"{self.model_name} sequence {name!r} is not a behaviour sequence of the spec "
                             f"({', '.join(names)})")
        return names.index(name)

    def build_head(self, extra_dim: int, pooled_sequences: tuple[int, ...]) -> None:
        """The bottom MLP and towers over ``M`` fields + ``extra_dim`` + the masked means of
        ``pooled_sequences`` + the dense tokens."""
        e = self.config.embed_dim
        self.pooled_sequences = tuple(pooled_sequences)
        width = (len(self.spec.categorical) + len(self.pooled_sequences) + len(self.spec.dense)) * e + extra_dim
        self.bottom = MLP(width, self.config.bottom_hidden, dropout=self.config.dropout)
        self.towers = TaskTowers(self.bottom.out_dim, len(self.spec.tasks), self.config.tower_hidden,
                                 self.config.dropout)

    def embed_sequences(self, batch_user: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Compacted ids and gaps ``[U, F, N]`` (:func:`compact`), their tokens ``[U, F, N, e]`` (item +
        gap signal, zero at padding) and mask ``[U, F, N]``."""
        seq, gap = compact(batch_user["seq"], batch_user["seq_gap"])
        tokens, mask = self.seq_embedding(seq, gap)
        return seq, gap, tokens, mask

    def raw_items(self, seq: Tensor) -> Tensor:
        """Item embeddings without the gap signal, ``[U, F, N] -> [U, F, N, e]``, zero at padding."""
        if self.item_table is not None:
            raw = self.item_table(seq)
        else:
            raw = self.seq_embedding.table(seq + self.seq_embedding.offsets)
        return raw * (seq > 0).unsqueeze(-1).to(raw.dtype)

    def common_state(self, batch_user: dict[str, Tensor], tokens: Tensor, mask: Tensor) -> UserState:
        """The user fields and the masked means of the pooled sequences."""
        pooled = masked_mean(tokens[:, list(self.pooled_sequences)], mask[:, list(self.pooled_sequences)], dim=2)
        return {"cat_user": self.cat_embedding(batch_user["cat_user"], self.user_fields), "seq_pooled": pooled}

    def target_embedding(self, cat: Tensor, fields: Tensor) -> Tensor:
        """The candidate in the item table it shares with the sequences, else its field embedding."""
        return target_item_embedding(self.item_table, self.spec, self.target_index, cat, fields)

    def head(self, fields: Tensor, parts: list[Tensor], user_rows: UserState, dense: Tensor | None) -> Tensor:
        inputs = [fields.flatten(1), *parts, user_rows["seq_pooled"].flatten(1)]
        if self.dense_tokens is not None:
            inputs.append(self.dense_tokens(dense).flatten(1))
        return self.towers(self.bottom(torch.cat(inputs, dim=1)))


# =============================================================================================
# DIEN
# =============================================================================================

class AUGRUCell(nn.Module):
    """GRU cell with an attentional update gate (DIEN eq. 6-8 with AUGRU)::

        r = sigma(W_r x + U_r h + b_r),   u = sigma(W_u x + U_u h + b_u)
        h~ = tanh(W_h x + r * (U_h h) + b_h)
        u' = a * u,   h' = (1 - u') * h + u' * h~

    ``x [B, in]``, ``h [B, H]``, ``a [B]`` -> ``[B, H]``. Gates stacked ``(r, u, h)`` in
    ``weight_ih [3H, in]``, ``weight_hh [3H, H]``, ``bias [3H]``.
    """

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        bound = hidden_dim ** -0.5
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_dim, input_dim).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_dim, hidden_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(3 * hidden_dim).uniform_(-bound, bound))

    def forward(self, x: Tensor, h: Tensor, a: Tensor) -> Tensor:
        gx_r, gx_u, gx_h = (F.linear(x, self.weight_ih) + self.bias).chunk(3, dim=-1)
        gh_r, gh_u, gh_h = F.linear(h, self.weight_hh).chunk(3, dim=-1)
        r = torch.sigmoid(gx_r + gh_r)
        u = a.unsqueeze(-1) * torch.sigmoid(gx_u + gh_u)
        candidate = torch.tanh(gx_h + r * gh_h)
        return (1.0 - u) * h + u * candidate


def auxiliary_loss(states: Tensor, items: Tensor, negatives: Tensor, mask: Tensor,
                   negative_valid: Tensor) -> Tensor:
    """DIEN's auxiliary loss: ``states [B, L, H]`` (oldest first) score the next item ``items[:, t+1]``
    against ``negatives[:, t+1]`` (all ``[B, L, H]``, ``H`` = item width) by inner product::

        -mean over pairs [log sigma(<h_t, e_{t+1}>) + log(1 - sigma(<h_t, ê_{t+1}>))]

    A pair counts where ``mask[:, t]``, ``mask[:, t+1]`` and ``negative_valid[:, t+1]`` hold; 0 without one.
    """
    h = states[:, :-1]
    pos = (h * items[:, 1:]).sum(-1)
    neg = (h * negatives[:, 1:]).sum(-1)
    pairs = (mask[:, :-1] & mask[:, 1:] & negative_valid[:, 1:]).to(states.dtype)
    per_pair = -(F.logsigmoid(pos) + F.logsigmoid(-neg))
    return (per_pair * pairs).sum() / pairs.sum().clamp_min(1.0)


@dataclass
class DIENConfig(SequenceModelConfig):
    """DIEN sizes; GRU widths equal ``embed_dim`` (the auxiliary loss compares states with item embeddings)."""

    sequence: str = "click"  # the behaviour type through the GRUs (the paper's one behaviour sequence)
    aux_weight: float = 1.0  # alpha of L = L_target + alpha * L_aux (paper: 1)


class DIEN(SequenceModelBase):
    model_name = "DIEN"

    def __init__(self, spec: FeatureSpec, config: DIENConfig | None = None):
        config = config or DIENConfig()
        super().__init__(spec, config)
        e = config.embed_dim
        self.seq_index = self.sequence_index(config.sequence)
        self.extractor = nn.GRU(e, e, batch_first=True)
        self.attention = BilinearAttention(e, e)
        self.evolution = AUGRUCell(e, e)
        self.aux_loss: Tensor | None = None
        self.build_head(e, tuple(a for a in range(len(spec.sequences)) if a != self.seq_index))

    def extract(self, x: Tensor, mask: Tensor) -> Tensor:
        """Extractor GRU over oldest-first ``x [U, N, e]`` with a valid prefix -> states, zero at padding."""
        return rnn_over_prefix(self.extractor, x, mask)

    def encode_user(self, batch_user: dict[str, Tensor]) -> UserState:
        seq, _, tokens, mask = self.embed_sequences(batch_user)
        a = self.seq_index
        x, m = chronological(tokens[:, a], mask[:, a])
        states = self.extract(x, m)
        if self.training and torch.is_grad_enabled():
            items, _ = chronological(self.raw_items(seq)[:, a], m)
            ids, _ = chronological(seq[:, a].unsqueeze(-1), m)
            # negatives: the same chronological step of the next row of the batch
            neg_ids, negatives = ids.roll(1, dims=0).squeeze(-1), items.roll(1, dims=0)
            neg_valid = (neg_ids > 0) & (neg_ids != ids.squeeze(-1))
            self.aux_loss = self.config.aux_weight * auxiliary_loss(states, items, negatives, m, neg_valid)
        else:
            self.aux_loss = None
        return {**self.common_state(batch_user, tokens, mask), "interest": states, "interest_mask": m}

    def evolve(self, states: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        """The AUGRU over the extractor states, attention from the target -> last state ``[B, e]``."""
        steps = int(mask.sum(-1).max()) if mask.numel() else 0
        h = states.new_zeros((states.shape[0], self.evolution.hidden_dim))
        if steps == 0:
            return h
        states, mask = states[:, :steps], mask[:, :steps]
        weights = self.attention(states, target, mask)  # [B, L]
        for t in range(steps):
            h = torch.where(mask[:, t, None], self.evolution(states[:, t], h, weights[:, t]), h)
        return h

    def score(self, cat: Tensor, user_rows: UserState, dense: Tensor | None = None) -> Tensor:
        fields = self.embed_cat(self.cat_embedding, cat, user_rows["cat_user"])
        target = self.target_embedding(cat, fields)
        interest = self.evolve(user_rows["interest"], user_rows["interest_mask"], target)
        return self.head(fields, [interest], user_rows, dense)
