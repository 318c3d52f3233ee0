"""The multi-task loss: masked task losses and their weights (fixed, uncertainty, GradNorm, Pareto).

The training loop (:mod:`model.train`) builds one :class:`MultiTaskLoss` from its ``TrainConfig``.

Loss (INFNet.md "Heads and loss"): ``L = Σ_i λ_i L_i`` over the spec's tasks, with ``L_i`` the
BCE-with-logits of a binary task or the MSE of a regression task, each averaged over the rows whose
``mask_<task>`` is set. ``λ_i`` = ``task_weights.get(name, 1.0)`` over :data:`DEFAULT_TASK_WEIGHTS`
(``like`` = 10 where the spec has a ``like`` task; see :func:`resolve_task_weights`). With
``uncertainty_weighting`` (Kendall et al. 2018) a learnable ``s_i = log σ_i²`` per task turns the
sum into ``Σ λ_i (c_i e^{-s_i} L_i + s_i / 2)``, ``c_i`` = 1 for binary and 1/2 for regression tasks.
With ``gradnorm`` (Chen et al. 2018) the weights ``w_i`` (starting at ``λ_i``) are learned by a second
Adam (``gradnorm_lr``) so that each task's gradient norm on the model's last shared layer,
``G_i = ||∇_W w_i L_i||`` (``RankingModel.last_shared_parameters``, :func:`gradnorm_shared_parameters`),
tracks the mean norm scaled by the task's relative inverse training rate: ``L_grad = Σ_i |G_i - mean(G)
r_i^α|``, ``r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0))``, the target held constant; after each step
``w`` is renormalised to ``Σ λ_i``. The network itself trains on ``Σ w_i L_i`` with ``w`` held constant.
With ``pareto`` (MGDA-UB, Sener & Koltun 2018; the solver is below) each step's weights are the
min-norm point of the convex hull of the task gradients on the same last shared parameters
(parameters, as GradNorm, not the shared layer's output: every model names them), scaled to sum to
``Σ λ_i``; ``pareto_fixed_weights`` says how the fixed weights enter: ``"scale"`` (default) solves on
``λ_i ∇L_i`` and weights ``∝ a_i λ_i``, ``"sum"`` solves on the raw ``∇L_i`` and keeps only ``Σ λ_i``.
The network trains on ``Σ w_i L_i`` with ``w`` held constant. The three options exclude each other.

The Pareto weights come from MGDA-UB's min-norm solver (Sener & Koltun, NeurIPS 2018). MGDA looks
for a descent direction common to every task: the point of minimum norm in the convex hull of the
task gradients, ``min_{a in simplex} ||sum_i a_i g_i||^2``. It is 0 at a Pareto-stationary point,
and otherwise ``-sum_i a_i g_i`` decreases every task's loss. MGDA-UB computes the ``g_i`` on a
shared layer only (the paper: on the shared representation, an upper bound of the full
problem), which costs one backward pass through that layer per task; :class:`MultiTaskLoss` takes
them on the model's last shared parameters, the layer GradNorm measures.

The solver works on the ``T x T`` Gram matrix ``M_ij = <g_i, g_j>``: two tasks have the closed
form ``a_1 = clip(<g_2 - g_1, g_2> / ||g_1 - g_2||^2, 0, 1)`` (:func:`min_norm_two`); more use
Frank-Wolfe as in the paper (start from the best pair, then move towards the vertex of the
smallest ``(M a)_t`` with the two-point line search, at most 250 steps), finished by Wolfe's
min-norm-point steps (project on the affine hull of the support, drop the vertices that leave the
simplex, add the Frank-Wolfe vertex while it improves), which end at the exact minimum: Frank-Wolfe
alone converges sublinearly and stopped up to 5 % above it on random 4-5 task problems
(:func:`min_norm_weights`).

>>> min_norm_weights(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).tolist()  # two orthogonal unit gradients
[0.5, 0.5]
>>> g = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # g1 already is the hull's point closest to 0
>>> min_norm_weights(g @ g.T).tolist()
[1.0, 0.0]
>>> mgda_weights(g, torch.tensor([1.0, 10.0]), "sum").tolist()  # scaled to the fixed weights' sum
[11.0, 0.0]
"""
from __future__ import annotations

import argparse
from typing import Literal, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from features.spec import FeatureSpec

ParetoFixedWeights = Literal["scale", "sum"]
PARETO_FIXED_WEIGHTS: tuple[str, ...] = ("scale", "sum")

# Loss weights of the tasks a spec may have, chosen on the validation day of the bundled KuaiRand data
# (README, "Accuracy"): like is ~1.7 % positive and, weighted 1, only learns the users' like
# propensity after click and long_view have begun to overfit; at 10 all three peak in the same
# epoch (INFNet mean valid AUC .7522 at weight 1 after 4 epochs, .7725 at 5, .7755 at 10, .7758 at 20).
DEFAULT_TASK_WEIGHTS: dict[str, float] = {"like": 10.0}


