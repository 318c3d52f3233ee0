"""HSTU (Zhai et al., "Actions Speak Louder than Words", ICML 2024) as a multi-task ranker, scored with M-FALCON.

Tokens. The user's behaviour sequences (click / long_view / like, each newest first with its gaps)
are merged into one event stream: an event is an (item, action set) token, the item embedding plus
the sum of its actions' embeddings (a video clicked and long-viewed at the same moment, i.e. with the
same item and the same gap in two sequences, is one token with two actions, as the paper's
impression stream has it). Events are ordered by gap, the most recent ``max_events`` kept, and laid
out **oldest first** (``merge_order="oldest_first"``: the paper's chronological order, so causal
attention lets each event see its past; padding is on the left). The candidate is the target token
appended after the history: its item embedding (the item table the sequences use, when
``share_item_table``) plus a projection of its item-side field embeddings plus the action row
"candidate, no action yet".

One layer (:class:`SequentialTransductionUnit`)::

    U, V, Q, K = Split(SiLU(f1(LayerNorm(X))))
    A(X) V(X)  = SiLU(Q K^T + rab^{p,t}) / n * mask  V          (no softmax; n = max_events + 1)
    Y          = X + f2(Dropout(LayerNorm(A(X) V(X)) * U(X)))

``rab^{p,t}`` (:class:`RelativeAttentionBias`, one per layer, shared by the heads) adds a learned
scalar for the distance in events between query and key (every distance up to ``max_events`` its
own bucket) and one for the time between them, log-bucketed: ``floor(log1p(|t_q - t_k| seconds) /
time_bucket_width)`` with ``t = expm1(seq_gap)`` seconds before the row (the candidate at 0).
``n`` is a constant (the configured length, as the reference code divides by its padded maximum),
so a row's attention output is a sum, not a mean, and does not depend on padding or on how many
candidates are scored together. The heads (one tower per task, :class:`~model.layers.TaskTowers`)
read the target's final state, concatenated with the non-sequence features (every categorical field
embedding and the dense tokens) when ``head_input="target_and_features"``.

M-FALCON. Masking (:func:`mfalcon_mask`): history events attend causally to the history; each
target attends to the whole history and to itself, never to another target. So the history's
states do not depend on the candidates: :meth:`HSTU.encode_user` runs the layers over the history
once per user and keeps each layer's history keys and values (and the target-to-history bias),
and the candidate part appends the candidates as targets, one query each, all candidates of a user
reading that user's keys (:class:`~model.layers.RowGroups`). One micro-batch is whatever the
scoring UDF passes in one call; the result is the same for any split.

What our data cannot follow (named options): the paper reads a user's whole impression stream
(thousands of events, actions and non-actions); ours has at most 50 events per behaviour type and
no non-engaged impressions, so ``max_events`` defaults to the 150 our three sequences can hold and
the model is small (``d``, ``n_layers``, ``n_heads``). No timestamps reach the model, only gaps to
the row, which is exactly what the time bias needs.

>>> import torch
>>> from features.spec import demo_spec
>>> from model.base import random_batch, repeat_users, group_by_user
>>> spec = demo_spec(seq_len=4)
>>> model = HSTU(spec, HSTUConfig(d=16, n_layers=2, n_heads=2)).eval()
>>> batch = repeat_users(random_batch(spec, 5, seed=0), spec, [0, 0, 0, 3, 3])
>>> batch_user, user_index = group_by_user(batch, spec)
>>> with torch.no_grad():
...     state = model.encode_user(batch_user)            # the history's layers, once per user
...     reused = model({"cat": batch["cat"]}, state, user_index)
...     plain = model(batch)
>>> state["hist_k_0"].shape, reused.shape, bool(torch.allclose(reused, plain, atol=1e-5))
(torch.Size([2, 3, 16]), torch.Size([5, 4]), True)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import RankingModel, UserState, take_user_rows
from model.baselines.common import BaselineConfig
from model.layers import (
    CategoricalEmbedding,
    DenseTokens,
    GapEncoder,
    GapSignal,
    RowGroups,
    TaskTowers,
    init_embedding_,
)

CANDIDATE_ACTION = 0  # action row of the target token: a candidate has no action yet


@dataclass
class HSTUConfig(BaselineConfig):
    """HSTU sizes and the choices the paper makes that our data cannot follow.

    ``embed_dim`` (inherited) is the width of the categorical field embeddings (the target's
    item-side fields and the heads' non-sequence features); ``d`` the width of the HSTU tokens.
    """

    d: int = 64  # token width (paper: 512+; our 2-core budget and ~60 events per user want small)
    n_layers: int = 2  # stacked STU layers (paper: up to 24)
    n_heads: int = 2
    head_dim: int | None = None  # per-head width of Q/K and of U/V (None: d // n_heads)
    # events kept after merging, most recent first (paper: the whole impression stream, thousands);
    # our sequences hold at most 3 x 50 = 150 events, so the default keeps all of them
    max_events: int = 150
    # layout of the history: "oldest_first" (the paper's chronological order: causal attention lets
    # an event see its past) | "newest_first" (our sequences' order: an event sees the newer ones)
    merge_order: Literal["oldest_first", "newest_first"] = "oldest_first"
    # one token per (item, gap) with the sum of its action embeddings (the paper's impression with
    # its actions); False: one token per sequence entry, duplicates across types kept
    merge_same_event: bool = True
    use_position_bias: bool = True  # rab^p: a learned scalar per event distance (up to max_events)
    use_time_bias: bool = True  # rab^t: a learned scalar per log-bucketed time between two events
    time_buckets: int = 64  # buckets of log1p(seconds); 64 x 0.3 reaches log1p(7 years)
    time_bucket_width: float = 0.3  # bucket width in log1p(seconds)
    target_field: str = "video_id"  # the candidate's item id (looked up in the sequences' item table)
    share_item_table: bool = True  # the candidate's id and the sequence items share one table
    target_sides: tuple[str, ...] = ("item",)  # sides of the candidate fields projected into the target token
    # what the task towers read: the target's final state alone (the paper's ranking heads) or
    # concatenated with every categorical field embedding and the dense tokens
    head_input: Literal["target", "target_and_features"] = "target_and_features"
    gap_signal: GapSignal = "none"  # time enters through rab^t; "mlp" / "linear" also add it to event tokens
    input_dropout: float = 0.1  # on the tokens entering the first layer (paper: 0.2)

    @property
    def per_head(self) -> int:
        return self.head_dim or self.d // self.n_heads


# =============================================================================================
# The pieces: pointwise attention, its mask, the relative bias, one layer
# =============================================================================================

def pointwise_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, mask: Tensor, n: float) -> Tensor:
    """HSTU's attention: ``(SiLU(q k^T + bias) / n * mask) v``, no softmax.

    ``q [..., H, Q, a]``, ``k [..., H, K, a]``, ``v [..., H, K, e]``, ``bias`` broadcastable to
    ``[..., H, Q, K]`` (or None), ``mask`` bool broadcastable to it (True = may attend) -> ``[..., H, Q, e]``.

    >>> q = k = torch.ones(1, 1, 2, 1); v = torch.tensor([[[[1.0], [2.0]]]])
    >>> mask = torch.tensor([[True, False], [True, True]])
    >>> pointwise_attention(q, k, v, None, mask, n=2.0).flatten().tolist() == [
    ...     F.silu(torch.tensor(1.0)).item() / 2, 3 * F.silu(torch.tensor(1.0)).item() / 2]
    True
    """
    scores = torch.matmul(q, k.transpose(-1, -2))
    if bias is not None:
        scores = scores + bias
    weights = F.silu(scores) / n * mask.to(scores.dtype)
    return torch.matmul(weights, v)


def mfalcon_mask(history_valid: Tensor, n_targets: int = 0) -> Tensor:
    """``[U, L + n, L + n]`` bool, True = the query (row) may attend to the key (column).

    History slots ``0..L-1`` (``history_valid [U, L]``) attend causally (key slot <= query slot) to
    valid history keys; the ``n_targets`` targets appended after them attend to every valid history
    key and to themselves, not to each other. A padded query row still attends to itself (its
    output is never read, but it stays finite).

    >>> mfalcon_mask(torch.tensor([[False, True, True]]), n_targets=2)[0].int().tolist()
    [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 0, 1]]
    """
    u, length = history_valid.shape
    total = length + n_targets
    slots = torch.arange(total, device=history_valid.device)
    key_valid = torch.cat([history_valid, history_valid.new_ones((u, n_targets))], dim=1)  # [U, L + n]
    causal = slots[None, :] <= slots[:, None]  # [L + n, L + n]
    is_target_key = slots >= length
    # a target key is seen only by itself
    allowed = causal & (~is_target_key[None, :] | (slots[None, :] == slots[:, None]))
    diagonal = torch.eye(total, dtype=torch.bool, device=history_valid.device)
    return (allowed[None] & key_valid[:, None, :]) | diagonal[None]


class RelativeAttentionBias(nn.Module):
    """``rab^{p,t}(i, j) = w_p[min(|r_i - r_j|, max_distance)] + w_t[time_bucket(g_i, g_j)]``.

    ``r`` is an event's recency rank (0 = the most recent event, -1 = a target, i.e. the request
    itself), so the distance counts events and ignores padding. ``g`` is ``log1p(seconds before the
    row)`` (a target: 0). Either part can be switched off; with both off the bias is None.
    """

    def __init__(self, max_distance: int, time_buckets: int, time_bucket_width: float,
                 use_position: bool = True, use_time: bool = True):
        super().__init__()
        self.max_distance, self.time_buckets, self.time_bucket_width = max_distance, time_buckets, time_bucket_width
        self.position_weight = nn.Parameter(torch.randn(max_distance + 1) * 0.02) if use_position else None
        self.time_weight = nn.Parameter(torch.randn(time_buckets) * 0.02) if use_time else None

    def position_bucket(self, rank_q: Tensor, rank_k: Tensor) -> Tensor:
        """``|r_q - r_k|`` clamped at ``max_distance``; ``rank_q [..., Q]``, ``rank_k [..., K]`` -> ``[..., Q, K]``."""
        return (rank_q.unsqueeze(-1) - rank_k.unsqueeze(-2)).abs().clamp(max=self.max_distance)

    def time_bucket(self, gap_q: Tensor, gap_k: Tensor) -> Tensor:
        """``floor(log1p(|expm1(g_q) - expm1(g_k)|) / width)`` clamped to the last bucket -> ``[..., Q, K]``."""
        seconds = (torch.expm1(gap_q).unsqueeze(-1) - torch.expm1(gap_k).unsqueeze(-2)).abs()
        bucket = torch.floor(torch.log1p(seconds) / self.time_bucket_width).long()
        return bucket.clamp(0, self.time_buckets - 1)

    def forward(self, rank_q: Tensor, gap_q: Tensor, rank_k: Tensor, gap_k: Tensor) -> Tensor | None:
        """Ranks and gaps of the queries ``[..., Q]`` and keys ``[..., K]`` -> bias ``[..., Q, K]``."""
        return self.from_buckets(self.position_bucket(rank_q, rank_k), self.time_bucket(gap_q, gap_k))

    def from_buckets(self, position_bucket: Tensor, time_bucket: Tensor) -> Tensor | None:
        """The bias from buckets computed once for all layers (they share the bucketing, not the
        weights); the two bucket tensors broadcast against each other (positions are the same for
        every user: ``[L, L]`` beside ``[U, L, L]``)."""
        bias = None
        if self.position_weight is not None:
            bias = self.position_weight[position_bucket]
        if self.time_weight is not None:
            t = self.time_weight[time_bucket]
            bias = t if bias is None else bias + t
        return bias


class SequentialTransductionUnit(nn.Module):
    """One HSTU layer over tokens ``[..., N, d]``: ``Y = X + f2(Dropout(LN(A(X) V(X)) * U(X)))``.

    :meth:`project` gives ``U, V, Q, K`` (``SiLU(f1(LN(X)))``, split); :meth:`combine` the output
    from the attention result and ``U``. :meth:`forward` is the whole layer over one sequence with
    a mask; the M-FALCON target step (``HSTU._target_layer``) uses the same two halves.
    """

    def __init__(self, d: int, n_heads: int, head_dim: int, n: float, dropout: float = 0.0):
        super().__init__()
        self.d, self.n_heads, self.head_dim, self.n = d, n_heads, head_dim, n
        inner = n_heads * head_dim
        self.input_norm = nn.LayerNorm(d)
        self.f1 = nn.Linear(d, 4 * inner)  # U, V, Q, K
        self.attention_norm = nn.LayerNorm(inner)
        self.f2 = nn.Linear(inner, d)
        self.dropout = nn.Dropout(dropout)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``[..., N, d]`` -> ``U, V, Q, K``, each ``[..., N, H * head_dim]``."""
        return tuple(F.silu(self.f1(self.input_norm(x))).chunk(4, dim=-1))  # type: ignore[return-value]

    def heads(self, x: Tensor) -> Tensor:
        """``[..., N, H * a]`` -> ``[..., H, N, a]``."""
        return x.unflatten(-1, (self.n_heads, self.head_dim)).transpose(-2, -3)

    def combine(self, x: Tensor, attended: Tensor, u: Tensor) -> Tensor:
        """``x + f2(Dropout(LN(attended) * u))``; ``attended`` and ``u`` are ``[..., H * head_dim]``."""
        return x + self.f2(self.dropout(self.attention_norm(attended) * u))

    def forward(self, x: Tensor, bias: Tensor | None, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x [U, N, d]``, ``bias [U, N, N]`` (shared by the heads), ``mask [U, N, N]`` ->
        ``(Y [U, N, d], K [U, N, H * a], V [U, N, H * a])``; ``bias`` may broadcast (``[N, N]``)."""
        u, v, q, k = self.project(x)
        attended = pointwise_attention(self.heads(q), self.heads(k), self.heads(v),
                                       None if bias is None else bias.unsqueeze(-3), mask.unsqueeze(-3), self.n)
        return self.combine(x, attended.transpose(-2, -3).flatten(-2), u), k, v


# =============================================================================================
# The model
# =============================================================================================

class HSTU(RankingModel):
    def __init__(self, spec: FeatureSpec, config: HSTUConfig | None = None):
        config = config or HSTUConfig()
        super().__init__(spec, config)
        names = [c.name for c in spec.categorical]
        if config.target_field not in names:
            raise ValueError(f"HSTU target field {config.target_field!r} is not a categorical field of the spec")
        if not spec.sequences:
            raise ValueError("HSTU needs at least one behaviour sequence in the feature spec")
        if config.merge_order not in ("oldest_first", "newest_first"):
            raise ValueError(f"unknown merge_order {config.merge_order!r}")
        if config.head_input not in ("target", "target_and_features"):
            raise ValueError(f"unknown head_input {config.head_input!r}")
        if config.d % config.n_heads and config.head_dim is None:
            raise ValueError(f"d {config.d} is not divisible by n_heads {config.n_heads}")
        d, e = config.d, config.embed_dim
        self.target_index = names.index(config.target_field)
        target = spec.categorical[self.target_index]
        self.cat_embedding = CategoricalEmbedding(spec.categorical, e, config.cat_table_width)
        # sequence items hash like video_id in every behaviour type: one item table for all of them
        item_vocab = max(s.vocab_size for s in spec.sequences)
        self.share_item_table = config.share_item_table and all(s.vocab_size == target.vocab_size
                                                                for s in spec.sequences)
        self.item_table = nn.Embedding(target.vocab_size if self.share_item_table else item_vocab, d)
        init_embedding_(self.item_table.weight)
        self.action_table = nn.Embedding(len(spec.sequences) + 1, d)  # row 0: the candidate
        init_embedding_(self.action_table.weight)
        self.gap_encoder = GapEncoder(d, config.gap_signal) if config.gap_signal != "none" else None
        # the candidate fields in the target token, positions among candidate_fields
        self.target_fields = [k for k, f in enumerate(self.candidate_fields)
                              if spec.categorical[f].side in config.target_sides]
        self.register_buffer("_target_cols", torch.tensor(self.target_fields, dtype=torch.long), persistent=False)
        self.target_proj = nn.Linear(len(self.target_fields) * e, d) if self.target_fields else None
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.n = float(config.max_events + 1)
        self.biases = nn.ModuleList(
            RelativeAttentionBias(config.max_events, config.time_buckets, config.time_bucket_width,
                                  config.use_position_bias, config.use_time_bias)
            for _ in range(config.n_layers))
        self.layers = nn.ModuleList(SequentialTransductionUnit(d, config.n_heads, config.per_head, self.n,
                                                               config.dropout) for _ in range(config.n_layers))
        self.output_norm = nn.LayerNorm(d)
        self.dense_tokens = (DenseTokens(len(spec.dense), e)
                             if spec.dense and config.head_input == "target_and_features" else None)
        features = (len(spec.categorical) + len(spec.dense)) * e if config.head_input == "target_and_features" else 0
        self.towers = TaskTowers(d + features, len(spec.tasks), config.tower_hidden, config.dropout)

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last layer's output projection ``f2``: every task's loss flows through it."""
        return list(self.layers[-1].f2.parameters())

    # -- tokens -----------------------------------------------------------------------------
    def merge_events(self, seq: Tensor, gap: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The behaviour sequences ``[U, F, N]`` (+ gaps) as one event stream, most recent first:
        ``(items [U, L], actions [U, L, F] bool, gaps [U, L], valid [U, L])``, ``L`` = the most events of
        a row, at most ``max_events`` (at least 1), valid events first (an event with several actions
        once, with ``merge_same_event``)."""
        u, f, n = seq.shape
        items, gaps = seq.reshape(u, f * n), gap.reshape(u, f * n)
        actions = F.one_hot(torch.arange(f, device=seq.device).repeat_interleave(n), f).bool().expand(u, -1, -1)
        valid = items > 0
        if self.config.merge_same_event:  # sort by item, then stably by gap: equal events are neighbours
            order = torch.argsort(items, dim=1, stable=True)
            items, gaps, valid = items.gather(1, order), gaps.gather(1, order), valid.gather(1, order)
            actions = actions.gather(1, order.unsqueeze(-1).expand(-1, -1, f))
        order = torch.argsort(torch.where(valid, gaps, torch.inf), dim=1, stable=True)
        items, gaps, valid = items.gather(1, order), gaps.gather(1, order), valid.gather(1, order)
        actions = actions.gather(1, order.unsqueeze(-1).expand(-1, -1, f))
        if self.config.merge_same_event:
            repeats = (items[:, 1:] == items[:, :-1]) & (gaps[:, 1:] == gaps[:, :-1]) & valid[:, :-1]
            same = torch.cat([valid.new_zeros((u, 1)), repeats], dim=1) & valid
            start = valid & ~same
            event = torch.cumsum(start.long(), dim=1) - 1  # the merged event of every valid entry
            slot = torch.where(valid, event, f * n)  # invalid entries land in a dropped extra slot
            merged_actions = actions.new_zeros((u, f * n + 1, f), dtype=torch.long).scatter_add_(
                1, slot.unsqueeze(-1).expand(-1, -1, f), actions.long())[:, :-1] > 0
            first = torch.where(start, event, f * n)
            items = items.new_zeros((u, f * n + 1)).scatter_(1, first, items)[:, :-1]
            gaps = gaps.new_zeros((u, f * n + 1)).scatter_(1, first, gaps)[:, :-1]
            valid, actions = items > 0, merged_actions
        # the most recent max_events, and no slot beyond the batch's longest history (padding is masked)
        length = max(1, min(self.config.max_events, int(valid.sum(1).max()) if u else 1))
        return items[:, :length], actions[:, :length], torch.where(valid, gaps, 0.0)[:, :length], valid[:, :length]

    def history(self, seq: Tensor, gap: Tensor) -> dict[str, Tensor]:
        """History tokens in the configured layout: ``tokens [U, L, d]``, ``gaps [U, L]``, ``valid [U, L]``,
        ``rank [L]`` (recency rank of each slot: 0 = the most recent event)."""
        items, actions, gaps, valid = self.merge_events(seq, gap)
        tokens = self.item_table(items) + actions.to(self.action_table.weight.dtype) @ self.action_table.weight[1:]
        if self.gap_encoder is not None:
            tokens = tokens + self.gap_encoder(gaps)
        tokens = tokens * valid.unsqueeze(-1).to(tokens.dtype)
        rank = torch.arange(items.shape[1], device=items.device)
        if self.config.merge_order == "oldest_first":  # most recent event last, next to the targets
            tokens, gaps, valid, rank = tokens.flip(1), gaps.flip(1), valid.flip(1), rank.flip(0)
        return {"tokens": tokens, "gaps": gaps, "valid": valid, "rank": rank}

    def target_tokens(self, cat: Tensor, candidate_part: Tensor | None = None) -> Tensor:
        """``cat [B, M]`` -> the candidates' target tokens ``[B, d]`` (item row + projected item-side
        fields + the "candidate" action row); ``candidate_part``: ``embed_candidates`` of ``cat``, if
        already computed."""
        ids = cat[:, self.target_index]
        if self.share_item_table:
            token = self.item_table(ids)
        else:
            token = self.item_table.weight.new_zeros((cat.shape[0], self.config.d))
        if self.share_item_table and self.spec.categorical[self.target_index].vocabulary is not None:
            token = torch.where((ids == 0).unsqueeze(-1), self.item_table.weight[1:].mean(0), token)  # cold start
        if self.target_proj is not None:
            if candidate_part is None:
                candidate_part = self.embed_candidates(self.cat_embedding, cat)
            fields = candidate_part.index_select(1, self._target_cols)
            token = token + self.target_proj(fields.flatten(1))
        return token + self.action_table.weight[CANDIDATE_ACTION]

    # -- the contract -----------------------------------------------------------------------
    def encode_user(self, batch_user: dict[str, Tensor]) -> UserState:
        """Per user: the user fields, and per layer the history's keys / values and the bias a target
        adds to each history key (all ``U`` rows)."""
        h = self.history(batch_user["seq"], batch_user["seq_gap"])
        x, valid, rank, gaps = self.input_dropout(h["tokens"]), h["valid"], h["rank"], h["gaps"]
        mask = mfalcon_mask(valid)
        target_rank = rank.new_full((1,), -1)
        target_gap = gaps.new_zeros((gaps.shape[0], 1))
        state: UserState = {"cat_user": self.cat_embedding(batch_user["cat_user"], self.user_fields),
                            "hist_mask": valid}
        buckets = self.biases[0]  # every layer buckets alike: positions [L, L], times [U, L, L], once
        history_buckets = (buckets.position_bucket(rank, rank), buckets.time_bucket(gaps, gaps))
        target_buckets = (buckets.position_bucket(target_rank, rank), buckets.time_bucket(target_gap, gaps))
        for i, (layer, bias) in enumerate(zip(self.layers, self.biases)):
            to_history = bias.from_buckets(*target_buckets)  # [U, 1, L] (positions [1, L])
            if to_history is not None:
                state[f"target_bias_{i}"] = to_history.expand(gaps.shape[0], 1, -1)[:, 0]
            if i + 1 < len(self.layers):  # the last layer's history outputs are read by nothing
                x, k, v = layer(x, bias.from_buckets(*history_buckets), mask)
            else:
                _, v, _, k = layer.project(x)
            state[f"hist_k_{i}"], state[f"hist_v_{i}"] = k, v
        return state

    def score(self, cat: Tensor, user_rows: UserState, dense: Tensor | None = None) -> Tensor:
        return self._score(cat, user_rows, None, dense)

    def score_per_user(self, cat: Tensor, user_state: UserState, user_index: Tensor,
                       dense: Tensor | None = None) -> Tensor:
        """M-FALCON: the history keys / values stay one row per user; every candidate of a user is one
        target query over them (packed per user, :class:`~model.layers.RowGroups`)."""
        groups = RowGroups.build(user_index, user_state["hist_mask"].shape[0])
        if groups is None:  # too uneven to pack: expand everything
            return self._score(cat, take_user_rows(user_state, user_index), None, dense)
        per_user = {k: v for k, v in user_state.items() if k != "cat_user"}
        return self._score(cat, {**per_user, "cat_user": user_state["cat_user"].index_select(0, user_index)},
                           groups, dense)

    def _score(self, cat: Tensor, user_rows: UserState, groups: RowGroups | None, dense: Tensor | None) -> Tensor:
        """With ``groups``, everything in ``user_rows`` but ``cat_user`` is one row per user."""
        candidate_part = self.embed_candidates(self.cat_embedding, cat)  # [B, M_candidate, e]
        t = self.input_dropout(self.target_tokens(cat, candidate_part))
        for i, layer in enumerate(self.layers):
            t = self._target_layer(i, layer, t, user_rows, groups)
        return self.predict(self.output_norm(t), cat, user_rows["cat_user"], dense, candidate_part)

    def _target_layer(self, i: int, layer: SequentialTransductionUnit, t: Tensor, user_rows: UserState,
                      groups: RowGroups | None) -> Tensor:
        """One layer for the targets ``t [B, d]``: each attends to its user's history keys of layer ``i``
        and to itself."""
        u, v, q, k = layer.project(t)  # [B, H * a]
        qh = q.unflatten(-1, (layer.n_heads, layer.head_dim))  # [B, H, a]
        # [G, R, H, a] queries per key set (G = B, R = 1 without groups)
        qg = groups.pad(qh) if groups is not None else qh.unsqueeze(1)
        keys = user_rows[f"hist_k_{i}"].unflatten(-1, (layer.n_heads, layer.head_dim))  # [G, L, H, a]
        values = user_rows[f"hist_v_{i}"].unflatten(-1, (layer.n_heads, layer.head_dim))
        scores = torch.einsum("grha,glha->grhl", qg, keys)
        bias = user_rows.get(f"target_bias_{i}")
        if bias is not None:
            scores = scores + bias[:, None, None, :]
        weights = F.silu(scores) / layer.n * user_rows["hist_mask"][:, None, None, :].to(scores.dtype)
        attended = torch.einsum("grhl,glhe->grhe", weights, values)
        attended = groups.unpad(attended) if groups is not None else attended.squeeze(1)  # [B, H, a]
        # the target's own key: distance 0, no time between
        self_score = (qh * k.unflatten(-1, (layer.n_heads, layer.head_dim))).sum(-1)  # [B, H]
        self_bias = self._self_bias(i, t)
        if self_bias is not None:
            self_score = self_score + self_bias
        attended = attended + (F.silu(self_score) / layer.n).unsqueeze(-1) * v.unflatten(-1, (layer.n_heads,
                                                                                               layer.head_dim))
        return layer.combine(t, attended.flatten(1), u)

    def _self_bias(self, i: int, t: Tensor) -> Tensor | None:
        """Layer ``i``'s bias of a target on its own key (distance 0, no time between): a scalar."""
        rank = torch.full((1,), -1, dtype=torch.long, device=t.device)
        gap = t.new_zeros(1)
        bias = self.biases[i](rank, gap, rank, gap)
        return None if bias is None else bias.reshape(())

    def predict(self, target_state: Tensor, cat: Tensor, cat_user: Tensor, dense: Tensor | None,
                candidate_part: Tensor | None = None) -> Tensor:
        """The task towers on the target's final state ``[B, d]`` (+ the non-sequence features)."""
        parts = [target_state]
        if self.config.head_input == "target_and_features":
            if candidate_part is None:
                candidate_part = self.embed_candidates(self.cat_embedding, cat)
            parts.append(self.merge_cat(cat_user, candidate_part).flatten(1))
            if self.dense_tokens is not None:
                parts.append(self.dense_tokens(dense).flatten(1))
        return self.towers(torch.cat(parts, dim=1))
