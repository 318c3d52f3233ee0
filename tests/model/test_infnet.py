"""INFNet: shapes, masking, order/gap semantics, gradients, overfitting, persistence, reuse, ablations."""
from __future__ import annotations

import doctest
import io
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from model import base as base_module
from model import infnet as infnet_module
from model import layers as layers_module
from model import registry as registry_module
from features.spec import demo_spec
from model.base import group_by_user, random_batch, repeat_users
from model.infnet import INFNet, INFNetConfig, plan_block
from model.layers import RowGroups
from model.train import MultiTaskLoss

SPEC = demo_spec(seq_len=6)
SMALL = dict(d=16, cat_proxy_hidden=32, gate_hidden=16, head_hidden=(16,), dropout=0.0)
VARIANTS = {
    "default": {},
    "gate_updated": {"gate_source": "updated"},
    "gate_layer": {"gate_source": "layer"},
    "pgu_residual_update": {"pgu_residual": "update"},
    "pgu_residual_gate": {"pgu_residual": "gate"},
    "updated_pgu_update_3_blocks": {"gate_source": "updated", "pgu_residual": "update", "n_blocks": 3},
    "three_blocks": {"n_blocks": 3},
    "one_block": {"n_blocks": 1},
    "no_residual_no_layernorm": {"residual": False, "layernorm": False},
    "mean_proxy_linear_gap": {"seq_proxy_pooling": "mean", "gap_signal": "linear"},
    "no_task_tokens": {"use_task_tokens": False},
    "no_pgu": {"use_pgu": False},
    "no_cross_attention": {"use_cross_attention": False},
    "all_ablations": {"use_task_tokens": False, "use_pgu": False, "use_cross_attention": False},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/model/conftest.py


def make(seed: int = 0, **overrides) -> INFNet:
    torch.manual_seed(seed)
    return INFNet(SPEC, INFNetConfig(**{**SMALL, **overrides}))


def test_output_shape_kinds_and_finite_even_for_empty_histories():
    model = make().eval()
    batch = random_batch(SPEC, 5, seed=1)
    batch["seq"][0] = 0
    batch["seq_gap"][0] = 0.0
    out = model(batch)
    assert out.shape == (5, len(SPEC.tasks))
    assert model.task_kinds == ("binary", "binary", "binary", "regression")
    assert torch.isfinite(out).all()


def test_per_field_table_widths_from_the_spec_are_projected():
    widths = [8, None, 4, 8, None, 16]
    spec = replace(SPEC, categorical=tuple(replace(f, embed_dim=w) for f, w in zip(SPEC.categorical, widths)))
    model = INFNet(spec, INFNetConfig(**SMALL)).eval()
    assert sorted(t.embedding_dim for t in model.cat_embedding.tables) == [4, 8, 16]
    assert model(random_batch(spec, 3)).shape == (3, 4)


@pytest.mark.parametrize("variant", ["default", "gate_updated", "no_task_tokens"])
def test_extra_padded_positions_and_junk_at_padding_change_nothing(variant):
    model = make(**VARIANTS[variant]).eval()
    batch = random_batch(SPEC, 6, seed=2)
    out = model(batch)
    longer = dict(batch)
    longer["seq"] = F.pad(batch["seq"], (0, 4))
    longer["seq_gap"] = F.pad(batch["seq_gap"], (0, 4), value=7.0)  # junk gaps where there is no item
    torch.testing.assert_close(model(longer), out, atol=1e-5, rtol=1e-5)


def permute_within_sequences(batch: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, f, n = batch["seq"].shape
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(b * f)]).view(b, f, n)
    return {**batch, "seq": batch["seq"].gather(2, perm), "seq_gap": batch["seq_gap"].gather(2, perm)}


def test_order_does_not_matter_when_gaps_move_with_their_items():
    model = make().eval()
    batch = random_batch(SPEC, 6, seed=3)
    shuffled = permute_within_sequences(batch, seed=4)
    assert not torch.equal(shuffled["seq"], batch["seq"])
    torch.testing.assert_close(model(shuffled), model(batch), atol=1e-5, rtol=1e-5)


def test_the_time_gap_matters_only_with_the_gap_signal():
    batch = random_batch(SPEC, 6, seed=5)
    moved = {**batch, "seq_gap": torch.where(batch["seq"] > 0, batch["seq_gap"] * 0.3, 0.0)}
    with_gap = make().eval()
    assert (with_gap(moved) - with_gap(batch)).abs().max() > 1e-4
    without_gap = make(gap_signal="none").eval()
    torch.testing.assert_close(without_gap(moved), without_gap(batch))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gradients_reach_every_parameter(variant):
    model = make(**VARIANTS[variant]).train()
    batch = random_batch(SPEC, 8, seed=6)
    MultiTaskLoss(model.spec)(model(batch), batch["label"], batch["mask"])[0].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    dead = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not dead, f"zero gradient for {dead}"


# Rows of a request together, rows interleaved, and one user with most rows (too uneven to pack
# per user: the keys are expanded per row instead).
ROW_LAYOUTS = {"grouped": [0, 0, 0, 4, 4, 8, 8, 8, 8], "interleaved": [0, 4, 8, 0, 8, 4, 8, 0, 8],
               "skewed": [0, 0, 0, 0, 0, 0, 0, 4, 8]}


