"""CGC (Tang et al., RecSys 2020): PLE with one extraction level, its own registry entry.

One Customized Gate Control level (:class:`model.baselines.ple.CGCLevel`): each task's gate mixes
its own experts and the shared ones, and no shared gate (a single level is PLE's last). This is
:class:`model.baselines.ple.PLE` with ``n_levels=1``; the config keeps the field so that a stored
config reads back, and refuses another value (use ``ple`` for more levels).

>>> from features.spec import demo_spec
>>> model = CGC(demo_spec(seq_len=4))
>>> len(model.levels), model.levels[0].shared_gate is None
(1, True)
"""
from __future__ import annotations

from dataclasses import dataclass

from features.spec import FeatureSpec
from model.baselines.ple import PLE, PLEConfig


@dataclass
class CGCConfig(PLEConfig):
    n_levels: int = 1  # fixed: CGC is one extraction level

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_levels != 1:
            raise ValueError(f"CGC has exactly one extraction level, not {self.n_levels}; use 'ple' for stacked levels")


class CGC(PLE):
    def __init__(self, spec: FeatureSpec, config: CGCConfig | None = None):
        super().__init__(spec, config or CGCConfig())
