"""The training loop: Adam, masked multi-task loss, early stopping on mean validation AUC.

Every knob lives in :class:`TrainConfig` (defaults documented there); the model's own options go in
the model config given to ``model.registry.build_model``, except ``dropout`` which ``TrainConfig``
passes through so that a sweep changes one object.

Loss (INFNet.md "Heads and loss"): ``L = Σ_i λ_i L_i`` over the spec's tasks, with ``L_i`` the
BCE-with-logits of a binary task or the MSE of a regression task, each averaged over the rows whose
``mask_<task>`` is set. ``λ_i`` = ``task_weights.get(name, 1.0)`` over :data:`DEFAULT_TASK_WEIGHTS`
(``like`` = 10 where the spec has a ``like`` task; see :func:`resolve_task_weights`). With
``uncertainty_weighting`` (Kendall et al. 2018) a learnable ``s_i = log σ_i²`` per task turns the
sum into ``Σ λ_i (c_i e^{-s_i} L_i + s_i / 2)``, ``c_i`` = 1 for binary and 1/2 for regression tasks.
With ``gradnorm`` (Chen et al. 2018) the weights ``w_i`` (starting at ``λ_i``) are learned by a second
Adam (``gradnorm_lr``) so that each task's gradient norm on the model's last shared layer,
``G_i = ||∇_W w_i L_i||`` (``RankingModel.last_shared_parameters``), tracks the mean norm scaled by the
task's relative inverse training rate: ``L_grad = Σ_i |G_i - mean(G) r_i^α|``, ``r_i = (L_i / L_i(0)) /
mean_j(L_j / L_j(0))``, the target held constant; after each step ``w`` is renormalised to ``Σ λ_i``.
The network itself trains on ``Σ w_i L_i`` with ``w`` held constant.

Early stopping: evaluate every ``eval_every_steps`` steps (0: once per epoch); the score is the mean
AUC over the binary tasks on the validation set; stop after ``patience`` evaluations without gain
and restore the best weights. The test set is evaluated once, with the restored weights.

Reproducibility: :func:`set_seed` seeds ``random``, numpy and torch and asks torch for
deterministic kernels, and batches are shuffled by generators seeded from ``seed`` and the epoch,
so one seed on one device gives the same weights bit for bit.

>>> from features.spec import demo_spec
>>> from model.data import arrow_to_batch
>>> from model.loaders import TensorBatches
>>> from model.synthetic import synthetic_examples
>>> spec = demo_spec(seq_len=4)
>>> rows = lambda n, seed: TensorBatches(arrow_to_batch(synthetic_examples(spec, n, seed=seed), spec), 64)
>>> result = build_and_train("shared_bottom", spec, rows(256, 0), rows(128, 1),
...                          config=TrainConfig(epochs=1, progress=False),
...                          model_config={"embed_dim": 8, "bottom_hidden": [16]})
>>> sorted(result.metrics["valid"]), result.metrics["epochs_run"]
(['click', 'like', 'long_view', 'mtl_auc', 'play_time'], 1)
"""
from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from features.spec import FeatureSpec
from model.data import model_inputs

log = logging.getLogger("infnet.model.train")


# Loss weights of the tasks a spec may have, chosen on the validation day of the bundled KuaiRand data
# (README, "Accuracy"): like is ~1.7 % positive and, weighted 1, only learns the users' like
# propensity after click and long_view have begun to overfit; at 10 all three peak in the same
# epoch (INFNet mean valid AUC .7522 at weight 1 after 4 epochs, .7725 at 5, .7755 at 10, .7758 at 20).
DEFAULT_TASK_WEIGHTS: dict[str, float] = {"like": 10.0}


