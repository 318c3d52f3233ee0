#!/usr/bin/env bash
# Resolve the jars of an optional profile with Maven, once (skipped while its folder is newer than
# its pom). Profiles, each a pom in conf/maven/:
#   metastore-postgres -> jars-metastore/  PostgreSQL JDBC driver for a shared Hive metastore
#   object-store       -> jars-s3/         hadoop-aws + the AWS SDK v2 modules it needs (s3a:// lake)
# `make demo` resolves neither: conf.spark only asks for them when a setting points at Postgres or
# s3a:// (its error message names this script). Everything the pyspark wheel already carries
# (Hadoop, Netty, SLF4J, commons-*, httpclient) is left out so the wheel's versions win.
# Usage: scripts/resolve_jars.sh metastore-postgres|object-store [...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ $# -gt 0 ] || { echo "usage: $0 metastore-postgres|object-store ..." >&2; exit 2; }
for profile in "$@"; do
  case "$profile" in
    metastore-postgres) pom=conf/maven/metastore-postgres.xml; out=${INFNET_METASTORE_JARS_DIR:-$ROOT/jars-metastore}
                        exclude=org.checkerframework ;;
    object-store)       pom=conf/maven/object-store.xml; out=${INFNET_S3_JARS_DIR:-$ROOT/jars-s3}
                        exclude=io.netty,org.slf4j,commons-logging,commons-codec,org.apache.httpcomponents ;;
    *) echo "resolve_jars: unknown profile $profile (metastore-postgres | object-store)" >&2; exit 2 ;;
  esac
  if ls "$out"/*.jar >/dev/null 2>&1 && [ ! "$pom" -nt "$out" ]; then
    echo "[resolve_jars] $profile: $(ls "$out"/*.jar | wc -l) jars present in $out"
    continue
  fi
  echo "[resolve_jars] $profile: resolving with Maven into $out"
  rm -rf "$out.tmp"
  mvn -q -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
      -DexcludeGroupIds="$exclude" -DoutputDirectory="$out.tmp"
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "[resolve_jars] $profile: $(ls "$out"/*.jar | wc -l) jars in $out"
done
