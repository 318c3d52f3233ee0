"""The control arms of the A/B reports: Shared-Bottom, MMoE, OMoE, PLE, STEM, DCNv2, DIN, DeepFM.

Same input interface, multi-task heads and user-side reuse contract as INFNet
(:class:`model.base.RankingModel`); build them by name with :func:`model.registry.build_model`.
"""
from model.baselines.common import BaselineConfig, PooledInputModel
from model.baselines.dcnv2 import DCNv2, DCNv2Config
from model.baselines.deepfm import DeepFM, DeepFMConfig
from model.baselines.din import DIN, DINConfig
from model.baselines.mmoe import MMoE, MMoEConfig
from model.baselines.omoe import OMoE, OMoEConfig
from model.baselines.ple import PLE, PLEConfig
from model.baselines.shared_bottom import SharedBottom, SharedBottomConfig
from model.baselines.stem import STEM, STEMConfig

__all__ = [
    "BaselineConfig", "PooledInputModel",
    "SharedBottom", "SharedBottomConfig", "MMoE", "MMoEConfig", "OMoE", "OMoEConfig", "PLE", "PLEConfig",
    "STEM", "STEMConfig",
    "DCNv2", "DCNv2Config", "DIN", "DINConfig", "DeepFM", "DeepFMConfig",
]
