"""What every job entry point shares: common flags, settings, the session, logging, clear errors."""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from conf.settings import Settings
from conf.spark import get_spark

log = logging.getLogger("infnet")


class JobError(RuntimeError):
    """An expected failure (bad input, missing table, failed gate): printed without a traceback."""


# ---------------------------------------------------------------------------------------------
# The embedded Derby catalog admits one process at a time
# ---------------------------------------------------------------------------------------------

DERBY_IN_USE_MARKERS = ("XSDB6", "Another instance of Derby")


def catalog_in_use_message(metastore_dir: str) -> str:
    return (f"the catalog {metastore_dir} is in use by another job (the embedded Derby metastore admits "
            "one process at a time): wait for that job to finish, or point the jobs at a shared metastore")


def derby_held_by_another_process(metastore_dir: str) -> bool:
    """Whether another process has booted the Derby database at ``metastore_dir``.

    A booted Derby holds an OS lock (``fcntl``, what Java's ``FileChannel.tryLock`` takes on Linux)
    on ``dbex.lck`` for as long as it runs; the file itself stays behind after a crash, so its
    presence alone proves nothing. The probe takes the lock without blocking and drops it at once.
    """
    lock_file = os.path.join(metastore_dir, "dbex.lck")
    try:
        import fcntl

        with open(lock_file, "r+b") as handle:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.lockf(handle, fcntl.LOCK_UN)
    except (ImportError, OSError):  # no such file (never booted, another metastore), no fcntl, no access
        return False
    return False


def check_catalog_free(settings: Settings) -> None:
    """Refuse to start a Spark application on a catalog another process holds (one clear line
    instead of the metastore's retries and 20k lines of stack traces), after waiting up to
    ``settings.spark.catalog_release_wait_s`` for a job that is just exiting to let go of it.
    Skipped when this process already runs a Spark session: its own JVM may be the holder."""
    from pyspark import SparkContext

    if SparkContext._active_spark_context is not None:
        return
    metastore_dir = settings.lake.metastore_dir
    deadline = time.monotonic() + max(settings.spark.catalog_release_wait_s, 0.0)
    while derby_held_by_another_process(metastore_dir):
        if time.monotonic() >= deadline:
            raise JobError(catalog_in_use_message(metastore_dir))
        time.sleep(0.5)


def is_catalog_in_use_error(err: BaseException) -> bool:
    """Whether ``err`` (or its Java stack trace) is Derby refusing a second process (``XSDB6``)."""
    seen: list[str] = []
    while err is not None and len(seen) < 20:
        seen += [str(err), str(getattr(err, "_stackTrace", "") or "")]
        err = err.__cause__ or err.__context__ or getattr(err, "_cause", None)
    return any(marker in text for text in seen for marker in DERBY_IN_USE_MARKERS)


# ---------------------------------------------------------------------------------------------
# Spark errors as one line
# ---------------------------------------------------------------------------------------------

_POS_0_BASED = re.compile(r"line (\d+),? pos (\d+)")        # parser / analyzer: "(line 1, pos 0)"
_POS_1_BASED = re.compile(r"line (\d+), position (\d+)")    # runtime query context: "(line 1, position 8)"


def spark_error_line(err: BaseException) -> str:
    """One line for an error Spark raised: ``[CONDITION] message (line L, column C: `fragment`)``.

    Spark's messages can start with a newline (parse errors), carry an indented SQL excerpt and,
    in ``str()``, the JVM stack trace; this keeps the first non-empty line of the message and adds
    where in the statement it happened (1-based column) when Spark says so.
    """
    condition = message = None
    try:
        condition = err.getCondition()  # type: ignore[attr-defined]
        message = err.getMessage() if condition else None  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not a Spark error, or the JVM is gone
        pass
    desc = str(getattr(err, "_desc", "") or "")
    text = message or desc or str(err)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    where = _error_position(err, desc)
    return f"{first}{where}"


def _error_position(err: BaseException, desc: str) -> str:
    fragment = None
    try:
        contexts = err.getQueryContext()  # type: ignore[attr-defined]
        fragment = contexts[0].fragment() if contexts else None
    except Exception:  # noqa: BLE001
        pass
    position = None
    found = _POS_1_BASED.search(desc)
    if found:
        position = (int(found[1]), int(found[2]))
    else:
        found = _POS_0_BASED.search(desc)
        if found:
            position = (int(found[1]), int(found[2]) + 1)
    parts = []
    if position:
        parts.append(f"line {position[0]}, column {position[1]}")
    if fragment:
        parts.append(f"at `{fragment}`")
    return f" ({', '.join(parts)})" if parts else ""


def quiet_loggers(verbose: bool) -> None:
    """Keep a job's stderr to what the user needs: PySpark logs every captured Spark error as a
    kilobyte JSON record before the job prints its one line, py4j logs its shutdown, and
    great-expectations ~150 INFO lines per gate (one of them a bare ``[]``)."""
    from pyspark.logger import PySparkLogger

    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    for name in ("py4j", "great_expectations"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # this module sets its own logger to INFO when imported (after us), so a level would not hold
    gx_base = logging.getLogger("great_expectations.data_context.types.base")
    if not verbose and _below_warning not in gx_base.filters:
        gx_base.addFilter(_below_warning)


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


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


DATES_HELP = "date, comma list or range a..b (YYYY-MM-DD)"


def add_dates_argument(parser, required: bool = True, help: str = DATES_HELP) -> None:  # noqa: A002
    """The ``--date`` / ``--dates`` flag every dated job takes (``args.dates``: a list of YYYY-MM-DD)."""
    parser.add_argument("--date", "--dates", dest="dates", type=parse_dates, required=required, help=help)


@dataclass(frozen=True)
class ModelRef:
    """``name@version`` as the scores and metrics tables store it (version None: not pinned yet)."""

    name: str
    version: str | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def parse_model_ref(value: str) -> ModelRef:
    """``infnet@3`` -> ModelRef("infnet", "3"); ``infnet`` -> the newest version, pinned later.
    The syntax is :func:`model.store.parse_ref`'s (the one parser of model references)."""
    from model.store import parse_ref

    try:
        name, version = parse_ref(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME@VERSION (an integer): {err}") from None
    return ModelRef(name, None if version is None else str(version))


def pin_model_ref(settings: Settings, ref: ModelRef) -> ModelRef:
    """Resolve a bare name to the newest version in the model store (clear error when absent)."""
    if ref.version is not None:
        return ref
    from model.store import ModelNotFound, ModelStore

    try:
        name, version = ModelStore.of(settings).resolve(ref.name)
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
        body(spark, settings, args)
    except (JobError, FileNotFoundError, SetupError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if not is_catalog_in_use_error(err):
            raise
        print(f"{parser.prog}: error: {catalog_in_use_message(settings.lake.metastore_dir)}", file=sys.stderr)
        return 2
    return 0
