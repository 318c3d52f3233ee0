"""Shared layers: embeddings, masked attention and pooling, the user-side split helpers."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from features.spec import CategoricalField, demo_spec
from model.base import group_by_user, random_batch, repeat_users, take_user_rows, user_batch
from model.layers import (
    MLP,
    CategoricalEmbedding,
    MultiHeadCrossAttention,
    RowGroups,
    SequenceEmbedding,
    TargetAttentionPooling,
    TaskTowers,
    masked_mean,
    masked_sum,
)

SPEC = demo_spec(seq_len=5)


def mixed_width_fields() -> tuple[CategoricalField, ...]:
    widths = [8, None, 4, 8, None, 16]
    return tuple(replace(f, embed_dim=w) for f, w in zip(SPEC.categorical, widths))


def test_categorical_embedding_projects_each_width_to_out_dim_and_embeds_subsets_identically():
    torch.manual_seed(0)
    fields = mixed_width_fields()
    emb = CategoricalEmbedding(fields, out_dim=16)
    assert sorted(t.embedding_dim for t in emb.tables) == [4, 8, 16]
    assert len(emb.proj_weight) == 2  # widths 4 and 8 are projected, 16 is not
    cat = random_batch(SPEC, 7, seed=3)["cat"]
    cat[0] = 0  # the null bucket of every field is a valid row
    full = emb(cat)
    assert full.shape == (7, 6, 16) and torch.isfinite(full).all()
    subset = (4, 0, 2)
    torch.testing.assert_close(emb(cat[:, list(subset)], subset), full[:, list(subset)])


def test_categorical_fields_do_not_share_rows():
    emb = CategoricalEmbedding(SPEC.categorical, out_dim=8)
    same_id = torch.ones(1, len(SPEC.categorical), dtype=torch.long)
    out = emb(same_id)[0]
    assert not torch.allclose(out[0], out[1])  # id 1 of field 0 is not id 1 of field 1


def test_sequence_embedding_zeroes_padding_and_adds_the_gap_signal_only_at_items():
    emb = SequenceEmbedding(SPEC.sequences, dim=8, gap_signal="mlp")
    seq = torch.tensor([[[3, 4, 0, 0, 0]] * 3])
    gap = torch.tensor([[[1.0, 2.0, 9.0, 9.0, 9.0]] * 3])  # junk gaps at padding
    tokens, mask = emb(seq, gap)
    assert mask[0, 0].tolist() == [True, True, False, False, False]
    assert tokens[0, :, 2:].abs().sum() == 0
    moved, _ = emb(seq, gap + 1.0)
    assert not torch.allclose(moved[0, :, :2], tokens[0, :, :2])
    plain, _ = SequenceEmbedding(SPEC.sequences, dim=8, gap_signal="none")(seq, gap)
    assert plain.shape == tokens.shape


def test_per_type_sequence_tables_differ_but_a_shared_table_is_shared():
    seq = torch.tensor([[[3], [3], [3]]])
    per_type, _ = SequenceEmbedding(SPEC.sequences, dim=8, gap_signal="none")(seq, torch.zeros(1, 3, 1))
    assert not torch.allclose(per_type[0, 0], per_type[0, 1])
    table = torch.nn.Embedding(51, 8)
    shared_emb = SequenceEmbedding(SPEC.sequences, dim=8, gap_signal="none", shared_table=table)
    shared, _ = shared_emb(seq, torch.zeros(1, 3, 1))
    torch.testing.assert_close(shared[0, 0], shared[0, 1])


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_cross_attention_matches_the_formula(heads):
    torch.manual_seed(0)
    ca = MultiHeadCrossAttention(8, n_heads=heads)
    q, k = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    dh = 8 // heads
    qh, kh, vh = (x.view(2, -1, heads, dh).transpose(1, 2) for x in (ca.q_proj(q), ca.k_proj(k), ca.v_proj(k)))
    expected = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(dh), -1) @ vh  # [B, h, Q, dh]
    torch.testing.assert_close(ca(q, k), expected.transpose(1, 2).reshape(2, 3, 8))


def test_cross_attention_ignores_padded_keys_and_gives_zero_without_nan_when_all_are_padded():
    torch.manual_seed(0)
    ca = MultiHeadCrossAttention(8, n_heads=2)
    q, k = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    out = ca(q, k, mask)
    torch.testing.assert_close(out[0], ca(q[:1], k[:1, :2])[0])  # same as without the padded keys
    junk = k.clone()
    junk[:, 2:] = 100.0
    torch.testing.assert_close(ca(q, junk, mask), out)
    assert out[1].abs().sum() == 0
    q.requires_grad_(True)
    ca(q, k, mask).sum().backward()
    assert torch.isfinite(q.grad).all() and all(torch.isfinite(p.grad).all() for p in ca.parameters())


@pytest.mark.parametrize("attentive", [True, False])
def test_grouped_cross_attention_equals_the_expanded_keys(attentive):
    """Query rows reading their group's keys (one key set per user) = keys copied to every row."""
    torch.manual_seed(0)
    ca = MultiHeadCrossAttention(8, n_heads=2, attentive=attentive)
    keys, query = torch.randn(3, 5, 8), torch.randn(7, 4, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    group_of = torch.tensor([2, 0, 1, 0, 0, 1, 2])
    groups = RowGroups.build(group_of, n_groups=3)
    assert groups is not None and groups.slots == 3
    expected = ca(query, keys.index_select(0, group_of), mask.index_select(0, group_of))
    torch.testing.assert_close(ca(query, keys, mask, groups=groups), expected)
    assert ca(query, keys, mask, groups=groups)[group_of == 2].abs().sum() == 0  # all keys padded


def test_row_groups_refuse_to_pad_past_the_limit():
    assert RowGroups.build(torch.tensor([0] * 6 + [1, 2]), n_groups=3) is None  # 3 x 6 slots > 2 x 8 rows
    assert RowGroups.build(torch.tensor([0] * 6 + [1, 2]), n_groups=3, max_padding=3.0) is not None
    assert RowGroups.build(torch.zeros(0, dtype=torch.long), n_groups=0) is None


def test_non_attentive_cross_attention_is_a_masked_mean_of_values():
    ca = MultiHeadCrossAttention(8, n_heads=2, attentive=False)
    assert ca.q_proj is None and ca.k_proj is None
    k = torch.randn(1, 4, 8)
    mask = torch.tensor([[True, False, True, False]])
    out = ca(torch.randn(1, 2, 8), k, mask)
    expected = masked_mean(ca.v_proj(k), mask, dim=1)
    torch.testing.assert_close(out[0, 0], expected[0])
    torch.testing.assert_close(out[0, 1], expected[0])


def test_masked_pooling_handles_empty_rows():
    x = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    torch.testing.assert_close(masked_sum(x, mask, 1)[0], x[0, 0] + x[0, 2])
    torch.testing.assert_close(masked_mean(x, mask, 1)[0], (x[0, 0] + x[0, 2]) / 2)
    assert masked_mean(x, mask, 1)[1].abs().sum() == 0


@pytest.mark.parametrize("normalize", ["none", "softmax"])
def test_target_attention_ignores_padding(normalize):
    torch.manual_seed(0)
    att = TargetAttentionPooling(8, (16,), normalize)
    q, keys = torch.randn(3, 8), torch.randn(3, 4, 8)
    mask = torch.tensor([[True, True, False, False]] * 2 + [[False] * 4])
    out = att(q, keys, mask)
    junk = keys.clone()
    junk[:, 2:] = 50.0
    torch.testing.assert_close(att(q, junk, mask), out)
    assert out[2].abs().sum() == 0 and torch.isfinite(out).all()


def test_mlp_and_task_towers_shapes():
    assert MLP(10, (7, 5), 3)(torch.randn(4, 10)).shape == (4, 3)
    towers = TaskTowers(6, n_tasks=3, hidden=(4,))
    assert towers(torch.randn(5, 6)).shape == (5, 3)
    assert towers(torch.randn(5, 3, 6)).shape == (5, 3)


def test_group_by_user_finds_each_request_and_expands_back():
    batch = repeat_users(random_batch(SPEC, 7, seed=1), SPEC, [2, 2, 0, 0, 0, 5, 2])
    batch_user, index = group_by_user(batch, SPEC)
    assert index.tolist() == [0, 0, 1, 1, 1, 2, 0]
    expanded = take_user_rows(batch_user, index)
    for k, v in user_batch(batch, SPEC).items():
        torch.testing.assert_close(expanded[k], v)


def test_an_exact_vocabulary_field_embeds_id_0_as_the_mean_of_its_rows():
    fields = (replace(SPEC.categorical[0], vocabulary="user_id"), *SPEC.categorical[1:])
    torch.manual_seed(0)
    emb = CategoricalEmbedding(fields, out_dim=8)
    cat = random_batch(SPEC, 4, seed=5)["cat"]
    cat[0, 0], cat[1, 1] = 0, 0  # field 0 (exact) and field 1 (hashed) unseen in one row each
    out = emb(cat)
    table, size = emb.tables[0].weight, fields[0].vocab_size
    torch.testing.assert_close(out[0, 0], table[1:size].mean(0))  # the field's rows 1..n, not row 0
    torch.testing.assert_close(out[1, 1], table[size])  # a hashed field keeps its own row 0
    torch.testing.assert_close(out[2, 0], table[cat[2, 0]])  # seen ids are untouched
    plain = CategoricalEmbedding(fields, out_dim=8, cold_start_mean=False)
    with torch.no_grad():
        plain.tables[0].weight.copy_(table)
    torch.testing.assert_close(plain(cat)[0, 0], table[0])
    out[0, 0].sum().backward()  # the cold-start row learns through the rows it averages
    assert emb.tables[0].weight.grad[1:size].abs().sum() > 0
