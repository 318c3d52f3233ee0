"""Promote a model version to a registry alias when an A/B report shows it winning.

``infnet promote --candidate infnet@7 --alias champion --report ID`` reads the rows of report ``ID``
from ``ab_reports`` (``infnet ab_report`` prints the id) and moves ``infnet@champion`` to version 7
only if the report compares the candidate with another version and shows it winning on the primary
metric (its CI above zero) and losing on no guard metric (``--primary``, ``--guards``; defaults in
``conf.settings.PromotionSettings``; the rule: evaluation/promotion.py). Otherwise it prints why in
one line, exits 2 and moves nothing. The candidate may be an alias itself (``infnet@challenger``):
it is pinned to its version first, and the report must name that version.

The evidence is named one of three ways:

- ``--report ID``: that report;
- ``--against REF --dates D``: the report ``infnet ab_report --control REF --treatment CANDIDATE
  --dates D`` writes (its id follows from the pinned arms and the dates), what the training DAG
  runs after comparing a new version with the name's ``@champion`` on the validation days;
- ``--if-absent``: none; the alias is set only if the name has no such alias yet (the first version
  of a name has nothing to be compared with), else nothing moves and it says so (exit 0).

A candidate that already holds the alias is reported as such (exit 0), whatever the evidence.

No Spark: the report is read through delta-rs and DuckDB (``conf.lake_sql``), so promotion runs
beside jobs that hold the embedded catalog. The alias lives in MLflow's Model Registry
(``model/store.py``); ``infnet score --model infnet@champion`` then scores the promoted version.
"""
from __future__ import annotations

import argparse
import re
import sys

from conf.syntax import ModelRef, parse_model_ref
from jobs.common import add_dates_argument, base_parser, settings_from_args


def build_parser() -> argparse.ArgumentParser:
    from conf.settings import PromotionSettings

    cfg = PromotionSettings()
    parser = base_parser("promote", __doc__.splitlines()[0])
    parser.add_argument("--candidate", type=parse_model_ref, required=True,
                        help="NAME@VERSION (or NAME@ALIAS, NAME: pinned first) to promote")
    evidence = parser.add_mutually_exclusive_group(required=True)
    evidence.add_argument("--report", help="report_id in ab_reports (printed by infnet ab_report)")
    evidence.add_argument("--against", type=parse_model_ref, metavar="REF",
                          help="the report of ab_report --control REF --treatment CANDIDATE --dates D (needs --dates)")
    evidence.add_argument("--if-absent", action="store_true",
                          help="no report: set the alias only if the name has none yet (its first version)")
    add_dates_argument(parser, required=False, help="with --against: the report's dates (as ab_report got them)")
    parser.add_argument("--alias", default=cfg.champion_alias, help=f"the alias to move (default {cfg.champion_alias})")
    parser.add_argument("--primary", default=cfg.primary,
                        help=f"TASK:METRIC the candidate must win on (default {cfg.primary})")
    parser.add_argument("--guards", default=",".join(cfg.guards),
                        help=f"comma list of TASK:METRIC it must not lose on (default {','.join(cfg.guards)}; '' for none)")
    return parser


def report_rows(settings, report_id: str) -> list[dict]:
    """The ``ab_reports`` rows of one report (an empty list when there is none)."""
    from conf.lake_sql import duckdb_query
    from conf.tables import AB_REPORTS

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", report_id):  # ab_report's ids are hex: nothing to quote
        raise ValueError(f"bad report id {report_id!r}: expected what infnet ab_report prints (hex digits)")
    table = duckdb_query(settings, f"SELECT * FROM {AB_REPORTS.name} WHERE report_id = '{report_id}'")
    return table.to_pylist()


def promote(settings, args) -> str:
    """Move the alias when the evidence allows it; returns what was done, raises ``ValueError`` /
    ``FileNotFoundError`` / ``ConnectionError`` (one line each) otherwise."""
    from evaluation.ab import report_id_for
    from evaluation.promotion import PromotionError, promotion_decision, split_metric
    from model.store import ModelStore

    guards = tuple(g.strip() for g in args.guards.split(",") if g.strip())
    for metric in (args.primary, *guards):
        split_metric(metric)
    if args.against is not None and not args.dates:
        raise ValueError("--against needs --dates: the days its A/B report covers")
    store = ModelStore.of(settings)
    name, version = store.resolve(str(args.candidate))  # checked to exist, an alias pinned
    candidate = ModelRef(name, str(version))
    before = store.aliases(candidate.name).get(args.alias)
    if before == version:
        return f"{candidate.name}@{args.alias} is already version {version}: nothing to move"
    if args.if_absent:
        if before is not None:
            return f"{candidate.name}@{args.alias} stays version {before} (--if-absent: only a first alias is set)"
        store.set_alias(candidate.name, args.alias, version)
        return f"{candidate.name}@{args.alias} -> version {version} (new alias: the name's first, no report needed)"
    report = args.report
    if args.against is not None:
        report = report_id_for(str(store.pin(args.against)), str(candidate), args.dates)
    rows = report_rows(settings, report)
    if not rows:
        raise PromotionError(f"no A/B report {report!r} in {settings.lake.database}.ab_reports "
                             "(infnet ab_report prints the id of the one it writes)")
    decision = promotion_decision(rows, str(candidate), args.primary, guards)
    if not decision.promote:
        raise PromotionError(f"not promoted: {decision.reason}")
    store.set_alias(candidate.name, args.alias, version)
    was = "new alias" if before is None else f"was version {before}"
    return f"{candidate.name}@{args.alias} -> version {candidate.version} ({was}): {decision.reason}"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    try:
        print(promote(settings, args))
    except (ValueError, OSError) as err:  # PromotionError, ModelNotFound, RegistryError, LakeSqlError
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