def parse_task_weight(value: str) -> tuple[str, float]:
    """``like=10`` -> ("like", 10.0); a weight that is not a number is a usage error (the type of the
    ``--task-weight`` flag of jobs/train.py and bench/accuracy.py).

    >>> parse_task_weight("like=10")
    ('like', 10.0)
    """
    task, sep, raw = value.partition("=")
    try:
        if sep and task:
            return task, float(raw)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected TASK=NUMBER, got {value!r}")


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


# =============================================================================================
# The loss
# =============================================================================================

class MultiTaskLoss(nn.Module):
    """Masked per-task losses combined with fixed weights, learned uncertainty weights, GradNorm
    weights (``gradnorm=True``: the weights are a parameter that :meth:`gradnorm_loss` trains), or
    Pareto weights (``pareto=True``: a buffer that :meth:`pareto_loss` sets every step)."""

    def __init__(self, spec: FeatureSpec, task_weights: dict[str, float] | None = None,
                 uncertainty_weighting: bool = False, gradnorm: bool = False, gradnorm_alpha: float = 1.5,
                 pareto: bool = False, pareto_fixed_weights: str = "scale") -> None:
        super().__init__()
        if uncertainty_weighting + gradnorm + pareto > 1:
            raise ValueError("choose one of uncertainty weighting, GradNorm and Pareto (MGDA-UB) weighting")
        if pareto_fixed_weights not in PARETO_FIXED_WEIGHTS:
            raise ValueError(f"pareto_fixed_weights must be one of {PARETO_FIXED_WEIGHTS}, not {pareto_fixed_weights!r}")
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
        self.register_buffer("pareto_weights", initial.clone() if pareto else None)  # the last step's weights
        self.pareto_fixed_weights = pareto_fixed_weights

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
        if self.pareto_weights is not None:
            return (self.pareto_weights * losses).sum(), losses
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

    def pareto_loss(self, losses: torch.Tensor, shared: list[nn.Parameter]) -> torch.Tensor:
        """MGDA-UB for this step's per-task ``losses`` (their graph is kept): sets
        :attr:`pareto_weights` from the task gradients on the ``shared`` weights
        (:func:`mgda_weights`) and returns ``Σ w_i L_i`` with ``w`` held constant."""
        if not shared:
            raise ValueError("Pareto weighting needs the model's last shared parameters")
        grads = task_gradients(losses, shared)
        self.pareto_weights.copy_(mgda_weights(grads.detach(), self.weights, self.pareto_fixed_weights))
        return (self.pareto_weights * losses).sum()

    @torch.no_grad()
    def renormalise_gradnorm(self) -> None:
        """Keep the GradNorm weights positive and summing to ``Σ λ_i``."""
        w = self.gradnorm_weights
        w.clamp_(min=1e-3)
        w.mul_(self.weights.sum() / w.sum())


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


# =============================================================================================
# MGDA-UB's min-norm solver
# =============================================================================================

def min_norm_two(g11: float, g12: float, g22: float) -> float:
    """``a`` minimising ``||a g_1 + (1 - a) g_2||^2`` over ``[0, 1]`` from ``<g1,g1>, <g1,g2>, <g2,g2>``."""
    if g12 >= g11:  # g1 is the closest point of the segment (g1 == g2 included)
        return 1.0
    if g12 >= g22:
        return 0.0
    return (g22 - g12) / (g11 - 2.0 * g12 + g22)


def _norm(gram: Tensor, a: Tensor) -> float:
    return float(a @ gram @ a)


def _affine_min_norm(gram: Tensor, support: Tensor) -> Tensor:
    """``b [T]`` (0 off ``support``, ``sum b = 1``): the min-norm point of the affine hull of the
    support's gradients, from the KKT system ``[[M_SS, 1], [1^T, 0]] [b; mu] = [0; 1]``
    (least squares, so affinely dependent gradients give one of the equivalent solutions)."""
    idx = support.nonzero().flatten()
    k = len(idx)
    system = gram.new_zeros((k + 1, k + 1))
    system[:k, :k] = gram[idx][:, idx]
    system[:k, k] = 1.0
    system[k, :k] = 1.0
    rhs = gram.new_zeros((k + 1, 1))
    rhs[k] = 1.0
    out = gram.new_zeros(gram.shape[0])
    out[idx] = torch.linalg.lstsq(system, rhs).solution.flatten()[:k]
    return out


