"""``infnet <job> [flags]``: one CLI over every job; ``infnet <job> --help`` explains each.

The same jobs run as ``scripts/spark-submit jobs/<job>.py [flags]``.
"""
from __future__ import annotations

import importlib
import sys

JOBS = {
    "ingest": "land raw logs, users, videos and history into bronze Delta tables (with quarantine)",
    "build_features": "build the examples table (categorical, sequence, statistical, task features)",
    "quality_gate": "run the great-expectations suites on a table partition; fail on critical errors",
    "train": "train a model from the examples table into the model store",
    "build_candidates": "build the candidates table of a date: logged replay, Spark retrieval or an import",
    "score": "score candidates with a model inside a pandas UDF into the scores table",
    "rank": "top-K lists per user from a model's scores into recommendations, judged by replay on the day's logs",
    "evaluate": "AUC / gAUC / LogLoss per task into the metrics table",
    "ab_report": "compare two models on the same candidates (paired bootstrap) into ab_reports + HTML",
    "promote": "move a registry alias (champion) to a model version that wins its A/B report",
    "sql": "run a SQL query against the lake's catalog and print the result (read-only unless --allow-writes)",
    "demo": "run the whole pipeline end to end on the bundled KuaiRand data",
}


def usage() -> str:
    width = max(map(len, JOBS))
    lines = "\n".join(f"  {name:<{width}}  {text}" for name, text in JOBS.items())
    return f"usage: infnet <job> [flags]   (infnet <job> --help for its flags)\n\njobs:\n{lines}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0].replace("-", "_"), argv[1:]
    if name not in JOBS:
        print(f"infnet: unknown job {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"jobs.{name}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
