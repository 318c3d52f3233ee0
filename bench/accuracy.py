"""Accuracy on real data: every registry model (INFNet included) and a LightGBM bar, 3 seeds each.

    python -m bench.accuracy --lake /tmp/trainlake            # full run
    python -m bench.accuracy --lake /tmp/trainlake --quick    # 1 seed, 1 epoch, 3 models

Split (bundled KuaiRand days): train 2022-04-25..05-01, valid 05-02 (early stopping: mean valid
AUC over click / like / long_view), test 05-03..05-04. INFNet.md's LightGBM bar was trained on
..05-02 and tested on 05-03..04; here 05-02 is taken out of training for early stopping, for
every arm alike (the LightGBM arm included), and the test days are never used to choose anything.
The neural arms share one loss weighting, ``model.losses.DEFAULT_TASK_WEIGHTS`` (like 10, chosen on
the valid day; ``--task-weight like=1`` gives the unweighted loss).

Prints and writes (``bench/results/accuracy.md``, raw numbers in ``accuracy.json``) one table:
test AUC and gAUC per task, mean ± std over seeds, MTL mean AUC, parameters, inference time per
1,000 examples (forward pass in batches of 1,000 on this machine's CPU, user side not reused) and
training throughput. The examples are read once from the pinned Delta snapshot into memory
tensors (built batch by batch from Arrow, see model/loaders.py) and shared by every arm.

``--external`` adds torch-rechub's MMoE and PLE (an optional bench dependency, never imported by the
product; adapter in ``bench/external.py``), trained on the same tensors by the same trainer and loss.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

TASKS = ("click", "like", "long_view")
TRAIN, VALID, TEST = "2022-04-25..2022-05-01", "2022-05-02", "2022-05-03..2022-05-04"
RESULTS = Path(__file__).resolve().parent / "results"
ABLATIONS = {
    "infnet-no-task-tokens": {"use_task_tokens": False},
    "infnet-no-pgu": {"use_pgu": False},
    "infnet-no-cross-attention": {"use_cross_attention": False},
}


@dataclass
class ArmResult:
    arm: str
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per seed
    note: str = ""


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def load_splits(lake: str, version: int | None, splits: dict[str, list[str]]):
    """(spec, examples version, {split: tensors}) read from the pinned snapshot; Spark is stopped after."""
    from conf.lake import current_version
    from conf.settings import Settings
    from conf.spark import get_spark
    from conf.tables import EXAMPLES
    from features.examples import load_feature_spec
    from model.loaders import load_tensors
    from model.snapshot import resolve_snapshot

    settings = Settings().with_lake(lake)
    # Everything here is read by path: the session gets a private catalog so that it never needs the
    # lake's embedded Derby metastore, which admits one JVM at a time (docs/PITFALLS.md).
    private = Settings().with_lake(tempfile.mkdtemp(prefix="infnet-bench-catalog-"))
    spark = get_spark(private, app_name="infnet-bench-accuracy")
    try:
        version = current_version(spark, settings, EXAMPLES) if version is None else version
        spec = load_feature_spec(spark, settings, version)
        path = settings.lake.table_path(EXAMPLES.name)
        snapshots = {s: resolve_snapshot(spark, path, version, d) for s, d in splits.items()}
    finally:
        spark.stop()
    return spec, version, {s: load_tensors(snap, spec) for s, snap in snapshots.items()}


def load_splits_cached(lake: str, version: int | None, splits: dict[str, list[str]], cache_dir: str | None):
    """:func:`load_splits`, kept in ``cache_dir`` (one file per lake, examples version and split) when
    the version is pinned: a Delta version never changes, so reruns skip Spark."""
    if not cache_dir or version is None:
        return load_splits(lake, version, splits)
    import hashlib

    from features.spec import FeatureSpec

    key = hashlib.sha256(json.dumps([str(Path(lake).resolve()), version, splits], sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"examples_v{version}_{key}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        return FeatureSpec.from_json(saved["spec"]), version, saved["data"]
    spec, version, data = load_splits(lake, version, splits)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"spec": spec.to_json(), "data": data}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").rename(path)
    return spec, version, data


# ---------------------------------------------------------------------------------------------
# Arms
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def ms_per_1000(model: torch.nn.Module, tensors: dict[str, torch.Tensor], rows: int = 20_000) -> float:
    from model.data import model_inputs, slice_batch

    model.eval()
    n = min(rows, len(tensors["cat"]))
    model(model_inputs(slice_batch(tensors, slice(0, 1000))))  # warm-up
    start = time.perf_counter()
    for s in range(0, n, 1000):
        model(model_inputs(slice_batch(tensors, slice(s, min(s + 1000, n)))))
    return (time.perf_counter() - start) / n * 1e6


def run_torch_arm(arm: str, model_name: str, model_config: dict, spec, data, seeds, train_config,
                  builder=None) -> ArmResult:
    from model.loaders import TensorBatches
    from model.train import build_and_train

    result = ArmResult(arm)
    for seed in seeds:
        config = replace(train_config, seed=seed)
        train = TensorBatches(data["train"], config.batch_size, shuffle=True, seed=seed)
        valid = TensorBatches(data["valid"], 4096)
        test = TensorBatches(data["test"], 4096)
        start = time.perf_counter()
        out = build_and_train(model_name, spec, train, valid, test, config, model_config, builder=builder)
        m = out.metrics
        run = {"seed": seed, "test": m["test"], "valid": m["valid"], "valid_mtl_auc": m["valid"]["mtl_auc"],
               "parameters": m["parameters"], "task_weights": m["task_weights"], "lr": config.lr,
               "epochs_run": m["epochs_run"], "best_epoch": m["best_epoch"],
               "train_examples_per_s": m["train_examples_per_s"], "seconds": time.perf_counter() - start,
               "ms_per_1000": ms_per_1000(out.model, data["test"])}
        print(f"  {arm} seed {seed}: test mean AUC {m['test']['mtl_auc']:.4f} (valid {m['valid']['mtl_auc']:.4f}, "
              f"best epoch {m['best_epoch']}, {run['seconds']:.0f} s)", flush=True)
        result.runs.append(run)
    return result


def lightgbm_features(spec, tensors) -> tuple[np.ndarray, list[str]]:
    """Categorical columns as they are + each sequence's length (number of non-padding items) + the
    dense values when the spec has them."""
    cat = tensors["cat"].numpy()
    lengths = (tensors["seq"] > 0).sum(-1).numpy()
    names = [c.column for c in spec.categorical] + [f"len_{s.name}" for s in spec.sequences]
    parts = [cat, lengths]
    if spec.dense:
        parts.append(tensors["dense"].numpy())
        names += [f.column for f in spec.dense]
    return np.concatenate(parts, axis=1).astype(np.float32), names


LIGHTGBM_DEFAULTS = {"learning_rate": 0.05, "num_leaves": 63}


def run_lightgbm_arm(spec, data, seeds, max_categories: int = 1000, threads: int = 2,
                     params: dict | None = None, arm: str = "lightgbm") -> ArmResult:
    """One LightGBM classifier per task; fields with at most ``max_categories`` buckets are categorical,
    hashed ids (and bucketised numbers above that size) are numeric. Early stopping on the valid days.
    ``params``: ``learning_rate`` / ``num_leaves`` (default :data:`LIGHTGBM_DEFAULTS`)."""
    knobs = {**LIGHTGBM_DEFAULTS, **(params or {})}
    try:
        import lightgbm as lgb
    except ImportError:
        return ArmResult(arm, note="lightgbm is not installed")
    from model.metrics import auc_np, gauc_np

    x, names = {}, None
    for s in ("train", "valid", "test"):
        x[s], names = lightgbm_features(spec, data[s])
    categorical = [c.column for c in spec.categorical if c.vocab_size <= max_categories]
    task_index = {t.name: i for i, t in enumerate(spec.tasks)}
    result = ArmResult(arm, note=f"{knobs}; {len(names)} features: categorical fields ({len(categorical)} as categorical) "
                                        f"+ sequence lengths" + (" + dense values" if spec.dense else ""))
    for seed in seeds:
        run = {"seed": seed, "test": {}, "valid": {}, "parameters": None, "train_examples_per_s": None, "params": knobs}
        start = time.perf_counter()
        preds_time = 0.0
        aucs = []
        for task in TASKS:
            i = task_index[task]
            masks = {s: data[s]["mask"][:, i].numpy() > 0 for s in x}
            labels = {s: data[s]["label"][:, i].numpy() for s in x}
            train = lgb.Dataset(x["train"][masks["train"]], labels["train"][masks["train"]], feature_name=names,
                                categorical_feature=categorical, free_raw_data=False)
            valid = lgb.Dataset(x["valid"][masks["valid"]], labels["valid"][masks["valid"]], reference=train)
            params = {"objective": "binary", "metric": "auc", **knobs,
                      "min_data_in_leaf": 50, "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1,
                      "seed": seed, "verbose": -1, "num_threads": threads, "cat_smooth": 10}
            booster = lgb.train(params, train, num_boost_round=2000, valid_sets=[valid],
                                callbacks=[lgb.early_stopping(50, verbose=False)])
            t0 = time.perf_counter()
            p = booster.predict(x["test"][masks["test"]], num_iteration=booster.best_iteration)
            preds_time += time.perf_counter() - t0
            users = data["test"]["user_id"].numpy()[masks["test"]]
            y = labels["test"][masks["test"]]
            auc = float(auc_np(y, p))
            run["test"][task] = {"auc": auc, "gauc": float(gauc_np(users, y, p).value)}
            aucs.append(auc)
            pv = booster.predict(x["valid"][masks["valid"]], num_iteration=booster.best_iteration)
            yv, uv = labels["valid"][masks["valid"]], data["valid"]["user_id"].numpy()[masks["valid"]]
            run["valid"][task] = {"auc": float(auc_np(yv, pv)), "gauc": float(gauc_np(uv, yv, pv).value)}
        run["test"]["mtl_auc"] = float(np.mean(aucs))
        run["valid"]["mtl_auc"] = float(np.mean([run["valid"][t]["auc"] for t in TASKS]))
        run["seconds"] = time.perf_counter() - start
        run["ms_per_1000"] = preds_time / len(x["test"]) * 1e6  # three boosters, one per task
        print(f"  {arm} seed {seed}: test mean AUC {run['test']['mtl_auc']:.4f} (valid {run['valid']['mtl_auc']:.4f}, "
              f"{run['seconds']:.0f} s)", flush=True)
        result.runs.append(run)
    return result


def run_external_arms(spec, data, seeds, train_config, config_of=None) -> list[ArmResult]:
    """torch-rechub's MMoE and PLE (bench/external.py) on the same tensors, split, trainer and loss.
    ``config_of(arm)``: the arm's own training config (tuned), default ``train_config``."""
    from bench import external

    missing = external.available()
    if missing:
        return [ArmResult(f"torch-rechub {a}", note=f"skipped: {missing}") for a in external.ARCHITECTURES]
    arms = []
    for architecture in external.ARCHITECTURES:
        name = f"torch-rechub {architecture}"
        print(name, flush=True)
        arm = run_torch_arm(name, architecture, {}, spec, data, seeds,
                            config_of(name) if config_of else train_config, builder=external.build)
        arm.note = (f"torch-rechub {external.version()} model (bench/external.py adapter: same inputs, trainer and "
                    "loss; no time gaps)")
        arms.append(arm)
    return arms


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------

