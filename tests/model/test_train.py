"""The training loop on tiny in-memory data (no Spark): it learns, stops early, is reproducible."""
from __future__ import annotations

import pytest
import torch

from features.spec import demo_spec
from model.data import arrow_to_batch
from model.loaders import TensorBatches
from model.losses import MultiTaskLoss
from model.registry import build_model
from model.synthetic import synthetic_examples
from model.train import (
    EarlyStopper,
    TrainConfig,
    TrainProgress,
    build_and_train,
    train_model,
    train_one_epoch,
)

SPEC = demo_spec(seq_len=6)


MODEL = "shared_bottom"
SMALL = {"embed_dim": 8, "bottom_hidden": [16], "tower_hidden": [8]}


def builder(name, spec, config):
    """The registry, with small widths so that the tests stay fast."""
    return build_model(name, spec, {**SMALL, **config})


def data(n: int, seed: int, batch_size: int = 64, shuffle: bool = False,
         shuffle_seed: int = TrainConfig().seed) -> TensorBatches:
    """Synthetic rows of ``seed``; shuffled with ``shuffle_seed`` (the training seed, as the jobs do)."""
    return TensorBatches(arrow_to_batch(synthetic_examples(SPEC, n, seed=seed), SPEC), batch_size, shuffle=shuffle,
                         seed=shuffle_seed)


def quick_config(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 64, "lr": 3e-3, "progress": False, "patience": 2, **kw})


def test_masked_loss_ignores_masked_rows():
    loss = MultiTaskLoss(SPEC)
    outputs = torch.zeros(2, len(SPEC.tasks))
    labels = torch.tensor([[1.0, 0, 1, 2.0], [0.0, 1, 0, 100.0]])
    masks = torch.tensor([[1.0, 1, 1, 1], [0.0, 0, 0, 0]])
    total, per_task = loss(outputs, labels, masks)
    other = labels.clone()
    other[1] = torch.tensor([1.0, 0, 1, -5.0])  # a masked row's labels change nothing
    assert torch.allclose(loss(outputs, other, masks)[0], total)
    assert torch.allclose(per_task[:3], torch.log(torch.tensor(2.0)).expand(3))
    assert per_task[3].item() == pytest.approx(4.0)  # MSE on the one unmasked row


