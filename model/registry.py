"""Every model by name: ``build_model("infnet", spec, {"d": 64})``, so that a job says ``--model mmoe``.

A config is a plain dict of the config dataclass's fields (unknown keys are an error, lists are
accepted for tuple fields so that a config read back from JSON builds the same model); the
model keeps its dataclass in ``model.config`` and ``model.config_dict()`` gives the dict to store.

>>> from features.spec import demo_spec
>>> from model.base import random_batch
>>> spec = demo_spec(seq_len=4)
>>> MODEL_NAMES  # doctest: +NORMALIZE_WHITESPACE
('infnet', 'shared_bottom', 'mmoe', 'omoe', 'ple', 'stem', 'dcnv2', 'din', 'deepfm', 'hstu', 'cgc',
 'wide_deep', 'fm', 'xdeepfm', 'autoint', 'fibinet', 'nfm', 'afm', 'pnn', 'gdcn', 'dien', 'dsin',
 'sim', 'bst')
>>> model = build_model("mmoe", spec, {"n_experts": 2, "expert_hidden": [32]}, seed=0)
>>> type(model).__name__, model.config.expert_hidden, model(random_batch(spec, 5)).shape
('MMoE', (32,), torch.Size([5, 4]))
>>> config_class("infnet").__name__
'INFNetConfig'
>>> same = build_model("mmoe", spec, model.config_dict(), seed=0)
>>> all((a == b).all() for a, b in zip(model.state_dict().values(), same.state_dict().values()))
True
>>> build_model("mmoe", spec, {"n_expert": 2})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown MMoEConfig field(s) ['n_expert']; valid: ['cat_table_width', 'dropout', ...]
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from features.spec import FeatureSpec
from model.base import RankingModel
from model.baselines import (
    AFM,
    BST,
    CGC,
    DIEN,
    DIN,
    FM,
    GDCN,
    NFM,
    PNN,
    MMoE,
    PLE,
    AFMConfig,
    AutoInt,
    AutoIntConfig,
    BSTConfig,
    CGCConfig,
    DCNv2,
    DCNv2Config,
    DeepFM,
    DeepFMConfig,
    DIENConfig,
    DINConfig,
    DSIN,
    DSINConfig,
    FiBiNET,
    FiBiNETConfig,
    FMConfig,
    GDCNConfig,
    HSTU,
    HSTUConfig,
    MMoEConfig,
    NFMConfig,
    OMoE,
    OMoEConfig,
    PLEConfig,
    PNNConfig,
    SIM,
    SIMConfig,
    STEM,
    STEMConfig,
    SharedBottom,
    SharedBottomConfig,
    WideDeep,
    WideDeepConfig,
    XDeepFM,
    XDeepFMConfig,
)
from model.infnet import INFNet, INFNetConfig

_REGISTRY: dict[str, tuple[type[RankingModel], type]] = {
    "infnet": (INFNet, INFNetConfig),
    "shared_bottom": (SharedBottom, SharedBottomConfig),
    "mmoe": (MMoE, MMoEConfig),
    "omoe": (OMoE, OMoEConfig),
    "ple": (PLE, PLEConfig),
    "stem": (STEM, STEMConfig),
    "dcnv2": (DCNv2, DCNv2Config),
    "din": (DIN, DINConfig),
    "deepfm": (DeepFM, DeepFMConfig),
    "hstu": (HSTU, HSTUConfig),
    "cgc": (CGC, CGCConfig),
    "wide_deep": (WideDeep, WideDeepConfig),
    "fm": (FM, FMConfig),
    "xdeepfm": (XDeepFM, XDeepFMConfig),
    "autoint": (AutoInt, AutoIntConfig),
    "fibinet": (FiBiNET, FiBiNETConfig),
    "nfm": (NFM, NFMConfig),
    "afm": (AFM, AFMConfig),
    "pnn": (PNN, PNNConfig),
    "gdcn": (GDCN, GDCNConfig),
    "dien": (DIEN, DIENConfig),
    "dsin": (DSIN, DSINConfig),
    "sim": (SIM, SIMConfig),
    "bst": (BST, BSTConfig),
}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _entry(name: str) -> tuple[type[RankingModel], type]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}") from None


def config_class(name: str) -> type:
    """The config dataclass of model ``name``."""
    return _entry(name)[1]


def make_config(name: str, config: dict | Any | None = None) -> Any:
    """A config instance from ``None`` (defaults), a dict of field values, or an instance."""
    cls = config_class(name)
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    if not isinstance(config, dict):
        raise TypeError(f"config for {name!r} must be a dict or {cls.__name__}, not {type(config).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid: {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return cls(**values)


def build_model(name: str, spec: FeatureSpec, config: dict | Any | None = None, *,
                seed: int | None = None) -> RankingModel:
    """Model ``name`` for ``spec``; ``seed`` makes the initial weights reproducible without
    touching the global RNG state."""
    model_cls, _ = _entry(name)
    cfg = make_config(name, config)
    if seed is None:
        return model_cls(spec, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(spec, cfg)
