#!/usr/bin/env bash
# The test command behind `make test` and .ci/run: the main suite in .venv, then the Airflow DAG
# tests in .venv-airflow (Airflow's Spark provider cannot share the project venv: PITFALLS.md).
# pytest's exit code 5 (no tests collected) is a failure here: a suite that ran nothing must not
# look green.
set -uo pipefail
cd "$(dirname "$0")/.."

run() {  # run <label> <python> <pytest args...>
  local label=$1 py=$2; shift 2
  "$py" -m pytest "$@"
  local rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "run_tests: $label collected no tests (pytest exit 5) - treating as failure" >&2
    return 1
  fi
  return "$rc"
}

run "main suite" .venv/bin/python "$@"
main_rc=$?
airflow_rc=0
if [ -x .venv-airflow/bin/python ]; then
  AIRFLOW_HOME="$PWD/.airflow" run "airflow suite" .venv-airflow/bin/python tests/airflow_dags -m airflow -q
  airflow_rc=$?
else
  echo "run_tests: .venv-airflow missing (run scripts/setup_airflow.sh)" >&2
  airflow_rc=1
fi
[ "$main_rc" -eq 0 ] && [ "$airflow_rc" -eq 0 ]
