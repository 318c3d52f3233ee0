# Sourced by the scripts of the services that run one process from a pid file (moto.sh, mlflow.sh):
# the caller sets PIDFILE and PY (a Python for the socket probe) before calling these.

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# wait_until_answers SCRIPT HOST PORT SECONDS LOG: returns once HOST:PORT accepts a connection;
# exits 1 with the log's tail when the process dies first, or with one line after SECONDS.
wait_until_answers() {
  local script=$1 host=$2 port=$3 seconds=$4 log=$5
  for _ in $(seq 1 $((seconds * 5))); do
    "$PY" -c "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.5)" \
      "$host" "$port" 2>/dev/null && return
    running || { tail -20 "$log" >&2; exit 1; }
    sleep 0.2
  done
  echo "$script: no answer at $host:$port after $seconds s (log: $log)" >&2; exit 1
}

# stop_pid NAME SECONDS [KILL_ARG]: TERM the pid file's process (KILL_ARG, e.g. "-PID" for its
# group, else the pid), wait up to SECONDS for it to go, drop the pid file.
stop_pid() {
  local name=$1 seconds=$2
  if running; then
    local pid; pid=$(cat "$PIDFILE")
    kill -- "${3:-$pid}" 2>/dev/null || kill "$pid"
    for _ in $(seq 1 $((seconds * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "[$name] stopped" >&2
  fi
  rm -f "$PIDFILE"
}
