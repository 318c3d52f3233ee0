#!/usr/bin/env bash
# A project-local PostgreSQL for the shared Hive metastore: its own data folder
# (.services/postgres/data, gitignored), port (INFNET_PG_PORT, 55432), socket folder and log,
# listening on 127.0.0.1 only. `start` also creates the database, and the Hive metastore schema
# with DataNucleus SchemaTool (package.jdo from the wheel's hive-metastore jar) once: letting the
# metastore client create tables lazily (datanucleus.schema.autoCreateAll) deadlocks on Postgres
# at the first saveAsTable. Then it prints the settings a job needs.
#
# Usage: scripts/postgres.sh start|stop|status|env|schema|reset
#   eval "$(scripts/postgres.sh env)"   # INFNET_METASTORE_URL / _USER / _PASSWORD for this server
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY="$ROOT/.venv/bin/python"
read -r HOST PORT DB USER_NAME STATE < <("$PY" -m conf.settings services.host services.pg_port \
  services.pg_database services.pg_user services.state_dir | tr '\n' ' '; echo)
PASSWORD=${INFNET_METASTORE_PASSWORD:-infnet}
BASE="$STATE/postgres"
DATA="$BASE/data"
SOCK="$BASE/socket"
LOG="$BASE/postgres.log"
URL="jdbc:postgresql://$HOST:$PORT/$DB"

PGBIN=${PGBIN:-}
for d in "$PGBIN" /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin /usr/local/bin; do
  [ -n "$d" ] && [ -x "$d/initdb" ] && { PGBIN=$d; break; }
done

as_owner() {  # PostgreSQL refuses to run as root: run its programs as the `postgres` account then
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

ensure_binaries() {
  if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "[postgres] installing Debian's postgresql" >&2
      (apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; })
      PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    else
      echo "postgres.sh: PostgreSQL server binaries not found (set PGBIN or install postgresql)" >&2; exit 2
    fi
  fi
}

running() { [ -f "$DATA/postmaster.pid" ] && as_owner "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

psql_() { PGPASSWORD=$PASSWORD "$PGBIN/psql" -X -q -h "$HOST" -p "$PORT" -U "$USER_NAME" "$@"; }

schema() {  # the Hive metastore tables, once (the marker records which URL got them)
  if [ "$(cat "$BASE/schema.done" 2>/dev/null)" = "$URL" ]; then return; fi
  INFNET_METASTORE_URL=$URL "$ROOT/scripts/resolve_jars.sh" metastore-postgres >&2
  local work; work=$(mktemp -d)
  local sp; sp=$("$PY" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')
  (cd "$work" && unzip -q -o "$sp"/jars/hive-metastore-2.3.10.jar package.jdo)
  # the same DataNucleus options the Hive 2.3 metastore client runs with (HiveConf defaults), so the
  # tables SchemaTool creates are the tables the client looks for
  cat > "$work/datanucleus.properties" <<PROPS
javax.jdo.option.ConnectionURL=$URL
javax.jdo.option.ConnectionDriverName=org.postgresql.Driver
javax.jdo.option.ConnectionUserName=$USER_NAME
javax.jdo.option.ConnectionPassword=$PASSWORD
datanucleus.identifierFactory=datanucleus1
datanucleus.rdbms.useLegacyNativeValueStrategy=true
datanucleus.storeManagerType=rdbms
datanucleus.schema.autoCreateAll=true
datanucleus.schema.validateTables=false
datanucleus.schema.validateColumns=false
datanucleus.schema.validateConstraints=false
datanucleus.plugin.pluginRegistryBundleCheck=LOG
PROPS
  echo "[postgres] creating the Hive metastore schema with DataNucleus SchemaTool" >&2
  if ! java -cp "$sp/jars/*:$ROOT/jars-metastore/*" org.datanucleus.store.schema.SchemaTool \
      -create -api JDO -props "$work/datanucleus.properties" "$work/package.jdo" >"$BASE/schematool.log" 2>&1; then
    tail -20 "$BASE/schematool.log" >&2; echo "postgres.sh: SchemaTool failed (log: $BASE/schematool.log)" >&2; exit 1
  fi
  rm -rf "$work"
  echo "$URL" > "$BASE/schema.done"
}

start() {
  ensure_binaries
  mkdir -p "$BASE"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    mkdir -p "$DATA" "$SOCK"
    printf '%s\n' "$PASSWORD" > "$BASE/pwfile"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$BASE"
    as_owner "$PGBIN/initdb" -D "$DATA" -U "$USER_NAME" --pwfile="$BASE/pwfile" -E UTF8 --locale=C.UTF-8 \
      --auth-host=scram-sha-256 --auth-local=trust >"$BASE/initdb.log" 2>&1 \
      || { tail -20 "$BASE/initdb.log" >&2; exit 1; }
    rm -f "$BASE/pwfile"
  fi
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres: "$BASE"
    runuser -u postgres -- test -x "$BASE" || { echo "postgres.sh: the postgres account cannot reach $BASE (a parent folder is private): choose another INFNET_SERVICES_DIR" >&2; exit 2; }
  fi
  if ! running; then
    as_owner "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
      -o "-c listen_addresses=$HOST -p $PORT -k $SOCK -c max_connections=50 -c fsync=off" start >/dev/null \
      || { tail -20 "$LOG" >&2; exit 1; }
  fi
  if ! psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    psql_ -d postgres -c "CREATE DATABASE $DB" >/dev/null
  fi
  schema
  echo "[postgres] up at $HOST:$PORT, metastore $URL" >&2
}

stop() {
  if [ -f "$DATA/PG_VERSION" ] && running; then
    as_owner "$PGBIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null
    echo "[postgres] stopped" >&2
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running at $HOST:$PORT ($URL)"; else echo "stopped"; exit 3; fi ;;
  env) printf 'export INFNET_METASTORE_URL=%q INFNET_METASTORE_USER=%q INFNET_METASTORE_PASSWORD=%q\n' "$URL" "$USER_NAME" "$PASSWORD" ;;
  schema) schema ;;
  reset) stop; rm -rf "$BASE" ;;
  *) echo "usage: $0 start|stop|status|env|schema|reset" >&2; exit 2 ;;
esac
