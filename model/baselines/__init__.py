"""The control arms of the A/B reports: Shared-Bottom, MMoE, OMoE, PLE, STEM, DCNv2, DIN, DeepFM.

Interaction models (one file each): Wide & Deep, FM, xDeepFM, AutoInt, FiBiNET, NFM, AFM, PNN, GDCN;
and CGC (PLE with one extraction level).

Sequence models (one file each): DIEN, DSIN, SIM, BST (their shared scaffold lives in ``dien.py``).

Same input interface, multi-task heads and user-side reuse contract as INFNet
(:class:`model.base.RankingModel`); build them by name with :func:`model.registry.build_model`.
"""
from model.baselines.afm import AFM, AFMConfig
from model.baselines.autoint import AutoInt, AutoIntConfig
from model.baselines.bst import BST, BSTConfig
from model.baselines.cgc import CGC, CGCConfig
from model.baselines.common import BaselineConfig, PooledInputModel
from model.baselines.dcnv2 import DCNv2, DCNv2Config
from model.baselines.deepfm import DeepFM, DeepFMConfig
from model.baselines.dien import DIEN, DIENConfig
from model.baselines.din import DIN, DINConfig
from model.baselines.dsin import DSIN, DSINConfig
from model.baselines.fibinet import FiBiNET, FiBiNETConfig
from model.baselines.fm import FM, FMConfig
from model.baselines.gdcn import GDCN, GDCNConfig
from model.baselines.hstu import HSTU, HSTUConfig
from model.baselines.mmoe import MMoE, MMoEConfig
from model.baselines.nfm import NFM, NFMConfig
from model.baselines.omoe import OMoE, OMoEConfig
from model.baselines.ple import PLE, PLEConfig
from model.baselines.pnn import PNN, PNNConfig
from model.baselines.shared_bottom import SharedBottom, SharedBottomConfig
from model.baselines.sim import SIM, SIMConfig
from model.baselines.stem import STEM, STEMConfig
from model.baselines.wide_deep import WideDeep, WideDeepConfig
from model.baselines.xdeepfm import XDeepFM, XDeepFMConfig

__all__ = [
    "BaselineConfig", "PooledInputModel",
    "SharedBottom", "SharedBottomConfig", "MMoE", "MMoEConfig", "OMoE", "OMoEConfig", "PLE", "PLEConfig",
    "STEM", "STEMConfig",
    "DCNv2", "DCNv2Config", "DIN", "DINConfig", "DeepFM", "DeepFMConfig",
    "HSTU", "HSTUConfig",
    "WideDeep", "WideDeepConfig", "FM", "FMConfig", "XDeepFM", "XDeepFMConfig", "AutoInt", "AutoIntConfig",
    "FiBiNET", "FiBiNETConfig", "NFM", "NFMConfig", "AFM", "AFMConfig", "PNN", "PNNConfig", "GDCN", "GDCNConfig",
    "CGC", "CGCConfig",
    "DIEN", "DIENConfig", "DSIN", "DSINConfig", "SIM", "SIMConfig", "BST", "BSTConfig",
]
