#!/usr/bin/env bash
# A local S3-compatible endpoint (moto's server) on 127.0.0.1:INFNET_MOTO_PORT (5055) for tests and
# the object-store smoke run, in its own venv (.venv-moto, from conf/moto-requirements.lock: botocore
# needs python-dateutil<3, the project pins 4.0.0). State is in memory: a restart empties it.
# Usage: scripts/moto.sh start|stop|status|env|bucket NAME|venv
#   eval "$(scripts/moto.sh env)"   # INFNET_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY for this server
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
read -r HOST PORT STATE < <("$ROOT/.venv/bin/python" -m conf.settings services.host services.moto_port \
  services.state_dir | tr '\n' ' '; echo)
VENV="$ROOT/.venv-moto"
LOCK=conf/moto-requirements.lock
BASE="$STATE/moto"
PIDFILE="$BASE/moto.pid"
ENDPOINT="http://$HOST:$PORT"
# moto accepts any key pair; these are the ones the settings carry to Spark and pyarrow
KEY=${INFNET_S3_ACCESS_KEY:-infnet-test}
SECRET=${INFNET_S3_SECRET_KEY:-infnet-test-secret}

ensure_venv() {
  local want; want=$(sha256sum "$LOCK" | cut -c1-16)
  if [ ! -x "$VENV/bin/moto_server" ] || [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" != "$want" ]; then
    echo "[moto] installing moto[server] into $VENV" >&2
    [ -x "$VENV/bin/python" ] || "${PYTHON:-python3.11}" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >&2
    "$VENV/bin/pip" install -q -r "$LOCK" >&2
    echo "$want" > "$VENV/.setup-stamp"
  fi
}

PY="$ROOT/.venv/bin/python"
source scripts/service_lib.sh  # running, wait_until_answers, stop_pid

start() {
  ensure_venv
  mkdir -p "$BASE"
  if running; then return; fi
  nohup "$VENV/bin/moto_server" -H "$HOST" -p "$PORT" >"$BASE/moto.log" 2>&1 &
  echo $! > "$PIDFILE"
  wait_until_answers moto.sh "$HOST" "$PORT" 20 "$BASE/moto.log"
  echo "[moto] up at $ENDPOINT" >&2
}

stop() { stop_pid moto 5; }

bucket() {  # create a bucket (idempotent)
  "$VENV/bin/python" - "$1" <<PY
import sys, boto3
s3 = boto3.client("s3", endpoint_url="$ENDPOINT", aws_access_key_id="$KEY", aws_secret_access_key="$SECRET",
                  region_name="us-east-1")
if sys.argv[1] not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=sys.argv[1])
PY
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running at $ENDPOINT"; else echo "stopped"; exit 3; fi ;;
  env) printf 'export INFNET_S3_ENDPOINT=%q INFNET_S3_ACCESS_KEY=%q INFNET_S3_SECRET_KEY=%q\n' "$ENDPOINT" "$KEY" "$SECRET" ;;
  venv) ensure_venv ;;
  bucket) [ -n "${2:-}" ] || { echo "usage: $0 bucket NAME" >&2; exit 2; }; bucket "$2" ;;
  *) echo "usage: $0 start|stop|status|env|bucket NAME|venv" >&2; exit 2 ;;
esac
