"""SIM (Pi et al., "Search-based User Interest Modeling with Lifelong Sequential Behavior Data for
Click-Through Rate Prediction", CIKM 2020), multi-task.

Implemented. The user's whole available history, every behaviour sequence of the spec merged into one
list (each item: its embedding + the gap signal + a learned behaviour-type embedding), is searched
by the **general search unit** for the ``top_k`` behaviours most relevant to the candidate; the
**exact search unit** is a multi-head target attention over those ``top_k``: per head
``a = softmax_j((W_q^h e_a) . (W_k^h z_j) / sqrt(d_h))`` over the retrieved valid items and
``head_h = sum_j a_j z_j``, heads concatenated. The short-term interest (the paper feeds the recent
behaviours to a DIEN / DIN-style module) is the masked mean of each sequence's ``short_len`` most
recent items. Everything joins the categorical field embeddings and the dense tokens in a bottom
MLP with one tower per task.

GSU. The paper's hard search keeps the behaviours whose category equals the candidate's
(:func:`hard_search`); it needs a per-item category along the sequence (e.g. each clicked video's
author), and our sequences carry video ids only, so ``gsu="hard"`` refuses with a ValueError and the
default is the soft search (:func:`soft_search`): the inner product of the candidate's item
embedding with each behaviour's item embedding (the item table the candidate and the sequences
share, without the gap signal), top-k, ties to the more recent item. The paper trains the soft
search's embeddings with an auxiliary CTR task on the long sequence; ours are the ESU's own item
table (top-k is not differentiable, so the search learns only through the shared table).

User-side reuse: the merged history, its tokens and raw item embeddings are computed in
:meth:`SIM.encode_user`; the search (it ranks by the candidate) and the ESU run in :meth:`SIM.score`.

What our data cannot follow: a "lifelong" history of thousands of behaviours (ours: at most 3 x 50,
so ``top_k`` defaults to 20), per-item categories (hard search), and the paper's two-stage serving
(the user behaviour tree index): the search runs in the model, on the sequences of each row.

>>> import torch
>>> from features.spec import demo_spec
>>> from model.base import random_batch
>>> spec = demo_spec(seq_len=4)
>>> SIM(spec, SIMConfig(embed_dim=8, top_k=5)).eval()(random_batch(spec, 3)).shape
torch.Size([3, 4])
>>> SIM(spec, SIMConfig(gsu="hard"))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: SIM gsu='hard' needs a per-item category along the behaviour sequences...
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import UserState
from model.baselines.dien import SequenceModelBase, SequenceModelConfig, masked_softmax
from model.layers import masked_mean


def soft_search(query: Tensor, keys: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The soft-search GSU: the ``k`` valid keys with the largest inner product with ``query``.

    ``query [B, e]``, ``keys [B, L, e]``, ``mask [B, L]`` -> ``index [B, min(k, L)]`` (positions in
    ``L``, best first, ties to the earlier position, i.e. the more recent item) and ``valid`` (False
    where a row has fewer than ``k`` valid keys).

    >>> keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [5.0, 0.0]]])
    >>> soft_search(torch.tensor([[1.0, 0.0]]), keys, torch.tensor([[True, True, True, False]]), 2)
    (tensor([[2, 0]]), tensor([[True, True]]))
    """
    scores = torch.einsum("ble,be->bl", keys, query).masked_fill(~mask, -math.inf)
    index = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :min(k, keys.shape[1])]
    return index, mask.gather(1, index)


