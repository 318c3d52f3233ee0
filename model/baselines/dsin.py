"""DSIN (Feng et al., "Deep Session Interest Network for Click-Through Rate Prediction", IJCAI 2019), multi-task.

Implemented.

- Session division (:func:`split_sessions`): the ``sequence`` behaviour type (default ``click``),
  newest first, is cut into sessions wherever two consecutive behaviours lie more than
  ``session_gap_minutes`` (30, the paper's rule) apart. Our ``seq_gap`` is ``log1p(seconds between
  the behaviour and the row)``, so behaviour ``k`` happened ``expm1(seq_gap[k])`` seconds before the
  row and the gap between neighbours is the difference of those. The ``max_sessions`` most recent
  sessions are kept (session 0 = the most recent), each with its ``session_len`` most recent items.
- Session interest extractor: the item tokens (item embedding + gap signal) plus the bias encoding
  ``BE(k, t, c) = w^K_k + w^T_t + w^C_c`` (session, position in the session, embedding unit) go
  through one Transformer layer (:class:`~model.baselines.bst.TransformerLayer`, multi-head
  self-attention within each session, weights shared by all sessions); the session interest ``I_k``
  is the mean of its outputs over the session's items.
- Session interest interacting: a Bi-LSTM over the sessions' interests (``H_k``, both directions
  concatenated; run over the sessions newest first, which for a bidirectional LSTM only swaps which
  half reads the past).
- Session interest activating: two bilinear target attentions ``a_k = softmax_k(I_k W^I x)`` and
  ``softmax_k(H_k W^H x)`` with the candidate item ``x``; the two weighted sums join every
  categorical field embedding, the masked means of the other behaviour sequences and the dense
  tokens in the bottom MLP and task towers.

User-side reuse: sessions, the Transformer and the Bi-LSTM depend on the history alone
(:meth:`DSIN.encode_user`); only the two attentions are per candidate (:meth:`DSIN.score`).

What our data cannot follow: sequences hold video ids only (the paper's behaviours carry item +
shop / brand); sequences are at most 50 items, so sessions are few and short (``max_sessions`` 5 x
``session_len`` 10); one behaviour type is split into sessions, the other types enter as masked means.

>>> import torch
>>> from features.spec import demo_spec
>>> from model.base import random_batch
>>> spec = demo_spec(seq_len=4)
>>> model = DSIN(spec, DSINConfig(embed_dim=8, max_sessions=3, session_len=2)).eval()
>>> model(random_batch(spec, 3)).shape
torch.Size([3, 4])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import UserState
from model.baselines.bst import TransformerLayer
from model.baselines.dien import BilinearAttention, SequenceModelBase, SequenceModelConfig, rnn_over_prefix


def split_sessions(gap: Tensor, mask: Tensor, gap_minutes: float, max_sessions: int,
                   session_len: int) -> tuple[Tensor, Tensor]:
    """Sessions of a newest-first sequence with a valid prefix ``mask [B, N]`` and gaps ``gap [B, N]``
    (``log1p`` seconds before the row): a new session starts at item ``k`` when
    ``expm1(gap[k]) - expm1(gap[k-1]) > 60 * gap_minutes``.

    Returns ``index [B, S, L]`` (the position in ``N`` of the ``t``-th most recent item of the
    ``s``-th most recent session; 0 where empty) and ``valid [B, S, L]``; later sessions and items
    beyond ``session_len`` are dropped.

    >>> import math
    >>> minutes = torch.tensor([[1.0, 5.0, 40.0, 41.0, 0.0]])   # minutes before the row
    >>> gap = torch.log1p(minutes * 60)
    >>> index, valid = split_sessions(gap, torch.tensor([[True, True, True, True, False]]), 30.0, 3, 2)
    >>> index.tolist(), valid.tolist()
    ([[[0, 1], [2, 3], [0, 0]]], [[[True, True], [True, True], [False, False]]])
    """
    b, n = mask.shape
    seconds = torch.expm1(gap.double())
    starts = torch.zeros_like(mask)
    starts[:, 1:] = (seconds[:, 1:] - seconds[:, :-1]) > 60.0 * gap_minutes
    starts = starts & mask
    starts[:, 0] = mask[:, 0]
    session = torch.cumsum(starts.long(), dim=1) - 1  # [B, N]; -1 before the first valid item
    positions = torch.arange(n, device=mask.device).expand(b, n)
    first = torch.cummax(torch.where(starts, positions, torch.zeros_like(positions)), dim=1).values
    within = positions - first
    keep = mask & (session >= 0) & (session < max_sessions) & (within < session_len)
    slot = torch.where(keep, session * session_len + within, torch.full_like(session, max_sessions * session_len))
    index = torch.zeros(b, max_sessions * session_len + 1, dtype=torch.long, device=mask.device)
    index.scatter_(1, slot, positions)
    valid = torch.zeros(b, max_sessions * session_len + 1, dtype=torch.bool, device=mask.device)
    valid.scatter_(1, slot, keep)
    valid = valid[:, :-1].reshape(b, max_sessions, session_len)
    index = torch.where(valid, index[:, :-1].reshape(b, max_sessions, session_len), 0)
    return index, valid


@dataclass
class DSINConfig(SequenceModelConfig):
    """DSIN sizes and the paper's session rule as options."""

    sequence: str = "click"  # the behaviour type split into sessions
    session_gap_minutes: float = 30.0  # a new session after a pause longer than this (paper: 30)
    max_sessions: int = 5  # most recent sessions kept
    session_len: int = 10  # most recent items kept per session
    n_heads: int = 2  # self-attention heads within a session
    ffn_hidden: int | None = None  # Transformer feed-forward width (None: 4 x embed_dim)
    lstm_hidden: int | None = None  # Bi-LSTM width per direction (None: embed_dim)


