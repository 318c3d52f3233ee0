"""The contract every ranking model honours, and the helpers to reuse the user side.

A model is built from a :class:`features.spec.FeatureSpec` and a config dataclass and maps a batch
``{"cat": Long[B, M], "seq": Long[B, F, N], "seq_gap": Float[B, F, N]}`` (plus ``"dense":
Float[B, K]`` when the spec has dense fields; they are read per row, like ``cat``) to ``Tensor[B, T]``:
one output per task in spec order, a logit for a binary task and a raw value for a regression
task (``model.task_kinds`` says which). Extra keys in the batch (labels, masks, user ids) are ignored.

User-side reuse. The user side of a row (categorical fields with ``side == "user"`` plus all
sequences) is the same for every candidate of a request, so every model splits its computation:

- ``encode_user({"cat_user": Long[U, M_user], "seq": ..., "seq_gap": ...}) -> dict[str, Tensor]``
  computes everything that depends on the user side alone (each value has ``U`` rows);
- ``forward(batch, user_state, user_index)`` then needs only ``batch["cat"]`` (all ``M`` fields)
  and ``user_index`` (``Long[B]``: the row of ``user_state`` of each candidate row), and returns
  the same numbers as the plain ``forward`` on the expanded inputs.

The plain ``forward(batch)`` is literally ``encode_user`` on the batch's own rows followed by the
candidate part, so both paths run the same code.

>>> import torch
>>> from features.spec import demo_spec
>>> spec = demo_spec(seq_len=4)
>>> batch = random_batch(spec, 6, seed=0)
>>> batch_user, user_index = group_by_user(repeat_users(batch, spec, [0, 0, 1, 1, 1, 2]), spec)
>>> batch_user["cat_user"].shape[0], user_index.tolist()
(3, [0, 0, 1, 1, 1, 2])
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec

UserState = dict[str, Tensor]


def user_field_indices(spec: FeatureSpec) -> tuple[int, ...]:
    return tuple(i for i, c in enumerate(spec.categorical) if c.side == "user")


def candidate_field_indices(spec: FeatureSpec) -> tuple[int, ...]:
    """The categorical fields that may differ between the candidates of one request (item, context)."""
    return tuple(i for i, c in enumerate(spec.categorical) if c.side != "user")


class RankingModel(nn.Module):
    """Base class: ``task_kinds``, ``encode_user``, ``forward``, ``n_params``.

    Subclasses implement :meth:`encode_user` and :meth:`score` (the candidate part, reading
    ``user_rows``: the user state already aligned row by row with ``cat``), and may override
    :meth:`score_per_user`. :meth:`embed_cat` rebuilds the ``[B, M, d]`` categorical embeddings
    in spec order from the user part cached in the state (key ``"cat_user"``) and the candidate
    part embedded from ``cat``.
    """

    def __init__(self, spec: FeatureSpec, config: Any):
        super().__init__()
        if not spec.categorical or not spec.tasks:
            raise ValueError("a ranking model needs at least one categorical field and one task")
        self.spec = spec
        self.config = config
        self.task_names: tuple[str, ...] = tuple(t.name for t in spec.tasks)
        self.task_kinds: tuple[str, ...] = tuple(t.kind for t in spec.tasks)
        self.user_fields = user_field_indices(spec)
        self.candidate_fields = candidate_field_indices(spec)
        order = list(self.user_fields) + list(self.candidate_fields)
        self.register_buffer("_candidate_cols", torch.tensor(self.candidate_fields, dtype=torch.long),
                             persistent=False)
        self.register_buffer("_spec_order", torch.tensor(sorted(range(len(order)), key=order.__getitem__),
                                                          dtype=torch.long), persistent=False)

    # -- the contract -----------------------------------------------------------------------
    def encode_user(self, batch_user: dict[str, Tensor]) -> UserState:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, cat: Tensor, user_rows: UserState, dense: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, batch: dict[str, Tensor], user_state: UserState | None = None,
                user_index: Tensor | None = None) -> Tensor:
        """``Tensor[B, T]``. With ``user_state``, ``batch`` needs only ``"cat"`` (and ``"dense"`` when
        the spec has dense fields); ``user_index`` (``Long[B]``) maps rows to state rows (``None``:
        row ``i`` uses state row ``i``)."""
        dense = self.dense_input(batch)
        if user_state is None:
            return self.score(batch["cat"], self.encode_user(user_batch(batch, self.spec)), dense)
        if user_index is None:
            return self.score(batch["cat"], user_state, dense)
        return self.score_per_user(batch["cat"], user_state, user_index, dense)

    def dense_input(self, batch: dict[str, Tensor]) -> Tensor | None:
        """``batch["dense"]`` (``Float[B, K]``) when the spec has dense fields; a missing one is an
        error, not zeros (a scorer that forgot them would silently score other inputs)."""
        if not self.spec.dense:
            return None
        if "dense" not in batch:
            raise KeyError(f"the feature spec has {len(self.spec.dense)} dense fields but the batch has no 'dense'")
        return batch["dense"]

    def score_per_user(self, cat: Tensor, user_state: UserState, user_index: Tensor,
                       dense: Tensor | None = None) -> Tensor:
        """The candidate part over a per-user state (``user_index`` maps rows to state rows).
        By default the state is expanded row by row; a model whose candidate part reads large
        user tensors (INFNet's sequence keys) overrides this to read them once per user."""
        return self.score(cat, take_user_rows(user_state, user_index), dense)

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last layer every task's loss flows through, on which GradNorm measures each task's
        gradient norm (Chen et al. 2018). Default: the last ``nn.Linear`` registered outside the
        task towers (``towers`` / ``heads``); models whose registration order says otherwise override it."""
        linears = [m for name, m in self.named_modules()
                   if isinstance(m, nn.Linear) and not name.startswith(("towers", "heads"))]
        return list(linears[-1].parameters()) if linears else []

    def n_params(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def config_dict(self) -> dict:
        """The config as plain JSON-able values (for the model artifact)."""
        return dataclasses.asdict(self.config)

    # -- helpers for subclasses -------------------------------------------------------------
    def embed_cat(self, embedding: nn.Module, cat: Tensor, user_part: Tensor) -> Tensor:
        """Spec-ordered ``[B, M, d]``: the cached user fields + the candidate fields of ``cat``."""
        return self.merge_cat(user_part, self.embed_candidates(embedding, cat))

    def embed_candidates(self, embedding: nn.Module, cat: Tensor) -> Tensor:
        """``[B, len(candidate_fields), d]``: the candidate fields of ``cat``, in ``candidate_fields`` order."""
        return embedding(cat.index_select(1, self._candidate_cols), self.candidate_fields)

    def merge_cat(self, user_part: Tensor, candidate_part: Tensor) -> Tensor:
        """User and candidate field embeddings back in spec order."""
        if not self.user_fields:
            return candidate_part
        return torch.cat([user_part, candidate_part], dim=1).index_select(1, self._spec_order)


# =============================================================================================
# Splitting a batch into a user side and candidates
# =============================================================================================

def user_batch(batch: dict[str, Tensor], spec: FeatureSpec) -> dict[str, Tensor]:
    """The user side of every row of a full batch: ``{"cat_user", "seq", "seq_gap"}``."""
    return {
        "cat_user": batch["cat"][:, list(user_field_indices(spec))],
        "seq": batch["seq"],
        "seq_gap": batch["seq_gap"],
    }


def group_by_user(batch: dict[str, Tensor], spec: FeatureSpec) -> tuple[dict[str, Tensor], Tensor]:
    """Deduplicate identical user sides: ``(batch_user with U unique rows, user_index Long[B])``,
    users numbered in order of first appearance.

    Rows are equal when their user fields, sequences and gaps are all equal (gaps compared bit for
    bit), so scoring with ``encode_user(batch_user)`` + ``user_index`` is exact.
    """
    ub = user_batch(batch, spec)
    b = ub["cat_user"].shape[0]
    key = torch.cat([ub["cat_user"], ub["seq"].reshape(b, -1),
                     ub["seq_gap"].float().contiguous().view(torch.int32).reshape(b, -1).long()], dim=1)
    if key.shape[1] == 0:
        return {k: v[:1] for k, v in ub.items()}, torch.zeros(b, dtype=torch.long, device=key.device)
    unique, user_index = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((unique.shape[0],), b, dtype=torch.long, device=key.device)
    first = first.scatter_reduce(0, user_index, torch.arange(b, device=key.device), reduce="amin")
    first, order = first.sort()  # number users by first appearance, not by key order
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=key.device))
    return {k: v.index_select(0, first) for k, v in ub.items()}, rank[user_index]


def take_user_rows(user_state: UserState, user_index: Tensor) -> UserState:
    """Expand a per-user state to per-row: row ``i`` gets state row ``user_index[i]``."""
    return {k: v.index_select(0, user_index) for k, v in user_state.items()}


# =============================================================================================
# Synthetic inputs (tests, benchmarks, docs)
# =============================================================================================

def random_batch(spec: FeatureSpec, batch_size: int, *, seed: int = 0, fill: float = 0.6,
                 device: torch.device | str | None = None, with_labels: bool = True) -> dict[str, Tensor]:
    """A synthetic batch shaped like ``spec``: random buckets (0 included), sequences with a random
    number of valid items (some rows fully padded, newest first with increasing gaps), labels and
    masks (``label`` 0/1 for binary tasks, ``log1p``-like values for regression)."""
    g = torch.Generator().manual_seed(seed)
    m, f = len(spec.categorical), len(spec.sequences)
    n = max((s.max_len for s in spec.sequences), default=0)
    cat = torch.stack([torch.randint(0, c.vocab_size, (batch_size,), generator=g) for c in spec.categorical], 1) \
        if m else torch.zeros(batch_size, 0, dtype=torch.long)
    seq = torch.zeros(batch_size, f, n, dtype=torch.long)
    gap = torch.zeros(batch_size, f, n)
    for a, s in enumerate(spec.sequences):
        lengths = (torch.rand(batch_size, generator=g) * (s.max_len + 1) * fill * 1.5).long().clamp(max=s.max_len)
        lengths[torch.rand(batch_size, generator=g) < 0.1] = 0
        valid = torch.arange(n)[None, :] < lengths[:, None]
        ids = torch.randint(1, s.vocab_size, (batch_size, n), generator=g)
        seq[:, a] = torch.where(valid, ids, 0)
        gaps = torch.cumsum(torch.rand(batch_size, n, generator=g) * 2.0, dim=1) + 3.0
        gap[:, a] = torch.where(valid, gaps, 0.0)
    batch = {"cat": cat, "seq": seq, "seq_gap": gap}
    if spec.dense:
        batch["dense"] = torch.randn(batch_size, len(spec.dense), generator=g) * 2.0
    if with_labels:
        t = len(spec.tasks)
        label = torch.zeros(batch_size, t)
        for i, task in enumerate(spec.tasks):
            if task.kind == "binary":
                label[:, i] = (torch.rand(batch_size, generator=g) < 0.3).float()
            else:
                label[:, i] = torch.rand(batch_size, generator=g) * 4.0
        batch["label"] = label
        batch["mask"] = (torch.rand(batch_size, t, generator=g) < 0.9).float()
    if device is not None:
        batch = {k: v.to(device) for k, v in batch.items()}
    return batch


def repeat_users(batch: dict[str, Tensor], spec: FeatureSpec, rows: Sequence[int]) -> dict[str, Tensor]:
    """A batch whose row ``i`` has the user side of row ``rows[i]`` and its own candidate side:
    the shape of a scoring request (several candidates per user)."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    out = {k: v.clone() for k, v in batch.items()}
    users = list(user_field_indices(spec))
    out["cat"][:, users] = batch["cat"][index][:, users]
    out["seq"] = batch["seq"][index]
    out["seq_gap"] = batch["seq_gap"][index]
    return out
