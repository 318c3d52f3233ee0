"""Layers import one way: each package imports only from the packages before it in LAYERS.

conf (settings, names, schemas, lake I/O) <- features <- quality <- model <- evaluation <- jobs <-
airflow_dags; tests may import anything, bench anything but the jobs' logic (it runs a job only
through the CLI, ``jobs.cli``, as a user does). The check reads every import statement
(top-level and inside functions), so a lazy import cannot hide a backward dependency.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("conf", "features", "quality", "model", "evaluation", "jobs", "airflow_dags")


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_only_earlier_layers(package):
    later = set(LAYERS[LAYERS.index(package) + 1:]) | {"bench", "tests"}
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & later)
        for path in sorted((REPO / package).rglob("*.py"))
        if imported_packages(path) & later
    }
    assert offenders == {}


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} if node.module != "jobs" else {f"jobs.{alias.name}" for alias in node.names}
    return found


def test_bench_runs_jobs_only_through_the_cli():
    offenders = {
        str(path.relative_to(REPO)): sorted(m for m in imported_modules(path) if m.startswith("jobs") and m != "jobs.cli")
        for path in sorted((REPO / "bench").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_sees_a_lazy_backward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from evaluation.metrics import auc_np\n    return auc_np\n")
    assert "evaluation" in imported_packages(module)


def test_training_metrics_do_not_load_spark():
    code = (
        "import sys, numpy as np\n"
        "from model.metrics import auc_np, gauc_np\n"
        "import model.train\n"
        "assert auc_np(np.array([0, 1]), np.array([0.2, 0.9])) == 1.0\n"
        "print('pyspark' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_table_names_do_not_load_spark():
    """The Airflow DAGs import conf.tables for the table names; the column types live in conf.schemas."""
    code = "import sys\nimport conf.tables\nprint('pyspark' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
