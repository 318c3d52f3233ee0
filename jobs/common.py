"""What every job entry point shares: common flags, settings, the session, logging, clear errors."""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from conf.settings import Settings
from conf.spark import get_spark

log = logging.getLogger("infnet")


class JobError(RuntimeError):
    """An expected failure (bad input, missing table, failed gate): printed without a traceback."""


def parse_date(value: str) -> str:
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def parse_dates(value: str) -> list[str]:
    """``2022-05-03``, ``2022-05-03,2022-05-04`` or a range ``2022-05-03..2022-05-04``."""
    if ".." in value:
        start, end = (dt.date.fromisoformat(parse_date(v)) for v in value.split("..", 1))
        if end < start:
            raise argparse.ArgumentTypeError(f"empty date range: {value!r}")
        return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    return [parse_date(v) for v in value.split(",") if v]


@dataclass(frozen=True)
class ModelRef:
    """``name@version`` as the scores and metrics tables store it (version None: not pinned yet)."""

    name: str
    version: str | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def parse_model_ref(value: str) -> ModelRef:
    """``infnet@3`` -> ModelRef("infnet", "3"); ``infnet`` -> the newest version, pinned later."""
    name, sep, version = value.partition("@")
    if not name or (sep and not version.isdigit()):
        raise argparse.ArgumentTypeError(f"expected NAME or NAME@VERSION (an integer), got {value!r}")
    return ModelRef(name, str(int(version)) if sep else None)


def pin_model_ref(settings: Settings, ref: ModelRef) -> ModelRef:
    """Resolve a bare name to the newest version in the model store (clear error when absent)."""
    if ref.version is not None:
        return ref
    from model.store import ModelNotFound, resolve_ref

    try:
        name, version = resolve_ref(settings, ref.name)
    except ModelNotFound as err:
        raise JobError(str(err)) from None
    return ModelRef(name, str(version))


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
) -> int:
    """Parse flags, build settings and session, run ``body(spark, settings, args)``.

    Expected failures (:class:`JobError`, missing tables, setup problems) print one clear line and
    exit 2; anything else keeps its traceback because it is a bug.
    """
    from conf.spark import SetupError

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = settings_from_args(args)
    try:
        spark = get_spark(settings, app_name=f"infnet-{parser.prog}")
        body(spark, settings, args)
    except (JobError, FileNotFoundError, SetupError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
