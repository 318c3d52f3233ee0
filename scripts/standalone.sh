#!/usr/bin/env bash
# A Spark standalone cluster on this machine from the pyspark wheel (no Spark distribution): one
# master on 127.0.0.1:INFNET_STANDALONE_PORT (7077, web UI on INFNET_STANDALONE_UI_PORT 8090) and
# INFNET_STANDALONE_WORKERS (2) workers of INFNET_WORKER_CORES (1) cores and INFNET_WORKER_MEMORY (1g),
# each a daemon started with the wheel's sbin/spark-daemon.sh, everything bound to 127.0.0.1, logs
# and executor folders under .services/standalone. With INFNET_EXECUTOR_GPUS > 0 the workers offer
# that many GPUs found by scripts/gpu-discovery.sh. For a cluster smoke run and the Airflow
# connection (host spark://127.0.0.1:7077).
#
# Usage: scripts/standalone.sh start|stop|status|master-url
#   scripts/standalone.sh start && INFNET_SPARK_MASTER=$(scripts/standalone.sh master-url) infnet score ...
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY="$ROOT/.venv/bin/python"
read -r HOST PORT UI WORKERS CORES MEMORY STATE GPUS SCRIPT < <("$PY" -m conf.settings services.host \
  services.standalone_port services.standalone_ui_port services.standalone_workers services.worker_cores \
  services.worker_memory services.state_dir spark.executor_gpus spark.gpu_discovery_script | tr '\n' ' '; echo)
SPARK_HOME=$("$PY" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')
BASE="$STATE/standalone"
export SPARK_HOME SPARK_LOCAL_IP=$HOST SPARK_PID_DIR="$BASE" SPARK_LOG_DIR="$BASE/logs" SPARK_IDENT_STRING=infnet
export PYSPARK_PYTHON="$ROOT/.venv/bin/python"
MASTER_URL="spark://$HOST:$PORT"
DAEMON="$SPARK_HOME/sbin/spark-daemon.sh"
MASTER_CLASS=org.apache.spark.deploy.master.Master
WORKER_CLASS=org.apache.spark.deploy.worker.Worker

pid_of() { cat "$SPARK_PID_DIR/spark-$SPARK_IDENT_STRING-$1-$2.pid" 2>/dev/null || true; }
alive() { local p; p=$(pid_of "$1" "$2"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
alive_workers() {  # workers the master counts as alive, from its JSON page
  "$PY" -c "import json, urllib.request; print(json.load(urllib.request.urlopen('http://$HOST:$UI/json', timeout=2)).get('aliveworkers', 0))" 2>/dev/null || echo 0
}

start() {
  mkdir -p "$BASE/work" "$SPARK_LOG_DIR"
  alive "$MASTER_CLASS" 1 || "$DAEMON" start "$MASTER_CLASS" 1 --host "$HOST" --port "$PORT" --webui-port "$UI" >&2
  if [ "$GPUS" -gt 0 ]; then
    export SPARK_WORKER_OPTS="-Dspark.worker.resource.gpu.amount=$GPUS -Dspark.worker.resource.gpu.discoveryScript=$SCRIPT"
  fi
  for i in $(seq 1 "$WORKERS"); do
    alive "$WORKER_CLASS" "$i" || "$DAEMON" start "$WORKER_CLASS" "$i" --host "$HOST" --webui-port 0 \
      --cores "$CORES" --memory "$MEMORY" --work-dir "$BASE/work" "$MASTER_URL" >&2
  done
  for _ in $(seq 1 240); do
    if [ "$(alive_workers)" -ge "$WORKERS" ]; then echo "[standalone] $MASTER_URL with $WORKERS workers" >&2; return; fi
    sleep 0.5
  done
  tail -20 "$SPARK_LOG_DIR"/*.out >&2 || true
  echo "standalone.sh: the master did not see $WORKERS workers within 120 s (logs: $SPARK_LOG_DIR)" >&2
  stop; exit 1
}

stop_one() {  # spark-daemon.sh stop sends SIGTERM and returns at once: wait for the JVM to go
  local p; p=$(pid_of "$1" "$2")
  [ -n "$p" ] || return 0
  if kill -0 "$p" 2>/dev/null; then
    kill "$p"
    for _ in $(seq 1 60); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$p" 2>/dev/null && kill -9 "$p"
  fi
  rm -f "$SPARK_PID_DIR/spark-$SPARK_IDENT_STRING-$1-$2.pid"
}

stop() {
  for f in "$SPARK_PID_DIR"/spark-"$SPARK_IDENT_STRING"-"$WORKER_CLASS"-*.pid; do
    [ -e "$f" ] || continue
    i=${f##*-}; stop_one "$WORKER_CLASS" "${i%.pid}"
  done
  stop_one "$MASTER_CLASS" 1
  echo "[standalone] stopped" >&2
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if alive "$MASTER_CLASS" 1; then echo "running at $MASTER_URL, $(alive_workers) workers alive"; else echo "stopped"; exit 3; fi ;;
  master-url) echo "$MASTER_URL" ;;
  *) echo "usage: $0 start|stop|status|master-url" >&2; exit 2 ;;
esac
