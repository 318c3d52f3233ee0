"""Cluster benchmarks, each ratio measured side by side in one run (issue 13).

1. ``--scoring``: scoring throughput on ``local-cluster[2,1,1024]`` (two executor JVMs of one core)
   vs ``local[2]`` (one JVM, two task threads) on the same packed Parquet file of synthetic
   candidates with the real feature spec's shape, INFNet, ``mapInArrow`` as ``infnet score`` runs
   it (``bench.scoring.spark_rate``: warm-up on a 1 % sample, then the whole file to the ``noop``
   sink). Each master runs in its own process (one Spark application per process); ``--repeat``
   alternates them to show the noise.
2. ``--thrift``: query latency on a ``scores``-shaped Delta table through the SQL endpoint (Thrift
   server on a project-local Postgres metastore, two-process PyHive polling) while idle vs while
   another Spark application rewrites one day of the table again and again (``replaceWhere``).

Usage::

    .venv/bin/python -m bench.cluster --scoring --rows 200000
    .venv/bin/python -m bench.cluster --thrift --queries 40
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLUSTER, LOCAL = "local-cluster[2,1,1024]", "local[2]"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------- scoring

def prepare_scoring(work: Path, rows: int, per_request: int) -> dict:
    import pyarrow.parquet as pq

    from bench.scoring import PASSTHROUGH, synthetic_candidates
    from conf.settings import Settings
    from features.candidates import pack_adjacent_rows
    from features.examples import build_spec
    from model.registry import build_model
    from model.store import ModelStore

    spec = build_spec(Settings())
    store = str(work / "models")
    ModelStore(store).save("infnet", build_model("infnet", spec, seed=0), spec, architecture="infnet")
    table = synthetic_candidates(spec, rows, per_request)
    packed = pack_adjacent_rows(table, spec, PASSTHROUGH)
    path = str(work / "requests.parquet")
    pq.write_table(packed, path, row_group_size=max(packed.num_rows // 8, 16))
    return {"store": store, "path": path, "rows": rows, "per_request": per_request}


def scoring_child(work: Path, master: str, batch_rows: int) -> None:
    """One master's rate, printed as JSON (runs in its own process)."""
    from dataclasses import replace

    from bench.scoring import spark_rate
    from conf.settings import Settings
    from conf.spark import get_spark
    from features.examples import build_spec

    plan = json.loads((work / "plan.json").read_text())
    settings = Settings().with_lake(str(work / "lake"))
    settings = replace(settings, spark=replace(settings.spark, master=master, shuffle_partitions=2, driver_memory="2g"))
    spark = get_spark(settings, "bench-cluster")
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(max(os.path.getsize(plan["path"]) // 4, 1 << 20)))
    spec = build_spec(settings)
    request_batch = max(batch_rows // plan["per_request"], 1)
    r = spark_rate(spark, plan["path"], plan["rows"], plan["store"], "infnet@1", spec, "arrow", request_batch, "cpu",
                   "packed")
    print("RATE " + json.dumps({"master": master, "candidates_per_s": r}), flush=True)
    spark.stop()


def run_scoring(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        plan = prepare_scoring(work, args.rows, args.per_request)
        (work / "plan.json").write_text(json.dumps(plan))
        print(f"[scoring] {args.rows:,} candidates, {args.per_request} per request, packed file "
              f"{os.path.getsize(plan['path']) / 2**20:.1f} MiB, INFNet, mapInArrow, batch {args.batch_rows}", flush=True)
        rates: dict[str, list[float]] = {LOCAL: [], CLUSTER: []}
        for round_ in range(args.repeat):
            order = (LOCAL, CLUSTER) if round_ % 2 == 0 else (CLUSTER, LOCAL)
            for master in order:
                env = {**os.environ, "INFNET_SERVICES_DIR": str(work / "services")}
                env.pop("SPARK_HOME", None)
                out = subprocess.run([sys.executable, "-m", "bench.cluster", "--scoring-child", str(work),
                                      "--master", master, "--batch-rows", str(args.batch_rows)],
                                     capture_output=True, text=True, env=env, cwd=REPO, timeout=3600)
                line = next((x for x in out.stdout.splitlines() if x.startswith("RATE ")), None)
                if out.returncode != 0 or line is None:
                    raise SystemExit(f"{master} run failed:\n{out.stderr[-3000:]}")
                rate = json.loads(line[5:])["candidates_per_s"]
                rates[master].append(rate)
                print(f"[scoring] round {round_ + 1} {master:<24} {rate:>10,.0f} candidates/s", flush=True)
        c, l = statistics.median(rates[CLUSTER]), statistics.median(rates[LOCAL])
        print(f"[scoring] {CLUSTER} vs {LOCAL}: {c:,.0f} vs {l:,.0f} candidates/s = {c / l:.2f}x "
              f"(median of {args.repeat})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -------------------------------------------------------------------------------------- thrift

WRITER = """
import sys, time, datetime as dt
from conf.settings import Settings
from conf.spark import get_spark
from conf.lake import write_table
from conf.tables import TableDef
from pyspark.sql import functions as F
rows, seconds = int(sys.argv[1]), float(sys.argv[2])
spark = get_spark(Settings(), "bench-writer")
table = TableDef("bench_scores", ("request_id", "video_id"), ("date",))
def day(d):
    return (spark.range(rows).select(F.concat(F.lit("r"), (F.col("id") % 1000).cast("string")).alias("request_id"),
            F.col("id").alias("video_id"), F.rand(int(time.time())).alias("score_click"),
            F.lit(dt.datetime.now()).alias("scored_at"), F.lit(d).cast("date").alias("date")))
if sys.argv[3] == "init":
    write_table(day("2022-05-01"), Settings(), table, {"date": "2022-05-01"})
    write_table(day("2022-05-02"), Settings(), table, {"date": "2022-05-02"})
    print("INIT done", flush=True)
else:
    print("WRITING", flush=True)
    end, n = time.time() + seconds, 0
    while time.time() < end:
        write_table(day("2022-05-02"), Settings(), table, {"date": "2022-05-02"})
        n += 1
    print(f"WROTE {n}", flush=True)
"""
QUERY = ("SELECT `date`, count(*), round(avg(score_click), 4), count(DISTINCT scored_at) "
         "FROM infnet.bench_scores GROUP BY `date` ORDER BY `date`")


def latencies(port: int, n: int) -> list[float]:
    from pyhive import hive

    conn = hive.connect(host="127.0.0.1", port=port, username="bench", auth="NONE")
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            cursor = conn.cursor()
            cursor.execute(QUERY)
            rows = cursor.fetchall()
            cursor.close()
            out.append(time.perf_counter() - t0)
            assert len(rows) == 2 and all(r[3] == 1 for r in rows), rows  # whole versions only
    finally:
        conn.close()
    return out


def run_thrift(args) -> None:
    services = Path(tempfile.mkdtemp(prefix="bench-cluster-services-"))
    services.chmod(0o755)
    env = {**os.environ, "INFNET_SERVICES_DIR": str(services), "INFNET_PG_PORT": str(free_port()),
           "INFNET_THRIFT_PORT": str(free_port()), "INFNET_LAKE": str(services / "lake"),
           "INFNET_SPARK_MASTER": "local[1]", "INFNET_SHUFFLE_PARTITIONS": "2", "INFNET_THRIFT_MASTER": "local[1]"}
    port = int(env["INFNET_THRIFT_PORT"])
    scripts = REPO / "scripts"
    try:
        subprocess.run([str(scripts / "postgres.sh"), "start"], env=env, check=True, capture_output=True, timeout=600)
        exports = subprocess.run([str(scripts / "postgres.sh"), "env"], env=env, check=True, capture_output=True,
                                 text=True).stdout
        env.update(a.split("=", 1) for a in exports.replace("export ", "").split())
        subprocess.run([sys.executable, "-c", WRITER, str(args.table_rows), "0", "init"], env=env, cwd=REPO,
                       check=True, capture_output=True, timeout=1200)
        subprocess.run([str(scripts / "thrift-server.sh"), "start"], env=env, check=True, capture_output=True,
                       timeout=600)
        latencies(port, 3)  # warm-up: first queries compile and list the table
        idle = latencies(port, args.queries)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(args.table_rows), "100000", "write"], env=env,
                                  cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().startswith("WRITING")
        time.sleep(args.writer_warmup)  # past the writer's JVM start: its writes are under way
        busy = latencies(port, args.queries)
        writer.terminate()
        writer.wait(timeout=120)
        print(f"[thrift] {args.table_rows:,}-row table, {args.queries} queries each: idle median "
              f"{statistics.median(idle) * 1000:.0f} ms (p90 {sorted(idle)[int(0.9 * len(idle))] * 1000:.0f}), "
              f"while a job rewrites a day median {statistics.median(busy) * 1000:.0f} ms (p90 "
              f"{sorted(busy)[int(0.9 * len(busy))] * 1000:.0f}) = {statistics.median(busy) / statistics.median(idle):.2f}x; "
              "every query saw whole versions")
    finally:
        subprocess.run([str(scripts / "thrift-server.sh"), "stop"], env=env, capture_output=True, timeout=300)
        subprocess.run([str(scripts / "postgres.sh"), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(services, ignore_errors=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scoring", action="store_true")
    parser.add_argument("--thrift", action="store_true")
    parser.add_argument("--rows", type=int, default=200_000, help="candidates of the scoring file")
    parser.add_argument("--per-request", type=int, default=100)
    parser.add_argument("--batch-rows", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs per master")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--table-rows", type=int, default=200_000)
    parser.add_argument("--writer-warmup", type=float, default=30.0)
    parser.add_argument("--scoring-child", help=argparse.SUPPRESS)
    parser.add_argument("--master", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scoring_child:
        scoring_child(Path(args.scoring_child), args.master, args.batch_rows)
        return
    if not (args.scoring or args.thrift):
        args.scoring = args.thrift = True
    if args.scoring:
        run_scoring(args)
    if args.thrift:
        run_thrift(args)


if __name__ == "__main__":
    main()
