"""The baselines' defining formulas against hand or explicit-loop computations on the models' own weights.

DCN-V2's cross layer, FM's second-order term, the gating of MMoE / OMoE / PLE (CGC) / STEM, and
STEM's stop-gradient ("all forward, own backward") of the task-specific embeddings.
"""
from __future__ import annotations

import math

import torch

from features.spec import demo_spec
from model.base import random_batch
from model.baselines import DCNv2, DCNv2Config, DeepFM, DeepFMConfig, MMoE, MMoEConfig, OMoE, OMoEConfig, PLEConfig
from model.baselines.dcnv2 import CrossLayerV2
from model.baselines.ple import CGCLevel
from model.baselines.stem import STEM, STEMConfig
from field_spy import fields_of

SPEC = demo_spec(seq_len=4)
SMALL = dict(embed_dim=4, tower_hidden=(3,), dropout=0.0)


def softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


def linear(x: list[float], layer: torch.nn.Linear) -> list[float]:
    w, b = layer.weight.tolist(), layer.bias.tolist()
    return [sum(w[o][i] * x[i] for i in range(len(x))) + b[o] for o in range(len(w))]


def tower_inputs(model, batch) -> torch.Tensor:
    """What the task towers receive (captured by a hook): ``[B, D]`` or ``[B, T, D]``."""
    seen = {}
    handle = model.towers.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model(batch)
    handle.remove()
    return seen["x"]


def test_dcnv2_cross_layer_is_x0_times_w_x_plus_b_plus_x_by_hand():
    layer = CrossLayerV2(2)
    with torch.no_grad():
        layer.w.weight.copy_(torch.tensor([[1.0, 2.0], [0.5, -1.0]]))
        layer.w.bias.copy_(torch.tensor([0.1, -0.2]))
    x0, x = torch.tensor([[2.0, 3.0]]), torch.tensor([[1.0, -1.0]])
    # W x + b = [1 - 2 + 0.1, 0.5 + 1 - 0.2] = [-0.9, 1.3]; x0 * that + x = [-1.8 + 1, 3.9 - 1]
    torch.testing.assert_close(layer(x0, x), torch.tensor([[-0.8, 2.9]]))
    low = CrossLayerV2(3, low_rank=1)
    with torch.no_grad():
        low.w[0].weight.copy_(torch.tensor([[1.0, 0.0, 2.0]]))  # V^T
        low.w[1].weight.copy_(torch.tensor([[1.0], [-1.0], [0.5]]))  # U
        low.w[1].bias.zero_()
    x0, x = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 1.0, 1.0]])
    # U V^T x = [3, -3, 1.5]
    torch.testing.assert_close(low(x0, x), torch.tensor([[4.0, -5.0, 5.5]]))


def test_dcnv2_stacks_its_cross_layers_on_x0():
    model = DCNv2(SPEC, DCNv2Config(**SMALL, n_cross_layers=2, deep_hidden=(5,), structure="stacked")).eval()
    batch = random_batch(SPEC, 3, seed=1)
    x0 = fields_of(model, batch).flatten(1)
    x = x0
    for layer in model.cross:
        x = x0 * (x @ layer.w.weight.T + layer.w.bias) + x
    torch.testing.assert_close(tower_inputs(model, batch), model.deep(x))


def test_fm_second_order_term_is_the_sum_over_field_pairs():
    model = DeepFM(SPEC, DeepFMConfig(**SMALL, deep_hidden=(5,))).eval()
    batch = random_batch(SPEC, 2, seed=2)
    v = fields_of(model, batch)  # [B, n, e]
    n = v.shape[1]
    pairs = torch.zeros(v.shape[0], v.shape[2])
    for i in range(n):
        for j in range(i + 1, n):
            pairs += v[:, i] * v[:, j]  # sum_{i<j} <v_i, v_j>, kept per embedding dimension
    with torch.no_grad():
        first = model.first_order(batch["cat"]).sum(1)
        deep = model.towers(model.deep(v.flatten(1)))
        out = model(batch)
    # fm_weight starts at 1: each task adds the classic FM scalar sum_{i<j} <v_i, v_j>
    torch.testing.assert_close(out, first + pairs.sum(-1, keepdim=True) + deep, atol=1e-5, rtol=1e-5)


def test_mmoe_each_task_mixes_the_experts_with_its_own_softmax_gate():
    model = MMoE(SPEC, MMoEConfig(**SMALL, n_experts=3, expert_hidden=(5,))).eval()
    batch = random_batch(SPEC, 2, seed=3)
    x = fields_of(model, batch).flatten(1)
    mixed = tower_inputs(model, batch)  # [B, T, H]
    n_tasks, n_experts = len(SPEC.tasks), 3
    with torch.no_grad():
        experts = [e(x) for e in model.experts]
        for b in range(x.shape[0]):
            logits = linear(x[b].tolist(), model.gates)  # task t's gate: rows t*E .. t*E + E - 1
            for t in range(n_tasks):
                w = softmax(logits[t * n_experts:(t + 1) * n_experts])
                want = sum(w[k] * experts[k][b] for k in range(n_experts))
                torch.testing.assert_close(mixed[b, t], want)
    assert not torch.allclose(mixed[:, 0], mixed[:, 1])  # different gates, different mixtures