@dataclass
class TrainConfig:
    lr: float = 1e-3
    batch_size: int = 1024
    weight_decay: float = 0.0  # Adam's L2 term
    embedding_lr: float | None = None  # learning rate of every nn.Embedding table (None: lr)
    dropout: float | None = None  # None: the model config's own default
    epochs: int = 10
    patience: int = 2  # evaluations without a mean-valid-AUC gain before stopping
    eval_every_steps: int = 0  # 0: evaluate once per epoch
    min_delta: float = 1e-4  # a gain smaller than this is no gain
    seed: int = 42
    task_weights: dict[str, float] = field(default_factory=dict)  # λ_i over DEFAULT_TASK_WEIGHTS, 1.0 when absent
    uncertainty_weighting: bool = False
    gradnorm: bool = False  # learn the task weights with GradNorm (Chen et al. 2018)
    gradnorm_alpha: float = 1.5  # GradNorm's restoring force α
    gradnorm_lr: float = 0.025  # learning rate of the GradNorm weights
    max_grad_norm: float | None = None  # gradient clipping when set
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    shuffle_buffer_rows: int = 65_536
    deterministic: bool = True
    progress: bool = True
    num_threads: int | None = None  # torch CPU threads (None: torch's default); 1 is faster on a loaded machine

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: nn.Module
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    train_config: TrainConfig
    model_config: dict[str, Any]


# =============================================================================================
# Small helpers
# =============================================================================================

