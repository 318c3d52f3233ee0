#!/usr/bin/env bash
# Spark's GPU discovery script (spark.executor.resource.gpu.discoveryScript, set by conf.spark for
# cluster masters when INFNET_EXECUTOR_GPUS > 0): prints the GPUs this executor's machine has as
# {"name": "gpu", "addresses": ["0", "1", ...]}, the indices nvidia-smi reports (none without it).
# INFNET_FAKE_GPU_ADDRESSES="7" reports those addresses instead: the tests schedule "GPUs" on
# machines without one to check that tasks see their assignment.
set -euo pipefail
if [ -n "${INFNET_FAKE_GPU_ADDRESSES:-}" ]; then
  addresses=$INFNET_FAKE_GPU_ADDRESSES
elif command -v nvidia-smi >/dev/null 2>&1; then
  addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ' | paste -sd, -)
else
  addresses=
fi
json=$(echo "$addresses" | tr ',' '\n' | sed '/^$/d; s/.*/"&"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [${json}]}"
