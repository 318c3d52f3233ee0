"""The sequence baselines' defining formulas against hand computations on tiny tensors.

One AUGRU step (and AUGRU at a = 1 as a plain GRU), DIEN's auxiliary loss on a two-step toy and its
wiring into training, DSIN's session split at the 30-minute boundary and the independence of the
sessions' self-attention, SIM's soft search (and that the exact search reads only what it
retrieved), and BST's attention as ``softmax(Q K^T / sqrt(d)) V`` (one head by hand, two heads
against ``nn.MultiheadAttention``).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from features.spec import demo_spec
from model.base import random_batch
from model.baselines import BST, DIEN, DSIN, SIM, BSTConfig, DIENConfig, DSINConfig, SIMConfig
from model.baselines.bst import TransformerLayer, scaled_dot_attention
from model.baselines.dien import AUGRUCell, auxiliary_loss, chronological, compact
from model.baselines.dsin import split_sessions
from model.baselines.sim import hard_search, soft_search

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/model/conftest.py

SPEC = demo_spec(seq_len=6)
SMALL = dict(embed_dim=4, dropout=0.0, bottom_hidden=(8,), tower_hidden=(4,))


def randomise_(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)


# =============================================================================================
# DIEN
# =============================================================================================

def test_dien_one_augru_step_is_the_attention_scaled_update():
    cell = AUGRUCell(3, 2)
    randomise_(cell, seed=1)
    x, h, a = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.3, -0.7]]), torch.tensor([0.4])
    w_r, w_u, w_h = cell.weight_ih.detach().split(2)
    u_r, u_u, u_h = cell.weight_hh.detach().split(2)
    b_r, b_u, b_h = cell.bias.detach().split(2)
    r = torch.sigmoid(x @ w_r.T + h @ u_r.T + b_r)
    u = torch.sigmoid(x @ w_u.T + h @ u_u.T + b_u)
    candidate = torch.tanh(x @ w_h.T + r * (h @ u_h.T) + b_h)
    expected = (1 - a * u) * h + a * u * candidate
    torch.testing.assert_close(cell(x, h, a), expected)
    torch.testing.assert_close(cell(x, h, torch.zeros(1)), h)  # a = 0: the state passes unchanged
    # a = 1 is a plain GRU: torch's cell with the update gate negated (h' = (1 - z) n + z h, z = 1 - u)
    gru = torch.nn.GRUCell(3, 2)
    flip = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 1.0]).unsqueeze(-1)
    with torch.no_grad():
        gru.weight_ih.copy_(cell.weight_ih * flip)
        gru.weight_hh.copy_(cell.weight_hh * flip)
        gru.bias_ih.copy_(cell.bias * flip.squeeze(-1))
        gru.bias_hh.zero_()
    torch.testing.assert_close(cell(x, h, torch.ones(1)), gru(x, h))


def test_dien_auxiliary_loss_on_a_two_step_toy():
    h0, h1 = [0.5, -1.0], [9.0, 9.0]  # h1 has no next item: it never enters the loss
    e0, e1, neg1 = [1.0, 1.0], [2.0, 0.5], [-1.0, 3.0]
    states = torch.tensor([[h0, h1]])
    items = torch.tensor([[e0, e1]])
    negatives = torch.tensor([[[7.0, 7.0], neg1]])
    mask = torch.tensor([[True, True]])
    pos = 0.5 * 2.0 - 1.0 * 0.5  # <h0, e1> = 0.5
    neg = 0.5 * -1.0 - 1.0 * 3.0  # <h0, ê1> = -3.5
    by_hand = -(math.log(1 / (1 + math.exp(-pos))) + math.log(1 - 1 / (1 + math.exp(-neg))))
    loss = auxiliary_loss(states, items, negatives, mask, torch.tensor([[True, True]]))
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    # no valid pair (the negative is padding, or the next step is): 0, not NaN
    assert auxiliary_loss(states, items, negatives, mask, torch.tensor([[True, False]])).item() == 0.0
    assert auxiliary_loss(states, items, negatives, torch.tensor([[True, False]]), mask).item() == 0.0


def test_dien_sets_its_auxiliary_loss_in_training_only_and_it_trains_the_extractor():
    model = DIEN(SPEC, DIENConfig(**SMALL)).train()
    batch = random_batch(SPEC, 8, seed=2)
    model(batch)
    assert model.aux_loss is not None and model.aux_loss.dim() == 0 and model.aux_loss > 0
    model.aux_loss.backward()
    assert model.extractor.weight_hh_l0.grad.abs().sum() > 0
    assert model.item_table.weight.grad.abs().sum() > 0
    assert model.evolution.weight_hh.grad is None  # the AUGRU is the target's, not the auxiliary task's
    doubled = DIEN(SPEC, DIENConfig(**SMALL, aux_weight=2.0)).train()
    doubled.load_state_dict(model.state_dict())
    doubled(batch)
    torch.testing.assert_close(doubled.aux_loss, 2 * model.aux_loss.detach())
    model.eval()
    model(batch)
    assert model.aux_loss is None


def test_dien_sequences_are_compacted_and_read_oldest_first():
    seq, gap = compact(torch.tensor([[3, 0, 5, 7]]), torch.tensor([[1.0, 8.0, 2.0, 3.0]]))
    assert seq.tolist() == [[3, 5, 7, 0]] and gap.tolist() == [[1.0, 2.0, 3.0, 0.0]]
    x, m = chronological(seq.unsqueeze(-1).float(), seq > 0)
    assert x.squeeze(-1).tolist() == [[7.0, 5.0, 3.0, 0.0]] and m.tolist() == [[True, True, True, False]]


# =============================================================================================
# DSIN
# =============================================================================================

def test_dsin_splits_sessions_at_the_30_minute_boundary():
    # minutes before the row, newest first; the neighbours' differences: 9.5, 29.9 (same session),
    # 30.1 (new), 1, 130 (new); the last position is padding
    minutes = torch.tensor([[0.5, 10.0, 39.9, 70.0, 71.0, 201.0, 0.0]])
    gap = torch.log1p(minutes * 60.0)
    mask = torch.tensor([[True] * 6 + [False]])
    index, valid = split_sessions(gap, mask, 30.0, max_sessions=4, session_len=3)
    assert index.tolist() == [[[0, 1, 2], [3, 4, 0], [5, 0, 0], [0, 0, 0]]]
    assert valid.tolist() == [[[True, True, True], [True, True, False], [True, False, False],
                               [False, False, False]]]
    # fewer, shorter sessions: the most recent ones and their most recent items
    index, valid = split_sessions(gap, mask, 30.0, max_sessions=2, session_len=2)
    assert index.tolist() == [[[0, 1], [3, 4]]] and valid.all()
    # a 60-minute rule merges the first two sessions
    index, _ = split_sessions(gap, mask, 60.0, max_sessions=2, session_len=6)
    assert index[0, 0].tolist() == [0, 1, 2, 3, 4, 0] and index[0, 1, 0] == 5
    # an empty history has no session
    assert not split_sessions(gap, torch.zeros_like(mask), 30.0, 2, 2)[1].any()


def test_dsin_self_attention_stays_within_a_session():
    model = DSIN(SPEC, DSINConfig(**SMALL, max_sessions=3, session_len=3)).eval()
    minutes = torch.tensor([[1.0, 2.0, 100.0, 101.0, 0.0, 0.0]])  # sessions {0, 1} and {2, 3}
    gap, mask = torch.log1p(minutes * 60.0), torch.tensor([[True] * 4 + [False] * 2])
    tokens = torch.randn(1, 6, 4) * mask.unsqueeze(-1)
    with torch.no_grad():
        interests, session_mask = model.session_interests(tokens, gap, mask)
        moved = tokens.clone()
        moved[0, 3] += 1.0  # an item of the second session
        other, _ = model.session_interests(moved, gap, mask)
    assert session_mask.tolist() == [[True, True, False]]
    torch.testing.assert_close(other[:, 0], interests[:, 0])
    assert (other[:, 1] - interests[:, 1]).abs().max() > 1e-4
    assert interests[:, 2].abs().max() == 0


# =============================================================================================
# SIM
# =============================================================================================

def test_sim_soft_search_picks_the_nearest_items_by_inner_product():
    query = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    keys = torch.tensor([[[3.0, 0.0], [0.0, 0.5], [2.0, 2.0], [9.0, 9.0], [1.0, 1.0]],
                         [[0.0, -2.0], [0.0, 1.0], [1.0, -3.0], [0.0, -2.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, True, False, True], [True, True, True, True, False]])
    index, valid = soft_search(query, keys, mask, k=3)
    # row 0: scores 3, 0.5, 4, (padding), 2 -> positions 2, 0, 4; row 1: 2, -1, 3, 2 -> 2, then the tie 0 before 3
    assert index.tolist() == [[2, 0, 4], [2, 0, 3]] and valid.all()
    index, valid = soft_search(query[:1], keys[:1], mask[:1], k=5)
    assert index[0, :4].tolist() == [2, 0, 4, 1] and valid.tolist() == [[True] * 4 + [False]]
    # the hard search (unused until sequences carry categories): category matches, most recent first
    index, valid = hard_search(torch.tensor([2]), torch.tensor([[1, 2, 2, 3]]), torch.ones(1, 4, dtype=torch.bool), 2)
    assert index.tolist() == [[1, 2]] and valid.all()


def test_sim_exact_search_reads_only_the_retrieved_items():
    model = SIM(SPEC, SIMConfig(**SMALL, top_k=2, short_len=0)).eval()
    video = [c.name for c in SPEC.categorical].index("video_id")
    batch = random_batch(SPEC, 1, seed=3)
    batch["cat"][0, video] = 1
    batch["seq"][:] = 0
    batch["seq_gap"][:] = 0.0
    batch["seq"][0, 0, :4] = torch.tensor([5, 6, 7, 8])
    batch["seq_gap"][0, 0, :4] = torch.tensor([3.0, 4.0, 5.0, 6.0])
    with torch.no_grad():  # candidate item 1 = e_1; items 6 and 8 nearest, 5 and 7 far
        model.item_table.weight.zero_()
        model.item_table.weight[1] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        for item, score in [(5, -1.0), (6, 2.0), (7, 0.5), (8, 3.0)]:
            model.item_table.weight[item] = torch.tensor([score, 0.3, -0.2, 0.1])
        out = model(batch)
        index, valid = soft_search(model.item_table.weight[1].unsqueeze(0),
                                   model.raw_items(batch["seq"]).flatten(1, 2), batch["seq"].flatten(1) > 0, 2)
        assert index.tolist() == [[3, 1]] and valid.all()  # items 8 and 6
        moved = {**batch, "seq_gap": batch["seq_gap"].clone()}
        moved["seq_gap"][0, 0, 0] = 9.0  # item 5: not retrieved
        torch.testing.assert_close(model(moved), out)
        moved["seq_gap"][0, 0, 1] = 9.0  # item 6: retrieved
        assert (model(moved) - out).abs().max() > 1e-6


def test_sim_hard_search_refuses_without_item_attributes():
    with pytest.raises(ValueError, match="per-item category"):
        SIM(SPEC, SIMConfig(gsu="hard"))


# =============================================================================================
# BST
# =============================================================================================

def test_bst_attention_is_softmax_qk_over_sqrt_d_times_v():
    layer = TransformerLayer(4, n_heads=1)
    randomise_(layer, seed=4)
    x = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(5))
    mask = torch.tensor([[True, True, False]])
    w, b = layer.qkv.weight.detach(), layer.qkv.bias.detach()
    q, k, v = (x @ w[i * 4:(i + 1) * 4].T + b[i * 4:(i + 1) * 4] for i in range(3))
    scores = q @ k.transpose(1, 2) / math.sqrt(4)
    scores[..., 2] = -math.inf  # the padded key
    by_hand = torch.softmax(scores, dim=-1) @ v @ layer.out.weight.detach().T + layer.out.bias.detach()
    with torch.no_grad():
        torch.testing.assert_close(layer.attend(*layer.project(x), mask), by_hand)
        # the layer: post-norm residuals around the attention and the LeakyReLU feed-forward
        s = F.layer_norm(x + by_hand, (4,), layer.norm1.weight, layer.norm1.bias)
        y = F.layer_norm(s + layer.ffn(s), (4,), layer.norm2.weight, layer.norm2.bias)
        torch.testing.assert_close(layer(x, mask), y)
    assert scaled_dot_attention(q, k, v).shape == (1, 3, 4)


def test_bst_multi_head_attention_matches_torch():
    layer = TransformerLayer(4, n_heads=2)
    randomise_(layer, seed=6)
    reference = torch.nn.MultiheadAttention(4, 2, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(layer.qkv.weight)
        reference.in_proj_bias.copy_(layer.qkv.bias)
        reference.out_proj.weight.copy_(layer.out.weight)
        reference.out_proj.bias.copy_(layer.out.bias)
        x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(7))
        mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
        expected = reference(x, x, x, key_padding_mask=~mask, need_weights=False)[0]
        torch.testing.assert_close(layer.attend(*layer.project(x), mask), expected)


def test_bst_puts_the_target_in_the_sequence():
    model = BST(SPEC, BSTConfig(**SMALL, max_len=4)).eval()
    assert model.length == 4 and model.bottom[0].in_features == (6 + 2) * 4 + (1 + 4) * 4
    batch = random_batch(SPEC, 4, seed=8)
    video = [c.name for c in SPEC.categorical].index("video_id")
    other = {**batch, "cat": batch["cat"].clone()}
    other["cat"][:, video] = batch["cat"][:, video] % 49 + 1
    with torch.no_grad():
        assert (model(other) - model(batch)).abs().max() > 1e-6
        beyond = {**batch, "seq": batch["seq"].clone()}
        beyond["seq"][:, 0, 4:] = torch.where(beyond["seq"][:, 0, 4:] > 0, beyond["seq"][:, 0, 4:] % 49 + 1, 0)
        torch.testing.assert_close(model(beyond), model(batch))  # only the 4 most recent clicks are read


def test_train_step_adds_dien_s_auxiliary_loss_to_the_task_loss():
    from model.registry import build_model
    from model.train import MultiTaskLoss, train_step

    model, batch = build_model("dien", SPEC, seed=0), random_batch(SPEC, 8, seed=1)
    criterion = MultiTaskLoss(model.spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        task_loss = criterion(model.train()(batch), batch["label"], batch["mask"])[0]
        expected = float((task_loss + model.aux_loss).detach())
    assert model.aux_loss > 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        loss, rows = train_step(model, batch, criterion, torch.optim.SGD(model.parameters(), lr=0.0), torch.device("cpu"))
    assert rows == 8 and loss == pytest.approx(expected, rel=1e-6)
