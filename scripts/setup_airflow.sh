#!/usr/bin/env bash
# Airflow for the infnet DAGs, in its OWN venv (.venv-airflow): the Spark provider installs
# pyspark-client, which overwrites pyspark's files and breaks every pandas UDF if it shares the
# project's .venv (docs/PITFALLS.md). The DAGs only call scripts/spark-submit, which runs
# each job with the project's .venv, so Airflow needs no pyspark of its own.
#
# Idempotent, like scripts/setup.sh: each step is skipped when already current.
#   1. .venv-airflow from conf/airflow-requirements.lock (a validated pip freeze; Airflow's
#      constraint files are not reachable here), stamped with the lock's hash;
#   2. a project-local AIRFLOW_HOME (default .airflow/) with airflow.cfg whose dags_folder is
#      airflow_dags/, and its SQLite metadata database (`airflow db migrate`);
#   3. the `spark_default` connection (local[*]) unless it exists (so a cluster master set by
#      hand survives reruns), and the `spark_embedded` pool with Settings.pool_slots slots
#      (INFNET_POOL_SLOTS; 1 with the embedded Derby metastore).
#
# Usage: bash scripts/setup_airflow.sh            # set up / check
#        bash scripts/setup_airflow.sh --relock   # re-resolve the lock from the top-level pins
# Then:  export AIRFLOW_HOME=$PWD/.airflow; .venv-airflow/bin/airflow dags test infnet_daily 2022-04-25
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv-airflow
LOCK=conf/airflow-requirements.lock
TOP_LEVEL=("apache-airflow==3.3.2" "apache-airflow-providers-apache-spark==6.3.4" "pytest==9.2.0")
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.airflow}"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
AIRFLOW="$ROOT/$VENV/bin/airflow"

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

if [ "${1:-}" = "--relock" ]; then
  tmp=$(mktemp -d)
  "$PY" -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" install -q --upgrade pip wheel setuptools
  "$tmp/venv/bin/pip" install -q "${TOP_LEVEL[@]}"
  "$tmp/venv/bin/pip" check
  {
    echo "# Airflow's own environment (.venv-airflow): a validated pip freeze of"
    echo "#   ${TOP_LEVEL[*]}"
    echo "# on Python 3.11 (pip check clean). Airflow's constraint files are not reachable here, so this is"
    echo "# our lock; regenerate with scripts/setup_airflow.sh --relock. Never install into .venv: the"
    echo "# provider's pyspark-client overwrites pyspark and breaks pandas UDFs (docs/PITFALLS.md)."
    "$tmp/venv/bin/pip" freeze
  } > "$LOCK"
  rm -rf "$tmp"
  echo "[setup-airflow] wrote $LOCK ($(grep -vc '^#' "$LOCK") pins)"
fi

# 1. venv + locked packages
want=$(stamp_of "$LOCK" "$0")
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup-airflow] installing Airflow into $VENV (first run: about a minute with a warm pip cache)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
  "$VENV/bin/pip" install -q -r "$LOCK"
  "$VENV/bin/pip" check
  echo "$want" > "$VENV/.setup-stamp"
else
  echo "[setup-airflow] $VENV is current"
fi

# 2. AIRFLOW_HOME, its config and metadata database. Airflow 3 writes no airflow.cfg by itself:
# write the few project settings once (edit it freely afterwards; reruns leave it alone).
mkdir -p "$AIRFLOW_HOME"
if [ ! -f "$AIRFLOW_HOME/airflow.cfg" ]; then
  cat > "$AIRFLOW_HOME/airflow.cfg" <<EOF
# Written by scripts/setup_airflow.sh for this checkout; every other option keeps Airflow's default.
[core]
dags_folder = $ROOT/airflow_dags
load_examples = False
dags_are_paused_at_creation = True

[database]
sql_alchemy_conn = sqlite:///$AIRFLOW_HOME/airflow.db
EOF
  echo "[setup-airflow] wrote $AIRFLOW_HOME/airflow.cfg"
fi
want_db=$(stamp_of "$LOCK")
if [ ! -f "$AIRFLOW_HOME/airflow.db" ] || [ "$(cat "$AIRFLOW_HOME/.db-stamp" 2>/dev/null)" != "$want_db" ]; then
  echo "[setup-airflow] airflow db migrate ($AIRFLOW_HOME/airflow.db)"
  "$AIRFLOW" db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -30 "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
  echo "$want_db" > "$AIRFLOW_HOME/.db-stamp"
else
  echo "[setup-airflow] metadata database is current"
fi

# 3. connection + pool. The jobs' Spark master comes from this connection (the DAGs run
# scripts/spark-submit, which uses the project's .venv and Spark config): point it at a cluster
# with `airflow connections delete spark_default` + `add ... --conn-host yarn` (see README).
if ! "$AIRFLOW" connections get spark_default >/dev/null 2>&1; then
  "$AIRFLOW" connections add spark_default --conn-type spark --conn-host 'local[*]' \
    --conn-extra '{"deploy-mode": "client", "spark-binary": "spark-submit"}' >/dev/null
  echo "[setup-airflow] created connection spark_default -> local[*]"
else
  echo "[setup-airflow] connection spark_default exists (left as it is)"
fi
# The pool's size is a setting (conf.settings: Settings.pool_slots, $INFNET_POOL_SLOTS): 1 with the
# embedded Derby metastore, 2 with a shared one (1 again on an s3a:// lake: one writer per table).
SLOTS=$(cd "$ROOT" && "$VENV/bin/python" -m conf.settings pool_slots) || exit 2
"$AIRFLOW" pools set spark_embedded "$SLOTS" \
  "Spark jobs of the infnet DAGs; size = conf.settings Settings.pool_slots (INFNET_POOL_SLOTS)" >/dev/null
echo "[setup-airflow] done: $("$AIRFLOW" version), AIRFLOW_HOME=$AIRFLOW_HOME, pool spark_embedded: $SLOTS slot(s)"
