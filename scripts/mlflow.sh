#!/usr/bin/env bash
# The MLflow UI over the lake's tracking store (every `infnet train` run: parameters, validation
# curves, test metrics, the examples version, the feature spec), on 127.0.0.1:INFNET_MLFLOW_PORT (5056).
# The store is `python -m conf.settings lake.mlflow_tracking_uri`: SQLite under the lake unless
# INFNET_MLFLOW_TRACKING_URI names another; INFNET_LAKE picks the lake (default <repo>/lake).
# Usage: scripts/mlflow.sh start|stop|status
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
read -r HOST PORT STATE URI ARTIFACTS < <("$ROOT/.venv/bin/python" -m conf.settings services.host \
  services.mlflow_port services.state_dir lake.mlflow_tracking_uri lake.mlflow_artifacts | tr '\n' ' '; echo)
BASE="$STATE/mlflow"
PIDFILE="$BASE/mlflow.pid"

PY="$ROOT/.venv/bin/python"
source scripts/service_lib.sh  # running, wait_until_answers, stop_pid

start() {
  mkdir -p "$BASE"
  if running; then echo "[mlflow] already running at http://$HOST:$PORT" >&2; return; fi
  case "$URI" in sqlite:///*) mkdir -p "$(dirname "${URI#sqlite:///}")" ;; esac
  # one worker process: a UI for a team's runs, not a serving endpoint; setsid so `stop` ends the
  # whole process group (mlflow server starts uvicorn as a child)
  setsid nohup "$ROOT/.venv/bin/mlflow" server --host "$HOST" --port "$PORT" --workers 1 \
    --backend-store-uri "$URI" --default-artifact-root "$ARTIFACTS" >"$BASE/mlflow.log" 2>&1 &
  echo $! > "$PIDFILE"
  wait_until_answers mlflow.sh "$HOST" "$PORT" 60 "$BASE/mlflow.log"
  echo "[mlflow] UI at http://$HOST:$PORT over $URI" >&2
}

stop() { stop_pid mlflow 10 "-$(cat "$PIDFILE" 2>/dev/null)"; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running at http://$HOST:$PORT"; else echo "stopped"; exit 3; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
