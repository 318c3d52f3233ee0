"""Every model of the registry: one train step, user-side reuse, masking, persistence, seeds."""
from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from features.spec import DenseField, demo_spec
from model.base import RankingModel, group_by_user, random_batch, repeat_users
from model.baselines import DIN, DINConfig
from model.registry import MODEL_NAMES, build_model, config_class, make_config
from model.train import MultiTaskLoss

SPEC = demo_spec(seq_len=6)
# the same with raw dense values (counts / rates), one user-side and two item-side
DENSE_SPEC = replace(SPEC, dense=(DenseField("user_n_prior_log1p", "user"), DenseField("video_like_rate_logit", "item"),
                                  DenseField("author_n_prior_log1p", "item")))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/model/conftest.py


def test_the_registry_lists_the_issue_s_models():
    assert MODEL_NAMES == ("infnet", "shared_bottom", "mmoe", "omoe", "ple", "stem", "dcnv2", "din", "deepfm", "hstu",
                           "cgc", "wide_deep", "fm", "xdeepfm", "autoint", "fibinet", "nfm", "afm", "pnn", "gdcn",
                           "dien", "dsin", "sim", "bst")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("wukong", SPEC)
    with pytest.raises(ValueError, match="unknown MMoEConfig field"):
        build_model("mmoe", SPEC, {"experts": 3})


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_train_step(name):
    model = build_model(name, SPEC, seed=0)
    assert isinstance(model, RankingModel)
    tables = model.cat_embedding.tables  # one row per bucket of every categorical field, 0 included
    assert sum(t.num_embeddings for t in tables) == sum(f.vocab_size for f in SPEC.categorical)
    total, table_size = model.n_params(), sum(t.weight.numel() for t in tables)
    model.cat_embedding.requires_grad_(False)  # n_params counts what trains
    assert model.n_params() == total - table_size and model.n_params(trainable_only=False) == total
    model.cat_embedding.requires_grad_(True)
    batch = random_batch(SPEC, 16, seed=1)
    out = model.train()(batch)
    assert out.shape == (16, len(SPEC.tasks)) and torch.isfinite(out).all()
    loss = MultiTaskLoss(model.spec)(out, batch["label"], batch["mask"])[0]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reached {missing}"
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert MultiTaskLoss(model.spec)(model(batch), batch["label"], batch["mask"])[0] < loss


@pytest.mark.parametrize("spec", [SPEC, DENSE_SPEC], ids=["categorical", "dense"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_user_side_reuse_equals_the_plain_forward(name, spec):
    model = build_model(name, spec, seed=0).eval()
    batch = repeat_users(random_batch(spec, 10, seed=2), spec, [1, 1, 1, 1, 3, 3, 6, 6, 6, 9])
    batch_user, user_index = group_by_user(batch, spec)
    assert batch_user["cat_user"].shape[0] == 4
    state = model.encode_user(batch_user)
    assert all(v.shape[0] == 4 for v in state.values())
    candidates = {k: batch[k] for k in ("cat", "dense") if k in batch}
    reused = model(candidates, state, user_index)
    torch.testing.assert_close(reused, model(batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dense_values_reach_every_model_and_are_required(name):
    model = build_model(name, DENSE_SPEC, seed=0).train()
    batch = random_batch(DENSE_SPEC, 8, seed=11)
    out = model(batch)
    MultiTaskLoss(DENSE_SPEC)(out, batch["label"], batch["mask"])[0].backward()
    dense_params = [p for n, p in model.named_parameters() if "dense" in n]
    assert dense_params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in dense_params)
    model.eval()
    moved = {**batch, "dense": batch["dense"] + 1.0}
    assert (model(moved) - model(batch)).abs().max() > 1e-6
    with pytest.raises(KeyError, match="dense"):
        model({k: v for k, v in batch.items() if k != "dense"})


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padding_changes_nothing_and_empty_histories_are_finite(name):
    model = build_model(name, SPEC, seed=0).eval()
    batch = random_batch(SPEC, 6, seed=3)
    batch["seq"][1] = 0
    batch["seq_gap"][1] = 0.0
    out = model(batch)
    assert torch.isfinite(out).all()
    longer = {**batch, "seq": F.pad(batch["seq"], (0, 3)), "seq_gap": F.pad(batch["seq_gap"], (0, 3), value=5.0)}
    torch.testing.assert_close(model(longer), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sequences_and_gaps_reach_the_prediction(name):
    model = build_model(name, SPEC, seed=0).eval()
    batch = random_batch(SPEC, 6, seed=4)
    other_items = {**batch, "seq": torch.where(batch["seq"] > 0, batch["seq"] % 50 + 1, 0)}
    assert (model(other_items) - model(batch)).abs().max() > 1e-6
    other_gaps = {**batch, "seq_gap": batch["seq_gap"] * 0.5}
    assert (model(other_gaps) - model(batch)).abs().max() > 1e-6


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_save_load_and_seeds(name):
    model = build_model(name, SPEC, seed=5).eval()
    twin = build_model(name, SPEC, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    other = build_model(name, SPEC, seed=6).eval()
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    batch = random_batch(SPEC, 4, seed=7)
    torch.testing.assert_close(other(batch), model(batch), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_survives_a_json_round_trip(name):
    model = build_model(name, SPEC, seed=0)
    restored = make_config(name, json.loads(json.dumps(model.config_dict())))
    assert restored == model.config and isinstance(restored, config_class(name))


@pytest.mark.parametrize("name", ["shared_bottom", "mmoe", "ple", "dcnv2"])
def test_a_tiny_batch_can_be_overfit(name):
    model = build_model(name, SPEC, {"dropout": 0.0}, seed=0).train()
    batch = random_batch(SPEC, 16, seed=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = MultiTaskLoss(model.spec)(model(batch), batch["label"], batch["mask"])[0]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.3 * losses[0], losses[::10]


def test_variants_of_the_baselines_build_and_run():
    batch = random_batch(SPEC, 4, seed=9)
    for name, cfg in [("dcnv2", {"low_rank": 8, "structure": "stacked"}), ("ple", {"n_levels": 3}),
                      ("din", {"attention_normalize": "softmax", "share_item_table": False}),
                      ("mmoe", {"gap_signal": "none"})]:
        assert build_model(name, SPEC, cfg, seed=0)(batch).shape == (4, 4)


def test_din_attends_with_the_candidate_in_the_item_table_it_shares_with_sequences():
    model = DIN(SPEC, DINConfig()).eval()
    assert model.item_table is not None and model.seq_embedding.shared_table is model.item_table
    batch = random_batch(SPEC, 4, seed=10)
    video = [c.name for c in SPEC.categorical].index("video_id")
    other_candidate = {**batch, "cat": batch["cat"].clone()}
    other_candidate["cat"][:, video] = (batch["cat"][:, video] % 49) + 1
    assert (model(other_candidate) - model(batch)).abs().max() > 1e-6
    mismatched = replace(SPEC, sequences=tuple(replace(s, vocab_size=77) for s in SPEC.sequences))
    assert DIN(mismatched, DINConfig()).item_table is None
    with pytest.raises(ValueError, match="target field"):
        DIN(SPEC, DINConfig(target_field="item"))
