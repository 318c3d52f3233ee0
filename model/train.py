"""The training loop: Adam, the multi-task loss, early stopping on mean validation AUC.

Every knob lives in :class:`TrainConfig` (defaults documented there); the model's own options go in
the model config given to ``model.registry.build_model``, except ``dropout`` which ``TrainConfig``
passes through so that a sweep changes one object.

The loss is :class:`model.losses.MultiTaskLoss` (masked task losses; fixed weights over
``model.losses.DEFAULT_TASK_WEIGHTS``, or learned with uncertainty weighting, GradNorm or Pareto:
the formulas are in :mod:`model.losses`); the validation metrics are
:func:`model.metrics.task_metrics`.

The loop (after torch-rechub's trainers): :func:`train_model` runs epochs of
:func:`train_one_epoch` (one :func:`train_step` per batch) and feeds each validation to an
:class:`EarlyStopper`. Early stopping: evaluate every ``eval_every_steps`` steps (0: once per
epoch); the score is the mean AUC over the binary tasks on the validation set; stop after
``patience`` evaluations without gain and restore the best weights. The test set is evaluated once,
with the restored weights.

Reproducibility: :func:`build_and_train` calls :func:`set_seed` once, before it builds the model; it
seeds ``random``, numpy and torch and asks torch for deterministic kernels. The training batches are
shuffled by generators seeded from their own ``seed`` (callers build them with ``config.seed``) and
the epoch, so one seed on one device gives the same weights bit for bit.

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
import functools
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from features.spec import FeatureSpec
from model.data import model_inputs
from model.losses import MultiTaskLoss, gradnorm_shared_parameters, resolve_task_weights
from model.metrics import task_metrics

log = logging.getLogger("infnet.model.train")


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
    task_weights: dict[str, float] = field(default_factory=dict)  # λ_i over model.losses.DEFAULT_TASK_WEIGHTS, 1.0 when absent
    uncertainty_weighting: bool = False
    gradnorm: bool = False  # learn the task weights with GradNorm (Chen et al. 2018)
    gradnorm_alpha: float = 1.5  # GradNorm's restoring force α
    gradnorm_lr: float = 0.025  # learning rate of the GradNorm weights
    pareto: bool = False  # per-step MGDA-UB task weights (Sener & Koltun 2018), model.losses
    pareto_fixed_weights: str = "scale"  # "scale": solve on λ_i ∇L_i | "sum": on ∇L_i, keep only Σ λ_i
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

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> "TrainConfig":
        """The config of a command line's flags named as the fields (``vars(args)``): None keeps the
        default, other names are ignored, ``task_weights`` may be (task, weight) pairs."""
        values = {k: v for k, v in flags.items() if k in cls.__dataclass_fields__ and v is not None}
        values["task_weights"] = dict(values.get("task_weights", {}))
        return cls(**values)

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


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# =============================================================================================
# Evaluation: the model's outputs, graded by model.metrics.task_metrics
# =============================================================================================

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
# Loop
# =============================================================================================

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


def make_optimizers(model: nn.Module, criterion: MultiTaskLoss,
                    config: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """Adam over the model (:func:`parameter_groups`, plus the uncertainty weights when the loss has
    them) and, with GradNorm, the second Adam over the task weights (None otherwise)."""
    params = parameter_groups(model, config)
    if criterion.log_vars is not None:
        params.append({"params": [criterion.log_vars], "weight_decay": 0.0})
    optimizer = torch.optim.Adam(params, lr=config.lr)
    gradnorm_optimizer = None
    if criterion.gradnorm_weights is not None:
        gradnorm_optimizer = torch.optim.Adam([criterion.gradnorm_weights], lr=config.gradnorm_lr)
    return optimizer, gradnorm_optimizer


class EarlyStopper:
    """Stops training after ``patience`` evaluations without a gain and keeps the best weights.

    A score is a gain when it is not NaN and beats the best so far by more than ``min_delta``; the
    model's weights at that evaluation are copied to the CPU (:attr:`best_state`) and
    :meth:`restore` loads them back.

    Args:
        patience: evaluations without a gain before :meth:`step` says stop.
        min_delta: a gain smaller than this is no gain.

    Example::

        >>> model = nn.Linear(2, 1)
        >>> stopper = EarlyStopper(patience=2, min_delta=0.01)
        >>> [stopper.step(score, model) for score in (0.60, 0.70, 0.705, float("nan"))]
        [False, False, False, True]
        >>> stopper.best_score, stopper.best_index, sorted(stopper.best_state)
        (0.7, 1, ['bias', 'weight'])
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.best_score = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_index: int | None = None  # which evaluation (0-based) was the best
        self.evaluations = 0
        self.evals_without_gain = 0

    @property
    def should_stop(self) -> bool:
        return self.evals_without_gain >= self.patience

    def step(self, score: float, model: nn.Module) -> bool:
        """Record one evaluation's ``score`` of ``model``; True when training should stop."""
        if not math.isnan(score) and score > self.best_score + self.min_delta:
            self.best_score, self.best_index, self.evals_without_gain = score, self.evaluations, 0
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            self.evals_without_gain += 1
        self.evaluations += 1
        return self.should_stop

    def restore(self, model: nn.Module) -> None:
        """Load the best weights into ``model`` (nothing when no evaluation was a gain)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


@dataclass
class TrainProgress:
    """Counters carried across epochs: optimiser steps, training rows, and seconds spent training
    (evaluation excluded, so that ``examples / seconds`` is the training throughput)."""

    steps: int = 0
    examples: int = 0
    seconds: float = 0.0


def train_step(model: nn.Module, batch: dict[str, torch.Tensor], criterion: MultiTaskLoss,
               optimizer: torch.optim.Optimizer, device: torch.device, max_grad_norm: float | None = None,
               gradnorm_optimizer: torch.optim.Optimizer | None = None,
               shared_parameters: list[nn.Parameter] | None = None) -> tuple[float, int]:
    """One optimiser step on ``batch``; returns its weighted loss and its number of rows.

    With ``gradnorm_optimizer`` the GradNorm weights take their own step on the gradient norms of
    ``shared_parameters`` (:meth:`MultiTaskLoss.gradnorm_loss`) and are renormalised. With a Pareto
    criterion the step's weights come from the task gradients on ``shared_parameters`` first
    (:meth:`MultiTaskLoss.pareto_loss`).
    """
    labels, masks = batch["label"].to(device), batch["mask"].to(device)
    outputs = model(model_inputs(batch, device))
    loss, per_task = criterion(outputs, labels, masks)
    if criterion.pareto_weights is not None:  # MGDA-UB: this step's weights, before backward
        loss = criterion.pareto_loss(per_task, shared_parameters)
    aux = getattr(model, "aux_loss", None)  # a model's own training loss, set by its forward (DIEN)
    if aux is not None:
        loss = loss + aux
    if gradnorm_optimizer is not None:  # before backward: it needs the graph of each task loss
        gradnorm_optimizer.zero_grad(set_to_none=True)
        criterion.gradnorm_weights.grad = torch.autograd.grad(
            criterion.gradnorm_loss(per_task, shared_parameters), criterion.gradnorm_weights)[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    if gradnorm_optimizer is not None:
        gradnorm_optimizer.step()
        criterion.renormalise_gradnorm()
    return float(loss.detach()), len(labels)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    criterion: MultiTaskLoss,
    device: torch.device,
    *,
    progress: TrainProgress | None = None,
    max_grad_norm: float | None = None,
    gradnorm_optimizer: torch.optim.Optimizer | None = None,
    shared_parameters: list[nn.Parameter] | None = None,
    eval_every_steps: int = 0,
    on_eval: Callable[[float], bool] | None = None,
    desc: str = "",
    show_progress: bool = False,
) -> float:
    """One pass over ``batches`` (:func:`train_step` per batch); returns the epoch's mean loss per row.

    Args:
        model: the model, trained in place.
        batches: batch dicts with ``label`` and ``mask`` Float[B, T] beside the model inputs.
        optimizer: the model's optimiser.
        criterion: the multi-task loss.
        device: where the model lives; each batch is moved there.
        progress: counters updated in place (steps, rows, training seconds), carried across epochs.
        max_grad_norm: clip the gradient norm to this when set.
        gradnorm_optimizer, shared_parameters: GradNorm's optimiser and the layer it measures.
        eval_every_steps: call ``on_eval`` every that many steps (counted by ``progress``); 0: never.
        on_eval: called with the epoch's mean loss so far; True ends the epoch there. Its time is
            not counted as training time, and the model is put back in training mode after it.
        desc, show_progress: the progress bar's label, and whether to show it.

    Returns:
        The mean weighted loss over the rows trained on in this epoch (0.0 without rows).

    Example::

        >>> from features.spec import demo_spec
        >>> from model.base import random_batch
        >>> from model.registry import build_model
        >>> spec = demo_spec(seq_len=4)
        >>> batch = random_batch(spec, 8)  # cat Long[8, M], seq Long[8, F, 4], label / mask Float[8, T]
        >>> model = build_model("shared_bottom", spec, {"embed_dim": 4, "bottom_hidden": [8]}, seed=0)
        >>> criterion, progress = MultiTaskLoss(spec), TrainProgress()
        >>> optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> loss = train_one_epoch(model, [batch, batch], optimizer, criterion, torch.device("cpu"), progress=progress)
        >>> loss > 0, progress.steps, progress.examples
        (True, 2, 16)
    """
    from tqdm.auto import tqdm

    progress = progress if progress is not None else TrainProgress()
    model.train()
    loss_sum, rows = 0.0, 0
    total = len(batches) if hasattr(batches, "__len__") else None
    bar = tqdm(batches, total=total, desc=desc, disable=not show_progress, leave=False, mininterval=1.0)
    start = time.perf_counter()
    for batch in bar:
        loss, n = train_step(model, batch, criterion, optimizer, device, max_grad_norm, gradnorm_optimizer,
                             shared_parameters)
        progress.steps += 1
        progress.examples += n
        loss_sum += loss * n
        rows += n
        if progress.steps % 10 == 0:
            elapsed = progress.seconds + time.perf_counter() - start
            bar.set_postfix(loss=f"{loss_sum / rows:.4f}", ex_s=f"{progress.examples / max(elapsed, 1e-9):,.0f}")
        if on_eval is not None and eval_every_steps and progress.steps % eval_every_steps == 0:
            progress.seconds += time.perf_counter() - start
            stop = on_eval(loss_sum / max(rows, 1))
            model.train()
            start = time.perf_counter()
            if stop:
                break
    bar.close()
    progress.seconds += time.perf_counter() - start
    return loss_sum / max(rows, 1)


def validate(model: nn.Module, spec: FeatureSpec, valid_batches, device: torch.device, criterion: MultiTaskLoss,
             stopper: EarlyStopper, history: list[dict[str, Any]], progress: TrainProgress, epoch: int,
             train_loss: float) -> bool:
    """Evaluate on ``valid_batches``, append the evaluation to ``history`` and give its mean AUC to
    ``stopper``; True when training should stop."""
    valid = evaluate(model, spec, valid_batches, device)
    entry = {"epoch": epoch, "step": progress.steps, "examples": progress.examples, "valid": valid,
             "train_loss": float(train_loss)}
    if criterion.log_vars is not None:
        entry["log_vars"] = criterion.log_vars.detach().cpu().tolist()
    if criterion.gradnorm_weights is not None:
        entry["gradnorm_weights"] = criterion.gradnorm_weights.detach().cpu().tolist()
    if criterion.pareto_weights is not None:
        entry["pareto_weights"] = criterion.pareto_weights.cpu().tolist()
    history.append(entry)
    log.info("eval epoch %d step %d: valid mean AUC %.4f (best %.4f)", epoch, progress.steps, valid["mtl_auc"],
             stopper.best_score)
    return stopper.step(valid["mtl_auc"], model)


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

    Epochs of :func:`train_one_epoch`, each followed by a validation (or one every
    ``config.eval_every_steps`` steps) that feeds an :class:`EarlyStopper`; the best weights are
    restored at the end and the test set, when given, is evaluated once with them.

    Args:
        model: the model to train (moved to ``config.device``).
        spec: the feature spec of the batches (its tasks define the loss and the metrics).
        train_batches, valid_batches, test_batches: re-iterable sources of batch dicts
            (:class:`model.loaders.ArrowBatches`, :class:`model.loaders.TensorBatches`, or any
            iterable); ``set_epoch`` is called on the training source when it has one. The training
            source shuffles with its own seed.
        config: the training options (:class:`TrainConfig`).
        model_config: stored with the result as given.
    """
    config = config or TrainConfig()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    model.to(device)
    task_weights = resolve_task_weights(spec, config.task_weights)
    criterion = MultiTaskLoss(spec, task_weights, config.uncertainty_weighting, config.gradnorm,
                              config.gradnorm_alpha, config.pareto, config.pareto_fixed_weights).to(device)
    optimizer, gradnorm_optimizer = make_optimizers(model, criterion, config)
    shared = gradnorm_shared_parameters(model) if gradnorm_optimizer is not None or config.pareto else []
    stopper, progress, history = EarlyStopper(config.patience, config.min_delta), TrainProgress(), []

    for epoch in range(config.epochs):
        if hasattr(train_batches, "set_epoch"):
            train_batches.set_epoch(epoch)
        on_eval = functools.partial(validate, model, spec, valid_batches, device, criterion, stopper, history,
                                    progress, epoch)
        train_loss = train_one_epoch(
            model, train_batches, optimizer, criterion, device, progress=progress,
            max_grad_norm=config.max_grad_norm, gradnorm_optimizer=gradnorm_optimizer, shared_parameters=shared,
            eval_every_steps=config.eval_every_steps, on_eval=on_eval,
            desc=f"epoch {epoch + 1}/{config.epochs}", show_progress=config.progress,
        )
        if stopper.should_stop:
            break
        if not config.eval_every_steps and on_eval(train_loss):
            break

    stopper.restore(model)
    best = history[stopper.best_index] if stopper.best_index is not None else None
    metrics: dict[str, Any] = {
        "valid": best["valid"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "best_step": best["step"] if best else None,
        "epochs_run": (history[-1]["epoch"] + 1) if history else 0,
        "steps": progress.steps,
        "train_examples": progress.examples,
        "train_examples_per_s": progress.examples / progress.seconds if progress.seconds else None,
        "parameters": count_parameters(model),
        "device": str(device),
        "task_weights": task_weights,
        "early_stopped": bool(history) and stopper.should_stop,
    }
    if criterion.gradnorm_weights is not None:
        metrics["gradnorm_weights"] = dict(zip([t.name for t in spec.tasks],
                                               criterion.gradnorm_weights.detach().cpu().tolist()))
    if criterion.pareto_weights is not None:  # the last training step's
        metrics["pareto_weights"] = dict(zip([t.name for t in spec.tasks], criterion.pareto_weights.cpu().tolist()))
    if criterion.log_vars is not None:
        metrics["uncertainty_log_vars"] = dict(zip([t.name for t in spec.tasks], criterion.log_vars.detach().cpu().tolist()))
    if test_batches is not None:
        metrics["test"] = evaluate(model, spec, test_batches, device)
    model.eval()
    return TrainResult(model, metrics, history, config, dict(model_config or {}))


def effective_model_config(model_config: dict[str, Any] | None, config: TrainConfig) -> dict[str, Any]:
    """``model_config`` with ``config.dropout`` when that is set."""
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
    """Seed, build ``model_name`` and train it (:func:`train_model`).

    The seed is set here, once (:func:`set_seed` with ``config.seed``), before the model is built, so
    its initial weights follow from it; the training batches shuffle with the seed they were built
    with (callers pass ``config.seed``).

    Args:
        model_name: a name of ``model.registry``.
        spec, train_batches, valid_batches, test_batches, config: as in :func:`train_model`.
        model_config: the model's options; ``config.dropout`` overrides its dropout when set.
        builder: ``(name, spec, model_config) -> nn.Module``; defaults to
            ``model.registry.build_model``.
    """
    if builder is None:
        from model.registry import build_model as builder

    config = config or TrainConfig()
    merged = effective_model_config(model_config, config)
    set_seed(config.seed, config.deterministic)
    model = builder(model_name, spec, merged)
    return train_model(model, spec, train_batches, valid_batches, test_batches, config, merged)
