"""Wide & Deep (Cheng et al., DLRS 2016), multi-task: per task, a wide linear model plus a deep tower.

Wide part (:class:`FirstOrderModel`, shared with FM, xDeepFM, NFM and AFM): one scalar per
categorical value and task (the one-hot linear model), one weight per dense value and task, and,
as the paper's cross-product transformations, one scalar per task for each bucket of a crossed
pair of categorical fields (``wide_crosses``: pairs of field names; the crossed id
``a * vocab_b + b`` is taken modulo ``cross_buckets``). The paper's hand-picked crosses depend on
the data; none are set by default. Deep part: an MLP over the ``M + F (+ K)`` field embeddings
(sequences pooled as in :mod:`model.baselines.common`) shared by every task, one tower per task.

User-side reuse: the user fields' wide weights are cached by ``encode_user`` beside their
embeddings; crosses read the full ``cat`` in the candidate part.

>>> from features.spec import demo_spec
>>> from model.base import random_batch
>>> spec = demo_spec(seq_len=4)
>>> model = WideDeep(spec, WideDeepConfig(deep_hidden=(8,), wide_crosses=(("user_id", "video_id"),)))
>>> model(random_batch(spec, 3)).shape, model.cross_tables[0].num_embeddings
(torch.Size([3, 4]), 1000)
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from features.spec import FeatureSpec
from model.base import UserState
from model.baselines.common import BaselineConfig, PooledInputModel
from model.layers import MLP, CategoricalEmbedding, TaskTowers, init_embedding_


class FirstOrderModel(PooledInputModel):
    """A pooled-input model plus per-task first-order terms, added to what :meth:`predict` returns:
    ``sum_m w_{t, cat_m} + sum_k u_{t,k} x_k`` (``[B, T]``; the towers carry the global bias)."""

    def __init__(self, spec: FeatureSpec, config: BaselineConfig, field_width: int | None = None):
        super().__init__(spec, config, field_width)
        n_tasks = len(spec.tasks)
        self.first_order = CategoricalEmbedding(spec.categorical, n_tasks, use_spec_widths=False)
        self.first_order_dense = nn.Linear(len(spec.dense), n_tasks, bias=False) if spec.dense else None

    def encode_user(self, batch_user: dict[str, Tensor]) -> UserState:
        state = super().encode_user(batch_user)
        state["cat_user_first_order"] = self.first_order(batch_user["cat_user"], self.user_fields)
        return state

    def score(self, cat: Tensor, user_rows: UserState, dense: Tensor | None = None) -> Tensor:
        return super().score(cat, user_rows, dense) + self.wide(cat, user_rows, dense)

    def wide(self, cat: Tensor, user_rows: UserState, dense: Tensor | None = None) -> Tensor:
        """``[B, T]``: the first-order terms (the user fields' from the cached state)."""
        out = self.embed_cat(self.first_order, cat, user_rows["cat_user_first_order"]).sum(1)
        return out if self.first_order_dense is None else out + self.first_order_dense(dense)


@dataclass
class WideDeepConfig(BaselineConfig):
    deep_hidden: tuple[int, ...] = (256, 128)  # the shared deep MLP (the paper: 1024-512-256 on its data)
    wide_crosses: tuple[tuple[str, str], ...] = ()  # pairs of categorical field names crossed in the wide part
    cross_buckets: int = 1000  # rows per crossed pair (crossed ids modulo this)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.wide_crosses = tuple(tuple(pair) for pair in self.wide_crosses)  # JSON gives lists of lists


class WideDeep(FirstOrderModel):
    def __init__(self, spec: FeatureSpec, config: WideDeepConfig | None = None):
        config = config or WideDeepConfig()
        super().__init__(spec, config)
        names = [c.name for c in spec.categorical]
        unknown = sorted({n for pair in config.wide_crosses for n in pair} - set(names))
        if unknown or any(len(pair) != 2 for pair in config.wide_crosses):
            raise ValueError(f"wide_crosses must be pairs of categorical fields of the spec; unknown: {unknown}")
        self.crosses = [(names.index(a), names.index(b), spec.categorical[names.index(b)].vocab_size)
                        for a, b in config.wide_crosses]
        self.cross_tables = nn.ModuleList(nn.Embedding(config.cross_buckets, len(spec.tasks)) for _ in self.crosses)
        for table in self.cross_tables:
            init_embedding_(table.weight)
        self.deep = MLP(self.input_dim, config.deep_hidden, dropout=config.dropout)
        self.towers = TaskTowers(self.deep.out_dim, len(spec.tasks), config.tower_hidden, config.dropout)

    def wide(self, cat: Tensor, user_rows: UserState, dense: Tensor | None = None) -> Tensor:
        out = super().wide(cat, user_rows, dense)
        for (a, b, vocab_b), table in zip(self.crosses, self.cross_tables):
            out = out + table((cat[:, a] * vocab_b + cat[:, b]) % table.num_embeddings)
        return out

    def predict(self, fields: Tensor, cat: Tensor, user_rows: UserState) -> Tensor:
        return self.towers(self.deep(fields.flatten(1)))