def test_omoe_one_gate_is_shared_by_every_task():
    model = OMoE(SPEC, OMoEConfig(**SMALL, n_experts=3, expert_hidden=(5,))).eval()
    batch = random_batch(SPEC, 2, seed=4)
    x = fields_of(model, batch).flatten(1)
    mixed = tower_inputs(model, batch)  # [B, H]: one mixture for all towers
    with torch.no_grad():
        experts = [e(x) for e in model.experts]
        for b in range(x.shape[0]):
            w = softmax(linear(x[b].tolist(), model.gate))
            torch.testing.assert_close(mixed[b], sum(w[k] * experts[k][b] for k in range(3)))
    assert mixed.dim() == 2


def test_cgc_level_gates_own_and_shared_experts_and_the_shared_gate_all_of_them():
    torch.manual_seed(0)
    cfg = PLEConfig(**SMALL, n_shared_experts=2, n_task_experts=2, expert_hidden=(5,))
    level = CGCLevel(6, n_tasks=3, cfg=cfg, last=False).eval()
    xs = [torch.randn(2, 6) for _ in range(3)]
    shared_in = torch.randn(2, 6)
    with torch.no_grad():
        outs, shared_out = level(xs, shared_in)
        shared = [e(shared_in) for e in level.shared_experts]
        own = [[e(x) for e in experts] for experts, x in zip(level.task_experts, xs)]
        for b in range(2):
            for t in range(3):
                w = softmax(linear(xs[t][b].tolist(), level.task_gates[t]))
                pool = [o[b] for o in own[t]] + [s[b] for s in shared]  # own experts first, then shared
                torch.testing.assert_close(outs[t][b], sum(wk * p for wk, p in zip(w, pool)))
            w = softmax(linear(shared_in[b].tolist(), level.shared_gate))
            pool = [o[b] for task in own for o in task] + [s[b] for s in shared]
            torch.testing.assert_close(shared_out[b], sum(wk * p for wk, p in zip(w, pool)))


def test_stem_gate_reads_own_plus_shared_embeddings_and_mixes_every_expert():
    model = STEM(SPEC, STEMConfig(**SMALL, expert_hidden=(5,), n_task_experts=1, n_shared_experts=2)).eval()
    batch = random_batch(SPEC, 2, seed=5)
    fields = fields_of(model, batch)  # [B, n, e (T + 1)]
    e, n_tasks = SMALL["embed_dim"], len(SPEC.tasks)
    assert fields.shape[-1] == e * (n_tasks + 1)
    slices = [fields[:, :, k * e:(k + 1) * e].flatten(1) for k in range(n_tasks + 1)]  # task 0..T-1, shared
    layer = model.layers[0]
    mixed = tower_inputs(model, batch)  # [B, T, H]
    with torch.no_grad():
        own = [layer.task_experts[t][0](slices[t]) for t in range(n_tasks)]
        shared = [s(slices[-1]) for s in layer.shared_experts]
        for b in range(2):
            for t in range(n_tasks):
                gate_in = (slices[t][b] + slices[-1][b]).tolist()
                w = softmax(linear(gate_in, layer.task_gates[t][-1]))  # a linear gate by default
                pool = [o[b] for o in own] + [s[b] for s in shared]
                torch.testing.assert_close(mixed[b, t], sum(wk * p for wk, p in zip(w, pool)))


def test_stem_a_task_loss_trains_its_own_and_the_shared_embeddings_only():
    model = STEM(SPEC, STEMConfig(**SMALL, expert_hidden=(5,))).train()  # one layer, the default
    batch = random_batch(SPEC, 6, seed=6)
    e, n_tasks = SMALL["embed_dim"], len(SPEC.tasks)
    task = 1
    model(batch)[:, task].sum().backward()
    table_grad = torch.cat([t.weight.grad for t in model.cat_embedding.tables])  # rows x e (T + 1)
    per_slice = [table_grad[:, k * e:(k + 1) * e].abs().sum().item() for k in range(n_tasks + 1)]
    assert per_slice[task] > 0 and per_slice[-1] > 0  # own and shared embeddings learn from task 1
    assert all(per_slice[k] == 0 for k in range(n_tasks) if k != task), per_slice  # the others do not
    for t in range(n_tasks):
        grads = [p.grad for p in model.layers[-1].task_experts[t].parameters()]
        reached = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert reached == (t == task), t  # other tasks' experts are read forward, never updated
    # ... and yet task 1's prediction depends on task 0's experts (all forward)
    with torch.no_grad():
        before = model.eval()(batch)[:, task].clone()
        last_linear = [m for m in model.layers[-1].task_experts[0].modules() if isinstance(m, torch.nn.Linear)][-1]
        last_linear.bias.add_(1.0)
        assert (model(batch)[:, task] - before).abs().max() > 1e-6
