"""Train a model from the examples table into the model store.

Pins ``examples`` at one Delta version (``--examples-version``, default: the current one) so the
run is reproducible, streams the train / valid / test dates from that snapshot's Parquet files
(model/snapshot.py, model/loaders.py), trains with early stopping on the validation days' mean AUC (model/train.py),
evaluates the test days, and stores weights + configs + feature spec + Delta version + date split
+ metrics as the next registered version of ``--name`` in MLflow's Model Registry (model/store.py),
linked to the run's MLflow tracking (model/tracking.py), and points the name's ``@challenger``
alias at it (``infnet promote`` moves ``@champion``). Prints ``name@version``.

With ``--distributed N`` the model trains in N data-parallel processes (DDP through Spark's
TorchDistributor: barrier tasks on the executors of a cluster master, processes beside the driver
with ``local[*]``; model/distributed.py).

Example:
    infnet train --model infnet --config d=64 --config n_blocks=2 \\
        --train-dates 2022-04-25..2022-05-01 --valid-dates 2022-05-02 --test-dates 2022-05-03..2022-05-04
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from conf.syntax import check_date_split, parse_dates, parse_key_value
from jobs.common import JobError, base_parser, run_job

log = logging.getLogger("infnet.train")


def build_parser() -> argparse.ArgumentParser:
    from model.losses import parse_task_weight

    parser = base_parser("train", __doc__.splitlines()[0])
    parser.epilog = "\n".join(__doc__.splitlines()[2:])
    parser.add_argument("--model", required=True, help="registry name: infnet, mmoe, ple, ...")
    parser.add_argument("--name", help="registered model name (default: the --model name); the new version "
                                       "gets its @challenger alias")
    parser.add_argument("--config", action="append", type=parse_key_value, default=[], metavar="KEY=VALUE",
                        help="model config field (repeatable), e.g. --config d=64")
    parser.add_argument("--train-dates", type=parse_dates, required=True, help="date, list or range a..b")
    parser.add_argument("--valid-dates", type=parse_dates, required=True, help="early-stopping dates")
    parser.add_argument("--test-dates", type=parse_dates, help="held-out dates evaluated once at the end")
    parser.add_argument("--examples-version", type=int, help="Delta version of examples (default: current)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--embedding-lr", type=float, help="learning rate of the embedding tables (default: --lr)")
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--patience", type=int)
    parser.add_argument("--eval-every-steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto (default) | cpu | cuda")
    parser.add_argument("--threads", dest="num_threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--task-weight", dest="task_weights", action="append", type=parse_task_weight, default=[],
                        metavar="TASK=W",
                        help="loss weight of a task (repeatable); default 1, like 10 (model.losses.DEFAULT_TASK_WEIGHTS)")
    parser.add_argument("--uncertainty-weighting", action="store_true", help="learn task weights (Kendall et al.)")
    parser.add_argument("--gradnorm", action="store_true",
                        help="learn task weights with GradNorm (Chen et al.), starting from --task-weight")
    parser.add_argument("--pareto", action="store_true",
                        help="per-step Pareto task weights (MGDA-UB, Sener & Koltun), scaled by --task-weight")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (logs only)")
    parser.add_argument("--distributed", type=int, metavar="N",
                        help="train in N DDP processes with TorchDistributor (gloo on CPU, nccl on GPU executors)")
    return parser


def body(spark, settings, args) -> None:
    from conf.lake import current_version, table_exists
    from conf.tables import EXAMPLES
    from features.examples import load_feature_spec
    from model.loaders import ArrowBatches
    from model.snapshot import SnapshotError, resolve_snapshot
    from model.metrics import format_metrics
    from model.registry import MODEL_NAMES
    from model.store import ModelStore
    from model.losses import resolve_task_weights
    from model.tracking import RUN_ID_KEY, TrackingError, open_training_run, training_params
    from model.train import TrainConfig, build_and_train

    if args.model not in MODEL_NAMES:
        raise JobError(f"unknown model {args.model!r}; known: {', '.join(MODEL_NAMES)}")
    if not table_exists(spark, settings, EXAMPLES):
        raise JobError("the examples table does not exist: run `infnet build_features` first")
    splits = {"train": args.train_dates, "valid": args.valid_dates, "test": args.test_dates or []}
    try:
        check_date_split(splits)
    except ValueError as err:
        raise JobError(str(err)) from None
    latest = current_version(spark, settings, EXAMPLES)
    version = latest if args.examples_version is None else args.examples_version
    if not 0 <= version <= latest:
        raise JobError(f"examples has versions 0..{latest}; --examples-version {version} does not exist")
    spec = load_feature_spec(spark, settings, version)
    path = settings.lake.table_path(EXAMPLES.name)
    try:
        snapshots = {s: resolve_snapshot(spark, path, version, d) for s, d in splits.items() if d}
    except SnapshotError as err:
        raise JobError(str(err)) from None
    config = TrainConfig.from_flags(vars(args))  # the flags are named as TrainConfig's fields
    try:  # store the weights the loss used, defaults included
        config = dataclasses.replace(config, task_weights=resolve_task_weights(spec, config.task_weights))
    except ValueError as err:
        raise JobError(str(err)) from None
    log.info("examples@%d: %s", version, ", ".join(f"{s} {snap.num_rows} rows" for s, snap in snapshots.items()))
    batches = {s: ArrowBatches(snap, spec, config.batch_size, shuffle=(s == "train"), seed=config.seed,
                               shuffle_buffer_rows=config.shuffle_buffer_rows, drop_last=False)
               for s, snap in snapshots.items()}
    try:  # opened before training: a tracking store that does not answer fails now, not after hours
        run = open_training_run(settings, args.name or args.model, training_params(
            args.model, config.to_dict(), dataclasses.asdict(settings.features), splits, version))
        run.log_examples_input(path, version, spec.fingerprint(), json.loads(spec.to_json()))
    except TrackingError as err:
        raise JobError(str(err)) from None
    with run:  # FAILED in the store when training raises
        try:
            if args.distributed:
                from model.distributed import train_distributed

                result = train_distributed(spark, settings, args.model, spec, snapshots, config, dict(args.config),
                                           args.distributed)
            else:
                result = build_and_train(args.model, spec, batches["train"], batches["valid"], batches.get("test"),
                                         config, dict(args.config))
        except ValueError as err:  # bad config field, unknown task weight, too many processes
            raise JobError(str(err)) from None
        store = ModelStore.of(settings)
        info = store.save(
            args.name or args.model, result.model, spec, architecture=args.model, run_id=run.run_id,
            model_config=result.model_config, train_config=config.to_dict(), examples_version=version,
            date_split=splits, metrics=result.metrics,
            extra={"history": result.history, "rows": {s: snap.num_rows for s, snap in snapshots.items()},
                   "distributed_processes": args.distributed or 1, RUN_ID_KEY: run.run_id},
        )
        store.set_alias(info.name, settings.promotion.challenger_alias, info.version)
        try:
            run.log_result(result.model_config, result.metrics, result.history, info.ref)
        except TrackingError as err:
            raise JobError(f"{info.ref} is stored, but its run was not completed: {err}") from None
    print(format_metrics(result.metrics))
    print(f"{info.ref} = {info.name}@{settings.promotion.challenger_alias} (registered model version; "
          f"MLflow run {run.run_id} in {run.tracking_uri})")


def main(argv=None) -> int:
    return run_job(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
