"""HSTU's formulas against hand computations, its event merge, and M-FALCON scoring.

Pointwise attention (SiLU, no softmax, 1/n, with rab), one STU layer on its own weights, the causal
+ M-FALCON mask, the relative bias buckets, the merged event stream, and the reuse path: n
candidates of one user scored in one pass equal each scored alone, the plain forward on the
expanded batch, and a full-sequence run of the stacked layers with every candidate appended.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from features.spec import demo_spec
from model.base import group_by_user, random_batch, repeat_users, user_batch
from model.baselines.hstu import (
    HSTU,
    HSTUConfig,
    RelativeAttentionBias,
    SequentialTransductionUnit,
    mfalcon_mask,
    pointwise_attention,
)
from model.registry import build_model

SPEC = demo_spec(seq_len=5)
SMALL = dict(d=8, n_layers=2, n_heads=2, embed_dim=4, tower_hidden=(6,), dropout=0.0, input_dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/model/conftest.py


def silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


def small_model(**overrides) -> HSTU:
    return build_model("hstu", SPEC, {**SMALL, **overrides}, seed=0).eval()


# =============================================================================================
# Formulas
# =============================================================================================

def test_pointwise_attention_is_silu_of_scores_plus_bias_over_n_times_v_by_hand():
    q = torch.tensor([[[[1.0, 0.0], [0.5, -1.0]]]])  # [1, H=1, Q=2, a=2]
    k = torch.tensor([[[[2.0, 1.0], [-1.0, 3.0]]]])  # [1, 1, K=2, 2]
    v = torch.tensor([[[[1.0, 2.0], [-3.0, 0.5]]]])  # [1, 1, 2, e=2]
    bias = torch.tensor([[0.1, -0.2], [0.3, 0.0]])
    mask = torch.tensor([[True, False], [True, True]])
    out = pointwise_attention(q, k, v, bias, mask, n=4.0)
    # scores: q0.k0 = 2, q0.k1 = -1, q1.k0 = 0, q1.k1 = -3.5; no softmax, so rows need not sum to 1
    w00 = silu(2.0 + 0.1) / 4
    w10, w11 = silu(0.0 + 0.3) / 4, silu(-3.5 + 0.0) / 4
    expected = [[w00 * 1.0, w00 * 2.0], [w10 * 1.0 + w11 * -3.0, w10 * 2.0 + w11 * 0.5]]
    torch.testing.assert_close(out[0, 0], torch.tensor(expected))
    # the masked key contributes nothing however large its score
    big = k.clone()
    big[..., 1, :] = 100.0
    torch.testing.assert_close(pointwise_attention(q, big, v, bias, mask, 4.0)[0, 0, 0], out[0, 0, 0])


def test_one_stu_layer_is_x_plus_f2_of_norm_av_times_u_on_its_own_weights():
    torch.manual_seed(0)
    layer = SequentialTransductionUnit(d=4, n_heads=1, head_dim=2, n=3.0).eval()
    x = torch.randn(1, 3, 4)
    bias = torch.randn(1, 3, 3)
    mask = mfalcon_mask(torch.ones(1, 3, dtype=torch.bool))
    with torch.no_grad():
        y, keys, values = layer(x, bias, mask)

        def layer_norm(row: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
            centred = row - row.mean()
            return centred / torch.sqrt((centred ** 2).mean() + norm.eps) * norm.weight + norm.bias

        uvqk = [F.silu(layer.f1.weight @ layer_norm(x[0, i], layer.input_norm) + layer.f1.bias) for i in range(3)]
        u, v, q, k = ([r[j * 2:(j + 1) * 2] for r in uvqk] for j in range(4))
        for i in range(3):
            attended = sum(silu(float(q[i] @ k[j] + bias[0, i, j])) / 3.0 * v[j] for j in range(i + 1))  # causal
            expected = x[0, i] + layer.f2.weight @ (layer_norm(attended, layer.attention_norm) * u[i]) + layer.f2.bias
            torch.testing.assert_close(y[0, i], expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(keys[0, i], k[i])
            torch.testing.assert_close(values[0, i], v[i])


def test_the_mask_is_causal_over_the_history_and_each_target_sees_the_history_and_itself():
    valid = torch.tensor([[True, True, True], [False, True, True]])
    mask = mfalcon_mask(valid, n_targets=2).int()
    assert mask[0].tolist() == [[1, 0, 0, 0, 0],
                                [1, 1, 0, 0, 0],
                                [1, 1, 1, 0, 0],
                                [1, 1, 1, 1, 0],   # target 1: the history and itself
                                [1, 1, 1, 0, 1]]   # target 2: not target 1
    assert mask[1, :, 0].tolist() == [1, 0, 0, 0, 0]  # a padded key is seen by nobody (but itself)
    assert mfalcon_mask(valid[:1]).int()[0].tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_relative_bias_buckets_by_hand():
    rab = RelativeAttentionBias(max_distance=3, time_buckets=20, time_bucket_width=0.5)
    rank_q, rank_k = torch.tensor([-1, 0]), torch.tensor([0, 2, 7])
    assert rab.position_bucket(rank_q, rank_k).tolist() == [[1, 3, 3], [0, 2, 3]]  # |r_q - r_k|, clamped at 3
    gap_q = torch.tensor([0.0, math.log1p(10.0)])
    gap_k = torch.tensor([math.log1p(10.0), math.log1p(100.0), math.log1p(1e12)])
    # seconds between: [10, 100, 1e12] from the target, [0, 90, ~1e12] from the event 10 s back
    expected = [[math.floor(math.log1p(10) / 0.5), math.floor(math.log1p(100) / 0.5), 19],
                [0, math.floor(math.log1p(90) / 0.5), 19]]
    assert rab.time_bucket(gap_q, gap_k).tolist() == expected
    bias = rab(rank_q, gap_q, rank_k, gap_k)
    w_p, w_t = rab.position_weight.detach(), rab.time_weight.detach()
    torch.testing.assert_close(bias[0, 1], w_p[3] + w_t[expected[0][1]])
    torch.testing.assert_close(bias[1, 0], w_p[0] + w_t[0])
    time_only = RelativeAttentionBias(3, 20, 0.5, use_position=False)
    assert time_only.position_weight is None
    torch.testing.assert_close(time_only(rank_q, gap_q, rank_k, gap_k)[0, 1], time_only.time_weight[expected[0][1]])
    assert RelativeAttentionBias(3, 20, 0.5, use_position=False, use_time=False)(rank_q, gap_q, rank_k, gap_k) is None


# =============================================================================================
# The event stream
# =============================================================================================

def hand_sequences() -> tuple[torch.Tensor, torch.Tensor]:
    """One user: click [5 @ 1.0, 7 @ 3.0], long_view [5 @ 1.0], like [9 @ 2.0] (item @ gap)."""
    seq = torch.zeros(1, 3, 3, dtype=torch.long)
    gap = torch.zeros(1, 3, 3)
    seq[0, 0, :2], gap[0, 0, :2] = torch.tensor([5, 7]), torch.tensor([1.0, 3.0])
    seq[0, 1, 0], gap[0, 1, 0] = 5, 1.0
    seq[0, 2, 0], gap[0, 2, 0] = 9, 2.0
    gap[0, 1, 2] = 4.0  # a gap on padding: ignored
    return seq, gap


def test_events_merge_by_gap_with_one_token_per_item_and_moment():
    model = HSTU(demo_spec(seq_len=3), HSTUConfig(**SMALL))
    items, actions, gaps, valid = model.merge_events(*hand_sequences())
    assert items[0].tolist() == [5, 9, 7]  # most recent first, no slot beyond the longest history
    assert actions[0].int().tolist() == [[1, 1, 0], [0, 0, 1], [1, 0, 0]]  # click + long_view is one event
    assert gaps[0].tolist() == [1.0, 2.0, 3.0] and valid[0].all()
    seq, gap = hand_sequences()
    two = model.merge_events(torch.cat([seq, torch.zeros_like(seq)]), torch.cat([gap, gap]))
    assert two[0].tolist() == [[5, 9, 7], [0, 0, 0]] and not two[1][1].any() and not two[3][1].any()
    items, actions, _, valid = HSTU(demo_spec(seq_len=3), HSTUConfig(**SMALL, merge_same_event=False)).merge_events(
        *hand_sequences())
    assert items[0].tolist() == [5, 5, 9, 7] and valid[0].all()  # duplicates kept
    items, _, gaps, valid = HSTU(demo_spec(seq_len=3), HSTUConfig(**SMALL, max_events=2)).merge_events(
        *hand_sequences())
    assert items[0].tolist() == [5, 9] and gaps[0].tolist() == [1.0, 2.0]  # the most recent max_events


def test_history_layout_oldest_first_is_left_padded_with_the_most_recent_event_last():
    model = HSTU(demo_spec(seq_len=3), HSTUConfig(**SMALL))
    seq, gap = hand_sequences()
    seq, gap = torch.cat([seq, seq]), torch.cat([gap, gap])
    seq[1, 0, 1] = 0  # the second user lacks the oldest event
    h = model.history(seq, gap)
    assert h["valid"].tolist() == [[True] * 3, [False, True, True]]
    assert h["gaps"][0].tolist() == [3.0, 2.0, 1.0] and h["rank"].tolist() == [2, 1, 0]
    torch.testing.assert_close(h["tokens"][0, -1], model.item_table.weight[5] + model.action_table.weight[1]
                               + model.action_table.weight[2])
    assert h["tokens"][1, 0].abs().sum() == 0
    newest = HSTU(demo_spec(seq_len=3), HSTUConfig(**SMALL, merge_order="newest_first")).history(*hand_sequences())
    assert newest["gaps"][0, :3].tolist() == [1.0, 2.0, 3.0] and newest["rank"].tolist()[:3] == [0, 1, 2]


def test_the_target_bias_is_the_events_distance_and_own_gap():
    model = small_model()
    batch = random_batch(SPEC, 3, seed=1)
    with torch.no_grad():
        state = model.encode_user(user_batch(batch, SPEC))
        h = model.history(batch["seq"], batch["seq_gap"])
    rab = model.biases[1]
    for row in range(3):
        for slot in torch.nonzero(h["valid"][row]).flatten().tolist():
            expected = (rab.position_weight[int(h["rank"][slot]) + 1]
                        + rab.time_weight[rab.time_bucket(h["gaps"][row, slot:slot + 1], torch.zeros(1))[0, 0]])
            torch.testing.assert_close(state["target_bias_1"][row, slot], expected.detach())


# =============================================================================================
# M-FALCON
# =============================================================================================

def one_user_batch(n: int, seed: int = 2, spec=SPEC) -> dict[str, torch.Tensor]:
    """``n`` candidates of one user (row 0's user side; the user has a non-empty history)."""
    batch = random_batch(spec, n, seed=seed)
    batch["seq"][0, 0, :3] = torch.tensor([4, 8, 15])
    batch["seq_gap"][0, 0, :3] = torch.tensor([3.5, 4.0, 6.0])
    return repeat_users(batch, spec, [0] * n)


@pytest.mark.parametrize("overrides", [{}, {"merge_order": "newest_first", "merge_same_event": False},
                                       {"head_input": "target", "use_position_bias": False}],
                         ids=["default", "newest_first", "target_only"])
def test_n_candidates_in_one_pass_equal_each_alone_and_the_expanded_forward(overrides):
    model = small_model(**overrides)
    batch = one_user_batch(7)
    batch_user, user_index = group_by_user(batch, SPEC)
    assert batch_user["cat_user"].shape[0] == 1
    with torch.no_grad():
        state = model.encode_user(batch_user)
        one_pass = model({"cat": batch["cat"]}, state, user_index)
        expanded = model(batch)
        alone = torch.cat([model({k: v[i:i + 1] for k, v in batch.items()}) for i in range(7)])
    torch.testing.assert_close(one_pass, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_pass, expanded, atol=1e-5, rtol=1e-5)
    # another candidate in the same pass changes nothing for the first one
    other = {"cat": batch["cat"].clone()}
    other["cat"][1:, 2] = (other["cat"][1:, 2] % 49) + 1
    with torch.no_grad():
        changed = model(other, state, user_index)
    torch.testing.assert_close(changed[0], one_pass[0], atol=1e-6, rtol=0)
    assert (changed[1:] - one_pass[1:]).abs().max() > 1e-6


def test_uneven_requests_fall_back_to_expanded_rows_with_the_same_numbers():
    model = small_model()
    base = random_batch(SPEC, 14, seed=3)
    batch = repeat_users(base, SPEC, [0] * 12 + [5, 9])  # one big request among tiny ones: RowGroups declines
    batch_user, user_index = group_by_user(batch, SPEC)
    with torch.no_grad():
        reused = model({"cat": batch["cat"]}, model.encode_user(batch_user), user_index)
        torch.testing.assert_close(reused, model(batch), atol=1e-5, rtol=1e-5)


def test_mfalcon_equals_the_full_sequence_with_every_candidate_appended_as_a_target():
    """The stacked layers over [history; t_1 .. t_n] with :func:`mfalcon_mask` give the targets the
    same final states as the cached path: what M-FALCON promises."""
    model = small_model()
    n = 5
    batch = one_user_batch(n, seed=4)
    with torch.no_grad():
        h = model.history(batch["seq"][:1], batch["seq_gap"][:1])
        length = h["tokens"].shape[1]
        x = torch.cat([h["tokens"], model.target_tokens(batch["cat"]).unsqueeze(0)], dim=1)  # [1, L + n, d]
        rank = torch.cat([h["rank"], torch.full((n,), -1)]).unsqueeze(0)
        gaps = torch.cat([h["gaps"], torch.zeros(1, n)], dim=1)
        mask = mfalcon_mask(h["valid"], n_targets=n)
        for layer, rab in zip(model.layers, model.biases):
            x, _, _ = layer(x, rab(rank, gaps, rank, gaps), mask)
        cat_user = model.cat_embedding(batch["cat"][:, list(model.user_fields)], model.user_fields)
        full = model.predict(model.output_norm(x[0, length:]), batch["cat"], cat_user, None)
        batch_user, user_index = group_by_user(batch, SPEC)
        cached = model({"cat": batch["cat"]}, model.encode_user(batch_user), user_index)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


# =============================================================================================
# Options
# =============================================================================================

def test_the_named_options_build_run_and_matter():
    batch = random_batch(SPEC, 4, seed=5)
    batch["seq"][:, 1], batch["seq_gap"][:, 1] = batch["seq"][:, 0], batch["seq_gap"][:, 0]  # long views = clicks
    with torch.no_grad():
        reference = small_model()(batch)
        for overrides in [{"merge_order": "newest_first"}, {"merge_same_event": False}, {"use_time_bias": False},
                          {"use_position_bias": False}, {"head_input": "target"}, {"gap_signal": "mlp"},
                          {"max_events": 4}, {"share_item_table": False}, {"n_layers": 3, "head_dim": 3},
                          {"target_sides": ["item", "context"]}]:
            out = small_model(**overrides)(batch)
            assert out.shape == (4, 4) and torch.isfinite(out).all(), overrides
            assert (out - reference).abs().max() > 1e-6, overrides
    no_time = small_model(use_time_bias=False, gap_signal="none")
    with torch.no_grad():  # without rab^t and the gap signal, gaps reach nothing
        torch.testing.assert_close(no_time({**batch, "seq_gap": batch["seq_gap"] * 0.5}), no_time(batch))
    with pytest.raises(ValueError, match="target field"):
        HSTU(SPEC, HSTUConfig(target_field="item"))
    with pytest.raises(ValueError, match="merge_order"):
        HSTU(SPEC, HSTUConfig(merge_order="random"))
