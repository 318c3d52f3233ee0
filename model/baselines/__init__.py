"""The control arms of the A/B reports: Shared-Bottom, MMoE, PLE, DCNv2, DIN, DeepFM.

Same input interface, multi-task heads and user-side reuse contract as INFNet
(:class:`model.base.RankingModel`); build them by name with :func:`model.registry.build_model`.
"""
from model.baselines.common import BaselineConfig, PooledInputModel
from model.baselines.dcnv2 import DCNv2, DCNv2Config
from model.baselines.deepfm import DeepFM, DeepFMConfig
from model.baselines.din import DIN, DINConfig
from model.baselines.mmoe import MMoE, MMoEConfig
from model.baselines.ple import PLE, PLEConfig
from model.baselines.shared_bottom import SharedBottom, SharedBottomConfig

__all__ = [
    "BaselineConfig", "PooledInputModel",
    "SharedBottom", "SharedBottomConfig", "MMoE", "MMoEConfig", "PLE", "PLEConfig",
    "DCNv2", "DCNv2Config", "DIN", "DINConfig", "DeepFM", "DeepFMConfig",
]
