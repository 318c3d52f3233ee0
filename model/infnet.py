"""INFNet: a task-aware information flow network (Kuaishou, arXiv 2508.11565), per ``INFNET.md``.

Tokens of width ``d``: categorical ``C`` (one table per field, projected to ``d``), sequence ``S``
(one table per behaviour type, plus a learned projection of the time gap) and one task token per
real task ``T`` (``N(0, 0.02)``). Proxies: ``C~ = Reshape(phi_cat(Flatten(C)))`` (``m`` tokens),
``S~`` (row ``a`` = masked sum over ``t`` of ``phi_seq(s_{a,t})``), ``T~`` (``N_s`` shared task
tokens). One block::

    C~' = CA(C~, S, S) + CA(C~, T, T)        C' = PGU(C, C~)
    S~' = CA(S~, C, C) + CA(S~, T, T)        S' = PGU(S, S~)
    T~' = CA(T~, C, C) + CA(T~, S, S)        T' = PGU(T^, T~)
    T^  = CA(T,  C, C) + CA(T,  S, S)        PGU(X, X~) = X * sigmoid(MLP(Flatten(X~)))

Each update is ``LayerNorm(x + Dropout(f))`` (``residual`` / ``layernorm`` switch the two parts).
The PGU's residual (``pgu_residual``) sits around the whole update by default: the gate multiplies
what is new, ``T' = LN(T + g * (CA(T, C) + CA(T, S)))``, and ``C' = LN(C * g)``, ``S' = LN(S * g)``
(their whole update is the gate), so ``g`` in (0, 1) can suppress; ``"gate"`` is the literal
reading, ``LN(X + X * g)`` = ``LN(X * (1 + g))``, whose effective gate lies in [1, 2] and never
suppresses a token. Dense values (raw counts / rates, when the spec has them) are tokens of ``C``
after the categorical fields. Every query side is a proxy or a task token, so a block costs
``O((m + F + N_s + N_task) (M + L) d)``: linear in the sequence length. Task ``i`` predicts from its
own final task token with its own MLP head.

Open choices of the spec (all in :class:`INFNetConfig`; ours chosen on the valid day, README
"Accuracy"): the PGU gate reads the updated proxy (``gate_source="updated"``, the paper's prose) or
the layer-``l`` one (``"layer"``, its equations); the PGU residual around the update or around the
gate; ``residual`` on/off; ``layernorm`` on/off; 2 heads; proxies carried to the next block are the
updated ones (with 2 blocks the last block reads no ``C~`` / ``S~``, so this choice cannot change
the output; it matters from 3 blocks). Ablations: ``use_task_tokens=False`` (no ``T``; every head
reads the mean of the final proxies), ``use_pgu=False`` (``C``, ``S`` unchanged, ``T' = T^``),
``use_cross_attention=False`` (every ``CA`` becomes a masked mean of ``V W_V``: information still
flows, without attention).

Nothing is computed (or parametrised) that the heads do not depend on: :func:`plan_block` walks
back from the heads. In the last block that leaves ``T^``, ``T~'`` and the ``T`` gate. With the
default ``gate_source="updated"`` every equation of every earlier block reaches a head: ``C'`` is
gated by ``C~'`` (so ``CA(C~, S)``, ``CA(C~, T)`` count), ``S'`` by ``S~'``, and the next block's
``T^`` / ``T~'`` attend over ``C'`` / ``S'``. With ``gate_source="layer"`` and 2 blocks, ``C~'``
and ``S~'`` would feed only block 2's ``C`` / ``S`` updates, which nothing reads: half of the
heterogeneous flow would be dead (it comes alive from 3 blocks). Without PGU the proxies influence
nothing at all and are not built.

Attention is computed query-side (``W_K`` / ``W_V`` folded into the few queries, see
:class:`~model.layers.MultiHeadCrossAttention`), so the keys of a block are its raw tokens.
User-side reuse: ``S`` (block-1 keys), ``S~`` and the mask depend only on the user; with
``gate_source="layer"`` so does ``S`` after block 1 (its gate reads ``S~`` of layer 0), so the
block-2 keys are cached too (``seq_tokens_1``); with the default ``"updated"`` the gate of ``S'``
reads ``S~'``, which attended over the candidate's ``C``, so the block-2 keys
``S' = LN(S * gamma)`` differ per candidate, but only through one d-wide vector ``gamma`` (``g``,
or ``1 + g`` for ``pgu_residual="gate"``); without PGU ``S`` never changes. Scoring the
candidates of a request (:meth:`INFNet.score_per_user`) reads the user's keys once per user: the
candidates' queries are packed per user (:class:`~model.layers.RowGroups`) instead of the
``[L, d]`` keys being copied to every candidate row, and the per-candidate ``S'`` is never built:
:class:`~model.layers.GatedKeys` folds ``gamma`` into the block-2 queries and the LayerNorm's
per-token statistics into two dot products of ``gamma`` with the user's tokens (derivation there;
exact). Where that form does not hold (a later block gates ``S`` again: 3+ blocks under
``"updated"``; dropout inside the update in training) ``S`` is copied per row from that block on.

>>> import torch
>>> from features.spec import demo_spec
>>> from model.base import random_batch
>>> spec = demo_spec(seq_len=5)
>>> _ = torch.manual_seed(0)
>>> model = INFNet(spec, INFNetConfig(d=16, n_blocks=2)).eval()
>>> batch = random_batch(spec, batch_size=3)
>>> out = model(batch)
>>> out.shape, model.task_kinds
(torch.Size([3, 4]), ('binary', 'binary', 'binary', 'regression'))
>>> from model.base import user_batch
>>> state = model.encode_user(user_batch(batch, spec))  # user side of each row (dedupe: group_by_user)
>>> sorted(state)
['attended_sp_t', 'attended_t_s', 'attended_tp_s', 'cat_proxy_user', 'cat_user', 'seq_mask', 'seq_proxy', 'seq_tokens_0']
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import RankingModel, UserState, take_user_rows
from model.layers import (
    MLP,
    CategoricalEmbedding,
    DenseTokens,
    GapSignal,
    GatedKeys,
    MultiHeadCrossAttention,
    RowGroups,
    SequenceEmbedding,
    TaskTowers,
    attend_keys,
    masked_mean,
    masked_sum,
)


@dataclass
class INFNetConfig:
    """Every open choice of ``INFNET.md`` (defaults chosen on the valid day), plus the ablation switches."""

    d: int = 32  # token width
    n_heads: int = 2  # heads per cross-attention
    n_blocks: int = 2  # N
    n_cat_proxies: int = 4  # m
    n_shared_task_tokens: int = 2  # N_s
    cat_table_width: int | None = None  # width of a categorical table the spec gives none for (None: d)
    cat_proxy_hidden: int = 256  # hidden width of phi_cat: R^{M d} -> R^{m d}
    seq_proxy_pooling: Literal["sum", "mean"] = "sum"  # S~ rows: masked sum (spec) | mean
    gap_signal: GapSignal = "mlp"  # learned projection of log1p(gap) added to sequence tokens | "none"
    gate_source: Literal["layer", "updated"] = "updated"  # PGU reads the updated proxy | the layer-l one
    # where the residual of a PGU sits: "gate" = LN(X + X * g) (the gate only scales by 1 + g in [1, 2],
    # it cannot suppress); "update" = around the whole update, the gate multiplying what is new:
    # T' = LN(T + g * (CA(T, C) + CA(T, S))), and C' = LN(C * g), S' = LN(S * g) (their update is the gate)
    pgu_residual: Literal["gate", "update"] = "update"
    residual: bool = True  # x + f(x) around each update
    layernorm: bool = True  # LayerNorm after each update
    gate_hidden: int = 64  # hidden width of the PGU's MLP(Flatten(X~))
    head_hidden: tuple[int, ...] = (64,)  # per-task MLP head
    dropout: float = 0.1
    task_token_std: float = 0.02  # N(0, 0.02) init of task and shared task tokens
    use_task_tokens: bool = True  # ablation "without task tokens"
    use_pgu: bool = True  # ablation "without PGU"
    use_cross_attention: bool = True  # ablation "without cross-attention"

    def __post_init__(self) -> None:
        self.head_hidden = tuple(self.head_hidden)
        if self.d % self.n_heads:
            raise ValueError(f"d={self.d} must be divisible by n_heads={self.n_heads}")
        if min(self.n_blocks, self.n_cat_proxies, self.n_shared_task_tokens) < 1:
            raise ValueError("n_blocks, n_cat_proxies and n_shared_task_tokens must be >= 1")
        if self.gate_source not in ("layer", "updated"):
            raise ValueError(f"gate_source must be 'layer' or 'updated', not {self.gate_source!r}")
        if self.pgu_residual not in ("gate", "update"):
            raise ValueError(f"pgu_residual must be 'gate' or 'update', not {self.pgu_residual!r}")
        if self.seq_proxy_pooling not in ("sum", "mean"):
            raise ValueError(f"seq_proxy_pooling must be 'sum' or 'mean', not {self.seq_proxy_pooling!r}")


STREAMS = ("C", "S", "T", "Cp", "Sp", "Tp")  # tokens and proxies (p = "~")
_PROXY_OF = {"C": "Cp", "S": "Sp", "T": "Tp"}
# Each cross-attention is named <query>_<keys>: cp = C~, sp = S~, tp = T~, t = T; keys c, s, t = C, S, T.
_ATTENTIONS_OF = {"Cp": ("cp_s", "cp_t"), "Sp": ("sp_c", "sp_t"), "Tp": ("tp_c", "tp_s"), "T": ("t_c", "t_s")}
_KEYS = {"c": "C", "s": "S", "t": "T"}


def plan_block(cfg: INFNetConfig, needed_out: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
    """Which streams a block must compute for ``needed_out``, and which inputs that reads.

    Liveness, backwards from the heads, so that nothing is computed (or parametrised) that no
    output depends on. A proxy at a block's output is always its updated value; ``C`` / ``S``
    pass through unchanged without PGU; ``T`` is always recomputed (``T^``, then its PGU).
    Note what this implies for the spec's defaults (``gate_source="layer"``, 2 blocks): the
    updated ``C~'`` / ``S~'`` of block 1 feed only block 2's ``C`` / ``S`` updates, which the
    heads never read, so the categorical and sequence proxies act only as layer-0 gates.
    """
    computes: set[str] = set()
    needed_in: set[str] = set()
    for x in ("C", "S", "T"):
        if x not in needed_out:
            continue
        needed_in.add(x)
        if x == "T":
            computes.add("T")
            needed_in |= {"C", "S"}
        if cfg.use_pgu:
            computes.add(x)
            proxy = _PROXY_OF[x]
            (needed_in if cfg.gate_source == "layer" else computes).add(proxy)
    computes |= needed_out & {"Cp", "Sp", "Tp"}
    for proxy in computes & {"Cp", "Sp", "Tp"}:
        if cfg.residual or cfg.use_cross_attention:  # the proxy is read as residual or as query
            needed_in.add(proxy)
        for name in _ATTENTIONS_OF[proxy]:
            key = _KEYS[name[-1]]
            if key != "T" or cfg.use_task_tokens:
                needed_in.add(key)
    return frozenset(computes), frozenset(needed_in)


_QUERY_STREAM = {"cp": "Cp", "sp": "Sp", "tp": "Tp", "t": "T"}
# Streams of layer 0 that do not depend on the candidate: S and S~ (the user alone), T and T~ (parameters).
_LAYER0_USER_ONLY = frozenset({"S", "Sp", "T", "Tp"})


def user_only_attentions(block: "INFNetBlock") -> tuple[str, ...]:
    """The cross-attentions of the FIRST block whose query and keys are both candidate-free at
    layer 0 (``S~ <- T``, ``T~ <- S``, ``T <- S``): computed once per user in ``encode_user``."""
    return tuple(name for name in block.ca
                 if _QUERY_STREAM[name.split("_")[0]] in _LAYER0_USER_ONLY and _KEYS[name[-1]] in _LAYER0_USER_ONLY)


class INFNetBlock(nn.Module):
    """One block l -> l+1 over the stream dict ``{C, S, seq_mask, T, Cp, Sp, Tp}``; computes (and
    owns parameters for) only ``computes`` (see :func:`plan_block`)."""

    def __init__(self, cfg: INFNetConfig, n_seq_types: int, needed_out: frozenset[str]):
        super().__init__()
        d = cfg.d
        self.cfg = cfg
        self.needed_out = needed_out
        self.computes, self.needed_in = plan_block(cfg, needed_out)
        names = [n for stream in ("Cp", "Sp", "Tp", "T") if stream in self.computes
                 for n in _ATTENTIONS_OF[stream] if n[-1] != "t" or cfg.use_task_tokens]
        self.ca = nn.ModuleDict({n: MultiHeadCrossAttention(d, cfg.n_heads, cfg.use_cross_attention) for n in names})

        norms = [x for x in ("Cp", "Sp", "Tp", "C", "S") if x in self.computes]
        if "T" in self.computes:
            norms += ["T"] if cfg.use_pgu and cfg.pgu_residual == "update" else ["T_hat"] + (["T"] if cfg.use_pgu else [])
        self.norms = nn.ModuleDict({x: nn.LayerNorm(d) if cfg.layernorm else nn.Identity() for x in norms})
        proxy_tokens = {"C": cfg.n_cat_proxies, "S": n_seq_types, "T": cfg.n_shared_task_tokens}
        self.gates = nn.ModuleDict({x: MLP(proxy_tokens[x] * d, (cfg.gate_hidden,), d)
                                    for x in ("C", "S", "T") if x in self.computes and cfg.use_pgu})
        self.drop = nn.Dropout(cfg.dropout)

    # -- pieces ------------------------------------------------------------------------------
    def _update(self, stream: str, x: Tensor, f: Tensor) -> Tensor:
        f = self.drop(f)
        return self.norms[stream](x + f if self.cfg.residual else f)

    def _gate(self, stream: str, proxy: Tensor) -> Tensor:
        """``sigmoid(MLP(Flatten(proxy)))`` as ``[B, 1, d]``: one d-wide gate per example, broadcast over tokens."""
        return torch.sigmoid(self.gates[stream](proxy.flatten(1))).unsqueeze(1)

    def _pgu(self, stream: str, x: Tensor, proxy: Tensor) -> Tensor:
        """``PGU(X, X~) = X * sigmoid(MLP(Flatten(X~)))``."""
        return x * self._gate(stream, proxy)

    def _gated(self, stream: str, x: Tensor, proxy: Tensor) -> Tensor:
        """``C' = PGU(C, C~)`` (or ``S'``) with the configured residual: ``LN(X + X * g)`` or ``LN(X * g)``."""
        if self.cfg.pgu_residual == "update":
            return self.norms[stream](self._pgu(stream, x, proxy))
        return self._update(stream, x, self._pgu(stream, x, proxy))

    def update_seq(self, seq_tokens: Tensor, seq_proxy: Tensor, seq_mask: Tensor) -> Tensor:
        """``S' = PGU(S, S~)`` (identity when this block passes ``S`` through); padding stays zero."""
        if "S" not in self.computes:
            return seq_tokens
        out = self._gated("S", seq_tokens, seq_proxy)
        return out * seq_mask.unsqueeze(-1).to(out.dtype)

    def can_fold_seq(self) -> bool:
        """Whether ``S' = Norm(S * gamma)`` holds exactly with one gate vector ``gamma`` per row, so
        that :class:`~model.layers.GatedKeys` can stand for it: always in eval mode; in training only
        where no dropout sits inside the update (``pgu_residual="gate"`` drops ``S * g`` per token)."""
        return (self.cfg.use_pgu and "S" in self.computes
                and not (self.training and self.cfg.dropout > 0 and self.cfg.pgu_residual == "gate"))

    def seq_gate(self, seq_proxy: Tensor) -> Tensor:
        """``gamma [B, d]`` of ``S' = Norm(S * gamma)``: ``g`` for ``LN(S * g)`` (``pgu_residual="update"``,
        or ``"gate"`` without residual: ``LN(S * g)``), ``1 + g`` for ``LN(S + S * g)``."""
        g = self._gate("S", seq_proxy).squeeze(1)
        return 1.0 + g if self.cfg.pgu_residual == "gate" and self.cfg.residual else g

    def _attend(self, st: dict[str, Tensor | None], keys: dict[str, tuple], done: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every cross-attention of this block not in ``done``, by name. Each reads the layer-``l``
        streams only (queries and keys), so they are independent: those over the same keys share
        one softmax pass (their key-space queries concatenated: e.g. ``T`` and ``T~`` over ``C``),
        which is the same per query row, in fewer and larger matmuls."""
        by_keys: dict[str, list[str]] = {}
        for stream in ("Cp", "Sp", "Tp", "T"):
            if stream in self.computes:
                for name in _ATTENTIONS_OF[stream]:
                    if name in self.ca and name not in done:
                        by_keys.setdefault(name[-1], []).append(name)
        out: dict[str, Tensor] = {}
        for key, names in by_keys.items():
            queries = [st[_QUERY_STREAM[n.split("_")[0]]] for n in names]
            if not self.cfg.use_cross_attention or len(names) == 1:
                out.update({n: self.ca[n](q, *keys[key]) for n, q in zip(names, queries)})
                continue
            q_keyspace = [self.ca[n].keyspace(q) for n, q in zip(names, queries)]
            context = attend_keys(torch.cat(q_keyspace, dim=1), *keys[key])
            for n, q, part in zip(names, queries, context.split([x.shape[1] for x in q_keyspace], dim=1)):
                out[n] = self.ca[n].values(part, q.shape[1])
        return out

    # -- the block -----------------------------------------------------------------------------
    def forward(self, st: dict[str, Tensor | None], update_seq: bool = True,
                seq_groups: RowGroups | None = None,
                attended: dict[str, Tensor] | None = None,
                fold_seq: bool = False) -> dict[str, Tensor | None]:
        """``update_seq=False``: leave ``S`` as it is (the caller has the next block's ``S`` cached).
        ``seq_groups``: ``S`` and ``seq_mask`` hold one row per user (see :class:`RowGroups`).
        ``attended``: cross-attention outputs already computed, by name (:func:`user_only_attentions`).
        ``fold_seq`` (with ``seq_groups``): return ``S'`` as :class:`~model.layers.GatedKeys` over the
        per-user ``S`` (its row-dependent gate folded into the next block's attention, see
        :meth:`can_fold_seq`) instead of building ``[B, L, d]``."""
        C, S, smask, T = st["C"], st["S"], st["seq_mask"], st["T"]
        keys = {"c": (C, None, None), "s": (S, smask, seq_groups), "t": (T, None, None)}
        attended = {**(attended or {}), **self._attend(st, keys, attended or {})}

        def flow(stream: str) -> Tensor:
            """Sum of the cross-attentions of ``stream`` (heterogeneous flow)."""
            return sum(attended[name] for name in _ATTENTIONS_OF[stream] if name in attended)

        out: dict[str, Tensor | None] = {x: (st[x] if x in self.needed_out else None) for x in STREAMS}
        out["seq_mask"] = smask
        for proxy in ("Cp", "Sp", "Tp"):
            if proxy in self.computes:
                out[proxy] = self._update(proxy, st[proxy], flow(proxy))
        gate_from = st if self.cfg.gate_source == "layer" else out
        if "C" in self.computes:
            out["C"] = self._gated("C", C, gate_from["Cp"])
        if "S" in self.computes and update_seq:
            if fold_seq:
                out["S"] = GatedKeys(S, self.seq_gate(gate_from["Sp"]), seq_groups, self.norms["S"])
            else:
                out["S"] = self.update_seq(S, gate_from["Sp"], smask)
        if "T" in self.computes:
            attended_t = flow("T")
            if not self.cfg.use_pgu:
                out["T"] = self._update("T_hat", T, attended_t)
            elif self.cfg.pgu_residual == "update":  # T' = LN(T + g * (CA(T, C) + CA(T, S)))
                out["T"] = self._update("T", T, attended_t * self._gate("T", gate_from["Tp"]))
            else:  # T^ = LN(T + CA(T, C) + CA(T, S)), T' = LN(T^ + T^ * g)
                t_hat = self._update("T_hat", T, attended_t)
                out["T"] = self._update("T", t_hat, self._pgu("T", t_hat, gate_from["Tp"]))
        return out


class INFNet(RankingModel):
    """INFNet over a :class:`FeatureSpec`; see the module docstring for the equations."""

    def __init__(self, spec: FeatureSpec, config: INFNetConfig | None = None):
        config = config or INFNetConfig()
        super().__init__(spec, config)
        if not spec.sequences:
            raise ValueError("INFNet needs at least one behaviour sequence in the feature spec")
        d, m = config.d, config.n_cat_proxies
        n_cat, n_seq, n_tasks = len(spec.categorical) + len(spec.dense), len(spec.sequences), len(spec.tasks)
        self.cat_embedding = CategoricalEmbedding(spec.categorical, d, config.cat_table_width)
        # dense values (raw counts / rates) become tokens of C after the categorical fields
        self.dense_tokens = DenseTokens(len(spec.dense), d) if spec.dense else None
        self.seq_embedding = SequenceEmbedding(spec.sequences, d, config.gap_signal)
        # Blocks from the last to the first, each told what the next one (or the heads) reads.
        needed = frozenset({"T"} if config.use_task_tokens else {"Cp", "Sp", "Tp"})
        blocks = []
        for _ in range(config.n_blocks):
            blocks.insert(0, INFNetBlock(config, n_seq, needed))
            needed = blocks[0].needed_in
        self.blocks = nn.ModuleList(blocks)
        self.needed_inputs = needed
        self.cat_proxy = (MLP(n_cat * d, (config.cat_proxy_hidden,), m * d, config.dropout)  # phi_cat
                          if "Cp" in needed else None)
        # phi_cat's first layer is linear in Flatten(C): its user fields' share is computed once per
        # user (encode_user), the candidate fields' share per row. Columns of each field's d slots:
        field_cols = lambda fields: torch.tensor([f * d + j for f in fields for j in range(d)],  # noqa: E731
                                                 dtype=torch.long)
        self.register_buffer("_user_cols", field_cols(self.user_fields), persistent=False)
        dense_fields = range(len(spec.categorical), n_cat)  # per row, like the candidate fields
        self.register_buffer("_candidate_cat_cols", field_cols([*self.candidate_fields, *dense_fields]), persistent=False)
        self.seq_proxy = nn.Linear(d, d) if "Sp" in needed else None  # phi_seq, shared by the behaviour types
        self.shared_task_tokens = (nn.Parameter(torch.randn(config.n_shared_task_tokens, d) * config.task_token_std)
                                   if "Tp" in needed else None)
        self.task_tokens = (nn.Parameter(torch.randn(n_tasks, d) * config.task_token_std)
                            if config.use_task_tokens else None)
        self.heads = TaskTowers(d, n_tasks, config.head_hidden, config.dropout)
        # How many leading blocks read a sequence stream that depends on the user alone: S of
        # layer 0 does; S' of block l still does if block l passes S through, or gates it with a
        # user-only proxy (S~ of layer 0, i.e. l = 0 with gate_source="layer").
        n_user = 1
        for i, block in enumerate(self.blocks[:-1]):
            user_only = "S" not in block.computes or (i == 0 and config.gate_source == "layer")
            if not user_only:
                break
            n_user += 1
        self.n_user_blocks = n_user
        # Fold the row-dependent gate of S into the next blocks' attention on the reuse path
        # (GatedKeys; exact). Not a config field: it changes no output, only how it is computed;
        # bench.scoring turns it off to measure the copy it replaces, side by side.
        self.fold_sequence_gate = True

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """``W_V`` of the last block's task-token attentions: shared by every task token, the last
        shared weights before the per-task heads (GradNorm measures task gradients there)."""
        last = self.blocks[-1].ca
        return [last[n].v_proj.weight for n in ("t_c", "t_s") if n in last] or super().last_shared_parameters()

    def encode_user(self, batch_user: dict[str, Tensor]) -> UserState:
        """User fields' embeddings (``cat_user``), the sequence mask, ``S~`` of layer 0
        (``seq_proxy``), the sequence tokens every block from the first ``n_user_blocks`` reads
        (``seq_tokens_<block>``, stored where they change), the user fields' share of ``phi_cat``'s
        first layer (``cat_proxy_user``) and the first block's cross-attentions that involve no
        candidate (``attended_<name>``, see :func:`user_only_attentions`)."""
        cfg = self.config
        cat_user = self.cat_embedding(batch_user["cat_user"], self.user_fields)
        tokens, mask = self.seq_embedding(batch_user["seq"], batch_user["seq_gap"])  # [U, F, N, d]
        seq, seq_mask = tokens.flatten(1, 2), mask.flatten(1)
        state = {"cat_user": cat_user, "seq_mask": seq_mask}
        if self.cat_proxy is not None and self.user_fields:
            first = self.cat_proxy[0]
            state["cat_proxy_user"] = F.linear(cat_user.flatten(1), first.weight.index_select(1, self._user_cols))
        seq_proxy = None
        if self.seq_proxy is not None:
            pool = masked_sum if cfg.seq_proxy_pooling == "sum" else masked_mean
            seq_proxy = state["seq_proxy"] = pool(self.seq_proxy(tokens), mask, dim=2)  # [U, F, d]
        state["seq_tokens_0"] = seq
        layer0 = {"S": (seq, seq_mask), "Sp": (seq_proxy, None), "T": (self._tokens(self.task_tokens, len(seq)), None),
                  "Tp": (self._tokens(self.shared_task_tokens, len(seq)), None)}
        for name in user_only_attentions(self.blocks[0]):
            query, (keys, key_mask) = layer0[_QUERY_STREAM[name.split("_")[0]]][0], layer0[_KEYS[name[-1]]]
            state[f"attended_{name}"] = self.blocks[0].ca[name](query, keys, key_mask)
        for i in range(1, self.n_user_blocks):  # S after block i-1 is still user-only: cache it
            if "S" in self.blocks[i - 1].computes:
                seq = state[f"seq_tokens_{i}"] = self.blocks[i - 1].update_seq(seq, seq_proxy, seq_mask)
        return state

    def _cat_proxy(self, C: Tensor, candidate_part: Tensor, user_rows: UserState) -> Tensor | None:
        """``C~ = Reshape(phi_cat(Flatten(C)))``, the first layer's user share read from the state
        (``candidate_part``: the candidate fields' embeddings, the rest of ``Flatten(C)``)."""
        if self.cat_proxy is None:
            return None
        b, cfg = C.shape[0], self.config
        if "cat_proxy_user" not in user_rows:
            return self.cat_proxy(C.flatten(1)).view(b, cfg.n_cat_proxies, cfg.d)
        first = self.cat_proxy[0]
        candidate = F.linear(candidate_part.flatten(1), first.weight.index_select(1, self._candidate_cat_cols), first.bias)
        x = candidate + user_rows["cat_proxy_user"]
        for layer in list(self.cat_proxy)[1:]:
            x = layer(x)
        return x.view(b, cfg.n_cat_proxies, cfg.d)

    @staticmethod
    def _tokens(tokens: nn.Parameter | None, rows: int) -> Tensor | None:
        return None if tokens is None else tokens.expand(rows, -1, -1)

    def score(self, cat: Tensor, user_rows: UserState, dense: Tensor | None = None) -> Tensor:
        return self._score(cat, user_rows, dense=dense)

    def score_per_user(self, cat: Tensor, user_state: UserState, user_index: Tensor,
                       dense: Tensor | None = None) -> Tensor:
        """The small per-user tensors (user fields, ``S~``) are expanded to rows; the sequence keys
        and mask stay one row per user, read by every candidate of that user through
        :class:`~model.layers.RowGroups`, until a block makes ``S`` row-dependent."""
        groups = RowGroups.build(user_index, user_state["seq_mask"].shape[0])
        if groups is None:  # too uneven to pack: expand everything
            return self._score(cat, take_user_rows(user_state, user_index), dense=dense)
        per_user = {k: v for k, v in user_state.items() if k == "seq_mask" or k.startswith("seq_tokens_")}
        small = take_user_rows({k: v for k, v in user_state.items() if k not in per_user}, user_index)
        return self._score(cat, {**per_user, **small}, groups, user_index, dense)

    def _score(self, cat: Tensor, user_rows: UserState, groups: RowGroups | None = None,
               user_index: Tensor | None = None, dense: Tensor | None = None) -> Tensor:
        """With ``groups``, ``seq_tokens_*`` / ``seq_mask`` of ``user_rows`` are per user."""
        candidate_part = self.embed_candidates(self.cat_embedding, cat)
        if self.dense_tokens is not None:  # [B, M + K, d]; phi_cat reads them with the per-row fields
            candidate_part = torch.cat([candidate_part, self.dense_tokens(dense)], dim=1)
        if self.cat_proxy is None or "cat_proxy_user" in user_rows:
            # Nothing reads C by position here (phi_cat's first layer is split by field, the
            # attentions read C as a key set, the PGU gates each token alike): one concatenation,
            # user fields first, instead of restoring spec order per candidate row.
            C = torch.cat([user_rows["cat_user"], candidate_part], dim=1)
        else:  # phi_cat reads Flatten(C) in spec order
            n_cat = len(self.candidate_fields)
            C = torch.cat([self.merge_cat(user_rows["cat_user"], candidate_part[:, :n_cat]),
                           candidate_part[:, n_cat:]], dim=1)
        b = C.shape[0]
        st: dict[str, Tensor | None] = {
            "C": C,
            "S": None,
            "seq_mask": user_rows["seq_mask"],
            "Cp": self._cat_proxy(C, candidate_part, user_rows),
            "Sp": user_rows.get("seq_proxy"),
            "Tp": self._tokens(self.shared_task_tokens, b),
            "T": self._tokens(self.task_tokens, b),
        }
        attended0 = {k.removeprefix("attended_"): v for k, v in user_rows.items() if k.startswith("attended_")}
        seq = user_rows["seq_tokens_0"]
        for i, block in enumerate(self.blocks):
            if i < self.n_user_blocks:
                seq = user_rows.get(f"seq_tokens_{i}", seq)
            update_seq = i + 1 >= self.n_user_blocks
            fold = False
            if groups is not None and update_seq and "S" in block.computes:
                # This block gates S with a row-dependent proxy: S' = Norm(S * gamma_row). When no
                # later block updates S again, the next blocks read S' only as attention keys, and
                # GatedKeys folds gamma into their queries and the norm's statistics (exact, no
                # copy). Otherwise (3+ blocks under "updated": S'' = Norm(Norm(S * g1) * g2)) or
                # with dropout inside the update, S is copied per row from here on.
                fold = (self.fold_sequence_gate and block.can_fold_seq()
                        and all("S" not in later.computes for later in self.blocks[i + 1:]))
                if not fold:
                    seq, st["seq_mask"] = seq.index_select(0, user_index), st["seq_mask"].index_select(0, user_index)
                    groups = None
            st["S"] = seq
            st = block(st, update_seq=update_seq, seq_groups=groups, attended=attended0 if i == 0 else None,
                       fold_seq=fold)
            seq = st["S"] if st["S"] is not None else seq
        if st["T"] is not None:
            return self.heads(st["T"])  # task i reads its own final task token
        pooled = torch.cat([st["Cp"], st["Sp"], st["Tp"]], dim=1).mean(1)  # "without task tokens"
        return self.heads(pooled)
