"""INFNet's scoring path without per-candidate copies: the gated sequence keys folded (GatedKeys).

Under ``gate_source="updated"`` block 1 gates the user's sequence with a candidate-dependent gate,
``S' = Norm(S * gamma)``; block 2 attends over ``S'``. :class:`model.layers.GatedKeys` folds
``gamma`` and the LayerNorm statistics into the attention so that ``S'`` is never built per
candidate. These tests hold the fold equal to the literal computation (the keys materialised, and
the plain forward on expanded rows), and check the fold is what the reuse path actually runs.
"""
from __future__ import annotations

import pytest
import torch

from features.spec import demo_spec
from model import infnet as infnet_module
from model import layers as layers_module
from model.base import group_by_user, random_batch, repeat_users
from model.infnet import INFNet, INFNetConfig
from model.layers import GatedKeys, MultiHeadCrossAttention, RowGroups

SMALL = dict(d=16, cat_proxy_hidden=32, gate_hidden=16, head_hidden=(16,), dropout=0.0)
# 4 users with 5, 3, 1 and 4 candidates, interleaved (a request's rows need not be adjacent)
ROWS = [0, 1, 0, 2, 0, 1, 3, 0, 3, 3, 1, 0, 3]
WIRINGS = {
    "default": {},
    "pgu_residual_gate": {"pgu_residual": "gate"},
    "gate_no_residual": {"pgu_residual": "gate", "residual": False},
    "no_layernorm": {"layernorm": False},
    "no_residual_no_layernorm": {"residual": False, "layernorm": False},
    "gate_no_layernorm": {"pgu_residual": "gate", "layernorm": False},
    "no_cross_attention": {"use_cross_attention": False},
    "layer_gate_3_blocks": {"gate_source": "layer", "n_blocks": 3},  # the fold happens in block 2
    "mean_proxy_4_heads": {"seq_proxy_pooling": "mean", "n_heads": 4},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/model/conftest.py


def _gated_keys(n_rows_per_group, d=8, length=7, offset=0.0, seed=0, norm=True):
    g = torch.Generator().manual_seed(seed)
    group_of = torch.tensor([k for k, n in enumerate(n_rows_per_group) for _ in range(n)])
    groups = RowGroups.build(group_of, len(n_rows_per_group), max_padding=10.0)
    tokens = torch.randn(len(n_rows_per_group), length, d, generator=g) + offset
    mask = torch.rand(len(n_rows_per_group), length, generator=g) < 0.7
    mask[0, 0] = True
    mask[-1] = False  # a user without history: every key padded
    tokens = tokens * mask.unsqueeze(-1)
    gate = torch.rand(len(group_of), d, generator=g) * 1.5
    layer_norm = torch.nn.LayerNorm(d) if norm else None
    if layer_norm is not None:
        with torch.no_grad():
            layer_norm.weight.uniform_(0.5, 1.5, generator=g)
            layer_norm.bias.normal_(0, 0.3, generator=g)
    return GatedKeys(tokens, gate, groups, layer_norm), mask, group_of


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("attentive", [True, False])
@pytest.mark.parametrize("offset", [0.0, 3.0])  # 3.0: tokens whose mean is large against their spread
def test_attention_over_gated_keys_equals_attention_over_the_built_keys(norm, attentive, offset, chunking):
    keys, mask, group_of = _gated_keys([3, 1, 4, 2], offset=offset, norm=norm)
    torch.manual_seed(1)
    attention = MultiHeadCrossAttention(8, n_heads=2, attentive=attentive)
    query = torch.randn(len(group_of), 3, 8)
    built = keys.materialize(mask)  # [B, L, d]: LN(s * gamma) * mask, the literal keys
    expected = attention(query, built, mask.index_select(0, group_of))
    folded = attention(query, keys, mask)
    with torch.no_grad():
        torch.testing.assert_close(attention(query, keys, mask), folded)  # the in-place scoring path
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)
    assert folded[group_of == 3].abs().max() == 0  # the user without history: zero output, no NaN


def test_the_statistics_are_those_of_layernorm_and_computed_once():
    keys, mask, group_of = _gated_keys([2, 3], d=16, length=5, offset=2.0)
    x = keys.tokens.index_select(0, group_of) * keys.gate.unsqueeze(1)  # [B, L, d]
    expected = torch.rsqrt(x.var(-1, unbiased=False) + keys.norm.eps)  # [B, L]
    got = keys.groups.unpad(keys.rstd())  # [G, R, L] -> [B, L]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert keys.rstd() is keys.rstd()  # shared by every attention reading these keys


