"""Errors a job turns into one line: the embedded Derby catalog held by another process, and
Spark's own errors (the condition, the first line of the message, where in the statement); and
the loggers that would print the same error again (:func:`quiet_loggers`).

No pyspark import at module level: ``infnet sql --engine duckdb`` runs without a JVM.
"""
from __future__ import annotations

import logging
import os
import re
import time

from conf.settings import Settings


class CatalogInUse(RuntimeError):
    """Another process holds the embedded catalog (the message says what to do)."""


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
            raise CatalogInUse(catalog_in_use_message(metastore_dir))
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
