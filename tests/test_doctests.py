"""Every ``>>>`` example in the project's modules runs and holds (docstrings must stay true).

The modules are found by scanning the source for ``>>>``, so a new example is picked up without
touching this file; ``airflow_dags/`` needs Airflow and runs in tests/airflow_dags.
"""
from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("conf", "features", "quality", "model", "evaluation", "jobs", "bench")


def modules_with_examples() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if ">>>" in path.read_text(encoding="utf-8"):
                found.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return found


MODULES = modules_with_examples()


def test_the_scan_finds_the_known_examples():
    assert len(MODULES) >= 21 and {"features.contracts", "quality.suites", "evaluation.metrics"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has '>>>' outside any docstring doctest can find"
    assert result.failed == 0
