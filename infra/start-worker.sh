#!/usr/bin/env bash
# A Prefect process worker:  infra/start-worker.sh cpu
#                            infra/start-worker.sh gpu [GPU_INDEX]   (one per GPU; default $CUDA_VISIBLE_DEVICES or 0)
# It runs flows from the checkout at $VOICEPIPE_REPO (prefect.yaml's pull step) with the VOICEPIPE_* store
# settings of this environment.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
need PREFECT_API_URL "the Prefect server's API, e.g. http://localhost:4200/api"
need VOICEPIPE_STORE_URL "every worker must share one artifact store, e.g. s3://voicepipe/artifacts"
kind=${1:-}
case "$kind" in
  cpu)
    exec "$PREFECT" worker start --pool cpu-pool --type process --name "cpu-$(hostname)" \
      --limit "${VOICEPIPE_CPU_WORKER_LIMIT:-4}" ;;
  gpu)
    gpu=${2:-${CUDA_VISIBLE_DEVICES:-0}}
    export CUDA_VISIBLE_DEVICES="$gpu"
    exec "$PREFECT" worker start --pool gpu-pool --type process --name "gpu-$(hostname)-$gpu" --limit 1 ;;
  *)
    echo "usage: $0 cpu | gpu [GPU_INDEX]" >&2; exit 2 ;;
esac