def set_seed(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False


def resolve_task_weights(spec: FeatureSpec, task_weights: dict[str, float] | None = None) -> dict[str, float]:
    """``DEFAULT_TASK_WEIGHTS`` of the tasks ``spec`` has, overridden by ``task_weights``.

    A default for a task the spec lacks is dropped; an explicit weight for one is an error.

    >>> from features.spec import demo_spec
    >>> resolve_task_weights(demo_spec(), {"click": 2.0})
    {'like': 10.0, 'click': 2.0}
    """
    task_weights = dict(task_weights or {})
    check_task_names(spec, task_weights)
    names = {t.name for t in spec.tasks}
    return {**{k: v for k, v in DEFAULT_TASK_WEIGHTS.items() if k in names}, **task_weights}


def check_task_names(spec: FeatureSpec, task_weights: dict[str, float]) -> None:
    """ValueError naming the weights given for tasks ``spec`` does not have."""
    unknown = sorted(set(task_weights) - {t.name for t in spec.tasks})
    if unknown:
        raise ValueError(f"task_weights name unknown tasks {unknown}; the spec's tasks are {[t.name for t in spec.tasks]}")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# =============================================================================================
# Metrics: evaluation.metrics holds the one definition of AUC / gAUC
# =============================================================================================

def task_metrics(spec: FeatureSpec, preds: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                 users: np.ndarray | None) -> dict[str, Any]:
    """Per task: AUC and gAUC (binary) or RMSE (regression) on masked rows; plus ``mtl_auc``.

    ``preds`` may be logits: AUC and gAUC only depend on the order of the scores.
    """
    from model.metrics import auc_np, gauc_np

    out: dict[str, Any] = {}
    aucs = []
    for i, task in enumerate(spec.tasks):
        m = masks[:, i] > 0
        y, s = labels[m, i], preds[m, i]
        if task.kind == "binary":
            auc = float(auc_np(y, s)) if len(y) else float("nan")
            gauc = float(gauc_np(users[m], y, s).value) if users is not None and len(y) else float("nan")
            out[task.name] = {"auc": auc, "gauc": gauc, "n": int(m.sum()), "positive_rate": float(y.mean()) if len(y) else float("nan")}
            if not math.isnan(auc):
                aucs.append(auc)
        else:
            out[task.name] = {"rmse": float(np.sqrt(np.mean((s - y) ** 2))) if len(y) else float("nan"), "n": int(m.sum())}
    out["mtl_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return out


@torch.no_grad()
def predict_batches(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device):
    """Raw model outputs with their labels, masks and users, concatenated as numpy arrays."""
    model.eval()
    preds, labels, masks, users = [], [], [], []
    for batch in batches:
        preds.append(model(model_inputs(batch, device)).float().cpu())
        labels.append(batch["label"])
        masks.append(batch["mask"])
        if "user_id" in batch:
            users.append(batch["user_id"])
    cat = lambda xs: torch.cat(xs).numpy() if xs else None  # noqa: E731
    return cat(preds), cat(labels), cat(masks), cat(users)


def evaluate(model: nn.Module, spec: FeatureSpec, batches, device: torch.device) -> dict[str, Any]:
    preds, labels, masks, users = predict_batches(model, batches, device)
    return task_metrics(spec, preds, labels, masks, users)


# =============================================================================================
# Loss
# =============================================================================================

class MultiTaskLoss(nn.Module):
    """Masked per-task losses combined with fixed weights, learned uncertainty weights, or GradNorm
    weights (``gradnorm=True``: the weights are a parameter that :meth:`gradnorm_loss` trains)."""

    def __init__(self, spec: FeatureSpec, task_weights: dict[str, float] | None = None,
                 uncertainty_weighting: bool = False, gradnorm: bool = False, gradnorm_alpha: float = 1.5) -> None:
        super().__init__()
        if uncertainty_weighting and gradnorm:
            raise ValueError("choose one of uncertainty weighting and GradNorm")
        task_weights = task_weights or {}
        check_task_names(spec, task_weights)
        self.binary = torch.tensor([t.kind == "binary" for t in spec.tasks])
        initial = torch.tensor([float(task_weights.get(t.name, 1.0)) for t in spec.tasks])
        self.register_buffer("weights", initial)
        self.register_buffer("scale", torch.where(self.binary, 1.0, 0.5))
        self.log_vars = nn.Parameter(torch.zeros(len(spec.tasks))) if uncertainty_weighting else None
        self.gradnorm_weights = nn.Parameter(initial.clone()) if gradnorm else None
        self.gradnorm_alpha = gradnorm_alpha
        self.register_buffer("initial_losses", torch.full_like(initial, float("nan")))

    def per_task(self, outputs: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        binary = self.binary.to(outputs.device)
        bce = F.binary_cross_entropy_with_logits(outputs, labels.clamp(0, 1), reduction="none")
        mse = (outputs - labels) ** 2
        elementwise = torch.where(binary, bce, mse) * masks
        return elementwise.sum(0) / masks.sum(0).clamp_min(1.0)

    def forward(self, outputs: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        losses = self.per_task(outputs, labels, masks)
        if self.gradnorm_weights is not None:
            return (self.gradnorm_weights.detach() * losses).sum(), losses
        if self.log_vars is None:
            return (self.weights * losses).sum(), losses
        s = self.log_vars
        return (self.weights * (self.scale * torch.exp(-s) * losses + 0.5 * s)).sum(), losses

    def gradnorm_loss(self, losses: torch.Tensor, shared: list[nn.Parameter]) -> torch.Tensor:
        """GradNorm's ``L_grad`` for the per-task ``losses`` of this step (their graph is kept).

        ``G_i = w_i ||∇_W L_i||`` on the ``shared`` weights; tasks without a gradient this step (no
        labelled row) keep their weight out of the mean and of the loss. Differentiable in ``w`` only.
        """
        w = self.gradnorm_weights
        norms = []
        for i in range(len(losses)):
            grads = (torch.autograd.grad(losses[i], shared, retain_graph=True, allow_unused=True)
                     if losses[i].requires_grad else [None])
            sq = sum((g.pow(2).sum() for g in grads if g is not None), torch.zeros((), device=losses.device))
            norms.append(sq.sqrt())
        g = torch.stack(norms).detach()
        active = g > 0
        if not bool(active.any()):
            return (w * 0).sum()
        current = losses.detach()
        first = torch.isnan(self.initial_losses) & active
        self.initial_losses[first] = current[first].clamp_min(1e-8)
        ratio = torch.where(active, current / self.initial_losses.nan_to_num(1.0), torch.zeros_like(current))
        inverse_rate = ratio / ratio[active].mean()
        G = w * g
        target = (G[active].mean() * inverse_rate.pow(self.gradnorm_alpha)).detach()
        return ((G - target).abs() * active).sum()

    @torch.no_grad()
    def renormalise_gradnorm(self) -> None:
        """Keep the GradNorm weights positive and summing to ``Σ λ_i``."""
        w = self.gradnorm_weights
        w.clamp_(min=1e-3)
        w.mul_(self.weights.sum() / w.sum())


# =============================================================================================
# Loop
# =============================================================================================

def gradnorm_shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights GradNorm measures task gradients on: ``model.last_shared_parameters()`` when the
    model has it, else the last ``nn.Linear`` outside modules named like towers or heads."""
    if hasattr(model, "last_shared_parameters"):
        shared = list(model.last_shared_parameters())
    else:
        linears = [m for name, m in model.named_modules() if isinstance(m, nn.Linear)
                   and not any(k in name for k in ("tower", "head", "predict"))]
        shared = list(linears[-1].parameters()) if linears else []
    if not shared:
        raise ValueError(f"GradNorm found no shared layer in {type(model).__name__}")
    return shared


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Adam's parameter groups: the embedding tables (own ``embedding_lr`` when set) and the rest.

    Embedding rows of ids seen in a few impressions memorise them within one pass, while the dense
    layers keep learning; a smaller step for the tables is a common remedy in CTR models. On the
    bundled data it did not help (INFNet, like weight 5: best mean valid AUC .7692 with tables at
    3e-4 vs .7725 at 1e-3), so it is off by default.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if config.embedding_lr is None:
        return [{"params": trainable, "weight_decay": config.weight_decay}]
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.weight.requires_grad}
    return [{"params": [p for p in trainable if id(p) in tables], "lr": config.embedding_lr, "weight_decay": config.weight_decay},
            {"params": [p for p in trainable if id(p) not in tables], "weight_decay": config.weight_decay}]


def train_model(
    model: nn.Module,
    spec: FeatureSpec,
    train_batches,
    valid_batches,
    test_batches=None,
    config: TrainConfig | None = None,
    model_config: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` (already built and seeded) and return it with its metrics.

    ``*_batches``: re-iterable sources of batch dicts (:class:`model.loaders.ArrowBatches`,
    :class:`model.loaders.TensorBatches`, or any iterable); ``set_epoch`` is called when present.
    """
    config = config or TrainConfig()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    model.to(device)
    task_weights = resolve_task_weights(spec, config.task_weights)
    criterion = MultiTaskLoss(spec, task_weights, config.uncertainty_weighting, config.gradnorm,
                              config.gradnorm_alpha).to(device)
    params = parameter_groups(model, config)
    if criterion.log_vars is not None:
        params.append({"params": [criterion.log_vars], "weight_decay": 0.0})
    optimizer = torch.optim.Adam(params, lr=config.lr)
    gradnorm_optimizer, shared = None, []
    if criterion.gradnorm_weights is not None:
        gradnorm_optimizer = torch.optim.Adam([criterion.gradnorm_weights], lr=config.gradnorm_lr)
        shared = gradnorm_shared_parameters(model)

    from tqdm.auto import tqdm

    history: list[dict[str, Any]] = []
    best_score, best_state, best_eval, evals_without_gain = -math.inf, None, None, 0
    step, seen, train_seconds, stop = 0, 0, 0.0, False

    def run_eval(epoch: int) -> bool:
        nonlocal best_score, best_state, best_eval, evals_without_gain
        valid = evaluate(model, spec, valid_batches, device)
        score = valid["mtl_auc"]
        entry = {"epoch": epoch, "step": step, "examples": seen, "valid": valid,
                 "train_loss": float(running_loss / max(running_n, 1))}
        if criterion.log_vars is not None:
            entry["log_vars"] = criterion.log_vars.detach().cpu().tolist()
        if criterion.gradnorm_weights is not None:
            entry["gradnorm_weights"] = criterion.gradnorm_weights.detach().cpu().tolist()
        history.append(entry)
        log.info("eval epoch %d step %d: valid mean AUC %.4f (best %.4f)", epoch, step, score, best_score)
        if not math.isnan(score) and score > best_score + config.min_delta:
            best_score, best_eval, evals_without_gain = score, entry, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            evals_without_gain += 1
        model.train()
        return evals_without_gain >= config.patience

    for epoch in range(config.epochs):
        if hasattr(train_batches, "set_epoch"):
            train_batches.set_epoch(epoch)
        model.train()
        running_loss, running_n = 0.0, 0
        total = len(train_batches) if hasattr(train_batches, "__len__") else None
        bar = tqdm(train_batches, total=total, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not config.progress,
                   leave=False, mininterval=1.0)
        epoch_start = time.perf_counter()
        for batch in bar:
            labels, masks = batch["label"].to(device), batch["mask"].to(device)
            outputs = model(model_inputs(batch, device))
            loss, per_task = criterion(outputs, labels, masks)
            if gradnorm_optimizer is not None:  # before backward: it needs the graph of each task loss
                gradnorm_optimizer.zero_grad(set_to_none=True)
                criterion.gradnorm_weights.grad = torch.autograd.grad(
                    criterion.gradnorm_loss(per_task, shared), criterion.gradnorm_weights)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            if gradnorm_optimizer is not None:
                gradnorm_optimizer.step()
                criterion.renormalise_gradnorm()
            step += 1
            n = len(labels)
            seen += n
            running_loss += float(loss.detach()) * n
            running_n += n
            if step % 10 == 0:
                elapsed = train_seconds + time.perf_counter() - epoch_start
                bar.set_postfix(loss=f"{running_loss / running_n:.4f}", ex_s=f"{seen / max(elapsed, 1e-9):,.0f}")
            if config.eval_every_steps and step % config.eval_every_steps == 0:
                train_seconds += time.perf_counter() - epoch_start
                stop = run_eval(epoch)
                epoch_start = time.perf_counter()
                if stop:
                    break
        bar.close()
        train_seconds += time.perf_counter() - epoch_start
        if stop:
            break
        if not config.eval_every_steps and run_eval(epoch):
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    metrics: dict[str, Any] = {
        "valid": best_eval["valid"] if best_eval else None,
        "best_epoch": best_eval["epoch"] if best_eval else None,
        "best_step": best_eval["step"] if best_eval else None,
        "epochs_run": (history[-1]["epoch"] + 1) if history else 0,
        "steps": step,
        "train_examples": seen,
        "train_examples_per_s": seen / train_seconds if train_seconds else None,
        "parameters": count_parameters(model),
        "device": str(device),
        "task_weights": task_weights,
        "early_stopped": bool(history) and evals_without_gain >= config.patience,
    }
    if criterion.gradnorm_weights is not None:
        metrics["gradnorm_weights"] = dict(zip([t.name for t in spec.tasks],
                                               criterion.gradnorm_weights.detach().cpu().tolist()))
    if criterion.log_vars is not None:
        metrics["uncertainty_log_vars"] = dict(zip([t.name for t in spec.tasks], criterion.log_vars.detach().cpu().tolist()))
    if test_batches is not None:
        metrics["test"] = evaluate(model, spec, test_batches, device)
    model.eval()
    return TrainResult(model, metrics, history, config, dict(model_config or {}))


def effective_model_config(model_config: dict[str, Any] | None, config: TrainConfig) -> dict[str, Any]:
    merged = dict(model_config or {})
    if config.dropout is not None:
        merged["dropout"] = config.dropout
    return merged


def build_and_train(
    model_name: str,
    spec: FeatureSpec,
    train_batches,
    valid_batches,
    test_batches=None,
    config: TrainConfig | None = None,
    model_config: dict[str, Any] | None = None,
    builder=None,
) -> TrainResult:
    """Seed, build ``model_name`` (``builder`` defaults to ``model.registry.build_model``; dropout
    comes from ``config``), train it."""
    if builder is None:
        from model.registry import build_model as builder

    config = config or TrainConfig()
    merged = effective_model_config(model_config, config)
    set_seed(config.seed, config.deterministic)
    model = builder(model_name, spec, merged)
    for source in (train_batches,):
        if hasattr(source, "seed"):
            source.seed = config.seed
    return train_model(model, spec, train_batches, valid_batches, test_batches, config, merged)
