"""Model speed: INFNet forward time vs sequence length, training throughput of every model, and
the gain of user-side reuse when scoring many candidates per user.

    python -m bench.model_speed            # full run
    python -m bench.model_speed --quick    # small batches, few repeats
    python -m bench.model_speed --device cuda

Synthetic batches shaped like the real feature spec (45 categorical fields: 20 user, 18 item,
7 context; 3 behaviour sequences; 4 tasks). The spec says one INFNet block costs
O((m + F + N_s + N_task) (M + L) d): linear in the sequence length L, which the ratio column checks
(linear: ratio = length ratio for the sequence part, less overall because the categorical part is
fixed).
"""
from __future__ import annotations

import argparse
import statistics
import time
import torch

from features.spec import CategoricalField, FeatureSpec, SequenceField, TaskField
from model.base import group_by_user, random_batch, repeat_users
from model.registry import MODEL_NAMES, build_model
from model.train import MultiTaskLoss


def realistic_spec(seq_len: int = 50) -> FeatureSpec:
    """45 categorical fields and 3 sequences with KuaiRand-like vocabularies."""
    user = [CategoricalField("user_id", 30_000, side="user"), CategoricalField("user_active_degree", 8, side="user")]
    user += [CategoricalField(f"user_feat_{i}", 64, side="user") for i in range(18)]
    item = [CategoricalField("video_id", 10_000, side="item"), CategoricalField("author_id", 8_000, side="item")]
    item += [CategoricalField(f"video_feat_{i}", 64, side="item") for i in range(16)]
    context = [CategoricalField("hour", 25), CategoricalField("tab", 16)]
    context += [CategoricalField(f"context_feat_{i}", 32) for i in range(5)]
    return FeatureSpec(
        categorical=tuple(user + item + context),
        sequences=tuple(SequenceField(n, 10_000, max_len=seq_len) for n in ("click", "long_view", "like")),
        tasks=(TaskField("click"), TaskField("like"), TaskField("long_view"), TaskField("play_time", "regression")),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = time.perf_counter  # --clock cpu: process CPU time, robust when other jobs share the cores


def timed(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        sync(device)
        times.append(CLOCK() - start)
    return statistics.median(times)


def full_batch(spec: FeatureSpec, batch_size: int, seed: int, device: torch.device) -> dict:
    """Every sequence full (the worst case for the sequence part)."""
    b = random_batch(spec, batch_size, seed=seed, device=device)
    g = torch.Generator().manual_seed(seed)
    n = b["seq"].shape[-1]
    b["seq"] = torch.randint(1, spec.sequences[0].vocab_size, b["seq"].shape, generator=g).to(device)
    b["seq_gap"] = (torch.arange(n, dtype=torch.float32) * 0.1 + 3.0).expand_as(b["seq_gap"]).contiguous().to(device)
    return b


def bench_sequence_length(args, device: torch.device) -> None:
    lengths = (50, 100, 200, 400)
    print(f"\n== INFNet forward time vs sequence length (batch {args.length_batch}, 3 sequences, eval, {device}) ==")
    print(f"{'n per seq':>9} {'tokens L':>8} {'ms/batch':>9} {'ratio vs 50':>11} {'length ratio':>12}")
    model = build_model("infnet", realistic_spec(), seed=0).to(device).eval()
    base = None
    for n in lengths:
        batch = full_batch(realistic_spec(n), args.length_batch, seed=n, device=device)
        with torch.inference_mode():
            t = timed(lambda: model(batch), device, args.repeats * 2)
        base = base or t
        print(f"{n:>9} {3 * n:>8} {t * 1e3:>9.2f} {t / base:>11.2f} {n / lengths[0]:>12.0f}")


def bench_training(args, device: torch.device) -> None:
    spec = realistic_spec(50)
    print(f"\n== Training step throughput (batch {args.train_batch}, seq len 50, Adam, {device}) ==")
    print(f"{'model':>14} {'params':>10} {'ms/step':>9} {'examples/s':>11} {'vs infnet':>10}")
    batches = [random_batch(spec, args.train_batch, seed=s, device=device) for s in range(2)]
    ref = None
    for name in MODEL_NAMES:
        model = build_model(name, spec, seed=0).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = MultiTaskLoss(spec).to(device)  # built once, outside the timed step
        step_no = [0]

        def step():
            batch = batches[step_no[0] % 2]
            step_no[0] += 1
            loss = loss_fn(model(batch), batch["label"], batch["mask"])[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t = timed(step, device, args.repeats)
        ref = ref or t
        print(f"{name:>14} {model.n_params():>10,} {t * 1e3:>9.1f} {args.train_batch / t:>11,.0f} {ref / t:>9.2f}x")


def bench_user_reuse(args, device: torch.device) -> None:
    spec = realistic_spec(50)
    per_user = args.candidates
    users = max(1, args.batch // per_user)
    rows = [i // per_user for i in range(users * per_user)]
    batch = repeat_users(random_batch(spec, users * per_user, seed=1), spec, rows)
    batch_user, user_index = group_by_user(batch, spec)
    batch, batch_user, user_index = ({k: v.to(device) for k, v in batch.items()},
                                     {k: v.to(device) for k, v in batch_user.items()}, user_index.to(device))
    print(f"\n== Scoring {users} users x {per_user} candidates: plain forward vs encode_user once + reuse "
          f"({device}) ==")
    print(f"{'model':>14} {'plain ms':>9} {'reuse ms':>9} {'speed-up':>9}")
    for name in MODEL_NAMES:
        model = build_model(name, spec, seed=0).to(device).eval()
        with torch.inference_mode():
            plain = timed(lambda: model(batch), device, args.repeats)
            reuse = timed(lambda: model({"cat": batch["cat"]}, model.encode_user(batch_user), user_index),
                          device, args.repeats)
        print(f"{name:>14} {plain * 1e3:>9.2f} {reuse * 1e3:>9.2f} {plain / reuse:>8.2f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small batches and few repeats")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time (use with --threads 1 on a machine shared with other jobs)")
    p.add_argument("--only", choices=["length", "train", "reuse"], default=None)
    args = p.parse_args(argv)
    global CLOCK
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        CLOCK = time.process_time
    gpu = args.device.startswith("cuda")
    # The length sweep keeps CPU batches small: at L = 1200 a batch of 1024 holds 150 MB per
    # activation, and page faults / memory bandwidth (not the arithmetic) then dominate.
    args.length_batch = (256 if args.quick else 1024) if gpu else (32 if args.quick else 64)
    args.batch = (256 if args.quick else 1024) * (4 if gpu else 1)
    args.train_batch = (256 if args.quick else 1024) * (4 if gpu else 1)
    args.repeats = 3 if args.quick else 10
    args.candidates = 32
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if gpu else f", {torch.get_num_threads()} threads")
          + f", {args.clock} clock")
    if args.only in (None, "length"):
        bench_sequence_length(args, device)
    if args.only in (None, "train"):
        bench_training(args, device)
    if args.only in (None, "reuse"):
        bench_user_reuse(args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
