"""The cluster proof's pipeline run: the project's jobs, in one process and one Spark application
(like ``infnet demo``), on whatever the settings say (the proof: ``local-cluster[2,1,1024]``, the
lake on moto S3, the Postgres metastore).

    INFNET_RAW_DIR=<landing zone> python tests/cluster/run_pipeline.py --go-file FILE

Steps: ingest -> build_features -> train (``--distributed 2``) -> build_candidates -> score day 1
-> [wait for ``--go-file``: the SQL clients are polling] -> score day 2 -> evaluate both days.
Each step prints ``STEP <name> start|done <seconds>`` so the test can follow it live; a failing
job ends the run with its exit code.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# The bundled log's days the proof uses: 4 training days, 1 validation day, 2 scored days.
TRAIN, VALID, DAY1, DAY2 = "2022-04-25..2022-04-28", "2022-04-29", "2022-04-30", "2022-05-01"
ALL = "2022-04-25..2022-05-01"
MODEL = "infnet"


def steps() -> list[tuple[str, str, list[str]]]:
    return [
        ("ingest", "ingest", ["--dates", ALL]),  # raw files from $INFNET_RAW_DIR
        ("build_features", "build_features", ["--dates", ALL]),
        ("train", "train", ["--model", MODEL, "--train-dates", TRAIN, "--valid-dates", VALID, "--epochs", "1",
                            "--no-progress", "--distributed", "2", "--threads", "1", "--batch-size", "256"]),
        ("build_candidates", "build_candidates", ["--dates", f"{DAY1},{DAY2}"]),
        ("score1", "score", ["--model", MODEL, "--date", DAY1]),
        ("wait", "", []),
        ("score2", "score", ["--model", MODEL, "--date", DAY2]),
        ("evaluate", "evaluate", ["--model", MODEL, "--dates", f"{DAY1},{DAY2}"]),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--go-file", help="wait for this file before the second score (the pollers' cue)")
    parser.add_argument("--go-timeout", type=float, default=600)
    args = parser.parse_args(argv)
    started = time.monotonic()
    for name, job, flags in steps():
        t0 = time.monotonic()
        print(f"STEP {name} start", flush=True)
        if name == "wait":
            while args.go_file and not os.path.exists(args.go_file):
                if time.monotonic() - t0 > args.go_timeout:
                    print(f"run_pipeline: no {args.go_file} after {args.go_timeout:g} s", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        else:
            rc = importlib.import_module(f"jobs.{job}").main(flags)
            if rc != 0:
                print(f"run_pipeline: step {name} (infnet {job}) failed with exit {rc}", file=sys.stderr)
                return rc
        print(f"STEP {name} done {time.monotonic() - t0:.1f}", flush=True)
    print(f"PIPELINE done {time.monotonic() - started:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