def _wolfe_finish(gram: Tensor, a: Tensor, max_iter: int = 100) -> Tensor:
    """Wolfe's (1976) min-norm-point steps from the simplex point ``a``: project on the affine hull
    of the support, step back to the simplex when that leaves it (dropping the vertex that hits 0),
    and add the Frank-Wolfe vertex ``argmin_t (M a)_t`` while it improves; exact in finitely many steps."""
    eps = 1e-12 * max(float(gram.diagonal().max()), 1e-30)
    support = a > 0
    for _ in range(max_iter):
        for _ in range(gram.shape[0] + 1):  # minor cycles
            b = _affine_min_norm(gram, support)
            if not torch.isfinite(b).all():
                return a
            if bool((b[support] > 0).all()):
                a = b
                break
            shrinking = support & (b <= 0)
            theta = float((a[shrinking] / (a[shrinking] - b[shrinking])).min())
            a = (a + theta * (b - a)).clamp_min(0.0)
            a[shrinking & (a <= eps)] = 0.0
            a = a / a.sum()
            support = a > 0
        direction = gram @ a
        k = int(direction.argmin())
        if support[k] or float(direction[k]) >= float(a @ direction) - eps:
            break  # optimal: no vertex makes an angle > 90 degrees with the current point
        support[k] = True
    return a


def min_norm_weights(gram: Tensor, max_iter: int = 250, tol: float = 1e-10) -> Tensor:
    """The simplex weights ``a [T]`` of the min-norm point of the gradients whose Gram matrix is
    ``gram [T, T]`` (computed in float64 on the CPU: the matrix is tiny and CUDA's least squares
    assumes full rank; returned in ``gram``'s dtype and device).

    >>> g = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    >>> [round(x, 4) for x in min_norm_weights(g @ g.T).tolist()]  # a_i proportional to 1 / ||g_i||^2
    [0.6667, 0.1667, 0.1667]
    """
    m = gram.detach().double().cpu()
    t = m.shape[0]
    if t == 1:
        return torch.ones(1, dtype=gram.dtype, device=gram.device)
    best = None
    for i in range(t):  # the best pair starts Frank-Wolfe (and is the answer for two tasks)
        for j in range(i + 1, t):
            a = min_norm_two(float(m[i, i]), float(m[i, j]), float(m[j, j]))
            cost = a * a * float(m[i, i]) + 2 * a * (1 - a) * float(m[i, j]) + (1 - a) ** 2 * float(m[j, j])
            if best is None or cost < best[0]:
                best = (cost, i, j, a)
    _, i, j, a = best
    sol = m.new_zeros(t)
    sol[i], sol[j] = a, 1.0 - a
    if t > 2:
        for _ in range(max_iter):
            direction = m @ sol
            k = int(direction.argmin())
            gamma = min_norm_two(float(sol @ direction), float(direction[k]), float(m[k, k]))
            new = gamma * sol
            new[k] += 1.0 - gamma
            change = float((new - sol).abs().sum())
            sol = new
            if change < tol:
                break
        finished = _wolfe_finish(m, sol)
        if _norm(m, finished) <= _norm(m, sol):
            sol = finished
    return sol.to(device=gram.device, dtype=gram.dtype)


def task_gradients(losses: Tensor, parameters: Sequence[nn.Parameter]) -> Tensor:
    """``[T, D]``: each task's gradient on ``parameters``, flattened (zeros for a task whose loss has
    no gradient this step, e.g. no labelled row). The graph of ``losses`` is kept."""
    rows = []
    for loss in losses:
        grads = (torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
                 if loss.requires_grad else [None] * len(parameters))
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                               for g, p in zip(grads, parameters)]))
    return torch.stack(rows)


def mgda_weights(grads: Tensor, fixed: Tensor, fixed_weights: ParetoFixedWeights = "scale") -> Tensor:
    """MGDA-UB loss weights ``[T]`` from the task gradients ``grads [T, D]`` and the fixed weights ``λ``.

    ``fixed_weights="scale"``: the min-norm point of the ``λ``-scaled gradients ``λ_i g_i`` (the fixed
    weights are a preference the solver starts from), loss weights ``∝ a_i λ_i``; ``"sum"``: the
    min-norm point of the raw gradients, loss weights ``∝ a_i``. Either way the weights are scaled
    to sum to ``Σ λ`` (the number of tasks when every ``λ`` is 1, as GradNorm renormalises).
    Tasks with a zero gradient are left out of the solve and get weight 0; when every task's is
    zero, the fixed weights are returned.
    """
    if fixed_weights not in PARETO_FIXED_WEIGHTS:
        raise ValueError(f"pareto_fixed_weights must be one of {PARETO_FIXED_WEIGHTS}, not {fixed_weights!r}")
    fixed = fixed.to(grads.dtype)
    g = grads * fixed.unsqueeze(1) if fixed_weights == "scale" else grads
    active = g.norm(dim=1) > 0
    if not bool(active.any()):
        return fixed.clone()
    alpha = torch.zeros_like(fixed)
    ga = g[active]
    alpha[active] = min_norm_weights(ga @ ga.T)
    w = alpha * fixed if fixed_weights == "scale" else alpha
    return w * (fixed.sum() / w.sum())
