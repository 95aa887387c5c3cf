#!/usr/bin/env bash
# A Prefect process worker:  infra/start-worker.sh cpu
#                            infra/start-worker.sh gpu [GPU_INDEX]   (one per GPU; default $CUDA_VISIBLE_DEVICES or 0)
# It runs flows from the checkout at $VOICEPIPE_REPO (prefect.yaml's pull step) with the VOICEPIPE_* store
# settings of this environment.
# Stopping: SIGTERM/SIGINT is passed to the worker; Prefect's worker waits on its API client to deregister and,
# once the server is gone, can hang there. After $VOICEPIPE_WORKER_STOP_GRACE_S seconds (default 15) this script
# kills it, so a worker always exits on SIGTERM (systemd, docker stop, Ctrl-C).
set -euo pipefail
source "$(dirname "$0")/_common.sh"
need PREFECT_API_URL "the Prefect server's API, e.g. http://localhost:4200/api"
need VOICEPIPE_STORE_URL "every worker must share one artifact store, e.g. s3://voicepipe/artifacts"
kind=${1:-}
case "$kind" in
  cpu)
    args=(--pool cpu-pool --type process --name "cpu-$(hostname)" --limit "${VOICEPIPE_CPU_WORKER_LIMIT:-4}") ;;
  gpu)
    gpu=${2:-${CUDA_VISIBLE_DEVICES:-0}}
    export CUDA_VISIBLE_DEVICES="$gpu"
    args=(--pool gpu-pool --type process --name "gpu-$(hostname)-$gpu" --limit 1) ;;
  *)
    echo "usage: $0 cpu | gpu [GPU_INDEX]" >&2; exit 2 ;;
esac
"$PREFECT" worker start "${args[@]}" &
worker=$!
stop() {
  trap '' TERM INT
  kill -TERM "$worker" 2>/dev/null || true
  for _ in $(seq 1 "${VOICEPIPE_WORKER_STOP_GRACE_S:-15}"); do
    kill -0 "$worker" 2>/dev/null || exit 0
    sleep 1
  done
  echo "worker did not stop in ${VOICEPIPE_WORKER_STOP_GRACE_S:-15} s after SIGTERM: killing it" >&2
  kill -KILL "$worker" 2>/dev/null || true
  exit 0
}
trap stop TERM INT
wait "$worker"