@pytest.mark.parametrize("layout", sorted(ROW_LAYOUTS))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_user_side_reuse_equals_the_plain_forward(variant, layout):
    model = make(**VARIANTS[variant]).eval()
    batch = repeat_users(random_batch(SPEC, 9, seed=7), SPEC, ROW_LAYOUTS[layout])
    batch_user, user_index = group_by_user(batch, SPEC)
    assert batch_user["cat_user"].shape[0] == 3
    assert (RowGroups.build(user_index, 3) is None) == (layout == "skewed")
    state = model.encode_user(batch_user)
    assert all(v.shape[0] == 3 for v in state.values())
    reused = model({"cat": batch["cat"]}, state, user_index)
    torch.testing.assert_close(reused, model(batch), atol=1e-5, rtol=1e-5)


def test_block_plan_follows_the_spec_equations():
    layer = INFNetConfig(gate_source="layer")
    computes, needed = plan_block(layer, frozenset({"T"}))  # last block: T^ and its PGU only
    assert computes == {"T"} and needed == {"T", "C", "S", "Tp"}
    computes, _ = plan_block(INFNetConfig(), frozenset({"T"}))
    assert computes == {"T", "Tp"}  # the default gate reads T~'
    computes, _ = plan_block(layer, frozenset({"T", "C", "S", "Tp", "Cp", "Sp"}))
    assert computes == {"T", "C", "S", "Tp", "Cp", "Sp"}
    old_default = make(gate_source="layer", pgu_residual="gate")
    assert [len(b.ca) for b in old_default.blocks] == [4, 2]  # T~ and T attentions, then T's: half dead
    assert old_default.n_user_blocks == 2  # block-2 keys of S are still user-only (layer-0 gate)
    batch = random_batch(SPEC, 2)
    state = old_default.encode_user({"cat_user": batch["cat"][:, :2], "seq": batch["seq"], "seq_gap": batch["seq_gap"]})
    assert {"seq_tokens_0", "seq_tokens_1"} <= set(state)
    assert make().n_user_blocks == 1


ALL_ATTENTIONS = {"cp_s", "cp_t", "sp_c", "sp_t", "tp_c", "tp_s", "t_c", "t_s"}


def test_every_equation_of_a_block_reaches_the_heads_under_the_default_choices():
    """Issue 16 item 1: with the defaults (2 blocks) all eight cross-attentions of the first block exist
    and every one of their parameters gets a non-zero gradient; the last block keeps what reaches T."""
    assert INFNetConfig().n_blocks == 2
    model = make().train()
    assert set(model.blocks[0].ca) == ALL_ATTENTIONS
    assert set(model.blocks[1].ca) == {"tp_c", "tp_s", "t_c", "t_s"}
    batch = random_batch(SPEC, 8, seed=13)
    MultiTaskLoss(model.spec)(model(batch), batch["label"], batch["mask"])[0].backward()
    for b, block in enumerate(model.blocks):
        for name, attention in block.ca.items():
            for pname, p in attention.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, (b, name, pname)
    # and the gates of C and S (which read C~' and S~') reach the heads too
    assert all(p.grad.abs().sum() > 0 for x in ("C", "S") for p in model.blocks[0].gates[x].parameters())


def test_the_default_gate_can_suppress_and_the_literal_one_cannot():
    """LN(X + X g) only ever scales by 1 + g in [1, 2]; around the update, g near 0 removes the update."""
    for residual, suppresses in (("update", True), ("gate", False)):
        model = make(pgu_residual=residual).eval()
        block = model.blocks[-1]
        with torch.no_grad():
            last = [m for m in block.gates["T"] if isinstance(m, torch.nn.Linear)][-1]
            last.weight.zero_()
            last.bias.fill_(-30.0)  # sigmoid -> 0: a closed gate
            closed = model(random_batch(SPEC, 4, seed=14))
            for name in ("t_c", "t_s"):
                block.ca[name].v_proj.weight.mul_(3.0)  # a different attention update...
            moved = model(random_batch(SPEC, 4, seed=14))
        # ...changes nothing when the gate can close it off, and does when the residual bypasses the gate
        assert ((moved - closed).abs().max() < 1e-5) == suppresses, residual


def test_a_tiny_batch_can_be_overfit():
    model = make(seed=1).train()
    batch = random_batch(SPEC, 16, seed=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        loss = MultiTaskLoss(model.spec)(model(batch), batch["label"], batch["mask"])[0]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())


def test_state_dict_round_trip_gives_identical_predictions():
    model = make(seed=0).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    other = make(seed=1).eval()
    batch = random_batch(SPEC, 5, seed=9)
    assert not torch.allclose(other(batch), model(batch))
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(other(batch), model(batch), rtol=0, atol=0)


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = make(seed=3).state_dict(), make(seed=3).state_dict(), make(seed=4).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_task_tokens_start_small():
    model = make(d=64)
    assert model.task_tokens.shape == (4, 64) and 0.01 < model.task_tokens.std() < 0.04


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        INFNetConfig(d=15, n_heads=2)
    with pytest.raises(ValueError, match="gate_source"):
        INFNetConfig(gate_source="proxy")
    with pytest.raises(ValueError, match="sequence"):
        INFNet(replace(SPEC, sequences=()), INFNetConfig(**SMALL))


@pytest.mark.parametrize("module", [infnet_module, registry_module, base_module, layers_module])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