def _score_both_ways(model, spec, seed=7, rows=ROWS):
    batch = repeat_users(random_batch(spec, len(rows), seed=seed), spec, rows)
    batch_user, user_index = group_by_user(batch, spec)
    assert batch_user["cat_user"].shape[0] == 4
    with torch.no_grad():  # as the scorer runs it (GatedKeys then scales the softmax weights in place)
        state = model.encode_user(batch_user)
        reused = model({"cat": batch["cat"]}, state, user_index)
    return reused, model(batch)


@pytest.fixture
def count_folds(monkeypatch):
    """How many GatedKeys INFNet builds (one per fold), and whether any of them was built per row."""
    made = []

    def spy(tokens, gate, groups, norm=None):
        made.append((tokens.shape[0], gate.shape[0]))
        return GatedKeys(tokens, gate, groups, norm)

    monkeypatch.setattr(infnet_module, "GatedKeys", spy)
    return made


@pytest.fixture(params=["whole", "chunked"])
def chunking(request, monkeypatch):
    """Attention in one pass, or a few key sets at a time (what a large scoring call runs)."""
    if request.param == "chunked":
        monkeypatch.setattr(layers_module, "ATTENTION_CHUNK_FLOATS", 64)
    return request.param


@pytest.mark.parametrize("wiring", sorted(WIRINGS))
def test_reuse_with_the_fold_equals_the_plain_forward(wiring, count_folds, chunking):
    spec = demo_spec(seq_len=6)
    torch.manual_seed(0)
    model = INFNet(spec, INFNetConfig(**{**SMALL, **WIRINGS[wiring]})).eval()
    reused, plain = _score_both_ways(model, spec)
    torch.testing.assert_close(reused, plain, atol=1e-5, rtol=1e-5)
    # the reuse path folded the gate (once, over the 4 users' keys, one gate per candidate row);
    # the plain forward (one user per row, no groups) never folds
    assert count_folds == [(4, len(ROWS))]
    if chunking == "chunked":
        assert len(layers_module.attention_chunks(4, 24)) == 2  # the chunked runs did split
        assert len(layers_module.attention_chunks(4, 24, "meta")) == 1  # off the CPU: one pass


def test_the_default_model_at_full_width_and_length_is_exact(count_folds):
    """d = 32, 3 sequences of 50 (150 keys), the registry's default wiring: the shape that is served."""
    spec = demo_spec(seq_len=50)
    torch.manual_seed(3)
    model = INFNet(spec, INFNetConfig(dropout=0.0)).eval()
    with torch.no_grad():  # gates away from 1/2 and norms away from identity, as after training
        for block in model.blocks:
            for norm in block.norms.values():
                if isinstance(norm, torch.nn.LayerNorm):
                    norm.weight.uniform_(0.5, 2.0)
                    norm.bias.normal_(0, 0.5)
            for gate in block.gates.values():
                gate[-1].bias.normal_(0, 2.0)
    reused, plain = _score_both_ways(model, spec, seed=11)
    torch.testing.assert_close(reused, plain, atol=1e-5, rtol=1e-5)
    assert count_folds == [(4, len(ROWS))]


def test_wirings_that_cannot_fold_keep_the_copy_and_stay_exact(count_folds):
    """3 blocks under "updated": block 2 updates S again (S'' = LN(LN(S g1) g2)), so the reuse path
    copies S per row from block 1 on; training with dropout inside LN(S + drop(S g)) likewise."""
    spec = demo_spec(seq_len=6)
    torch.manual_seed(0)
    model = INFNet(spec, INFNetConfig(**{**SMALL, "n_blocks": 3})).eval()
    reused, plain = _score_both_ways(model, spec)
    torch.testing.assert_close(reused, plain, atol=1e-5, rtol=1e-5)
    assert count_folds == []
    trained = INFNet(spec, INFNetConfig(**{**SMALL, "pgu_residual": "gate", "dropout": 0.5})).train()
    assert not trained.blocks[0].can_fold_seq()
    assert trained.eval().blocks[0].can_fold_seq()


def test_a_packed_call_of_equal_requests_pads_by_views_and_stays_exact(count_folds):
    """Rows sorted by user, every request the same size (what a packed call of full requests is):
    RowGroups pads and unpads by reshaping, no scatter."""
    rows = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    groups = RowGroups.build(torch.tensor(rows), 4)
    assert groups.in_order and not RowGroups.build(torch.tensor(ROWS), 4).in_order
    x = torch.arange(12.0).view(12, 1)
    assert torch.equal(groups.unpad(groups.pad(x)), x) and groups.pad(x)[1, 2, 0] == 5.0
    spec = demo_spec(seq_len=6)
    torch.manual_seed(0)
    model = INFNet(spec, INFNetConfig(**SMALL)).eval()
    reused, plain = _score_both_ways(model, spec, rows=rows)
    torch.testing.assert_close(reused, plain, atol=1e-5, rtol=1e-5)
    assert count_folds == [(4, len(rows))]