def test_task_weights_and_unknown_task():
    outputs, labels, masks = torch.zeros(4, 4), torch.ones(4, 4), torch.ones(4, 4)
    base = MultiTaskLoss(SPEC)(outputs, labels, masks)[0]
    heavier = MultiTaskLoss(SPEC, {"click": 3.0})(outputs, labels, masks)[0]
    assert heavier.item() == pytest.approx(base.item() + 2 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown tasks"):
        MultiTaskLoss(SPEC, {"nope": 1.0})


def test_early_stopper_stops_after_patience_and_restores_the_best_weights():
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopper(patience=2, min_delta=0.01)
    assert stopper.step(0.5, model) is False and stopper.best_index == 0
    torch.nn.init.constant_(model.weight, 1.0)
    assert stopper.step(0.6, model) is False and stopper.best_index == 1  # a gain: these weights are kept
    torch.nn.init.constant_(model.weight, 2.0)
    assert stopper.step(0.605, model) is False  # within min_delta: no gain
    assert stopper.evals_without_gain == 1 and stopper.best_score == 0.6
    assert stopper.step(float("nan"), model) is True and stopper.should_stop
    stopper.restore(model)
    assert model.weight.tolist() == [[1.0, 1.0]] and stopper.evaluations == 4


def test_early_stopper_without_a_valid_score_leaves_the_model_alone():
    model = torch.nn.Linear(2, 1)
    before = model.weight.detach().clone()
    stopper = EarlyStopper(patience=1)
    assert stopper.step(float("nan"), model) is True
    torch.nn.init.constant_(model.weight, 3.0)
    stopper.restore(model)
    assert stopper.best_index is None and stopper.best_state is None
    assert torch.equal(model.weight, torch.full_like(before, 3.0))


def _tiny_model_and_batches():
    from model.base import random_batch

    model = build_model(MODEL, SPEC, {**SMALL, "dropout": 0.0}, seed=0)
    return model, [random_batch(SPEC, 8, seed=1), random_batch(SPEC, 4, seed=2)]


def test_train_one_epoch_returns_the_row_weighted_mean_loss():
    model, batches = _tiny_model_and_batches()
    criterion = MultiTaskLoss(SPEC)
    with torch.no_grad():  # lr = 0 below: the weights the epoch sees are these
        losses = [criterion(model(b), b["label"], b["mask"])[0].item() for b in batches]
    progress = TrainProgress()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    mean = train_one_epoch(model, batches, optimizer, criterion, torch.device("cpu"), progress=progress)
    assert mean == pytest.approx((8 * losses[0] + 4 * losses[1]) / 12, rel=1e-6)
    assert (progress.steps, progress.examples) == (2, 12) and progress.seconds > 0
    # the counters carry over to the next epoch
    train_one_epoch(model, batches, optimizer, criterion, torch.device("cpu"), progress=progress)
    assert (progress.steps, progress.examples) == (4, 24)


def test_train_one_epoch_learns_and_stops_where_on_eval_says():
    model, batches = _tiny_model_and_batches()
    criterion = MultiTaskLoss(SPEC)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = train_one_epoch(model, batches, optimizer, criterion, torch.device("cpu"))
    for _ in range(8):
        last = train_one_epoch(model, batches, optimizer, criterion, torch.device("cpu"))
    assert last < first  # the same two batches again and again: the loss falls
    seen, progress = [], TrainProgress()
    stop_at_first = lambda loss: seen.append(loss) or True  # noqa: E731
    mean = train_one_epoch(model, batches, optimizer, criterion, torch.device("cpu"), progress=progress,
                           eval_every_steps=1, on_eval=stop_at_first)
    assert progress.steps == 1 and progress.examples == 8 and seen == [mean] and model.training


def test_training_learns_and_reports_metrics():
    result = build_and_train(MODEL, SPEC, data(1200, 1, shuffle=True), data(400, 2), data(400, 3),
                             quick_config(epochs=4), builder=builder)
    m = result.metrics
    # the synthetic labels are learnable: every task beats chance, and the same model left untrained, by a margin
    untrained = build_and_train(MODEL, SPEC, data(1200, 1, shuffle=True), data(400, 2), data(400, 3),
                                quick_config(epochs=1, lr=0.0), builder=builder).metrics
    assert m["test"]["mtl_auc"] > 0.6
    for task in ("click", "like", "long_view"):
        assert m["test"][task]["auc"] > 0.6 and m["valid"][task]["auc"] > 0.6, (task, m["test"][task])
        assert m["test"][task]["auc"] > untrained["test"][task]["auc"] + 0.1, task
        assert 0.0 < m["test"][task]["gauc"] < 1.0
    assert "rmse" in m["test"]["play_time"]
    assert m["parameters"] > 0 and m["train_examples"] > 0


def test_early_stopping_stops_without_gain():
    # lr = 0: the first evaluation is the best, the next `patience` bring no gain -> stop.
    result = build_and_train(MODEL, SPEC, data(300, 1), data(200, 2), None,
                             quick_config(lr=0.0, epochs=20, patience=2), builder=builder)
    assert result.metrics["early_stopped"] is True
    assert result.metrics["epochs_run"] == 3
    assert result.metrics["best_epoch"] == 0


def test_same_seed_same_weights_other_seed_differs():
    def weights(seed):
        r = build_and_train(MODEL, SPEC, data(300, 1, shuffle=True, shuffle_seed=seed), data(100, 2), None,
                            quick_config(seed=seed, epochs=2, dropout=0.1), builder=builder)
        return r.model.state_dict()

    a, b, c = weights(7), weights(7), weights(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_uncertainty_weighting_learns_task_weights():
    result = build_and_train(MODEL, SPEC, data(300, 1, shuffle=True), data(100, 2), None,
                             quick_config(uncertainty_weighting=True, epochs=2), builder=builder)
    log_vars = result.metrics["uncertainty_log_vars"]
    assert set(log_vars) == {t.name for t in SPEC.tasks}
    assert any(abs(v) > 1e-4 for v in log_vars.values())


def test_train_model_accepts_a_prebuilt_module():
    model = build_model("mmoe", SPEC, {"embed_dim": 8, "n_experts": 2, "expert_hidden": [16], "tower_hidden": [8]}, seed=0)
    result = train_model(model, SPEC, data(200, 1), data(100, 2), None, quick_config(epochs=1))
    assert result.metrics["epochs_run"] == 1 and len(result.history) == 1


def test_config_from_dict_rejects_unknown_options():
    assert TrainConfig.from_dict({"lr": 0.1}).lr == 0.1
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_embedding_lr_gives_the_tables_their_own_step():
    from torch import nn

    from model.train import parameter_groups

    model = builder(MODEL, SPEC, {})
    assert len(parameter_groups(model, quick_config())) == 1
    tables, rest = parameter_groups(model, quick_config(embedding_lr=1e-4))
    table_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    assert tables["lr"] == 1e-4 and {id(p) for p in tables["params"]} == table_ids
    assert "lr" not in rest and not table_ids & {id(p) for p in rest["params"]}
    assert len(tables["params"]) + len(rest["params"]) == len(list(model.parameters()))
    # A zero step for the tables leaves them exactly as built while the dense layers learn.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = train_model(model, SPEC, data(200, 1), data(100, 2), None, quick_config(epochs=1, embedding_lr=0.0)).model
    names = {n for n, m in trained.named_modules() if isinstance(m, nn.Embedding)}
    after = trained.state_dict()
    assert all(torch.equal(before[f"{n}.weight"], after[f"{n}.weight"]) for n in names)
    assert any(not torch.equal(before[k], after[k]) for k in after if k.rsplit(".", 1)[0] not in names)


def test_default_task_weights_apply_only_to_tasks_the_spec_has():
    import dataclasses

    from model.losses import DEFAULT_TASK_WEIGHTS, resolve_task_weights

    assert resolve_task_weights(SPEC) == DEFAULT_TASK_WEIGHTS == {"like": 10.0}
    assert resolve_task_weights(SPEC, {"like": 1.0, "click": 2.0}) == {"like": 1.0, "click": 2.0}
    no_like = dataclasses.replace(SPEC, tasks=tuple(t for t in SPEC.tasks if t.name != "like"))
    assert resolve_task_weights(no_like) == {}
    with pytest.raises(ValueError, match=r"unknown tasks \['like'\]"):
        resolve_task_weights(no_like, {"like": 2.0})
    result = train_model(builder(MODEL, SPEC, {}), SPEC, data(200, 1), data(100, 2), None, quick_config(epochs=1))
    assert result.metrics["task_weights"] == {"like": 10.0}


def test_task_weight_flag_takes_numbers_only():
    import argparse

    from jobs.train import build_parser
    from model.train import TrainConfig
    from model.losses import parse_task_weight

    assert parse_task_weight("like=10") == ("like", 10.0) and parse_task_weight("click=0.5") == ("click", 0.5)
    for bad in ("like=x", "like=true", "like"):
        with pytest.raises(argparse.ArgumentTypeError, match="TASK=NUMBER"):
            parse_task_weight(bad)
    args = build_parser().parse_args(["--model", "infnet", "--train-dates", "2022-04-25", "--valid-dates",
                                      "2022-04-26", "--task-weight", "like=2", "--embedding-lr", "1e-4"])
    config = TrainConfig.from_flags(vars(args))
    assert config.task_weights == {"like": 2.0} and config.embedding_lr == 1e-4


def test_gradnorm_loss_matches_the_paper_s_formula_by_hand():
    loss = MultiTaskLoss(SPEC, {"like": 10.0}, gradnorm=True, gradnorm_alpha=1.0)
    shared = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    a = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0], [6.0, 8.0]])  # ∇_W L_i = a_i: norms 5, 1, 1, 10
    losses = (a * shared).sum(1)  # 11, 2, 1, 22 at the first step: L_i(0)
    w = loss.gradnorm_weights  # starts at λ = 1, 10, 1, 1
    G = torch.tensor([5.0, 10.0, 1.0, 10.0])  # w_i * ||∇_W L_i||
    want = (G - G.mean()).abs().sum()  # r_i = 1 at the first step
    got = loss.gradnorm_loss(losses, [shared])
    assert got.item() == pytest.approx(want.item())
    (grad,) = torch.autograd.grad(got, w)
    torch.testing.assert_close(grad, torch.sign(G - G.mean()) * torch.tensor([5.0, 1.0, 1.0, 10.0]))
    # later: task 0 halved its loss, the others did not -> r = (0.5, 1, 1, 1) / 0.875; target mean(G) r^α
    later = loss.gradnorm_loss(losses * torch.tensor([0.5, 1.0, 1.0, 1.0]), [shared])
    r = torch.tensor([0.5, 1.0, 1.0, 1.0]) / 0.875
    G_later = torch.tensor([2.5, 10.0, 1.0, 10.0])  # task 0's gradient halved with its loss
    assert later.item() == pytest.approx((G_later - G_later.mean() * r).abs().sum().item(), rel=1e-6)


