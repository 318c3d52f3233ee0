"""torch-rechub's MMoE and PLE on our features: the "side by side with the field" arms of bench.accuracy.

torch-rechub is an optional benchmark dependency (pinned in ``requirements.lock``); the product never
imports this module. :class:`RechubModel` feeds one of its multi-task models the same inputs our
models read (``cat``, ``seq`` of a :mod:`model.data` batch): each categorical field becomes a
``SparseFeature``, each behaviour sequence a mean-pooled ``SequenceFeature`` (padding id 0), with the
widths of our own baselines (16-wide embeddings, experts 256-128, towers 64, dropout 0.1). Their
towers end in a sigmoid for classification tasks; the adapter replaces that last layer with the
identity so that the model returns logits, which our loss (BCE with logits) and trainer expect: the
same function, numerically safer. Their models do not read the time gaps, which ours do; dense values
(when the spec has them) are their ``DenseFeature`` inputs.

>>> import torch
>>> from features.spec import demo_spec
>>> from model.base import random_batch
>>> spec = demo_spec(seq_len=4)
>>> model = RechubModel(spec, "mmoe")
>>> model(random_batch(spec, 3)).shape
torch.Size([3, 4])
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from features.spec import FeatureSpec

ARCHITECTURES = ("mmoe", "ple")
EMBED_DIM = 16
EXPERT = {"dims": [256, 128], "dropout": 0.1}
TOWER = {"dims": [64], "dropout": 0.1}


def available() -> str | None:
    """None when torch-rechub imports, else why not."""
    try:
        import torch_rechub  # noqa: F401
    except ImportError as err:
        return f"torch-rechub is not installed ({err})"
    return None


def version() -> str:
    import torch_rechub

    return torch_rechub.__version__


class RechubModel(nn.Module):
    """torch-rechub ``MMOE`` / ``PLE`` over a :class:`FeatureSpec`, returning one logit (or value) per task."""

    def __init__(self, spec: FeatureSpec, architecture: Literal["mmoe", "ple"]):
        super().__init__()
        from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
        from torch_rechub.models.multi_task import MMOE, PLE

        self.cat_names = [f.column for f in spec.categorical]
        self.seq_names = [f"seq_{s.name}" for s in spec.sequences]
        features = ([SparseFeature(f.column, vocab_size=f.vocab_size, embed_dim=EMBED_DIM) for f in spec.categorical]
                    + [SequenceFeature(name, vocab_size=s.vocab_size, embed_dim=EMBED_DIM, pooling="mean", padding_idx=0)
                       for name, s in zip(self.seq_names, spec.sequences)]
                    + [DenseFeature(f.column) for f in spec.dense])
        self.dense_names = [f.column for f in spec.dense]
        task_types = ["classification" if t.kind == "binary" else "regression" for t in spec.tasks]
        towers = [dict(TOWER) for _ in task_types]
        if architecture == "mmoe":
            self.model = MMOE(features, task_types, n_expert=4, expert_params=dict(EXPERT), tower_params_list=towers)
        elif architecture == "ple":
            self.model = PLE(features, task_types, n_level=2, n_expert_specific=1, n_expert_shared=2,
                             expert_params=dict(EXPERT), tower_params_list=towers)
        else:
            raise ValueError(f"unknown torch-rechub architecture {architecture!r}; known: {ARCHITECTURES}")
        # logits out: the sigmoid moves into the loss (BCE with logits), as in our own models
        self.model.predict_layers = nn.ModuleList(nn.Identity() for _ in task_types)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = {name: batch["cat"][:, i] for i, name in enumerate(self.cat_names)}
        x.update({name: batch["seq"][:, i] for i, name in enumerate(self.seq_names)})
        x.update({name: batch["dense"][:, i] for i, name in enumerate(self.dense_names)})
        return self.model(x)


def build(name: str, spec: FeatureSpec, config: dict | None = None) -> RechubModel:
    """A ``model.train.build_and_train`` builder: ``name`` is ``mmoe`` or ``ple``; ``config`` is unused
    (only the trainer's dropout would land there, and these models take theirs from EXPERT / TOWER)."""
    return RechubModel(spec, name)
