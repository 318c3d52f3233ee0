#!/usr/bin/env bash
# The SQL endpoint: Spark's Thrift server (HiveThriftServer2, in the pyspark wheel) on the project's
# catalog, listening on 127.0.0.1:INFNET_THRIFT_PORT (10000), started with the wheel's
# sbin/spark-daemon.sh. It reads the same settings as the jobs (metastore, lake, S3), runs as its
# own small Spark application (INFNET_THRIFT_MASTER, default local[2]) and keeps the Delta jars on
# its driver class path (with them only in --jars every query fails after the next Delta commit,
# delta-io/delta#705). Use it with a shared metastore (scripts/postgres.sh): on the embedded Derby
# one it holds the catalog's lock and no job can run beside it.
#
# Usage: scripts/thrift-server.sh start|stop|status|beeline [beeline args]
#   scripts/thrift-server.sh beeline -e "SELECT count(*) FROM infnet.scores"
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY="$ROOT/.venv/bin/python"
read -r HOST PORT MASTER MEMORY STATE < <("$PY" -m conf.settings services.host services.thrift_port \
  services.thrift_master services.thrift_driver_memory services.state_dir | tr '\n' ' '; echo)
SPARK_HOME=$("$PY" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')
export SPARK_HOME
export SPARK_PID_DIR="$STATE/thrift" SPARK_LOG_DIR="$STATE/thrift" SPARK_IDENT_STRING=infnet
export PYSPARK_PYTHON="$ROOT/.venv/bin/python"
CLASS=org.apache.spark.sql.hive.thriftserver.HiveThriftServer2
PIDFILE="$SPARK_PID_DIR/spark-$SPARK_IDENT_STRING-$CLASS-1.pid"
JDBC="jdbc:hive2://$HOST:$PORT/default"

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
answers() { "$PY" -c "import socket; socket.create_connection(('$HOST', $PORT), 0.5)" 2>/dev/null; }

start() {
  if running; then echo "[thrift] already running at $JDBC" >&2; return; fi
  assignments=$("$PY" -m conf.spark --env) || exit 2
  eval "$assignments"
  if [ -z "${INFNET_METASTORE_URL:-}" ]; then
    echo "[thrift] warning: embedded Derby metastore: no job can use the catalog while the server runs" >&2
  fi
  mkdir -p "$SPARK_PID_DIR"
  "$SPARK_HOME/sbin/spark-daemon.sh" submit "$CLASS" 1 --master "$MASTER" --name infnet-thrift-server \
    --driver-memory "$MEMORY" --driver-class-path "$INFNET_DRIVER_CLASS_PATH" \
    --conf spark.sql.hive.thriftServer.singleSession=false \
    --hiveconf hive.server2.thrift.bind.host="$HOST" --hiveconf hive.server2.thrift.port="$PORT" \
    --hiveconf hive.server2.transport.mode=binary spark-internal >&2
  for _ in $(seq 1 300); do
    if answers; then echo "[thrift] up at $JDBC" >&2; return; fi
    running || break
    sleep 0.5
  done
  tail -30 "$SPARK_LOG_DIR"/*HiveThriftServer2*.out >&2 || true
  stop
  echo "thrift-server.sh: no answer at $HOST:$PORT (log in $SPARK_LOG_DIR)" >&2; exit 1
}

stop() {
  if running; then
    local pid; pid=$(cat "$PIDFILE")
    kill "$pid"
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "[thrift] stopped" >&2
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running && answers; then echo "running at $JDBC"; else echo "stopped"; exit 3; fi ;;
  beeline) shift; exec "$SPARK_HOME/bin/beeline" -u "$JDBC" -n "${USER:-infnet}" --silent=true --showWarnings=false "$@" ;;
  *) echo "usage: $0 start|stop|status|beeline [args]" >&2; exit 2 ;;
esac
