#!/usr/bin/env bash
# The test command behind `make test` and .ci/run. pytest's exit code 5 (no tests collected) is
# a failure here: a suite that ran nothing must not look green.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests (exit 5) - treating as failure" >&2
  exit 1
fi
exit "$rc"