def test_gradnorm_learns_weights_that_keep_their_sum():
    result = build_and_train(MODEL, SPEC, data(300, 1, shuffle=True), data(100, 2), None,
                             quick_config(gradnorm=True, epochs=2, gradnorm_lr=0.05), builder=builder)
    weights = result.metrics["gradnorm_weights"]
    assert set(weights) == {t.name for t in SPEC.tasks}
    assert sum(weights.values()) == pytest.approx(13.0, rel=1e-4)  # Σ λ: like 10, the others 1
    assert abs(weights["like"] - 10.0) > 1e-3 and all(v > 0 for v in weights.values())
    with pytest.raises(ValueError, match="one of"):
        MultiTaskLoss(SPEC, uncertainty_weighting=True, gradnorm=True)


def test_pareto_loss_takes_the_min_norm_point_of_the_task_gradients_on_the_shared_layer():
    from model.losses import min_norm_weights

    loss = MultiTaskLoss(SPEC, {"like": 10.0}, pareto=True, pareto_fixed_weights="sum")
    torch.testing.assert_close(loss.pareto_weights, torch.tensor([1.0, 10.0, 1.0, 1.0]))  # before the first step
    shared = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [-1.0, 0.0]])  # ∇_W L_i = a_i; task 2 without gradient
    losses = (a * shared).sum(1) + torch.tensor([0.0, 0.0, 0.5, 2.0])
    got = loss.pareto_loss(losses, [shared])
    # min-norm point of (1,0), (0,1), (-1,0): 0, at a = (1/2, 0, 1/2); weights scaled to Σ λ = 13
    torch.testing.assert_close(loss.pareto_weights, torch.tensor([6.5, 0.0, 0.0, 6.5]))
    assert got.item() == pytest.approx((loss.pareto_weights * losses).sum().item())
    (grad,) = torch.autograd.grad(got, shared)  # the weights are constants: Σ w_i a_i
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0]))
    assert loss(torch.zeros(2, 4), torch.ones(2, 4), torch.ones(2, 4))[0].item() == pytest.approx(
        (loss.pareto_weights * loss.per_task(torch.zeros(2, 4), torch.ones(2, 4), torch.ones(2, 4))).sum().item())
    scaled = MultiTaskLoss(SPEC, {"like": 10.0}, pareto=True)  # "scale": solve on λ_i a_i
    scaled.pareto_loss((a * shared).sum(1), [shared])
    g = a[[0, 1, 3]] * torch.tensor([[1.0], [10.0], [1.0]])
    alpha = min_norm_weights(g @ g.T) * torch.tensor([1.0, 10.0, 1.0])
    torch.testing.assert_close(scaled.pareto_weights[[0, 1, 3]], alpha * 13.0 / alpha.sum())


