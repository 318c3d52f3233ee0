"""Building blocks shared by INFNet and the baseline zoo.

Everything here follows the index conventions of :mod:`features.spec`: categorical bucket ``0`` is
the null/unseen bucket (a valid row of the table, never an error) and sequence id ``0`` is padding,
which every layer masks (padded positions contribute nothing, and a fully padded sequence yields
zeros, never NaN).

- :class:`CategoricalEmbedding` — one table per field (per-field width from the spec, projected to
  the model width), able to embed a subset of the fields (the user side alone, for reuse); id 0
  of an exact-vocabulary field embeds as the mean of the field's rows (cold start).
- :class:`SequenceEmbedding` — per-behaviour-type item tables plus an optional learned projection of
  the time gap; returns tokens zeroed at padding and the validity mask.
- :class:`MultiHeadCrossAttention` — ``softmax(Q W_Q (K W_K)^T / sqrt(d_k)) V W_V`` with a key
  padding mask, computed query-side (cheap when a few proxies query many tokens); with
  :class:`RowGroups` many query rows share one key set (the candidates of a request, one user).
- :class:`TargetAttentionPooling` — DIN's activation unit (candidate-aware weighting of a sequence).
- :class:`DenseTokens` — raw dense values (point-in-time counts and rates) as one token each.
- :class:`MLP`, :class:`TaskTowers`, :func:`masked_sum`, :func:`masked_mean`.

>>> import torch
>>> from features.spec import demo_spec
>>> spec = demo_spec(seq_len=4)
>>> emb = SequenceEmbedding(spec.sequences, dim=8)
>>> seq = torch.zeros(2, 3, 4, dtype=torch.long); seq[0, 0, :2] = torch.tensor([5, 7])
>>> with torch.no_grad():
...     tokens, mask = emb(seq, torch.zeros(2, 3, 4))
>>> tokens.shape, int(mask.sum()), float(tokens[1].abs().sum())
(torch.Size([2, 3, 4, 8]), 2, 0.0)
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from features.spec import CategoricalField, SequenceField

EMBEDDING_INIT_STD = 0.02
GapSignal = Literal["mlp", "linear", "none"]
# log1p(seconds) lies in ~[0, 17] (a year is 17.3): dividing keeps the gap encoder's input O(1).
GAP_SCALE = 10.0


def init_embedding_(weight: Tensor, std: float = EMBEDDING_INIT_STD) -> Tensor:
    with torch.no_grad():
        return weight.normal_(0.0, std)


# =============================================================================================
# Dense layers
# =============================================================================================

class MLP(nn.Sequential):
    """``Linear -> ReLU -> Dropout`` per hidden width, then an optional linear output layer."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int | None = None, dropout: float = 0.0):
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        super().__init__(*layers)
        self.out_dim = width