def _mean_std(values: list[float], digits: int = 4) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def render_table(arms: list[ArmResult], split: str = "test") -> str:
    """Mean ± std over seeds of ``split`` ("test", or "valid": the day choices are made on)."""
    head = (["model"] + [f"{t} AUC" for t in TASKS] + [f"{t} gAUC" for t in TASKS]
            + ["MTL AUC", "params", "ms / 1k ex", "train ex/s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        if not arm.runs:
            lines.append("| " + arm.arm + " | " + " | ".join(["–"] * (len(head) - 1)) + " |")
            continue
        r = arm.runs
        cells = [arm.arm]
        r = [x for x in r if x.get(split)]
        if not r:
            lines.append("| " + arm.arm + " | " + " | ".join(["–"] * (len(head) - 1)) + " |")
            continue
        cells += [_mean_std([x[split][t]["auc"] for x in r]) for t in TASKS]
        cells += [_mean_std([x[split][t]["gauc"] for x in r]) for t in TASKS]
        cells.append(_mean_std([x[split]["mtl_auc"] for x in r]))
        cells.append(f"{r[0]['parameters']:,}" if r[0].get("parameters") else "–")
        cells.append(_mean_std([x["ms_per_1000"] for x in r], 1))
        eps = [x["train_examples_per_s"] for x in r if x.get("train_examples_per_s")]
        cells.append(f"{statistics.mean(eps):,.0f}" if eps else "–")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {a.arm}: {a.note}" for a in arms if a.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def render_report(arms, header: dict[str, Any]) -> str:
    lines = ["# Accuracy on the bundled KuaiRand days", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "Test days:", "", render_table(arms), "", "Valid day (what choices are made on):", "",
              render_table(arms, "valid"), "",
              "INFNet.md bar (LightGBM, 65 point-in-time features, trained ..05-02): test AUC click .7353, "
              "like .8304, long_view .7331, mean .7663 (gAUC .6330 / .6291 / .6515).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from model.losses import parse_task_weight

    p = argparse.ArgumentParser(prog="bench.accuracy", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--lake", help="a lake whose examples table holds the KuaiRand days (required unless --merge)")
    p.add_argument("--examples-version", type=int, help="Delta version of examples (default: current)")
    p.add_argument("--models", help="comma list of registry names (default: all) plus ablation arm names")
    p.add_argument("--ablations", action="store_true", help="add INFNet without task tokens / PGU / cross-attention")
    p.add_argument("--seeds", default="1,2,3", help="comma list of seeds (default 1,2,3)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--embedding-lr", type=float, help="learning rate of the embedding tables (default: --lr)")
    p.add_argument("--task-weight", action="append", type=parse_task_weight, default=[], metavar="TASK=W",
                   help="loss weight, every arm alike (repeatable); default: model.losses.DEFAULT_TASK_WEIGHTS "
                        "(like 10, chosen on the valid day), 1 for the other tasks")
    p.add_argument("--gradnorm", action="store_true", help="GradNorm task weights (starting from the loss weights)")
    p.add_argument("--uncertainty-weighting", action="store_true", help="learned uncertainty task weights (Kendall et al.)")
    p.add_argument("--config", action="append", default=[], metavar="MODEL.KEY=VALUE",
                   help="model config override, e.g. infnet.d=64 (repeatable)")
    p.add_argument("--threads", type=int, help="torch / LightGBM CPU threads (default: torch's choice)")
    p.add_argument("--no-lightgbm", action="store_true")
    p.add_argument("--external", action="store_true", help="also train torch-rechub's MMoE and PLE on the same "
                   "features (bench/external.py)")
    p.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, infnet + mmoe + lightgbm")
    p.add_argument("--tensor-cache", metavar="DIR", help="keep the loaded examples (pinned --examples-version) "
                   "as tensors in DIR, so that later runs skip Spark")
    p.add_argument("--tune-lr", help="tuning mode: comma list of learning rates, every neural arm alike "
                   "(1 seed, the first of --seeds; choices on the valid day only)")
    p.add_argument("--tune-like", help="tuning mode: comma list of like loss weights")
    p.add_argument("--tune-grid", help="tuning mode: explicit LR:LIKE comma list instead of the --tune-lr x "
                   "--tune-like product")
    p.add_argument("--tune-lightgbm", default="0.02:31,0.05:63,0.05:31,0.1:63",
                   help="tuning mode: LightGBM's grid of the same size, LEARNING_RATE:NUM_LEAVES comma list")
    p.add_argument("--tuned", metavar="JSON", help="per-arm settings chosen by a tuning run (its .json output)")
    p.add_argument("--label", default="", help="appended to every arm's name (variants of one arm in one table)")
    p.add_argument("--out", default=str(RESULTS / "accuracy.md"))
    p.add_argument("--merge", metavar="JSON,JSON",
                   help="no training: one table from the .json outputs of runs split by arm or seed (same "
                        "examples version), an arm's runs pooled over the files; the header is the first file's")
    return p


def merge_reports(paths: list[str]) -> tuple[list[ArmResult], dict[str, Any]]:
    """The arms of several runs' .json outputs, an arm's runs (seeds) pooled, in first-seen order.

    >>> import json, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> for i, seed in enumerate((1, 2)):
    ...     with open(os.path.join(folder, f"{i}.json"), "w") as f:
    ...         json.dump({"header": {"seeds": [seed]}, "arms": [{"arm": "mmoe", "runs": [{"seed": seed}], "note": ""}]}, f)
    >>> arms, header = merge_reports([os.path.join(folder, "0.json"), os.path.join(folder, "1.json")])
    >>> [(a.arm, [r["seed"] for r in a.runs]) for a in arms], header["merged_from"][0].endswith("0.json")
    ([('mmoe', [1, 2])], True)
    """
    arms: dict[str, ArmResult] = {}
    header: dict[str, Any] = {}
    for path in paths:
        report = json.loads(Path(path).read_text())
        header = header or dict(report["header"])
        for a in report["arms"]:
            merged = arms.setdefault(a["arm"], ArmResult(a["arm"], note=a.get("note", "")))
            merged.runs.extend(a["runs"])
    header["merged_from"] = list(paths)
    return list(arms.values()), header


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, raw = item.partition("=")
        model, _, field_name = key.partition(".")
        if not field_name:
            raise SystemExit(f"--config expects MODEL.KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(model, {})[field_name] = value
    return out


def main(argv=None) -> int:
    from model.registry import MODEL_NAMES
    from model.losses import resolve_task_weights
    from model.train import TrainConfig

    args = build_parser().parse_args(argv)
    if args.merge:
        arms, header = merge_reports([p for p in args.merge.split(",") if p])
        Path(args.out).write_text(render_report(arms, header))
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"header": header, "arms": [a.__dict__ for a in arms]}, indent=1, default=float))
        print(render_table(arms))
        return 0
    if not args.lake:
        build_parser().error("--lake is required (unless --merge)")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    epochs = args.epochs
    if args.quick:
        seeds, epochs = seeds[:1], 1
    if args.models is not None:  # --models '' --external: the external arms alone
        names = [n for n in args.models.split(",") if n]
    else:
        names = ["infnet", "mmoe"] if args.quick else list(MODEL_NAMES)
    if args.ablations:
        names += [a for a in ABLATIONS if a not in names]
    unknown = [n for n in names if n not in MODEL_NAMES and n not in ABLATIONS]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; known: {', '.join(MODEL_NAMES + tuple(ABLATIONS))}")
    overrides = parse_overrides(args.config)

    from conf.syntax import parse_dates

    splits = {"train": parse_dates(TRAIN), "valid": parse_dates(VALID), "test": parse_dates(TEST)}
    t0 = time.perf_counter()
    spec, version, data = load_splits_cached(args.lake, args.examples_version, splits, args.tensor_cache)
    rows = {s: len(t["cat"]) for s, t in data.items()}
    print(f"examples@{version}: {rows} rows, {len(spec.categorical)} categorical fields, "
          f"{len(spec.sequences)} sequences of {[s.max_len for s in spec.sequences]} "
          f"(loaded in {time.perf_counter() - t0:.0f} s)", flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        task_weights = resolve_task_weights(spec, dict(args.task_weight))
    except ValueError as err:  # a weight for a task the spec lacks
        raise SystemExit(str(err)) from None
    train_config = TrainConfig(epochs=epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr,
                               embedding_lr=args.embedding_lr, task_weights=task_weights, gradnorm=args.gradnorm,
                               uncertainty_weighting=args.uncertainty_weighting,
                               progress=False, num_threads=args.threads)
    header = {
        "command": "python -m bench.accuracy " + " ".join(sys.argv[1:] if argv is None else argv),
        "examples": f"Delta version {version} of {args.lake}/tables/examples; rows {rows}",
        "split": f"train {TRAIN}, valid {VALID} (early stopping, taken out of train), test {TEST}",
        "training": f"Adam lr {args.lr}" + (f" (embedding tables {args.embedding_lr})" if args.embedding_lr is not None else "")
                    + f", batch {args.batch_size}, up to {epochs} epochs, patience {args.patience} "
                    f"(mean valid AUC), loss weights {task_weights} (others 1){' learned by GradNorm' if args.gradnorm else ''}"
                    f"{' with uncertainty weighting' if args.uncertainty_weighting else ''}, "
                    f"seeds {seeds}, "
                    f"registry default configs {overrides or ''}",
        "machine": f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
                   f"{'cuda' if torch.cuda.is_available() else 'cpu'}",
        "date": dt.date.today().isoformat(),
    }
    arms: list[ArmResult] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    threads = args.threads or torch.get_num_threads()
    if args.tune_lr or args.tune_like or args.tune_grid:
        return tune(args, names, overrides, spec, data, seeds[0], train_config, header, out, threads)
    tuned = json.loads(Path(args.tuned).read_text())["best"] if args.tuned else {}
    if tuned:
        header["training"] += f"; per-arm lr / like weight / LightGBM knobs from {args.tuned}: {tuned}"

    def config_of(arm: str) -> Any:
        """The arm's tuned training config (ablations take INFNet's), else the common one."""
        best = tuned.get(arm) or (tuned.get("infnet") if arm in ABLATIONS else None)
        if not best:
            return train_config
        return replace(train_config, lr=best["lr"], task_weights=resolve_task_weights(spec, best["task_weights"]))

    def flush() -> None:
        out.write_text(render_report(arms, header))
        out.with_suffix(".json").write_text(json.dumps(
            {"header": header, "arms": [a.__dict__ for a in arms]}, indent=1, default=float))

    if not args.no_lightgbm:
        print("lightgbm", flush=True)
        arms.append(run_lightgbm_arm(spec, data, seeds, threads=threads, params=tuned.get("lightgbm")))
        flush()
    for name in names:
        model_name, config = (("infnet", dict(ABLATIONS[name])) if name in ABLATIONS else (name, {}))
        config.update(overrides.get(name, {}))
        arm = f"{name} {args.label}".strip()
        print(arm, flush=True)
        arms.append(run_torch_arm(arm, model_name, config, spec, data, seeds, config_of(name)))
        flush()
    if args.external:
        arms.extend(run_external_arms(spec, data, seeds, train_config, config_of))
        flush()
    print()
    print(render_table(arms, "valid"))
    print()
    print(render_table(arms))
    print(f"\nwritten to {out}")
    return 0


def tune(args, names, overrides, spec, data, seed, train_config, header, out: Path, threads: int) -> int:
    """Every arm over the same grid, one seed, chosen by mean valid AUC; writes ``out`` (.md/.json) with
    every run and ``best``: per arm the chosen settings, for ``--tuned``. Resumes: grid points already
    in ``out``'s JSON are not rerun."""
    from model.losses import resolve_task_weights

    lrs = [float(x) for x in (args.tune_lr or str(train_config.lr)).split(",")]
    likes = [float(x) for x in (args.tune_like or str(train_config.task_weights.get("like", 1.0))).split(",")]
    grid = ([(float(a), float(b)) for a, b in (p.split(":") for p in args.tune_grid.split(","))] if args.tune_grid
            else [(lr, like) for lr in lrs for like in likes])
    lgb_grid = [dict(zip(("learning_rate", "num_leaves"), (float(a), int(b))))
                for a, b in (p.split(":") for p in args.tune_lightgbm.split(","))]
    json_path = out.with_suffix(".json")
    runs = json.loads(json_path.read_text())["runs"] if json_path.exists() else []
    done = {(r["arm"], json.dumps(r["params"], sort_keys=True)) for r in runs}
    header = {**header, "mode": f"tuning: (lr, like weight) in {grid} for every neural arm, LightGBM "
                                f"{lgb_grid}; seed {seed}; chosen by mean valid AUC ({VALID})"}

    def record(arm: str, params: dict, result: ArmResult) -> None:
        run = result.runs[0] if result.runs else {}
        runs.append({"arm": arm, "params": params, "valid": run.get("valid"), "test": run.get("test"),
                     "epochs_run": run.get("epochs_run"), "best_epoch": run.get("best_epoch"),
                     "seconds": run.get("seconds")})
        best = {}
        for r in runs:
            if r["valid"] and (r["arm"] not in best or r["valid"]["mtl_auc"] > best[r["arm"]][0]):
                best[r["arm"]] = (r["valid"]["mtl_auc"], r["params"])
        lines = ["# Tuning on the valid day", ""] + [f"- {k}: {v}" for k, v in header.items()] + [
            "", "| arm | settings | valid mean AUC | valid click / like / long_view | best epoch |", "|---|---|---|---|---|"]
        for r in runs:
            v = r["valid"] or {}
            chosen = " **(chosen)**" if best.get(r["arm"], (None, None))[1] == r["params"] else ""
            lines.append(f"| {r['arm']} | {r['params']}{chosen} | {v.get('mtl_auc', float('nan')):.4f} | "
                         + " / ".join(f"{v[t]['auc']:.4f}" for t in TASKS if t in v) + f" | {r.get('best_epoch')} |")
        out.write_text("\n".join(lines) + "\n")
        json_path.write_text(json.dumps({"header": header, "runs": runs,
                                         "best": {a: p for a, (_, p) in best.items()}}, indent=1, default=float))

    if not args.no_lightgbm:
        for params in lgb_grid:
            if ("lightgbm", json.dumps(params, sort_keys=True)) in done:
                continue
            print(f"lightgbm {params}", flush=True)
            record("lightgbm", params, run_lightgbm_arm(spec, data, [seed], threads=threads, params=params))
    arms = [(name, "infnet" if name in ABLATIONS else name, {**ABLATIONS.get(name, {}), **overrides.get(name, {})}, None)
            for name in names]
    if args.external:
        from bench import external

        if external.available() is None:
            arms += [(f"torch-rechub {a}", a, {}, external.build) for a in external.ARCHITECTURES]
    for arm, model_name, config, builder in arms:
        for lr, like in grid:
            params = {"lr": lr, "task_weights": {"like": like}}
            if (arm, json.dumps(params, sort_keys=True)) in done:
                continue
            print(f"{arm} {params}", flush=True)
            cfg = replace(train_config, lr=lr, task_weights=resolve_task_weights(spec, {"like": like}))
            record(arm, params, run_torch_arm(arm, model_name, dict(config), spec, data, [seed], cfg, builder=builder))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
