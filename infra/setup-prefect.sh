#!/usr/bin/env bash
# Once per server (idempotent): the two process work pools and every deployment in prefect.yaml.
#   cpu-pool: ingestion (build-corpus, retrain-check)
#   gpu-pool: training/evaluation, concurrency limit = number of GPUs ($VOICEPIPE_GPU_COUNT, default 1);
#             each GPU worker also runs with --limit 1, so one training run per GPU.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
need PREFECT_API_URL "the Prefect server's API, e.g. http://localhost:4200/api"
wait_for_prefect_api
for pool in cpu-pool gpu-pool; do
  "$PREFECT" work-pool inspect "$pool" >/dev/null 2>&1 || "$PREFECT" work-pool create "$pool" --type process
done
"$PREFECT" work-pool set-concurrency-limit gpu-pool "${VOICEPIPE_GPU_COUNT:-1}"
cd "$VOICEPIPE_REPO"
"$PREFECT" --no-prompt deploy --all
