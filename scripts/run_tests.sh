#!/usr/bin/env bash
# The test command behind `make test` and .ci/run: ruff over the tree, the main suite in .venv, then
# the Airflow DAG tests in .venv-airflow (Airflow's Spark provider cannot share the project venv: PITFALLS.md).
# pytest's exit code 5 (no tests collected) is a failure here: a suite that ran nothing must not
# look green.
#
# The cluster tests (tests/cluster) start their own services on free loopback ports and stop them
# (a moto S3 server, a project-local PostgreSQL, the Thrift server, Spark standalone daemons); this
# script first makes sure what they need is installed (the Postgres driver and object-store jars
# from Maven, moto's venv; PostgreSQL itself comes with the machine or from apt), and on exit stops
# any service left in the default .services/ folder. `--services-only` does just the preparation.
set -uo pipefail
cd "$(dirname "$0")/.."

SERVICES=(thrift-server standalone moto postgres)
running_before=()
for s in "${SERVICES[@]}"; do
  bash "scripts/$s.sh" status >/dev/null 2>&1 && running_before+=("$s")
done
stop_services() {  # what the run left in .services/; a service that ran before the tests keeps running
  for s in "${SERVICES[@]}"; do
    [[ " ${running_before[*]} " == *" $s "* ]] || bash "scripts/$s.sh" stop >/dev/null 2>&1 || true
  done
}
prepare_services() {
  bash scripts/resolve_jars.sh metastore-postgres object-store && bash scripts/moto.sh venv
}
if [ "${1:-}" = "--services-only" ]; then
  prepare_services
  exit $?
fi
prepare_services || { echo "run_tests: could not prepare the cluster tests' services" >&2; exit 1; }
trap stop_services EXIT

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

# the linter first: seconds, and a finding fails the run like a failed test (config: pyproject.toml)
.venv/bin/ruff check --quiet . && echo "ruff: clean"
lint_rc=$?
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
[ "$lint_rc" -eq 0 ] && [ "$main_rc" -eq 0 ] && [ "$airflow_rc" -eq 0 ]