def hard_search(category: Tensor, item_categories: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The hard-search GSU: up to ``k`` valid behaviours whose category equals the candidate's,
    most recent (earliest position) first. ``category [B]``, ``item_categories [B, L]``, ``mask [B, L]``
    -> ``index [B, min(k, L)]``, ``valid``. (Unused by :class:`SIM` until sequences carry categories.)

    >>> hard_search(torch.tensor([7]), torch.tensor([[3, 7, 7, 7]]), torch.tensor([[True] * 3 + [False]]), 3)
    (tensor([[1, 2, 0]]), tensor([[ True,  True, False]]))
    """
    match = mask & (item_categories == category.unsqueeze(-1))
    index = torch.sort(match.to(torch.int8), dim=-1, descending=True, stable=True).indices[:, :min(k, mask.shape[1])]
    return index, match.gather(1, index)


@dataclass
class SIMConfig(SequenceModelConfig):
    """SIM sizes and the data limits as options."""

    # general search unit: "soft" (inner product of item embeddings, top-k: the default) | "hard"
    # (category match: needs a per-item category along the sequences, which our spec lacks -> ValueError)
    gsu: Literal["soft", "hard"] = "soft"
    top_k: int = 20  # behaviours retrieved for the ESU (paper: ~50-100 out of thousands; ours out of <= 150)
    n_heads: int = 2  # ESU target-attention heads (each returns a weighted sum of the retrieved tokens)
    short_len: int = 5  # short-term interest: mean of each sequence's most recent items (0: none)


class SIM(SequenceModelBase):
    model_name = "SIM"

    def __init__(self, spec: FeatureSpec, config: SIMConfig | None = None):
        config = config or SIMConfig()
        if config.gsu == "hard":
            raise ValueError("SIM gsu='hard' needs a per-item category along the behaviour sequences (e.g. "
                             "each clicked video's author_id); this feature spec's sequences carry video ids only: "
                             "use gsu='soft'")
        if config.gsu != "soft":
            raise ValueError(f"unknown SIM gsu {config.gsu!r}; 'soft' or 'hard'")
        if config.top_k < 1:
            raise ValueError("SIM needs top_k >= 1")
        super().__init__(spec, config)
        if self.item_table is None:
            raise ValueError("SIM soft search needs the candidate and the sequence items in one item table "
                             "(share_item_table and sequence vocabularies equal to the target field's)")
        e = config.embed_dim
        if e % config.n_heads:
            raise ValueError(f"embed_dim {e} is not divisible by n_heads {config.n_heads}")
        self.behaviour_type = nn.Embedding(len(spec.sequences), e)
        nn.init.normal_(self.behaviour_type.weight, 0.0, 0.02)
        self.query = nn.Linear(e, e, bias=False)
        self.key = nn.Linear(e, e, bias=False)
        pooled = tuple(range(len(spec.sequences))) if config.short_len > 0 else ()
        self.build_head(config.n_heads * e, pooled)

    def encode_user(self, batch_user: dict[str, Tensor]) -> UserState:
        seq, _, tokens, mask = self.embed_sequences(batch_user)
        u, f, n, e = tokens.shape
        short = self.config.short_len
        state = {"cat_user": self.cat_embedding(batch_user["cat_user"], self.user_fields),
                 "seq_pooled": masked_mean(tokens[:, :, :short], mask[:, :, :short], dim=2) if short > 0
                 else tokens.new_zeros((u, 0, e))}
        z = (tokens + self.behaviour_type.weight[None, :, None, :]) * mask.unsqueeze(-1).to(tokens.dtype)
        return {**state, "history": z.reshape(u, f * n, e), "history_raw": self.raw_items(seq).reshape(u, f * n, e),
                "history_mask": mask.reshape(u, f * n)}

    def exact_search(self, target: Tensor, z: Tensor, mask: Tensor) -> Tensor:
        """Multi-head target attention over the retrieved tokens ``z [B, k, e]`` -> ``[B, H e]``."""
        b, k, e = z.shape
        h = self.config.n_heads
        q = self.query(target).view(b, h, e // h)
        keys = self.key(z).view(b, k, h, e // h)
        scores = torch.einsum("bhd,bkhd->bhk", q, keys) / math.sqrt(e // h)
        weights = masked_softmax(scores, mask.unsqueeze(1).expand(b, h, k))
        return torch.einsum("bhk,bke->bhe", weights, z).flatten(1)

    def score(self, cat: Tensor, user_rows: UserState, dense: Tensor | None = None) -> Tensor:
        fields = self.embed_cat(self.cat_embedding, cat, user_rows["cat_user"])
        target = self.target_embedding(cat, fields)
        index, valid = soft_search(target, user_rows["history_raw"], user_rows["history_mask"], self.config.top_k)
        z = user_rows["history"]
        retrieved = z.gather(1, index.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
        return self.head(fields, [self.exact_search(target, retrieved, valid)], user_rows, dense)
