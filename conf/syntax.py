"""The syntax of the values that jobs, DAGs and the model store share: model references and dates.

Standard library only: the Airflow DAGs import this module in their own venv, which has neither
pyspark nor torch. One rule each, so that a value the DAGs accept is a value the jobs accept:

- a model reference is ``NAME`` (the newest version), ``NAME@VERSION`` (an integer) or
  ``NAME@ALIAS`` (a registry alias such as ``champion``: lower case, not ``latest`` nor ``v<digits>``,
  which MLflow reserves); :data:`MODEL_REF_PATTERN` is the rule as one regular expression (for a
  JSON-schema ``pattern``, e.g. an Airflow ``Param``), :func:`parse_ref` the same rule as a parser;
- dates are ``YYYY-MM-DD``, a comma list of them, or a range ``a..b`` (:func:`parse_dates`).

>>> parse_ref("mmoe@2"), parse_ref("infnet"), parse_ref("infnet@champion")
(('mmoe', 2), ('infnet', None), ('infnet', 'champion'))
>>> [bool(re.fullmatch(MODEL_REF_PATTERN, v))
...  for v in ("mmoe@2", "mmoe", "mmoe@champion", "mmoe@latest", "mmoe@v2", "mmoe@Champion", "_x")]
[True, True, True, False, False, False, False]
>>> parse_ref("mmoe@latest")
Traceback (most recent call last):
...
ValueError: bad model version 'latest' in 'mmoe@latest': expected an integer or an alias (lower case; ...
>>> parse_dates("2022-05-03..2022-05-05"), parse_dates("2022-05-03,2022-05-04")
(['2022-05-03', '2022-05-04', '2022-05-05'], ['2022-05-03', '2022-05-04'])
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from dataclasses import dataclass

MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"  # also a folder name of the model store
MODEL_VERSION_PATTERN = r"[0-9]+"
# MLflow refuses the alias "latest" and aliases "v<digits>" (they would read as versions)
MODEL_ALIAS_PATTERN = r"(?!latest$)(?!v[0-9]+$)[a-z][a-z0-9_-]*"
# Anchored with ^...$ rather than \Z: JSON-schema patterns are ECMA-262 regular expressions, and
# Python callers use re.fullmatch, under which $ cannot let a trailing newline through.
MODEL_REF_PATTERN = rf"^{MODEL_NAME_PATTERN}(@({MODEL_VERSION_PATTERN}|{MODEL_ALIAS_PATTERN}))?$"


@dataclass(frozen=True)
class ModelRef:
    """``name@version`` as the scores and metrics tables store it (version None or an alias: not
    pinned yet; ``model.store.ModelStore.pin`` turns both into the version number).

    >>> str(ModelRef("infnet", "3")), str(ModelRef("mmoe")), ModelRef("infnet", "champion").pinned
    ('infnet@3', 'mmoe', False)
    """

    name: str
    version: str | None = None

    @property
    def pinned(self) -> bool:
        """Whether the reference names a version number (not the newest, not an alias)."""
        return self.version is not None and self.version.isdigit()

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def parse_ref(ref: str) -> tuple[str, int | str | None]:
    """``NAME@VERSION`` -> (name, version); ``NAME@ALIAS`` -> (name, alias); ``NAME`` -> (name, None):
    the one parser of model references, accepting exactly what :data:`MODEL_REF_PATTERN` matches (a
    ``ValueError`` saying which part is wrong otherwise)."""
    name, sep, version = ref.partition("@")
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise ValueError(f"bad model name {name!r} in reference {ref!r} (letters, digits, _ . -)")
    if not sep:
        return name, None
    if re.fullmatch(MODEL_VERSION_PATTERN, version):
        return name, int(version)
    if re.fullmatch(MODEL_ALIAS_PATTERN, version):
        return name, version
    raise ValueError(f"bad model version {version!r} in {ref!r}: expected an integer or an alias (lower case; "
                     f"not latest or v<digits>), e.g. {name}@1 or {name}@champion")


def parse_model_ref(value: str) -> ModelRef:
    """The ``--model NAME[@VERSION|@ALIAS]`` flag's type: :func:`parse_ref`'s rule as a :class:`ModelRef`
    (a bare name or an alias is pinned to its version later, by ``model.store.ModelStore.pin``).

    >>> parse_model_ref("infnet@3"), parse_model_ref("mmoe"), parse_model_ref("infnet@champion")
    (ModelRef(name='infnet', version='3'), ModelRef(name='mmoe', version=None), ModelRef(name='infnet', version='champion'))
    """
    try:
        name, version = parse_ref(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected NAME, NAME@VERSION or NAME@ALIAS: {err}") from None
    return ModelRef(name, None if version is None else str(version))


def parse_model_refs(value: str) -> list[ModelRef]:
    """``infnet,mmoe@2`` -> [ModelRef, ...] (a flag naming several models)."""
    refs = [parse_model_ref(v.strip()) for v in value.split(",") if v.strip()]
    if not refs:
        raise argparse.ArgumentTypeError(f"expected NAME[@VERSION][,...], got {value!r}")
    return refs


def parse_date(value: str) -> str:
    """``YYYY-MM-DD`` -> the same date, normalised; anything else is a usage error."""
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


def parse_int_list(value: str) -> tuple[int, ...]:
    """``5,10,50`` -> (5, 10, 50): a flag of cut-offs, each >= 1."""
    try:
        ks = tuple(int(v) for v in value.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {value!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"K must be >= 1: {value!r}")
    return ks


def dates_label(dates: list[str]) -> str:
    """``a..b`` for a contiguous range, else the comma list."""
    days = [dt.date.fromisoformat(d) for d in dates]
    contiguous = all((b - a).days == 1 for a, b in zip(days, days[1:]))
    return f"{dates[0]}..{dates[-1]}" if contiguous and len(dates) > 1 else ",".join(dates)


def parse_positive_int(value: str) -> int:
    """A count flag (``--k``, ``--n-boot``, batch sizes): an integer >= 1.

    >>> parse_positive_int("50")
    50
    """
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def flag_type(parse):
    """``parse`` (a parser raising ``ValueError``) as an argparse ``type=``: its message becomes the
    usage error (argparse prints a bare "invalid value" for a ValueError).

    >>> flag_type(int)("7")
    7
    """
    def parse_flag(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse_flag.__name__ = getattr(parse, "__name__", "value")
    return parse_flag


def check_date_split(splits: dict[str, list[str]]) -> None:
    """A ``ValueError`` when a date is in two splits (train / valid / test must not overlap).

    >>> check_date_split({"train": ["2022-05-01"], "valid": ["2022-05-02"]})
    >>> check_date_split({"train": ["2022-05-01"], "test": ["2022-05-01"]})
    Traceback (most recent call last):
    ...
    ValueError: date 2022-05-01 is in both the train and the test dates: the splits must not overlap
    """
    seen: dict[str, str] = {}
    for split, dates in splits.items():
        for d in dates:
            if d in seen:
                raise ValueError(f"date {d} is in both the {seen[d]} and the {split} dates: the splits must not overlap")
            seen[d] = split


def parse_key_value(value: str) -> tuple[str, object]:
    """``d=64`` -> ("d", 64); values are JSON when they parse (numbers, lists, true), else strings.

    >>> parse_key_value("d=64"), parse_key_value("hidden=[32, 16]"), parse_key_value("gate=update")
    (('d', 64), ('hidden', [32, 16]), ('gate', 'update'))
    """
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw
