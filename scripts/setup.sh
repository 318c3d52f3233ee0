#!/usr/bin/env bash
# One idempotent setup: project venv (.venv) with the pinned packages, the project itself in
# editable mode, the Delta jars resolved with Maven into jars/, and .spark-conf/spark-defaults.conf
# for spark-submit / spark-sql. Skips each step that is already current, so reruns take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

# 1. venv + pinned packages (pyspark is a ~450 MB sdist: keep pip's cache, skip when current)
want=$(stamp_of requirements.lock pyproject.toml)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python packages into .venv (first run downloads torch and pyspark: minutes)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip wheel setuptools
  .venv/bin/pip install -q -r requirements.lock
  .venv/bin/pip install -q --no-deps -e .
  echo "$want" > .venv/.setup-stamp
else
  echo "[setup] .venv is current"
fi

# 2. Delta jars for the pinned Spark, resolved with Maven (Spark's --packages may not reach Maven)
if ! ls jars/delta-spark_*.jar >/dev/null 2>&1 || [ conf/maven/pom.xml -nt jars ]; then
  echo "[setup] resolving Delta jars with Maven into jars/"
  rm -rf jars
  mvn -q -f conf/maven/pom.xml dependency:copy-dependencies \
      -DincludeGroupIds=io.delta -DincludeScope=runtime -DoutputDirectory="$ROOT/jars"
  touch jars
else
  echo "[setup] Delta jars present"
fi

# 3. spark-defaults.conf for spark-submit / spark-sql (absolute paths for this checkout and lake)
INFNET_JARS_DIR="$ROOT/jars" .venv/bin/python -m conf.spark "$ROOT/.spark-conf/spark-defaults.conf"
echo "[setup] done: $(ls jars | wc -l) jars, venv $(.venv/bin/python --version)"