class DSIN(SequenceModelBase):
    model_name = "DSIN"

    def __init__(self, spec: FeatureSpec, config: DSINConfig | None = None):
        config = config or DSINConfig()
        super().__init__(spec, config)
        if config.max_sessions < 1 or config.session_len < 1:
            raise ValueError("DSIN needs max_sessions >= 1 and session_len >= 1")
        e = config.embed_dim
        self.seq_index = self.sequence_index(config.sequence)
        # bias encoding BE(k, t, c) = w^K_k + w^T_t + w^C_c
        self.bias_session = nn.Parameter(torch.zeros(config.max_sessions))
        self.bias_position = nn.Parameter(torch.zeros(config.session_len))
        self.bias_unit = nn.Parameter(torch.zeros(e))
        for p in (self.bias_session, self.bias_position, self.bias_unit):
            nn.init.normal_(p, 0.0, 0.02)
        self.transformer = TransformerLayer(e, config.n_heads, config.ffn_hidden, config.dropout)
        h = config.lstm_hidden or e
        self.lstm = nn.LSTM(e, h, batch_first=True, bidirectional=True)
        self.interest_attention = BilinearAttention(e, e)
        self.evolved_attention = BilinearAttention(2 * h, e)
        self.build_head(e + 2 * h, tuple(a for a in range(len(spec.sequences)) if a != self.seq_index))

    def bias_encoding(self) -> Tensor:
        """``BE [S, L, e]``."""
        return (self.bias_session[:, None, None] + self.bias_position[None, :, None]
                + self.bias_unit[None, None, :])

    def session_interests(self, tokens: Tensor, gap: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens [U, N, e]`` -> session interests ``I [U, S, e]`` and the session mask ``[U, S]``."""
        cfg = self.config
        index, valid = split_sessions(gap, mask, cfg.session_gap_minutes, cfg.max_sessions, cfg.session_len)
        u, s, length = index.shape
        e = tokens.shape[-1]
        items = tokens.gather(1, index.view(u, -1, 1).expand(-1, -1, e)).view(u, s, length, e)
        items = (items + self.bias_encoding()) * valid.unsqueeze(-1).to(items.dtype)
        out = self.transformer(items.reshape(u * s, length, e), valid.reshape(u * s, length)).view(u, s, length, e)
        weights = valid.to(out.dtype) / valid.sum(-1, keepdim=True).clamp_min(1).to(out.dtype)
        return torch.einsum("usl,usle->use", weights, out), valid.any(-1)

    def interact(self, interests: Tensor, session_mask: Tensor) -> Tensor:
        """Bi-LSTM over the sessions (a valid prefix) -> ``H [U, S, 2h]``, zero for empty sessions."""
        return rnn_over_prefix(self.lstm, interests, session_mask)

    def encode_user(self, batch_user: dict[str, Tensor]) -> UserState:
        _, gap, tokens, mask = self.embed_sequences(batch_user)
        a = self.seq_index
        interests, session_mask = self.session_interests(tokens[:, a], gap[:, a], mask[:, a])
        return {**self.common_state(batch_user, tokens, mask), "interests": interests,
                "evolved": self.interact(interests, session_mask), "session_mask": session_mask}

    def score(self, cat: Tensor, user_rows: UserState, dense: Tensor | None = None) -> Tensor:
        fields = self.embed_cat(self.cat_embedding, cat, user_rows["cat_user"])
        target = self.target_embedding(cat, fields)
        interests, evolved, m = user_rows["interests"], user_rows["evolved"], user_rows["session_mask"]
        u_i = torch.einsum("bs,bse->be", self.interest_attention(interests, target, m), interests)
        u_h = torch.einsum("bs,bse->be", self.evolved_attention(evolved, target, m), evolved)
        return self.head(fields, [u_i, u_h], user_rows, dense)