def test_pareto_weighting_trains_and_excludes_the_other_balancers():
    result = build_and_train(MODEL, SPEC, data(300, 1, shuffle=True), data(100, 2), None,
                             quick_config(pareto=True, epochs=1), builder=builder)
    weights = result.metrics["pareto_weights"]
    assert set(weights) == {t.name for t in SPEC.tasks} and all(v >= 0 for v in weights.values())
    assert sum(weights.values()) == pytest.approx(13.0, rel=1e-5)  # Σ λ: like 10, the others 1
    assert weights != {"click": 1.0, "like": 10.0, "long_view": 1.0, "play_time": 1.0}
    assert "pareto_weights" in result.history[-1]
    for other in ({"gradnorm": True}, {"uncertainty_weighting": True}):
        with pytest.raises(ValueError, match="one of"):
            MultiTaskLoss(SPEC, pareto=True, **other)
    with pytest.raises(ValueError, match="pareto_fixed_weights"):
        MultiTaskLoss(SPEC, pareto=True, pareto_fixed_weights="product")


def test_pareto_flag_reaches_the_train_config():
    from jobs.train import build_parser
    from model.train import TrainConfig

    base = ["--model", "infnet", "--train-dates", "2022-04-25", "--valid-dates", "2022-04-26"]
    assert TrainConfig.from_flags(vars(build_parser().parse_args(base + ["--pareto"]))).pareto is True
    assert TrainConfig.from_flags(vars(build_parser().parse_args(base))).pareto is False