def last_linear(module: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``module`` (an MLP's output layer)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no Linear layer")
    return linears[-1]


class TaskTowers(nn.Module):
    """One MLP tower per task, each ending in one output (a logit or a raw regression value).

    Input ``[B, D]`` (every task reads the same vector) or ``[B, T, D]`` (task ``i`` reads row ``i``);
    output ``[B, T]``.
    """

    def __init__(self, in_dim: int, n_tasks: int, hidden: Sequence[int] = (64,), dropout: float = 0.0):
        super().__init__()
        self.towers = nn.ModuleList(MLP(in_dim, hidden, 1, dropout) for _ in range(n_tasks))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return torch.cat([tower(x) for tower in self.towers], dim=-1)
        return torch.cat([tower(x[:, i]) for i, tower in enumerate(self.towers)], dim=-1)


# =============================================================================================
# Pooling
# =============================================================================================

def masked_sum(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Sum of ``x`` over ``dim`` where ``mask`` (``x``'s shape without the last axis) is true."""
    return (x * mask.unsqueeze(-1).to(x.dtype)).sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean over the valid positions; 0 (not NaN) where none is valid."""
    count = mask.to(x.dtype).sum(dim).clamp_min(1.0).unsqueeze(-1)
    return masked_sum(x, mask, dim) / count


# =============================================================================================
# Embeddings
# =============================================================================================

class CategoricalEmbedding(nn.Module):
    """One embedding table per categorical field, every field projected to ``out_dim``.

    A field's table width is ``field.embed_dim`` when the spec sets it (and ``use_spec_widths``),
    else ``default_width`` (``None``: ``out_dim``); a field whose width differs from ``out_dim``
    gets its own linear projection (spec: "tables may have their own width and are projected").
    Fields of one width share one physical ``nn.Embedding`` at disjoint row offsets, which is
    exactly one table per field but one lookup per width group instead of one per field.

    ``forward(cat, fields)`` embeds the columns of ``cat`` as the fields ``fields`` (indices into
    the spec's categorical list; default all), so the user side can be embedded alone.

    Cold start: a field with an exact vocabulary (``field.vocabulary`` set) has no hash bucket its
    id 0 could share; index 0 (null, or an id first seen after the vocabulary was built) embeds as
    the mean of the field's other rows instead of a row of its own, so an unseen id looks like
    an average one (``cold_start_mean=False`` keeps a learned row 0).
    """

    def __init__(self, fields: Sequence[CategoricalField], out_dim: int, default_width: int | None = None,
                 use_spec_widths: bool = True, cold_start_mean: bool = True):
        super().__init__()
        self.n_fields = len(fields)
        self.out_dim = out_dim
        self._cold = [cold_start_mean and getattr(f, "vocabulary", None) is not None for f in fields]
        self._vocab_sizes = [f.vocab_size for f in fields]
        widths = [(f.embed_dim if use_spec_widths and f.embed_dim else None) or default_width or out_dim
                  for f in fields]
        self.group_widths = sorted(set(widths))
        group_of, pos_in_group, offsets = [], [], []
        group_sizes = {w: 0 for w in self.group_widths}
        group_rows = {w: 0 for w in self.group_widths}
        for f, w in zip(fields, widths):
            group_of.append(self.group_widths.index(w))
            pos_in_group.append(group_sizes[w])
            offsets.append(group_rows[w])
            group_sizes[w] += 1
            group_rows[w] += f.vocab_size
        self.tables = nn.ModuleList(nn.Embedding(group_rows[w], w) for w in self.group_widths)
        for t in self.tables:
            init_embedding_(t.weight)
        # Per-field projections of the groups narrower/wider than out_dim: [fields in group, w, out].
        self.proj_weight = nn.ParameterList()
        self.proj_bias = nn.ParameterList()
        self._proj_index: list[int] = []
        for w in self.group_widths:
            if w == out_dim:
                self._proj_index.append(-1)
                continue
            weight = torch.empty(group_sizes[w], w, out_dim)
            nn.init.uniform_(weight, -1 / math.sqrt(w), 1 / math.sqrt(w))
            self._proj_index.append(len(self.proj_weight))
            self.proj_weight.append(nn.Parameter(weight))
            self.proj_bias.append(nn.Parameter(torch.zeros(group_sizes[w], out_dim)))
        self._group_of = group_of
        self._pos_in_group = pos_in_group
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self._plans: dict[tuple[int, ...], list] = {}

    def _plan(self, fields: tuple[int, ...], device: torch.device) -> tuple[list, Tensor | None]:
        """Per width group: (group, input columns, row offsets, projection rows), plus the inverse
        permutation that restores the requested field order (None when already in order).
        Cached per (fields, device) so a forward pass builds no index tensors."""
        key = (fields, str(device))
        plan = self._plans.get(key)
        if plan is None:
            def as_tensor(xs: list[int]) -> Tensor:
                return torch.tensor(xs, dtype=torch.long, device=device)

            groups, order = [], []
            for g in range(len(self.group_widths)):
                cols = [k for k, f in enumerate(fields) if self._group_of[f] == g]
                if not cols:
                    continue
                # cold-start fields of the group: (position in the group's columns, first row, rows)
                cold = [(j, int(self.offsets[fields[k]]), self._vocab_sizes[fields[k]])
                        for j, k in enumerate(cols) if self._cold[fields[k]] and self._vocab_sizes[fields[k]] > 1]
                cold = (as_tensor([j for j, _, _ in cold]), [(first, rows) for _, first, rows in cold]) if cold else None
                groups.append((g, as_tensor(cols), self.offsets[as_tensor([fields[k] for k in cols])],
                               as_tensor([self._pos_in_group[fields[k]] for k in cols]), cold))
                order += cols
            inverse = sorted(range(len(order)), key=order.__getitem__)
            plan = (groups, None if inverse == list(range(len(order))) else as_tensor(inverse))
            self._plans[key] = plan
        return plan

    def forward(self, cat: Tensor, fields: Sequence[int] | None = None) -> Tensor:
        """``cat [B, len(fields)]`` bucket ids -> ``[B, len(fields), out_dim]``."""
        fields = tuple(range(self.n_fields)) if fields is None else tuple(fields)
        if len(fields) == 0:
            return torch.zeros((cat.shape[0], 0, self.out_dim), device=cat.device)
        groups, inverse = self._plan(fields, cat.device)
        parts = []
        for g, cols, offsets, positions, cold in groups:
            ids = cat.index_select(1, cols)
            e = self.tables[g](ids + offsets)  # [B, k, w]
            if cold is not None:
                at, ranges = cold
                weight = self.tables[g].weight
                means = torch.stack([weight[first + 1:first + rows].mean(0) for first, rows in ranges])  # [c, w]
                unseen = (ids.index_select(1, at) == 0).unsqueeze(-1)  # [B, c, 1]
                e = e.index_copy(1, at, torch.where(unseen, means.unsqueeze(0), e.index_select(1, at)))
            p = self._proj_index[g]
            if p >= 0:
                e = torch.einsum("bkw,kwd->bkd", e, self.proj_weight[p][positions]) + self.proj_bias[p][positions]
            parts.append(e)
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out if inverse is None else out.index_select(1, inverse)


class DenseTokens(nn.Module):
    """Raw dense values ``[B, K]`` -> one token per value ``[B, K, dim]``: ``x_k * w_k + b_k``.

    The point-in-time counts and rates enter token-based models as tokens like any categorical field
    (INFNet keeps its token view); a value of 0 (a null) gives the field's bias token.
    """

    def __init__(self, n_values: int, dim: int):
        super().__init__()
        self.n_values, self.dim = n_values, dim
        self.weight = nn.Parameter(torch.randn(n_values, dim) * EMBEDDING_INIT_STD)
        self.bias = nn.Parameter(torch.zeros(n_values, dim))

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(-1) * self.weight + self.bias


class GapEncoder(nn.Module):
    """A learned projection of the time gap ``log1p(seconds)`` to ``dim`` (added to item tokens).

    ``"mlp"``: ``Linear(1, h) -> SiLU -> Linear(h, dim)`` (can express "recent matters more" in a
    non-linear way); ``"linear"``: ``Linear(1, dim)``.
    """

    def __init__(self, dim: int, kind: GapSignal = "mlp", hidden: int = 16):
        super().__init__()
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        elif kind == "linear":
            self.net = nn.Linear(1, dim)
        else:
            raise ValueError(f"unknown gap signal {kind!r}")

    def forward(self, gap: Tensor) -> Tensor:
        return self.net((gap / GAP_SCALE).unsqueeze(-1))


class SequenceEmbedding(nn.Module):
    """Behaviour sequences ``[B, F, N]`` (+ gaps) -> tokens ``[B, F, N, dim]`` and mask ``[B, F, N]``.

    One table per behaviour type (``E_a^seq``; stored as one tensor at per-type row offsets), or one
    ``shared_table`` for every type (DIN shares it with the candidate id). The gap signal, when
    enabled, is added to the item embedding. Padding (id 0) tokens are exactly zero.
    """

    def __init__(self, fields: Sequence[SequenceField], dim: int, gap_signal: GapSignal = "mlp",
                 shared_table: nn.Embedding | None = None):
        super().__init__()
        self.dim = dim
        self.shared_table = shared_table
        if shared_table is None:
            offsets = [0]
            for f in fields[:-1]:
                offsets.append(offsets[-1] + f.vocab_size)
            self.table = nn.Embedding(sum(f.vocab_size for f in fields), dim)
            init_embedding_(self.table.weight)
            self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long).view(1, -1, 1),
                                 persistent=False)
        self.gap = GapEncoder(dim, gap_signal) if gap_signal != "none" else None

    def forward(self, seq: Tensor, gap: Tensor) -> tuple[Tensor, Tensor]:
        mask = seq > 0
        if self.shared_table is not None:
            tokens = self.shared_table(seq)
        else:
            tokens = self.table(seq + self.offsets)
        if self.gap is not None:
            tokens = tokens + self.gap(gap)
        return tokens * mask.unsqueeze(-1).to(tokens.dtype), mask


# =============================================================================================
# Attention
# =============================================================================================

class RowGroups:
    """Rows of a batch grouped by the key set they read: row ``i`` reads key set ``group_of[i]``.

    Candidates of one request attend to the same user sequence. Instead of copying the ``[L, d]``
    keys to every row, the rows' queries are packed per group into a padded ``[G, R, ...]`` layout
    (``R`` = the largest group), so one batched matmul per group serves all of its rows. Built by
    :meth:`build`, which returns ``None`` when the padding would waste more than ``max_padding``
    (a few huge groups among many tiny ones): the caller then expands the keys per row.

    >>> groups = RowGroups.build(torch.tensor([1, 0, 1, 1]), n_groups=2)
    >>> groups.n_groups, groups.slots
    (2, 3)
    >>> x = torch.tensor([[10.], [20.], [11.], [12.]])
    >>> groups.pad(x)[:, :, 0].tolist()
    [[20.0, 0.0, 0.0], [10.0, 11.0, 12.0]]
    >>> bool((groups.unpad(groups.pad(x)) == x).all())
    True
    """

    def __init__(self, slot_of_row: Tensor, n_groups: int, slots: int, in_order: bool = False):
        self.slot_of_row, self.n_groups, self.slots = slot_of_row, n_groups, slots
        # rows already sorted by group and every group full (a packed call of equal requests):
        # padding is a view, no scatter / gather
        self.in_order = in_order

    @classmethod
    def build(cls, group_of: Tensor, n_groups: int, max_padding: float = 2.0) -> "RowGroups | None":
        n_rows = group_of.shape[0]
        counts = torch.bincount(group_of, minlength=n_groups)
        slots = int(counts.max()) if n_rows else 0
        if n_rows == 0 or n_groups * slots > max_padding * n_rows:
            return None
        order = torch.argsort(group_of, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        sorted_groups = group_of[order]
        rank_in_group = torch.arange(n_rows, device=group_of.device) - starts[sorted_groups]
        slot_of_row = torch.empty_like(group_of)
        slot_of_row[order] = sorted_groups * slots + rank_in_group
        in_order = n_groups * slots == n_rows and bool((slot_of_row == torch.arange(n_rows, device=group_of.device)).all())
        return cls(slot_of_row, n_groups, slots, in_order)

    def group_of(self) -> Tensor:
        """``Long[B]``: the group of each row."""
        return torch.div(self.slot_of_row, self.slots, rounding_mode="floor")

    def pad(self, x: Tensor) -> Tensor:
        """``[B, ...]`` -> ``[G, R, ...]`` (zeros in unused slots)."""
        if self.in_order:
            return x.reshape(self.n_groups, self.slots, *x.shape[1:])
        out = x.new_zeros((self.n_groups * self.slots, *x.shape[1:]))
        out[self.slot_of_row] = x
        return out.view(self.n_groups, self.slots, *x.shape[1:])

    def unpad(self, y: Tensor) -> Tensor:
        """``[G, R, ...]`` -> ``[B, ...]``."""
        if self.in_order:
            return y.reshape(self.n_groups * self.slots, *y.shape[2:])
        return y.reshape(self.n_groups * self.slots, *y.shape[2:]).index_select(0, self.slot_of_row)


class GatedKeys:
    """Per-row keys ``K_t = Norm(s_t * gamma) * m_t`` that are never built: ``s`` ``[G, L, d]`` one
    row per group (a user's sequence tokens), ``gamma`` ``[B, d]`` one vector per row (a candidate's
    PGU gate), ``Norm`` a :class:`torch.nn.LayerNorm` (or none), ``m`` the group's key mask.

    INFNet gates the user's sequence with a candidate-dependent gate (``S' = LN(S * g)``) and the
    next block attends over ``S'``: built literally, that copies the user's ``[L, d]`` keys to every
    candidate and normalises ``L`` tokens per candidate. The attention reads the keys only through
    dot products with a few query rows and a weighted sum, so both fold onto the user's ``s``.
    With ``x_t = s_t * gamma`` (elementwise), ``LN(x_t) = r_t (x_t - mu_t) * w + b``,
    ``mu_t = (s_t . gamma) / d``, ``var_t = (s_t^2 . gamma^2) / d - mu_t^2``, ``r_t = (var_t + eps)^-1/2``:

    - score of a key-space query ``q``: ``q . LN(x_t) = r_t ((q*w) - mean(q*w)) . x_t + q . b``
      (the centring moves to the query: ``(x - mean(x)) . v = x . (v - mean(v))``)
      ``= r_t (s_t . q~) + const`` with ``q~ = gamma * ((q*w) - mean(q*w))``; ``q . b`` is the same
      for every key of the row, and softmax ignores a constant, so it is dropped;
    - weighted sum with softmax weights ``a_t`` (zero at padding, summing to 1):
      ``sum_t a_t LN(x_t) = w * (u - mean(u)) + b`` with ``u = gamma * sum_t (a_t r_t) s_t``
      (``sum_t a_t r_t mu_t = mean(u)``, because ``mu_t`` is linear in ``s_t``).

    So a row costs the dot products of its few query rows and of its gate (``mu_t``, ``var_t``: two
    more rows) with the ``L`` user tokens, as batched matmuls per group (:class:`RowGroups`), and no
    ``[L, d]`` tensor per row. Without a norm, ``r_t = 1``, no centring, ``w = 1``, ``b = 0``.
    ``var_t`` from the two moments is exact algebra; in float32 it loses digits only when a
    token's mean dwarfs its spread (clamped at 0; tests hold it within 1e-5 of ``nn.LayerNorm``).
    The statistics are computed once and shared by every attention that reads these keys.
    """

    def __init__(self, tokens: Tensor, gate: Tensor, groups: "RowGroups", norm: nn.Module | None = None):
        self.tokens, self.gate, self.groups = tokens, gate, groups
        self.norm = norm if isinstance(norm, nn.LayerNorm) else None
        self._rstd: Tensor | None = None
        self._padded_gate: Tensor | None = None

    def padded_gate(self) -> Tensor:
        """``gamma`` in the padded layout ``[G, R, d]`` (computed once)."""
        if self._padded_gate is None:
            self._padded_gate = self.groups.pad(self.gate)
        return self._padded_gate

    def rstd(self) -> Tensor | None:
        """``r_t`` per (row slot, token): ``[G, R, L]`` (``None`` without a norm)."""
        if self.norm is None:
            return None
        if self._rstd is None:
            d = self.tokens.shape[-1]
            gate = self.padded_gate()  # [G, R, d]
            mean = torch.bmm(gate, self.tokens.transpose(1, 2)) / d  # [G, R, L]
            sq = torch.bmm(gate * gate, (self.tokens * self.tokens).transpose(1, 2)) / d
            self._rstd = torch.rsqrt((sq - mean * mean).clamp_min(0.0) + self.norm.eps)
        return self._rstd

    def materialize(self, key_mask: Tensor | None = None) -> Tensor:
        """The ``[B, L, d]`` keys themselves (what the fold avoids; for tests and fallbacks)."""
        group_of = self.groups.group_of()
        x = self.tokens.index_select(0, group_of) * self.gate.unsqueeze(1)
        x = self.norm(x) if self.norm is not None else x
        return x if key_mask is None else x * key_mask.index_select(0, group_of).unsqueeze(-1).to(x.dtype)

    def attend(self, q_keyspace: Tensor, key_mask: Tensor | None) -> Tensor:
        """Softmax attention of key-space queries ``q_keyspace [B, X, d]`` over each row's keys ->
        weighted keys ``[B, X, d]`` (zero for a row whose group has no valid key)."""
        g, l, d = self.tokens.shape
        r, n_x = self.groups.slots, q_keyspace.shape[1]
        rstd, bias = self.rstd(), _padding_bias(key_mask, self.tokens.dtype)
        v = q_keyspace if self.norm is None else q_keyspace * self.norm.weight
        if self.norm is not None:
            v = v - v.mean(-1, keepdim=True)
        q = self.groups.pad(v * self.gate.unsqueeze(1)).view(g, r * n_x, d)
        chunks = attention_chunks(g, r * n_x * l, q.device)
        # scoring (no graph): every chunk writes its slice of one output, in place (no concatenation)
        out = q.new_empty((g, r, n_x, d)) if len(chunks) > 1 and not torch.is_grad_enabled() else None
        parts = []
        for e in chunks:
            scores = torch.bmm(q[e], self.tokens[e].transpose(1, 2))  # [G', R X, L]
            if rstd is not None:  # r_t * scores + padding bias in one pass over [G', R, X, L]
                scores = scores.view(-1, r, n_x, l)
                scores = (torch.addcmul(bias[e].unsqueeze(1), scores, rstd[e].unsqueeze(2)) if bias is not None
                          else scores * rstd[e].unsqueeze(2)).view(-1, r * n_x, l)
            elif bias is not None:
                scores = scores + bias[e]
            parts.append(self._weighted(torch.softmax(scores, dim=-1), e, n_x, key_mask, rstd,
                                        None if out is None else out[e]))
        return self.groups.unpad(out if out is not None else parts[0] if len(parts) == 1 else torch.cat(parts))

    def attend_uniform(self, n_x: int, key_mask: Tensor | None) -> Tensor:
        """Every valid key the same weight (``attentive=False``), ``n_x`` query rows per row."""
        g, l, _ = self.tokens.shape
        r, rstd = self.groups.slots, self.rstd()
        if key_mask is None:
            weights = self.tokens.new_full((g, r * n_x, l), 1.0 / l)
        else:
            valid = key_mask.to(self.tokens.dtype)
            weights = (valid / valid.sum(-1, keepdim=True).clamp_min(1.0))[:, None, :].repeat(1, r * n_x, 1)
        return self.groups.unpad(self._weighted(weights, slice(0, g), n_x, key_mask, rstd))

    def _weighted(self, weights: Tensor, e: slice, n_x: int, key_mask: Tensor | None, rstd: Tensor | None,
                  out: Tensor | None = None) -> Tensor:
        """``sum_t a_t K_t`` per query row of the groups ``e`` from their weights ``a`` ``[G', R X, L]``
        -> ``[G', R, X, d]`` (padded layout; written into ``out`` when given, in place, no graph)."""
        l, d = self.tokens.shape[1:]
        r = self.groups.slots
        gate = self.padded_gate()[e].unsqueeze(2)
        valid = None if key_mask is None else key_mask[e].any(-1).to(weights.dtype)[:, None, None, None]
        if not torch.is_grad_enabled():  # scoring: in place, the softmax's output is needed by no graph
            if rstd is not None:
                weights.view(-1, r, n_x, l).mul_(rstd[e].unsqueeze(2))
            u = torch.bmm(weights, self.tokens[e], out=None if out is None else out.view(-1, r * n_x, d))
            u = u.view(-1, r, n_x, d).mul_(gate)
            if self.norm is not None:
                u.sub_(u.mean(-1, keepdim=True)).mul_(self.norm.weight).add_(self.norm.bias)
            return u if valid is None else u.mul_(valid)  # a group without a valid key: zero output
        if rstd is not None:
            weights = (weights.view(-1, r, n_x, l) * rstd[e].unsqueeze(2)).view(-1, r * n_x, l)
        u = torch.bmm(weights, self.tokens[e]).view(-1, r, n_x, d) * gate
        if self.norm is not None:
            u = (u - u.mean(-1, keepdim=True)) * self.norm.weight + self.norm.bias
        return u if valid is None else u * valid


# Scores of this many floats (2 MiB in float32) are attended at a time: the [sets, queries, keys]
# temporaries of a large call then stay in cache between the score matmul, the softmax and the
# weighted sum (halves the folded block-2 pass at 200 candidates per request on one core).
ATTENTION_CHUNK_FLOATS = 1 << 19


def attention_chunks(n_sets: int, floats_per_set: int, device: torch.device | str = "cpu") -> list[slice]:
    """Slices of the key sets, each holding about :data:`ATTENTION_CHUNK_FLOATS` scores (at least one
    set); one slice off the CPU (a GPU has no such cache to keep, and every chunk costs launches)."""
    if torch.device(device).type != "cpu":
        return [slice(0, n_sets)]
    step = max(1, ATTENTION_CHUNK_FLOATS // max(floats_per_set, 1))
    return [slice(i, min(i + step, n_sets)) for i in range(0, n_sets, step)]


class MultiHeadCrossAttention(nn.Module):
    """``CA(Q, K, V) = softmax(Q W_Q (K W_K)^T / sqrt(d_k)) V W_V``, ``n_heads`` heads, key padding mask.

    Heads are concatenated (no output projection: the spec's formula has none). ``key_mask`` is
    ``[B, L]`` bool, true = valid; a query whose keys are all masked gets a zero output (no NaN,
    forward or backward).

    Few queries, many keys: the key and value projections are folded into the query side,
    ``(q_h W_K,h) K^T`` and ``(w_h K) W_V,h^T`` per head, which is the same product but costs
    ``O(heads * Q * L * d)`` instead of projecting all ``L`` keys (``O(L * d^2)``), and leaves the
    raw key tokens as the only thing worth caching per user.

    With ``groups`` (:class:`RowGroups`), ``keys`` / ``key_mask`` hold one row per group
    (``[G, L, d]``: one user's sequence for all the candidates of a request) and each query row
    reads its group's keys; the result equals the per-row call on the expanded keys.

    ``attentive=False`` is the "no cross-attention" ablation: every valid key gets the same
    weight (masked mean of ``V W_V``), so there is no ``W_Q`` / ``W_K`` at all.
    """

    def __init__(self, dim: int, n_heads: int = 2, attentive: bool = True):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.dim, self.n_heads, self.head_dim, self.attentive = dim, n_heads, dim // n_heads, attentive
        self.q_proj = nn.Linear(dim, dim, bias=False) if attentive else None
        self.k_proj = nn.Linear(dim, dim, bias=False) if attentive else None
        self.v_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, query: Tensor, keys: "Tensor | GatedKeys", key_mask: Tensor | None = None,
                groups: RowGroups | None = None) -> Tensor:
        """``query [B, Q, d]``, ``keys [B, L, d]``, ``key_mask [B, L]`` -> ``[B, Q, d]``
        (``keys [G, L, d]`` and ``key_mask [G, L]`` with ``groups``; :class:`GatedKeys` carry their own
        groups and are attended without being built)."""
        n_q = query.shape[1]
        if not self.attentive:
            return self.values(attend_uniform(self.n_heads * n_q, keys, key_mask, groups), n_q)
        return self.values(attend_keys(self.keyspace(query), keys, key_mask, groups), n_q)

    def keyspace(self, query: Tensor) -> Tensor:
        """``query [B, Q, d]`` -> ``q_h W_Q,h W_K,h^T / sqrt(d_k)`` per head, ``[B, H Q, d]`` (head-major):
        queries in the space of the raw keys. Attentions over the same keys can concatenate these
        along the second axis and share one :func:`attend_keys` (INFNet's blocks do)."""
        b, n_q, d = query.shape
        h, dh = self.n_heads, self.head_dim
        q = self.q_proj(query).view(b, n_q, h, dh)
        q_keyspace = torch.einsum("bqhe,hed->bhqd", q, self.k_proj.weight.view(h, dh, d)) / math.sqrt(dh)
        return q_keyspace.reshape(b, h * n_q, d)

    def values(self, context: Tensor, n_q: int) -> Tensor:
        """Weighted raw keys ``[B, H Q, d]`` -> ``W_V,h`` per head, heads concatenated: ``[B, Q, d]``."""
        b, h, dh, d = context.shape[0], self.n_heads, self.head_dim, self.dim
        context = context.reshape(b, h, n_q, d)
        return torch.einsum("bhqd,hed->bqhe", context, self.v_proj.weight.view(h, dh, d)).reshape(b, n_q, d)


def _padding_bias(key_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Padding as an additive bias ``[K, 1, L]`` fused into the score matmul: half the dtype's minimum
    stays finite, so a set with no valid key gets uniform (finite) weights, zeroed after."""
    return None if key_mask is None else (~key_mask).to(dtype)[:, None, :] * (torch.finfo(dtype).min / 2)


def attend_keys(q_keyspace: Tensor, keys: "Tensor | GatedKeys", key_mask: Tensor | None = None,
                groups: RowGroups | None = None) -> Tensor:
    """``softmax(q K^T) K`` per query row: key-space queries ``[B, X, d]`` (see
    :meth:`MultiHeadCrossAttention.keyspace`) over raw keys ``[B, L, d]`` (``[G, L, d]`` with
    ``groups``; :class:`GatedKeys` carry their own) -> weighted raw keys ``[B, X, d]``, zero for a
    row without a valid key."""
    if isinstance(keys, GatedKeys):
        return keys.attend(q_keyspace, key_mask)
    b, n_x, d = q_keyspace.shape
    if groups is not None:  # [G, R X, d] queries against [G, L, d] keys, R rows per key set
        q_keyspace = groups.pad(q_keyspace).view(groups.n_groups, groups.slots * n_x, d)
    bias = _padding_bias(key_mask, keys.dtype)
    chunks = attention_chunks(keys.shape[0], q_keyspace.shape[1] * keys.shape[1], keys.device)
    # scoring (no graph): every chunk writes its slice of one output (no concatenation)
    context = (q_keyspace.new_empty((keys.shape[0], q_keyspace.shape[1], d))
               if len(chunks) > 1 and not torch.is_grad_enabled() else None)
    parts = []
    for e in chunks:
        if bias is None:
            scores = torch.bmm(q_keyspace[e], keys[e].transpose(1, 2))
        else:
            scores = torch.baddbmm(bias[e], q_keyspace[e], keys[e].transpose(1, 2))
        weights = torch.softmax(scores, dim=-1)  # then the weighted raw keys, [K', X, d]
        parts.append(torch.bmm(weights, keys[e], out=None if context is None else context[e]))
    if context is None:
        context = parts[0] if len(parts) == 1 else torch.cat(parts)
    if key_mask is not None:  # no valid key: zero output (on [K, X, d], not the [K, X, L] weights)
        context = context * key_mask.any(-1).to(context.dtype)[:, None, None]
    if groups is not None:
        context = groups.unpad(context.view(groups.n_groups, groups.slots, n_x, d))
    return context


def attend_uniform(n_x: int, keys: "Tensor | GatedKeys", key_mask: Tensor | None = None,
                   groups: RowGroups | None = None) -> Tensor:
    """Every valid key the same weight (the no-cross-attention ablation): ``[B, n_x, d]``."""
    if isinstance(keys, GatedKeys):
        return keys.attend_uniform(n_x, key_mask)
    n_sets, n_k = keys.shape[0], keys.shape[1]
    per_set = groups.slots * n_x if groups is not None else n_x
    bias = _padding_bias(key_mask, keys.dtype)
    scores = keys.new_zeros((n_sets, per_set, n_k)) if bias is None else bias.expand(n_sets, per_set, n_k)
    context = torch.bmm(torch.softmax(scores, dim=-1), keys)
    if key_mask is not None:
        context = context * key_mask.any(-1).to(context.dtype)[:, None, None]
    if groups is not None:
        context = groups.unpad(context.view(groups.n_groups, groups.slots, n_x, keys.shape[-1]))
    return context


class LastDimPReLU(nn.Module):
    """PReLU with one slope per feature of the last axis (``nn.PReLU`` uses axis 1)."""

    def __init__(self, n: int, init: float = 0.25):
        super().__init__()
        self.slope = nn.Parameter(torch.full((n,), init))

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, x, self.slope * x)


class TargetAttentionPooling(nn.Module):
    """DIN's activation unit: weight each behaviour by an MLP of ``[q, k, q - k, q * k]``, then sum.

    ``normalize="none"`` keeps the raw scores (the DIN paper drops softmax to preserve the
    intensity of interest); ``"softmax"`` normalises over the valid positions. Padding gets weight 0.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 32), normalize: Literal["none", "softmax"] = "none"):
        super().__init__()
        self.normalize = normalize
        layers: list[nn.Module] = []
        width = 4 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), LastDimPReLU(h)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.score = nn.Sequential(*layers)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """``query [..., d]``, ``keys [..., N, d]``, ``mask [..., N]`` -> ``[..., d]``."""
        q = query.unsqueeze(-2).expand_as(keys)
        s = self.score(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)  # [..., N]
        if self.normalize == "softmax":
            s = s.masked_fill(~mask, torch.finfo(s.dtype).min)
            w = torch.softmax(s, dim=-1) * mask.any(-1, keepdim=True).to(s.dtype)
        else:
            w = s * mask.to(s.dtype)
        return (w.unsqueeze(-1) * keys).sum(-2)
