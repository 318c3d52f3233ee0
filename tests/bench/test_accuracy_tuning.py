"""bench.accuracy's tuning mode and --tuned: every arm over the same grid, chosen on the valid day only."""
from __future__ import annotations

import json

import torch

from bench import accuracy
from features.spec import demo_spec
from model.data import arrow_to_batch
from model.synthetic import synthetic_examples
from model.train import TrainConfig

SPEC = demo_spec(seq_len=4)


def small_data() -> dict:
    return {s: arrow_to_batch(synthetic_examples(SPEC, n, seed=i), SPEC)
            for i, (s, n) in enumerate((("train", 400), ("valid", 200), ("test", 200)))}


def test_tuning_runs_the_same_grid_for_every_arm_resumes_and_picks_by_valid(tmp_path):
    torch.set_num_threads(1)
    data = small_data()
    args = accuracy.build_parser().parse_args([
        "--lake", "unused", "--tune-lr", "1e-3,3e-3", "--tune-like", "1,5", "--tune-lightgbm", "0.1:7,0.2:7",
        "--config", "shared_bottom.embed_dim=4", "--config", "omoe.embed_dim=4"])
    config = TrainConfig(epochs=1, batch_size=128, progress=False, num_threads=1)
    out = tmp_path / "tune.md"
    names = ["shared_bottom", "omoe"]
    overrides = accuracy.parse_overrides(args.config)
    accuracy.tune(args, names, overrides, SPEC, data, 1, config, {}, out, 1)
    saved = json.loads(out.with_suffix(".json").read_text())
    per_arm = {}
    for r in saved["runs"]:
        per_arm.setdefault(r["arm"], []).append(r["params"])
    assert {a: len(p) for a, p in per_arm.items()} == {"lightgbm": 2, "shared_bottom": 4, "omoe": 4}  # same budget
    for arm, params in saved["best"].items():
        runs = [r for r in saved["runs"] if r["arm"] == arm]
        assert max(r["valid"]["mtl_auc"] for r in runs) == next(r for r in runs if r["params"] == params)["valid"]["mtl_auc"]
    assert set(saved["best"]["omoe"]) == {"lr", "task_weights"}
    accuracy.tune(args, names, overrides, SPEC, data, 1, config, {}, out, 1)  # nothing left to run
    assert len(json.loads(out.with_suffix(".json").read_text())["runs"]) == 10
    assert "(chosen)" in out.read_text()


def test_an_explicit_grid_replaces_the_product(tmp_path):
    data = small_data()
    args = accuracy.build_parser().parse_args(["--lake", "unused", "--tune-grid", "1e-3:5,3e-3:1", "--no-lightgbm",
                                               "--config", "omoe.embed_dim=4"])
    config = TrainConfig(epochs=1, batch_size=128, progress=False, num_threads=1)
    out = tmp_path / "grid.md"
    accuracy.tune(args, ["omoe"], accuracy.parse_overrides(args.config), SPEC, data, 1, config, {}, out, 1)
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert [r["params"] for r in runs] == [{"lr": 1e-3, "task_weights": {"like": 5.0}},
                                          {"lr": 3e-3, "task_weights": {"like": 1.0}}]
