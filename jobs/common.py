"""What every job entry point shares: common flags, settings, the session, logging, clear errors."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from conf.errors import CatalogInUse, catalog_in_use_message, check_catalog_free, is_catalog_in_use_error, quiet_loggers
from conf.settings import Settings
from conf.spark import get_spark
from conf.syntax import parse_dates

log = logging.getLogger("infnet")


class JobError(RuntimeError):
    """An expected failure (bad input, missing table, failed gate): printed without a traceback."""


DATES_HELP = "date, comma list or range a..b (YYYY-MM-DD)"


def add_dates_argument(parser, required: bool = True, help: str = DATES_HELP) -> None:  # noqa: A002
    """The ``--date`` / ``--dates`` flag every dated job takes (``args.dates``: a list of YYYY-MM-DD)."""
    parser.add_argument("--date", "--dates", dest="dates", type=parse_dates, required=required, help=help)


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lake", help="lake root folder or URI (default: $INFNET_LAKE or <repo>/lake)")
    parser.add_argument("--master", help="Spark master (default: $INFNET_SPARK_MASTER or local[*])")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    from dataclasses import replace

    settings = Settings().with_lake(args.lake)
    if getattr(args, "master", None):
        settings = replace(settings, spark=replace(settings.spark, master=args.master))
    return settings


def run_job(
    parser: argparse.ArgumentParser,
    body: Callable[..., object],
    argv: Sequence[str] | None = None,
    upgrade: bool = True,
) -> int:
    """Parse flags, build settings and session, run ``body(spark, settings, args)``.

    Expected failures (:class:`JobError`, missing tables, setup problems, the catalog held by
    another job) print one clear line and exit 2; anything else keeps its traceback because it is
    a bug.
    """
    from conf.spark import SetupError

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_loggers(args.verbose)
    settings = settings_from_args(args)
    try:
        check_catalog_free(settings)
        spark = get_spark(settings, app_name=f"infnet-{parser.prog}")
        if upgrade:  # an older lake's tables to the current schema, before anything reads them
            from conf.lake import upgrade_lake  # pyspark: not for the duckdb engine's jobs.sql import
            for column in upgrade_lake(spark, settings):
                log.info("upgraded the lake: added %s", column)
        body(spark, settings, args)
    # ConnectionError: a service the job needs (the model registry) did not answer
    except (JobError, CatalogInUse, FileNotFoundError, ConnectionError, SetupError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if not is_catalog_in_use_error(err):
            raise
        print(f"{parser.prog}: error: {catalog_in_use_message(settings.lake.metastore_dir)}", file=sys.stderr)
        return 2
    return 0
