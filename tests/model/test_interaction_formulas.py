"""The interaction models' defining formulas against hand computations and explicit loops on tiny tensors.

FM's pairwise term against the double sum, one CIN layer against a loop, AFM's attention pooling,
PNN's inner products, FiBiNET's bilinear interaction and SENET's reweighting, NFM's Bi-Interaction
pooling, one GDCN gated cross layer, one AutoInt interacting layer, the Wide & Deep wide part, CGC
as one PLE level, and MGDA-UB's min-norm weights (two known gradients, a brute-force grid for three).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch

from features.spec import DenseField, demo_spec
from model.base import random_batch
from model.baselines import AFM, CGC, FM, NFM, PNN, AFMConfig, CGCConfig, FiBiNET, FiBiNETConfig, FMConfig, NFMConfig
from model.baselines import PNNConfig, WideDeep, WideDeepConfig, XDeepFM, XDeepFMConfig
from model.baselines.afm import AttentionPairPooling
from model.baselines.autoint import InteractingLayer
from model.baselines.fibinet import BilinearInteraction, SENet
from model.baselines.fm import bi_interaction
from model.baselines.gdcn import GatedCrossLayer
from model.baselines.xdeepfm import CIN, CINLayer
from model.losses import mgda_weights, min_norm_two, min_norm_weights
from model.registry import build_model
from field_spy import fields_of

SPEC = demo_spec(seq_len=4)
DENSE_SPEC = replace(SPEC, dense=(DenseField("user_n_prior_log1p", "user"), DenseField("video_like_rate_logit", "item")))
SMALL = dict(embed_dim=4, dropout=0.0)


def input_of(module, model, batch) -> torch.Tensor:
    """What ``module`` (a part of ``model``) receives in ``model(batch)``."""
    seen = {}
    handle = module.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model(batch)
    handle.remove()
    return seen["x"]


def randomise_(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)


# =============================================================================================
# FM, NFM, Wide & Deep
# =============================================================================================

def test_fm_pairwise_term_is_the_double_sum_and_each_task_starts_as_the_classic_fm():
    model = FM(SPEC, FMConfig(**SMALL)).eval()
    batch = random_batch(SPEC, 3, seed=1)
    v = fields_of(model, batch)  # [B, n, e]: 6 categorical fields + 3 pooled sequences
    b, n, _ = v.shape
    assert n == 9
    double_sum = torch.zeros(b)
    for i in range(n):
        for j in range(i + 1, n):
            double_sum += (v[:, i] * v[:, j]).sum(-1)  # <v_i, v_j>
    with torch.no_grad():
        first = model.first_order(batch["cat"]).sum(1)  # [B, T]: one scalar per value and task
        out = model(batch)
    torch.testing.assert_close(bi_interaction(v).sum(-1), double_sum, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, first + double_sum[:, None], atol=1e-6, rtol=1e-5)


def test_nfm_bi_interaction_pooling_is_the_sum_of_pairwise_products_fed_to_the_mlp():
    model = NFM(SPEC, NFMConfig(**SMALL, deep_hidden=(5,))).eval()
    batch = random_batch(SPEC, 2, seed=2)
    v = fields_of(model, batch)
    pooled = torch.zeros(v.shape[0], v.shape[2])
    for i, j in itertools.combinations(range(v.shape[1]), 2):
        pooled += v[:, i] * v[:, j]  # element-wise, kept per dimension
    torch.testing.assert_close(input_of(model.deep, model, batch), pooled, atol=1e-6, rtol=1e-5)
    # by hand on three 2-d fields: (1,2)(3,.5) + (1,2)(-1,1) + (3,.5)(-1,1) = (3-1-3, 1+2+.5)
    torch.testing.assert_close(bi_interaction(torch.tensor([[[1.0, 2.0], [3.0, 0.5], [-1.0, 1.0]]])),
                               torch.tensor([[-1.0, 3.5]]))


def test_wide_and_deep_wide_part_is_the_linear_model_over_ids_crosses_and_dense_values():
    cfg = WideDeepConfig(**SMALL, deep_hidden=(5,), wide_crosses=(("user_id", "video_id"),), cross_buckets=7)
    model = WideDeep(DENSE_SPEC, cfg).eval()
    randomise_(model.first_order, 1)
    randomise_(model.cross_tables, 2)
    batch = random_batch(DENSE_SPEC, 3, seed=3)
    names = [c.name for c in DENSE_SPEC.categorical]
    u, v = names.index("user_id"), names.index("video_id")
    with torch.no_grad():
        out = model(batch)
        deep = model.towers(model.deep(fields_of(model, batch).flatten(1)))
        tables = model.first_order
        for row in range(3):
            want = torch.zeros(len(DENSE_SPEC.tasks))
            for m, c in enumerate(batch["cat"][row].tolist()):  # one weight per (field, value) and task
                want += tables(torch.tensor([[c]]), [m])[0, 0]
            cross = (batch["cat"][row, u].item() * 51 + batch["cat"][row, v].item()) % 7  # video_id has 51 buckets
            want += model.cross_tables[0].weight[cross]
            want += model.first_order_dense.weight @ batch["dense"][row]
            torch.testing.assert_close(out[row] - deep[row], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="wide_crosses"):
        WideDeep(SPEC, WideDeepConfig(wide_crosses=(("user_id", "nope"),)))


# =============================================================================================
# xDeepFM
# =============================================================================================

def test_one_cin_layer_against_a_loop():
    torch.manual_seed(0)
    layer = CINLayer(n_prev=2, n_fields=3, n_maps=2)
    x_prev, x0 = torch.randn(2, 2, 4), torch.randn(2, 3, 4)
    out = layer(x_prev, x0)
    w = layer.weight.detach()
    for b in range(2):
        for h in range(2):
            for d in range(4):
                want = sum(w[h, i, j].item() * x_prev[b, i, d].item() * x0[b, j, d].item()
                           for i in range(2) for j in range(3))
                assert out[b, h, d].item() == pytest.approx(want, abs=1e-5)


def test_cin_split_half_feeds_half_the_maps_on_and_sum_pools_the_rest():
    torch.manual_seed(1)
    cin = CIN(n_fields=3, layer_sizes=(4, 2), split_half=True)
    x0 = torch.randn(2, 3, 5)
    with torch.no_grad():
        x1 = cin.layers[0](x0, x0)  # [2, 4, 5]
        x2 = cin.layers[1](x1[:, :2], x0)  # the first half goes on
        want = torch.cat([x1[:, 2:].sum(-1), x2.sum(-1)], dim=-1)  # the second half and the last layer pooled
        torch.testing.assert_close(cin(x0), want)
    assert cin.out_dim == 4
    model = XDeepFM(SPEC, XDeepFMConfig(**SMALL, cin_layers=(4, 2), deep_hidden=(5,))).eval()
    assert model.cin.layers[1].weight.shape == (2, 2, 9)  # H_2 x H_1/2 x n


# =============================================================================================
# AFM, PNN, FiBiNET
# =============================================================================================

def test_afm_attention_pooling_by_hand():
    pool = AttentionPairPooling(dim=2, attention_dim=2)
    with torch.no_grad():
        pool.attention[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        pool.attention[0].bias.copy_(torch.tensor([0.0, 0.5]))
        pool.attention[2].weight.copy_(torch.tensor([[2.0, 1.0]]))
    v = [[1.0, 2.0], [3.0, 0.5], [-1.0, 1.0]]
    products, scores = [], []
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        p = [v[i][0] * v[j][0], v[i][1] * v[j][1]]  # (3, 1), (-1, 2), (-3, .5)
        hidden = [max(p[0], 0.0), max(-p[1] + 0.5, 0.0)]  # ReLU(W p + b)
        products.append(p)
        scores.append(2.0 * hidden[0] + 1.0 * hidden[1])  # h^T hidden: 6, 0, 0
    e = [math.exp(s) for s in scores]
    a = [x / sum(e) for x in e]
    want = [sum(a[k] * products[k][d] for k in range(3)) for d in range(2)]
    torch.testing.assert_close(pool(torch.tensor([v])), torch.tensor([want]))
    model = AFM(SPEC, AFMConfig(**SMALL)).eval()  # the default tower is the paper's linear p^T f
    assert all(len(list(t.children())) == 1 for t in model.towers.towers)


def test_pnn_product_layer_holds_the_fields_and_their_inner_products():
    model = PNN(SPEC, PNNConfig(**SMALL, deep_hidden=(5,))).eval()
    batch = random_batch(SPEC, 2, seed=4)
    v = fields_of(model, batch)
    n = v.shape[1]
    inner = [[sum(v[b, i, d].item() * v[b, j, d].item() for d in range(v.shape[2]))
              for i in range(n) for j in range(i + 1, n)] for b in range(2)]
    got = input_of(model.deep, model, batch)  # l_1 reads [z, p]
    assert got.shape == (2, n * 4 + n * (n - 1) // 2)
    torch.testing.assert_close(got[:, :n * 4], v.flatten(1))
    torch.testing.assert_close(got[:, n * 4:], torch.tensor(inner), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["field_all", "field_each", "field_interaction"])
def test_fibinet_bilinear_interaction_against_a_loop(kind):
    torch.manual_seed(2)
    layer = BilinearInteraction(n_fields=3, dim=2, kind=kind)
    x = torch.randn(2, 3, 2)
    out = layer(x)
    w = layer.weight.detach()
    for p, (i, j) in enumerate([(0, 1), (0, 2), (1, 2)]):
        weight = w[0] if kind == "field_all" else w[i] if kind == "field_each" else w[p]
        for b in range(2):
            for f in range(2):
                want = sum(x[b, i, e].item() * weight[e, f].item() for e in range(2)) * x[b, j, f].item()
                assert out[b, p, f].item() == pytest.approx(want, abs=1e-6)


def test_senet_squeezes_by_the_mean_excites_and_reweights_each_field():
    senet = SENet(n_fields=3, reduction_ratio=3)  # one hidden unit
    with torch.no_grad():
        senet.excitation[0].weight.copy_(torch.tensor([[1.0, -1.0, 2.0]]))
        senet.excitation[2].weight.copy_(torch.tensor([[1.0], [-2.0], [0.5]]))
    x = torch.tensor([[[1.0, 3.0], [4.0, 0.0], [1.0, 1.0]]])  # means 2, 2, 1
    # W_1 z = 2 - 2 + 2 = 2 -> ReLU 2; W_2 -> (2, -4, 1) -> ReLU (2, 0, 1)
    torch.testing.assert_close(senet.weights(x), torch.tensor([[2.0, 0.0, 1.0]]))
    torch.testing.assert_close(senet(x), torch.tensor([[[2.0, 6.0], [0.0, 0.0], [1.0, 1.0]]]))


def test_fibinet_feeds_both_bilinear_outputs_to_the_shared_mlp():
    model = FiBiNET(SPEC, FiBiNETConfig(**SMALL, deep_hidden=(5,))).eval()
    batch = random_batch(SPEC, 2, seed=5)
    v = fields_of(model, batch)
    with torch.no_grad():
        want = torch.cat([model.bilinear_raw(v), model.bilinear_senet(model.senet(v))], dim=1).flatten(1)
    torch.testing.assert_close(input_of(model.deep, model, batch), want)
    assert want.shape == (2, 2 * 36 * 4)


# =============================================================================================
# GDCN, AutoInt, CGC
# =============================================================================================

def test_gdcn_gated_cross_layer_by_hand():
    layer = GatedCrossLayer(2)
    with torch.no_grad():
        layer.cross.weight.copy_(torch.tensor([[1.0, 2.0], [0.5, -1.0]]))
        layer.cross.bias.copy_(torch.tensor([0.1, -0.2]))
        layer.gate.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    x0, x = torch.tensor([[2.0, 3.0]]), torch.tensor([[1.0, -1.0]])
    # W_c x + b = (-0.9, 1.3); W_g x = (0, 0) -> gates (0.5, 0.5); x0 * cross * gate + x
    torch.testing.assert_close(layer(x0, x), torch.tensor([[2.0 * -0.9 * 0.5 + 1.0, 3.0 * 1.3 * 0.5 - 1.0]]))
    with torch.no_grad():
        layer.gate.weight.fill_(-100.0)  # a closed gate keeps only the residual
    torch.testing.assert_close(layer(x0, torch.tensor([[1.0, 1.0]])), torch.tensor([[1.0, 1.0]]))


def test_autoint_interacting_layer_against_a_loop():
    torch.manual_seed(3)
    layer = InteractingLayer(in_dim=3, head_dim=2, n_heads=2, residual=True)
    x = torch.randn(2, 4, 3)
    out = layer(x)
    wq, wk, wv, wr = (m.weight.detach() for m in (layer.query, layer.key, layer.value, layer.residual))
    for b in range(2):
        for m in range(4):
            heads = []
            for h in range(2):
                rows = slice(2 * h, 2 * h + 2)
                q = wq[rows] @ x[b, m]
                scores = [float(q @ (wk[rows] @ x[b, k])) for k in range(4)]  # unscaled, as in the paper
                e = [math.exp(s - max(scores)) for s in scores]
                heads.append(sum((e[k] / sum(e)) * (wv[rows] @ x[b, k]) for k in range(4)))
            want = torch.relu(torch.cat(heads) + wr @ x[b, m])
            torch.testing.assert_close(out[b, m], want, atol=1e-5, rtol=1e-5)


def test_cgc_is_ple_with_one_level_and_no_shared_gate():
    cgc = build_model("cgc", SPEC, seed=0).eval()
    ple = build_model("ple", SPEC, {"n_levels": 1}, seed=0).eval()
    batch = random_batch(SPEC, 4, seed=6)
    assert isinstance(cgc, CGC) and len(cgc.levels) == 1 and cgc.levels[0].shared_gate is None
    torch.testing.assert_close(cgc(batch), ple(batch), rtol=0, atol=0)
    with pytest.raises(ValueError, match="one extraction level"):
        CGCConfig(n_levels=2)


# =============================================================================================
# MGDA-UB
# =============================================================================================

def test_mgda_two_known_gradients():
    unit = torch.eye(2)
    torch.testing.assert_close(min_norm_weights(unit @ unit.T), torch.tensor([0.5, 0.5]))  # orthogonal unit
    g = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    torch.testing.assert_close(min_norm_weights(g @ g.T), torch.tensor([1.0, 0.0]))  # all weight on g1
    torch.testing.assert_close(min_norm_weights((g.flip(0)) @ g.flip(0).T), torch.tensor([0.0, 1.0]))
    # inside the segment: g1 = (1, 0), g2 = (0, 2): a = <g2 - g1, g2> / ||g1 - g2||^2 = 4 / 5
    assert min_norm_two(1.0, 0.0, 4.0) == pytest.approx(0.8)
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(min_norm_weights(g @ g.T), torch.tensor([0.8, 0.2]))
    # opposite gradients: the hull holds 0, reached at a = (2/3, 1/3) for g1 = (1, 0), g2 = (-2, 0)
    g = torch.tensor([[1.0, 0.0], [-2.0, 0.0]])
    a = min_norm_weights(g @ g.T)
    torch.testing.assert_close(a, torch.tensor([2 / 3, 1 / 3]))
    assert (a @ g).norm() < 1e-6


def test_mgda_three_tasks_against_a_brute_force_grid():
    g = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 1.0], [-1.0, -1.0, 1.5]], dtype=torch.float64)
    a = min_norm_weights(g @ g.T)
    assert a.min() >= 0 and float(a.sum()) == pytest.approx(1.0)
    step = 0.0025
    ticks = torch.arange(0.0, 1.0 + step / 2, step, dtype=torch.float64)
    a1, a2 = torch.meshgrid(ticks, ticks, indexing="ij")
    inside = a1 + a2 <= 1.0 + 1e-12
    grid = torch.stack([a1[inside], a2[inside], (1.0 - a1[inside] - a2[inside]).clamp_min(0.0)], dim=1)
    norms = (grid @ g).pow(2).sum(-1)
    best = grid[norms.argmin()]
    assert float((a @ g).pow(2).sum()) <= float(norms.min()) + 1e-12  # at least as good as every grid point
    torch.testing.assert_close(a, best, atol=2 * step, rtol=0)
    assert (a > 0.05).all()  # an interior point of the simplex: all three tasks count


def test_mgda_weights_scale_to_the_fixed_weights_sum_and_skip_tasks_without_gradient():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # task 3: no labelled row this step
    fixed = torch.tensor([1.0, 1.0, 1.0])
    torch.testing.assert_close(mgda_weights(g, fixed, "sum"), torch.tensor([1.5, 1.5, 0.0]))
    # "scale": the solver sees λ_i g_i = (2, 0), (0, 1): a = (0.2, 0.8), weights ∝ a_i λ_i = (0.4, 0.8)
    fixed = torch.tensor([2.0, 1.0, 1.0])
    torch.testing.assert_close(mgda_weights(g, fixed, "scale"), torch.tensor([4 / 3 * 1.0, 8 / 3 * 1.0, 0.0]))
    torch.testing.assert_close(mgda_weights(torch.zeros(3, 2), fixed, "scale"), fixed)
    with pytest.raises(ValueError, match="pareto_fixed_weights"):
        mgda_weights(g, fixed, "product")
